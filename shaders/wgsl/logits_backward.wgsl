// logits_backward: ∂L/∂x_j = g · ([j = t] − softmax(x)_j), written over the
// f32 logits in place (bind a copy for out-of-place). CPU twin:
// `backward_in_place` (crates/daa-core/src/cpu/row.rs); specification:
// `Specification::logits_backward`. Needs load_f32.wgsl, row_softmax.wgsl and
// row_status.wgsl prepended.
//
// One workgroup of 256 invocations per row: an online log-sum-exp pass, a
// workgroup merge, then each invocation rewrites the elements it read.

struct Params {
    vocab: u32,
    rows: u32,
    row_offset: u32,
    grid_x: u32,
}

@group(0) @binding(1) var<storage, read> targets: array<i32>;   // −1: masked
@group(0) @binding(2) var<storage, read> grad_logprob: array<f32>;
@group(0) @binding(4) var<uniform> params: Params;


@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let local_row = wg.x + wg.y * params.grid_x;
    if (local_row >= params.rows) {
        return;
    }
    let row = params.row_offset + local_row;
    let base = row * params.vocab;
    let target_id = targets[row];
    if (target_id < 0) {
        for (var j = lid; j < params.vocab; j = j + WG) {
            logits[base + j] = 0.0;
        }
        if (lid < 2u) {
            status[row * 2u + lid] = 0u;
        }
        return;
    }
    if (lid == 0u) {
        status_reset();
    }
    workgroupBarrier();
    var state = lse_empty();
    for (var j = lid; j < params.vocab; j = j + WG) {
        let x = logits[base + j];
        if (status_check(x, j)) {
            state = lse_push(state, x);
        }
    }
    let row_state = lse_reduce(lid, state);
    if (lid == 0u) {
        status_write(row, row_state.z);
    }
    if (workgroupUniformLoad(&row_fault) != 0u) {
        return;
    }
    let ln_z = log(row_state.z);
    let g = grad_logprob[row];
    for (var j = lid; j < params.vocab; j = j + WG) {
        let x = logits[base + j];
        let p = exp((x - row_state.m) - ln_z);
        logits[base + j] = select(0.0, g, j == u32(target_id)) - g * p;
    }
}
