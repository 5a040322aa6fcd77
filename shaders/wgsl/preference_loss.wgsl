// preference_loss: per-pair DAA loss, ∂loss/∂π_w, ∂loss/∂π_l and implicit
// rewards, in f32. Specification (f64): `pair_loss` in
// crates/daa-core/src/preference.rs, whose doc comments hold every formula.
// One invocation per pair; inputs were validated on the host.

struct Params {
    pairs: u32,
    loss: u32,       // 0 dpo, 1 robust-dpo, 2 ipo, 3 ipo-mean, 4 hinge, 5 hinge-trl, 6 simpo, 7 orpo
    nll_mode: u32,   // 0 none, 1 sum, 2 mean
    grid_x: u32,
    beta: f32,       // β, or τ for IPO
    gamma: f32,
    alpha: f32,
    eps: f32,        // label smoothing
    nll_weight: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<storage, read> pairs: array<f32>;       // [P, 6]
@group(0) @binding(1) var<storage, read_write> out: array<f32>;   // [P, 7]
@group(0) @binding(2) var<uniform> params: Params;

fn softplus(z: f32) -> f32 {
    return max(z, 0.0) + log(1.0 + exp(-abs(z)));
}

fn sigmoid(z: f32) -> f32 {
    if (z >= 0.0) {
        return 1.0 / (1.0 + exp(-z));
    }
    let e = exp(z);
    return e / (1.0 + e);
}

// 1 − e^a for a < 0, without cancellation near 0: e^a − 1 = 2·sinh(a/2)·e^{a/2}.
fn one_minus_exp(a: f32) -> f32 {
    if (a > -0.6931472) {
        let h = 0.5 * a;
        return -2.0 * sinh(h) * exp(h);
    }
    return 1.0 - exp(a);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * params.grid_x * 64u;
    if (i >= params.pairs) {
        return;
    }
    let pw = pairs[i * 6u + 0u];
    let pl = pairs[i * 6u + 1u];
    let rw = pairs[i * 6u + 2u];
    let rl = pairs[i * 6u + 3u];
    let nw = pairs[i * 6u + 4u];
    let nl = pairs[i * 6u + 5u];
    let ratio_w = pw - rw;
    let ratio_l = pl - rl;
    let delta = ratio_w - ratio_l;
    let beta = params.beta;
    let eps = params.eps;

    var loss = 0.0;
    var gw = 0.0;
    var gl = 0.0;
    var reward_w = beta * ratio_w;
    var reward_l = beta * ratio_l;
    switch params.loss {
        case 0u: { // dpo / cDPO
            let z = beta * delta;
            loss = (1.0 - eps) * softplus(-z) + eps * softplus(z);
            let dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
            gw = beta * dz;
            gl = -beta * dz;
        }
        case 1u: { // robust-dpo
            let z = beta * delta;
            loss = ((1.0 - eps) * softplus(-z) - eps * softplus(z)) / (1.0 - 2.0 * eps);
            let dz = (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1.0 - 2.0 * eps);
            gw = beta * dz;
            gl = -beta * dz;
        }
        case 2u: { // ipo (paper): (τΔ − ½)²
            let u = beta * delta - 0.5;
            loss = u * u;
            gw = 2.0 * beta * u;
            gl = -gw;
        }
        case 3u: { // ipo-mean (TRL): (Δ̄ − 1/(2τ))²
            let u = ratio_w / nw - ratio_l / nl - 1.0 / (2.0 * beta);
            loss = u * u;
            gw = 2.0 * u / nw;
            gl = -2.0 * u / nl;
            reward_w = beta * ratio_w / nw;
            reward_l = beta * ratio_l / nl;
        }
        case 4u: { // hinge (paper / SLiC-HF)
            let mean_w = pw / nw;
            let mean_l = pl / nl;
            let slack = params.gamma - (mean_w - mean_l);
            var d_margin = 0.0;
            if (slack > 0.0) {
                loss = slack;
                d_margin = -1.0;
            }
            var d_reg = 0.0;
            if (params.alpha > 0.0) {
                let u = 1.0 - (mean_w - rw / nw);
                loss = loss + params.alpha * softplus(u);
                d_reg = -params.alpha * sigmoid(u);
            }
            gw = (d_margin + d_reg) / nw;
            gl = -d_margin / nl;
            reward_w = mean_w;
            reward_l = mean_l;
        }
        case 5u: { // hinge-trl: max(0, 1 − βΔ)
            let slack = 1.0 - beta * delta;
            if (slack > 0.0) {
                loss = slack;
                gw = -beta;
                gl = beta;
            }
        }
        case 6u: { // simpo
            let mean_w = pw / nw;
            let mean_l = pl / nl;
            let z = beta * (mean_w - mean_l) - params.gamma;
            loss = (1.0 - eps) * softplus(-z) + eps * softplus(z);
            let dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
            gw = beta * dz / nw;
            gl = -beta * dz / nl;
            reward_w = beta * mean_w;
            reward_l = beta * mean_l;
        }
        default: { // orpo
            let mean_w = pw / nw;
            let mean_l = pl / nl;
            let log_odds = (mean_w - log(one_minus_exp(mean_w))) - (mean_l - log(one_minus_exp(mean_l)));
            loss = beta * softplus(-log_odds);
            let d = -beta * sigmoid(-log_odds);
            gw = d / one_minus_exp(mean_w) / nw;
            gl = -d / one_minus_exp(mean_l) / nl;
            reward_w = beta * mean_w;
            reward_l = beta * mean_l;
        }
    }
    if (params.nll_mode != 0u) {
        let scale = select(1.0, 1.0 / nw, params.nll_mode == 2u);
        loss = loss - params.nll_weight * pw * scale;
        gw = gw - params.nll_weight * scale;
    }
    out[i * 7u + 0u] = loss;
    out[i * 7u + 1u] = gw;
    out[i * 7u + 2u] = gl;
    out[i * 7u + 3u] = reward_w;
    out[i * 7u + 4u] = reward_l;
    out[i * 7u + 5u] = reward_w - reward_l;
    out[i * 7u + 6u] = select(0.0, 1.0, reward_w > reward_l);
}
