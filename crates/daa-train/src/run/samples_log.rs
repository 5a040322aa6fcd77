//! `samples.jsonl`: every sample of every sample evaluation, one line per
//! held-out prompt per evaluation — the step, then the prompt, the policy's
//! and the reference's completions, both judge rewards, the sample's
//! log-ratio and KL term, lengths and finish reasons
//! ([`EvaluatedSample`]). Written only by runs with a sample evaluation,
//! appended as each evaluation ends; a resumed run drops the lines after
//! its checkpoint's step as `metrics.jsonl` does.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::metrics::{append, parse_lines, reopen_log};
use crate::sample_eval::EvaluatedSample;

/// One line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleLine {
    /// Optimizer steps done when the evaluation ran (0: before training).
    pub step: u64,
    /// The prompt's samples.
    #[serde(flatten)]
    pub sample: EvaluatedSample,
}

/// The samples file of a run, created at its first evaluation.
#[derive(Debug)]
pub struct SamplesLog {
    path: PathBuf,
    file: Option<File>,
    resume_step: Option<u64>,
}

/// Reads every line of a samples file; a line that is not one is an error
/// naming the file and the line.
pub fn read_samples(path: &Path) -> Result<Vec<SampleLine>> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot open", path.display()))?;
    parse_lines(&text, path, "a daa samples line")
}

/// [`reopen_log`] of a samples file.
fn reopen(path: &Path, resume_step: Option<u64>, note: &mut dyn FnMut(&str)) -> Result<File> {
    reopen_log(path, resume_step, "a daa samples line", |line: &SampleLine| line.step, note)
}

impl SamplesLog {
    /// `run_dir/samples.jsonl`: an existing file is emptied for a fresh run
    /// and cut back to `resume_step` for a resumed one now; a new one is
    /// created when the first samples come.
    pub fn open(run_dir: &Path, resume_step: Option<u64>, note: &mut dyn FnMut(&str)) -> Result<Self> {
        let path = run_dir.join("samples.jsonl");
        let file = path.exists().then(|| reopen(&path, resume_step, note)).transpose()?;
        Ok(Self { path, file, resume_step })
    }

    /// Appends the samples of the evaluation after `step` steps (one write).
    pub fn write(&mut self, step: u64, samples: &[EvaluatedSample], note: &mut dyn FnMut(&str)) -> Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(reopen_log(
                &self.path,
                self.resume_step,
                "a daa samples line",
                |l: &SampleLine| l.step,
                note,
            )?),
        };
        let mut text = String::new();
        for sample in samples {
            text.push_str(&serde_json::to_string(&SampleLine { step, sample: sample.clone() })?);
            text.push('\n');
        }
        append(file, &self.path, text.as_bytes())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
