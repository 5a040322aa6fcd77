//! The top-k entropy floor as a term of a training step, on burn tensors:
//! `μ · (1/T) Σ_t relu(h − H_{b,t})` over the step's `T` scored positions
//! (both completions of every pair), its gradient added to the head's
//! gradient chunk by chunk. The formula and its gradient are
//! [`daa_core::entropy_floor`]'s, which this implementation is tested
//! against; `μ` comes from [`daa_core::controllers::EntropyFloorMultiplier`].

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Tensor};
use serde::{Deserialize, Serialize};

/// The floor's setting for the steps to come.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EntropyFloor {
    /// `μ ≥ 0` (0: no term).
    pub multiplier: f64,
    /// `h`, in the statistics' base.
    pub floor: f64,
    /// `k` of the top-k set.
    pub k: usize,
    /// The entropy's base `b` (2: bits).
    pub entropy_base: f64,
}

impl EntropyFloor {
    /// The term of a step with `positions` scored positions over all ranks
    /// together: the per-position coefficient `μ / T`.
    pub fn term(&self, positions: usize) -> FloorTerm {
        let t = positions.max(1) as f64;
        FloorTerm { coefficient: self.multiplier / t, floor: self.floor, k: self.k, entropy_base: self.entropy_base }
    }
}

/// `c · Σ_t relu(h − H_{b,t})` over the positions of the chunks it is given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloorTerm {
    /// `c`, the weight of each position's term (`μ / T`).
    pub coefficient: f64,
    /// `h`.
    pub floor: f64,
    /// `k` (at most the vocabulary is used).
    pub k: usize,
    /// `b`.
    pub entropy_base: f64,
}

impl FloorTerm {
    /// For a chunk of logits `z` (`[C, V]`, f32, finite): the term's
    /// gradient `∂/∂z` (`[C, V]`) and its value summed over the chunk (`[1]`).
    pub fn chunk<B: Backend>(&self, z: &Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 1>) {
        let [c, v] = z.dims();
        let k = self.k.clamp(1, v);
        let ln_b = self.entropy_base.ln();
        let (top, indices) = z.clone().topk_with_indices(k, 1);
        let log_q = log_softmax(top, 1);
        let q = log_q.clone().exp();
        let nats = (q.clone() * log_q.clone()).sum_dim(1).neg(); // [C, 1]
        let entropy = nats.clone().div_scalar(ln_b);
        let active = entropy.clone().lower_elem(self.floor).float().mul_scalar(self.coefficient / ln_b);
        let top_grad = q * (log_q + nats.expand([c, k])) * active.expand([c, k]);
        let grad = Tensor::zeros([c, v], &z.device()).scatter(1, indices, top_grad, IndexingUpdateOp::Add);
        let value = entropy.neg().add_scalar(self.floor).clamp_min(0.0).sum().mul_scalar(self.coefficient);
        (grad, value)
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::tensor::TensorData;
    use daa_core::entropy_floor::topk_entropy_floor_row;
    use daa_core::synthetic::SplitMix64;

    use super::*;

    #[test]
    fn a_chunk_agrees_with_the_specification() {
        let device = Default::default();
        let mut rng = SplitMix64::new(5);
        // Vocabularies off any power of two, k = V, a floor some rows are above.
        for (rows, v, k, floor) in [(1, 3, 2, 1.5), (7, 65, 10, 3.0), (5, 33, 33, 4.8), (3, 17, 1, 0.5)] {
            let z: Vec<f32> = (0..rows * v).map(|_| (2.5 * rng.normal()) as f32).collect();
            let term = FloorTerm { coefficient: 0.3, floor, k, entropy_base: 2.0 };
            let (grad, value) =
                term.chunk(&Tensor::<NdArray, 2>::from_data(TensorData::new(z.clone(), [rows, v]), &device));
            let grad: Vec<f32> = grad.into_data().to_vec().unwrap();
            let value: f32 = value.into_scalar();
            let mut want = 0.0;
            for r in 0..rows {
                let row: Vec<f64> = z[r * v..(r + 1) * v].iter().map(|&x| x as f64).collect();
                let spec = topk_entropy_floor_row(&row, k, 2.0, floor).unwrap();
                want += 0.3 * spec.value;
                for (i, g) in spec.grad.iter().enumerate() {
                    let got = grad[r * v + i] as f64;
                    assert!(
                        (got - 0.3 * g).abs() < 2e-6,
                        "rows {rows} V {v} k {k}: row {r} logit {i}: {got} vs {}",
                        0.3 * g
                    );
                }
            }
            assert!((value as f64 - want).abs() < 1e-5 * want.max(1.0), "{value} vs {want}");
        }
    }
}
