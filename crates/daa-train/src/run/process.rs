//! This process's memory as Linux reports it (`/proc/self/status`): the
//! peak that `daa train`'s summary, the trainer benchmark and the memory
//! measurements print.

/// A memory field of `/proc/self/status` — `"VmRSS"` (resident now),
/// `"VmHWM"` (the peak resident set) — in MiB; `None` where the file or the
/// field is missing (not Linux).
pub fn memory_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: f64 = value.split_whitespace().next()?.parse().ok()?;
    Some(kib / 1024.0)
}
