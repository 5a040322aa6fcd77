//! WGSL sources, embedded from `shaders/wgsl/`, and the modules composed
//! from them (a logit loader and shared helpers prepended to a kernel).

const LOAD_F32: &str = include_str!("../../../../shaders/wgsl/load_f32.wgsl");
const LOAD_F16: &str = include_str!("../../../../shaders/wgsl/load_f16.wgsl");
const LOAD_BF16: &str = include_str!("../../../../shaders/wgsl/load_bf16.wgsl");
const ROW_SOFTMAX: &str = include_str!("../../../../shaders/wgsl/row_softmax.wgsl");
const ROW_STATUS: &str = include_str!("../../../../shaders/wgsl/row_status.wgsl");
const TOKEN_STATS: &str = include_str!("../../../../shaders/wgsl/token_stats.wgsl");
const LOGITS_BACKWARD: &str = include_str!("../../../../shaders/wgsl/logits_backward.wgsl");
const SEGMENT_REDUCE: &str = include_str!("../../../../shaders/wgsl/segment_reduce.wgsl");
const PREFERENCE_LOSS: &str = include_str!("../../../../shaders/wgsl/preference_loss.wgsl");

/// How logits are stored in a GPU buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogitStorage {
    /// One f32 per element.
    F32,
    /// Two f16 per u32 word.
    F16,
    /// Two bf16 per u32 word.
    BF16,
}

/// Every compute module the backend builds, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `token_stats` for one logit storage.
    TokenStats(LogitStorage),
    /// `logits_backward` (f32 logits, in place).
    LogitsBackward,
    /// `segment_reduce`.
    SegmentReduce,
    /// `preference_loss`.
    PreferenceLoss,
}

impl Kernel {
    /// All kernels, for validation.
    pub const ALL: [Kernel; 6] = [
        Kernel::TokenStats(LogitStorage::F32),
        Kernel::TokenStats(LogitStorage::F16),
        Kernel::TokenStats(LogitStorage::BF16),
        Kernel::LogitsBackward,
        Kernel::SegmentReduce,
        Kernel::PreferenceLoss,
    ];

    /// A label for wgpu and for error messages.
    pub fn label(self) -> &'static str {
        match self {
            Kernel::TokenStats(LogitStorage::F32) => "token_stats_f32",
            Kernel::TokenStats(LogitStorage::F16) => "token_stats_f16",
            Kernel::TokenStats(LogitStorage::BF16) => "token_stats_bf16",
            Kernel::LogitsBackward => "logits_backward",
            Kernel::SegmentReduce => "segment_reduce",
            Kernel::PreferenceLoss => "preference_loss",
        }
    }

    /// The full WGSL source of this kernel's module.
    pub fn source(self) -> String {
        let loader = |s: LogitStorage| match s {
            LogitStorage::F32 => LOAD_F32,
            LogitStorage::F16 => LOAD_F16,
            LogitStorage::BF16 => LOAD_BF16,
        };
        match self {
            Kernel::TokenStats(s) => [loader(s), ROW_SOFTMAX, ROW_STATUS, TOKEN_STATS].join("\n"),
            Kernel::LogitsBackward => [LOAD_F32, ROW_SOFTMAX, ROW_STATUS, LOGITS_BACKWARD].join("\n"),
            Kernel::SegmentReduce => SEGMENT_REDUCE.to_string(),
            Kernel::PreferenceLoss => PREFERENCE_LOSS.to_string(),
        }
    }
}
