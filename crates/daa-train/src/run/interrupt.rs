//! Stopping a run cleanly on SIGTERM or SIGINT (a scheduler's preemption
//! warning, Ctrl-C).
//!
//! [`install`] (the `daa` command calls it; a library user who handles
//! signals alone does not) registers, for both signals, two actions: the
//! first signal records itself and arms the second; the run loop reads the
//! record after every optimizer step, finishes that step (its evaluation and
//! checkpoint if due), writes a complete checkpoint if none was due, and
//! returns [`Interrupted`], which `daa` turns into exit status `128 + signal`
//! (130 for SIGINT, 143 for SIGTERM, the shell's convention). A second
//! signal exits at once with the same status: checkpoints are written
//! through a temporary folder renamed into place, so none is left half
//! written under a checkpoint's name, and the run lock left behind is taken
//! over by the next run (its pid is gone).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::Result;

/// The signal that asked the run to stop (0: none).
static REQUESTED: AtomicUsize = AtomicUsize::new(0);
/// Whether a first signal arrived (a second one exits at once).
static ARMED: AtomicBool = AtomicBool::new(false);
/// Whether the ranks of the run agreed to stop (they now checkpoint
/// together, however long their collectives wait).
static AGREED: AtomicBool = AtomicBool::new(false);

/// SIGINT's number (POSIX).
pub const SIGINT: i32 = 2;
/// SIGTERM's number (POSIX).
pub const SIGTERM: i32 = 15;

/// A signal's name.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The exit status for a run stopped by `signal`: `128 + signal`.
pub fn exit_status(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(1)
}

/// Registers the handlers of SIGTERM and SIGINT (module documentation).
#[cfg(unix)]
pub fn install() -> Result<()> {
    use anyhow::Context;
    use signal_hook::flag;
    for signal in [SIGTERM, SIGINT] {
        // The shutdown first: on the first signal ARMED is still false.
        flag::register_conditional_shutdown(signal, i32::from(exit_status(signal)), &ARMED)
            .and_then(|_| flag::register_usize(signal, &REQUESTED, signal as usize))
            .and_then(|_| flag::register(signal, &ARMED))
            .with_context(|| format!("installing the {} handler", signal_name(signal)))?;
    }
    Ok(())
}

/// Without POSIX signals there is nothing to install.
#[cfg(not(unix))]
pub fn install() -> Result<()> {
    Ok(())
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        signal => i32::try_from(signal).ok(),
    }
}

/// Records that every rank of the run knows of the signal and stops with
/// it: from then on [`unanswered`] reports nothing.
pub fn mark_agreed() {
    AGREED.store(true, Ordering::SeqCst);
}

/// The signal that asked this process to stop while its ranks have not yet
/// agreed to stop together: what a collective's watchdog acts on when the
/// peers do not answer (their processes ended). `None` once they agreed.
pub fn unanswered() -> Option<i32> {
    if AGREED.load(Ordering::SeqCst) { None } else { requested() }
}

/// A run stopped by a signal after a complete step and checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interrupted {
    /// The signal's number.
    pub signal: i32,
    /// Optimizer steps completed and saved.
    pub step: u64,
    /// The run folder (`--resume` takes it).
    pub run_dir: PathBuf,
    /// The checkpoint written.
    pub checkpoint: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped by {} after step {}: complete checkpoint {}; continue with the same command and --resume {}",
            signal_name(self.signal),
            self.step,
            self.checkpoint.display(),
            self.run_dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_the_message() {
        assert_eq!((exit_status(SIGINT), exit_status(SIGTERM)), (130, 143));
        let e = Interrupted {
            signal: SIGTERM,
            step: 7,
            run_dir: PathBuf::from("runs/x"),
            checkpoint: PathBuf::from("runs/x/checkpoint-000007"),
        };
        assert_eq!(
            e.to_string(),
            "stopped by SIGTERM after step 7: complete checkpoint runs/x/checkpoint-000007; continue with the same \
             command and --resume runs/x"
        );
    }
}
