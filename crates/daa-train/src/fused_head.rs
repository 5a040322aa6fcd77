//! The fused output head: log-probabilities of the scored tokens, and their
//! gradients, without ever holding `[N × V]` logits.
//!
//! For the hidden states `h_t` of the `N` scored positions (`[N, d]`), the
//! head weight `W` (`[V, d]`, the embedding when tied) and Cohere's logit
//! scale `s`:
//!
//! ```text
//! z_t = s · W h_t,      ℓ_t = z_t[y_t] − log Σ_v exp z_t[v]
//! ```
//!
//! computed in chunks of `C` positions, so that at most `C × V` logits exist
//! at a time. For a surrogate `S = Σ_t c_t ℓ_t` (the trainer's `c_t` is the
//! weight `∂L̄/∂π_i` of the row holding position `t`), [`FusedHead::backward`]
//! recomputes each chunk's logits and forms
//!
//! ```text
//! G_t     = s · c_t · (e_{y_t} − softmax(z_t))     [C, V], one chunk at a time
//! ∂S/∂h_t = G_t W                                   [C, d]
//! ∂S/∂W   = Σ_t G_tᵀ h_t                            [V, d]
//! ```
//!
//! Memory of the head: about `3·C·V` floats (logits, probabilities, `G`)
//! instead of the `[N, V]` logits, log-softmax and their gradient the
//! unfused path keeps for autodiff. Cost: one more `C·d·V` product per
//! chunk (the recomputation), as in Liger-Kernel's chunked losses and Cut
//! Cross-Entropy. Plain burn tensor operations: the same code runs on every
//! backend; evaluation hands each chunk's logits to a callback (the top-k
//! statistics), so they never accumulate either.
//!
//! In bf16 training ([`crate::precision`]) the products `h Wᵀ`, `G W` and
//! `Gᵀ h` run in bf16; the logits are widened to f32 before the softmax, so
//! `ℓ`, `G` and the chunk handed to the statistics are f32, and `∂S/∂W` is
//! summed over chunks in f32. `∂S/∂h` comes back in `h`'s dtype.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, IndexingUpdateOp, Int, Tensor};

use crate::entropy_floor::FloorTerm;
use crate::error::ModelError;
use crate::fused;
use crate::model::CausalLm;

/// Bytes of f32 logits one chunk may hold on the CPU (64 MiB: 130
/// positions at `V = 128256`, every position of a small model).
pub const HEAD_CHUNK_BYTES: usize = 64 << 20;

/// Bytes of f32 logits one chunk may hold on a GPU (512 MiB: 1 024
/// positions at `V = 128256`, 512 at `V = 256000`).
pub const GPU_HEAD_CHUNK_BYTES: usize = 512 << 20;

/// Positions per GPU chunk are a multiple of this (the matrix products'
/// tiles are 64 or 128 rows) and at most [`GPU_HEAD_CHUNK_MAX_ROWS`].
pub const GPU_HEAD_CHUNK_TILE: usize = 128;

/// The most positions per GPU chunk: more buys no speed, only memory.
pub const GPU_HEAD_CHUNK_MAX_ROWS: usize = 1024;

/// Positions per CPU chunk for vocabulary `vocab`: `⌊HEAD_CHUNK_BYTES / 4V⌋`, at least 1.
pub fn chunk_rows(vocab: usize) -> usize {
    (HEAD_CHUNK_BYTES / (4 * vocab.max(1))).max(1)
}

/// Positions per GPU chunk: `⌊GPU_HEAD_CHUNK_BYTES / 4V⌋` rounded down to a
/// multiple of 128, between 128 and 1 024. (The CPU's 64 MiB gives 130 rows
/// at `V = 128256`: on a GPU, one full tile of 128 and a nearly empty one.)
pub fn gpu_chunk_rows(vocab: usize) -> usize {
    let rows = GPU_HEAD_CHUNK_BYTES / (4 * vocab.max(1));
    (rows / GPU_HEAD_CHUNK_TILE * GPU_HEAD_CHUNK_TILE).clamp(GPU_HEAD_CHUNK_TILE, GPU_HEAD_CHUNK_MAX_ROWS)
}

/// Whether `B` computes on a GPU: burn's CubeCL backends (CUDA, wgpu),
/// also under autodiff and fusion.
pub fn on_gpu<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device);
    name.contains("cubecl<") && !name.contains("cubecl<cpu")
}

/// Positions per chunk for `vocab` on `device`: [`gpu_chunk_rows`] on a GPU,
/// [`chunk_rows`] elsewhere.
pub fn default_chunk_rows<B: Backend>(vocab: usize, device: &B::Device) -> usize {
    if on_gpu::<B>(device) { gpu_chunk_rows(vocab) } else { chunk_rows(vocab) }
}

/// Receives each chunk's first position and logits `[C, V]`.
pub type OnChunk<'a, B> = dyn FnMut(usize, &Tensor<B, 2>) -> Result<(), ModelError> + 'a;

/// `configured` positions per chunk, or [`default_chunk_rows`] when it is 0
/// (how `train.head_chunk_tokens` and the evaluation's setting read).
pub fn chunk_rows_or<B: Backend>(configured: usize, vocab: usize, device: &B::Device) -> usize {
    if configured == 0 { default_chunk_rows::<B>(vocab, device) } else { configured }
}

/// The output head as the fused path applies it.
#[derive(Debug, Clone)]
pub struct FusedHead<B: Backend> {
    /// `W`, `[V, d]`.
    weight: Tensor<B, 2>,
    /// `s`.
    scale: f64,
    /// `C`.
    chunk_rows: usize,
}

impl<B: Backend> FusedHead<B> {
    /// The head `W` `[V, d]` with logit scale `scale`, `chunk_rows` positions per chunk.
    pub fn new(weight: Tensor<B, 2>, scale: f64, chunk_rows: usize) -> Self {
        Self { weight, scale, chunk_rows: chunk_rows.max(1) }
    }

    /// `model`'s head, chunked by [`default_chunk_rows`] for its device.
    pub fn of_model(model: &CausalLm<B>) -> Self {
        let config = model.config();
        let weight = model.head_weight().val();
        let rows = default_chunk_rows::<B>(config.vocab_size, &weight.device());
        Self::new(weight, config.logit_scale, rows)
    }

    /// The same head with `rows` positions per chunk.
    pub fn with_chunk_rows(self, rows: usize) -> Self {
        Self { chunk_rows: rows.max(1), ..self }
    }

    /// Positions per chunk.
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    /// `(first position, positions)` of every chunk of `n`.
    pub fn chunks(&self, n: usize) -> impl Iterator<Item = (usize, usize)> + use<B> {
        let c = self.chunk_rows;
        (0..n).step_by(c).map(move |start| (start, c.min(n - start)))
    }

    /// `z = s · h Wᵀ` of one chunk of hidden states (`[C, d]`), `[C, V]`, in f32.
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let z = fused::linear::matmul(&hidden, false, &self.weight, true).cast(FloatDType::F32);
        if self.scale == 1.0 { z } else { z.mul_scalar(self.scale) }
    }

    /// `ℓ_t` of every row of `hidden` (`[N, d]`) predicting `targets`
    /// (`[N]`), `[N]`. Each chunk's logits (`[C, V]`) are handed to
    /// `on_chunk` with the chunk's first position before they are dropped.
    pub fn token_logps(
        &self,
        hidden: &Tensor<B, 2>,
        targets: &Tensor<B, 1, Int>,
        on_chunk: &mut OnChunk<'_, B>,
    ) -> Result<Tensor<B, 1>, ModelError> {
        let [n, _] = hidden.dims();
        let mut parts = Vec::with_capacity(n.div_ceil(self.chunk_rows));
        for (start, len) in self.chunks(n) {
            let z = self.logits(hidden.clone().narrow(0, start, len));
            on_chunk(start, &z)?;
            let y = targets.clone().narrow(0, start, len);
            parts.push(match log_softmax_at_on_cpu(&z, &y) {
                Some(picked) => picked,
                None => log_softmax(z, 1).gather(1, y.reshape([len, 1])).reshape([len]),
            });
        }
        Ok(if parts.is_empty() { Tensor::zeros([0], &hidden.device()) } else { Tensor::cat(parts, 0) })
    }

    /// `(∂S/∂h, ∂S/∂W, F)` of `S = Σ_t c_t ℓ_t (+ F)` for `hidden` `[N, d]`,
    /// `targets` `[N]` and `coefficients` `c` `[N]` (f32): `[N, d]` in
    /// `hidden`'s dtype and `[V, d]` in f32 (the layout of `W`). With
    /// `floor`, the top-k entropy floor term `F` ([`crate::entropy_floor`])
    /// joins `S`: its gradient is added to each chunk's `G`, and its value
    /// (`[1]`) is returned. Without `weight_grad` (a frozen head), `∂S/∂W`
    /// is neither computed nor returned.
    pub fn backward(
        &self,
        hidden: &Tensor<B, 2>,
        targets: &Tensor<B, 1, Int>,
        coefficients: &Tensor<B, 1>,
        floor: Option<&FloorTerm>,
        weight_grad: bool,
    ) -> (Tensor<B, 2>, Option<Tensor<B, 2>>, Option<Tensor<B, 1>>) {
        let [n, d] = hidden.dims();
        let device = hidden.device();
        let dtype = FloatDType::from(self.weight.dtype());
        let mut grad_weight = weight_grad.then(|| Tensor::<B, 2>::zeros(self.weight.dims(), &device));
        let mut grad_hidden = Vec::with_capacity(n.div_ceil(self.chunk_rows));
        let mut floor_value: Option<Tensor<B, 1>> = None;
        for (start, len) in self.chunks(n) {
            let h = hidden.clone().narrow(0, start, len);
            let y = targets.clone().narrow(0, start, len).reshape([len, 1]);
            let c = coefficients.clone().narrow(0, start, len).reshape([len, 1]);
            let z = self.logits(h.clone());
            let p = softmax(z.clone(), 1);
            // G = c·(e_y − p) (+ ∂F/∂z), times s.
            let mut g = (p * c.clone()).neg().scatter(1, y, c, IndexingUpdateOp::Add);
            if let Some(term) = floor {
                let (grad, value) = term.chunk(&z);
                g = g + grad;
                floor_value = Some(match floor_value {
                    None => value,
                    Some(total) => total + value,
                });
            }
            if self.scale != 1.0 {
                g = g.mul_scalar(self.scale);
            }
            let g = g.cast(dtype);
            grad_hidden.push(fused::linear::matmul(&g, false, &self.weight, false));
            grad_weight = grad_weight.map(|sum| sum + fused::linear::matmul(&g, true, &h, false).cast(FloatDType::F32));
        }
        let grad_hidden = if grad_hidden.is_empty() {
            Tensor::<B, 2>::zeros([0, d], &device).cast(dtype)
        } else {
            Tensor::cat(grad_hidden, 0)
        };
        let floor_value = floor.map(|_| floor_value.unwrap_or_else(|| Tensor::zeros([1], &device)));
        (grad_hidden, grad_weight, floor_value)
    }
}

/// `log_softmax(z)[r, y_r]` of every row in one pass on the CPU (Flex, f32,
/// every target inside the vocabulary, the fused operations on); `None`
/// otherwise: the caller runs the tensor operations.
fn log_softmax_at_on_cpu<B: Backend>(z: &Tensor<B, 2>, targets: &Tensor<B, 1, Int>) -> Option<Tensor<B, 1>> {
    if !fused::enabled() {
        return None;
    }
    let [z_flex] = fused::cpu::contiguous_all([z])?;
    let [rows, v] = z.dims();
    let targets: Vec<usize> = targets
        .clone()
        .into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .ok()?
        .into_iter()
        .map(|y| usize::try_from(y).ok().filter(|&y| y < v))
        .collect::<Option<_>>()?;
    let picked = fused::cpu::log_softmax_at(fused::cpu::elements(&z_flex), v, &targets);
    Some(fused::cpu::to_backend(fused::cpu::tensor(picked, [rows])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_chunks_are_whole_tiles() {
        assert_eq!(gpu_chunk_rows(32_000), 1024);
        assert_eq!(gpu_chunk_rows(128_256), 1024);
        assert_eq!(gpu_chunk_rows(256_000), 512);
        assert_eq!(gpu_chunk_rows(152_064), 768); // Qwen2: 882 rounded down
        assert_eq!(gpu_chunk_rows(2_000_000), 128);
        assert_eq!(chunk_rows(128_256), 130);
        assert!(!on_gpu::<burn::backend::Flex>(&Default::default()));
    }
}
