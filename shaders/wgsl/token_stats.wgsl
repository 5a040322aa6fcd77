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
// overflow in the next span, the k largest candidates are selected (a radix
// select on order-preserving 32-bit keys: four passes of an 8-bit histogram,
// no sort: the sums below do not need an order), moved to the front, and the
// threshold raised to the k-th value. For logits in no particular order the
// threshold rises fast and later appends are rare, so a row costs about one
// read plus two selections over at most CAP values; a row in ascending order
// (every value a new candidate) selects once per span: about 10 operations
// per logit instead of one.

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
const MAX_K: u32 = 256u; // daa_core::MAX_TOP_K
const F32_MAX: f32 = 0x1.fffffep+127f;

var<workgroup> cand: array<f32, CAP>;
var<workgroup> cand_count: atomic<u32>;
var<workgroup> threshold: f32;
var<workgroup> kept: u32;
// The selection's state: a histogram of one key digit, its running sums, the
// chosen key's digits so far and how many of the k are still to be found.
var<workgroup> digit_counts: array<atomic<u32>, WG>;
var<workgroup> digit_sums: array<u32, WG>;
var<workgroup> chosen_prefix: u32;
var<workgroup> still_needed: u32;
var<workgroup> top: array<f32, MAX_K>;
var<workgroup> above_count: atomic<u32>;
var<workgroup> tie_count: atomic<u32>;

// An order-preserving key: x < y exactly when key(x) < key(y) (finite values
// and −inf; NaN never reaches the buffer).
fn order_key(x: f32) -> u32 {
    let bits = bitcast<u32>(x);
    return select(bits | 0x80000000u, ~bits, (bits & 0x80000000u) != 0u);
}

fn key_value(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}

// Keeps the k largest of cand[0..count) (any order) in cand[0..min(count, k)).
// With count > k: the k-th largest key is found digit by digit from the top
// (for each 8-bit digit, a histogram of the keys that share the digits chosen
// so far, then a running sum from the largest digit down to the one where the
// k-th falls); values above it are kept, and of those equal to it as many as
// complete k. `count` is uniform.
fn keep_top_k(lid: u32, count: u32) {
    let k = params.k;
    if (count <= k) {
        if (lid == 0u) {
            kept = count;
        }
        workgroupBarrier();
        return;
    }
    if (lid == 0u) {
        chosen_prefix = 0u;
        still_needed = k;
    }
    var prefix_mask = 0u;
    for (var round = 0u; round < 4u; round = round + 1u) {
        let shift = 24u - 8u * round;
        atomicStore(&digit_counts[lid], 0u);
        workgroupBarrier();
        let prefix = chosen_prefix;
        for (var i = lid; i < count; i = i + WG) {
            let key = order_key(cand[i]);
            if ((key & prefix_mask) == prefix) {
                atomicAdd(&digit_counts[(key >> shift) & 0xffu], 1u);
            }
        }
        workgroupBarrier();
        // Invocation t holds digit 255 − t: its inclusive running sum counts
        // the keys whose digit is ≥ 255 − t.
        let own = atomicLoad(&digit_counts[255u - lid]);
        digit_sums[lid] = own;
        workgroupBarrier();
        for (var offset = 1u; offset < WG; offset = offset << 1u) {
            var earlier = 0u;
            if (lid >= offset) {
                earlier = digit_sums[lid - offset];
            }
            workgroupBarrier();
            digit_sums[lid] = digit_sums[lid] + earlier;
            workgroupBarrier();
        }
        let through = digit_sums[lid];
        let needed = still_needed;
        workgroupBarrier(); // every invocation has read `still_needed`
        if (through >= needed && through - own < needed) {
            chosen_prefix = prefix | ((255u - lid) << shift);
            still_needed = needed - (through - own);
        }
        prefix_mask = prefix_mask | (0xffu << shift);
        workgroupBarrier();
    }
    let kth = chosen_prefix;
    let ties = still_needed; // how many values equal to the k-th are kept (≥ 1)
    if (lid == 0u) {
        atomicStore(&above_count, 0u);
        atomicStore(&tie_count, 0u);
    }
    workgroupBarrier();
    for (var i = lid; i < count; i = i + WG) {
        let x = cand[i];
        let key = order_key(x);
        if (key > kth) {
            top[atomicAdd(&above_count, 1u)] = x;
        } else if (key == kth) {
            let t = atomicAdd(&tie_count, 1u);
            if (t < ties) {
                top[k - ties + t] = x;
            }
        }
    }
    workgroupBarrier();
    for (var i = lid; i < k; i = i + WG) {
        cand[i] = top[i];
    }
    if (lid == 0u) {
        atomicStore(&cand_count, k);
        threshold = key_value(kth);
        kept = k;
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
            keep_top_k(lid, count);
        }
    }
    let count = workgroupUniformLoad(&cand_count);
    keep_top_k(lid, count);
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
