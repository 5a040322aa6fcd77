// token_stats: per-row target log-probability, entropy, top-k mass and top-k
// entropies, reading each logit once. CPU twin: `token_stats_rows`
// (crates/daa-core/src/cpu/mod.rs); specification: `reference_row_stats`
// (crates/daa-core/src/reference.rs). Needs a loader (load_*.wgsl),
// row_softmax.wgsl and row_status.wgsl prepended.
//
// One workgroup of 256 invocations per row. Invocation t reads elements
// t, t + 256, … (coalesced), keeps an online log-sum-exp state, and appends
// values above the running k-th largest to a shared candidate buffer. Every
// STEPS · 256 elements the workgroup synchronises once; when the buffer could
// overflow in the next span it is sorted (bitonic, descending), cut to k, and
// the threshold raised to the k-th value.

struct Params {
    vocab: u32,
    k: u32,
    rows: u32,        // rows in this dispatch
    row_offset: u32,  // first row of this dispatch, within the bound buffers
    inv_ln_base: f32, // 1 / ln(b) for the top-k entropies
    grid_x: u32,      // workgroups along x (rows = x + y · grid_x)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(1) var<storage, read> targets: array<i32>;   // −1: masked
@group(0) @binding(2) var<storage, read_write> out: array<f32>; // [rows, 6]
@group(0) @binding(4) var<uniform> params: Params;

const CAP: u32 = 2048u;
const STEPS: u32 = 4u; // elements per invocation between synchronisations
const F32_MAX: f32 = 0x1.fffffep+127f;

var<workgroup> cand: array<f32, CAP>;
var<workgroup> cand_count: atomic<u32>;
var<workgroup> threshold: f32;
var<workgroup> kept: u32;

// Sorts cand[0..CAP] descending (entries past the count hold −inf), keeps k.
fn compact(lid: u32, count: u32) {
    for (var i = lid; i < CAP; i = i + WG) {
        if (i >= count) {
            cand[i] = -F32_MAX; // below every kept value; never counted in `kept`
        }
    }
    workgroupBarrier();
    for (var size = 2u; size <= CAP; size = size << 1u) {
        for (var stride = size >> 1u; stride > 0u; stride = stride >> 1u) {
            for (var i = lid; i < CAP / 2u; i = i + WG) {
                let lo = 2u * stride * (i / stride) + (i % stride);
                let hi = lo + stride;
                let a = cand[lo];
                let b = cand[hi];
                // Descending within blocks whose `size` bit is clear.
                let descending = (lo & size) == 0u;
                if ((a < b) == descending) {
                    cand[lo] = b;
                    cand[hi] = a;
                }
            }
            workgroupBarrier();
        }
    }
    if (lid == 0u) {
        let n = min(count, params.k);
        atomicStore(&cand_count, n);
        if (n == params.k) {
            threshold = cand[n - 1u];
        }
        kept = n;
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let local_row = wg.x + wg.y * params.grid_x;
    if (local_row >= params.rows) {
        return; // uniform across the workgroup
    }
    let row = params.row_offset + local_row;
    let target_id = targets[row];
    if (target_id < 0) {
        if (lid < 6u) {
            out[row * 6u + lid] = 0.0;
        }
        if (lid < 2u) {
            status[row * 2u + lid] = STATUS_OK;
        }
        return; // masked rows are not read; uniform across the workgroup
    }
    if (lid == 0u) {
        atomicStore(&cand_count, 0u);
        status_reset();
        threshold = -F32_MAX;
        kept = 0u;
    }
    workgroupBarrier();

    let base = row * params.vocab;
    var state = lse_empty();
    for (var start = 0u; start < params.vocab; start = start + STEPS * WG) {
        for (var step = 0u; step < STEPS; step = step + 1u) {
            let j = start + step * WG + lid;
            if (j < params.vocab) {
                let x = load_logit(base + j);
                if (status_check(x, j)) {
                    state = lse_push(state, x);
                    if (x > threshold) {
                        let slot = atomicAdd(&cand_count, 1u);
                        cand[slot] = x; // slot < CAP: at most STEPS · WG appends since the last check
                    }
                }
            }
        }
        let count = workgroupUniformLoad(&cand_count);
        if (count > CAP - STEPS * WG) {
            compact(lid, count);
        }
    }
    let count = workgroupUniformLoad(&cand_count);
    compact(lid, count);
    let row_state = lse_reduce(lid, state);
    if (lid == 0u) {
        status_write(row, row_state.z);
    }
    if (workgroupUniformLoad(&row_fault) != STATUS_OK) {
        return;
    }
    let ln_z = log(row_state.z);
    let lse = row_state.m + ln_z;

    // Top-k sums, reusing the reduction arrays: Σ p and Σ p ln p over kept values.
    var p_sum = 0.0;
    var p_log_p = 0.0;
    if (lid < kept) {
        let log_p = (cand[lid] - row_state.m) - ln_z;
        let p = exp(log_p);
        if (p > 0.0) {
            p_sum = p;
            p_log_p = p * log_p;
        }
    }
    red_z[lid] = p_sum;
    red_s[lid] = p_log_p;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half >> 1u) {
        if (lid < half) {
            red_z[lid] = red_z[lid] + red_z[lid + half];
            red_s[lid] = red_s[lid] + red_s[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let mass = red_z[0];
        let plogp = red_s[0];
        let x_t = load_logit(base + u32(target_id));
        out[row * 6u + 0u] = (x_t - row_state.m) - ln_z;
        out[row * 6u + 1u] = max(ln_z - row_state.s / row_state.z, 0.0);
        out[row * 6u + 2u] = mass;
        out[row * 6u + 3u] = max(log(mass) - plogp / mass, 0.0) * params.inv_ln_base;
        out[row * 6u + 4u] = max(-plogp, 0.0) * params.inv_ln_base;
        out[row * 6u + 5u] = 1.0;
    }
}
