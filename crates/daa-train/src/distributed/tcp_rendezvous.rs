//! How ranks started by torchrun, SLURM's srun or `daa train
//! --nproc-per-node` find each other over TCP. Rank 0 listens at the
//! rendezvous address; every other rank listens on a port of its own,
//! connects to rank 0 and says who it is (protocol, daa version, rank,
//! world size, its port); rank 0 checks that every rank came once, with
//! the same world size and version, and sends every rank the address table
//! (each rank's address as rank 0 saw it). Then each rank connects to the
//! ranks below it: a full mesh of TCP streams, one per pair of ranks.
//!
//! A rank that does not come within the deadline is named; so is one whose
//! version or world size differs (every connected rank receives rank 0's
//! error).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::collective::CollectiveError;

/// The first bytes of every rendezvous message.
const MAGIC: &[u8; 8] = b"daa-rdv1";

const OPERATION: &str = "rendezvous";

fn transport(message: String) -> CollectiveError {
    CollectiveError::Transport { operation: OPERATION, message }
}

/// What a rank tells rank 0.
#[derive(Debug)]
struct Hello {
    rank: usize,
    world: usize,
    port: u16,
    identity: String,
}

impl Hello {
    fn write(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let mut message = MAGIC.to_vec();
        message.extend((self.rank as u64).to_le_bytes());
        message.extend((self.world as u64).to_le_bytes());
        message.extend(self.port.to_le_bytes());
        message.extend((self.identity.len() as u32).to_le_bytes());
        message.extend(self.identity.as_bytes());
        stream.write_all(&message)
    }

    /// Reads a hello; `Ok(None)` when the peer is not a daa rank (another
    /// program connected to the port).
    fn read(stream: &mut TcpStream) -> std::io::Result<Option<Self>> {
        let mut head = [0u8; 8 + 8 + 8 + 2 + 4];
        stream.read_exact(&mut head)?;
        if &head[..8] != MAGIC {
            return Ok(None);
        }
        let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
        let (rank, world) = (u64_at(8) as usize, u64_at(16) as usize);
        let port = u16::from_le_bytes([head[24], head[25]]);
        let len = u32::from_le_bytes(head[26..30].try_into().expect("4 bytes")) as usize;
        if len > 4096 {
            return Ok(None);
        }
        let mut identity = vec![0u8; len];
        stream.read_exact(&mut identity)?;
        Ok(Some(Self { rank, world, port, identity: String::from_utf8_lossy(&identity).into_owned() }))
    }
}

/// A full mesh: `peers[r]` is the stream to rank `r` (`None` for this rank).
pub(super) fn connect(
    rank: usize,
    world: usize,
    rendezvous: (&str, u16),
    identity: &str,
    timeout: Duration,
) -> Result<Vec<Option<TcpStream>>, CollectiveError> {
    if world == 0 || rank >= world {
        return Err(transport(format!("rank {rank} is not a rank of a world of {world}")));
    }
    let now = Instant::now();
    let deadline = now.checked_add(timeout).unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
    let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    if world == 1 {
        return Ok(peers);
    }
    if rank == 0 {
        first_rank(world, rendezvous.1, identity, deadline, timeout, &mut peers)?;
    } else {
        other_rank(rank, world, rendezvous, identity, deadline, timeout, &mut peers)?;
    }
    for stream in peers.iter().flatten() {
        stream.set_nodelay(true).map_err(|e| transport(format!("TCP_NODELAY: {e}")))?;
    }
    Ok(peers)
}

/// Rank 0: accepts every other rank at the rendezvous port, checks them,
/// and sends each the address table (or the error that stops them all).
fn first_rank(
    world: usize,
    port: u16,
    identity: &str,
    deadline: Instant,
    timeout: Duration,
    peers: &mut [Option<TcpStream>],
) -> Result<(), CollectiveError> {
    let listener = TcpListener::bind(("0.0.0.0", port)).map_err(|e| {
        transport(format!(
            "rank 0 cannot listen on port {port}: {e} (another run's rendezvous? choose another MASTER_PORT, or set \
             DAA_RENDEZVOUS_PORT)"
        ))
    })?;
    listener.set_nonblocking(true).map_err(|e| transport(e.to_string()))?;
    let mut addresses: Vec<Option<SocketAddr>> = vec![None; world];
    let mut refusal: Option<String> = None;
    while refusal.is_none() && peers[1..].iter().any(Option::is_none) {
        let (mut stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (1..world).filter(|&r| peers[r].is_none()).collect();
                    let error =
                        CollectiveError::Timeout { operation: OPERATION, rank: 0, world, waited: timeout, missing };
                    tell_all(peers, Err(&error.to_string()));
                    return Err(error);
                }
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(transport(format!("accept: {e}"))),
        };
        let configured = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(10))))
            .and_then(|()| Hello::read(&mut stream));
        let hello = match configured {
            Ok(Some(hello)) => hello,
            // Not a daa rank (or one that went away at once): not counted.
            Ok(None) | Err(_) => {
                eprintln!("warning: rendezvous: a connection from {from} was not a daa rank; ignored");
                continue;
            }
        };
        let problem = if hello.identity != identity {
            Some(format!("rank {} runs {} while rank 0 runs {identity}", hello.rank, hello.identity))
        } else if hello.world != world {
            Some(format!("rank {} says the world has {} ranks, rank 0 says {world}", hello.rank, hello.world))
        } else if hello.rank == 0 || hello.rank >= world {
            Some(format!("a process from {from} says it is rank {} of {world}", hello.rank))
        } else if peers[hello.rank].is_some() {
            Some(format!("two processes say they are rank {} (the second from {from})", hello.rank))
        } else {
            None
        };
        if let Some(problem) = problem {
            let mut stream = stream;
            let _ = send_table(&mut stream, Err(&problem));
            refusal = Some(problem);
            break;
        }
        addresses[hello.rank] = Some(SocketAddr::new(from.ip(), hello.port));
        peers[hello.rank] = Some(stream);
    }
    if let Some(problem) = refusal {
        tell_all(peers, Err(&problem));
        return Err(transport(problem));
    }
    // A rank on rank 0's machine may have come over the loopback; ranks on
    // other machines reach it at the address they reached rank 0 at.
    let external = peers
        .iter()
        .flatten()
        .filter(|s| s.peer_addr().is_ok_and(|a| !a.ip().is_loopback()))
        .find_map(|s| s.local_addr().ok().map(|a| a.ip()));
    if let Some(ip) = external {
        addresses.iter_mut().flatten().filter(|a| a.ip().is_loopback()).for_each(|a| a.set_ip(ip));
    }
    let table: String =
        addresses.iter().map(|a| a.map_or_else(|| "-".to_string(), |a| a.to_string())).collect::<Vec<_>>().join("\n");
    tell_all(peers, Ok(&table));
    Ok(())
}

/// Sends every connected rank the table or the error.
fn tell_all(peers: &mut [Option<TcpStream>], message: Result<&str, &str>) {
    for stream in peers.iter_mut().flatten() {
        let _ = send_table(stream, message);
    }
}

fn send_table(stream: &mut TcpStream, message: Result<&str, &str>) -> std::io::Result<()> {
    let (status, text) = match message {
        Ok(table) => (0u8, table),
        Err(error) => (1u8, error),
    };
    let mut bytes = vec![status];
    bytes.extend((text.len() as u64).to_le_bytes());
    bytes.extend(text.as_bytes());
    stream.write_all(&bytes)
}

/// Any other rank: listens, says hello to rank 0, reads the table, then
/// connects to the ranks below it and accepts the ranks above.
fn other_rank(
    rank: usize,
    world: usize,
    (host, port): (&str, u16),
    identity: &str,
    deadline: Instant,
    timeout: Duration,
    peers: &mut [Option<TcpStream>],
) -> Result<(), CollectiveError> {
    let listener =
        TcpListener::bind(("0.0.0.0", 0)).map_err(|e| transport(format!("rank {rank} cannot listen: {e}")))?;
    let own_port = listener.local_addr().map_err(|e| transport(e.to_string()))?.port();
    let mut first = connect_with_retries(host, port, deadline).map_err(|e| match e {
        None => CollectiveError::Timeout { operation: OPERATION, rank, world, waited: timeout, missing: vec![0] },
        Some(e) => transport(format!("rank {rank} cannot reach rank 0 at {host}:{port}: {e}")),
    })?;
    let hello = Hello { rank, world, port: own_port, identity: identity.to_string() };
    hello.write(&mut first).map_err(|e| transport(format!("rank {rank}: writing to rank 0: {e}")))?;
    let table = read_table(&mut first, deadline).map_err(|e| transport(format!("rank {rank}: {e}")))?;
    peers[0] = Some(first);
    for (lower, address) in table.iter().enumerate().take(rank).skip(1) {
        let address = address.ok_or_else(|| transport(format!("rank 0 sent no address for rank {lower}")))?;
        let mut stream = connect_with_retries(&address.ip().to_string(), address.port(), deadline).map_err(|e| {
            transport(format!(
                "rank {rank} cannot reach rank {lower} at {address}: {}",
                e.map_or("timed out".into(), |e| e.to_string())
            ))
        })?;
        stream
            .write_all(MAGIC)
            .and_then(|()| stream.write_all(&(rank as u64).to_le_bytes()))
            .map_err(|e| transport(format!("rank {rank}: writing to rank {lower}: {e}")))?;
        peers[lower] = Some(stream);
    }
    listener.set_nonblocking(true).map_err(|e| transport(e.to_string()))?;
    while peers[rank + 1..].iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut stream, from)) => {
                let mut head = [0u8; 16];
                let read = stream
                    .set_nonblocking(false)
                    .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(10))))
                    .and_then(|()| stream.read_exact(&mut head));
                let higher = u64::from_le_bytes(head[8..].try_into().expect("8 bytes")) as usize;
                if read.is_err() || &head[..8] != MAGIC || higher <= rank || higher >= world || peers[higher].is_some()
                {
                    eprintln!(
                        "warning: rendezvous: a connection from {from} to rank {rank} was not a daa rank; ignored"
                    );
                    continue;
                }
                peers[higher] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (rank + 1..world).filter(|&r| peers[r].is_none()).collect();
                    return Err(CollectiveError::Timeout {
                        operation: OPERATION,
                        rank,
                        world,
                        waited: timeout,
                        missing,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(transport(format!("rank {rank}: accept: {e}"))),
        }
    }
    Ok(())
}

/// Connects to `host:port`, retrying while nothing listens there yet:
/// `Err(None)` at the deadline, `Err(Some(_))` when the name does not
/// resolve.
fn connect_with_retries(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, Option<String>> {
    loop {
        let addresses: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
            Ok(addresses) => addresses.collect(),
            Err(e) if Instant::now() >= deadline => return Err(Some(format!("{host}: {e}"))),
            Err(_) => Vec::new(),
        };
        for address in &addresses {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
            if let Ok(stream) = TcpStream::connect_timeout(address, left.min(Duration::from_secs(5))) {
                return Ok(stream);
            }
        }
        if Instant::now() >= deadline {
            return Err(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rank 0's answer: every rank's address, or rank 0's error.
fn read_table(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<Option<SocketAddr>>, String> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
    stream.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).map_err(|e| format!("waiting for rank 0's address table: {e}"))?;
    let len = u64::from_le_bytes(head[1..].try_into().expect("8 bytes"));
    if len > 1 << 24 {
        return Err(format!("rank 0 sent a table of {len} bytes"));
    }
    let mut text = vec![0u8; len as usize];
    stream.read_exact(&mut text).map_err(|e| format!("reading rank 0's address table: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    if head[0] != 0 {
        return Err(format!("rank 0 stopped the rendezvous: {text}"));
    }
    text.lines()
        .map(|line| match line {
            "-" => Ok(None),
            address => {
                address.parse::<SocketAddr>().map(Some).map_err(|_| format!("rank 0 sent {address:?} for an address"))
            }
        })
        .collect()
}
