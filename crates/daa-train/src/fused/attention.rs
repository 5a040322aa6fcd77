//! Attention tiled over queries, with its own backward (flash-style).
//!
//! For queries `q` `[b, H, t, h]`, keys and values `k`, `v` `[b, K, s, h]`
//! (`K` key/value heads, each shared by `G = H / K` query heads; the last
//! `t` of the `s` keys are the queries' own columns), a mask of hidden keys
//! and the scale `c = 1/√h`:
//!
//! ```text
//! S = c · q kᵀ  (−∞ where hidden),   P = softmax_rows(S),   O = P v
//! M = max_j S_j,   Z = Σ_j exp(S_j − M)      (each row's, kept)
//! ```
//!
//! The rows are taken `n` queries at a time (a tile): a tile's scores exist
//! only against the keys it may see (key columns up to its last query's own:
//! the future is always hidden), `[b, K, G·n, keys]`, never `[t × s]` per
//! head for the whole sequence. Grouped heads are never repeated: the `G`
//! query heads of a key/value head are stacked as rows of one product. The
//! backward pass recomputes each tile's probabilities from `M` and `Z`
//! (`P = exp(S − M) / Z`) and forms, with `dO` the output's gradient,
//!
//! ```text
//! dv += Pᵀ dO,   dP = dO vᵀ,   dS = P ∘ (dP − rowsum(P ∘ dP))
//! dq  = c · dS k,   dk += c · dSᵀ q
//! ```
//!
//! (`rowsum(P ∘ dP)` equals FlashAttention's `rowsum(dO ∘ O)`; taken from the
//! tile in f32 it needs no copy of `O`.) What the autodiff node keeps: `q`,
//! `k`, `v` (which the projections' backward keeps anyway), the mask, and
//! `M`, `Z` `[b, K, G, t]` in f32. (FlashAttention keeps one log-normaliser
//! `L = M + log Z`; rounded to f32 at the scores' magnitude it lost the
//! gradient of saturated rows — scores in the thousands — to 4·10⁻⁴ where
//! the unfused composition kept 2·10⁻⁵: `S − M` is exact, `S − L` is not.)
//!
//! On the CPU (Flex, f32) the whole call runs in `fused/cpu_flash.rs`
//! instead: blocks of queries and keys that stay in cache, an online
//! softmax (the same `M`, `Z`), and a backward that forms
//! `D = rowsum(dO ∘ O)` from the output, which the node then keeps.
//!
//! Precision follows the unfused composition: the products in the
//! activations' dtype, the scores widened to f32 for the softmax and its
//! backward, `P` rounded to the dtype before `P v`; `dk`, `dv` summed over
//! tiles in f32.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, FloatDType, Tensor, TensorPrimitive};

use super::{cpu_tile, return_on_autodiff};

/// Bytes of f32 scores one tile of queries may hold on the CPU.
pub const CPU_TILE_BYTES: usize = 32 << 20;

/// Bytes of f32 scores one tile of queries may hold on a GPU.
pub const GPU_TILE_BYTES: usize = 256 << 20;

/// Queries per tile, when a tile holds fewer than all: a multiple of this.
pub const TILE_ALIGN: usize = 64;

/// One attention call's inputs.
#[derive(Debug, Clone)]
pub struct AttentionArgs<B: Backend> {
    /// Queries `[b, H, t, h]`, rotated.
    pub q: Tensor<B, 4>,
    /// Keys `[b, K, s, h]`, rotated; `s ≥ t`, the last `t` are the queries' columns.
    pub k: Tensor<B, 4>,
    /// Values `[b, K, s, h]`.
    pub v: Tensor<B, 4>,
    /// `true` where a query must not see a key, `[b or 1, 1, t, s]`; `None`: all visible.
    pub hidden: Option<Tensor<B, 4, Bool>>,
    /// `c`.
    pub scale: f64,
    /// Queries per tile `n`.
    pub tile_rows: usize,
}

/// The sizes of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub(crate) b: usize,
    pub(crate) kv: usize,
    pub(crate) groups: usize,
    pub(crate) t: usize,
    pub(crate) s: usize,
    pub(crate) h: usize,
}

impl Geometry {
    pub(crate) fn of<B: Backend>(a: &AttentionArgs<B>) -> Self {
        let [b, heads, t, h] = a.q.dims();
        let [_, kv, s, _] = a.k.dims();
        Self { b, kv, groups: heads / kv, t, s, h }
    }

    /// `(first query, queries)` of every tile.
    fn tiles(&self, n: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let (t, n) = (self.t, n.clamp(1, self.t.max(1)));
        (0..t).step_by(n).map(move |t0| (t0, n.min(t - t0)))
    }

    /// Keys a tile of queries `t0..t0 + n` may see: those up to its last query's column.
    fn visible_keys(&self, t0: usize, n: usize) -> usize {
        self.s - self.t + t0 + n
    }
}

/// Queries per tile so that one tile's f32 scores (`b·H·n·s·4` bytes) fit
/// in `budget` bytes: all `t` when they fit, else a multiple of
/// [`TILE_ALIGN`] (at least one query).
pub fn tile_rows(b: usize, heads: usize, t: usize, s: usize, budget: usize) -> usize {
    let per_query = (b * heads * s * 4).max(1);
    let n = budget / per_query;
    if n >= t {
        t.max(1)
    } else if n >= TILE_ALIGN {
        n / TILE_ALIGN * TILE_ALIGN
    } else {
        n.max(1)
    }
}

/// `softmax(c · q kᵀ + mask) v`, `[b, H, t, h]`, tiled over queries, with its
/// own backward on the autodiff backends daa trains on (module docs).
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    hidden: Option<Tensor<B, 4, Bool>>,
    scale: f64,
) -> Tensor<B, 4> {
    let device = q.device();
    let [b, heads, t, _] = q.dims();
    let s = k.dims()[2];
    let budget = if crate::fused_head::on_gpu::<B>(&device) { GPU_TILE_BYTES } else { CPU_TILE_BYTES };
    attention_with(AttentionArgs { q, k, v, hidden, scale, tile_rows: tile_rows(b, heads, t, s, budget) })
}

/// [`attention`] with the tile size `args.tile_rows` as given.
pub fn attention_with<B: Backend>(args: AttentionArgs<B>) -> Tensor<B, 4> {
    if !super::enabled() {
        return unfused(args);
    }
    if !B::ad_enabled(&args.q.device()) {
        return forward(&args).0;
    }
    let args = return_on_autodiff!(AttentionArgs, args, node);
    unfused(args)
}

/// The unfused composition (what autodiff differentiates op by op): every
/// key/value head repeated `G` times, `[b, H, t, s]` scores at once.
pub fn unfused<B: Backend>(a: AttentionArgs<B>) -> Tensor<B, 4> {
    let g = Geometry::of(&a);
    let heads = g.kv * g.groups;
    let (k, v) = (repeat_kv(a.k, g.groups), repeat_kv(a.v, g.groups));
    let scores = a.q.matmul(k.swap_dims(2, 3)).mul_scalar(a.scale);
    let scores = match a.hidden {
        Some(hidden) => scores.mask_fill(hidden.expand([g.b, heads, g.t, g.s]), f32::NEG_INFINITY),
        None => scores,
    };
    let dtype = FloatDType::from(scores.dtype());
    softmax(scores.cast(FloatDType::F32), 3).cast(dtype).matmul(v)
}

/// Repeats each key/value head `groups` times: `[b, K, s, h] → [b, K·groups, s, h]`.
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, groups: usize) -> Tensor<B, 4> {
    if groups == 1 {
        return x;
    }
    let [b, kv, s, h] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, groups, s, h]).reshape([b, kv * groups, s, h])
}

/// One tile's queries `[b, K, G·n, h]`.
fn query_tile<B: Backend>(q: &Tensor<B, 5>, g: Geometry, t0: usize, n: usize) -> Tensor<B, 4> {
    q.clone().narrow(3, t0, n).reshape([g.b, g.kv, g.groups * n, g.h])
}

/// The mask as an additive f32 bias, `0` where a key is visible and `−∞`
/// where it is hidden, `[b or 1, 1, t, s]`, made once per call: tiles take
/// slices of it. (Slicing the boolean mask instead gave wrong values on
/// burn 0.21's wgpu backend: `mask_fill` with a mask sliced at an offset.)
fn additive_bias<B: Backend>(a: &AttentionArgs<B>) -> Option<Tensor<B, 4>> {
    let hidden = a.hidden.clone()?;
    let shape = hidden.dims();
    Some(Tensor::<B, 4>::zeros(shape, (&a.q.device(), DType::F32)).mask_fill(hidden, f32::NEG_INFINITY))
}

/// One tile's probabilities `P` (f32, `[b, K, G·n, keys]`) and each row's
/// `M`, `Z` (`[b, K, G·n, 1]`).
fn tile_softmax<B: Backend>(
    a: &AttentionArgs<B>,
    g: Geometry,
    bias: Option<&Tensor<B, 4>>,
    (query, keys): (Tensor<B, 4>, Tensor<B, 4>),
    t0: usize,
    n: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let visible = keys.dims()[2];
    let raw = query.matmul(keys.swap_dims(2, 3));
    let bias = bias.map(|b| b.clone().narrow(2, t0, n).narrow(3, 0, visible));
    let scores = masked(raw.mul_scalar(a.scale).cast(FloatDType::F32), bias, g, n);
    let max = scores.clone().max_dim(3);
    let exp = (scores - max.clone()).exp();
    let sum = exp.clone().sum_dim(3);
    (exp / sum.clone(), max, sum)
}

/// `scores + bias` (the bias `[b or 1, 1, n, keys]` broadcast over heads).
fn masked<B: Backend>(scores: Tensor<B, 4>, bias: Option<Tensor<B, 4>>, g: Geometry, n: usize) -> Tensor<B, 4> {
    let Some(bias) = bias else {
        return scores;
    };
    let [rows, _, _, visible] = bias.dims();
    let bias = bias.reshape([rows, 1, 1, n, visible]);
    (scores.reshape([g.b, g.kv, g.groups, n, visible]) + bias).reshape([g.b, g.kv, g.groups * n, visible])
}

/// One tile's backward: `P` (f32) and `dS = c · P ⊙ (dP − rowsum(P ⊙ dP))`
/// (f32) from the tile's queries and keys, each row's `M`, `Z` and `dP`.
fn tile_softmax_backward<B: Backend>(
    a: &AttentionArgs<B>,
    g: Geometry,
    bias: Option<&Tensor<B, 4>>,
    (query, keys): (Tensor<B, 4>, Tensor<B, 4>),
    (max, sum): (Tensor<B, 4>, Tensor<B, 4>),
    dp: Tensor<B, 4>,
    (t0, n): (usize, usize),
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let visible = keys.dims()[2];
    let raw = query.matmul(keys.swap_dims(2, 3));
    let bias = bias.map(|b| b.clone().narrow(2, t0, n).narrow(3, 0, visible));
    let scores = masked(raw.mul_scalar(a.scale).cast(FloatDType::F32), bias, g, n);
    let p = (scores - max).exp() / sum;
    let row = (p.clone() * dp.clone()).sum_dim(3);
    let ds = (p.clone() * (dp - row)).mul_scalar(a.scale);
    (p, ds)
}

/// Each query row's softmax normaliser: `M` and `Z`, `[b, K, G, t]`, f32.
#[derive(Debug, Clone)]
pub struct Normaliser<B: Backend> {
    /// `M`, the row's largest score.
    pub max: Tensor<B, 4>,
    /// `Z = Σ_j exp(S_j − M)`.
    pub sum: Tensor<B, 4>,
    /// The output `O`, kept where the backward forms `D = rowsum(dO ∘ O)`
    /// (the CPU kernel, `fused/cpu_flash.rs`); `None` where it takes
    /// `rowsum(P ∘ dP)` from each tile.
    pub output: Option<Tensor<B, 4>>,
}

impl<B: Backend> Normaliser<B> {
    /// Rows `t0..t0 + n` as `[b, K, G·n, 1]` columns.
    fn rows(&self, g: Geometry, t0: usize, n: usize) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let column = |t: &Tensor<B, 4>| t.clone().narrow(3, t0, n).reshape([g.b, g.kv, g.groups * n, 1]);
        (column(&self.max), column(&self.sum))
    }
}

/// The output `[b, H, t, h]` and each row's normaliser.
pub fn forward<B: Backend>(a: &AttentionArgs<B>) -> (Tensor<B, 4>, Normaliser<B>) {
    let g = Geometry::of(a);
    if let Some(done) = cpu_tile::flash_forward(a, g) {
        return done;
    }
    let dtype = FloatDType::from(a.q.dtype());
    let q = a.q.clone().reshape([g.b, g.kv, g.groups, g.t, g.h]);
    let bias = additive_bias(a);
    let (mut outputs, mut maxima, mut sums) = (Vec::new(), Vec::new(), Vec::new());
    for (t0, n) in g.tiles(a.tile_rows) {
        let visible = g.visible_keys(t0, n);
        let keys = a.k.clone().narrow(2, 0, visible);
        let values = a.v.clone().narrow(2, 0, visible);
        let (p, max, sum) = tile_softmax(a, g, bias.as_ref(), (query_tile(&q, g, t0, n), keys), t0, n);
        let out = p.cast(dtype).matmul(values);
        outputs.push(out.reshape([g.b, g.kv, g.groups, n, g.h]));
        maxima.push(max.reshape([g.b, g.kv, g.groups, n]));
        sums.push(sum.reshape([g.b, g.kv, g.groups, n]));
    }
    let out = Tensor::cat(outputs, 3).reshape([g.b, g.kv * g.groups, g.t, g.h]);
    (out, Normaliser { max: Tensor::cat(maxima, 3), sum: Tensor::cat(sums, 3), output: None })
}

/// `(dq, dk, dv)` for the output's gradient `d_out` `[b, H, t, h]`, given the rows' normalisers.
pub fn backward<B: Backend>(
    a: &AttentionArgs<B>,
    normaliser: &Normaliser<B>,
    d_out: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let g = Geometry::of(a);
    let dtype = FloatDType::from(a.q.dtype());
    if let Some(grads) = cpu_tile::flash_backward(a, g, normaliser, &d_out) {
        return grads;
    }
    let q = a.q.clone().reshape([g.b, g.kv, g.groups, g.t, g.h]);
    let d_out = d_out.cast(dtype).reshape([g.b, g.kv, g.groups, g.t, g.h]);
    let bias = additive_bias(a);
    let tiles: Vec<_> = g.tiles(a.tile_rows).collect();
    let mut d_queries = Vec::with_capacity(tiles.len());
    let (mut dk, mut dv) = (KeySum::new(g, tiles.len()), KeySum::new(g, tiles.len()));
    for &(t0, n) in &tiles {
        let visible = g.visible_keys(t0, n);
        let keys = a.k.clone().narrow(2, 0, visible);
        let values = a.v.clone().narrow(2, 0, visible);
        let query = query_tile(&q, g, t0, n);
        let d_tile = d_out.clone().narrow(3, t0, n).reshape([g.b, g.kv, g.groups * n, g.h]);
        let dp = d_tile.clone().matmul(values.swap_dims(2, 3)).cast(FloatDType::F32);
        let (p, ds) = tile_softmax_backward(
            a,
            g,
            bias.as_ref(),
            (query.clone(), keys.clone()),
            normaliser.rows(g, t0, n),
            dp,
            (t0, n),
        );
        dv.add(p.cast(dtype).swap_dims(2, 3).matmul(d_tile));
        let ds = ds.cast(dtype);
        d_queries.push(ds.clone().matmul(keys).reshape([g.b, g.kv, g.groups, n, g.h]));
        dk.add(ds.swap_dims(2, 3).matmul(query));
    }
    let dq = Tensor::cat(d_queries, 3).reshape([g.b, g.kv * g.groups, g.t, g.h]);
    let device = dq.device();
    (dq, dk.finish(dtype, &device), dv.finish(dtype, &device))
}

/// `dk` or `dv` `[b, K, s, h]` summed over tiles, each covering the first
/// keys only: the one tile's product as it is, several summed in f32.
struct KeySum<B: Backend> {
    g: Geometry,
    tiles: usize,
    sum: Option<Tensor<B, 4>>,
}

impl<B: Backend> KeySum<B> {
    fn new(g: Geometry, tiles: usize) -> Self {
        Self { g, tiles, sum: None }
    }

    /// Adds a tile's `[b, K, keys, h]` to the first `keys` rows.
    fn add(&mut self, part: Tensor<B, 4>) {
        let g = self.g;
        if self.tiles == 1 {
            self.sum = Some(part);
            return;
        }
        let keys = part.dims()[2];
        let part = part.cast(FloatDType::F32);
        let sum = match self.sum.take() {
            Some(sum) => sum,
            None => Tensor::zeros([g.b, g.kv, g.s, g.h], (&part.device(), DType::F32)),
        };
        let range = [0..g.b, 0..g.kv, 0..keys, 0..g.h];
        let updated = sum.clone().slice(range.clone()) + part;
        self.sum = Some(sum.slice_assign(range, updated));
    }

    /// The sum in `dtype`. (One tile covers every key: its product is the sum.)
    fn finish(self, dtype: FloatDType, device: &B::Device) -> Tensor<B, 4> {
        let g = self.g;
        match self.sum {
            Some(sum) => sum.cast(dtype),
            None => Tensor::zeros([g.b, g.kv, g.s, g.h], (device, DType::from(dtype))),
        }
    }
}

#[derive(Debug)]
struct AttentionBackward;

/// What the node keeps for its backward: the inputs (inner backend), `M` and `Z`.
#[derive(Debug, Clone)]
struct AttentionState<X: Backend> {
    args: AttentionArgs<X>,
    normaliser: Normaliser<X>,
}

impl<X: Backend> Backward<X, 3> for AttentionBackward {
    type State = AttentionState<X>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_out = Tensor::<X, 4>::from_primitive(TensorPrimitive::Float(grads.consume::<X>(&ops.node)));
        let (dq, dk, dv) = backward(&ops.state.args, &ops.state.normaliser, d_out);
        for (parent, grad) in ops.parents.iter().zip([dq, dk, dv]) {
            if let Some(parent) = parent {
                grads.register::<X>(parent.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// The autodiff node on `Autodiff<X>`: forward on `X`, [`backward`] as its backward.
fn node<X: Backend>(a: AttentionArgs<Autodiff<X>>) -> Tensor<Autodiff<X>, 4> {
    let [q, k, v] = [a.q, a.k, a.v].map(|t| t.into_primitive().tensor());
    let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
    let inner = |p| Tensor::<X, 4>::from_primitive(TensorPrimitive::Float(p));
    let args = AttentionArgs {
        q: inner(q.primitive),
        k: inner(k.primitive),
        v: inner(v.primitive),
        hidden: a.hidden.map(Tensor::inner),
        scale: a.scale,
        tile_rows: a.tile_rows,
    };
    let (out, normaliser) = forward(&args);
    let out = out.into_primitive().tensor();
    let out = match AttentionBackward.prepare::<NoCheckpointing>(nodes).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish(AttentionState { args, normaliser }, out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
