//! What a run reads, resolved before anything loads: the model (a folder,
//! a Hub id in the local cache, or a built-in), the data and held-out data
//! (a file, a folder of shards with a split, a Hub dataset id, or a
//! built-in), and the judge of the sample evaluation. A path that does not
//! exist, a split that is not there or a judge that cannot score the data is
//! an error here, naming the setting, before a model or a row is read.

use std::path::PathBuf;

use anyhow::{Result, bail};

use super::config::{BUILTIN, BUILTIN_TESTBED, TrainConfig};
use crate::data::DataSource;
use crate::hub::{resolve_dataset, resolve_model};

/// A model or data setting after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<T> {
    /// `builtin:tiny`.
    Tiny,
    /// `builtin:testbed`.
    Testbed,
    /// The user's own.
    Given(T),
}

impl<T> Input<T> {
    /// Which kind of input, without the value.
    pub fn kind(&self) -> Input<()> {
        match self {
            Self::Tiny => Input::Tiny,
            Self::Testbed => Input::Testbed,
            Self::Given(_) => Input::Given(()),
        }
    }

    fn resolve(spec: &str, given: impl FnOnce(&str) -> Result<T>) -> Result<Self> {
        Ok(match spec {
            BUILTIN => Self::Tiny,
            BUILTIN_TESTBED => Self::Testbed,
            _ => Self::Given(given(spec)?),
        })
    }
}

/// A run's inputs, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInputs {
    /// `model.path`.
    pub model: Input<PathBuf>,
    /// `data.path` (and `data.split`).
    pub data: Input<DataSource>,
    /// `data.eval_path` (and `data.eval_split`); `None`: held-out pairs are
    /// split off the training data.
    pub eval: Option<Input<DataSource>>,
    /// `monitor.samples.judge` when it is a reward model.
    pub reward_model: Option<PathBuf>,
}

impl RunInputs {
    /// Resolves `config`'s paths (module documentation).
    pub fn resolve(config: &TrainConfig) -> Result<Self> {
        let model = Input::resolve(&config.model.path, |spec| resolve_model(spec, "model.path"))?;
        let d = &config.data;
        let data = data_input(&d.path, d.split.as_deref(), "data.path", "data.split")?;
        let eval = match (&d.eval_path, &d.eval_split) {
            (Some(path), split) => Some(data_input(path, split.as_deref(), "data.eval_path", "data.eval_split")?),
            (None, Some(split)) => Some(data_input(&d.path, Some(split), "data.path", "data.eval_split")?),
            (None, None) => None,
        };
        let reward_model = match config.samples() {
            Some(s) if s.judge != "gold" => Some(resolve_model(&s.judge, "monitor.samples.judge")?),
            _ => None,
        };
        Ok(Self { model, data, eval, reward_model })
    }

    /// Whether the model, the data or the held-out data is of `kind`.
    pub fn uses(&self, kind: Input<()>) -> bool {
        [Some(self.model.kind()), Some(self.data.kind()), self.eval.as_ref().map(Input::kind)].contains(&Some(kind))
    }
}

/// The data setting `field` = `spec`, with `split` (the setting
/// `split_field`): a file, a folder's shards of that split, or a cached Hub
/// dataset; a built-in, which has no splits.
fn data_input(spec: &str, split: Option<&str>, field: &str, split_field: &str) -> Result<Input<DataSource>> {
    let input = Input::resolve(spec, |spec| {
        DataSource::open(&resolve_dataset(spec, field)?, split, &format!("`{field}` = `{spec}`"))
    })?;
    match (&input, split) {
        (Input::Tiny | Input::Testbed, Some(split)) => bail!(
            "`{split_field}` = `{split}`: `{spec}` has no splits (a split picks shards in a folder of data files)"
        ),
        _ => Ok(input),
    }
}
