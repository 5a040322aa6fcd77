//! Errors of the model, loss and optimizer code (the parts that also build
//! for the browser). The command line adds file names on top.

use thiserror::Error;

/// What went wrong while building or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// `config.json` is missing a field or has a value daa cannot use.
    #[error("config.json: {0}")]
    Config(String),
    /// LoRA settings or adapters daa cannot use (the message names the field).
    #[error("{0}")]
    Lora(String),
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
    /// A collective between data-parallel ranks failed.
    #[error("distributed training: {0}")]
    Collective(crate::distributed::CollectiveError),
    /// Sharded training state used inconsistently (a stage without ranks,
    /// a gradient outside the layout, a slice of the wrong length).
    #[error("sharded training: {0}")]
    Sharding(String),
    /// A model gave a pair a log-probability that is not finite.
    #[error("pair {pair}: the model's log-probability is not finite (chosen {chosen}, rejected {rejected})")]
    NonFiniteScore {
        /// Index of the pair in what was scored.
        pair: usize,
        /// `π_w`.
        chosen: f64,
        /// `π_l`.
        rejected: f64,
    },
    /// An optimizer step met a non-finite quantity; it was not applied.
    #[error("{quantity} is not finite: the step was not applied")]
    NonFiniteStep {
        /// What was not finite, e.g. `the gradient norm (NaN)`.
        quantity: String,
    },
    /// Optimizer state does not match the model.
    #[error("optimizer state: {0}")]
    OptimizerState(String),
    /// A tensor could not be read back from the device (the backend failed,
    /// or its data has an unexpected element type).
    #[error("reading {what} back from the device: {message}")]
    Readback {
        /// What was being read (`policy log-probabilities`, a weight's name…).
        what: String,
        /// The backend's message.
        message: String,
    },
}

impl ModelError {
    /// The same error with pair indices moved by `offset`: for callers that
    /// score a slice of pairs starting at `offset`.
    pub fn offset_pairs(self, offset: usize) -> Self {
        match self {
            ModelError::NonFiniteScore { pair, chosen, rejected } => {
                ModelError::NonFiniteScore { pair: pair + offset, chosen, rejected }
            }
            ModelError::Core(e) => ModelError::Core(e.offset_rows(offset)),
            other => other,
        }
    }
}

/// The values of `tensor` on the host as `T`, or [`ModelError::Readback`]
/// naming `what`: never an empty or default vector.
pub fn read_vec<T: burn::tensor::Element, B: burn::tensor::backend::Backend, const D: usize>(
    tensor: burn::tensor::Tensor<B, D>,
    what: &str,
) -> Result<Vec<T>, ModelError> {
    let failed = |message: String| ModelError::Readback { what: what.to_string(), message };
    let data = tensor.try_into_data().map_err(|e| failed(format!("{e:?}")))?;
    data.convert::<T>().into_vec::<T>().map_err(|e| failed(format!("{e:?}")))
}

/// Not `#[from]`: that would make the collective's error the source as
/// well, and an error chain would print its message twice.
impl From<crate::distributed::CollectiveError> for ModelError {
    fn from(error: crate::distributed::CollectiveError) -> Self {
        ModelError::Collective(error)
    }
}
