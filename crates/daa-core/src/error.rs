//! The one error type of daa-core.

use crate::tensor::DType;

/// Everything that can go wrong in daa-core. Every variant names the tensor,
/// row or parameter concerned and what was expected, so the message can be
/// shown to a user as it is.
#[derive(Debug, thiserror::Error)]
pub enum DaaError {
    /// A tensor has the wrong number of dimensions or a size that does not
    /// match another tensor's.
    #[error("tensor `{tensor}` has shape {actual:?}, expected {expected}")]
    Shape {
        /// Which tensor (`logits`, `targets`, `mask`, ...).
        tensor: &'static str,
        /// Its shape.
        actual: Vec<usize>,
        /// What was expected, in words.
        expected: String,
    },
    /// A tensor's element type is not one the operation accepts.
    #[error("tensor `{tensor}` has dtype {actual}, expected {expected}")]
    DType {
        /// Which tensor.
        tensor: &'static str,
        /// Its element type.
        actual: DType,
        /// The accepted element types, in words.
        expected: &'static str,
    },
    /// A target id lies outside `0..vocab` on a row that is not masked.
    #[error("`targets` row {row}: target id {target} is outside the vocabulary 0..{vocab}")]
    TargetOutOfRange {
        /// Row index (flattened over batch and time).
        row: usize,
        /// The offending id.
        target: i64,
        /// Vocabulary size (last dimension of `logits`).
        vocab: usize,
    },
    /// A logit is NaN or +inf on a row that is not masked (−inf is allowed:
    /// it means probability zero).
    #[error("`logits` row {row}, column {column}: value {value} is not allowed (logits must be finite or -inf)")]
    NonFiniteLogit {
        /// Row index.
        row: usize,
        /// Column (token id).
        column: usize,
        /// The value found.
        value: f32,
    },
    /// Every logit of an unmasked row is −inf, so the row has no distribution.
    #[error("`logits` row {row}: every logit is -inf, so the row is not a probability distribution")]
    EmptyDistribution {
        /// Row index.
        row: usize,
    },
    /// A parameter is out of its allowed range.
    #[error("parameter `{name}` = {value}: {expected}")]
    Parameter {
        /// Parameter name as users write it.
        name: &'static str,
        /// Its value, printed.
        value: String,
        /// What is allowed.
        expected: String,
    },
    /// A per-sequence input of the preference loss is unusable
    /// (NaN, a positive log-probability, a zero token count, ...).
    #[error("pair {pair}: `{field}` = {value}: {expected}")]
    PairInput {
        /// Pair (row) index.
        pair: usize,
        /// Field name (`policy_chosen`, `chosen_tokens`, ...).
        field: &'static str,
        /// Its value.
        value: f64,
        /// What is allowed.
        expected: &'static str,
    },
    /// The segment offsets are not a non-decreasing list that starts at 0
    /// and ends at the number of values.
    #[error("`offsets`: {0}")]
    Offsets(String),
    /// A file could not be opened, mapped or parsed, or lacks what was asked of it.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, naming the tensor where one is concerned.
        message: String,
    },
    /// A device could not be found, initialised, or failed while running.
    #[error("{backend} backend: {message}")]
    Device {
        /// Backend name.
        backend: &'static str,
        /// What happened, with a hint for the user.
        message: String,
    },
}

impl DaaError {
    /// The same error with row numbers moved by `offset`: for callers that
    /// run an op on a slice of rows starting at `offset`.
    pub fn offset_rows(self, offset: usize) -> Self {
        match self {
            DaaError::TargetOutOfRange { row, target, vocab } => {
                DaaError::TargetOutOfRange { row: row + offset, target, vocab }
            }
            DaaError::NonFiniteLogit { row, column, value } => {
                DaaError::NonFiniteLogit { row: row + offset, column, value }
            }
            DaaError::EmptyDistribution { row } => DaaError::EmptyDistribution { row: row + offset },
            DaaError::PairInput { pair, field, value, expected } => {
                DaaError::PairInput { pair: pair + offset, field, value, expected }
            }
            other => other,
        }
    }
}

/// Result with [`DaaError`].
pub type Result<T, E = DaaError> = std::result::Result<T, E>;
