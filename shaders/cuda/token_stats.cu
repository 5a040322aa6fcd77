// token_stats: per-row target log-probability, entropy, top-k mass and top-k
// entropies, reading each logit once. CPU twin: `token_stats_rows`
// (crates/daa-core/src/cpu/mod.rs); specification: `reference_row_stats`
// (crates/daa-core/src/reference.rs); WGSL twin: shaders/wgsl/token_stats.wgsl.
// Needs row_common.cuh prepended.
//
// One block of 256 threads per row. Each thread reads VEC consecutive logits
// per step with one vector load (float4 for f32, 16 bytes of bf16/f16 when the
// row is aligned), keeps an online log-sum-exp, and appends values above the
// running k-th largest to a shared candidate buffer: a warp with candidates
// takes one atomic for all its lanes (an inclusive shuffle scan of the lanes'
// counts gives each its slots). Every SPAN elements the block synchronises
// once; when the buffer could overflow in the next span, the k largest
// candidates are selected (a radix select on order-preserving 32-bit keys:
// four rounds of an 8-bit histogram in shared memory and a scan of its 256
// bins; nothing is sorted, the sums below need no order), moved to the front,
// and the threshold raised to the k-th value.
//
// Cost per row, V logits: per logit one load, one expf and about a dozen
// other instructions (the online log-sum-exp, the status check, the compare
// with the threshold); per selection over n ≤ CAP candidates, four rounds of
// n/256 keys per thread and about 14 barriers. Logits in no particular order
// select twice: after the first two spans (n = 4 096) and at the end over the
// k kept plus the few that beat the threshold since (about k·ln(V/4096)). A
// Llama-3 row (V = 128 256, bf16, vec8) is 63 loads of 16 bytes per thread,
// 501 logits, about 6 000 instructions, against 4 × 16 key reads (a few
// hundred instructions) for the first selection and less for the last: the
// row costs about one read of it. At ~12 instructions per logit an H200
// (~3 × 10¹³ thread instructions/s) computes about 2.5 × 10¹² logits/s,
// level with what its HBM delivers in bf16 (4.8 TB/s = 2.4 × 10¹² logits/s):
// expect a large fraction of the copy bandwidth, not all of it (f32 halves
// the logits per byte and should reach the copy bandwidth more closely). A
// row in ascending order (every logit a candidate) selects once per span:
// 4 × 16 keys per thread per 8 logits read, several times the read but never
// the old pair of 78-stage bitonic sorts of 4 096 values with an integer
// division and modulo per exchange.

#define CAP 4096
#define SPAN 2048 // elements per synchronisation: WG · STEPS · VEC
#define MAX_K 256 // daa_core::MAX_TOP_K
#define FULL_WARP 0xffffffffu

static_assert(WG == 256, "the selection scans one 8-bit digit's 256 bins with one thread each");

struct TopkShared {
    float cand[CAP];
    float top[MAX_K];
    u32 digit_counts[256];
    u32 warp_sums[WG / 32];
    u32 count;
    float threshold;
    u32 kept;
    u32 nan_col;
    u32 inf_col;
    u32 chosen_prefix; // the k-th largest key's digits found so far
    u32 still_needed;  // how many of the k lie at or below the chosen prefix
    u32 above_count;
    u32 tie_count;
};

// An order-preserving key: x < y exactly when key(x) < key(y) (finite values
// and −inf; NaN and +inf never reach the buffer).
__device__ __forceinline__ u32 order_key(float x) {
    u32 bits = __float_as_uint(x);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float key_value(u32 key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Inclusive sum over the block's threads in thread order.
__device__ __forceinline__ u32 block_inclusive_scan(u32 v, u32* warp_sums) {
    const u32 lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    #pragma unroll
    for (u32 offset = 1; offset < 32; offset <<= 1) {
        u32 earlier = __shfl_up_sync(FULL_WARP, v, offset);
        if (lane >= offset) v += earlier;
    }
    if (lane == 31u) warp_sums[warp] = v;
    __syncthreads();
    u32 before = 0;
    for (u32 w = 0; w < warp; ++w) before += warp_sums[w];
    __syncthreads(); // warp_sums may be reused
    return v + before;
}

// Keeps the k largest of cand[0..count) (any order) in cand[0..min(count, k)).
// With count > k: the k-th largest key is found digit by digit from the top
// (for each 8-bit digit, a histogram of the keys sharing the digits chosen so
// far, then a running sum from the largest digit down to the one where the
// k-th falls); values above it are kept, and of those equal to it as many as
// complete k.
__device__ void keep_top_k(TopkShared& sh, u32 count, u32 k) {
    if (count <= k) {
        if (threadIdx.x == 0) sh.kept = count;
        __syncthreads();
        return;
    }
    if (threadIdx.x == 0) { sh.chosen_prefix = 0u; sh.still_needed = k; }
    u32 prefix_mask = 0u;
    #pragma unroll 1
    for (int shift = 24; shift >= 0; shift -= 8) {
        sh.digit_counts[threadIdx.x] = 0u;
        __syncthreads();
        const u32 prefix = sh.chosen_prefix;
        for (u32 i = threadIdx.x; i < count; i += WG) {
            u32 key = order_key(sh.cand[i]);
            if ((key & prefix_mask) == prefix) atomicAdd(&sh.digit_counts[(key >> shift) & 0xffu], 1u);
        }
        __syncthreads();
        // Thread t holds digit 255 − t: its running sum counts the keys whose digit is ≥ 255 − t.
        const u32 own = sh.digit_counts[255u - threadIdx.x];
        const u32 through = block_inclusive_scan(own, sh.warp_sums);
        const u32 needed = sh.still_needed;
        __syncthreads(); // every thread has read still_needed
        if (through >= needed && through - own < needed) {
            sh.chosen_prefix = prefix | ((255u - threadIdx.x) << shift);
            sh.still_needed = needed - (through - own);
        }
        prefix_mask |= 0xffu << shift;
        __syncthreads();
    }
    const u32 kth = sh.chosen_prefix;
    const u32 ties = sh.still_needed; // values equal to the k-th that are kept (≥ 1)
    if (threadIdx.x == 0) { sh.above_count = 0u; sh.tie_count = 0u; }
    __syncthreads();
    for (u32 i = threadIdx.x; i < count; i += WG) {
        float x = sh.cand[i];
        u32 key = order_key(x);
        if (key > kth) {
            sh.top[atomicAdd(&sh.above_count, 1u)] = x;
        } else if (key == kth) {
            u32 t = atomicAdd(&sh.tie_count, 1u);
            if (t < ties) sh.top[k - ties + t] = x;
        }
    }
    __syncthreads();
    if (threadIdx.x < k) sh.cand[threadIdx.x] = sh.top[threadIdx.x];
    if (threadIdx.x == 0) { sh.count = k; sh.threshold = key_value(kth); sh.kept = k; }
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
            const float threshold = sh.threshold;
            bool take[VEC];
            u32 mine = 0;
            #pragma unroll
            for (int v = 0; v < VEC; ++v) {
                take[v] = false;
                if (status_check(x[v], j + v, &sh.nan_col, &sh.inf_col)) {
                    lse_push(state, x[v]);
                    take[v] = x[v] > threshold;
                    mine += take[v];
                }
            }
            // Warp-aggregated append: one atomic per warp that has candidates.
            if (__any_sync(FULL_WARP, mine != 0u)) {
                const u32 lane = threadIdx.x & 31u;
                u32 through = mine;
                #pragma unroll
                for (u32 offset = 1; offset < 32; offset <<= 1) {
                    u32 earlier = __shfl_up_sync(FULL_WARP, through, offset);
                    if (lane >= offset) through += earlier;
                }
                u32 base = 0u;
                if (lane == 31u) base = atomicAdd(&sh.count, through);
                u32 slot = __shfl_sync(FULL_WARP, base, 31) + through - mine;
                #pragma unroll
                for (int v = 0; v < VEC; ++v)
                    if (take[v]) sh.cand[slot++] = x[v];
            }
        }
        __syncthreads();
        const u32 count = sh.count;
        __syncthreads(); // everyone has read `count` before the next span appends
        if (count > CAP - SPAN) keep_top_k(sh, count, k);
    }
    keep_top_k(sh, sh.count, k);
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
