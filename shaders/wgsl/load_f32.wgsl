// Logit loader for f32 logits. Prepended to token_stats.wgsl and
// logits_backward.wgsl. CPU twin: `LogitElement for f32` (crates/daa-core/src/cpu/row.rs).
@group(0) @binding(0) var<storage, read_write> logits: array<f32>;

fn load_logit(e: u32) -> f32 {
    return logits[e];
}
