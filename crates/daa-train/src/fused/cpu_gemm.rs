//! Matrix products on the CPU for the fused linear layer and the fused
//! head: `gemm`'s kernels (the crate Flex's product uses, AVX-512 where the
//! CPU has it) writing into a fresh `Vec<f32>` that becomes the Flex tensor
//! as it is. Flex's own product allocates its output through
//! `FlexTensor::empty`, which copies a zeroed byte vector into a second,
//! aligned allocation before the product overwrites it: two extra passes
//! and the page faults of two buffers, on the calling thread, for every
//! product (8.6 % of a 5m DPO step on 2 threads, measured with perf).

/// One operand of a product: its elements and the strides of its rows and
/// columns (a transposed matrix is the same elements with the strides
/// swapped: no copy).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand<'a> {
    /// The elements.
    pub(crate) data: &'a [f32],
    /// Rows.
    pub(crate) rows: usize,
    /// Columns.
    pub(crate) cols: usize,
    /// Elements from one row to the next.
    pub(crate) row_stride: usize,
    /// Elements from one column to the next.
    pub(crate) col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self { data, rows, cols, row_stride: cols, col_stride: 1 }
    }

    /// The transpose: the same elements, rows and columns swapped.
    pub(crate) fn t(self) -> Self {
        Self { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }

    /// Whether every element the shape and strides address lies in `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        let last = (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride;
        last < self.data.len()
    }
}

/// Products with at least this many multiply-adds (`m·n·k`) are split
/// across rayon's threads by `gemm`; smaller ones run on the calling thread
/// (Flex's threshold).
const PARALLEL_OPS: usize = 192 * 192 * 192;

/// `a b`, `[m, n]` row-major, for `a` `[m, k]` and `b` `[k, n]`.
///
/// # Panics
/// When the inner sizes differ or an operand's strides address elements
/// past its data: a caller's bug, never input.
pub(crate) fn matmul(a: Operand<'_>, b: Operand<'_>) -> Vec<f32> {
    assert_eq!(a.cols, b.rows, "matmul: [{}, {}] × [{}, {}]", a.rows, a.cols, b.rows, b.cols);
    assert!(a.in_bounds() && b.in_bounds(), "matmul: an operand's strides exceed its elements");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    // Zeroed (a fresh mapping for large outputs: no pass over it here).
    let mut out = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return out;
    }
    let parallelism = if m * n * k >= PARALLEL_OPS { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: `out` holds `m` rows of `n`; both operands' addressed elements
    // lie in their slices (checked above); nothing else aliases `out`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    out
}
