//! The ranks' collectives: an f32 all-reduce between two ranks over TCP on
//! the loopback (`TcpRank`, what daa's launcher, torchrun and srun ranks
//! exchange through on the CPU) and between two threads sharing memory
//! (`ThreadRank`), beside a copy of the same buffer (the machine's memory
//! bandwidth in the same run). Throughput is the buffer's size per
//! all-reduce ("algorithm bandwidth"); for two ranks each rank sends and
//! receives that many bytes.
//!
//! `cargo bench -p daa-benches --bench collectives`

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use daa_train::distributed::{Collective, TcpRank, ThreadRank};

/// Buffer sizes in MiB.
const SIZES_MIB: [usize; 3] = [1, 16, 64];

/// Rank 0 (on the bench's thread) and a partner rank on its own thread,
/// which runs as many all-reduces of `len` values as it is told.
struct Pair {
    rank: Box<dyn Collective>,
    tell: mpsc::Sender<u64>,
    done: mpsc::Receiver<()>,
}

impl Pair {
    fn new(mut ranks: Vec<Box<dyn Collective>>, len: usize) -> Self {
        let mut partner = ranks.pop().expect("two ranks");
        let rank = ranks.pop().expect("two ranks");
        let (tell, told) = mpsc::channel::<u64>();
        let (finished, done) = mpsc::channel();
        std::thread::spawn(move || {
            let mut values = vec![1.0f32; len];
            while let Ok(iterations) = told.recv() {
                for _ in 0..iterations {
                    partner.all_reduce_sum_f32(&mut values).expect("the partner's all-reduce");
                }
                if finished.send(()).is_err() {
                    return;
                }
            }
        });
        Self { rank, tell, done }
    }

    /// Time of `iterations` all-reduces of `values` on both ranks.
    fn run(&mut self, values: &mut [f32], iterations: u64) -> Duration {
        self.tell.send(iterations).expect("the partner is running");
        let started = Instant::now();
        for _ in 0..iterations {
            self.rank.all_reduce_sum_f32(values).expect("rank 0's all-reduce");
        }
        self.done.recv().expect("the partner finished");
        started.elapsed()
    }
}

fn tcp_pair(len: usize) -> Pair {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap().local_addr().unwrap().port();
    let timeout = Duration::from_secs(120);
    let other = std::thread::spawn(move || TcpRank::connect(1, 2, ("127.0.0.1", port), "bench", timeout).unwrap());
    let first = TcpRank::connect(0, 2, ("127.0.0.1", port), "bench", timeout).unwrap();
    let ranks: Vec<Box<dyn Collective>> = vec![Box::new(first), Box::new(other.join().unwrap())];
    Pair::new(ranks, len)
}

fn thread_pair(len: usize) -> Pair {
    let ranks = ThreadRank::group(2, Duration::from_secs(120)).into_iter().map(|r| Box::new(r) as Box<dyn Collective>);
    Pair::new(ranks.collect(), len)
}

fn collectives(c: &mut Criterion) {
    let mut group = c.benchmark_group("all_reduce_f32, 2 ranks");
    group.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for mib in SIZES_MIB {
        let len = mib * (1 << 20) / 4;
        group.throughput(Throughput::Bytes((len * 4) as u64));
        let mut values = vec![1.0f32; len];
        let mut tcp = tcp_pair(len);
        group.bench_with_input(BenchmarkId::new("tcp loopback", format!("{mib} MiB")), &len, |b, _| {
            b.iter_custom(|iterations| tcp.run(&mut values, iterations));
        });
        let mut threads = thread_pair(len);
        group.bench_with_input(BenchmarkId::new("threads, shared memory", format!("{mib} MiB")), &len, |b, _| {
            b.iter_custom(|iterations| threads.run(&mut values, iterations));
        });
        let source = vec![2.0f32; len];
        group.bench_with_input(BenchmarkId::new("copy (memory bandwidth)", format!("{mib} MiB")), &len, |b, _| {
            b.iter(|| values.copy_from_slice(std::hint::black_box(&source)));
        });
    }
    group.finish();
}

criterion_group!(benches, collectives);
criterion_main!(benches);
