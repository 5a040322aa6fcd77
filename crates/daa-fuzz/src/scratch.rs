//! A folder per process where targets lay out their files (in memory-backed
//! `/dev/shm` when there is one: a fuzzer writes them thousands of times a
//! second).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();

fn root() -> &'static Path {
    ROOT.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let made = if shm.is_dir() {
            tempfile::Builder::new().prefix("daa-fuzz-").tempdir_in(shm)
        } else {
            Err(std::io::Error::other("no /dev/shm"))
        };
        made.or_else(|_| tempfile::Builder::new().prefix("daa-fuzz-").tempdir())
            .expect("a temporary folder for the fuzz targets")
    })
    .path()
}

/// The folder `name` under the scratch root, emptied (one per thread: tests
/// run targets on several threads at once).
pub fn fresh_dir(name: &str) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let dir = root().join(thread).join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("emptying a scratch folder");
    }
    std::fs::create_dir_all(&dir).expect("creating a scratch folder");
    dir
}

/// Writes `bytes` to `dir/name` (`None`: makes sure there is no such file).
pub fn put(dir: &Path, name: &str, bytes: Option<&[u8]>) -> PathBuf {
    let path = dir.join(name);
    match bytes {
        Some(bytes) => std::fs::write(&path, bytes).expect("writing a scratch file"),
        None => {
            let _ = std::fs::remove_file(&path);
        }
    }
    path
}
