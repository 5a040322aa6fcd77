//! `metrics.jsonl`: one [`MetricsRecord`] per line, `"type": "train"` every
//! step and `"type": "eval"` at every evaluation, appended and flushed as
//! they happen; each record also goes to the run's TensorBoard event file
//! when it has one ([`super::tensorboard`]); an evaluation's samples go to
//! `samples.jsonl` ([`super::samples_log`]).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use daa_core::io::write_bytes_atomic;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::samples_log::SamplesLog;
use super::tensorboard::TensorBoardLog;
use crate::records::MetricsRecord;
use crate::sample_eval::EvaluatedSample;

/// The metrics file of a run.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    /// The files written; `None` on ranks other than 0.
    files: Option<LogFiles>,
}

#[derive(Debug)]
struct LogFiles {
    file: File,
    tensorboard: Option<TensorBoardLog>,
    samples: SamplesLog,
}

/// Reads every record of a metrics file; a line that is not a record is an
/// error naming the file and the line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot open", path.display()))?;
    parse_lines(&text, path, "a daa metrics record")
}

/// The records of a JSON Lines file's bytes (`path` names it in errors;
/// `what` names a record).
pub(super) fn parse_lines<T: DeserializeOwned>(text: &[u8], path: &Path, what: &str) -> Result<Vec<T>> {
    let mut records = Vec::new();
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line =
            std::str::from_utf8(line).with_context(|| format!("{}: line {}: not UTF-8", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let record =
            serde_json::from_str(line).with_context(|| format!("{}: line {}: not {what}", path.display(), i + 1))?;
        records.push(record);
    }
    Ok(records)
}

/// Rewrites the JSON Lines log at `path` for a run resumed at
/// `resume_step` (records up to that step kept, later ones dropped: an
/// interrupted run may have written past its last checkpoint; a last line
/// cut short — no newline: the disk filled or the process was killed while
/// writing it — dropped, saying so through `note`), or empty for a fresh
/// run; then opens it for appending.
pub(super) fn reopen_log<T: Serialize + DeserializeOwned>(
    path: &Path,
    resume_step: Option<u64>,
    what: &str,
    step_of: impl Fn(&T) -> u64,
    note: &mut dyn FnMut(&str),
) -> Result<File> {
    let kept: Vec<T> = match resume_step {
        Some(step) if path.exists() => {
            let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let whole = match text.iter().rposition(|&b| b == b'\n') {
                Some(end) if end + 1 < text.len() => {
                    note(&format!(
                        "{}: the last line was cut short ({} bytes without a newline); dropped",
                        path.display(),
                        text.len() - end - 1
                    ));
                    &text[..=end]
                }
                None if !text.is_empty() => {
                    note(&format!("{}: the only line was cut short; dropped", path.display()));
                    &text[..0]
                }
                _ => &text[..],
            };
            parse_lines::<T>(whole, path, what)?.into_iter().filter(|r| step_of(r) <= step).collect()
        }
        _ => Vec::new(),
    };
    let mut text = String::new();
    for record in &kept {
        text.push_str(&serde_json::to_string(record)?);
        text.push('\n');
    }
    write_bytes_atomic(path, text.as_bytes())?;
    OpenOptions::new().append(true).open(path).with_context(|| format!("{}: cannot open", path.display()))
}

/// Appends `bytes` to `file` (at `path`, named in the error) in one write
/// and flushes.
pub(super) fn append(file: &mut File, path: &Path, bytes: &[u8]) -> Result<()> {
    file.write_all(bytes).and_then(|()| file.flush()).with_context(|| format!("{}: write failed", path.display()))
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl`. A fresh run starts it empty; a resumed
    /// run keeps the records up to `resume_step` (an interrupted run may have
    /// written past its last checkpoint; a last line cut short is dropped,
    /// with a note). With `tensorboard`, a new event file is started too; an
    /// evaluation's samples go to `samples.jsonl`.
    pub fn open(
        run_dir: &Path,
        resume_step: Option<u64>,
        tensorboard: bool,
        note: &mut dyn FnMut(&str),
    ) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let file = reopen_log(&path, resume_step, "a daa metrics record", MetricsRecord::step, note)?;
        let tensorboard = tensorboard.then(|| TensorBoardLog::create(run_dir, resume_step)).transpose()?;
        let samples = SamplesLog::open(run_dir, resume_step, note)?;
        Ok(Self { path, files: Some(LogFiles { file, tensorboard, samples }) })
    }

    /// A log that writes nothing, reading `run_dir/metrics.jsonl` as rank 0
    /// writes it (the ranks other than 0 of a run over several processes).
    pub fn discarding(run_dir: &Path) -> Self {
        Self { path: run_dir.join("metrics.jsonl"), files: None }
    }

    /// Appends one record (one write of the whole line), then its event.
    pub fn write(&mut self, record: &MetricsRecord) -> Result<()> {
        let Some(files) = &mut self.files else { return Ok(()) };
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        append(&mut files.file, &self.path, line.as_bytes())?;
        match &mut files.tensorboard {
            Some(events) => events.write(record),
            None => Ok(()),
        }
    }

    /// Appends an evaluation's samples to `samples.jsonl` ([`SamplesLog`]).
    pub fn write_samples(&mut self, step: u64, samples: &[EvaluatedSample], note: &mut dyn FnMut(&str)) -> Result<()> {
        match &mut self.files {
            Some(files) => files.samples.write(step, samples, note),
            None => Ok(()),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file written before the TRL names (the browser test's sample run)
    /// reads as before, and is written back under the new names.
    #[test]
    fn records_under_the_names_before_trls_read_and_write_back_renamed() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/tests/sample-metrics.jsonl");
        let text = std::fs::read_to_string(&path).unwrap();
        let first_two: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
        let old: Vec<serde_json::Value> = first_two.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let records: Vec<MetricsRecord> = parse_lines(first_two.as_bytes(), &path, "a record").unwrap();
        let eval = records[0].eval().unwrap();
        assert_eq!(eval.report.loss, old[0]["eval/loss"].as_f64().unwrap());
        assert_eq!(eval.report.accuracy, old[0]["eval/rewards_accuracy"].as_f64().unwrap());
        let MetricsRecord::Train(train) = records[1] else { panic!("{:?}", records[1]) };
        assert_eq!(train.step.lr, old[1]["lr"].as_f64().unwrap());
        assert_eq!(train.step.margin, old[1]["rewards/margin"].as_f64().unwrap());
        let renamed = serde_json::to_value(records[1]).unwrap();
        assert_eq!(renamed["rewards/accuracies"], old[1]["rewards/accuracy"]);
        assert_eq!(renamed["learning_rate"], old[1]["lr"]);
        assert!(renamed.get("lr").is_none() && renamed.get("rewards/margin").is_none());
    }
}
