// preference_loss: per-pair DAA loss, ∂loss/∂π_w, ∂loss/∂π_l and implicit
// rewards, in f64. Specification: `pair_loss` in crates/daa-core/src/preference.rs,
// whose doc comments hold every formula; WGSL twin: shaders/wgsl/preference_loss.wgsl.
// One thread per pair; inputs were validated on the host.

struct LossParams {
    unsigned int loss;     // 0 dpo, 1 robust-dpo, 2 ipo, 3 ipo-mean, 4 hinge, 5 hinge-trl, 6 simpo, 7 orpo
    unsigned int nll_mode; // 0 none, 1 sum, 2 mean
    double beta;           // β, or τ for IPO
    double gamma, alpha, eps, nll_weight;
};

__device__ double softplus(double z) { return fmax(z, 0.0) + log1p(exp(-fabs(z))); }
__device__ double sigmoid(double z) {
    if (z >= 0.0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}
// ln(1 − e^a) for a < 0.
__device__ double log1mexp(double a) { return a > -0.6931471805599453 ? log(-expm1(a)) : log1p(-exp(a)); }

extern "C" __global__ void preference_loss(const double* pairs, double* out, unsigned long long n, LossParams p) {
    unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const double pw = pairs[i * 6 + 0], pl = pairs[i * 6 + 1], rw = pairs[i * 6 + 2], rl = pairs[i * 6 + 3];
    const double nw = pairs[i * 6 + 4], nl = pairs[i * 6 + 5];
    const double ratio_w = pw - rw, ratio_l = pl - rl, delta = ratio_w - ratio_l;
    const double beta = p.beta, eps = p.eps;
    double loss = 0.0, gw = 0.0, gl = 0.0, reward_w = beta * ratio_w, reward_l = beta * ratio_l;
    switch (p.loss) {
    case 0: { // dpo / cDPO
        double z = beta * delta;
        loss = (1.0 - eps) * softplus(-z) + eps * softplus(z);
        double dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
        gw = beta * dz; gl = -beta * dz;
        break;
    }
    case 1: { // robust-dpo
        double z = beta * delta;
        loss = ((1.0 - eps) * softplus(-z) - eps * softplus(z)) / (1.0 - 2.0 * eps);
        double dz = (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1.0 - 2.0 * eps);
        gw = beta * dz; gl = -beta * dz;
        break;
    }
    case 2: { // ipo (paper)
        double u = beta * delta - 0.5;
        loss = u * u; gw = 2.0 * beta * u; gl = -gw;
        break;
    }
    case 3: { // ipo-mean (TRL)
        double u = ratio_w / nw - ratio_l / nl - 1.0 / (2.0 * beta);
        loss = u * u; gw = 2.0 * u / nw; gl = -2.0 * u / nl;
        reward_w = beta * ratio_w / nw; reward_l = beta * ratio_l / nl;
        break;
    }
    case 4: { // hinge (paper / SLiC-HF)
        double mean_w = pw / nw, mean_l = pl / nl;
        double slack = p.gamma - (mean_w - mean_l);
        double d_margin = 0.0, d_reg = 0.0;
        if (slack > 0.0) { loss = slack; d_margin = -1.0; }
        if (p.alpha > 0.0) {
            double u = 1.0 - (mean_w - rw / nw);
            loss += p.alpha * softplus(u);
            d_reg = -p.alpha * sigmoid(u);
        }
        gw = (d_margin + d_reg) / nw; gl = -d_margin / nl;
        reward_w = mean_w; reward_l = mean_l;
        break;
    }
    case 5: { // hinge-trl
        double slack = 1.0 - beta * delta;
        if (slack > 0.0) { loss = slack; gw = -beta; gl = beta; }
        break;
    }
    case 6: { // simpo
        double mean_w = pw / nw, mean_l = pl / nl;
        double z = beta * (mean_w - mean_l) - p.gamma;
        loss = (1.0 - eps) * softplus(-z) + eps * softplus(z);
        double dz = -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z);
        gw = beta * dz / nw; gl = -beta * dz / nl;
        reward_w = beta * mean_w; reward_l = beta * mean_l;
        break;
    }
    default: { // orpo
        double mean_w = pw / nw, mean_l = pl / nl;
        double log_odds = (mean_w - log1mexp(mean_w)) - (mean_l - log1mexp(mean_l));
        loss = beta * softplus(-log_odds);
        double d = -beta * sigmoid(-log_odds);
        gw = d * (-1.0 / expm1(mean_w)) / nw;
        gl = -d * (-1.0 / expm1(mean_l)) / nl;
        reward_w = beta * mean_w; reward_l = beta * mean_l;
        break;
    }
    }
    if (p.nll_mode != 0) {
        double scale = p.nll_mode == 2 ? 1.0 / nw : 1.0;
        loss -= p.nll_weight * pw * scale;
        gw -= p.nll_weight * scale;
    }
    double* o = out + i * 7;
    o[0] = loss; o[1] = gw; o[2] = gl; o[3] = reward_w; o[4] = reward_l;
    o[5] = reward_w - reward_l; o[6] = reward_w > reward_l ? 1.0 : 0.0;
}
