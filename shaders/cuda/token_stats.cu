// token_stats: per-row target log-probability, entropy, top-k mass and top-k
// entropies, reading each logit once. CPU twin: `token_stats_rows`
// (crates/daa-core/src/cpu/mod.rs); specification: `reference_row_stats`
// (crates/daa-core/src/reference.rs); WGSL twin: shaders/wgsl/token_stats.wgsl.
// Needs row_common.cuh prepended.
//
// One block of 256 threads per row. Each thread reads VEC consecutive logits
// per step with one vector load (float4 for f32, 16 bytes of bf16/f16 when the
// row is aligned), keeps an online log-sum-exp, and appends values above the
// running k-th largest to a shared candidate buffer. Every STEPS steps (at
// most 2048 appends) the block synchronises once; when the buffer could
// overflow it is sorted (bitonic, descending), cut to k, and the threshold
// raised to the k-th value.

#define CAP 4096
#define SPAN 2048 // elements per synchronisation: WG · STEPS · VEC

struct TopkShared {
    float cand[CAP];
    u32 count;
    float threshold;
    u32 kept;
    u32 nan_col;
    u32 inf_col;
};

__device__ void compact(TopkShared& sh, u32 k) {
    u32 count = sh.count;
    for (u32 i = threadIdx.x; i < CAP; i += WG)
        if (i >= count) sh.cand[i] = -3.402823466e38f;
    __syncthreads();
    for (u32 size = 2; size <= CAP; size <<= 1) {
        for (u32 stride = size >> 1; stride > 0; stride >>= 1) {
            for (u32 i = threadIdx.x; i < CAP / 2; i += WG) {
                u32 lo = 2 * stride * (i / stride) + (i % stride);
                u32 hi = lo + stride;
                float a = sh.cand[lo], b = sh.cand[hi];
                bool descending = (lo & size) == 0;
                if ((a < b) == descending) { sh.cand[lo] = b; sh.cand[hi] = a; }
            }
            __syncthreads();
        }
    }
    if (threadIdx.x == 0) {
        u32 n = min(count, k);
        sh.count = n;
        if (n == k) sh.threshold = sh.cand[n - 1];
        sh.kept = n;
    }
    __syncthreads();
}

template <typename T, int VEC>
__device__ void token_stats_row(const T* __restrict__ logits, const int* __restrict__ targets,
                                float* __restrict__ out, u32* __restrict__ status,
                                u32 vocab, u32 k, float inv_ln_base, u64 row) {
    __shared__ TopkShared sh;
    const int target = targets[row];
    if (target < 0) {
        if (threadIdx.x < 6) out[row * 6 + threadIdx.x] = 0.f;
        if (threadIdx.x < 2) status[row * 2 + threadIdx.x] = STATUS_OK;
        return;
    }
    if (threadIdx.x == 0) {
        sh.count = 0; sh.kept = 0; sh.threshold = -3.402823466e38f;
        sh.nan_col = NO_COLUMN; sh.inf_col = NO_COLUMN;
    }
    __syncthreads();
    const T* row_ptr = logits + row * (u64)vocab;
    Lse state = lse_empty();
    for (u32 start = 0; start < vocab; start += SPAN) {
        #pragma unroll
        for (u32 step = 0; step < SPAN / (WG * VEC); ++step) {
            u32 j = start + (step * WG + threadIdx.x) * VEC;
            float x[VEC];
            if (j + VEC <= vocab) {
                Loader<T, VEC>::load(row_ptr, j, x);
            } else {
                #pragma unroll
                for (int v = 0; v < VEC; ++v) {
                    if (j + v < vocab) Loader<T, 1>::load(row_ptr, j + v, &x[v]);
                    else x[v] = __uint_as_float(0xff800000u); // −inf: outside the row
                }
            }
            float threshold = sh.threshold;
            #pragma unroll
            for (int v = 0; v < VEC; ++v) {
                if (status_check(x[v], j + v, &sh.nan_col, &sh.inf_col)) {
                    lse_push(state, x[v]);
                    if (x[v] > threshold) sh.cand[atomicAdd(&sh.count, 1u)] = x[v];
                }
            }
        }
        __syncthreads();
        const u32 count = sh.count;
        __syncthreads(); // everyone has read `count` before the next span appends
        if (count > CAP - SPAN) compact(sh, k);
    }
    compact(sh, k);
    Lse r = lse_block_reduce(state);
    u32 column;
    u32 code = status_code(sh.nan_col, sh.inf_col, r.z, &column);
    if (code != STATUS_OK) {
        if (threadIdx.x == 0) { status[row * 2] = code; status[row * 2 + 1] = column; }
        return;
    }
    float ln_z = logf(r.z);
    float p = 0.f, plogp = 0.f;
    if (threadIdx.x < sh.kept) {
        float log_p = (sh.cand[threadIdx.x] - r.m) - ln_z;
        float q = expf(log_p);
        if (q > 0.f) { p = q; plogp = q * log_p; }
    }
    float mass = block_sum(p);
    float sum_plogp = block_sum(plogp);
    if (threadIdx.x == 0) {
        float x_t;
        Loader<T, 1>::load(row_ptr, (u32)target, &x_t);
        out[row * 6 + 0] = (x_t - r.m) - ln_z;
        out[row * 6 + 1] = fmaxf(ln_z - r.s / r.z, 0.f);
        out[row * 6 + 2] = mass;
        out[row * 6 + 3] = fmaxf(logf(mass) - sum_plogp / mass, 0.f) * inv_ln_base;
        out[row * 6 + 4] = fmaxf(-sum_plogp, 0.f) * inv_ln_base;
        out[row * 6 + 5] = 1.f;
        status[row * 2] = STATUS_OK;
        status[row * 2 + 1] = 0u;
    }
}

// Entry points: `vec` selects the vector width the host proved aligned
// (vocab a multiple of VEC); rows are blockIdx.x + blockIdx.y · gridDim.x.
#define TOKEN_STATS_ENTRY(NAME, T, VEC)                                                              \
    extern "C" __global__ void __launch_bounds__(WG) NAME(const T* logits, const int* targets,       \
        float* out, u32* status, u32 vocab, u32 k, float inv_ln_base, u64 rows) {                   \
        u64 row = (u64)blockIdx.x + (u64)blockIdx.y * gridDim.x;                                     \
        if (row >= rows) return;                                                                     \
        token_stats_row<T, VEC>(logits, targets, out, status, vocab, k, inv_ln_base, row);          \
    }

TOKEN_STATS_ENTRY(token_stats_f32, float, 1)
TOKEN_STATS_ENTRY(token_stats_f32_vec4, float, 4)
TOKEN_STATS_ENTRY(token_stats_bf16, Bf16, 1)
TOKEN_STATS_ENTRY(token_stats_bf16_vec8, Bf16, 8)
TOKEN_STATS_ENTRY(token_stats_f16, F16, 1)
TOKEN_STATS_ENTRY(token_stats_f16_vec8, F16, 8)
