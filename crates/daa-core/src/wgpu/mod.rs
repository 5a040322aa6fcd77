//! The WGSL backend through wgpu: daa-core's kernels on Vulkan, Metal, DX12
//! and WebGPU (browsers). Kernel sources live in `shaders/wgsl/`, one concern
//! per file; pipelines are built once per device and reused.
//!
//! Work is only enqueued by the ops; [`Backend::download`] (or
//! [`Wgpu::download_async`] in a browser) waits for it. Row errors found by a
//! kernel (NaN or +inf logits, rows of −inf) are reported by the download of
//! the tensor that kernel produced or overwrote, naming the row and column
//! like the CPU backends do.

mod context;
pub mod shaders;
mod tensor;

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

pub use context::AdapterSummary;
use context::{Context, device_error};
use shaders::Kernel;
pub use tensor::WgpuTensor;
use tensor::from_f32_chunks;

use crate::backend::Backend;
use crate::error::{DaaError, Result};
use crate::logits::row_targets;
use crate::logits_backward::check_grad_shape;
use crate::preference::{PAIR_INPUT_COLUMNS, PAIR_OUTPUT_COLUMNS, PreferenceLossParams, read_pairs};
use crate::segment::{SegmentReduction, read_offsets, read_weights, values_layout};
use crate::tensor::{DType, HostTensor};
use crate::token_stats::{RowTargets, TOKEN_STATS_COLUMNS, TokenStatsParams};

/// Options of [`Wgpu::with_options`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WgpuOptions {
    /// Caps the bytes of one storage binding below the adapter's limit, so
    /// tensors are split into more row chunks (tests use it to exercise the
    /// chunking that huge logits need on every adapter).
    pub max_binding_bytes: Option<u64>,
}

/// The wgpu backend: one device and queue, pipelines cached on it.
#[derive(Debug, Clone)]
pub struct Wgpu {
    ctx: Arc<Context>,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct TokenStatsUniform {
    vocab: u32,
    k: u32,
    rows: u32,
    row_offset: u32,
    inv_ln_base: f32,
    grid_x: u32,
    pad: [u32; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct RowsUniform {
    vocab: u32,
    rows: u32,
    row_offset: u32,
    grid_x: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct SegmentUniform {
    segments: u32,
    columns: u32,
    has_weights: u32,
    grid_x: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Pod, Zeroable)]
struct PreferenceUniform {
    pairs: u32,
    loss: u32,
    nll_mode: u32,
    grid_x: u32,
    beta: f32,
    gamma: f32,
    alpha: f32,
    eps: f32,
    nll_weight: f32,
    pad: [f32; 3],
}

fn u32_of(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| device_error(format!("{what} = {n} exceeds the GPU's 32-bit indices")))
}

impl Wgpu {
    /// Opens the best adapter (blocking; not available in a browser, use [`Wgpu::new_async`]).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        pollster::block_on(Self::new_async(WgpuOptions::default()))
    }

    /// Opens the best adapter with options (blocking).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(options: WgpuOptions) -> Result<Self> {
        pollster::block_on(Self::new_async(options))
    }

    /// Opens the best adapter.
    pub async fn new_async(options: WgpuOptions) -> Result<Self> {
        Ok(Self { ctx: Arc::new(Context::new(&options).await?) })
    }

    /// What the adapter is.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.ctx.summary
    }

    /// Downloads a tensor, awaiting the GPU (works in a browser).
    pub async fn download_async(&self, tensor: &WgpuTensor) -> Result<HostTensor> {
        tensor::download(&self.ctx, tensor).await
    }

    /// Waits until all submitted work has finished (for honest timing).
    pub async fn synchronize(&self) -> Result<()> {
        let marker = self.ctx.storage_zeroed("daa sync", 4);
        self.ctx.read(&marker).await.map(|_| ())
    }

    /// Runs the in-place logits gradient over every chunk and records the
    /// row statuses on the tensor.
    fn backward_chunks(&self, logits: &mut WgpuTensor, rows: &RowTargets, grad: &[f64]) -> Result<()> {
        let vocab = u32_of(logits.row_len(), "vocab")?;
        let ids = rows.kernel_ids();
        let mut start = 0;
        let mut statuses = Vec::new();
        for (buffer, n) in &logits.chunks {
            let n = *n;
            let targets = self.ctx.storage_with("targets", bytemuck::cast_slice(&ids[start..start + n]));
            let g: Vec<u8> = grad[start..start + n].iter().flat_map(|&g| (g as f32).to_le_bytes()).collect();
            let g = self.ctx.storage_with("grad_logprob", &g);
            let status = self.ctx.storage_zeroed("status", (n * 8) as u64);
            let grid = self.ctx.grid(u32_of(n, "rows")?);
            let uniform = self.ctx.uniform(
                "logits_backward params",
                &RowsUniform { vocab, rows: u32_of(n, "rows")?, row_offset: 0, grid_x: grid.0 },
            );
            self.ctx.dispatch(Kernel::LogitsBackward, &[buffer, &targets, &g, &status, &uniform], grid)?;
            statuses.push((status, n));
            start += n;
        }
        logits.pending_status.extend(statuses);
        Ok(())
    }
}

impl Backend for Wgpu {
    type Tensor = WgpuTensor;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn upload(&self, host: &HostTensor) -> Result<WgpuTensor> {
        tensor::upload(&self.ctx, host)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn download(&self, tensor: &WgpuTensor) -> Result<HostTensor> {
        pollster::block_on(self.download_async(tensor))
    }

    #[cfg(target_arch = "wasm32")]
    fn download(&self, _tensor: &WgpuTensor) -> Result<HostTensor> {
        Err(device_error("a browser cannot block on the GPU: use Wgpu::download_async"))
    }

    fn token_stats(
        &self,
        logits: &WgpuTensor,
        targets: &WgpuTensor,
        mask: Option<&WgpuTensor>,
        params: &TokenStatsParams,
    ) -> Result<WgpuTensor> {
        let mask_host = mask.map(|m| m.host_copy("mask")).transpose()?;
        let (shape, rows) = row_targets(&logits.shape, targets.host_copy("targets")?, mask_host)?;
        params.validate(shape.vocab)?;
        let storage = logits.logit_storage()?;
        let ids = rows.kernel_ids();
        let (mut outs, mut statuses, mut start) = (Vec::new(), Vec::new(), 0);
        for (buffer, n) in &logits.chunks {
            let n = *n;
            let out = self.ctx.storage_zeroed("token_stats out", (n * TOKEN_STATS_COLUMNS * 4) as u64);
            let status = self.ctx.storage_zeroed("token_stats status", (n * 8) as u64);
            if n > 0 {
                let t = self.ctx.storage_with("targets", bytemuck::cast_slice(&ids[start..start + n]));
                let grid = self.ctx.grid(u32_of(n, "rows")?);
                let uniform = self.ctx.uniform(
                    "token_stats params",
                    &TokenStatsUniform {
                        vocab: u32_of(shape.vocab, "vocab")?,
                        k: params.k as u32,
                        rows: n as u32,
                        row_offset: 0,
                        inv_ln_base: (1.0 / params.entropy_base.ln()) as f32,
                        grid_x: grid.0,
                        pad: [0; 2],
                    },
                );
                self.ctx.dispatch(Kernel::TokenStats(storage), &[buffer, &t, &out, &status, &uniform], grid)?;
            }
            outs.push((out, n));
            statuses.push((status, n));
            start += n;
        }
        Ok(from_f32_chunks(vec![shape.rows, TOKEN_STATS_COLUMNS], outs, statuses))
    }

    fn segment_reduce(
        &self,
        values: &WgpuTensor,
        offsets: &WgpuTensor,
        weights: Option<&WgpuTensor>,
    ) -> Result<SegmentReduction<WgpuTensor>> {
        let (n, c) = values_layout(&values.shape)?;
        if values.dtype != DType::F32 {
            return Err(DaaError::DType { tensor: "values", actual: values.dtype, expected: "f32" });
        }
        if values.chunks.len() != 1 {
            return Err(device_error("`values` is larger than one storage binding; reduce it in parts"));
        }
        let offsets = read_offsets(offsets.host_copy("offsets")?, n)?;
        let weights = read_weights(weights.map(|w| w.host_copy("weights")).transpose()?, n)?;
        let segments = offsets.len() - 1;
        let offsets_bytes: Vec<u8> = offsets.iter().flat_map(|&o| (o as u32).to_le_bytes()).collect();
        let offsets_buffer = self.ctx.storage_with("offsets", &offsets_bytes);
        let weights_bytes: Vec<u8> = match &weights {
            Some(w) => w.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
            None => 1f32.to_le_bytes().to_vec(),
        };
        let weights_buffer = self.ctx.storage_with("weights", &weights_bytes);
        let sums = self.ctx.storage_zeroed("sums", (segments * c * 4) as u64);
        let counts = self.ctx.storage_zeroed("counts", (segments * 4) as u64);
        let means = self.ctx.storage_zeroed("means", (segments * c * 4) as u64);
        let invocations = u32_of(segments * (c + 1), "segments × columns")?;
        if invocations > 0 {
            let grid = self.ctx.grid(invocations.div_ceil(64));
            let uniform = self.ctx.uniform(
                "segment params",
                &SegmentUniform {
                    segments: segments as u32,
                    columns: u32_of(c, "columns")?,
                    has_weights: u32::from(weights.is_some()),
                    grid_x: grid.0,
                },
            );
            let buffers = [&values.chunks[0].0, &offsets_buffer, &weights_buffer, &sums, &counts, &means, &uniform];
            self.ctx.dispatch(Kernel::SegmentReduce, &buffers, grid)?;
        }
        Ok(SegmentReduction {
            sums: from_f32_chunks(vec![segments, c], vec![(sums, segments)], Vec::new()),
            counts: from_f32_chunks(vec![segments], vec![(counts, segments)], Vec::new()),
            means: from_f32_chunks(vec![segments, c], vec![(means, segments)], Vec::new()),
        })
    }

    fn preference_loss(&self, pairs: &WgpuTensor, params: &PreferenceLossParams) -> Result<WgpuTensor> {
        let host: Vec<f64> =
            read_pairs(pairs.host_copy("pairs")?, params)?.iter().flat_map(|x| x.to_columns()).collect();
        let p = host.len() / PAIR_INPUT_COLUMNS;
        let input: Vec<u8> = host.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
        let input = self.ctx.storage_with("pairs", &input);
        let out = self.ctx.storage_zeroed("preference out", (p * PAIR_OUTPUT_COLUMNS * 4) as u64);
        if p > 0 {
            let k = params.kernel();
            let grid = self.ctx.grid(u32_of(p, "pairs")?.div_ceil(64));
            let uniform = self.ctx.uniform(
                "preference params",
                &PreferenceUniform {
                    pairs: p as u32,
                    loss: k.code,
                    nll_mode: k.nll_mode,
                    grid_x: grid.0,
                    beta: k.beta as f32,
                    gamma: k.gamma as f32,
                    alpha: k.alpha as f32,
                    eps: k.eps as f32,
                    nll_weight: k.nll_weight as f32,
                    pad: [0.0; 3],
                },
            );
            self.ctx.dispatch(Kernel::PreferenceLoss, &[&input, &out, &uniform], grid)?;
        }
        Ok(from_f32_chunks(vec![p, PAIR_OUTPUT_COLUMNS], vec![(out, p)], Vec::new()))
    }

    fn logits_backward(
        &self,
        logits: &WgpuTensor,
        targets: &WgpuTensor,
        mask: Option<&WgpuTensor>,
        grad_logprob: &WgpuTensor,
    ) -> Result<WgpuTensor> {
        if logits.dtype != DType::F32 {
            return Err(DaaError::DType {
                tensor: "logits",
                actual: logits.dtype,
                expected: "f32 (the wgpu backward kernel)",
            });
        }
        let chunks = logits.chunks.iter().map(|(b, n)| (self.ctx.duplicate("logits gradient", b), *n)).collect();
        let mut copy = from_f32_chunks(
            logits.shape.clone(),
            chunks,
            logits.pending_status.iter().map(|(b, n)| (self.ctx.duplicate("status", b), *n)).collect(),
        );
        self.logits_backward_in_place(&mut copy, targets, mask, grad_logprob)?;
        Ok(copy)
    }

    fn logits_backward_in_place(
        &self,
        logits: &mut WgpuTensor,
        targets: &WgpuTensor,
        mask: Option<&WgpuTensor>,
        grad_logprob: &WgpuTensor,
    ) -> Result<()> {
        let mask_host = mask.map(|m| m.host_copy("mask")).transpose()?;
        let (shape, rows) = row_targets(&logits.shape, targets.host_copy("targets")?, mask_host)?;
        if logits.dtype != DType::F32 {
            return Err(DaaError::DType {
                tensor: "logits",
                actual: logits.dtype,
                expected: "f32 (the wgpu backward kernel)",
            });
        }
        check_grad_shape(&grad_logprob.shape, shape.rows)?;
        let grad = crate::logits::read_grad_logprob(grad_logprob.host_copy("grad_logprob")?, shape.rows)?;
        self.backward_chunks(logits, &rows, &grad)
    }
}
