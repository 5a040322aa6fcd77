//! daa in the browser: the testbed's whole pipeline (SFT of the reference
//! policy, labelled pairs, DPO/IPO/Hinge training, held-out evaluation with
//! the over-optimisation indicators, the policy's samples judged by the gold
//! reward, turning points, adaptive regularisation) as a [`Session`] that
//! does one small piece of work per call, and its JavaScript API
//! (`bindings`, wasm32 only; the page in `web/` drives it from a Web
//! Worker).
//!
//! The model trains on burn's CPU backend compiled to wasm (one thread);
//! daa-core's top-k statistics run on WebGPU where the browser has it. burn's
//! own wgpu backend is not used in the browser: its tensor reads are
//! asynchronous there, and the trainer's step reads the loss and gradient
//! norm synchronously.

pub mod config;
pub mod session;

#[cfg(target_arch = "wasm32")]
mod bindings;

pub use config::{DemoConfig, DemoLoss, Regularisation};
pub use session::{EvalPoint, Phase, Progress, Session, SideBySide};
