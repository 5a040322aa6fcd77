//! TensorBoard event files beside `metrics.jsonl` (`train.tensorboard`,
//! on by default): `<run>/tensorboard/events.out.tfevents.<time>.<host>.<pid>.daa`,
//! one file per start of the run, read by TensorBoard (`tensorboard
//! --logdir <run>/tensorboard`) and by anything that imports its files
//! (W&B's `sync_tensorboard`).
//!
//! Every record of `metrics.jsonl` becomes one event at its step: each of
//! its numeric fields a scalar, and each monitor event (a turning point, an
//! early stop) a text under the event's name (`eval/turning_point`). The
//! scalars' tags are those Hugging Face's `Trainer` gives TRL's metrics in
//! TensorBoard (its `rewrite_logs`), so runs of both compare in one
//! dashboard: a training record's field `f` is `train/f`
//! (`train/rewards/chosen`, `train/loss`), an evaluation's `eval_f` is
//! `eval/f` (`eval/loss`); names already under `train/` or `eval/` stay
//! (`eval/topk_entropy`).
//! Each file opens with a `SessionLog START`, at step 0 or, for a resumed
//! run, at the first step it takes again: TensorBoard's readers take every
//! START after the first as a restart and drop what the interrupted run had
//! logged at that step and after, as `metrics.jsonl` does.

mod proto;
mod tfrecord;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::records::MetricsRecord;
use proto::{event, summary::Summary};

/// A run's TensorBoard event file, open for appending.
#[derive(Debug)]
pub struct TensorBoardLog {
    path: PathBuf,
    file: File,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name (as TensorFlow names event files), or `localhost`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty() && !name.contains(['/', '\\']))
        .unwrap_or_else(|| "localhost".to_string())
}

/// The largest `<time>` of the event files in `dir`: readers take a
/// folder's files in name order, so a new file's name must sort last (its
/// time has 10 digits, as TensorFlow's, until the year 2286).
fn latest_file_seconds(dir: &Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_prefix("events.out.tfevents.")?.split('.').next()?.parse().ok())
        .max()
}

impl TensorBoardLog {
    /// Starts a new event file in `run_dir/tensorboard/` (named to sort
    /// after the files there), opening with a `SessionLog START` at step 0,
    /// or at `resume_step + 1` for a run resumed after `resume_step`.
    pub fn create(run_dir: &Path, resume_step: Option<u64>) -> Result<Self> {
        let dir = run_dir.join("tensorboard");
        std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
        let wall_time = now();
        let seconds = (wall_time as u64).max(latest_file_seconds(&dir).map_or(0, |s| s + 1));
        let name = format!("events.out.tfevents.{seconds}.{}.{}.daa", host_name(), std::process::id());
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        let mut log = Self { path, file };
        // Every file opens a session: readers take the first START as the
        // run's beginning and each later one as a restart.
        let start = resume_step.map_or(0, |step| step + 1);
        let mut first = tfrecord::frame(&event::file_version(wall_time).into_bytes());
        first.extend(tfrecord::frame(&event::session_start(wall_time, start).into_bytes()));
        log.append(&first)?;
        Ok(log)
    }

    /// Appends `record` as one event (one write).
    pub fn write(&mut self, record: &MetricsRecord) -> Result<()> {
        let summary = summary_of(record)?;
        let event = event::summary(now(), record.step(), summary.into_message());
        self.append(&tfrecord::frame(&event.into_bytes()))
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        super::metrics::append(&mut self.file, &self.path, bytes)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The scalars and texts of one record.
fn summary_of(record: &MetricsRecord) -> Result<Summary> {
    let Value::Object(fields) = serde_json::to_value(record)? else {
        anyhow::bail!("a metrics record is not a JSON object");
    };
    let kind = fields.get("type").and_then(Value::as_str).unwrap_or("train");
    let mut summary = Summary::default();
    if let Some(name) = fields.get("event").and_then(Value::as_str) {
        return Ok(summary.text(name, &event_text(&fields)));
    }
    for (key, value) in &fields {
        if key == "step" {
            continue;
        }
        if let Some(v) = value.as_f64() {
            summary = summary.scalar(&scalar_tag(kind, key), v as f32);
        }
    }
    Ok(summary)
}

/// The TensorBoard tag of field `key` of a record of type `kind` (`train`
/// or `eval`), as Hugging Face's `rewrite_logs` names TRL's.
pub fn scalar_tag(kind: &str, key: &str) -> String {
    if let Some(rest) = key.strip_prefix("eval_") {
        return format!("eval/{rest}");
    }
    if key.starts_with(&format!("{kind}/")) { key.to_string() } else { format!("{kind}/{key}") }
}

/// An event's fields as text: `key: value` lines (markdown, as TensorBoard's
/// text plugin renders it).
fn event_text(fields: &serde_json::Map<String, Value>) -> String {
    let lines: Vec<String> = fields
        .iter()
        .filter(|(key, _)| !matches!(key.as_str(), "type" | "event" | "step"))
        .map(|(key, value)| match value {
            Value::String(s) => format!("- {key}: {s}"),
            other => format!("- {key}: {other}"),
        })
        .collect();
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{EventRecord, MonitorEvent};
    use daa_core::monitor::Indicator;

    #[test]
    fn tags_are_what_hugging_face_gives_trl_metrics() {
        assert_eq!(scalar_tag("train", "loss"), "train/loss");
        assert_eq!(scalar_tag("train", "rewards/chosen"), "train/rewards/chosen");
        assert_eq!(scalar_tag("train", "train/topk_entropy"), "train/topk_entropy");
        assert_eq!(scalar_tag("eval", "eval_loss"), "eval/loss");
        assert_eq!(scalar_tag("eval", "eval_rewards/margins"), "eval/rewards/margins");
        assert_eq!(scalar_tag("eval", "eval/topk_entropy"), "eval/topk_entropy");
    }

    #[test]
    fn an_event_record_becomes_a_text_naming_its_fields() {
        let record = MetricsRecord::Event(EventRecord {
            step: 40,
            event: MonitorEvent::TurningPoint {
                indicator: Indicator::TopkEntropy,
                peak_step: 30,
                peak_value: 2.5,
                value: 2.25,
            },
        });
        let Value::Object(fields) = serde_json::to_value(record).unwrap() else { panic!() };
        assert_eq!(fields["event"], "eval/turning_point");
        assert_eq!(event_text(&fields), "- indicator: topk_entropy\n- peak_step: 30\n- peak_value: 2.5\n- value: 2.25");
    }

    #[test]
    fn every_write_is_one_framed_event_after_the_file_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = TensorBoardLog::create(dir.path(), Some(7)).unwrap();
        let first = std::fs::read(log.path()).unwrap();
        let record =
            MetricsRecord::Event(EventRecord { step: 9, event: MonitorEvent::EarlyStop { best_indicator_step: None } });
        log.write(&record).unwrap();
        let all = std::fs::read(log.path()).unwrap();
        assert_eq!(&all[..first.len()], &first[..]);
        // Two records before (file version, session start), one after.
        let mut at = 0;
        let mut records = 0;
        while at < all.len() {
            let n = u64::from_le_bytes(all[at..at + 8].try_into().unwrap()) as usize;
            let data = &all[at + 12..at + 12 + n];
            assert_eq!(
                u32::from_le_bytes(all[at + 12 + n..at + 16 + n].try_into().unwrap()),
                tfrecord::masked_crc(data)
            );
            at += 16 + n;
            records += 1;
        }
        assert_eq!((records, at), (3, all.len()));
        assert!(log.path().file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
    }

    #[test]
    fn a_new_file_sorts_after_the_ones_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("tensorboard");
        std::fs::create_dir_all(&events).unwrap();
        // A file from the future (a clock set back since): the next sorts after it.
        std::fs::write(events.join("events.out.tfevents.1999999999.other.1.daa"), b"").unwrap();
        let log = TensorBoardLog::create(dir.path(), None).unwrap();
        let name = log.path().file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with("events.out.tfevents.2000000000."), "{name}");
        let second = TensorBoardLog::create(dir.path(), Some(3)).unwrap();
        assert!(second.path().file_name().unwrap().to_str().unwrap() > name.as_str());
    }
}
