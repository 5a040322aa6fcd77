// Shared by token_stats.wgsl and logits_backward.wgsl: per-thread online
// log-sum-exp state and its workgroup merge. CPU twin: `row_sums`
// (crates/daa-core/src/cpu/row.rs); reference: `reference_lse`.
//
// State over the values seen by one invocation: m = max, z = Σ e^{x−m},
// s = Σ e^{x−m}(x−m). −inf values contribute nothing.

const WG: u32 = 256u;

struct Lse {
    m: f32,
    z: f32,
    s: f32,
}

fn lse_empty() -> Lse {
    return Lse(-0x1.fffffep+127f, 0.0, 0.0);
}

// Adds one value. A new maximum rescales: z' = e^{m−x} z + 1, s' = e^{m−x}(s + (m − x) z).
fn lse_push(a: Lse, x: f32) -> Lse {
    if (!(x > -0x1.fffffep+127f)) {
        return a; // −inf (or below the f32 range): probability 0
    }
    if (x > a.m) {
        if (a.z == 0.0) {
            return Lse(x, 1.0, 0.0);
        }
        let f = exp(a.m - x);
        return Lse(x, a.z * f + 1.0, f * (a.s + (a.m - x) * a.z));
    }
    let d = x - a.m;
    let e = exp(d);
    return Lse(a.m, a.z + e, a.s + e * d);
}

// Merges two states (the pairwise step of the workgroup reduction).
fn lse_merge(a: Lse, b: Lse) -> Lse {
    if (b.z == 0.0) {
        return a;
    }
    if (a.z == 0.0) {
        return b;
    }
    let m = max(a.m, b.m);
    let fa = exp(a.m - m);
    let fb = exp(b.m - m);
    let z = a.z * fa + b.z * fb;
    let s = fa * (a.s + (a.m - m) * a.z) + fb * (b.s + (b.m - m) * b.z);
    return Lse(m, z, s);
}

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_z: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;

// Tree-reduces every invocation's state; every invocation gets the row's.
fn lse_reduce(lid: u32, mine: Lse) -> Lse {
    red_m[lid] = mine.m;
    red_z[lid] = mine.z;
    red_s[lid] = mine.s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half = half >> 1u) {
        if (lid < half) {
            let r = lse_merge(Lse(red_m[lid], red_z[lid], red_s[lid]),
                              Lse(red_m[lid + half], red_z[lid + half], red_s[lid + half]));
            red_m[lid] = r.m;
            red_z[lid] = r.z;
            red_s[lid] = r.s;
        }
        workgroupBarrier();
    }
    let row = Lse(red_m[0], red_z[0], red_s[0]);
    workgroupBarrier();
    return row;
}
