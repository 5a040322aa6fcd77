// Shared by token_stats.cu and logits_backward.cu: logit loads for f32, bf16
// and f16, the online log-sum-exp state and its block merge, and row status
// codes. CPU twins: `LogitElement` and `row_sums` (crates/daa-core/src/cpu/row.rs);
// WGSL twins: shaders/wgsl/load_*.wgsl, row_softmax.wgsl, row_status.wgsl.
// Compiled with NVRTC at run time (no CUDA headers: bf16/f16 are widened by bits).

#define WG 256
#define STATUS_OK 0u
#define STATUS_NAN 1u
#define STATUS_EMPTY 2u
#define STATUS_INF 3u
#define NO_COLUMN 0xffffffffu

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

__device__ __forceinline__ float bf16_to_f32(u16 h) { return __uint_as_float(((u32)h) << 16); }

__device__ __forceinline__ u16 f32_to_bf16(float x) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (u16)((bits >> 16) | 0x40u); // quiet NaN
    bits += 0x7fffu + ((bits >> 16) & 1u); // round to nearest even
    return (u16)(bits >> 16);
}

// IEEE binary16 to f32 by bits (subnormals scale by 2^-24).
__device__ __forceinline__ float f16_to_f32(u16 h) {
    u32 sign = ((u32)h & 0x8000u) << 16;
    u32 exponent = ((u32)h >> 10) & 0x1fu;
    u32 mantissa = (u32)h & 0x3ffu;
    if (exponent == 0u) {
        float m = (float)mantissa * 5.9604645e-8f;
        return sign ? -m : m;
    }
    if (exponent == 31u) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Loads VEC consecutive logits starting at element i (i % VEC == 0 and the
// row base aligned for VEC > 1, so a single vector load is used).
template <typename T, int VEC> struct Loader;

template <> struct Loader<float, 1> {
    static __device__ __forceinline__ void load(const float* p, u64 i, float* out) { out[0] = __ldg(p + i); }
};
template <> struct Loader<float, 4> {
    static __device__ __forceinline__ void load(const float* p, u64 i, float* out) {
        float4 v = __ldg(reinterpret_cast<const float4*>(p + i));
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    }
};
struct Bf16 { u16 bits; };
struct F16 { u16 bits; };
template <> struct Loader<Bf16, 1> {
    static __device__ __forceinline__ void load(const Bf16* p, u64 i, float* out) {
        out[0] = bf16_to_f32(__ldg(reinterpret_cast<const unsigned short*>(p) + i));
    }
};
template <> struct Loader<Bf16, 8> {
    static __device__ __forceinline__ void load(const Bf16* p, u64 i, float* out) {
        uint4 v = __ldg(reinterpret_cast<const uint4*>(p + i));
        u32 w[4] = {v.x, v.y, v.z, v.w};
        #pragma unroll
        for (int q = 0; q < 4; ++q) {
            out[2 * q] = __uint_as_float(w[q] << 16);
            out[2 * q + 1] = __uint_as_float(w[q] & 0xffff0000u);
        }
    }
};
template <> struct Loader<F16, 1> {
    static __device__ __forceinline__ void load(const F16* p, u64 i, float* out) {
        out[0] = f16_to_f32(__ldg(reinterpret_cast<const unsigned short*>(p) + i));
    }
};
template <> struct Loader<F16, 8> {
    static __device__ __forceinline__ void load(const F16* p, u64 i, float* out) {
        uint4 v = __ldg(reinterpret_cast<const uint4*>(p + i));
        u32 w[4] = {v.x, v.y, v.z, v.w};
        #pragma unroll
        for (int q = 0; q < 4; ++q) {
            out[2 * q] = f16_to_f32((u16)(w[q] & 0xffffu));
            out[2 * q + 1] = f16_to_f32((u16)(w[q] >> 16));
        }
    }
};

// Online log-sum-exp over the values one thread saw: m = max, z = Σ e^{x−m},
// s = Σ e^{x−m}(x−m). −inf contributes nothing.
struct Lse { float m, z, s; };

__device__ __forceinline__ Lse lse_empty() { Lse a; a.m = -3.402823466e38f; a.z = 0.f; a.s = 0.f; return a; }

__device__ __forceinline__ void lse_push(Lse& a, float x) {
    if (!(x > -3.402823466e38f)) return;
    if (x > a.m) {
        if (a.z == 0.f) { a.m = x; a.z = 1.f; a.s = 0.f; return; }
        float f = expf(a.m - x);
        a.s = f * (a.s + (a.m - x) * a.z);
        a.z = a.z * f + 1.f;
        a.m = x;
        return;
    }
    float d = x - a.m;
    float e = expf(d);
    a.z += e;
    a.s = fmaf(e, d, a.s);
}

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
    if (b.z == 0.f) return a;
    if (a.z == 0.f) return b;
    float m = fmaxf(a.m, b.m);
    float fa = expf(a.m - m), fb = expf(b.m - m);
    Lse r;
    r.m = m;
    r.z = a.z * fa + b.z * fb;
    r.s = fa * (a.s + (a.m - m) * a.z) + fb * (b.s + (b.m - m) * b.z);
    return r;
}

// Block-wide merge: warp shuffles, then one value per warp through shared memory.
__device__ Lse lse_block_reduce(Lse v) {
    __shared__ float sm[WG / 32], sz[WG / 32], ss[WG / 32];
    __shared__ Lse result;
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        Lse o;
        o.m = __shfl_xor_sync(0xffffffffu, v.m, off);
        o.z = __shfl_xor_sync(0xffffffffu, v.z, off);
        o.s = __shfl_xor_sync(0xffffffffu, v.s, off);
        v = lse_merge(v, o);
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { sm[warp] = v.m; sz[warp] = v.z; ss[warp] = v.s; }
    __syncthreads();
    if (threadIdx.x == 0) {
        Lse r = lse_empty();
        for (int w = 0; w < WG / 32; ++w) { Lse o; o.m = sm[w]; o.z = sz[w]; o.s = ss[w]; r = lse_merge(r, o); }
        result = r;
    }
    __syncthreads();
    return result;
}

__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[WG / 32];
    __shared__ float total;
    #pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.f;
        for (int w = 0; w < WG / 32; ++w) t += partial[w];
        total = t;
    }
    __syncthreads();
    float r = total;
    __syncthreads();
    return r;
}

// Classifies a logit by its bits: true when usable (finite or −inf); NaN and
// +inf record their column.
__device__ __forceinline__ bool status_check(float x, u32 column, u32* nan_col, u32* inf_col) {
    u32 bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) != 0x7f800000u) return true;
    if (bits & 0x007fffffu) { atomicMin(nan_col, column); return false; }
    if (bits == 0x7f800000u) { atomicMin(inf_col, column); return false; }
    return true;
}

__device__ __forceinline__ u32 status_code(u32 nan_col, u32 inf_col, float z, u32* column) {
    if (nan_col != NO_COLUMN || inf_col != NO_COLUMN) {
        *column = min(nan_col, inf_col);
        return nan_col < inf_col ? STATUS_NAN : STATUS_INF;
    }
    *column = 0u;
    return z == 0.f ? STATUS_EMPTY : STATUS_OK;
}
