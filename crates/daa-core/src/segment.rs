//! Segment reduction: per-token values summed and averaged per sequence.
//!
//! Tokens `0..N` are split into `S` contiguous segments by `offsets`
//! (`offsets[0] = 0 ≤ offsets[1] ≤ … ≤ offsets[S] = N`); segment `s` holds
//! tokens `offsets[s]..offsets[s+1]`. With per-token weights `w_i` (a mask:
//! 1 keeps, 0 drops; any non-negative weight is allowed) and values
//! `v_{i,c}` in `C` columns:
//!
//! - `sums[s, c]   = Σ_{i ∈ s} w_i · v_{i,c}`
//! - `counts[s]    = Σ_{i ∈ s} w_i`
//! - `means[s, c]  = sums[s, c] / counts[s]`, and 0 when `counts[s] = 0`.
//!
//! Without weights every `w_i = 1`. A value whose weight is 0 is not read,
//! so masked positions may hold anything.

use crate::error::{DaaError, Result};
use crate::tensor::HostTensor;

/// The three outputs of a segment reduction, each a backend tensor.
#[derive(Debug, Clone)]
pub struct SegmentReduction<T> {
    /// `[S, C]` weighted sums.
    pub sums: T,
    /// `[S]` sums of weights (token counts for a 0/1 mask).
    pub counts: T,
    /// `[S, C]` weighted means (0 for an empty segment).
    pub means: T,
}

/// `(N, C)` of a values tensor: `[N]` is read as `[N, 1]`.
pub fn values_layout(shape: &[usize]) -> Result<(usize, usize)> {
    match shape {
        [n] => Ok((*n, 1)),
        [n, c] => Ok((*n, *c)),
        _ => Err(DaaError::Shape {
            tensor: "values",
            actual: shape.to_vec(),
            expected: "[tokens] or [tokens, columns]".into(),
        }),
    }
}

/// Reads and checks segment offsets (any integer type) for `tokens` values.
pub fn read_offsets(offsets: &HostTensor, tokens: usize) -> Result<Vec<usize>> {
    if offsets.shape().len() != 1 || offsets.shape()[0] == 0 {
        return Err(DaaError::Shape {
            tensor: "offsets",
            actual: offsets.shape().to_vec(),
            expected: "[segments + 1] with at least one entry".into(),
        });
    }
    let raw = offsets.to_i64_vec("offsets")?;
    if raw[0] != 0 {
        return Err(DaaError::Offsets(format!("offsets[0] = {}, expected 0", raw[0])));
    }
    for (s, pair) in raw.windows(2).enumerate() {
        if pair[1] < pair[0] {
            return Err(DaaError::Offsets(format!(
                "offsets[{}] = {} is below offsets[{s}] = {}, expected a non-decreasing list",
                s + 1,
                pair[1],
                pair[0]
            )));
        }
    }
    let last = *raw.last().unwrap_or(&0);
    if last != tokens as i64 {
        return Err(DaaError::Offsets(format!("last offset is {last}, expected the number of values {tokens}")));
    }
    Ok(raw.into_iter().map(|o| o as usize).collect())
}

/// Reads optional per-token weights and checks their count and sign.
pub fn read_weights(weights: Option<&HostTensor>, tokens: usize) -> Result<Option<Vec<f64>>> {
    let Some(weights) = weights else { return Ok(None) };
    if weights.len() != tokens || weights.shape().len() != 1 {
        return Err(DaaError::Shape {
            tensor: "weights",
            actual: weights.shape().to_vec(),
            expected: format!("[{tokens}], one weight per value row"),
        });
    }
    let w = match weights.to_f64_vec("weights") {
        Ok(w) => w,
        Err(_) => weights.to_bool_vec("weights")?.into_iter().map(|b| f64::from(u8::from(b))).collect(),
    };
    if let Some((i, bad)) = w.iter().enumerate().find(|(_, x)| !(x.is_finite() && **x >= 0.0)) {
        return Err(DaaError::Parameter {
            name: "weights",
            value: format!("{bad} at token {i}"),
            expected: "expected finite weights >= 0".into(),
        });
    }
    Ok(Some(w))
}
