//! Tensors on a CUDA device, with a host copy of small tensors (targets,
//! masks, offsets, pairs) that the host validates before kernels read them.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};

use super::kernels::cuda_error;
use crate::error::Result;
use crate::logits::check_row_status;
use crate::tensor::{DType, HostTensor, TensorData};

/// Tensors up to this size keep a host copy for validation.
const HOST_COPY_BYTES: usize = 64 << 20;

/// Device memory of one tensor.
#[derive(Debug)]
pub(crate) enum CudaData {
    F32(CudaSlice<f32>),
    F64(CudaSlice<f64>),
    /// f16 or bf16 bits (the tensor's dtype says which).
    Half(CudaSlice<u16>),
    I32(CudaSlice<i32>),
}

/// A tensor on a CUDA device.
#[derive(Debug)]
pub struct CudaTensor {
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) data: CudaData,
    pub(crate) host: Option<HostTensor>,
    /// Per-row `(code, column)` words of the kernel that produced or overwrote
    /// this tensor, checked on download.
    pub(crate) pending_status: Option<CudaSlice<u32>>,
}

impl CudaTensor {
    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub(crate) fn host_copy(&self, tensor: &'static str) -> Result<&HostTensor> {
        self.host.as_ref().ok_or_else(|| {
            cuda_error(format!("`{tensor}` is too large to validate on the host (over {HOST_COPY_BYTES} bytes)"))
        })
    }
}

fn driver<T>(what: &str, r: Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| cuda_error(format!("{what}: {e}")))
}

pub(crate) fn upload(stream: &Arc<CudaStream>, host: &HostTensor) -> Result<CudaTensor> {
    let copy = "copy to the GPU";
    let data = match host.data() {
        TensorData::F32(v) => CudaData::F32(driver(copy, stream.clone_htod(&v[..]))?),
        TensorData::F64(v) => CudaData::F64(driver(copy, stream.clone_htod(&v[..]))?),
        TensorData::F16(v) => CudaData::Half(driver(copy, stream.clone_htod(bytemuck::cast_slice::<f16, u16>(v)))?),
        TensorData::BF16(v) => CudaData::Half(driver(copy, stream.clone_htod(bytemuck::cast_slice::<bf16, u16>(v)))?),
        TensorData::I32(v) => CudaData::I32(driver(copy, stream.clone_htod(&v[..]))?),
        TensorData::I64(v) => {
            let narrowed: Vec<i32> =
                v.iter().map(|&x| x.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32).collect();
            CudaData::I32(driver(copy, stream.clone_htod(&narrowed))?)
        }
        TensorData::U8(v) => {
            let widened: Vec<i32> = v.iter().map(|&x| i32::from(x)).collect();
            CudaData::I32(driver(copy, stream.clone_htod(&widened))?)
        }
    };
    let bytes = host.len() * 8;
    let host_copy = (bytes <= HOST_COPY_BYTES).then(|| host.clone());
    Ok(CudaTensor { shape: host.shape().to_vec(), dtype: host.dtype(), data, host: host_copy, pending_status: None })
}

pub(crate) fn download(stream: &Arc<CudaStream>, tensor: &CudaTensor) -> Result<HostTensor> {
    let copy = "copy from the GPU";
    if let Some(status) = &tensor.pending_status {
        let words = driver(copy, stream.clone_dtoh(status))?;
        check_row_status(&words, 0, "cuda")?;
    }
    let data = match (&tensor.data, tensor.dtype) {
        (CudaData::F32(s), _) => TensorData::F32(driver(copy, stream.clone_dtoh(s))?.into()),
        (CudaData::F64(s), _) => TensorData::F64(driver(copy, stream.clone_dtoh(s))?.into()),
        (CudaData::Half(s), DType::F16) => {
            TensorData::F16(driver(copy, stream.clone_dtoh(s))?.into_iter().map(f16::from_bits).collect())
        }
        (CudaData::Half(s), _) => {
            TensorData::BF16(driver(copy, stream.clone_dtoh(s))?.into_iter().map(bf16::from_bits).collect())
        }
        (CudaData::I32(s), _) => TensorData::I32(driver(copy, stream.clone_dtoh(s))?.into()),
    };
    HostTensor::new(data, &tensor.shape)
}
