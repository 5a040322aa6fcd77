//! Attention on the CPU in blocks that stay in cache (FlashAttention-2's
//! loop order), f32, for the fused attention's forward and backward on Flex.
//!
//! With the sizes and formulas of [`super::attention`]: the forward takes
//! each (batch row, query head, block of `n_q` queries) as one task, walks
//! the keys it may see in blocks of `n_k` and keeps, per query row, the
//! running maximum `m`, the running sum `l` and the unnormalised output:
//!
//! ```text
//! S = c · Q Kᵀ (−∞ where hidden),  m' = max(m, rowmax S),  P = exp(S − m'),
//! l = l · exp(m − m') + rowsum P,   O = O · exp(m − m') + P V
//! ```
//!
//! ending with `O / l`, `M = m`, `Z = l`. The backward takes each (batch row,
//! key/value head) as one task — it alone writes that head's `dk`, `dv` and
//! its query heads' `dq` — and, per block pair, recomputes
//! `P = exp(S − M) / Z`, then
//!
//! ```text
//! dv += Pᵀ dO,  dP = dO Vᵀ,  dS = c · P ∘ (dP − D),  dq += dS K,  dk += dSᵀ Q
//! ```
//!
//! with `D = rowsum(dO ∘ O)` per query row. Keys after a query's own column
//! are never visible (as in the tiled composition); a score is `−∞` where
//! the mask hides its key. `q`, `k`, `v`, `O` and `dO` are read where they
//! lie (any row stride: the model's head-split views `[b, t, H, h] →
//! [b, H, t, h]` need no copy); the output and the gradients are written in
//! the same axis order as the inputs they belong to, so that merging the
//! heads back is a view too. The products are `gemm`'s (the crate Flex's
//! matrix product uses, with its AVX-512 kernels), on strided views;
//! `exp` is a polynomial evaluated over whole rows (vectorised, within
//! 2 ulp of `expf` over the softmax's range).

use rayon::prelude::*;

use super::attention::Geometry;
use super::cpu::{Rows, Shared, View4};

/// The sizes of one call, how the mask is laid out and the block sizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlashDims {
    /// `b`, `K`, `G`, `t`, `s`, `h`.
    pub(crate) g: Geometry,
    /// Rows of the mask `[rows, 1, t, s]`: 1 (shared) or `b`; 0 without one.
    pub(crate) mask_rows: usize,
    /// Queries per block `n_q`.
    pub(crate) block_queries: usize,
    /// Keys per block `n_k`.
    pub(crate) block_keys: usize,
}

impl FlashDims {
    fn heads(&self) -> usize {
        self.g.kv * self.g.groups
    }

    /// Keys query row `r` may see: those up to its own column.
    fn visible(&self, r: usize) -> usize {
        self.g.s - self.g.t + r + 1
    }

    /// The mask row of batch row `bi`, query `r` (`s` values).
    fn mask_row<'a>(&self, hidden: Option<&'a [bool]>, bi: usize, r: usize) -> Option<&'a [bool]> {
        let row = if self.mask_rows == 1 { 0 } else { bi };
        hidden.map(|m| &m[(row * self.g.t + r) * self.g.s..(row * self.g.t + r + 1) * self.g.s])
    }
}

/// `dst[m × n] (row stride dst_rs) = (accumulate ? dst : 0) + beta · lhs[m × k] · rhs[k × n]`,
/// each operand given by its pointer, row stride and column stride.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: the caller's `dst` holds `m` rows of stride `dst_rs` ≥ `n`.
                unsafe { std::slice::from_raw_parts_mut(dst.add(i * dst_rs), n).fill(0.0) };
            }
        }
        return;
    }
    // SAFETY: the caller passes pointers valid for the shapes and strides given.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The output `[b, H, t, h]` (laid out with `out_strides`) and each row's
/// `M`, `Z` (`[b, H, t]`, contiguous) of `q` `[b, H, t, h]`, `k`, `v`
/// `[b, K, s, h]` (read where they lie), the mask of hidden keys
/// `[rows, 1, t, s]` and scale `c` (module docs).
pub(crate) fn forward(
    (q, k, v): (View4<'_>, View4<'_>, View4<'_>),
    hidden: Option<&[bool]>,
    d: FlashDims,
    scale: f32,
    out_strides: [usize; 3],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (heads, h) = (d.heads(), d.g.h);
    let blocks = d.g.t.div_ceil(d.block_queries.max(1));
    let mut out = vec![0f32; d.g.b * heads * d.g.t * h];
    let (mut max, mut sum) = (vec![0f32; d.g.b * heads * d.g.t], vec![0f32; d.g.b * heads * d.g.t]);
    let (out_ptr, max_ptr, sum_ptr) = (Shared(out.as_mut_ptr()), Shared(max.as_mut_ptr()), Shared(sum.as_mut_ptr()));
    // Later blocks see more keys: hand them out first.
    (0..d.g.b * heads * blocks).into_par_iter().rev().for_each_init(Vec::new, |o, task| {
        let (bh, block) = (task / blocks, task % blocks);
        let (bi, head) = (bh / heads, bh % heads);
        let kv_head = head / d.g.groups;
        let r0 = block * d.block_queries;
        let n = d.block_queries.min(d.g.t - r0);
        let rows = bh * d.g.t + r0;
        let (keys, values) = (k.rows(bi, kv_head), v.rows(bi, kv_head));
        let queries = q.rows(bi, head).from(r0);
        o.clear();
        o.resize(n * h, 0.0);
        // SAFETY: task (bh, block) alone writes rows `rows..rows + n` of `max`, `sum`.
        let (m, l) = unsafe {
            (std::slice::from_raw_parts_mut(max_ptr.at(rows), n), std::slice::from_raw_parts_mut(sum_ptr.at(rows), n))
        };
        forward_block(queries, (keys, values), hidden, d, (bi, r0, n), scale, (o, m, l));
        // SAFETY: `out` holds b·H·t·h elements laid out with `out_strides`
        // (dense); this task alone writes rows r0..r0 + n of (bi, head).
        unsafe { Shared(out_ptr.at(r0 * out_strides[2])).write_rows(o, h, out_strides, (bi, head)) };
    });
    (out, max, sum)
}

/// One block of `n` queries from row `r0` of batch row `bi` (module docs),
/// its output into `o` (`n × h`, contiguous).
#[allow(clippy::too_many_arguments)]
fn forward_block(
    queries: Rows<'_>,
    (keys, values): (Rows<'_>, Rows<'_>),
    hidden: Option<&[bool]>,
    d: FlashDims,
    (bi, r0, n): (usize, usize, usize),
    scale: f32,
    (o, m, l): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (h, nk) = (d.g.h, d.block_keys.max(1));
    let mut scores = vec![0f32; n * nk];
    m.fill(f32::NEG_INFINITY);
    l.fill(0.0);
    let end = d.visible(r0 + n - 1);
    assert!(values.holds(end, h), "values: {end} rows of {h}");
    for k0 in (0..end).step_by(nk) {
        let kn = nk.min(end - k0);
        block_scores(&mut scores, queries, keys, hidden, d, (bi, r0, n), (k0, kn), scale);
        for i in 0..n {
            let row = &mut scores[i * nk..i * nk + kn];
            let new_max = m[i].max(row_max(row));
            if new_max == f32::NEG_INFINITY {
                row.fill(0.0);
                continue;
            }
            let rescale = if m[i] == f32::NEG_INFINITY { 0.0 } else { exp_one(m[i] - new_max) };
            row.iter_mut().for_each(|x| *x -= new_max);
            exp_in_place(row);
            l[i] = l[i] * rescale + row_sum(row);
            m[i] = new_max;
            if rescale != 1.0 {
                o[i * h..(i + 1) * h].iter_mut().for_each(|x| *x *= rescale);
            }
        }
        // SAFETY: `o` holds n × h; `scores` n × nk (kn used); `values` rows
        // k0..k0 + kn of width h (asserted above).
        unsafe {
            product(
                (n, h, kn),
                o.as_mut_ptr(),
                h,
                true,
                (scores.as_ptr(), nk, 1),
                (values.data.as_ptr().add(k0 * values.stride), values.stride, 1),
                1.0,
            )
        };
    }
    for i in 0..n {
        let inverse = 1.0 / l[i];
        o[i * h..(i + 1) * h].iter_mut().for_each(|x| *x *= inverse);
    }
}

/// The backward's inputs besides `q`, `k`, `v`: the output `O`, its
/// gradient `dO` (`[b, H, t, h]`, read where they lie) and each row's `M`,
/// `Z` (`[b, H, t]`, contiguous).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Upstream<'a> {
    pub(crate) out: View4<'a>,
    pub(crate) d_out: View4<'a>,
    pub(crate) max: &'a [f32],
    pub(crate) sum: &'a [f32],
}

/// `(dq, dk, dv)` for the output's gradient (module docs), laid out with
/// the (dense) strides given for each.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    (q, k, v): (View4<'_>, View4<'_>, View4<'_>),
    hidden: Option<&[bool]>,
    up: Upstream<'_>,
    d: FlashDims,
    scale: f32,
    [q_strides, k_strides, v_strides]: [[usize; 3]; 3],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (heads, h, t, s) = (d.heads(), d.g.h, d.g.t, d.g.s);
    let mut dq = vec![0f32; d.g.b * heads * t * h];
    let (mut dk, mut dv) = (vec![0f32; d.g.b * d.g.kv * s * h], vec![0f32; d.g.b * d.g.kv * s * h]);
    let (dq_ptr, dk_ptr, dv_ptr) = (Shared(dq.as_mut_ptr()), Shared(dk.as_mut_ptr()), Shared(dv.as_mut_ptr()));
    (0..d.g.b * d.g.kv).into_par_iter().for_each(|kv_row| {
        let (bi, kv_head) = (kv_row / d.g.kv, kv_row % d.g.kv);
        let (keys, values) = (k.rows(bi, kv_head), v.rows(bi, kv_head));
        let (mut dk_rows, mut dv_rows, mut dq_rows) = (vec![0f32; s * h], vec![0f32; s * h], vec![0f32; t * h]);
        for g in 0..d.g.groups {
            let head = kv_head * d.g.groups + g;
            let first = (bi * heads + head) * t;
            let rows = HeadRows {
                q: q.rows(bi, head),
                out: up.out.rows(bi, head),
                d_out: up.d_out.rows(bi, head),
                max: &up.max[first..first + t],
                sum: &up.sum[first..first + t],
            };
            dq_rows.fill(0.0);
            backward_head(&rows, (keys, values), hidden, d, bi, scale, (&mut dq_rows, &mut dk_rows, &mut dv_rows));
            // SAFETY: `dq` holds b·H·t·h elements laid out with `q_strides`;
            // this task alone writes query head `head` of batch row `bi`.
            unsafe { dq_ptr.write_rows(&dq_rows, h, q_strides, (bi, head)) };
        }
        // SAFETY: `dk`, `dv` hold b·K·s·h elements laid out with their
        // strides; this task alone writes key/value head (bi, kv_head).
        unsafe {
            dk_ptr.write_rows(&dk_rows, h, k_strides, (bi, kv_head));
            dv_ptr.write_rows(&dv_rows, h, v_strides, (bi, kv_head));
        }
    });
    (dq, dk, dv)
}

/// One query head's rows.
struct HeadRows<'a> {
    q: Rows<'a>,
    out: Rows<'a>,
    d_out: Rows<'a>,
    max: &'a [f32],
    sum: &'a [f32],
}

/// One query head's share of the backward: its `dq` rows (`t × h`,
/// contiguous), added to its key/value head's `dk`, `dv` (`s × h`).
#[allow(clippy::too_many_arguments)]
fn backward_head(
    head: &HeadRows<'_>,
    (keys, values): (Rows<'_>, Rows<'_>),
    hidden: Option<&[bool]>,
    d: FlashDims,
    bi: usize,
    scale: f32,
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (h, nq, nk) = (d.g.h, d.block_queries.max(1), d.block_keys.max(1));
    let mut p = vec![0f32; nq * nk];
    let mut dp = vec![0f32; nq * nk];
    let mut row_dot = vec![0f32; nq];
    assert!(head.q.holds(d.g.t, h) && head.d_out.holds(d.g.t, h), "queries: {} rows of {h}", d.g.t);
    assert!(keys.holds(d.g.s, h) && values.holds(d.g.s, h), "keys, values: {} rows of {h}", d.g.s);
    for r0 in (0..d.g.t).step_by(nq) {
        let n = nq.min(d.g.t - r0);
        let (queries, d_rows) = (head.q.from(r0), head.d_out.from(r0));
        for (i, row_dot) in row_dot.iter_mut().enumerate().take(n) {
            *row_dot = dot(head.out.row(r0 + i, h), d_rows.row(i, h));
        }
        let end = d.visible(r0 + n - 1);
        for k0 in (0..end).step_by(nk) {
            let kn = nk.min(end - k0);
            block_scores(&mut p, queries, keys, hidden, d, (bi, r0, n), (k0, kn), scale);
            for i in 0..n {
                let row = &mut p[i * nk..i * nk + kn];
                let (m, inverse) = (head.max[r0 + i], 1.0 / head.sum[r0 + i]);
                if m == f32::NEG_INFINITY {
                    row.fill(0.0);
                    continue;
                }
                row.iter_mut().for_each(|x| *x -= m);
                exp_in_place(row);
                row.iter_mut().for_each(|x| *x *= inverse);
            }
            // SAFETY (every product below): `p`, `dp` hold n × nk; `queries`,
            // `d_rows` n rows of h from r0 (asserted); `dq` t × h, `dk`, `dv`
            // s × h contiguous; keys/values rows k0..k0 + kn (asserted).
            unsafe {
                product(
                    (kn, h, n),
                    dv.as_mut_ptr().add(k0 * h),
                    h,
                    true,
                    (p.as_ptr(), 1, nk),
                    (d_rows.data.as_ptr(), d_rows.stride, 1),
                    1.0,
                );
                product(
                    (n, kn, h),
                    dp.as_mut_ptr(),
                    nk,
                    false,
                    (d_rows.data.as_ptr(), d_rows.stride, 1),
                    (values.data.as_ptr().add(k0 * values.stride), 1, values.stride),
                    1.0,
                );
            }
            for i in 0..n {
                let (pr, dr) = (&p[i * nk..i * nk + kn], &mut dp[i * nk..i * nk + kn]);
                let dot = row_dot[i];
                dr.iter_mut().zip(pr).for_each(|(g, &p)| *g = scale * p * (*g - dot));
            }
            unsafe {
                product(
                    (n, h, kn),
                    dq.as_mut_ptr().add(r0 * h),
                    h,
                    true,
                    (dp.as_ptr(), nk, 1),
                    (keys.data.as_ptr().add(k0 * keys.stride), keys.stride, 1),
                    1.0,
                );
                product(
                    (kn, h, n),
                    dk.as_mut_ptr().add(k0 * h),
                    h,
                    true,
                    (dp.as_ptr(), 1, nk),
                    (queries.data.as_ptr(), queries.stride, 1),
                    1.0,
                );
            }
        }
    }
}

/// `c · Q Kᵀ` of `n` queries (rows `r0..` of batch row `bi`) against keys
/// `k0..k0 + kn`, into `scores` (row stride `n_k`), `−∞` where hidden.
#[allow(clippy::too_many_arguments)]
fn block_scores(
    scores: &mut [f32],
    queries: Rows<'_>,
    keys: Rows<'_>,
    hidden: Option<&[bool]>,
    d: FlashDims,
    (bi, r0, n): (usize, usize, usize),
    (k0, kn): (usize, usize),
    scale: f32,
) {
    let (h, nk) = (d.g.h, d.block_keys.max(1));
    assert!(scores.len() >= n * nk && queries.holds(n, h) && keys.holds(k0 + kn, h));
    // SAFETY: `scores` holds n × nk, `queries` n rows of h, `keys` rows
    // k0..k0 + kn of h (read transposed), as asserted.
    unsafe {
        product(
            (n, kn, h),
            scores.as_mut_ptr(),
            nk,
            false,
            (queries.data.as_ptr(), queries.stride, 1),
            (keys.data.as_ptr().add(k0 * keys.stride), 1, keys.stride),
            scale,
        )
    };
    for i in 0..n {
        mask_row(&mut scores[i * nk..i * nk + kn], d.mask_row(hidden, bi, r0 + i), k0, d.visible(r0 + i));
    }
}

/// Sets `−∞` where the query's mask row hides a key (keys `k0..k0 + row.len()`)
/// and at every key at or after `visible`.
fn mask_row(row: &mut [f32], hidden: Option<&[bool]>, k0: usize, visible: usize) {
    if let Some(hidden) = hidden {
        let len = row.len();
        row.iter_mut().zip(&hidden[k0..k0 + len]).for_each(|(x, &h)| {
            if h {
                *x = f32::NEG_INFINITY;
            }
        });
    }
    if visible < k0 + row.len() {
        row[visible.saturating_sub(k0)..].fill(f32::NEG_INFINITY);
    }
}

/// Lanes of the reductions below (independent accumulators LLVM can vectorise).
const LANES: usize = 16;

pub(crate) fn row_max(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = if x > *m { x } else { *m };
        }
    }
    rest.iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

pub(crate) fn row_sum(row: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (s, &x) in lanes.iter_mut().zip(chunk) {
            *s += x;
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().sum::<f32>()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in lanes.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    lanes.iter().sum::<f32>() + rest
}

/// `eˣ` (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial in `r`,
/// times `2ⁿ`); 0 below −87.3 (`−∞` included), NaN for NaN.
#[inline(always)]
fn exp_one(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2²³: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let clamped = x.clamp(-87.3, 88.7);
    let n = (clamped * LOG2_E + ROUND) - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let y = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { y * two_n }
}

#[inline(always)]
fn exp_slice(row: &mut [f32]) {
    row.iter_mut().for_each(|x| *x = exp_one(*x));
}

/// [`exp_one`] of every element, on the widest vectors the CPU has.
pub(crate) fn exp_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return unsafe { exp_avx512(row) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { exp_avx2(row) };
        }
    }
    exp_slice(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_avx512(row: &mut [f32]) {
    exp_slice(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(row: &mut [f32]) {
    exp_slice(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_polynomial_exp_is_within_two_ulp_of_expf_over_the_softmax_range() {
        let mut worst = 0f32;
        let xs: Vec<f32> = (0..=200_000).map(|i| -87.0 + 87.0 * i as f32 / 200_000.0).collect();
        let mut got = xs.clone();
        exp_in_place(&mut got);
        for (&x, &y) in xs.iter().zip(&got) {
            let want = (x as f64).exp();
            let ulp = (want as f32).to_bits().abs_diff(y.to_bits()) as f32;
            worst = worst.max(ulp);
        }
        assert!(worst <= 2.0, "{worst} ulp");
        let mut edges = [f32::NEG_INFINITY, -1e30, -87.4, 0.0, f32::NAN];
        exp_in_place(&mut edges);
        assert_eq!(&edges[..4], &[0.0, 0.0, 0.0, 1.0]);
        assert!(edges[4].is_nan());
    }
}
