//! Errors of the model, loss and optimizer code (the parts that also build
//! for the browser). The command line adds file names on top.

use thiserror::Error;

/// What went wrong while building or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// `config.json` is missing a field or has a value daa cannot use.
    #[error("config.json: {0}")]
    Config(String),
    /// `config.json` names a model family daa does not implement.
    #[error("config.json: unknown architecture {found}; daa supports {supported}")]
    UnknownArchitecture {
        /// What the file says.
        found: String,
        /// What daa supports.
        supported: String,
    },
    /// A weight the architecture needs is not in the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint")]
    MissingTensor {
        /// Hugging Face name of the weight.
        name: String,
    },
    /// A weight has the wrong shape for the configuration.
    #[error("tensor `{name}`: expected shape {expected:?} (from config.json), found {found:?}")]
    Shape {
        /// Hugging Face name of the weight.
        name: String,
        /// Shape the configuration implies.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A weight holds NaN or infinite values.
    #[error("tensor `{name}` holds a non-finite value at flat index {index}")]
    NonFinite {
        /// Hugging Face name of the weight.
        name: String,
        /// First offending element.
        index: usize,
    },
    /// A batch is inconsistent (lengths, ids outside the vocabulary…).
    #[error("batch: {0}")]
    Batch(String),
    /// The loss catalog rejected the parameters or a pair.
    #[error(transparent)]
    Core(#[from] daa_core::error::DaaError),
    /// Optimizer state does not match the model.
    #[error("optimizer state: {0}")]
    OptimizerState(String),
}
