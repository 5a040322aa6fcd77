//! Parquet rows as JSON objects (parquet's record API): strings, numbers,
//! lists and structs as JSON has them, so a list of `{role, content}`
//! messages reads like JSON Lines.
//!
//! Reading stops at the first row that cannot be decoded: parquet 60.1's
//! row iterator then returns the same error forever (found by fuzzing with
//! `daa-fuzz`'s `rows_parquet`: daa hung collecting errors). And the file is
//! read through a byte budget, against the malformed page headers on which
//! parquet readers have looped or reserved gigabytes (apache/arrow-rs
//! tracks this class of bug): a sound reader reads each byte of the file
//! about once, so reading [`READ_BUDGET_FACTOR`] times the file's size means
//! the file is damaged. Before parquet reads the footer, its schema is
//! checked (see [`super::parquet_footer`]).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::{ChunkReader, FileReader, Length, SerializedFileReader};

use super::library_panics::catching_panics;

use super::rows::RawRow;

/// How many times its own size the reader may read of a file (plus 1 MiB).
pub const READ_BUDGET_FACTOR: u64 = 16;

const BUDGET_MESSAGE: &str = "the Parquet reader read far more than the file holds (the file is damaged)";

/// A file whose reads draw on a shared budget of bytes.
struct BudgetedFile {
    file: File,
    len: u64,
    left: Arc<AtomicU64>,
}

fn spend(left: &AtomicU64, bytes: u64) -> std::io::Result<()> {
    left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(bytes))
        .map(|_| ())
        .map_err(|_| std::io::Error::other(BUDGET_MESSAGE))
}

impl Length for BudgetedFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for BudgetedFile {
    type T = BudgetedRead;

    fn get_read(&self, start: u64) -> parquet::errors::Result<BudgetedRead> {
        Ok(BudgetedRead { inner: self.file.get_read(start)?, left: self.left.clone() })
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        spend(&self.left, length as u64)?;
        self.file.get_bytes(start, length)
    }
}

/// A reader of a [`BudgetedFile`].
struct BudgetedRead {
    inner: BufReader<File>,
    left: Arc<AtomicU64>,
}

impl Read for BudgetedRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // A read at the end of the file returns 0 bytes; parquet 60.1 can
        // retry it without end (a page header's thrift skip: 52 s for a
        // 3 KB file, found by libFuzzer), so every call costs at least one.
        let n = self.inner.read(buf)?;
        spend(&self.left, (n as u64).max(1))?;
        Ok(n)
    }
}

/// Every row of the Parquet file `path`. A row that cannot be decoded is an
/// error naming it: the file is damaged from there on.
pub fn read_parquet(path: &Path) -> Result<Vec<RawRow>> {
    let budget = |len: u64| len.saturating_mul(READ_BUDGET_FACTOR).saturating_add(1 << 20);
    catching_panics("parquet", || read_with_budget(path, budget))
        .map_err(|e| anyhow!("{}: {e}", path.display()))
        .and_then(|rows| rows)
}

/// Every column chunk's byte range lies in the file (parquet panics on a
/// negative one when it reads the chunk).
fn check_column_ranges(metadata: &ParquetMetaData, len: u64, path: &Path) -> Result<()> {
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for column in group.columns() {
            let start = column.dictionary_page_offset().unwrap_or(column.data_page_offset());
            let size = column.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(size).ok())
                .is_some_and(|(start, size)| start.checked_add(size).is_some_and(|end| end <= len));
            if !inside {
                bail!(
                    "{}: row group {g}, column `{}`: the metadata places its {size} bytes at offset {start}, \
                     outside the file's {len} bytes (the file is damaged)",
                    path.display(),
                    column.column_path().string()
                );
            }
        }
    }
    Ok(())
}

fn read_with_budget(path: &Path, budget: impl FnOnce(u64) -> u64) -> Result<Vec<RawRow>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let len = file.metadata().with_context(|| format!("{}: cannot read", path.display()))?.len();
    if let Some(defect) = super::parquet_footer::schema_defect(&file, len) {
        bail!("{}: {defect}", path.display());
    }
    let budget = budget(len);
    let file = BudgetedFile { file, len, left: Arc::new(AtomicU64::new(budget)) };
    let reader = SerializedFileReader::new(file).with_context(|| format!("{}: not a Parquet file", path.display()))?;
    check_column_ranges(reader.metadata(), len, path)?;
    let rows = reader.get_row_iter(None).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        match row {
            Ok(row) => out.push(RawRow { row: i + 1, value: Ok(row.to_json_value()) }),
            Err(e) => bail!("{}: row {}: cannot decode the Parquet row ({e})", path.display(), i + 1),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_past_its_budget_stops_with_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rows.parquet");
        let rows = crate::tiny_run::arithmetic_rows(4, 1);
        std::fs::write(&path, crate::tiny_run::preference_parquet(&rows).unwrap()).unwrap();
        assert_eq!(read_parquet(&path).unwrap().len(), 4);
        // Half the file: a sound reader reads each byte about once.
        let error = format!("{:#}", read_with_budget(&path, |len| len / 2).unwrap_err());
        assert!(error.starts_with(&path.display().to_string()), "{error}");
        assert!(error.contains(BUDGET_MESSAGE), "{error}");
    }
}
