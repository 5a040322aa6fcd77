//! The deadline of collectives that cannot be cancelled (MPI's, NCCL's): a
//! thread watches the operation in flight and ends the process, naming the
//! operation and how long it waited, when it outlives the deadline
//! (`train.collective_timeout`), or when a signal reached the process and
//! a collective has waited 30 s since, before the ranks agreed to stop (its
//! peers are gone: the launcher ended them). The launcher (`mpirun`, daa's own) then
//! ends the other ranks and names this one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::collective::SignalCheck;

/// How long a collective may wait once the process was signalled (and the
/// ranks have not agreed to stop): a rank whose peers are gone exits after
/// this instead of at the deadline; ranks merely out of step by seconds
/// (uneven micro-batches of a large model) are not cut short.
const SIGNALLED_GRACE: Duration = Duration::from_secs(30);

/// The operation in flight and when it started.
type InFlight = Arc<Mutex<Option<(&'static str, Instant)>>>;

/// The exit status of a rank the watchdog ended at the deadline.
pub(super) const TIMED_OUT_STATUS: i32 = 75;

/// A watched rank's handle on its watchdog thread.
#[derive(Debug)]
pub(super) struct Watchdog {
    in_flight: InFlight,
    signal_check: Arc<Mutex<Option<SignalCheck>>>,
    timeout: Duration,
}

impl Watchdog {
    /// Starts the thread watching rank `rank` of `world` (`what` names the
    /// transport in its message).
    pub fn start(what: &'static str, rank: usize, world: usize, timeout: Duration) -> std::io::Result<Self> {
        let in_flight: InFlight = Arc::default();
        let signal_check: Arc<Mutex<Option<SignalCheck>>> = Arc::default();
        let (watched, signalled) = (in_flight.clone(), signal_check.clone());
        std::thread::Builder::new()
            .name("daa-collective-watchdog".into())
            .spawn(move || watch(&watched, &signalled, what, rank, world, timeout))?;
        Ok(Self { in_flight, signal_check, timeout })
    }

    /// The deadline it watches.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Acts on the signals `other` acts on.
    pub fn inherit_signal_check(&self, other: &Watchdog) {
        let check = *other.signal_check.lock().unwrap_or_else(PoisonError::into_inner);
        *self.signal_check.lock().unwrap_or_else(PoisonError::into_inner) = check;
    }

    /// Ends the process (status `128 + signal`) when `check` reports a
    /// signal while a collective has waited 30 s.
    pub fn end_on_signal(&self, check: SignalCheck) {
        *self.signal_check.lock().unwrap_or_else(PoisonError::into_inner) = Some(check);
    }

    /// Runs `f` with the watchdog watching `operation`.
    pub fn watched<T>(&self, operation: &'static str, f: impl FnOnce() -> T) -> T {
        *self.in_flight.lock().unwrap_or_else(PoisonError::into_inner) = Some((operation, Instant::now()));
        let out = f();
        *self.in_flight.lock().unwrap_or_else(PoisonError::into_inner) = None;
        out
    }
}

/// Ends the process when a collective outlives `timeout`, or the grace
/// after a signal.
fn watch(
    in_flight: &InFlight,
    signal_check: &Mutex<Option<SignalCheck>>,
    what: &str,
    rank: usize,
    world: usize,
    timeout: Duration,
) {
    // When the watchdog first saw the signal: the grace counts from then.
    let mut signalled_at: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(100).min(timeout));
        let current = *in_flight.lock().unwrap_or_else(PoisonError::into_inner);
        let check = *signal_check.lock().unwrap_or_else(PoisonError::into_inner);
        let signal = check.and_then(|check| check());
        if signal.is_some() {
            signalled_at.get_or_insert_with(Instant::now);
        }
        if let (Some((operation, started)), Some(signal), Some(at)) = (current, signal, signalled_at)
            && started.elapsed().min(at.elapsed()) >= SIGNALLED_GRACE
        {
            eprintln!(
                "error: distributed training ({what}): {operation}: rank {rank} of {world} received signal {signal} \
                 and its peers have not answered for {:?}; stopping this rank",
                started.elapsed()
            );
            exit_now(128 + signal);
        }
        let late = current.filter(|(_, started)| started.elapsed() >= timeout);
        if let Some((operation, started)) = late {
            eprintln!(
                "error: distributed training ({what}): {operation}: rank {rank} of {world} waited {:?} for the other \
                 ranks (train.collective_timeout); stopping this rank",
                started.elapsed()
            );
            exit_now(TIMED_OUT_STATUS);
        }
    }
}

/// Ends the process at once, without exit handlers: a collective stuck in
/// MPI or in an NCCL kernel could make them hang (CUDA's own handlers wait
/// for the device).
fn exit_now(status: i32) -> ! {
    // SAFETY: _exit(2) ends the process; nothing of it runs after.
    unsafe { libc::_exit(status) }
}
