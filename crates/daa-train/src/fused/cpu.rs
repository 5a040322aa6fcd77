//! The fused operations' CPU kernels: one pass over contiguous f32 rows,
//! split across rayon's threads, where burn's Flex backend would run one
//! single-threaded pass per primitive (often over a strided view). Used by
//! the operations when the inner backend is Flex and the tensors are f32;
//! other dtypes and backends run the tensor operations. Each kernel computes
//! what its operation's module docs say, with the f32 operations of the
//! tensor composition in the same order where it can (RoPE); tests compare
//! them within rounding (`tests/integration/fused.rs`). The attention has its
//! own kernel, [`super::cpu_flash`].

use burn::backend::Flex;
use burn::backend::flex::{FlexDevice, FlexTensor};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

use super::downcast;

/// Rows per rayon task: at least this many elements each.
const MIN_TASK_ELEMENTS: usize = 1 << 14;

/// A Flex tensor of `shape` holding `values` (no copy).
pub(crate) fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Flex, D> {
    Tensor::from_data(TensorData::new(values, shape), &FlexDevice)
}

/// `t` as a Flex tensor, when the backend `B` is Flex and `t` is f32.
pub(crate) fn on_flex<B: burn::tensor::backend::Backend, const D: usize>(
    t: Tensor<B, D>,
) -> Result<Tensor<Flex, D>, Tensor<B, D>> {
    if t.dtype() != DType::F32 {
        return Err(t);
    }
    downcast::<_, Tensor<Flex, D>>(t)
}

/// Whether the backend `B` is Flex.
pub(crate) fn is_flex<B: burn::tensor::backend::Backend>() -> bool {
    std::any::TypeId::of::<B>() == std::any::TypeId::of::<Flex>()
}

/// `t` back on the backend `B`, which is Flex (the caller checked with [`on_flex`]).
pub(crate) fn to_backend<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Flex, D>) -> Tensor<B, D> {
    downcast(t).unwrap_or_else(|_| unreachable!("the backend is Flex"))
}

/// `tensors` as contiguous f32 Flex tensors when `B` is Flex and every one
/// is f32: the same buffers where they already are (no copy), a contiguous
/// copy of a strided view; `None` otherwise (nothing consumed: clones).
pub(crate) fn contiguous_all<B: burn::tensor::backend::Backend, const D: usize, const N: usize>(
    tensors: [&Tensor<B, D>; N],
) -> Option<[FlexTensor; N]> {
    flex_all(tensors, |t| t.as_slice::<f32>().is_some())
}

/// `tensors` as f32 Flex tensors whose elements [`View4`] can read where
/// they lie (any non-negative strides, the last axis contiguous): the same
/// buffers where they can (a head-split view `[b, t, H, h] → [b, H, t, h]`
/// among them), a contiguous copy otherwise; `None` unless `B` is Flex and
/// every one is f32.
pub(crate) fn strided_all<B: burn::tensor::backend::Backend, const N: usize>(
    tensors: [&Tensor<B, 4>; N],
) -> Option<[FlexTensor; N]> {
    flex_all(tensors, |t| View4::of(t).is_some())
}

/// `tensors` as f32 Flex tensors, each as it is where `readable` says the
/// kernel can read it, else a contiguous copy; `None` unless `B` is Flex
/// and every one is f32 (nothing consumed: clones).
fn flex_all<B: burn::tensor::backend::Backend, const D: usize, const N: usize>(
    tensors: [&Tensor<B, D>; N],
    readable: impl Fn(&FlexTensor) -> bool,
) -> Option<[FlexTensor; N]> {
    if !is_flex::<B>() || tensors.iter().any(|t| t.dtype() != DType::F32) {
        return None;
    }
    let flex = tensors.map(|t| on_flex(t.clone()).ok().map(|t| t.into_primitive().tensor()));
    if flex.iter().any(Option::is_none) {
        return None;
    }
    Some(flex.map(|t| {
        let t: FlexTensor = t.expect("checked above");
        if readable(&t) { t } else { t.to_contiguous() }
    }))
}

/// A 4-D f32 tensor read where it lies: element `(i, j, r, c)` at
/// `offset + i·s₀ + j·s₁ + r·s₂ + c`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View4<'a> {
    /// The whole buffer.
    pub(crate) data: &'a [f32],
    /// Where element `(0, 0, 0, 0)` is.
    pub(crate) offset: usize,
    /// The sizes.
    pub(crate) shape: [usize; 4],
    /// `s₀`, `s₁`, `s₂` (the last axis' is 1).
    pub(crate) strides: [usize; 3],
}

impl<'a> View4<'a> {
    /// The view of `t` (f32) when its strides are non-negative, its last
    /// axis contiguous and every element inside its buffer.
    pub(crate) fn of(t: &'a FlexTensor) -> Option<Self> {
        let layout = t.layout();
        let shape: [usize; 4] = layout.shape().to_vec().try_into().ok()?;
        let strides: [isize; 4] = layout.strides().to_vec().try_into().ok()?;
        let strides = strides.map(|s| usize::try_from(s).ok());
        let [Some(s0), Some(s1), Some(s2), Some(s3)] = strides else { return None };
        if s3 != 1 && shape[3] > 1 {
            return None;
        }
        let data: &[f32] = t.storage::<f32>();
        let view = Self { data, offset: layout.start_offset(), shape, strides: [s0, s1, s2] };
        let last = shape.iter().zip([s0, s1, s2, 1]).try_fold(view.offset, |at, (&n, s)| match n {
            0 => None,
            n => Some(at + (n - 1) * s),
        });
        match last {
            Some(last) if last < data.len() => Some(view),
            // Empty (nothing to read) or out of the buffer (never from Flex).
            Some(_) => None,
            None => Some(Self { data: &[], offset: 0, strides: [0; 3], ..view }),
        }
    }

    /// The rows of `(i, j)`: from row 0 on, `strides[2]` apart.
    pub(crate) fn rows(&self, i: usize, j: usize) -> Rows<'a> {
        let at = self.offset + i * self.strides[0] + j * self.strides[1];
        Rows { data: self.data.get(at..).unwrap_or(&[]), stride: self.strides[2] }
    }

    /// Strides `[s₀, s₁, s₂]` of a dense buffer of the same shape whose axes
    /// lie in the order of this view's (a head-split view's output is laid
    /// out `[b, t, H, h]` again); a contiguous view gets contiguous strides.
    pub(crate) fn dense_strides(&self) -> [usize; 3] {
        let mut order = [0usize, 1, 2];
        // Outermost first: larger strides first, ties in axis order.
        order.sort_by(|&a, &b| self.strides[b].cmp(&self.strides[a]).then(a.cmp(&b)));
        let mut strides = [0usize; 3];
        let mut size = self.shape[3];
        for &axis in order.iter().rev() {
            strides[axis] = size;
            size *= self.shape[axis];
        }
        strides
    }
}

/// Rows of width `h` from a buffer: row `r` at `data[r·stride..][..h]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows<'a> {
    /// From the first row on.
    pub(crate) data: &'a [f32],
    /// Elements from one row to the next.
    pub(crate) stride: usize,
}

impl<'a> Rows<'a> {
    /// Row `r`, `h` wide.
    pub(crate) fn row(&self, r: usize, h: usize) -> &'a [f32] {
        &self.data[r * self.stride..r * self.stride + h]
    }

    /// The rows from row `r` on.
    pub(crate) fn from(&self, r: usize) -> Rows<'a> {
        Rows { data: &self.data[(r * self.stride).min(self.data.len())..], ..*self }
    }

    /// Whether `n` rows of width `h` lie in the buffer.
    pub(crate) fn holds(&self, n: usize, h: usize) -> bool {
        n == 0 || (n - 1) * self.stride + h <= self.data.len()
    }
}

/// A Flex tensor of `shape` holding `values` laid out with `strides`
/// (`[s₀, s₁, s₂]`, the last axis contiguous; no copy).
pub(crate) fn strided_tensor<B: burn::tensor::backend::Backend>(
    values: Vec<f32>,
    shape: [usize; 4],
    [s0, s1, s2]: [usize; 3],
) -> Tensor<B, 4> {
    use burn::backend::flex::Layout;
    use burn::tensor::{Bytes, TensorPrimitive};
    let strides = vec![s0 as isize, s1 as isize, s2 as isize, 1];
    let layout = Layout::new(burn::tensor::Shape::from(shape.to_vec()), strides, 0);
    let flex = FlexTensor::new(Bytes::from_elems(values), layout, DType::F32);
    to_backend(Tensor::<Flex, 4>::from_primitive(TensorPrimitive::Float(flex)))
}

/// A pointer shared by tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct Shared(pub(crate) *mut f32);
// SAFETY: every task writes elements no other task writes (see each use).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        // Writing through it is the callers' unsafe step, inside the buffer.
        self.0.wrapping_add(offset)
    }

    /// Writes `rows` (`n` rows of `h`, contiguous) to the rows of
    /// `(i, j)` in a dense buffer of `strides`.
    ///
    /// # Safety
    /// The buffer holds every row written, and no other task writes them.
    pub(crate) unsafe fn write_rows(self, rows: &[f32], h: usize, [s0, s1, s2]: [usize; 3], (i, j): (usize, usize)) {
        for (r, row) in rows.chunks_exact(h.max(1)).enumerate() {
            // SAFETY: the caller's guarantee.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.at(i * s0 + j * s1 + r * s2), row.len()) };
        }
    }
}

/// The elements of a tensor from [`contiguous_all`], row-major.
pub(crate) fn elements(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().unwrap_or(&[])
}

/// `rot(x)[c] = sign · x[partner]`: halves pair `c` with `c ± h/2`
/// (`(−x[c + h/2], x[c − h/2])`), interleaved `2j` with `2j + 1`.
#[inline]
fn partner(c: usize, h: usize, interleaved: bool) -> (usize, f32) {
    if interleaved {
        if c.is_multiple_of(2) { (c + 1, -1.0) } else { (c - 1, 1.0) }
    } else if c < h / 2 {
        (c + h / 2, -1.0)
    } else {
        (c - h / 2, 1.0)
    }
}

/// RoPE over `x` `[b, heads, t, h]` (read where it lies) with tables
/// `[rows, t, h]` (contiguous; `rows` 1 or `b`): `forward`
/// `y = x ⊙ cos + rot(x) ⊙ sin`, else `dx = dy ⊙ cos − rot(dy ⊙ sin)`; the
/// result laid out with `out_strides` (dense), one task per (batch row, head).
pub(crate) fn rope(
    x: View4<'_>,
    (cos, sin): (&[f32], &[f32]),
    interleaved: bool,
    forward: bool,
    out_strides: [usize; 3],
) -> Vec<f32> {
    let [b, heads, t, h] = x.shape;
    let plane = t * h;
    let tables = cos.len() / plane.max(1);
    let mut out = vec![0f32; b * heads * plane];
    let out_ptr = Shared(out.as_mut_ptr());
    (0..b * heads).into_par_iter().for_each(|task| {
        let (bi, head) = (task / heads, task % heads);
        let table = if tables == 1 { 0 } else { bi };
        let (cos, sin) = (&cos[table * plane..][..plane], &sin[table * plane..][..plane]);
        let rows = x.rows(bi, head);
        for i in 0..t {
            let (x, at) = (rows.row(i, h), i * h);
            // SAFETY: `out` holds b·heads·t·h elements laid out with
            // `out_strides` (dense); this task alone writes (bi, head)'s rows.
            let out = unsafe {
                let [s0, s1, s2] = out_strides;
                std::slice::from_raw_parts_mut(out_ptr.at(bi * s0 + head * s1 + i * s2), h)
            };
            for c in 0..h {
                let (p, sign) = partner(c, h, interleaved);
                out[c] = if forward {
                    x[c] * cos[at + c] + (sign * x[p]) * sin[at + c]
                } else {
                    x[c] * cos[at + c] - sign * (x[p] * sin[at + p])
                };
            }
        }
    });
    out
}

/// `h = silu(a) ⊙ u`, `silu(a) = a · σ(a)`.
pub(crate) fn swiglu_forward(a: &[f32], u: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(MIN_TASK_ELEMENTS)
        .zip(a.par_chunks(MIN_TASK_ELEMENTS))
        .zip(u.par_chunks(MIN_TASK_ELEMENTS))
        .for_each(|((out, a), u)| {
            let sigma = sigmoid(a);
            for i in 0..out.len() {
                out[i] = a[i] * sigma[i] * u[i];
            }
        });
    out
}

/// `σ(a) = 1 / (1 + e⁻ᵃ)` of every element (the vectorised `exp` of
/// `fused/cpu_flash.rs`).
fn sigmoid(a: &[f32]) -> Vec<f32> {
    let mut sigma: Vec<f32> = a.iter().map(|&x| -x).collect();
    super::cpu_flash::exp_in_place(&mut sigma);
    sigma.iter_mut().for_each(|e| *e = 1.0 / (1.0 + *e));
    sigma
}

/// `(da, du)` of SwiGLU for `dh`: `du = dh ⊙ a σ(a)`, `da = dh ⊙ u ⊙ σ(a)(1 + a(1 − σ(a)))`.
pub(crate) fn swiglu_backward(a: &[f32], u: &[f32], dh: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut da, mut du) = (vec![0f32; a.len()], vec![0f32; a.len()]);
    let n = MIN_TASK_ELEMENTS;
    da.par_chunks_mut(n)
        .zip(du.par_chunks_mut(n))
        .zip(a.par_chunks(n))
        .zip(u.par_chunks(n))
        .zip(dh.par_chunks(n))
        .for_each(|((((da, du), a), u), dh)| {
            let sigmas = sigmoid(a);
            for i in 0..a.len() {
                let sigma = sigmas[i];
                du[i] = dh[i] * a[i] * sigma;
                da[i] = dh[i] * u[i] * sigma * (1.0 + a[i] * (1.0 - sigma));
            }
        });
    (da, du)
}

/// `ℓ_r = z[r, y_r] − m_r − ln Σ_j exp(z[r, j] − m_r)`, `m_r = max_j z[r, j]`,
/// of every row `r` of `z` `[rows, v]` (`rows = targets.len()`): the
/// log-softmax at the targets, one multi-threaded pass over the rows with
/// the vectorised `exp` (Flex's `log_softmax` forms the whole `[rows, v]`
/// result on one thread before the gather picks one column).
pub(crate) fn log_softmax_at(z: &[f32], v: usize, targets: &[usize]) -> Vec<f32> {
    use super::cpu_flash::{exp_in_place, row_max, row_sum};
    let mut out = vec![0f32; targets.len()];
    out.par_iter_mut().zip(z.par_chunks(v.max(1))).zip(targets.par_iter()).for_each_init(
        || vec![0f32; v],
        |shifted, ((out, row), &y)| {
            let max = row_max(row);
            shifted.iter_mut().zip(row).for_each(|(s, &x)| *s = x - max);
            exp_in_place(shifted);
            *out = (row[y] - max) - row_sum(shifted).ln();
        },
    );
    out
}
