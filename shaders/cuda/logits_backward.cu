// logits_backward: ∂L/∂x_j = g · ([j = t] − softmax(x)_j), written over the
// logits in place (f32 or bf16). CPU twin: `backward_in_place`
// (crates/daa-core/src/cpu/row.rs); specification: `Specification::logits_backward`;
// WGSL twin: shaders/wgsl/logits_backward.wgsl. Needs row_common.cuh prepended.
//
// One block of 256 threads per row: an online log-sum-exp pass, a block
// merge, then each thread rewrites the elements it read. Overwriting the
// logits is the memory trick of Liger-Kernel: no second [rows, V] buffer.

template <typename T> struct Store;
template <> struct Store<float> {
    static __device__ __forceinline__ void store(float* p, u64 i, float v) { p[i] = v; }
};
template <> struct Store<Bf16> {
    static __device__ __forceinline__ void store(Bf16* p, u64 i, float v) {
        reinterpret_cast<unsigned short*>(p)[i] = f32_to_bf16(v);
    }
};

template <typename T>
__device__ void backward_row(T* __restrict__ logits, const int* __restrict__ targets,
                             const float* __restrict__ grad, u32* __restrict__ status, u32 vocab, u64 row) {
    __shared__ u32 nan_col, inf_col;
    T* row_ptr = logits + row * (u64)vocab;
    const int target = targets[row];
    if (target < 0) {
        for (u32 j = threadIdx.x; j < vocab; j += WG) Store<T>::store(row_ptr, j, 0.f);
        if (threadIdx.x < 2) status[row * 2 + threadIdx.x] = STATUS_OK;
        return;
    }
    if (threadIdx.x == 0) { nan_col = NO_COLUMN; inf_col = NO_COLUMN; }
    __syncthreads();
    Lse state = lse_empty();
    for (u32 j = threadIdx.x; j < vocab; j += WG) {
        float x;
        Loader<T, 1>::load(row_ptr, j, &x);
        if (status_check(x, j, &nan_col, &inf_col)) lse_push(state, x);
    }
    Lse r = lse_block_reduce(state);
    u32 column;
    u32 code = status_code(nan_col, inf_col, r.z, &column);
    if (threadIdx.x == 0) { status[row * 2] = code; status[row * 2 + 1] = column; }
    if (code != STATUS_OK) return;
    const float ln_z = logf(r.z);
    const float g = grad[row];
    for (u32 j = threadIdx.x; j < vocab; j += WG) {
        float x;
        Loader<T, 1>::load(row_ptr, j, &x);
        float p = expf((x - r.m) - ln_z);
        Store<T>::store(row_ptr, j, (j == (u32)target ? g : 0.f) - g * p);
    }
}

#define BACKWARD_ENTRY(NAME, T)                                                                     \
    extern "C" __global__ void __launch_bounds__(WG) NAME(T* logits, const int* targets,            \
        const float* grad, u32* status, u32 vocab, u64 rows) {                                      \
        u64 row = (u64)blockIdx.x + (u64)blockIdx.y * gridDim.x;                                     \
        if (row >= rows) return;                                                                     \
        backward_row<T>(logits, targets, grad, status, vocab, row);                                  \
    }

BACKWARD_ENTRY(logits_backward_f32, float)
BACKWARD_ENTRY(logits_backward_bf16, Bf16)
