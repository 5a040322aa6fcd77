//! `metrics.jsonl`: one JSON object per line, `"type": "train"` every step and
//! `"type": "eval"` at every evaluation, appended and flushed as they happen.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::atomic_write::write_bytes;

/// The metrics file of a run.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

/// Reads every record of a metrics file.
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    BufReader::new(file)
        .lines()
        .enumerate()
        .filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .map(|(i, line)| {
            let line = line.with_context(|| format!("{}: line {}: cannot read", path.display(), i + 1))?;
            serde_json::from_str(&line).with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))
        })
        .collect()
}

impl MetricsLog {
    /// Opens `run_dir/metrics.jsonl`. A fresh run starts it empty; a resumed
    /// run keeps the records up to `resume_step` and drops later ones (an
    /// interrupted run may have written past its last checkpoint).
    pub fn open(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let path = run_dir.join("metrics.jsonl");
        let kept: Vec<Value> = match resume_step {
            Some(step) if path.exists() => read_metrics(&path)?
                .into_iter()
                .filter(|r| r.get("step").and_then(Value::as_u64).is_some_and(|s| s <= step))
                .collect(),
            _ => Vec::new(),
        };
        let text: String = kept.iter().map(|r| format!("{r}\n")).collect();
        write_bytes(&path, text.as_bytes())?;
        let file =
            OpenOptions::new().append(true).open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(Self { path, file })
    }

    /// Appends one record.
    pub fn write(&mut self, record: &Value) -> Result<()> {
        writeln!(self.file, "{record}")
            .and_then(|()| self.file.flush())
            .with_context(|| format!("{}: write failed", self.path.display()))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
