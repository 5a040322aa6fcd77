//! Output that appears whole or not at all: written to a temporary file in
//! the destination's folder, flushed, then renamed over the destination.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// Writes what `fill` produces to `path` atomically, or to standard output
/// when `path` is `None` (after `fill` has succeeded, so no partial output).
pub fn write_output(path: Option<&Path>, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    match path {
        None => {
            let mut buffer = Vec::new();
            fill(&mut buffer)?;
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            lock.write_all(&buffer).context("writing standard output")?;
            lock.flush().context("writing standard output")
        }
        Some(path) => {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            let temp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("{}: cannot create a temporary file in {}", path.display(), dir.display()))?;
            {
                let mut writer = BufWriter::new(temp.as_file());
                fill(&mut writer)?;
                writer.flush().with_context(|| format!("{}: write failed", path.display()))?;
            }
            temp.as_file().sync_all().with_context(|| format!("{}: sync failed", path.display()))?;
            temp.persist(path)
                .map_err(|e| e.error)
                .with_context(|| format!("{}: cannot rename into place", path.display()))?;
            Ok(())
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder,
/// then rename).
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_output(Some(path), |w| w.write_all(bytes).with_context(|| format!("{}: write failed", path.display())))
}

/// Fills a fresh temporary folder beside `dest` with `fill`, then renames it
/// to `dest` (which must not exist): readers see the whole folder or nothing.
pub fn write_dir(dest: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).with_context(|| format!("{}: cannot create folder", parent.display()))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp"))
        .tempdir_in(parent)
        .with_context(|| format!("{}: cannot create a temporary folder", parent.display()))?;
    fill(temp.path())?;
    let temp = temp.keep();
    std::fs::rename(&temp, dest).with_context(|| format!("{}: cannot rename into place", dest.display()))?;
    Ok(())
}
