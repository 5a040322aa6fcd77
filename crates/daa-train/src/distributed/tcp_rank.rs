//! Ranks as processes exchanging over TCP: what ranks started by torchrun,
//! SLURM's srun or `daa train --nproc-per-node` (one node or several)
//! exchange through on the CPU, with no MPI. The ranks meet at a rendezvous
//! (`tcp_rendezvous`) and keep one stream per pair of ranks.
//!
//! Every collective is built from direct exchanges between pairs (each rank
//! sends to all others on one thread per peer while it reads from them in
//! rank order on its own): a reduce-scatter sends each rank its chunk of
//! every input and that rank sums the chunks in rank order
//! (`((0 + x₀) + x₁) + …`, the sum [`super::ThreadRank`] computes, bit for
//! bit); an all-gather sends each rank's part to all; an all-reduce is a
//! reduce-scatter then an all-gather, so every element is summed once, by
//! one rank, and every rank holds the same bits. Each rank sends and
//! receives `2 (N − 1)/N` of the values per all-reduce, as a ring would.
//!
//! Every message carries its operation (f32 and f64 told apart), its length
//! and the operation's length in values: ranks out of step or with
//! different lengths are refused by name. A peer that closes its
//! stream (its process ended) fails the collective at once naming it
//! ([`CollectiveError::RankLeft`]: no signal handling is needed to notice
//! peers that are gone); one silent for the deadline
//! (`train.collective_timeout`) is a [`CollectiveError::Timeout`] naming it.
//! After any failure every stream is shut down, so the other ranks fail at
//! once too. Values travel in the machine's byte order: all ranks must
//! share it (x86-64 and AArch64 both little-endian).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::ops::AddAssign;
use std::time::{Duration, Instant};

use bytemuck::Pod;

use super::collective::{Collective, CollectiveError};

/// Bytes of a message's header: operation, payload length, the operation's
/// length in values.
const HEADER: usize = 17;

/// How long a read waits before looking at the deadline again.
const POLL: Duration = Duration::from_millis(200);

/// The operation a message belongs to (its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    AllReduceF32 = 1,
    AllReduceF64 = 2,
    ReduceScatter = 3,
    AllGather = 4,
    Broadcast = 5,
    Barrier = 6,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AllReduceF32 => "all_reduce",
            Op::AllReduceF64 => "all_reduce (f64)",
            Op::ReduceScatter => "reduce_scatter",
            Op::AllGather => "all_gather",
            Op::Broadcast => "broadcast",
            Op::Barrier => "barrier",
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        [Op::AllReduceF32, Op::AllReduceF64, Op::ReduceScatter, Op::AllGather, Op::Broadcast, Op::Barrier]
            .into_iter()
            .find(|op| *op as u8 == byte)
    }
}

/// This process's rank among ranks connected over TCP.
pub struct TcpRank {
    rank: usize,
    world: usize,
    peers: Vec<Option<TcpStream>>,
    timeout: Duration,
    broken: Option<String>,
    /// Whether dropping this rank closes the streams (a group split from
    /// another shares that one's streams, and leaves them open).
    owns_streams: bool,
}

impl std::fmt::Debug for TcpRank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TcpRank {{ rank: {}, world: {} }}", self.rank, self.world)
    }
}

impl TcpRank {
    /// Rank `rank` of `world`, meeting the others at `rendezvous` (rank 0
    /// listens on its port; the others connect to it): every rank must give
    /// the same `identity` (daa's version). Each collective, like the
    /// rendezvous, waits at most `timeout` for a silent peer.
    pub fn connect(
        rank: usize,
        world: usize,
        rendezvous: (&str, u16),
        identity: &str,
        timeout: Duration,
    ) -> Result<Self, CollectiveError> {
        let peers = super::tcp_rendezvous::connect(rank, world, rendezvous, identity, timeout)?;
        for stream in peers.iter().flatten() {
            stream
                .set_read_timeout(Some(POLL.min(timeout)))
                .and_then(|()| stream.set_write_timeout(Some(timeout)))
                .map_err(|e| CollectiveError::Transport { operation: "rendezvous", message: e.to_string() })?;
        }
        Ok(Self { rank, world, peers, timeout, broken: None, owns_streams: true })
    }

    /// Sends each `(peer, payload)` (one thread per peer) while `receive`
    /// reads on this thread; on any failure shuts every stream down, so
    /// the peers fail at once instead of waiting out their deadline.
    fn exchange(
        &mut self,
        op: Op,
        total: Option<u64>,
        sends: &[(usize, &[u8])],
        receive: impl FnOnce(&Reader<'_>) -> Result<(), CollectiveError>,
    ) -> Result<(), CollectiveError> {
        if let Some(why) = &self.broken {
            return Err(CollectiveError::Transport { operation: op.name(), message: why.clone() });
        }
        let reader =
            Reader { op, total, rank: self.rank, world: self.world, peers: &self.peers, timeout: self.timeout };
        let result = std::thread::scope(|scope| {
            let writers: Vec<_> = sends
                .iter()
                .map(|&(peer, payload)| {
                    let stream = self.peers[peer].as_ref().expect("a peer's stream");
                    let reader = &reader;
                    scope.spawn(move || reader.send(peer, stream, payload))
                })
                .collect();
            let received = receive(&reader);
            if received.is_err() {
                shut_down(&self.peers);
            }
            let sent: Vec<Result<(), CollectiveError>> = writers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        Err(CollectiveError::Transport {
                            operation: op.name(),
                            message: "a writer thread panicked".into(),
                        })
                    })
                })
                .collect();
            received?;
            sent.into_iter().collect::<Result<Vec<()>, _>>().map(drop)
        });
        if let Err(error) = &result {
            shut_down(&self.peers);
            self.broken = Some(format!("an earlier collective failed: {error}"));
        }
        result
    }

    /// `output ← (Σ_ranks input)[rank·n ..][..n]`, summed in rank order.
    fn reduce_scatter<T: Pod + AddAssign + Default>(
        &mut self,
        op: Op,
        total: usize,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), CollectiveError> {
        let n = output.len();
        CollectiveError::expect_len(op.name(), self.rank, input.len(), n * self.world)?;
        let (rank, world) = (self.rank, self.world);
        let sends: Vec<(usize, &[u8])> =
            (0..world).filter(|&p| p != rank).map(|p| (p, bytemuck::cast_slice(&input[p * n..(p + 1) * n]))).collect();
        self.exchange(op, Some(total as u64), &sends, |reader| {
            output.iter_mut().for_each(|o| *o = T::default());
            let mut part = vec![T::default(); n];
            for from in 0..world {
                let values = if from == rank {
                    &input[rank * n..(rank + 1) * n]
                } else {
                    reader.message(from, Some(n), size_of::<T>())?;
                    reader.payload(from, bytemuck::cast_slice_mut(&mut part))?;
                    &part[..]
                };
                output.iter_mut().zip(values).for_each(|(o, v)| *o += *v);
            }
            Ok(())
        })
    }

    /// `output[r·n ..][..n] ← rank r's input`.
    fn all_gather<T: Pod>(
        &mut self,
        op: Op,
        total: usize,
        input: &[T],
        output: &mut [T],
    ) -> Result<(), CollectiveError> {
        let n = input.len();
        CollectiveError::expect_len(op.name(), self.rank, output.len(), n * self.world)?;
        let (rank, world) = (self.rank, self.world);
        let sends: Vec<(usize, &[u8])> =
            (0..world).filter(|&p| p != rank).map(|p| (p, bytemuck::cast_slice(input))).collect();
        self.exchange(op, Some(total as u64), &sends, |reader| {
            for from in 0..world {
                let part = &mut output[from * n..(from + 1) * n];
                if from == rank {
                    part.copy_from_slice(input);
                } else {
                    reader.message(from, Some(n), size_of::<T>())?;
                    reader.payload(from, bytemuck::cast_slice_mut(part))?;
                }
            }
            Ok(())
        })
    }

    /// `values ← Σ_ranks values`: each rank sums a chunk in rank order,
    /// then every rank gathers the chunks.
    fn all_reduce<T: Pod + AddAssign + Default>(&mut self, op: Op, values: &mut [T]) -> Result<(), CollectiveError> {
        if self.world == 1 {
            return self.exchange(op, None, &[], |_| Ok(()));
        }
        let (len, chunk) = (values.len(), values.len().div_ceil(self.world));
        let mut mine = vec![T::default(); chunk];
        // The true length travels with each message: ranks whose lengths
        // differ are refused even where the padded chunks agree.
        if len == chunk * self.world {
            // No padding: scattered from the values and gathered into them.
            self.reduce_scatter(op, len, values, &mut mine)?;
            return self.all_gather(op, len, &mine, values);
        }
        let mut padded = vec![T::default(); chunk * self.world];
        padded[..len].copy_from_slice(values);
        self.reduce_scatter(op, len, &padded, &mut mine)?;
        self.all_gather(op, len, &mine, &mut padded)?;
        values.copy_from_slice(&padded[..len]);
        Ok(())
    }
}

impl Drop for TcpRank {
    fn drop(&mut self) {
        if self.owns_streams {
            shut_down(&self.peers);
        }
    }
}

fn shut_down(peers: &[Option<TcpStream>]) {
    for stream in peers.iter().flatten() {
        let _ = stream.shutdown(Shutdown::Both);
    }
}

/// Reads one collective's messages from the peers, and writes its own.
struct Reader<'a> {
    op: Op,
    /// The operation's length in values on this rank, sent with every
    /// message and compared with the peers' (`None`: not compared).
    total: Option<u64>,
    rank: usize,
    world: usize,
    peers: &'a [Option<TcpStream>],
    timeout: Duration,
}

impl Reader<'_> {
    fn left(&self, peer: usize) -> CollectiveError {
        CollectiveError::RankLeft { operation: self.op.name(), rank: peer }
    }

    fn io_error(&self, peer: usize, error: &std::io::Error, waited: Duration) -> CollectiveError {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, TimedOut, UnexpectedEof, WouldBlock};
        match error.kind() {
            BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof => self.left(peer),
            WouldBlock | TimedOut => CollectiveError::Timeout {
                operation: self.op.name(),
                rank: self.rank,
                world: self.world,
                waited,
                missing: vec![peer],
            },
            _ => CollectiveError::Transport {
                operation: self.op.name(),
                message: format!("rank {} ↔ rank {peer}: {error}", self.rank),
            },
        }
    }

    /// Writes the header (operation, length) and the payload to `peer`.
    fn send(&self, peer: usize, mut stream: &TcpStream, payload: &[u8]) -> Result<(), CollectiveError> {
        let started = Instant::now();
        let mut header = [0u8; HEADER];
        header[0] = self.op as u8;
        header[1..9].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        header[9..].copy_from_slice(&self.total.unwrap_or(u64::MAX).to_le_bytes());
        stream
            .write_all(&header)
            .and_then(|()| stream.write_all(payload))
            .map_err(|e| self.io_error(peer, &e, started.elapsed()))
    }

    /// Reads `peer`'s next header: its operation must be this one and its
    /// length `expected` values of `size` bytes (when given); returns the
    /// length in bytes.
    fn message(&self, peer: usize, expected: Option<usize>, size: usize) -> Result<usize, CollectiveError> {
        let mut header = [0u8; HEADER];
        self.payload(peer, &mut header)?;
        let len = u64::from_le_bytes(header[1..9].try_into().expect("8 bytes")) as usize;
        let their_total = u64::from_le_bytes(header[9..].try_into().expect("8 bytes"));
        let theirs = Op::from_byte(header[0]);
        if theirs != Some(self.op) {
            return Err(CollectiveError::Transport {
                operation: self.op.name(),
                message: format!(
                    "rank {peer} called {} while rank {} called {}: the ranks are out of step",
                    theirs.map_or("an unknown operation", Op::name),
                    self.rank,
                    self.op.name()
                ),
            });
        }
        if let Some(mine) = self.total.filter(|&mine| their_total != u64::MAX && their_total != mine) {
            return Err(CollectiveError::LengthMismatch {
                operation: self.op.name(),
                rank: self.rank,
                len: mine as usize,
                other_rank: peer,
                other_len: their_total as usize,
            });
        }
        match expected {
            Some(expected) if expected * size != len => Err(CollectiveError::LengthMismatch {
                operation: self.op.name(),
                rank: self.rank,
                len: expected,
                other_rank: peer,
                other_len: len / size.max(1),
            }),
            _ => Ok(len),
        }
    }

    /// Fills `into` from `peer`, waiting at most the deadline between two
    /// arrivals of bytes.
    fn payload(&self, peer: usize, into: &mut [u8]) -> Result<(), CollectiveError> {
        let mut stream = self.peers[peer].as_ref().expect("a peer's stream");
        let (mut filled, mut last_progress) = (0, Instant::now());
        while filled < into.len() {
            match stream.read(&mut into[filled..]) {
                Ok(0) => return Err(self.left(peer)),
                Ok(read) => {
                    filled += read;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    let waited = last_progress.elapsed();
                    if waited >= self.timeout {
                        return Err(self.io_error(peer, &e, waited));
                    }
                }
                Err(e) => return Err(self.io_error(peer, &e, last_progress.elapsed())),
            }
        }
        Ok(())
    }
}

impl Collective for TcpRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum_f32(&mut self, values: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_reduce(Op::AllReduceF32, values)
    }

    fn all_reduce_sum_f64(&mut self, values: &mut [f64]) -> Result<(), CollectiveError> {
        self.all_reduce(Op::AllReduceF64, values)
    }

    fn reduce_scatter_sum_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        self.reduce_scatter(Op::ReduceScatter, input.len(), input, output)
    }

    fn all_gather_f32(&mut self, input: &[f32], output: &mut [f32]) -> Result<(), CollectiveError> {
        self.all_gather(Op::AllGather, input.len(), input, output)
    }

    fn broadcast_bytes(&mut self, root: usize, bytes: &mut Vec<u8>) -> Result<(), CollectiveError> {
        if root >= self.world {
            return Err(CollectiveError::Transport {
                operation: "broadcast",
                message: format!("root {root} is not a rank of {}", self.world),
            });
        }
        let (rank, world) = (self.rank, self.world);
        let sent = if rank == root { std::mem::take(bytes) } else { Vec::new() };
        let sends: Vec<(usize, &[u8])> =
            if rank == root { (0..world).filter(|&p| p != rank).map(|p| (p, &sent[..])).collect() } else { Vec::new() };
        let mut received = Vec::new();
        self.exchange(Op::Broadcast, None, &sends, |reader| {
            if rank != root {
                let len = reader.message(root, None, 1)?;
                received.resize(len, 0);
                reader.payload(root, &mut received)?;
            }
            Ok(())
        })?;
        *bytes = if rank == root { sent } else { received };
        Ok(())
    }

    fn split(&mut self, color: usize) -> Result<Box<dyn Collective>, CollectiveError> {
        let colors = super::collective::colors(self, color)?;
        let members: Vec<usize> = (0..self.world).filter(|&r| colors[r] == color).collect();
        let rank = members.iter().position(|&r| r == self.rank).expect("this rank has its own color");
        // The member ranks' streams, shared: no pair of ranks is in two
        // groups split at once, and every rank uses its groups in the same
        // order, so each stream's messages still arrive in the order read.
        let peers = members
            .iter()
            .map(|&r| self.peers[r].as_ref().map(TcpStream::try_clone).transpose())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| CollectiveError::Transport { operation: "split", message: e.to_string() })?;
        Ok(Box::new(TcpRank {
            rank,
            world: members.len(),
            peers,
            timeout: self.timeout,
            broken: None,
            owns_streams: false,
        }))
    }

    fn barrier(&mut self) -> Result<(), CollectiveError> {
        let (rank, world) = (self.rank, self.world);
        let sends: Vec<(usize, &[u8])> = (0..world).filter(|&p| p != rank).map(|p| (p, &[][..])).collect();
        self.exchange(Op::Barrier, Some(0), &sends, |reader| {
            (0..world).filter(|&p| p != rank).try_for_each(|p| reader.message(p, Some(0), 1).map(drop))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::ThreadRank;

    /// A free port on the loopback interface.
    fn free_port() -> u16 {
        std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port()
    }

    /// Runs `body` on `world` ranks connected over TCP on the loopback.
    fn on_tcp<T: Send>(world: usize, timeout: Duration, body: impl Fn(TcpRank) -> T + Sync) -> Vec<T> {
        let port = free_port();
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..world)
                .map(|rank| {
                    let body = &body;
                    scope.spawn(move || {
                        body(TcpRank::connect(rank, world, ("127.0.0.1", port), "daa test", timeout).unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn on_threads<T: Send>(world: usize, body: impl Fn(ThreadRank) -> T + Sync) -> Vec<T> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadRank::group(world, Duration::from_secs(30))
                .into_iter()
                .map(|rank| {
                    let body = &body;
                    scope.spawn(move || body(rank))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// Every collective, on values whose sums round differently in another
    /// order: an f32 all-reduce of 6 values (divided evenly over 1, 2 or 3
    /// ranks), an f64 one of 5 (padded), and the others.
    /// What [`every_collective`] returns: all-reduce f32 and f64,
    /// reduce-scatter, all-gather, broadcast.
    type Results = (Vec<f32>, Vec<f64>, Vec<f32>, Vec<f32>, Vec<u8>);

    fn every_collective(mut c: impl Collective) -> Results {
        let r = c.rank() as f32;
        let mut sum: Vec<f32> = (0..6).map(|i| 0.1 * (i as f32 + 1.0) + r * 1e-3 + 1e7 * (r - 1.0)).collect();
        c.all_reduce_sum_f32(&mut sum).unwrap();
        let mut sum64: Vec<f64> = (0..5).map(|i| f64::from(r) * 0.3 + f64::from(i)).collect();
        c.all_reduce_sum_f64(&mut sum64).unwrap();
        let input: Vec<f32> = (0..2 * c.world_size()).map(|i| i as f32 * 0.7 + r).collect();
        let mut scattered = vec![0f32; 2];
        c.reduce_scatter_sum_f32(&input, &mut scattered).unwrap();
        let mut gathered = vec![0f32; 3 * c.world_size()];
        c.all_gather_f32(&[r, r + 0.5, -r], &mut gathered).unwrap();
        let last = c.world_size() - 1;
        let mut bytes = if c.rank() == last { format!("from rank {last}").into_bytes() } else { Vec::new() };
        c.broadcast_bytes(last, &mut bytes).unwrap();
        c.barrier().unwrap();
        (sum, sum64, scattered, gathered, bytes)
    }

    #[test]
    fn every_collective_gives_the_bits_the_thread_ranks_give() {
        for world in [1, 2, 3] {
            let threads = on_threads(world, every_collective);
            let tcp = on_tcp(world, Duration::from_secs(30), every_collective);
            for (rank, (t, c)) in threads.iter().zip(&tcp).enumerate() {
                assert_eq!(
                    t.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    c.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "world {world} rank {rank}: all_reduce f32"
                );
                assert_eq!(
                    t.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    c.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "world {world} rank {rank}: all_reduce f64"
                );
                assert_eq!(t.2, c.2, "world {world} rank {rank}: reduce_scatter");
                assert_eq!(t.3, c.3, "world {world} rank {rank}: all_gather");
                assert_eq!(
                    c.4,
                    format!("from rank {}", world - 1).into_bytes(),
                    "world {world} rank {rank}: broadcast"
                );
            }
        }
    }

    #[test]
    fn groups_split_off_exchange_within_themselves_and_the_whole_goes_on() {
        let results = on_tcp(4, Duration::from_secs(30), |mut c| {
            let r = c.rank();
            let mut group = c.split(r % 2).unwrap();
            let mut within = [r as f32];
            group.all_reduce_sum_f32(&mut within).unwrap();
            let mut all = [1.0f32];
            c.all_reduce_sum_f32(&mut all).unwrap();
            group.barrier().unwrap();
            (group.rank(), group.world_size(), within[0], all[0])
        });
        assert_eq!(results, [(0, 2, 2.0, 4.0), (0, 2, 4.0, 4.0), (1, 2, 2.0, 4.0), (1, 2, 4.0, 4.0)]);
    }

    #[test]
    fn a_large_all_reduce_arrives_whole() {
        // Several megabytes per peer: the writers and the reader must not block each other.
        let n = 3_000_001;
        let sums = on_tcp(3, Duration::from_secs(60), |mut c| {
            let mut values: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 + c.rank() as f32).collect();
            c.all_reduce_sum_f32(&mut values).unwrap();
            values
        });
        for values in &sums {
            assert_eq!(values.len(), n);
            assert!(values.iter().enumerate().all(|(i, v)| *v == 3.0 * (i % 1000) as f32 + 3.0));
        }
    }

    #[test]
    fn a_rank_that_leaves_fails_the_others_at_once_naming_it() {
        let started = Instant::now();
        let errors = on_tcp(3, Duration::from_secs(60), |mut c| {
            if c.rank() == 2 {
                return String::new();
            }
            c.all_reduce_sum_f32(&mut [1.0]).unwrap_err().to_string()
        });
        assert!(errors[0].contains("rank 2 left") || errors[0].contains("rank 1 left"), "{}", errors[0]);
        assert!(errors[1].contains("left the group"), "{}", errors[1]);
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    }

    #[test]
    fn a_silent_rank_is_a_timeout_naming_it() {
        let errors = on_tcp(2, Duration::from_millis(600), |mut c| {
            if c.rank() == 1 {
                std::thread::sleep(Duration::from_millis(1500));
                return String::new();
            }
            c.barrier().unwrap_err().to_string()
        });
        assert!(errors[0].contains("barrier: rank 0 of 2 waited") && errors[0].contains("[1]"), "{}", errors[0]);
    }

    #[test]
    fn ranks_out_of_step_or_with_other_lengths_are_refused() {
        let errors = on_tcp(2, Duration::from_secs(30), |mut c| {
            let err = if c.rank() == 0 { c.barrier() } else { c.all_reduce_sum_f32(&mut [1.0]) };
            err.unwrap_err().to_string()
        });
        assert!(errors.iter().any(|e| e.contains("out of step")), "{errors:?}");
        let errors = on_tcp(2, Duration::from_secs(30), |mut c| {
            let mut gathered = vec![0f32; 2 * (c.rank() + 1)];
            c.all_gather_f32(&vec![1.0; c.rank() + 1], &mut gathered).unwrap_err().to_string()
        });
        assert!(
            errors.iter().any(|e| e.contains("has 1 values, rank 1 has 2") || e.contains("has 2 values, rank 0 has 1")),
            "{errors:?}"
        );
        // 5 and 6 values over 3 ranks pad to the same chunks of 2: still refused.
        let errors = on_tcp(3, Duration::from_secs(30), |mut c| {
            let mut values = vec![1.0f32; if c.rank() == 2 { 6 } else { 5 }];
            c.all_reduce_sum_f32(&mut values).unwrap_err().to_string()
        });
        assert!(
            errors
                .iter()
                .any(|e| e.contains("has 5 values, rank 2 has 6") || e.contains("rank 2 has 6 values, rank 0 has 5")),
            "{errors:?}"
        );
        // An f32 and an f64 all-reduce of as many bytes are out of step.
        let errors = on_tcp(2, Duration::from_secs(30), |mut c| match c.rank() {
            0 => c.all_reduce_sum_f32(&mut [1.0; 4]).unwrap_err().to_string(),
            _ => c.all_reduce_sum_f64(&mut [1.0; 2]).unwrap_err().to_string(),
        });
        assert!(errors.iter().any(|e| e.contains("out of step")), "{errors:?}");
    }

    #[test]
    fn the_rendezvous_names_a_rank_that_never_comes_and_one_that_differs() {
        let port = free_port();
        let err = TcpRank::connect(0, 3, ("127.0.0.1", port), "daa test", Duration::from_millis(500)).unwrap_err();
        assert!(err.to_string().contains("[1, 2]"), "{err}");

        let port = free_port();
        let results: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = [(0, "daa 1"), (1, "daa 2")]
                .into_iter()
                .map(|(rank, identity)| {
                    scope.spawn(move || {
                        TcpRank::connect(rank, 2, ("127.0.0.1", port), identity, Duration::from_secs(10))
                            .unwrap_err()
                            .to_string()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for err in &results {
            assert!(err.contains("rank 1 runs daa 2 while rank 0 runs daa 1"), "{err}");
        }
    }
}
