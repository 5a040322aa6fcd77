//! `metrics.jsonl`: one [`MetricsRecord`] per line, `"type": "train"` every
//! step and `"type": "eval"` at every evaluation, appended and flushed as
//! they happen.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use daa_core::io::write_bytes_atomic;

use crate::records::MetricsRecord;

/// The metrics file of a run.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

/// Reads every record of a metrics file; a line that is not a record is an
/// error naming the file and the line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut records = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: line {}: cannot read", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .with_context(|| format!("{}: line {}: not a daa metrics record", path.display(), i + 1))?;
        records.push(record);
    }
    Ok(records)
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl`. A fresh run starts it empty; a resumed
    /// run keeps the records up to `resume_step` and drops later ones (an
    /// interrupted run may have written past its last checkpoint).
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let kept: Vec<MetricsRecord> = match resume_step {
            Some(step) if path.exists() => read_metrics(&path)?.into_iter().filter(|r| r.step() <= step).collect(),
            _ => Vec::new(),
        };
        let mut text = String::new();
        for record in &kept {
            text.push_str(&serde_json::to_string(record)?);
            text.push('\n');
        }
        write_bytes_atomic(&path, text.as_bytes())?;
        let file =
            OpenOptions::new().append(true).open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(Self { path, file })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &MetricsRecord) -> Result<()> {
        let line = serde_json::to_string(record)?;
        writeln!(self.file, "{line}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("{}: write failed", self.path.display()))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
