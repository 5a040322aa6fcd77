//! One run per output folder: `run.lock` in the folder holds the process id
//! of the `daa train` writing it, from before anything is written until the
//! run ends (the lock is removed when [`RunLock`] is dropped, on success
//! and on error alike).
//!
//! A second run into the same folder is refused, naming the holder's pid. A
//! lock left by a run that was killed (its pid no longer names a live
//! process, or the file is unreadable: a crash between creating and writing
//! it) is taken over with a message. The file is created with `O_EXCL`
//! (`create_new`), so two runs that find the same stale lock cannot both
//! take it. Liveness is read from `/proc/<pid>` (Linux); where `/proc` is
//! missing every lock counts as live and the message says which file to
//! delete.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file's name inside a run folder.
pub const LOCK_FILE: &str = "run.lock";

/// Holds a run folder for this process until dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// What a found lock says about its holder.
enum Holder {
    /// A live process (its pid).
    Live(u32),
    /// A pid that names no process, or a file without one: takeable.
    Stale(String),
}

/// Whether `/proc/<pid>` names a process that has not ended: present and
/// not a zombie (an ended rank whose parent, `mpirun`, ended first may stay
/// a zombie where nothing reaps orphans, as in many containers).
fn running(proc_pid: &Path) -> bool {
    match std::fs::read_to_string(proc_pid.join("stat")) {
        // `pid (comm) state …`: the state follows the last ')'.
        Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => proc_pid.exists(),
    }
}

fn holder(path: &Path) -> Holder {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Holder::Stale(format!("an unreadable lock ({:?})", text.trim()));
    };
    let proc_root = Path::new("/proc");
    if !proc_root.exists() || pid == std::process::id() || running(&proc_root.join(pid.to_string())) {
        Holder::Live(pid)
    } else {
        Holder::Stale(format!("the lock of pid {pid}, which is no longer running"))
    }
}

impl RunLock {
    /// Takes `run_dir`'s lock (the folder must exist); `note` hears about a
    /// stale lock taken over. The error names the holder's pid and the file.
    pub fn acquire(run_dir: &Path, note: &mut dyn FnMut(&str)) -> Result<Self> {
        let path = run_dir.join(LOCK_FILE);
        // Twice at most: a stale lock is removed once, then created anew.
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    writeln!(file, "{}", std::process::id())
                        .and_then(|()| file.sync_all())
                        .with_context(|| format!("{}: cannot write the run lock", path.display()))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => match holder(&path) {
                    Holder::Live(pid) => bail!(
                        "{}: another daa train (pid {pid}) is writing this run folder; wait for it to end or \
                         choose another --out (if no such run is alive, delete {})",
                        run_dir.display(),
                        path.display()
                    ),
                    Holder::Stale(what) => {
                        note(&format!("{}: taking over {what}", path.display()));
                        match std::fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::NotFound => {}
                            Err(e) => {
                                return Err(e)
                                    .with_context(|| format!("{}: cannot remove the stale lock", path.display()));
                            }
                        }
                    }
                },
                Err(e) => return Err(e).with_context(|| format!("{}: cannot create the run lock", path.display())),
            }
        }
        bail!("{}: another run took the lock while this one was taking over a stale one", path.display())
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_folder_is_refused_and_a_stale_lock_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut notes = Vec::new();
        let lock = RunLock::acquire(dir.path(), &mut |n| notes.push(n.to_string())).unwrap();
        let written = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        // A second run into the same folder: refused, naming the holder.
        let err = RunLock::acquire(dir.path(), &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains(&format!("another daa train (pid {})", std::process::id())), "{err}");
        drop(lock);
        assert!(!dir.path().join(LOCK_FILE).exists(), "released when dropped");

        if Path::new("/proc").exists() {
            // A live process that is not this one holds it.
            let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
            std::fs::write(dir.path().join(LOCK_FILE), format!("{}\n", child.id())).unwrap();
            let err = RunLock::acquire(dir.path(), &mut |_| {}).unwrap_err().to_string();
            assert!(err.contains(&format!("(pid {})", child.id())) && err.contains("run.lock"), "{err}");
            child.kill().unwrap();
            child.wait().unwrap();
            // Its process gone, the lock is stale: taken over with a note.
            let lock = RunLock::acquire(dir.path(), &mut |n| notes.push(n.to_string())).unwrap();
            assert!(notes.last().unwrap().contains(&format!("pid {}, which is no longer running", child.id())));
            drop(lock);
        }
        // A lock file without a pid (a crash while writing it) is stale too.
        std::fs::write(dir.path().join(LOCK_FILE), "").unwrap();
        let _lock = RunLock::acquire(dir.path(), &mut |n| notes.push(n.to_string())).unwrap();
        assert!(notes.last().unwrap().contains("taking over an unreadable lock"), "{notes:?}");
    }
}
