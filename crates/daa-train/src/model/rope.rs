//! Rotary position embeddings.
//!
//! Frequencies `ω_j = θ^(−2j/h)` for `j < h/2` (head width `h`), rescaled by
//! `rope_scaling`. Position `p` rotates each pair of coordinates by `p·ω_j`:
//! `(a, b) → (a cos − b sin, b cos + a sin)`. Llama pairs coordinate `j` with
//! `j + h/2` (halves); Cohere pairs `2j` with `2j + 1` (adjacent).

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::config::{ModelConfig, RopeScaling};

/// Rescaled inverse frequencies `ω_j`, in f64.
///
/// Llama 3 scaling (wavelength `λ = 2π/ω`, context `L`, factor `s`, low and
/// high frequency factors `l`, `u`): `λ < L/u` keeps `ω`; `λ > L/l` uses
/// `ω/s`; between, `(1 − a)·ω/s + a·ω` with `a = (L/λ − l)/(u − l)`.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: RopeScaling) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|j| {
            let omega = theta.powf(-((2 * j) as f64) / head_dim as f64);
            match scaling {
                RopeScaling::None => omega,
                RopeScaling::Linear { factor } => omega / factor,
                RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                    let wavelength = std::f64::consts::TAU / omega;
                    let (low_wavelength, high_wavelength) = (
                        original_max_position_embeddings / low_freq_factor,
                        original_max_position_embeddings / high_freq_factor,
                    );
                    if wavelength < high_wavelength {
                        omega
                    } else if wavelength > low_wavelength {
                        omega / factor
                    } else {
                        let a = (original_max_position_embeddings / wavelength - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - a) * omega / factor + a * omega
                    }
                }
            }
        })
        .collect()
}

/// Positions whose `cos`/`sin` rows are computed once, when the model is
/// built (at most the model's `max_position_embeddings`). Longer positions
/// are computed for the call that needs them.
pub const ROPE_TABLE_POSITIONS: usize = 4096;

/// The frequencies of one model and the pairing it uses.
#[derive(Debug, Clone)]
pub struct Rope {
    inverse_frequencies: Vec<f64>,
    interleaved: bool,
}

impl Rope {
    /// From a model configuration.
    pub fn new(config: &ModelConfig) -> Self {
        Self {
            inverse_frequencies: inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling),
            interleaved: config.rope_interleaved,
        }
    }

    /// Head width `h`.
    pub fn head_dim(&self) -> usize {
        2 * self.inverse_frequencies.len()
    }

    /// `cos` and `sin` rows for `positions`, `[n, h]` row-major, laid out to
    /// match the pairing: halves `[ω₀…ω_{h/2−1}, ω₀…ω_{h/2−1}]`, adjacent
    /// `[ω₀, ω₀, ω₁, ω₁, …]`; angles `p·ω_j` in f64.
    pub fn rows(&self, positions: impl Iterator<Item = usize>) -> (Vec<f32>, Vec<f32>) {
        let half = self.inverse_frequencies.len();
        let h = 2 * half;
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in positions {
            for c in 0..h {
                let j = if self.interleaved { c / 2 } else { c % half };
                let angle = p as f64 * self.inverse_frequencies[j];
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }

    /// Rotates `x` (`[batch, heads, seq, h]`): `x·cos + rotate(x)·sin` where
    /// `rotate` maps each pair `(a, b)` to `(−b, a)`; `cos`, `sin` broadcast
    /// over heads (`[batch or 1, 1, seq, h]`) ([`crate::fused::rope`]).
    pub fn apply<B: Backend>(&self, x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
        crate::fused::rope::rope(x, cos.clone(), sin.clone(), self.interleaved)
    }
}

/// `cos`/`sin` tables of positions `0..len`, `[len, h]`, kept on the
/// model's device (constant tensors: not trained, not saved).
#[derive(Module, Debug)]
pub struct RopeTables<B: Backend> {
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    #[module(skip)]
    rope: Rope,
}

impl<B: Backend> RopeTables<B> {
    /// Tables for positions `0..len` of `config`'s frequencies.
    pub fn new(config: &ModelConfig, len: usize, device: &B::Device) -> Self {
        let rope = Rope::new(config);
        let h = rope.head_dim();
        let (cos, sin) = rope.rows(0..len);
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [len, h]), device),
            sin: Tensor::from_data(TensorData::new(sin, [len, h]), device),
            rope,
        }
    }

    /// The frequencies and pairing.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// `cos` and `sin` `[1, 1, seq, h]` for positions `start..start + seq`,
    /// the same in every row.
    pub fn contiguous(&self, start: usize, seq: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [len, h] = self.cos.dims();
        if start + seq <= len {
            let pick = |t: &Tensor<B, 2>| t.clone().narrow(0, start, seq).reshape([1, 1, seq, h]);
            return (pick(&self.cos), pick(&self.sin));
        }
        let (cos, sin) = self.rope.rows(start..start + seq);
        let device = self.cos.device();
        (
            Tensor::from_data(TensorData::new(cos, [1, 1, seq, h]), &device),
            Tensor::from_data(TensorData::new(sin, [1, 1, seq, h]), &device),
        )
    }

    /// `cos` and `sin` `[rows, 1, seq, h]` for per-row positions
    /// (`positions[r * seq + i]`).
    pub fn gathered(&self, positions: &[usize], rows: usize, seq: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let [len, h] = self.cos.dims();
        let device = self.cos.device();
        if positions.iter().all(|&p| p < len) {
            let index: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [positions.len()]), &device);
            let pick = |t: &Tensor<B, 2>| t.clone().select(0, index.clone()).reshape([rows, 1, seq, h]);
            return (pick(&self.cos), pick(&self.sin));
        }
        let (cos, sin) = self.rope.rows(positions.iter().copied());
        (
            Tensor::from_data(TensorData::new(cos, [rows, 1, seq, h]), &device),
            Tensor::from_data(TensorData::new(sin, [rows, 1, seq, h]), &device),
        )
    }
}
