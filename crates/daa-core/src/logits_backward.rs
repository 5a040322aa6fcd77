//! Gradient of a loss with respect to the logits, from its gradient with
//! respect to each token's log-probability.
//!
//! For a row with logits `x`, target `t` and upstream gradient
//! `g = ∂L/∂log p_t`, since `∂ log p_t / ∂x_j = [j = t] − p_j`:
//!
//! `∂L/∂x_j = g · ([j = t] − softmax(x)_j)`
//!
//! Masked rows (mask 0 or negative target) get a zero gradient. This lets a
//! trainer take a fused path: the softmax is recomputed row by row from the
//! log-sum-exp and never stored, and the gradient may overwrite the logits
//! in place (the memory trick of Liger-Kernel).

use crate::error::{DaaError, Result};

/// Checks that `grad_logprob` has one value per logits row.
pub fn check_grad_shape(grad_shape: &[usize], rows: usize) -> Result<()> {
    let n: usize = grad_shape.iter().product();
    if n != rows || grad_shape.len() > 2 {
        return Err(DaaError::Shape {
            tensor: "grad_logprob",
            actual: grad_shape.to_vec(),
            expected: format!("one value per logits row ({rows}), shaped like `targets`"),
        });
    }
    Ok(())
}
