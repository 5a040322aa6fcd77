//! Ranks as threads of one process, exchanging through shared memory: the
//! collective of the in-process tests (every sharding stage, data
//! parallelism, faults) and of the wasm32-free library tests.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::collective::{Collective, CollectiveError};

/// What a rank posted for the current round.
#[derive(Debug, Clone)]
enum Posted {
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bytes(Vec<u8>),
    Nothing,
}

impl Posted {
    fn kind(&self) -> &'static str {
        match self {
            Posted::F32(_) => "f32",
            Posted::F64(_) => "f64",
            Posted::Bytes(_) => "bytes",
            Posted::Nothing => "nothing",
        }
    }

    fn len(&self) -> usize {
        match self {
            Posted::F32(v) => v.len(),
            Posted::F64(v) => v.len(),
            Posted::Bytes(v) => v.len(),
            Posted::Nothing => 0,
        }
    }
}

/// The shared board: one slot per rank, filled during `posting`, read by
/// every rank during `reading`, cleared by the last reader.
#[derive(Debug)]
struct Board {
    /// Each rank's operation and values for this round.
    slots: Vec<Option<(&'static str, Posted)>>,
    round: u64,
    reading: bool,
    readers_left: usize,
    left: Vec<bool>,
    /// Set when a rank gave up on a round (its deadline): every rank's
    /// collectives fail from then on, so no rank steps on while another
    /// has stopped.
    broken: Option<String>,
}

#[derive(Debug)]
struct Shared {
    board: Mutex<Board>,
    changed: Condvar,
    timeout: Duration,
    /// The groups split from this one, by the round of the split and color.
    splits: Mutex<std::collections::HashMap<(u64, usize), Arc<Shared>>>,
}

impl Shared {
    fn new(world: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(Shared {
            board: Mutex::new(Board {
                slots: vec![None; world],
                round: 0,
                reading: false,
                readers_left: 0,
                left: vec![false; world],
                broken: None,
            }),
            changed: Condvar::new(),
            timeout,
            splits: Mutex::default(),
        })
    }
}

impl ThreadRank {
    /// The `world` ranks of one group, sharing one board; a collective waits
    /// at most `timeout` for the others.
    pub fn group(world: usize, timeout: Duration) -> Vec<ThreadRank> {
        let shared = Shared::new(world, timeout);
        (0..world).map(|rank| ThreadRank { rank, world, round: 0, shared: shared.clone() }).collect()
    }
}

/// One rank of a group made by [`ThreadRank::group`]. Dropping it (its thread ended, or failed)
/// makes the others' collectives fail with [`CollectiveError::RankLeft`].
#[derive(Debug)]
pub struct ThreadRank {
    rank: usize,
    world: usize,
    round: u64,
    shared: Arc<Shared>,
}

impl Drop for ThreadRank {
    fn drop(&mut self) {
        // Also after a panic elsewhere poisoned the lock: the others must not wait it out.
        let mut board = self.shared.board.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        board.left[self.rank] = true;
        drop(board);
        self.shared.changed.notify_all();
    }
}

impl ThreadRank {
    fn lock(&self, operation: &'static str) -> Result<MutexGuard<'_, Board>, CollectiveError> {
        self.shared
            .board
            .lock()
            .map_err(|_| CollectiveError::Transport { operation, message: "a rank panicked".into() })
    }

    /// Waits on the board until `ready` holds, failing on the deadline or
    /// when another rank has left.
    fn wait<'a>(
        &'a self,
        mut board: MutexGuard<'a, Board>,
        operation: &'static str,
        started: Instant,
        ready: impl Fn(&Board) -> bool,
    ) -> Result<MutexGuard<'a, Board>, CollectiveError> {
        loop {
            if let Some(why) = &board.broken {
                return Err(CollectiveError::Transport { operation, message: why.clone() });
            }
            if ready(&board) {
                return Ok(board);
            }
            if let Some(rank) = board.left.iter().position(|&l| l) {
                return Err(CollectiveError::RankLeft { operation, rank });
            }
            let waited = started.elapsed();
            if waited >= self.shared.timeout {
                let missing = (0..self.world).filter(|&r| board.slots[r].is_none()).collect();
                let error = CollectiveError::Timeout { operation, rank: self.rank, world: self.world, waited, missing };
                board.broken = Some(format!("the group stopped: {error}"));
                self.shared.changed.notify_all();
                return Err(error);
            }
            let (next, _) = self
                .shared
                .changed
                .wait_timeout(board, self.shared.timeout - waited)
                .map_err(|_| CollectiveError::Transport { operation, message: "a rank panicked".into() })?;
            board = next;
        }
    }

    /// One round: posts `mine`, waits for every rank's post, and returns
    /// what `read` makes of all posts (in rank order).
    fn exchange<T>(
        &mut self,
        operation: &'static str,
        mine: Posted,
        read: impl FnOnce(&[Posted]) -> Result<T, CollectiveError>,
    ) -> Result<T, CollectiveError> {
        let started = Instant::now();
        let round = self.round;
        let board = self.lock(operation)?;
        let mut board = self.wait(board, operation, started, |b| b.round == round && !b.reading)?;
        board.slots[self.rank] = Some((operation, mine));
        if board.slots.iter().all(Option::is_some) {
            board.reading = true;
            board.readers_left = self.world;
            self.shared.changed.notify_all();
        }
        let mut board = self.wait(board, operation, started, |b| b.round == round && b.reading)?;
        let posted: Vec<(&'static str, Posted)> =
            board.slots.iter().map(|s| s.clone().expect("every rank posted")).collect();
        board.readers_left -= 1;
        if board.readers_left == 0 {
            board.slots.iter_mut().for_each(|s| *s = None);
            board.reading = false;
            board.round += 1;
            self.shared.changed.notify_all();
        }
        drop(board);
        self.round += 1;
        // Every rank must have called the same operation with the same type.
        let (first_op, first) = &posted[0];
        if let Some((rank, (op, post))) =
            posted.iter().enumerate().find(|(_, (op, post))| op != first_op || post.kind() != first.kind())
        {
            return Err(CollectiveError::Transport {
                operation,
                message: format!(
                    "rank {rank} called {op} ({}) while rank 0 called {first_op} ({}): the ranks are out of step",
                    post.kind(),
                    first.kind()
                ),
            });
        }
        let posts: Vec<Posted> = posted.into_iter().map(|(_, p)| p).collect();
        read(&posts)
    }

    fn same_lengths(operation: &'static str, posts: &[Posted]) -> Result<usize, CollectiveError> {
        let len = posts[0].len();
        match posts.iter().position(|p| p.len() != len) {
            None => Ok(len),
            Some(other_rank) => Err(CollectiveError::LengthMismatch {
                operation,
                rank: 0,
                len,
                other_rank,
                other_len: posts[other_rank].len(),
            }),
        }
    }
}

fn f32s(post: &Posted) -> &[f32] {
    match post {
        Posted::F32(v) => v,
        _ => &[],
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        const OP: &str = "all_reduce";
        let sums = self.exchange(OP, Posted::F32(values.to_vec()), |posts| {
            let len = Self::same_lengths(OP, posts)?;
            let mut sums = vec![0f32; len];
            for post in posts {
                sums.iter_mut().zip(f32s(post)).for_each(|(s, v)| *s += v);
            }
            Ok(sums)
        })?;
        values.copy_from_slice(&sums);
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        const OP: &str = "all_reduce";
        let sums = self.exchange(OP, Posted::F64(values.to_vec()), |posts| {
            let len = Self::same_lengths(OP, posts)?;
            let mut sums = vec![0f64; len];
            for post in posts {
                if let Posted::F64(v) = post {
                    sums.iter_mut().zip(v).for_each(|(s, v)| *s += v);
                }
            }
            Ok(sums)
        })?;
        values.copy_from_slice(&sums);
        Ok(())
    }

    fn reduce_scatter_sum_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        const OP: &str = "reduce_scatter";
        let (n, rank, world) = (output.len(), self.rank, self.world);
        CollectiveError::expect_len(OP, rank, input.len(), n * world)?;
        let part = self.exchange(OP, Posted::F32(input.to_vec()), |posts| {
            Self::same_lengths(OP, posts)?;
            let mut part = vec![0f32; n];
            for post in posts {
                part.iter_mut().zip(&f32s(post)[rank * n..(rank + 1) * n]).for_each(|(s, v)| *s += v);
            }
            Ok(part)
        })?;
        output.copy_from_slice(&part);
        Ok(())
    }

    fn all_gather_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        const OP: &str = "all_gather";
        let n = input.len();
        CollectiveError::expect_len(OP, self.rank, output.len(), n * self.world)?;
        let gathered = self.exchange(OP, Posted::F32(input.to_vec()), |posts| {
            Self::same_lengths(OP, posts)?;
            Ok(posts.iter().flat_map(|p| f32s(p).iter().copied()).collect::<Vec<f32>>())
        })?;
        output.copy_from_slice(&gathered);
        Ok(())
    }

    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
        let mine = Posted::Bytes(if self.rank == root { bytes.clone() } else { Vec::new() });
        *bytes = self.exchange("broadcast", mine, |posts| match &posts[root] {
            Posted::Bytes(b) => Ok(b.clone()),
            _ => {
                Err(CollectiveError::Transport { operation: "broadcast", message: format!("rank {root} sent nothing") })
            }
        })?;
        Ok(())
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        self.exchange("barrier", Posted::Nothing, |_| Ok(()))
    }

    fn split(&mut self, color: usize) -> Result<Box<dyn Collective>, CollectiveError> {
        let colors = super::collective::colors(self, color)?;
        let members: Vec<usize> = (0..self.world).filter(|&r| colors[r] == color).collect();
        let rank = members.iter().position(|&r| r == self.rank).expect("this rank has its own color");
        let mut splits = self.shared.splits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let shared = splits
            .entry((self.round, color))
            .or_insert_with(|| Shared::new(members.len(), self.shared.timeout))
            .clone();
        Ok(Box::new(ThreadRank { rank, world: members.len(), round: 0, shared }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_threads<T: Send>(world: usize, body: impl Fn(ThreadRank) -> T + Sync) -> Vec<T> {
        let ranks = ThreadRank::group(world, Duration::from_secs(10));
        std::thread::scope(|s| {
            let handles: Vec<_> = ranks.into_iter().map(|r| s.spawn(|| body(r))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_collective_gives_every_rank_the_rank_ordered_result() {
        let results = on_threads(3, |mut rank| {
            let r = rank.rank() as f32;
            let mut sum = vec![r, 10.0 * r, 0.1];
            rank.all_reduce_sum_f32(&mut sum).unwrap();
            let mut scattered = vec![0f32; 2];
            let input: Vec<f32> = (0..6).map(|i| i as f32 + r).collect();
            rank.reduce_scatter_sum_f32(&input, &mut scattered).unwrap();
            let mut gathered = vec![0f32; 6];
            rank.all_gather_f32(&[r, -r], &mut gathered).unwrap();
            let mut bytes = if rank.rank() == 1 { b"hello".to_vec() } else { Vec::new() };
            rank.broadcast_bytes(1, &mut bytes).unwrap();
            rank.barrier().unwrap();
            (sum, scattered, gathered, bytes)
        });
        for (rank, (sum, scattered, gathered, bytes)) in results.into_iter().enumerate() {
            assert_eq!(sum, vec![3.0, 30.0, (0.1f32 + 0.1) + 0.1]);
            // Σ_r (i + r) over r = 0, 1, 2 at i = 2·rank, 2·rank + 1.
            let i = 2 * rank;
            assert_eq!(scattered, vec![3.0 * i as f32 + 3.0, 3.0 * (i + 1) as f32 + 3.0]);
            assert_eq!(gathered, vec![0.0, 0.0, 1.0, -1.0, 2.0, -2.0]);
            assert_eq!(bytes, b"hello");
        }
    }

    #[test]
    fn a_rank_that_never_comes_is_a_timeout_naming_it() {
        let mut ranks = ThreadRank::group(2, Duration::from_millis(200));
        let _absent = ranks.pop().unwrap();
        let mut present = ranks.pop().unwrap();
        let err = present.all_reduce_sum_f32(&mut [1.0]).unwrap_err();
        assert!(matches!(&err, CollectiveError::Timeout { missing, .. } if missing == &[1]), "{err}");
        assert!(err.to_string().contains("rank(s) [1]"), "{err}");
    }

    #[test]
    fn a_rank_that_left_fails_the_others_at_once() {
        let mut ranks = ThreadRank::group(2, Duration::from_secs(60));
        drop(ranks.pop());
        let started = Instant::now();
        let err = ranks[0].barrier().unwrap_err();
        assert!(matches!(err, CollectiveError::RankLeft { rank: 1, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn ranks_out_of_step_are_refused() {
        let results = on_threads(2, |mut rank| {
            if rank.rank() == 0 { rank.barrier() } else { rank.all_reduce_sum_f32(&mut [1.0]) }
                .map_err(|e| e.to_string())
        });
        for result in results {
            assert!(result.unwrap_err().contains("rank 1 called all_reduce (f32) while rank 0 called barrier"));
        }
    }

    #[test]
    fn a_rank_that_timed_out_stops_the_group() {
        let mut ranks = ThreadRank::group(3, Duration::from_millis(200));
        let mut late = ranks.pop().unwrap();
        // Ranks 0 and 1 time out waiting for rank 2; rank 2 arriving later fails too.
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = ranks.iter_mut().map(|r| s.spawn(|| r.barrier().unwrap_err().to_string())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        });
        assert!(results.iter().any(|e| e.contains("did not arrive")), "{results:?}");
        let err = late.barrier().unwrap_err().to_string();
        assert!(err.contains("the group stopped"), "{err}");
    }

    #[test]
    fn different_lengths_are_refused() {
        let results = on_threads(2, |mut rank| {
            let mut values = vec![1.0f32; 2 + rank.rank()];
            rank.all_reduce_sum_f32(&mut values).map_err(|e| e.to_string())
        });
        for result in results {
            assert!(result.unwrap_err().contains("rank 0 has 2 values, rank 1 has 3"));
        }
    }
}
