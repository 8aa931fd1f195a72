//! A cluster of real nodes on 127.0.0.1, each on a port the OS picks, in a temporary directory
//! removed at the end.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use metakv::{ClientCreds, Consistency, Kv, Node, NodeConfig, Record, Role, store::Expect};

pub mod disk;
pub mod gate;
pub mod rng;

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Option<Node>>,
    /// Each node's address: a restarted node listens there again, since the membership names it.
    pub addrs: Vec<String>,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Quick timings, so that elections in tests take a fraction of a second.
pub fn config(dir: &std::path::Path, id: u64, join: Option<String>) -> NodeConfig {
    let mut c = NodeConfig::new(id, dir.join(format!("node{id}")), "127.0.0.1:0");
    c.join = join;
    c.heartbeat_ms = 50;
    c.election_timeout_min_ms = 250;
    c.election_timeout_max_ms = 500;
    // GC runs when a test asks, on tombstones of any age, in small pages and batches so that
    // a job of a few thousand tombstones goes through every step many times.
    c.gc.interval_ms = 0;
    c.gc.tombstone_threshold = 0;
    c.gc.min_age_ms = 0;
    c.gc.page_size = 200;
    c.gc.purge_batch = 100;
    c.gc.call_timeout_ms = 5_000;
    // Pauses may write anywhere under the test's directory.
    c.hibernation.archive_roots = vec![dir.display().to_string()];
    c
}

impl Cluster {
    /// Node 1 initializes; the others join through it.
    pub async fn start(n: u64) -> Cluster {
        Cluster::start_with(n, |_| {}).await
    }

    pub async fn start_with(n: u64, tune: impl Fn(&mut NodeConfig)) -> Cluster {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), 1, None);
        tune(&mut c);
        let first = Node::start(c).await.unwrap();
        let seed = first.addr().to_owned();
        let mut nodes = vec![Some(first)];
        for id in 2..=n {
            let mut c = config(dir.path(), id, Some(seed.clone()));
            c.join_token = Some(token(nodes[0].as_ref().unwrap()).await);
            tune(&mut c);
            nodes.push(Some(Node::start(c).await.unwrap()));
        }
        tracing::info!("--- cluster of {n} up");
        let addrs = nodes
            .iter()
            .flatten()
            .map(|n| n.addr().to_owned())
            .collect();
        Cluster { dir, nodes, addrs }
    }

    /// The admin credentials node 1 made.
    pub fn creds(&self) -> ClientCreds {
        creds(self.dir.path())
    }

    /// An admin client through `endpoints`.
    pub fn client(&self, endpoints: Vec<String>) -> metakv::Client {
        client(self.dir.path(), endpoints)
    }

    /// A join token from any running node, for a node that joins later.
    pub async fn token(&self) -> String {
        token(self.running().next().expect("a running node")).await
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes[id as usize - 1]
            .as_ref()
            .expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten()
    }

    /// Waits until some running node is leader and every running node agrees; returns its id.
    pub async fn leader(&self) -> u64 {
        for _ in 0..200 {
            let statuses: Vec<_> = self.running().map(|n| n.node_status()).collect();
            if let Some(l) = statuses.iter().find(|s| s.role == Role::Leader)
                && statuses.iter().all(|s| s.leader == Some(l.id))
            {
                return l.id;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no agreed leader");
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn applied(&self, index: u64) {
        for _ in 0..400 {
            if self.running().all(|n| n.node_status().applied >= index) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let seen: Vec<_> = self
            .running()
            .map(|n| (n.id(), n.node_status().applied))
            .collect();
        panic!("not every node applied {index}: {seen:?}");
    }

    pub async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.shutdown().await;
        }
    }

    pub async fn restart(&mut self, id: u64) {
        assert!(self.nodes[id as usize - 1].is_none());
        let mut c = config(self.dir.path(), id, None);
        c.listen = self.addrs[id as usize - 1].clone();
        let node = Node::start(c).await.unwrap();
        self.nodes[id as usize - 1] = Some(node);
    }

    pub async fn shutdown(mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.stop(id).await;
        }
    }
}

/// A join token made through `node`, valid for ten minutes.
pub async fn token<K: Kv>(node: &K) -> String {
    node.join_token(Duration::from_secs(600))
        .await
        .expect("a join token")
        .token
}

/// The admin credentials of the cluster whose first node's data dir is `dir/node1` (or the
/// first `dir/node<id>` that has them).
pub fn creds(dir: &Path) -> ClientCreds {
    ClientCreds::load(&creds_path(dir)).expect("admin credentials")
}

/// Where the admin credentials of the cluster in `dir` are.
pub fn creds_path(dir: &Path) -> std::path::PathBuf {
    (1..=16)
        .map(|id| dir.join(format!("node{id}")).join(metakv::tls::ADMIN_CREDS))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no admin.creds under {}", dir.display()))
}

/// An admin client of the cluster in `dir` through `endpoints`.
pub fn client(dir: &Path, endpoints: Vec<String>) -> metakv::Client {
    metakv::Client::new(endpoints, "metakv", &creds(dir)).expect("a client")
}

/// A join token from the binary (`metakv cluster join-token`) through `seed`, with the admin
/// credentials of the cluster in `dir`.
pub fn cli_token(dir: &Path, seed: &str) -> String {
    // Through the seed, or any node already started in `dir`: a seed started at the same
    // moment as its joiner (`--join` a node that is coming up) cannot answer yet.
    let mut endpoints = vec![seed.to_owned()];
    endpoints.extend(
        served_from()
            .lock()
            .unwrap()
            .iter()
            .filter(|(addr, d)| d.as_path() == dir && *addr != seed)
            .map(|(addr, _)| addr.clone()),
    );
    cli_token_with(&creds_path(dir), &endpoints.join(","))
}

/// The same with the credentials at `creds`, through `endpoints` (comma-separated).
pub fn cli_token_with(creds: &Path, endpoints: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_metakv"))
        .args(["--endpoint", endpoints, "--creds"])
        .arg(creds)
        .args(["cluster", "join-token", "--ttl", "10m"])
        .output()
        .expect("metakv cluster join-token runs");
    assert!(
        out.status.success(),
        "cluster join-token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The applied index every running node must reach after the last write through `node`.
pub async fn applied_on(node: &Node) -> u64 {
    node.status().await.unwrap().applied
}

/// A node process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `metakv serve` and reads the address it listens on from its first line.
pub fn serve(dir: &Path, id: u64, listen: &str, join: Option<&str>) -> Proc {
    serve_args(dir, id, &node_args(dir, id, listen, join))
}

/// `serve`'s arguments for node `id` in `dir/node<id>`, listening on `listen`, joining `join`.
pub fn node_args(dir: &Path, id: u64, listen: &str, join: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--id".to_owned(),
        id.to_string(),
        "--listen".to_owned(),
        listen.to_owned(),
        "--data-dir".to_owned(),
        dir.join(format!("node{id}")).display().to_string(),
        "--archive-root".to_owned(),
        dir.display().to_string(),
    ];
    if let Some(seed) = join {
        args.extend(["--join".to_owned(), seed.to_owned()]);
        // A new node gets its certificate with a token; a restarted one has it.
        if !dir.join(format!("node{id}")).join("tls").exists() {
            args.extend(["--token".to_owned(), cli_token(dir, seed)]);
        }
    }
    args
}

/// Starts `metakv serve ARGS`, logging to `dir/node<id>.log`, and reads the address it
/// listens on from its first line ("... listening on ADDR[, advertised as OTHER]").
pub fn serve_args(dir: &Path, id: u64, args: &[String]) -> Proc {
    try_serve_args(dir, id, args).unwrap_or_else(|e| panic!("{e}"))
}

/// The same; a node that does not come up is an `Err` with its log.
pub fn try_serve_args(dir: &Path, id: u64, args: &[String]) -> Result<Proc, String> {
    try_serve_args_then(dir, id, args, |_| {})
}

/// The same, telling `spawned` the process id as soon as the process exists (before it
/// listens).
pub fn try_serve_args_then(
    dir: &Path,
    id: u64,
    args: &[String],
    spawned: impl FnOnce(u32),
) -> Result<Proc, String> {
    // Appended to: a node restarted on its files keeps the log of its earlier lives.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("node{id}.log")))
        .map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_metakv"));
    cmd.arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    spawned(child.id());
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
    let addr = line
        .split_once(" listening on ")
        .map(|(_, rest)| rest.trim().split(',').next().unwrap_or_default())
        .unwrap_or_default()
        .to_owned();
    let proc = Proc { child, addr };
    if proc.addr.starts_with("127.0.0.1:") {
        served_from()
            .lock()
            .unwrap()
            .insert(proc.addr.clone(), dir.to_owned());
    }
    if !proc.addr.starts_with("127.0.0.1:") {
        return Err(format!(
            "node {id} printed {line:?}; log: {}",
            std::fs::read_to_string(dir.join(format!("node{id}.log"))).unwrap_or_default()
        ));
    }
    Ok(proc)
}

/// Writes `n` records to `bucket` and deletes all but every `keep_every`-th; returns the keys
/// kept.
pub async fn load(node: &Node, bucket: &str, n: usize, keep_every: usize) -> Vec<Vec<u8>> {
    node.create_bucket(bucket).await.unwrap();
    let value = vec![7u8; 200];
    let keys: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("user/{i:06}").into_bytes())
        .collect();
    // 32 writers at a time: the log commits them in groups.
    for chunk in keys.chunks(32) {
        let puts = chunk
            .iter()
            .map(|k| node.put(bucket, k, &value, Expect::Any));
        for r in futures_util::future::join_all(puts).await {
            r.unwrap();
        }
    }
    let (kept, gone): (Vec<_>, Vec<_>) = keys
        .into_iter()
        .enumerate()
        .partition(|(i, _)| i % keep_every == 0);
    for chunk in gone.chunks(32) {
        let deletes = chunk
            .iter()
            .map(|(_, k)| node.delete(bucket, k, Expect::Any));
        for r in futures_util::future::join_all(deletes).await {
            r.unwrap();
        }
    }
    kept.into_iter().map(|(_, k)| k).collect()
}

/// Every record of `bucket` on `node`'s own copy, tombstones included (`node`: a `Node`, or a
/// `Client` through that node only).
pub async fn local_records<K: Kv>(node: &K, bucket: &str) -> Vec<(Vec<u8>, Record)> {
    try_local_records(node, bucket).await.unwrap()
}

/// The same, or why it could not be read.
pub async fn try_local_records<K: Kv>(
    node: &K,
    bucket: &str,
) -> metakv::Result<Vec<(Vec<u8>, Record)>> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = node
            .scan(bucket, b"", after.clone(), 1000, true, Consistency::Local)
            .await?;
        out.extend(page.items);
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

/// A cluster of `metakv serve` processes: node 1 initializes, the others join through it.
pub struct ProcCluster {
    pub procs: Vec<Proc>,
    /// The admin credentials node 1 made.
    pub creds: ClientCreds,
}

impl ProcCluster {
    pub fn start(dir: &Path, n: u64) -> ProcCluster {
        ProcCluster::start_args(dir, n, &[])
    }

    /// The same, with `extra` arguments to every `serve`.
    pub fn start_args(dir: &Path, n: u64, extra: &[String]) -> ProcCluster {
        let args = |id: u64, join: Option<&str>| {
            let mut a = node_args(dir, id, "127.0.0.1:0", join);
            a.extend(extra.iter().cloned());
            a
        };
        let mut procs = vec![serve_args(dir, 1, &args(1, None))];
        let seed = procs[0].addr.clone();
        for id in 2..=n {
            procs.push(serve_args(dir, id, &args(id, Some(&seed))));
        }
        ProcCluster {
            procs,
            creds: creds(dir),
        }
    }

    /// A client through every node.
    pub fn client(&self) -> metakv::Client {
        self.client_via(self.procs.iter().map(|p| p.addr.clone()).collect())
    }

    /// A client through `endpoints` only.
    pub fn client_via(&self, endpoints: Vec<String>) -> metakv::Client {
        metakv::Client::new(endpoints, "metakv", &self.creds).expect("a client")
    }

    /// The index in `procs` of the node that leads, once one does (30 s at most).
    pub async fn leader(&self) -> usize {
        for _ in 0..300 {
            for (i, p) in self.procs.iter().enumerate() {
                let status = self
                    .client_via(vec![p.addr.clone()])
                    .with_timeout(Duration::from_secs(1))
                    .status()
                    .await;
                if status.is_ok_and(|s| s.role == Role::Leader) {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no node leads after 30 s");
    }
}

/// The transport of node `as_id` of the cluster in `dir`, with a certificate issued by the
/// cluster CA (node 1's): what a member, a removed member or an impostor with a stolen CA
/// would present.
pub fn node_tls(dir: &Path, as_id: u64) -> metakv_raft::secure::TransportTls {
    let subject = |id| metakv::tls::Subject::Node {
        cluster: "metakv".into(),
        id,
    };
    let first = metakv::tls::NodeTls::load(&dir.join("node1"), &subject(1)).expect("node 1's TLS");
    let node = first.ca.issue(&subject(as_id), Some("127.0.0.1")).unwrap();
    metakv::tls::NodeTls { ca: first.ca, node }
        .transport("metakv")
        .unwrap()
}

/// The admin's client transport for the cluster in `dir`.
pub fn admin_tls(dir: &Path) -> metakv_raft::secure::TransportTls {
    creds(dir).transport("metakv").unwrap()
}

/// A TLS connection to `addr` with `tls`, before any hello.
pub async fn tls_stream(
    addr: &str,
    tls: &metakv_raft::secure::TransportTls,
) -> std::io::Result<metakv_raft::secure::Stream> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tls.connect(tcp).await.map(|(stream, _)| stream)
}

/// The test dir each node started by [`try_serve_args_then`] runs in, by address.
fn served_from() -> &'static std::sync::Mutex<std::collections::HashMap<String, std::path::PathBuf>>
{
    static SERVED: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, std::path::PathBuf>>,
    > = std::sync::OnceLock::new();
    SERVED.get_or_init(Default::default)
}

/// The admin credentials of the cluster a node started here at `addr` (any of a
/// comma-separated list) belongs to.
pub fn creds_for(addr: &str) -> Option<std::path::PathBuf> {
    let served = served_from().lock().unwrap();
    let dir = addr
        .split(',')
        .find_map(|a| served.get(a.trim()).cloned())?;
    drop(served);
    (1..=16)
        .map(|id| dir.join(format!("node{id}")).join(metakv::tls::ADMIN_CREDS))
        .find(|p| p.exists())
}
