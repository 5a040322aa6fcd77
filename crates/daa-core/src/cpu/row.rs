//! One pass over one row of logits: online log-sum-exp, entropy sums and the
//! top-k candidates, block by block, each logit read from memory once.
//!
//! A row is cut into blocks of [`BLOCK`] logits that stay in L1: the first
//! sweep over a block finds its max (and flags NaN/+inf); if the max beats
//! the running max, the running sums are rescaled by `e^{m_old − m_new}`; the
//! second sweep adds `e^{x−m}` and `e^{x−m}(x−m)`. Only blocks whose max beats
//! the current k-th largest value are scanned for top-k candidates, which after
//! the first few blocks is rare. Block sums are f32 lanes; across blocks the
//! sums are f64.

use half::{bf16, f16, slice::HalfFloatSliceExt};

#[cfg(target_arch = "x86_64")]
use super::lanes::Fused;
use super::lanes::{MulAdd, Unfused, block_exp_sums, block_max, block_neg_scaled_softmax};
use super::topk::TopK;
use crate::logits::{RowFault, first_bad_logit};

/// Logits per block (16 KiB of f32: well inside L1 with its converted copy).
pub(crate) const BLOCK: usize = 4096;

/// A logit element type the CPU kernels read (and, in place, write).
pub(crate) trait LogitElement: bytemuck::Pod + Send + Sync + 'static {
    /// The block as f32: itself for f32, converted into `scratch` otherwise.
    fn as_f32<'a>(src: &'a [Self], scratch: &'a mut [f32]) -> &'a [f32];
    /// Writes f32 values back in this element type.
    fn store(src: &[f32], dst: &mut [Self]);
    /// One element as f32.
    fn widen(self) -> f32;
    /// Zero in this element type.
    const ZERO: Self;
}

impl LogitElement for f32 {
    const ZERO: Self = 0.0;
    #[inline(always)]
    fn as_f32<'a>(src: &'a [f32], _scratch: &'a mut [f32]) -> &'a [f32] {
        src
    }
    #[inline(always)]
    fn store(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl LogitElement for bf16 {
    const ZERO: Self = bf16::ZERO;
    #[inline(always)]
    fn as_f32<'a>(src: &'a [bf16], scratch: &'a mut [f32]) -> &'a [f32] {
        let dst = &mut scratch[..src.len()];
        for (d, s) in dst.iter_mut().zip(src) {
            *d = f32::from_bits(u32::from(s.to_bits()) << 16);
        }
        dst
    }
    fn store(src: &[f32], dst: &mut [bf16]) {
        dst.convert_from_f32_slice(src);
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

impl LogitElement for f16 {
    const ZERO: Self = f16::ZERO;
    #[inline(always)]
    fn as_f32<'a>(src: &'a [f16], scratch: &'a mut [f32]) -> &'a [f32] {
        let dst = &mut scratch[..src.len()];
        src.convert_to_f32_slice(dst);
        dst
    }
    fn store(src: &[f32], dst: &mut [f16]) {
        dst.convert_from_f32_slice(src);
    }
    #[inline(always)]
    fn widen(self) -> f32 {
        self.to_f32()
    }
}

/// What one pass over a row yields: `lse = max + ln(sum_exp)`,
/// `entropy = ln(sum_exp) − sum_exp_shift / sum_exp`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowSums {
    /// Row maximum `m`.
    pub max: f32,
    /// `Z = Σ e^{x−m}`.
    pub sum_exp: f64,
    /// `S = Σ e^{x−m}(x−m)`.
    pub sum_exp_shift: f64,
}

/// Per-thread buffers of the row kernels.
#[derive(Debug)]
pub(crate) struct RowScratch {
    pub top: TopK,
    block: Vec<f32>,
    out: Vec<f32>,
}

impl Default for RowScratch {
    fn default() -> Self {
        Self { top: TopK::default(), block: vec![0.0; BLOCK], out: vec![0.0; BLOCK] }
    }
}

#[inline(always)]
fn row_sums_body<E: LogitElement, F: MulAdd, const L: usize>(
    row: &[E],
    following: &[E],
    scratch: &mut RowScratch,
) -> Result<RowSums, RowFault> {
    let (mut m, mut z, mut s) = (f32::NEG_INFINITY, 0f64, 0f64);
    for (b, src) in row.chunks(BLOCK).enumerate() {
        let next = match row.get((b + 1) * BLOCK..) {
            Some(rest) if !rest.is_empty() => &rest[..rest.len().min(BLOCK)],
            _ => &following[..following.len().min(BLOCK)],
        };
        let block = E::as_f32(src, &mut scratch.block);
        let (block_m, bad) = block_max(block);
        if bad {
            let fault = first_bad_logit(block.iter().copied()).unwrap_or(RowFault::Empty);
            return Err(match fault {
                RowFault::NonFinite { column, value } => RowFault::NonFinite { column: b * BLOCK + column, value },
                other => other,
            });
        }
        if block_m == f32::NEG_INFINITY {
            continue;
        }
        if block_m > scratch.top.threshold() {
            scratch.top.offer_block(block);
        }
        if block_m > m {
            if m > f32::NEG_INFINITY {
                // Rescale to the new max: Z' = f·Z, S' = f·(S + (m − m')·Z), f = e^{m − m'}.
                let shift = f64::from(m) - f64::from(block_m);
                let f = shift.exp();
                s = f * (s + shift * z);
                z *= f;
            }
            m = block_m;
        }
        let (block_z, block_s) = block_exp_sums::<F, L>(block, m, bytemuck::cast_slice(next));
        z += f64::from(block_z);
        s += f64::from(block_s);
    }
    if m == f32::NEG_INFINITY {
        return Err(RowFault::Empty);
    }
    Ok(RowSums { max: m, sum_exp: z, sum_exp_shift: s })
}

#[inline(always)]
fn backward_body<E: LogitElement, F: MulAdd, const L: usize>(
    row: &mut [E],
    target: usize,
    sums: RowSums,
    g: f32,
    scratch: &mut RowScratch,
) {
    let ln_z = sums.sum_exp.ln() as f32;
    let RowScratch { block, out, .. } = scratch;
    for (b, dst) in row.chunks_mut(BLOCK).enumerate() {
        let n = dst.len();
        let x = E::as_f32(dst, block);
        block_neg_scaled_softmax::<F>(x, sums.max, ln_z, g, &mut out[..n]);
        // g at the target before the one rounding to the logits' type (adding
        // it after would round −g·p and g − g·p twice: 2⁻⁹·g off in bf16
        // where p ≈ 1).
        if let Some(t) = target.checked_sub(b * BLOCK).filter(|&t| t < n) {
            out[t] += g;
        }
        E::store(&out[..n], dst);
    }
}

#[inline(always)]
fn backward_into_body<E: LogitElement, F: MulAdd, const L: usize>(
    row: &[E],
    dst: &mut [f32],
    target: usize,
    sums: RowSums,
    g: f32,
    scratch: &mut RowScratch,
) {
    let ln_z = sums.sum_exp.ln() as f32;
    for (src, out) in row.chunks(BLOCK).zip(dst.chunks_mut(BLOCK)) {
        let x = E::as_f32(src, &mut scratch.block);
        block_neg_scaled_softmax::<F>(x, sums.max, ln_z, g, out);
    }
    dst[target] += g;
}

/// Generates a function that runs `$body` compiled for the best instruction
/// set this processor has (AVX-512, then AVX2+FMA), with a portable fallback.
macro_rules! multiversioned {
    ($(#[$doc:meta])* fn $name:ident<E>($($arg:ident: $ty:ty),*) -> $ret:ty = $body:ident) => {
        $(#[$doc])*
        pub(crate) fn $name<E: LogitElement>($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx2,fma,bmi2")]
                fn avx512<E: LogitElement>($($arg: $ty),*) -> $ret {
                    $body::<E, Fused, 16>($($arg),*)
                }
                #[target_feature(enable = "avx2,fma,bmi2")]
                fn avx2<E: LogitElement>($($arg: $ty),*) -> $ret {
                    $body::<E, Fused, 16>($($arg),*)
                }
                match super::simd_level() {
                    // SAFETY: simd_level() reported these features present on this CPU.
                    super::SimdLevel::Avx512 => return unsafe { avx512::<E>($($arg),*) },
                    // SAFETY: as above.
                    super::SimdLevel::Avx2 => return unsafe { avx2::<E>($($arg),*) },
                    super::SimdLevel::Portable => {}
                }
            }
            $body::<E, Unfused, 16>($($arg),*)
        }
    };
}

multiversioned! {
    /// Online log-sum-exp and entropy sums of one row; fills `scratch.top`
    /// with the row's top-k values (reset it first). `following` is what lies
    /// after the row in memory (the next rows, or nothing): its start is
    /// prefetched while the last block is computed.
    fn row_sums<E>(row: &[E], following: &[E], scratch: &mut RowScratch) -> Result<RowSums, RowFault> = row_sums_body
}

multiversioned! {
    /// Overwrites a row with `g · (onehot(target) − softmax(row))`.
    fn backward_in_place<E>(row: &mut [E], target: usize, sums: RowSums, g: f32, scratch: &mut RowScratch) -> () = backward_body
}

multiversioned! {
    /// Writes `g · (onehot(target) − softmax(row))` into `dst`.
    fn backward_into<E>(row: &[E], dst: &mut [f32], target: usize, sums: RowSums, g: f32, scratch: &mut RowScratch) -> () = backward_into_body
}
