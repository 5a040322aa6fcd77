//! A randomised mutation engine for the stable toolchain (what CI runs; the
//! coverage-guided runs use libFuzzer through `cargo fuzz`): inputs are the
//! corpus with one to eight mutations each (bit flips, random and
//! interesting bytes, tokens of the formats, deleted, duplicated and
//! spliced ranges). It has no coverage feedback, so it finds what is near
//! the corpus; it keeps nothing but failures.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Target;
use crate::split::SEPARATOR;
use crate::targets::Verdict;

/// Tokens of the fuzzed formats that random bytes rarely spell.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e308",
    b"-1e308",
    b"NaN",
    b"18446744073709551615",
    b"4294967296",
    b"\"F32\"",
    b"\"BF16\"",
    b"\"dtype\"",
    b"\"shape\"",
    b"\"data_offsets\"",
    b"\"__metadata__\"",
    b"{%",
    b"%}",
    b"{{",
    b"}}",
    b"for ",
    b"endfor",
    b"macro",
    b"set ",
    b"namespace(",
    b"range(",
    b"loop.",
    b"=",
    b"\n",
    b"[train]",
    b"[loss]",
    b"\"type\":\"eval\"",
    b"\"step\":",
    b"\"role\"",
    b"\"content\"",
    b"PAR1",
    SEPARATOR,
];

/// Interesting byte values.
const BYTES: &[u8] = &[0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'\\', b'\n'];

/// A small xorshift generator (the engine needs speed, not quality).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded (0 is replaced).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// `input` changed by one random mutation (`others` for splices); at most `max_len` bytes.
pub fn mutate(input: &mut Vec<u8>, others: &[Vec<u8>], rng: &mut Rng, max_len: usize) {
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            input[i] = if rng.below(2) == 0 { BYTES[rng.below(BYTES.len())] } else { rng.next() as u8 };
        }
        2 => {
            let token = TOKENS[rng.below(TOKENS.len())];
            let at = rng.below(len + 1);
            input.splice(at..at, token.iter().copied());
        }
        3 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(64.min(len - start))).min(len);
            input.drain(start..end);
        }
        4 if len > 0 => {
            let start = rng.below(len);
            let end = (start + 1 + rng.below(256.min(len - start))).min(len);
            let copy = input[start..end].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, copy);
        }
        5 if !others.is_empty() => {
            let other = &others[rng.below(others.len())];
            if !other.is_empty() {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(512.min(other.len() - start))).min(other.len());
                let at = rng.below(len + 1);
                input.splice(at..at, other[start..end].iter().copied());
            }
        }
        6 if len > 0 => input.truncate(rng.below(len)),
        7 if len > 0 => {
            // An ASCII number replaced by an extreme one.
            let i = rng.below(len);
            if input[i].is_ascii_digit() {
                let end = (i..len).find(|&j| !input[j].is_ascii_digit()).unwrap_or(len);
                let extreme: &[u8] =
                    [&b"0"[..], b"-1", b"65536", b"4294967295", b"99999999999999999999", b"1e400"][rng.below(6)];
                input.splice(i..end, extreme.iter().copied());
            }
        }
        _ => {
            let at = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let random: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            input.splice(at..at, random);
        }
    }
    input.truncate(max_len);
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Inputs executed.
    pub executions: u64,
    /// Inputs that failed, as saved.
    pub failures: Vec<PathBuf>,
    /// The slowest execution.
    pub slowest: Duration,
}

static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Runs `input` through `target`; the panic message when it failed.
pub fn execute(target: Target, input: &[u8]) -> Result<Verdict, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = info.to_string();
        }
    }));
    let result = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    std::panic::set_hook(hook);
    result.map_err(|_| LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default())
}

/// An execution that takes longer than this is a failure (a hang).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A process that holds more memory than this is a failure (a blow-up).
pub const MEMORY_LIMIT_BYTES: u64 = 4 << 30;

/// The input being executed and since when, watched by another thread that
/// saves it and ends the process when it hangs or takes too much memory
/// (a hang cannot be caught like a panic).
#[derive(Debug, Default)]
struct Current {
    input: Vec<u8>,
    since: Option<Instant>,
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn watch(target: Target, current: Arc<Mutex<Current>>, artifacts: PathBuf) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let Ok(now) = current.lock() else { return };
            let Some(since) = now.since else { continue };
            let problem = if since.elapsed() > TIMEOUT {
                Some(format!("timeout: one execution took more than {} s", TIMEOUT.as_secs()))
            } else {
                resident_bytes().filter(|&b| b > MEMORY_LIMIT_BYTES).map(|b| {
                    format!("out of memory: {} MiB resident (limit {} MiB)", b >> 20, MEMORY_LIMIT_BYTES >> 20)
                })
            };
            if let Some(problem) = problem {
                let path = save_failure(target, &artifacts, &now.input, &problem);
                eprintln!("{}: {problem}", path.display());
                std::process::exit(1);
            }
        }
    });
}

/// Mutates `corpus` for `time` (or until `max_failures` inputs failed),
/// saving each failing input under `artifacts` with its message beside it;
/// a hang ([`TIMEOUT`]) or a memory blow-up ([`MEMORY_LIMIT_BYTES`]) is
/// saved the same way and ends the process with status 1.
pub fn run(
    target: Target,
    corpus: &[Vec<u8>],
    time: Duration,
    seed: u64,
    artifacts: &Path,
    max_failures: usize,
) -> RunReport {
    let max_len = corpus.iter().map(Vec::len).max().unwrap_or(0).max(4096) * 2;
    let mut rng = Rng::new(seed);
    let mut report = RunReport::default();
    let current = Arc::new(Mutex::new(Current::default()));
    watch(target, current.clone(), artifacts.to_path_buf());
    let started = Instant::now();
    let seeds: Vec<&Vec<u8>> = corpus.iter().collect();
    let mut next_seed = 0;
    while started.elapsed() < time && report.failures.len() < max_failures {
        // The corpus itself first, then mutants.
        let input = if next_seed < seeds.len() {
            next_seed += 1;
            seeds[next_seed - 1].clone()
        } else {
            let mut input = if corpus.is_empty() { Vec::new() } else { corpus[rng.below(corpus.len())].clone() };
            for _ in 0..1 + rng.below(8) {
                mutate(&mut input, corpus, &mut rng, max_len);
            }
            input
        };
        let begun = Instant::now();
        if let Ok(mut now) = current.lock() {
            now.input.clone_from(&input);
            now.since = Some(begun);
        }
        let failed = execute(target, &input);
        if let Ok(mut now) = current.lock() {
            now.since = None;
        }
        report.slowest = report.slowest.max(begun.elapsed());
        report.executions += 1;
        if let Err(message) = failed {
            report.failures.push(save_failure(target, artifacts, &input, &message));
        }
    }
    report
}

fn save_failure(target: Target, artifacts: &Path, input: &[u8], message: &str) -> PathBuf {
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let dir = artifacts.join(target.name);
    let kind = match message.split(':').next() {
        Some("timeout") => "timeout",
        Some("out of memory") => "oom",
        _ => "crash",
    };
    let path = dir.join(format!("{kind}-{hash:016x}"));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, input))
        .and_then(|()| std::fs::write(path.with_extension("txt"), message));
    if let Err(e) = saved {
        eprintln!("{}: cannot save a failing input: {e}", path.display());
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_length_limit_and_change_inputs() {
        let mut rng = Rng::new(7);
        let corpus = vec![b"{\"a\": 12}".to_vec(), b"[1, 2, 3]".to_vec()];
        let mut changed = 0;
        for _ in 0..2000 {
            let mut input = corpus[0].clone();
            mutate(&mut input, &corpus, &mut rng, 16);
            assert!(input.len() <= 16);
            changed += usize::from(input != corpus[0]);
        }
        assert!(changed > 1500, "only {changed} of 2000 mutations changed the input");
    }

    #[test]
    fn a_panicking_target_is_caught_and_saved() {
        fn boom(data: &[u8]) -> Verdict {
            assert!(!data.starts_with(b"x"), "starts with x");
            Verdict::Accepted
        }
        let target = Target { name: "boom", about: "test", run: boom };
        let dir = tempfile::tempdir().unwrap();
        let report = run(target, &[b"x".to_vec()], Duration::from_secs(5), 1, dir.path(), 1);
        assert_eq!(report.failures.len(), 1);
        let message = std::fs::read_to_string(report.failures[0].with_extension("txt")).unwrap();
        assert!(message.contains("starts with x"), "{message}");
        assert_eq!(std::fs::read(&report.failures[0]).unwrap(), b"x");
    }
}
