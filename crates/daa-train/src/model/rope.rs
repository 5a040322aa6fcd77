//! Rotary position embeddings.
//!
//! Frequencies `ω_j = θ^(−2j/h)` for `j < h/2` (head width `h`), rescaled by
//! `rope_scaling`. Position `p` rotates each pair of coordinates by `p·ω_j`:
//! `(a, b) → (a cos − b sin, b cos + a sin)`. Llama pairs coordinate `j` with
//! `j + h/2` (halves); Cohere pairs `2j` with `2j + 1` (adjacent).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

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

    /// `cos` and `sin` tables `[1, 1, seq, h]`, laid out to match the pairing:
    /// halves `[ω₀…ω_{h/2−1}, ω₀…ω_{h/2−1}]`, adjacent `[ω₀, ω₀, ω₁, ω₁, …]`.
    pub fn tables<B: Backend>(&self, seq: usize, device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = self.inverse_frequencies.len();
        let h = 2 * half;
        let (mut cos, mut sin) = (Vec::with_capacity(seq * h), Vec::with_capacity(seq * h));
        for p in 0..seq {
            for c in 0..h {
                let j = if self.interleaved { c / 2 } else { c % half };
                let angle = p as f64 * self.inverse_frequencies[j];
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [1, 1, seq, h]), device),
            Tensor::from_data(TensorData::new(sin, [1, 1, seq, h]), device),
        )
    }

    /// Rotates `x` (`[batch, heads, seq, h]`): `x·cos + rotate(x)·sin` where
    /// `rotate` maps each pair `(a, b)` to `(−b, a)`.
    pub fn apply<B: Backend>(&self, x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, heads, seq, h] = x.dims();
        let rotated = if self.interleaved {
            let pairs = x.clone().reshape([b, heads, seq, h / 2, 2]);
            let even = pairs.clone().narrow(4, 0, 1);
            let odd = pairs.narrow(4, 1, 1);
            Tensor::cat(vec![odd.neg(), even], 4).reshape([b, heads, seq, h])
        } else {
            let first = x.clone().narrow(3, 0, h / 2);
            let second = x.clone().narrow(3, h / 2, h / 2);
            Tensor::cat(vec![second.neg(), first], 3)
        };
        x * cos.clone() + rotated * sin.clone()
    }
}
