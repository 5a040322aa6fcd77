// segment_reduce: weighted per-segment sums, counts and means over contiguous
// segments, f64 accumulation. CPU twin: `Cpu::segment_reduce`
// (crates/daa-core/src/cpu/mod.rs); specification: `Specification::segment_reduce`;
// WGSL twin: shaders/wgsl/segment_reduce.wgsl.
//
// One thread per (segment, column); column index `columns` computes the count.

extern "C" __global__ void segment_reduce(const float* values, const unsigned int* offsets, const float* weights,
                                          int has_weights, float* sums, float* counts, float* means,
                                          unsigned int segments, unsigned int columns) {
    unsigned long long id = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    unsigned long long per_segment = columns + 1ull;
    if (id >= (unsigned long long)segments * per_segment) return;
    unsigned int s = (unsigned int)(id / per_segment);
    unsigned int c = (unsigned int)(id % per_segment);
    double total = 0.0, weight_total = 0.0;
    for (unsigned int i = offsets[s]; i < offsets[s + 1]; ++i) {
        double w = has_weights ? (double)weights[i] : 1.0;
        if (w == 0.0) continue;
        weight_total += w;
        if (c < columns) total += w * (double)values[(unsigned long long)i * columns + c];
    }
    if (c == columns) {
        counts[s] = (float)weight_total;
    } else {
        sums[(unsigned long long)s * columns + c] = (float)total;
        means[(unsigned long long)s * columns + c] = weight_total > 0.0 ? (float)(total / weight_total) : 0.f;
    }
}
