//! Fused operations with their own backward: attention ([`attention`]),
//! RMSNorm and LayerNorm ([`norm`]), RoPE ([`rope`]), SwiGLU ([`swiglu`])
//! and the linear layer ([`linear`]); and AdamW's update of a parameter in
//! one pass ([`adamw`]).
//!
//! burn's autodiff backend records every primitive a composition is made of
//! and keeps what each one's backward needs: attention written as
//! `softmax(q kᵀ / √h + mask) v` keeps `[batch, heads, t, t]` scores and
//! probabilities per layer and runs about ten passes over them backward; a
//! norm keeps six intermediates. Each operation here is one node of the
//! autodiff graph instead: its forward runs on the inner backend (no graph),
//! it keeps only its inputs (attention: and the softmax's log-normaliser,
//! `[batch, heads, t]`), and its backward is the closed form written in its
//! module, recomputing what it needs (attention: the scores, one tile of
//! queries at a time).
//!
//! The operations are plain burn tensor operations on the inner backend, so
//! the same code serves every backend daa trains on (Flex on the CPU, wgpu,
//! CUDA). Code generic over `B: Backend` reaches the custom node through
//! `return_on_autodiff!`: when `B` is one of the autodiff backends this build
//! includes, the arguments are that backend's types and the node is built;
//! on a backend without autodiff (inference, the frozen reference) the forward
//! runs as it is; any other backend gets the unfused composition, so nothing
//! is ever computed differently from what it means.
//!
//! Every operation is checked against the unfused composition (values and
//! gradients, f32 and bf16, odd sizes, padding, windows) in
//! `tests/integration/fused.rs`, on the CPU and on wgpu.

pub mod adamw;
pub mod attention;
pub(crate) mod cpu;
mod cpu_flash;
pub(crate) mod cpu_gemm;
mod cpu_tile;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
pub mod linear;
pub mod norm;
pub mod rope;
pub mod swiglu;

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};

use burn::tensor::backend::Backend;

/// `value` as a `T` when its type `A` is `T`, else back as it was.
pub(crate) fn downcast<A: 'static, T: 'static>(value: A) -> Result<T, A> {
    let mut slot = Some(value);
    match (&mut slot as &mut dyn Any).downcast_mut::<Option<T>>().and_then(Option::take) {
        Some(same) => Ok(same),
        // Not taken: the slot still holds the value.
        None => Err(slot.expect("the value was not taken")),
    }
}

/// Whether `B` builds the fused autodiff nodes: `Autodiff<X>` for an inner
/// backend `X` this build trains on (Flex; wgpu and CUDA with their
/// features). Other backends with autodiff get the unfused compositions.
pub fn has_fused_nodes<B: Backend>() -> bool {
    use burn::backend::Autodiff;
    use std::any::TypeId;
    let id = TypeId::of::<B>();
    let flex = id == TypeId::of::<Autodiff<burn::backend::Flex>>();
    #[cfg(feature = "wgpu")]
    let wgpu = id == TypeId::of::<Autodiff<burn::backend::Wgpu>>();
    #[cfg(not(feature = "wgpu"))]
    let wgpu = false;
    #[cfg(feature = "cuda")]
    let cuda = id == TypeId::of::<Autodiff<burn::backend::Cuda>>();
    #[cfg(not(feature = "cuda"))]
    let cuda = false;
    flex || wgpu || cuda
}

/// Whether the fused operations run CubeCL kernels (`fused/cube`) on the
/// inner backend `X`: burn's `Wgpu` and `Cuda` (norms, RoPE, SwiGLU and
/// AdamW; the attention runs its tiled tensor operations there).
pub fn has_cube_kernels<X: Backend>() -> bool {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    return cube::applies::<X>();
    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    false
}

/// Returns from the enclosing function with the fused node's output when
/// `B` is `Autodiff<X>` for an inner backend `X` this build trains on (Flex;
/// wgpu and CUDA with their features); otherwise evaluates to the arguments,
/// unchanged. `$args` is an `$Args<B>`; `$node::<X>` takes `$Args<Autodiff<X>>`
/// and returns the enclosing function's output type on `Autodiff<X>`.
macro_rules! return_on_autodiff {
    ($Args:ident, $args:expr, $node:ident) => {{
        let args = $args;
        let args = $crate::fused::return_on_autodiff!(@one $Args, args, $node, burn::backend::Flex);
        #[cfg(feature = "wgpu")]
        let args = $crate::fused::return_on_autodiff!(@one $Args, args, $node, burn::backend::Wgpu);
        #[cfg(feature = "cuda")]
        let args = $crate::fused::return_on_autodiff!(@one $Args, args, $node, burn::backend::Cuda);
        args
    }};
    (@one $Args:ident, $args:expr, $node:ident, $X:ty) => {
        match $crate::fused::downcast::<_, $Args<burn::backend::Autodiff<$X>>>($args) {
            Ok(args) => {
                // The arguments' backend is `Autodiff<X>`: so is the output's.
                return $crate::fused::downcast($node::<$X>(args))
                    .unwrap_or_else(|_| unreachable!("the backend is Autodiff<X>"));
            }
            Err(args) => args,
        }
    };
}
pub(crate) use return_on_autodiff;

/// 0: not read yet, 1: on, 2: off.
static FUSED: AtomicU8 = AtomicU8::new(0);
static CUBE_KERNELS: AtomicU8 = AtomicU8::new(0);

/// Whether the model uses the fused operations: yes unless the environment
/// variable `DAA_FUSED_OPS` is `0`, `off` or `false` (read once, for the
/// whole process). The unfused compositions stay, for comparison: the
/// trainer benchmark's before/after, and the agreement tests, which call
/// them directly.
pub fn enabled() -> bool {
    switched_on("DAA_FUSED_OPS", &FUSED)
}

/// Whether the fused operations run their CubeCL kernels on burn's GPU
/// backends: yes unless `DAA_CUBE_KERNELS` is `0`, `off` or `false` (read
/// once), which leaves them their tensor operations there — a way round a
/// kernel a GPU or driver refuses.
pub fn cube_kernels_enabled() -> bool {
    switched_on("DAA_CUBE_KERNELS", &CUBE_KERNELS)
}

/// `variable` unset or anything but `0`, `off`, `false`; cached in `state`.
fn switched_on(variable: &str, state: &AtomicU8) -> bool {
    match state.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let off = std::env::var(variable)
                .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "0" | "off" | "false"));
            state.store(if off { 2 } else { 1 }, Ordering::Relaxed);
            !off
        }
    }
}
