//! Output that appears whole or not at all: written to a temporary file in
//! the destination's folder, flushed and synced, then renamed over the
//! destination. A failure leaves the previous file (if any) untouched and no
//! temporary file behind.

use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::DaaError;

fn file_error(path: &Path, message: String) -> DaaError {
    DaaError::File { path: path.to_path_buf(), message }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes what `fill` produces to `path` atomically, or to standard output
/// when `path` is `None` (after `fill` has succeeded, so no partial output).
pub fn write_atomic<E: From<DaaError>>(
    path: Option<&Path>,
    fill: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<(), E> {
    let Some(path) = path else {
        let mut buffer = Vec::new();
        fill(&mut buffer)?;
        let stdout = std::io::stdout();
        let mut lock = stdout.lock();
        return lock
            .write_all(&buffer)
            .and_then(|()| lock.flush())
            .map_err(|e| E::from(file_error(Path::new("<stdout>"), format!("write failed: {e}"))));
    };
    let dir = parent_of(path);
    let temp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| E::from(file_error(path, format!("cannot create a temporary file in {}: {e}", dir.display()))))?;
    {
        let mut writer = BufWriter::new(temp.as_file());
        fill(&mut writer)?;
        writer.flush().map_err(|e| E::from(file_error(path, format!("write failed: {e}"))))?;
    }
    temp.as_file().sync_all().map_err(|e| E::from(file_error(path, format!("sync failed: {e}"))))?;
    temp.persist(path).map_err(|e| E::from(file_error(path, format!("cannot rename into place: {}", e.error))))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), DaaError> {
    write_atomic(Some(path), |w| w.write_all(bytes).map_err(|e| file_error(path, format!("write failed: {e}"))))
}

/// Fills a fresh temporary folder beside `dest` with `fill`, then renames it
/// to `dest` (which must not exist): readers see the whole folder or nothing.
pub fn write_dir_atomic<E: From<DaaError>>(dest: &Path, fill: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E> {
    let parent = parent_of(dest);
    std::fs::create_dir_all(parent).map_err(|e| E::from(file_error(parent, format!("cannot create folder: {e}"))))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp"))
        .tempdir_in(parent)
        .map_err(|e| E::from(file_error(parent, format!("cannot create a temporary folder: {e}"))))?;
    fill(temp.path())?;
    let temp = temp.keep();
    std::fs::rename(&temp, dest).map_err(|e| E::from(file_error(dest, format!("cannot rename into place: {e}"))))?;
    Ok(())
}
