//! The norm kernels ([`super::norm`]): the forward and `dx` one cube per
//! row, `dw` as per-block column sums.

use cubecl::prelude::*;

/// The sum over the cube of each unit's `value`: a tree in shared memory
/// (`CUBE_DIM` slots, a power of two).
#[cube]
fn cube_sum(value: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    let mut active = CUBE_DIM;
    while active > 1 {
        active /= 2;
        if UNIT_POS < active {
            let other = shared[unit + active as usize];
            shared[unit] += other;
        }
        sync_cube();
    }
    let total = shared[0];
    sync_cube();
    total
}

/// `y = x̂ ⊙ w` for row `CUBE_POS` of `x` `[rows, d]`, and the row's `μ`
/// (0 for RMSNorm) and `r`.
#[cube(launch)]
pub(super) fn forward_kernel<F: Float, W: Float>(
    x: &Tensor<F>,
    weight: &Tensor<W>,
    y: &mut Tensor<F>,
    mean: &mut Tensor<f32>,
    rstd: &mut Tensor<f32>,
    eps: f32,
    #[comptime] layer: bool,
    #[comptime] cube_size: u32,
    #[define(F, W)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS;
    if row >= rstd.len() {
        terminate!();
    }
    let d = x.shape(1);
    let step = CUBE_DIM as usize;
    let (x_row, x_col) = (row * x.stride(0), x.stride(1));
    let mut shared = SharedMemory::<f32>::new(cube_size as usize);
    let mut mu = 0.0f32;
    if layer {
        let mut sum = 0.0f32;
        let mut j = UNIT_POS as usize;
        while j < d {
            sum += f32::cast_from(x[x_row + j * x_col]);
            j += step;
        }
        mu = cube_sum(sum, &mut shared) / d as f32;
    }
    let mut squares = 0.0f32;
    let mut j = UNIT_POS as usize;
    while j < d {
        let c = f32::cast_from(x[x_row + j * x_col]) - mu;
        squares += c * c;
        j += step;
    }
    let r = 1.0f32 / f32::sqrt(cube_sum(squares, &mut shared) / d as f32 + eps);
    let mut j = UNIT_POS as usize;
    while j < d {
        let normalised = F::cast_from((f32::cast_from(x[x_row + j * x_col]) - mu) * r);
        y[row * y.stride(0) + j * y.stride(1)] = normalised * F::cast_from(weight[j * weight.stride(0)]);
        j += step;
    }
    if UNIT_POS == 0 {
        mean[row] = mu;
        rstd[row] = r;
    }
}

/// `dx = r · (g − [mean(g)] − x̂ · mean(g ⊙ x̂))` for row `CUBE_POS`
/// (`mean(g)` for LayerNorm only), `g = dy ⊙ w`.
#[cube(launch)]
pub(super) fn backward_kernel<F: Float, W: Float>(
    x: &Tensor<F>,
    weight: &Tensor<W>,
    dy: &Tensor<F>,
    mean: &Tensor<f32>,
    rstd: &Tensor<f32>,
    dx: &mut Tensor<F>,
    #[comptime] layer: bool,
    #[comptime] cube_size: u32,
    #[define(F, W)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS;
    if row >= rstd.len() {
        terminate!();
    }
    let d = x.shape(1);
    let step = CUBE_DIM as usize;
    let (x_row, x_col) = (row * x.stride(0), x.stride(1));
    let (dy_row, dy_col) = (row * dy.stride(0), dy.stride(1));
    let r = rstd[row];
    let mut mu = 0.0f32;
    if layer {
        mu = mean[row];
    }
    let mut shared = SharedMemory::<f32>::new(cube_size as usize);
    let mut g_sum = 0.0f32;
    let mut gx_sum = 0.0f32;
    let mut j = UNIT_POS as usize;
    while j < d {
        let normalised = (f32::cast_from(x[x_row + j * x_col]) - mu) * r;
        let g = f32::cast_from(dy[dy_row + j * dy_col] * F::cast_from(weight[j * weight.stride(0)]));
        g_sum += g;
        gx_sum += g * normalised;
        j += step;
    }
    let mut g_mean = 0.0f32;
    if layer {
        g_mean = cube_sum(g_sum, &mut shared) / d as f32;
    }
    let gx_mean = cube_sum(gx_sum, &mut shared) / d as f32;
    let mut j = UNIT_POS as usize;
    while j < d {
        let normalised = (f32::cast_from(x[x_row + j * x_col]) - mu) * r;
        let g = f32::cast_from(dy[dy_row + j * dy_col] * F::cast_from(weight[j * weight.stride(0)]));
        dx[row * dx.stride(0) + j * dx.stride(1)] = F::cast_from(r * (g - g_mean - normalised * gx_mean));
        j += step;
    }
}

/// `Σ dy ⊙ x̂` over rows `[rows_per_block · CUBE_POS_Y, …)` for column
/// `CUBE_POS_X · CUBE_DIM_X + UNIT_POS_X`, into `partial[CUBE_POS_Y]`.
#[cube(launch)]
pub(super) fn weight_partials_kernel<F: Float>(
    x: &Tensor<F>,
    dy: &Tensor<F>,
    mean: &Tensor<f32>,
    rstd: &Tensor<f32>,
    partial: &mut Tensor<f32>,
    #[comptime] layer: bool,
    rows_per_block: u32,
    #[define(F)] _dtype: StorageType,
) {
    let column = CUBE_POS_X as usize * CUBE_DIM_X as usize + UNIT_POS_X as usize;
    let block = CUBE_POS_Y as usize;
    let d = x.shape(1);
    let rows = x.shape(0);
    if column >= d || block >= partial.shape(0) {
        terminate!();
    }
    let first = block * rows_per_block as usize;
    let mut end = first + rows_per_block as usize;
    if end > rows {
        end = rows;
    }
    let mut sum = 0.0f32;
    let mut i = first;
    while i < end {
        let mut mu = 0.0f32;
        if layer {
            mu = mean[i];
        }
        let normalised = (f32::cast_from(x[i * x.stride(0) + column * x.stride(1)]) - mu) * rstd[i];
        sum += f32::cast_from(dy[i * dy.stride(0) + column * dy.stride(1)]) * normalised;
        i += 1;
    }
    partial[block * partial.stride(0) + column * partial.stride(1)] = sum;
}
