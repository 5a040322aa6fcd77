//! # daa-core
//!
//! Losses and diagnostics of Direct Alignment Algorithms (DPO, IPO,
//! Hinge/SLiC, SimPO, ORPO, plus NLL regularisation) and the two cheap
//! signals of likelihood over-optimisation, top-k entropy and top-k
//! probability mass, over a small [`Backend`] trait.
//!
//! Backends: [`Specification`] (plain f64: what every other backend is tested against) and [`Cpu`] (one
//! pass per row, vectorised, multi-threaded). Every backend's results can be
//! downloaded and compared with the specification.
//!
//! ```
//! use daa_core::{Backend, Cpu, HostTensor, TokenStatsParams, TokenStatsRow};
//!
//! // Two positions over a vocabulary of 4.
//! let logits = HostTensor::from_f32(vec![2.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0], &[2, 4])?;
//! let targets = HostTensor::from_i64(vec![0, 3], &[2])?;
//! let cpu = Cpu::new();
//! let out = cpu.token_stats(&cpu.upload(&logits)?, &cpu.upload(&targets)?, None,
//!                           &TokenStatsParams { k: 2, entropy_base: 2.0 })?;
//! let rows = TokenStatsRow::rows_of(&cpu.download(&out)?)?;
//! // Uniform row: top-2 mass 1/2, renormalised top-2 entropy exactly 1 bit.
//! assert!((rows[1].topk_mass - 0.5).abs() < 1e-6);
//! assert!((rows[1].topk_entropy - 1.0).abs() < 1e-6);
//! # Ok::<(), daa_core::DaaError>(())
//! ```

pub mod backend;
pub mod controllers;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod diversity;
pub mod entropy_floor;
pub mod error;
pub mod intervals;
#[cfg(feature = "io")]
pub mod io;
pub mod kl;
mod logits;
pub mod logits_backward;
pub mod monitor;
pub mod preference;
pub mod sampling;
pub mod segment;
pub mod specification;
pub mod synthetic;
pub mod tensor;
pub mod token_stats;
#[cfg(feature = "wgpu")]
pub mod wgpu;
pub mod win_probability;

pub use backend::Backend;
pub use cpu::{Cpu, SimdLevel, simd_level};
#[cfg(feature = "cuda")]
pub use cuda::{Cuda, CudaTensor};
pub use error::{DaaError, Result};
pub use preference::{
    LossHyperParams, LossName, NllNormalisation, NllTerm, PairLogps, PairLoss, PreferenceLoss, PreferenceLossParams,
    pair_loss, validate_pair,
};
pub use segment::SegmentReduction;
pub use specification::Specification;
pub use tensor::{DType, Elements, HostTensor, SharedBytes, TensorData};
pub use token_stats::{MAX_TOP_K, TOKEN_STATS_COLUMNS, TokenStat, TokenStatsParams, TokenStatsRow};
#[cfg(feature = "wgpu")]
pub use wgpu::{Wgpu, WgpuOptions, WgpuTensor};
