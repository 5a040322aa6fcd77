//! Tensors on a wgpu device: row chunks that each fit one storage binding,
//! plus a host copy of small tensors (targets, masks, offsets, pairs) that
//! the host validates before a kernel reads them.

use half::{bf16, f16};

use super::context::{Context, device_error};
use super::shaders::LogitStorage;
use crate::error::{DaaError, Result};
use crate::logits::check_row_status;
use crate::tensor::{DType, HostTensor, TensorData};

/// The most bytes any kernel writes per row (token_stats: 6 f32).
const PER_ROW_OUTPUT_BYTES: u64 = 32;

/// Tensors up to this size keep a host copy for validation.
const HOST_COPY_BYTES: usize = 64 << 20;

/// A tensor on a wgpu device.
#[derive(Debug)]
pub struct WgpuTensor {
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    /// Row chunks: `(buffer, rows)`; rows are the leading dimensions flattened.
    pub(crate) chunks: Vec<(wgpu::Buffer, usize)>,
    /// Host copy, for small tensors.
    pub(crate) host: Option<HostTensor>,
    /// Per-row status words written by the kernel that produced this tensor;
    /// checked (and turned into errors naming the row) on download.
    pub(crate) pending_status: Vec<(wgpu::Buffer, usize)>,
}

impl WgpuTensor {
    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type as uploaded.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How many row chunks (storage bindings) hold the tensor.
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Elements per row (the last dimension; 1 for vectors).
    pub(crate) fn row_len(&self) -> usize {
        if self.shape.len() >= 2 { *self.shape.last().unwrap_or(&1) } else { 1 }
    }

    pub(crate) fn logit_storage(&self) -> Result<LogitStorage> {
        match self.dtype {
            DType::F32 => Ok(LogitStorage::F32),
            DType::F16 => Ok(LogitStorage::F16),
            DType::BF16 => Ok(LogitStorage::BF16),
            other => Err(DaaError::DType { tensor: "logits", actual: other, expected: "f32, f16 or bf16" }),
        }
    }

    pub(crate) fn host_copy(&self, tensor: &'static str) -> Result<&HostTensor> {
        self.host.as_ref().ok_or_else(|| {
            device_error(format!("`{tensor}` is too large to validate on the host (over {HOST_COPY_BYTES} bytes)"))
        })
    }
}

/// Bytes as stored on the device: f32, packed 16-bit floats, f64 narrowed to
/// f32, integers widened/narrowed to i32 and u8 widened to u32.
fn device_bytes(host: &HostTensor, range: std::ops::Range<usize>) -> Vec<u8> {
    match host.data() {
        TensorData::F32(v) => bytemuck::cast_slice(&v[range]).to_vec(),
        TensorData::F16(v) => bytemuck::cast_slice::<f16, u8>(&v[range]).to_vec(),
        TensorData::BF16(v) => bytemuck::cast_slice::<bf16, u8>(&v[range]).to_vec(),
        TensorData::F64(v) => v[range].iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        TensorData::I32(v) => bytemuck::cast_slice(&v[range]).to_vec(),
        TensorData::I64(v) => v[range]
            .iter()
            .flat_map(|&x| (x.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32).to_le_bytes())
            .collect(),
        TensorData::U8(v) => v[range].iter().flat_map(|&x| u32::from(x).to_le_bytes()).collect(),
    }
}

/// Bytes per element on the device.
fn device_elem_bytes(dtype: DType) -> usize {
    match dtype {
        DType::F16 | DType::BF16 => 2,
        _ => 4,
    }
}

pub(crate) fn upload(ctx: &Context, host: &HostTensor) -> Result<WgpuTensor> {
    ctx.check()?;
    let row_len = if host.shape().len() >= 2 { *host.shape().last().unwrap_or(&1) } else { 1 };
    let rows = host.len().checked_div(row_len).unwrap_or(0);
    let elem = device_elem_bytes(host.dtype());
    let row_bytes = (row_len * elem).max(1) as u64;
    if row_bytes > ctx.max_binding {
        return Err(device_error(format!(
            "one row of {row_len} elements ({row_bytes} bytes) exceeds the adapter's largest storage binding ({} bytes)",
            ctx.max_binding
        )));
    }
    // Per-row outputs (token_stats writes 24 bytes a row, statuses 8) must fit
    // a binding too, so chunks also stop at max_binding / PER_ROW_OUTPUT_BYTES rows.
    let mut rows_per_chunk =
        ((ctx.max_binding / row_bytes).min(ctx.max_binding / PER_ROW_OUTPUT_BYTES) as usize).max(1);
    if elem == 2 && row_len % 2 == 1 && rows_per_chunk > 1 {
        rows_per_chunk -= rows_per_chunk % 2; // packed halves: chunks start on a word
    }
    let mut chunks = Vec::new();
    if rows == 0 {
        chunks.push((ctx.storage_zeroed("daa tensor", 4), 0));
    }
    let mut start = 0;
    while start < rows {
        let n = rows_per_chunk.min(rows - start);
        chunks.push((ctx.storage_with("daa tensor", &device_bytes(host, start * row_len..(start + n) * row_len)), n));
        start += n;
    }
    let host_copy = (host.len() * elem <= HOST_COPY_BYTES).then(|| host.clone());
    Ok(WgpuTensor {
        shape: host.shape().to_vec(),
        dtype: host.dtype(),
        chunks,
        host: host_copy,
        pending_status: Vec::new(),
    })
}

/// An f32 tensor from device chunks.
pub(crate) fn from_f32_chunks(
    shape: Vec<usize>,
    chunks: Vec<(wgpu::Buffer, usize)>,
    status: Vec<(wgpu::Buffer, usize)>,
) -> WgpuTensor {
    WgpuTensor { shape, dtype: DType::F32, chunks, host: None, pending_status: status }
}

pub(crate) async fn download(ctx: &Context, tensor: &WgpuTensor) -> Result<HostTensor> {
    let mut row_base = 0;
    for (buffer, rows) in &tensor.pending_status {
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&ctx.read(buffer).await?);
        check_row_status(&words[..2 * rows], row_base, "wgpu")?;
        row_base += rows;
    }
    let total: usize = tensor.shape.iter().product();
    let elem = device_elem_bytes(tensor.dtype);
    let mut bytes = Vec::with_capacity(total * elem);
    for (buffer, _) in &tensor.chunks {
        bytes.extend_from_slice(&ctx.read(buffer).await?);
    }
    bytes.truncate(total * elem);
    let data = match tensor.dtype {
        DType::F32 | DType::F64 => TensorData::F32(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes).into()),
        DType::F16 => TensorData::F16(bytemuck::pod_collect_to_vec::<u8, f16>(&bytes).into()),
        DType::BF16 => TensorData::BF16(bytemuck::pod_collect_to_vec::<u8, bf16>(&bytes).into()),
        DType::I32 | DType::I64 => TensorData::I32(bytemuck::pod_collect_to_vec::<u8, i32>(&bytes).into()),
        DType::U8 => TensorData::U8(bytemuck::pod_collect_to_vec::<u8, u32>(&bytes).iter().map(|&x| x as u8).collect()),
    };
    HostTensor::new(data, &tensor.shape)
}
