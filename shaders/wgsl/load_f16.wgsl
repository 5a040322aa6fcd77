// Logit loader for f16 logits packed two per u32 word (element 2w in the low
// half), widened with integer operations so no shader-f16 capability is
// needed. Prepended to token_stats.wgsl. CPU twin: `LogitElement for f16`.
@group(0) @binding(0) var<storage, read_write> logits: array<u32>;

// IEEE binary16 bits to f32: zero and subnormals scale the mantissa by 2^-24,
// infinities and NaN keep their payload, normals rebias the exponent (15 → 127).
fn f16_bits_to_f32(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if (exponent == 0u) {
        let magnitude = f32(mantissa) * 5.9604645e-8;
        return select(magnitude, -magnitude, sign != 0u);
    }
    if (exponent == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (mantissa << 13u));
    }
    return bitcast<f32>(sign | ((exponent + 112u) << 23u) | (mantissa << 13u));
}

fn load_logit(e: u32) -> f32 {
    let word = logits[e >> 1u];
    return f16_bits_to_f32(select(word & 0xffffu, word >> 16u, (e & 1u) == 1u));
}
