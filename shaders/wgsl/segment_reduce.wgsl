// segment_reduce: weighted per-segment sums, counts and means over contiguous
// segments. CPU twin: `Cpu::segment_reduce` (crates/daa-core/src/cpu/mod.rs);
// specification: `Specification::segment_reduce`.
//
// One invocation per (segment, column); column index `columns` computes the
// count. Kahan-compensated f32 sums keep long segments close to the f64 reference.

struct Params {
    segments: u32,
    columns: u32,
    has_weights: u32,
    grid_x: u32, // invocations along x are grid_x · 64
}

@group(0) @binding(0) var<storage, read> values: array<f32>;   // [N, C]
@group(0) @binding(1) var<storage, read> offsets: array<u32>;  // [S + 1]
@group(0) @binding(2) var<storage, read> weights: array<f32>;  // [N], or one dummy value
@group(0) @binding(3) var<storage, read_write> sums: array<f32>;   // [S, C]
@group(0) @binding(4) var<storage, read_write> counts: array<f32>; // [S]
@group(0) @binding(5) var<storage, read_write> means: array<f32>;  // [S, C]
@group(0) @binding(6) var<uniform> params: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let id = gid.x + gid.y * params.grid_x * 64u;
    let per_segment = params.columns + 1u;
    if (id >= params.segments * per_segment) {
        return;
    }
    let s = id / per_segment;
    let c = id % per_segment;
    var total = 0.0;
    var compensation = 0.0;
    var weight_total = 0.0;
    var weight_compensation = 0.0;
    for (var i = offsets[s]; i < offsets[s + 1u]; i = i + 1u) {
        let w = select(1.0, weights[i], params.has_weights == 1u);
        if (w != 0.0) {
            let wc = w - weight_compensation;
            let wt = weight_total + wc;
            weight_compensation = (wt - weight_total) - wc;
            weight_total = wt;
            if (c < params.columns) {
                let y = w * values[i * params.columns + c] - compensation;
                let t = total + y;
                compensation = (t - total) - y;
                total = t;
            }
        }
    }
    if (c == params.columns) {
        counts[s] = weight_total;
    } else {
        sums[s * params.columns + c] = total;
        means[s * params.columns + c] = select(0.0, total / weight_total, weight_total > 0.0);
    }
}
