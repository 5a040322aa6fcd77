//! Where rows come from: one `.jsonl` / `.parquet` file, or a folder of
//! shards — a Hugging Face dataset snapshot's `data/` layout
//! (`data/train_prefs-00000-of-00002.parquet`, …) — with a split picked by
//! name.
//!
//! A shard's split is, in order: the `{split}` of a file named
//! `{split}-NNNNN-of-NNNNN.ext` (the Hub's shard names); the first folder
//! below the root (`train/part-0.jsonl`); a stem that is a common split name
//! (`train.jsonl`, `test.parquet`); else none. Shards are read in path
//! order. Rows are numbered across the shards (the first row of the second
//! shard follows the last of the first), so a row number identifies a row
//! of the whole source; messages name the shard and its own row.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use super::chat::TextEncoder;
use super::encode::{EncodeOptions, EncodedSet, encode_rows};
use super::rows::{RawRow, read_rows};

/// File extensions read as data.
const DATA_EXTENSIONS: [&str; 4] = ["parquet", "jsonl", "json", "ndjson"];

/// Stems read as a split's name when a file has no shard suffix.
const SPLIT_STEMS: [&str; 8] = ["train", "training", "test", "testing", "validation", "valid", "dev", "eval"];

/// The files of a data source, in reading order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    /// What the user gave (`data.path`), for messages.
    pub label: String,
    /// The split read, when the source is a folder of splits.
    pub split: Option<String>,
    /// The files, in order.
    pub files: Vec<PathBuf>,
}

impl DataSource {
    /// One file.
    pub fn file(path: &Path) -> Self {
        Self { label: path.display().to_string(), split: None, files: vec![path.to_path_buf()] }
    }

    /// `path` (a file or a folder of shards, already resolved), the shards of
    /// `split` in a folder. A folder with a `data/` folder is read from
    /// `data/` (a dataset snapshot). A folder holding several splits needs
    /// `split`; a file takes none.
    pub fn open(path: &Path, split: Option<&str>, label: &str) -> Result<Self> {
        if !path.is_dir() {
            if let Some(split) = split {
                bail!("{label}: a split (`{split}`) picks shards in a folder, and {} is one file", path.display());
            }
            return Ok(Self { label: label.to_string(), ..Self::file(path) });
        }
        let root = if path.join("data").is_dir() { path.join("data") } else { path.to_path_buf() };
        let mut shards = Vec::new();
        collect_shards(&root, 0, &mut shards)?;
        if shards.is_empty() {
            bail!("{label}: no .parquet or .jsonl files in {}", root.display());
        }
        shards.sort();
        let split_of = |file: &Path| shard_split(file.strip_prefix(&root).unwrap_or(file));
        let mut splits: Vec<Option<String>> = shards.iter().map(|f| split_of(f)).collect();
        splits.sort();
        splits.dedup();
        let names = || {
            splits
                .iter()
                .map(|s| s.clone().unwrap_or_else(|| "(files without a split name)".into()))
                .collect::<Vec<_>>()
        };
        let files: Vec<PathBuf> = match split {
            Some(wanted) => shards.iter().filter(|f| split_of(f).as_deref() == Some(wanted)).cloned().collect(),
            None if splits.len() == 1 => shards,
            None => bail!(
                "{label}: {} holds the splits {}: set `data.split` (and `data.eval_split` for held-out pairs)",
                root.display(),
                names().join(", ")
            ),
        };
        if files.is_empty() {
            bail!(
                "{label}: {} has no split `{}`; its splits: {}",
                root.display(),
                split.unwrap_or_default(),
                names().join(", ")
            );
        }
        Ok(Self { label: label.to_string(), split: split.map(str::to_string), files })
    }

    /// Every row of every file, numbered across the files.
    pub fn read_rows(&self) -> Result<Vec<RawRow>> {
        let mut all = Vec::new();
        self.for_each_file(|_, offset, rows| {
            all.extend(rows.into_iter().map(|r| RawRow { row: r.row + offset, ..r }));
            Ok(())
        })?;
        Ok(all)
    }

    /// Reads and encodes every file (messages name the file and its own
    /// row), then numbers the pairs' rows across the files as
    /// [`Self::read_rows`] does. Also returns where each file's rows start.
    pub fn encode(&self, encoder: &TextEncoder, options: &EncodeOptions) -> Result<(EncodedSet, RowIndex)> {
        let mut set = EncodedSet::default();
        let mut index = RowIndex { starts: Vec::new() };
        self.for_each_file(|file, offset, rows| {
            let part = encode_rows(&rows, encoder, options, &file.display().to_string())?;
            index.starts.push((file.to_path_buf(), offset));
            set.pairs.extend(part.pairs.into_iter().map(|mut p| {
                p.row += offset;
                p
            }));
            set.rows += part.rows;
            set.truncated += part.truncated;
            for (reason, n) in part.skipped {
                *set.skipped.entry(reason).or_default() += n;
            }
            Ok(())
        })?;
        Ok((set, index))
    }

    /// Reads each file in order and hands `visit` the file, the row number
    /// its first row follows (the last row number of the files before it,
    /// summed) and its rows in their own numbering.
    fn for_each_file(&self, mut visit: impl FnMut(&Path, usize, Vec<RawRow>) -> Result<()>) -> Result<()> {
        let mut offset = 0;
        for file in &self.files {
            let rows = read_rows(file)?;
            let last = rows.iter().map(|r| r.row).max().unwrap_or(0);
            visit(file, offset, rows)?;
            offset += last;
        }
        Ok(())
    }

    /// How a message names the source: the file, or the folder and split.
    pub fn describe(&self) -> String {
        match (self.files.as_slice(), &self.split) {
            ([one], None) => one.display().to_string(),
            (files, Some(split)) => format!("{} (split {split}, {} files)", self.label, files.len()),
            (files, None) => format!("{} ({} files)", self.label, files.len()),
        }
    }
}

/// Where each file's rows start in a source's numbering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowIndex {
    starts: Vec<(PathBuf, usize)>,
}

impl RowIndex {
    /// The file holding row `row` of the whole source and its own row number.
    fn find(&self, row: usize) -> Option<(&Path, usize)> {
        self.starts.iter().rev().find(|(_, start)| *start < row).map(|(file, start)| (file.as_path(), row - start))
    }

    /// `file: row n` for a row number of the whole source.
    pub fn locate(&self, row: usize) -> String {
        match self.find(row) {
            Some((file, own)) => format!("{}: row {own}", file.display()),
            None => format!("row {row}"),
        }
    }

    /// The rows `rows` named by file: `rows 3, 9 of FILE`, one group per
    /// file (`; ` between groups).
    pub fn describe_rows(&self, rows: &[usize]) -> String {
        let mut groups: Vec<(&Path, Vec<String>)> = Vec::new();
        for (file, own) in rows.iter().filter_map(|&row| self.find(row)) {
            match groups.iter_mut().find(|(f, _)| *f == file) {
                Some((_, list)) => list.push(own.to_string()),
                None => groups.push((file, vec![own.to_string()])),
            }
        }
        groups
            .iter()
            .map(|(file, list)| format!("rows {} of {}", list.join(", "), file.display()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Data files under `dir` (hidden entries skipped), at most 4 folders deep.
fn collect_shards(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("{}: cannot list ({e})", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| anyhow::anyhow!("{}: cannot list ({e})", dir.display()))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if depth < 4 {
                collect_shards(&path, depth + 1, out)?;
            }
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| DATA_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The split of a shard at `relative` (to the source's root): module documentation.
fn shard_split(relative: &Path) -> Option<String> {
    let stem = relative.file_stem()?.to_str()?;
    let mut parts = stem.rsplitn(4, '-');
    if let (Some(count), Some("of"), Some(index), Some(split)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
        && [count, index].iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && !split.is_empty()
    {
        return Some(split.to_string());
    }
    let mut components = relative.components();
    let first = components.next()?;
    if components.next().is_some() {
        return Some(first.as_os_str().to_string_lossy().into_owned());
    }
    SPLIT_STEMS.contains(&stem).then(|| stem.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::shard_split;

    #[test]
    fn a_shard_s_split_comes_from_its_name_or_folder() {
        let split = |p: &str| shard_split(Path::new(p));
        assert_eq!(split("train_prefs-00000-of-00002.parquet").as_deref(), Some("train_prefs"));
        assert_eq!(split("test-gen-00001-of-00003.parquet").as_deref(), Some("test-gen"));
        assert_eq!(split("train/part-0.jsonl").as_deref(), Some("train"));
        assert_eq!(split("test.jsonl").as_deref(), Some("test"));
        assert_eq!(split("part-0.jsonl"), None);
        assert_eq!(split("pairs-x-of-00002.parquet"), None);
    }
}
