//! The network between the nodes: a fault-injecting TCP proxy in front of each node, on
//! 127.0.0.1 like everything else. Node `i` listens on its own address and advertises its
//! proxy's, so every connection to it from another node (Raft, snapshots, forwarded requests,
//! agent calls) goes through the proxy.
//!
//! A proxy learns which node dialed from the kernel, not from the bytes: it finds the
//! connecting socket's inode in `/proc/net/tcp` and the process whose descriptors hold it.
//! So it needs no knowledge of the wire format, and works as well under TLS. Connections from
//! processes that are not nodes (the clients) are never cut or delayed.
//!
//! A cut direction stops moving bytes (nothing is lost: they move again when it heals, as TCP
//! retransmits after a partition); the other direction of the same connection may go on, so
//! cuts can be one-way. A delay holds every chunk until its time has come, in order.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Rules {
    /// (from, to): bytes from node `from` to node `to` do not move.
    cut: BTreeSet<(usize, usize)>,
    /// How long every chunk between two nodes waits.
    delay: Duration,
    /// Each slot's node process and the address it listens on.
    pids: Vec<Option<u32>>,
    targets: Vec<String>,
    /// The proxies' accept loops, stopped by [`Net::close`].
    proxies: Vec<tokio::task::AbortHandle>,
}

/// The proxies of a cluster and the faults they inject.
#[derive(Debug, Clone, Default)]
pub struct Net {
    rules: Arc<Mutex<Rules>>,
}

impl Net {
    /// Starts the proxy of slot `slot` (a new one); returns the address nodes dial.
    pub async fn proxy(&self, slot: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        {
            let mut r = self.rules.lock().unwrap();
            if r.pids.len() <= slot {
                r.pids.resize(slot + 1, None);
                r.targets.resize(slot + 1, String::new());
            }
        }
        let net = self.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, peer)) = listener.accept().await {
                let net = net.clone();
                tokio::spawn(async move {
                    let from = net.slot_of(peer.port(), addr.port()).await;
                    net.relay(conn, from, slot).await;
                });
            }
        });
        self.rules.lock().unwrap().proxies.push(task.abort_handle());
        addr.to_string()
    }

    /// Stops every proxy's accept loop (relayed connections end with their nodes).
    pub fn close(&self) {
        for p in self.rules.lock().unwrap().proxies.drain(..) {
            p.abort();
        }
    }

    /// Slot `slot` is now process `pid`, listening on `target`.
    pub fn set_node(&self, slot: usize, pid: Option<u32>, target: &str) {
        let mut r = self.rules.lock().unwrap();
        r.pids[slot] = pid;
        r.targets[slot] = target.to_owned();
    }

    /// Cuts the bytes from each node in `from` to each node in `to`.
    pub fn cut(&self, from: &[usize], to: &[usize]) {
        let mut r = self.rules.lock().unwrap();
        for &f in from {
            for &t in to {
                if f != t {
                    r.cut.insert((f, t));
                }
            }
        }
    }

    pub fn set_delay(&self, delay: Duration) {
        self.rules.lock().unwrap().delay = delay;
    }

    /// No cuts, no delay.
    pub fn heal(&self) {
        let mut r = self.rules.lock().unwrap();
        r.cut.clear();
        r.delay = Duration::ZERO;
    }

    fn is_cut(&self, from: Option<usize>, to: Option<usize>) -> bool {
        match (from, to) {
            (Some(f), Some(t)) => self.rules.lock().unwrap().cut.contains(&(f, t)),
            _ => false,
        }
    }

    fn delay(&self, from: Option<usize>, to: Option<usize>) -> Duration {
        match (from, to) {
            (Some(_), Some(_)) => self.rules.lock().unwrap().delay,
            _ => Duration::ZERO,
        }
    }

    /// The slot of the node whose socket `127.0.0.1:port` dialed the proxy on `proxy_port`;
    /// `None` for a socket of this process (a client), or one already closed. Looked for
    /// again a few times when no process holds it yet.
    async fn slot_of(&self, port: u16, proxy_port: u16) -> Option<usize> {
        for _ in 0..3 {
            // Closed already (no inode): nobody to cut.
            let inode = socket_inode(port, proxy_port).filter(|&i| i != 0)?;
            let link = format!("socket:[{inode}]");
            let pids = self.rules.lock().unwrap().pids.clone();
            let slot = pids
                .iter()
                .position(|pid| pid.is_some_and(|pid| holds(pid, &link)));
            if slot.is_some() || holds(std::process::id(), &link) {
                return slot;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    async fn relay(&self, inbound: TcpStream, from: Option<usize>, to: usize) {
        let target = self.rules.lock().unwrap().targets[to].clone();
        let Ok(outbound) = TcpStream::connect(&target).await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        let there = tokio::spawn(self.clone().pump(in_read, out_write, from, Some(to)));
        let back = tokio::spawn(self.clone().pump(out_read, in_write, Some(to), from));
        let _ = there.await;
        let _ = back.await;
    }

    /// Moves bytes one way, each chunk when its delay has passed and its direction is not cut.
    async fn pump(
        self,
        mut read: tokio::net::tcp::OwnedReadHalf,
        mut write: tokio::net::tcp::OwnedWriteHalf,
        from: Option<usize>,
        to: Option<usize>,
    ) {
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        while let Some((read_at, chunk)) = rx.recv().await {
            while self.is_cut(from, to) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep_until(read_at + self.delay(from, to)).await;
            if write.write_all(&chunk).await.is_err() {
                break;
            }
        }
        reader.abort();
        let _ = write.shutdown().await;
    }
}

/// Whether process `pid` has a descriptor on `link` (`socket:[inode]`).
fn holds(pid: u32, link: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == link))
}

/// The inode of the socket bound to `127.0.0.1:port` and connected to `127.0.0.1:remote`.
/// The table is read only up to the socket's line: the kernel writes it as it is read, and
/// it holds every socket of the machine.
fn socket_inode(port: u16, remote: u16) -> Option<u64> {
    use std::io::BufRead;
    let table = std::io::BufReader::new(std::fs::File::open("/proc/net/tcp").ok()?);
    let addrs = format!("0100007F:{port:04X} 0100007F:{remote:04X}");
    table
        .lines()
        .skip(1)
        .map_while(Result::ok)
        .find_map(|line| {
            if !line.contains(&addrs) {
                return None;
            }
            line.split_whitespace().nth(9)?.parse().ok()
        })
}
