//! The CUDA backend through cudarc: daa-core's kernels on NVIDIA GPUs,
//! compiled at run time with NVRTC for the device's architecture (cached once
//! per context). cudarc loads the driver dynamically, so the workspace builds
//! on machines without CUDA; without a driver [`Cuda::new`] returns a clear
//! error instead of letting cudarc panic.
//!
//! Kernels only enqueue work; [`Backend::download`] synchronises. Row errors
//! found by a kernel (NaN or +inf logits, rows of −inf) are reported by the
//! download of the tensor that kernel produced or overwrote.

pub mod kernels;
pub mod libraries;
mod tensor;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};

use kernels::cuda_error;
use tensor::CudaData;
pub use tensor::CudaTensor;

use crate::backend::Backend;
use crate::error::{DaaError, Result};
use crate::logits::read_grad_logprob;
use crate::logits::row_targets;
use crate::preference::{PAIR_INPUT_COLUMNS, PAIR_OUTPUT_COLUMNS, PreferenceLossParams, read_pairs};
use crate::segment::{SegmentReduction, read_offsets, read_weights, values_layout};
use crate::tensor::{DType, HostTensor};
use crate::token_stats::{TOKEN_STATS_COLUMNS, TokenStatsParams};

/// Threads per block of the row kernels (`WG` in shaders/cuda/row_common.cuh).
const ROW_BLOCK: u32 = 256;

/// The kernel-argument twin of `LossParams` in shaders/cuda/preference_loss.cu.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LossParams {
    loss: u32,
    nll_mode: u32,
    beta: f64,
    gamma: f64,
    alpha: f64,
    eps: f64,
    nll_weight: f64,
}

// SAFETY: plain #[repr(C)] data with the same layout as the CUDA struct.
unsafe impl DeviceRepr for LossParams {}

/// Compiled module and its functions, built on first use.
#[derive(Debug)]
struct Compiled {
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
}

/// Row targets on their way to `token_stats`: a page-locked host buffer
/// and a device buffer, kept across calls and grown to the next power of
/// two, so a call makes no allocation and its copy is asynchronous.
#[derive(Debug)]
struct TargetStaging {
    host: cudarc::driver::PinnedHostSlice<i32>,
    device: CudaSlice<i32>,
}

/// The CUDA backend on one device.
#[derive(Debug, Clone)]
pub struct Cuda {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: String,
    name: String,
    compiled: Arc<OnceLock<std::result::Result<Compiled, String>>>,
    targets: Arc<std::sync::Mutex<Option<TargetStaging>>>,
}

fn driver<T>(what: &str, r: std::result::Result<T, cudarc::driver::DriverError>) -> Result<T> {
    r.map_err(|e| cuda_error(format!("{what}: {e}")))
}

/// One block per row; rows past 2^31 − 1 spill into `grid.y`.
fn row_grid(rows: usize) -> LaunchConfig {
    let x = rows.clamp(1, i32::MAX as usize) as u32;
    let y = rows.div_ceil(x as usize).max(1) as u32;
    LaunchConfig { grid_dim: (x, y, 1), block_dim: (ROW_BLOCK, 1, 1), shared_mem_bytes: 0 }
}

fn flat_grid(threads: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (threads.div_ceil(256).max(1) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Whether the NVIDIA driver library (`libcuda.so`) can be loaded: check this
/// before anything (daa's kernels, burn's CUDA backend) touches cudarc, which
/// panics without it.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the driver library by its known names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

impl Cuda {
    /// Opens GPU `ordinal`. Fails with a clear message when the driver or
    /// NVRTC cannot be loaded or no device answers.
    pub fn new(ordinal: usize) -> Result<Self> {
        if !driver_present() {
            return Err(cuda_error(
                "CUDA driver not found: libcuda.so could not be loaded (no NVIDIA driver on this machine); \
                 use --backend cpu or wgpu",
            ));
        }
        if !kernels::nvrtc_available() {
            return Err(cuda_error(libraries::nvrtc_missing_message()));
        }
        let ctx = driver(&format!("cannot open CUDA device {ordinal}"), CudaContext::new(ordinal))?;
        let (major, minor) = driver("compute capability", ctx.compute_capability())?;
        let name = driver("device name", ctx.name())?;
        let stream = ctx.default_stream();
        Ok(Self {
            ctx,
            stream,
            arch: format!("compute_{major}{minor}"),
            name,
            compiled: Arc::new(OnceLock::new()),
            targets: Arc::default(),
        })
    }

    /// Device name and the architecture the kernels are compiled for.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.name, self.arch)
    }

    /// Measures device-to-device copy bandwidth with a `bytes`-sized buffer,
    /// in GB/s counted read + write (the yardstick for memory-bound kernels).
    pub fn copy_bandwidth_gbps(&self, bytes: usize, repeats: usize) -> Result<f64> {
        let n = (bytes / 4).max(1);
        let source = self.zeros::<f32>(n)?;
        let mut copy = driver("copy on the GPU", self.stream.clone_dtod(&source))?;
        self.synchronize()?;
        let start = std::time::Instant::now();
        for _ in 0..repeats.max(1) {
            driver("copy on the GPU", self.stream.memcpy_dtod(&source, &mut copy))?;
        }
        self.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        Ok((2 * n * 4 * repeats.max(1)) as f64 / seconds / 1e9)
    }

    /// Waits for all enqueued work (for honest timing).
    pub fn synchronize(&self) -> Result<()> {
        driver("synchronize", self.stream.synchronize())
    }

    fn function(&self, name: &'static str) -> Result<&CudaFunction> {
        let compiled = self.compiled.get_or_init(|| {
            let ptx = kernels::compile_ptx(&self.arch).map_err(|e| e.to_string())?;
            let module = self.ctx.load_module(ptx).map_err(|e| format!("loading the kernels: {e}"))?;
            let mut functions = HashMap::new();
            for entry in kernels::ENTRY_POINTS {
                let f = module.load_function(entry).map_err(|e| format!("kernel {entry}: {e}"))?;
                functions.insert(entry, f);
            }
            Ok(Compiled { _module: module, functions })
        });
        match compiled {
            Ok(c) => c.functions.get(name).ok_or_else(|| cuda_error(format!("no kernel named {name}"))),
            Err(e) => Err(cuda_error(e.clone())),
        }
    }

    fn zeros<T: DeviceRepr + cudarc::driver::ValidAsZeroBits>(&self, n: usize) -> Result<CudaSlice<T>> {
        driver("allocation", self.stream.alloc_zeros::<T>(n.max(1)))
    }

    fn to_device<T: DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        if v.is_empty() {
            return Err(cuda_error("empty upload"));
        }
        driver("copy to the GPU", self.stream.clone_htod(v))
    }

    /// Copies `ids` into the reused target buffers (waiting only for the
    /// previous call's copy out of the host buffer) and returns them locked
    /// for the launch that reads them.
    fn stage_targets(&self, ids: &[i32]) -> Result<std::sync::MutexGuard<'_, Option<TargetStaging>>> {
        let mut staging = self.targets.lock().map_err(|_| cuda_error("the target buffers' lock is poisoned"))?;
        if staging.as_ref().is_none_or(|s| s.device.len() < ids.len()) {
            let capacity = ids.len().next_power_of_two().max(1024);
            // SAFETY: the host buffer is written below before any copy reads it.
            let host = driver("page-locked allocation", unsafe { self.ctx.alloc_pinned::<i32>(capacity) })?;
            let device = driver("allocation", self.stream.alloc_zeros::<i32>(capacity))?;
            *staging = Some(TargetStaging { host, device });
        }
        let TargetStaging { host, device } = staging.as_mut().expect("allocated above");
        driver("target buffer", host.as_mut_slice())?[..ids.len()].copy_from_slice(ids);
        driver("copy of the targets", self.stream.memcpy_htod(host, device))?;
        Ok(staging)
    }

    fn tensor(&self, shape: Vec<usize>, data: CudaData, status: Option<CudaSlice<u32>>) -> CudaTensor {
        let dtype = match &data {
            CudaData::F32(_) => DType::F32,
            CudaData::F64(_) => DType::F64,
            CudaData::Half(_) => DType::BF16,
            CudaData::I32(_) => DType::I32,
        };
        CudaTensor { shape, dtype, data, host: None, pending_status: status }
    }
}

fn loss_params(params: &PreferenceLossParams) -> LossParams {
    let k = params.kernel();
    LossParams {
        loss: k.code,
        nll_mode: k.nll_mode,
        beta: k.beta,
        gamma: k.gamma,
        alpha: k.alpha,
        eps: k.eps,
        nll_weight: k.nll_weight,
    }
}

impl Backend for Cuda {
    type Tensor = CudaTensor;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, host: &HostTensor) -> Result<CudaTensor> {
        tensor::upload(&self.stream, host)
    }

    fn download(&self, tensor: &CudaTensor) -> Result<HostTensor> {
        tensor::download(&self.stream, tensor)
    }

    fn token_stats(
        &self,
        logits: &CudaTensor,
        targets: &CudaTensor,
        mask: Option<&CudaTensor>,
        params: &TokenStatsParams,
    ) -> Result<CudaTensor> {
        let mask_host = mask.map(|m| m.host_copy("mask")).transpose()?;
        let (shape, rows) = row_targets(&logits.shape, targets.host_copy("targets")?, mask_host)?;
        params.validate(shape.vocab)?;
        let mut out = self.zeros::<f32>(shape.rows * TOKEN_STATS_COLUMNS)?;
        let mut status = self.zeros::<u32>(shape.rows * 2)?;
        if shape.rows > 0 {
            let staged = self.stage_targets(&rows.kernel_ids())?;
            let t = &staged.as_ref().expect("staged").device;
            let vocab = u32::try_from(shape.vocab).map_err(|_| cuda_error("vocabulary over 2^32"))?;
            let (k, inv_ln_base, n) = (params.k as u32, (1.0 / params.entropy_base.ln()) as f32, shape.rows as u64);
            let name = match (logits.dtype, shape.vocab % 8 == 0, shape.vocab % 4 == 0) {
                (DType::F32, _, true) => "token_stats_f32_vec4",
                (DType::F32, _, false) => "token_stats_f32",
                (DType::BF16, true, _) => "token_stats_bf16_vec8",
                (DType::BF16, false, _) => "token_stats_bf16",
                (DType::F16, true, _) => "token_stats_f16_vec8",
                (DType::F16, false, _) => "token_stats_f16",
                (other, _, _) => {
                    return Err(DaaError::DType { tensor: "logits", actual: other, expected: "f32, f16 or bf16" });
                }
            };
            let f = self.function(name)?;
            let mut launch = self.stream.launch_builder(f);
            match &logits.data {
                CudaData::F32(x) => launch.arg(x),
                CudaData::Half(x) => launch.arg(x),
                _ => return Err(cuda_error("logits storage does not match its dtype")),
            };
            launch.arg(t).arg(&mut out).arg(&mut status).arg(&vocab).arg(&k).arg(&inv_ln_base).arg(&n);
            // SAFETY: the argument list matches TOKEN_STATS_ENTRY in shaders/cuda/token_stats.cu;
            // buffers hold rows·V logits, ≥ rows targets, rows·6 outputs and rows·2 status words.
            driver("token_stats launch", unsafe { launch.launch(row_grid(shape.rows)) })?;
        }
        Ok(self.tensor(vec![shape.rows, TOKEN_STATS_COLUMNS], CudaData::F32(out), Some(status)))
    }

    fn segment_reduce(
        &self,
        values: &CudaTensor,
        offsets: &CudaTensor,
        weights: Option<&CudaTensor>,
    ) -> Result<SegmentReduction<CudaTensor>> {
        let (n, c) = values_layout(&values.shape)?;
        let CudaData::F32(v) = &values.data else {
            return Err(DaaError::DType { tensor: "values", actual: values.dtype, expected: "f32" });
        };
        let offsets = read_offsets(offsets.host_copy("offsets")?, n)?;
        let weights = read_weights(weights.map(|w| w.host_copy("weights")).transpose()?, n)?;
        let segments = offsets.len() - 1;
        let o: Vec<u32> = offsets.iter().map(|&x| x as u32).collect();
        let o = self.to_device(&o)?;
        let w: Vec<f32> = weights.as_ref().map_or_else(|| vec![1.0], |w| w.iter().map(|&x| x as f32).collect());
        let w = self.to_device(&w)?;
        let (mut sums, mut counts, mut means) =
            (self.zeros::<f32>(segments * c)?, self.zeros::<f32>(segments)?, self.zeros::<f32>(segments * c)?);
        let threads = segments * (c + 1);
        if threads > 0 {
            let (has_weights, s, cols) = (i32::from(weights.is_some()), segments as u32, c as u32);
            let f = self.function("segment_reduce")?;
            let mut launch = self.stream.launch_builder(f);
            launch.arg(v).arg(&o).arg(&w).arg(&has_weights).arg(&mut sums).arg(&mut counts).arg(&mut means);
            launch.arg(&s).arg(&cols);
            // SAFETY: matches `segment_reduce` in shaders/cuda/segment_reduce.cu; offsets were validated.
            driver("segment_reduce launch", unsafe { launch.launch(flat_grid(threads)) })?;
        }
        Ok(SegmentReduction {
            sums: self.tensor(vec![segments, c], CudaData::F32(sums), None),
            counts: self.tensor(vec![segments], CudaData::F32(counts), None),
            means: self.tensor(vec![segments, c], CudaData::F32(means), None),
        })
    }

    fn preference_loss(&self, pairs: &CudaTensor, params: &PreferenceLossParams) -> Result<CudaTensor> {
        let host: Vec<f64> =
            read_pairs(pairs.host_copy("pairs")?, params)?.iter().flat_map(|x| x.to_columns()).collect();
        let p = host.len() / PAIR_INPUT_COLUMNS;
        let mut out = self.zeros::<f64>(p * PAIR_OUTPUT_COLUMNS)?;
        if p > 0 {
            let input = self.to_device(&host)?;
            let (n, lp) = (p as u64, loss_params(params));
            let f = self.function("preference_loss")?;
            let mut launch = self.stream.launch_builder(f);
            launch.arg(&input).arg(&mut out).arg(&n).arg(&lp);
            // SAFETY: matches `preference_loss` in shaders/cuda/preference_loss.cu.
            driver("preference_loss launch", unsafe { launch.launch(flat_grid(p)) })?;
        }
        Ok(self.tensor(vec![p, PAIR_OUTPUT_COLUMNS], CudaData::F64(out), None))
    }

    fn logits_backward(
        &self,
        logits: &CudaTensor,
        targets: &CudaTensor,
        mask: Option<&CudaTensor>,
        grad_logprob: &CudaTensor,
    ) -> Result<CudaTensor> {
        let CudaData::F32(x) = &logits.data else {
            // Out of place the gradient is f32; widen 16-bit logits on the host.
            let widened = HostTensor::from_f32(self.download(logits)?.to_f32_vec("logits")?, &logits.shape)?;
            let mut copy = self.upload(&widened)?;
            self.logits_backward_in_place(&mut copy, targets, mask, grad_logprob)?;
            return Ok(copy);
        };
        let copy = driver("copy on the GPU", self.stream.clone_dtod(x))?;
        let mut copy = self.tensor(logits.shape.clone(), CudaData::F32(copy), None);
        self.logits_backward_in_place(&mut copy, targets, mask, grad_logprob)?;
        Ok(copy)
    }

    fn logits_backward_in_place(
        &self,
        logits: &mut CudaTensor,
        targets: &CudaTensor,
        mask: Option<&CudaTensor>,
        grad_logprob: &CudaTensor,
    ) -> Result<()> {
        let mask_host = mask.map(|m| m.host_copy("mask")).transpose()?;
        let (shape, rows) = row_targets(&logits.shape, targets.host_copy("targets")?, mask_host)?;
        let grad: Vec<f32> =
            read_grad_logprob(grad_logprob.host_copy("grad_logprob")?, shape.rows)?.iter().map(|&g| g as f32).collect();
        if shape.rows == 0 {
            return Ok(());
        }
        let name = match logits.dtype {
            DType::F32 => "logits_backward_f32",
            DType::BF16 => "logits_backward_bf16",
            other => {
                return Err(DaaError::DType {
                    tensor: "logits",
                    actual: other,
                    expected: "f32 or bf16 (CUDA backward)",
                });
            }
        };
        let t = self.to_device(&rows.kernel_ids())?;
        let g = self.to_device(&grad)?;
        let mut status = self.zeros::<u32>(shape.rows * 2)?;
        let (vocab, n) = (shape.vocab as u32, shape.rows as u64);
        let f = self.function(name)?;
        let mut launch = self.stream.launch_builder(f);
        match &mut logits.data {
            CudaData::F32(x) => launch.arg(x),
            CudaData::Half(x) => launch.arg(x),
            _ => return Err(cuda_error("logits storage does not match its dtype")),
        };
        launch.arg(&t).arg(&g).arg(&mut status).arg(&vocab).arg(&n);
        // SAFETY: matches BACKWARD_ENTRY in shaders/cuda/logits_backward.cu.
        driver("logits_backward launch", unsafe { launch.launch(row_grid(shape.rows)) })?;
        logits.pending_status = Some(status);
        logits.host = None;
        Ok(())
    }
}
