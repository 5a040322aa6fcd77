// Logit loader for bf16 logits packed two per u32 word (element 2w in the low
// half). Prepended to token_stats.wgsl. CPU twin: `LogitElement for bf16`.
@group(0) @binding(0) var<storage, read_write> logits: array<u32>;

fn load_logit(e: u32) -> f32 {
    let word = logits[e >> 1u];
    let bits = select(word << 16u, word & 0xffff0000u, (e & 1u) == 1u);
    return bitcast<f32>(bits);
}
