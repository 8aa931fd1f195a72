//! The cluster under test: `metakv serve` processes in slots. A slot has a data dir, an
//! address its node listens on (the clients dial it directly) and a proxy the node advertises
//! (the other nodes dial that, see [`crate::net`]). A slot keeps its addresses for the whole
//! run; the node in it changes when it is replaced by a wiped one with a new id.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metakv::{Client, ClientCreds, Kv, NodeStatus, Role};

use crate::common::disk::Tmpfs;
use crate::common::{Proc, try_serve_args_then};
use crate::net::Net;

/// The slot whose data dir is a small tmpfs of its own, for the full-disk fault.
pub const DISK_SLOT: usize = 2;
const DISK_BYTES: u64 = 512 << 20;

pub struct Slot {
    pub id: u64,
    /// `None` while the node is down, and after it was removed.
    pub proc: Option<Proc>,
    /// Where its node listens (the clients' endpoint).
    pub listen: String,
    /// Its proxy: the address the node advertises.
    pub advertise: String,
    /// A member of the cluster (a removed node's slot is not).
    pub member: bool,
}

pub struct Nodes {
    pub dir: PathBuf,
    pub net: Net,
    pub slots: Vec<Slot>,
    next_id: u64,
    /// The tmpfs of [`DISK_SLOT`], when this process may mount one (it needs root).
    pub disk: Result<Tmpfs, String>,
    /// The admin credentials the first node made (kept beside the slots: its slot may be
    /// wiped); `None` until it has started.
    creds: Option<ClientCreds>,
}

impl Nodes {
    /// `n` nodes: slot 0's node initializes the cluster, and the others all join through its
    /// proxy at the same instant (as a `docker compose up` starts them).
    pub async fn start(dir: &Path, n: usize) -> Nodes {
        let disk = Tmpfs::try_mount(&dir.join(format!("slot{DISK_SLOT}")), DISK_BYTES);
        let mut nodes = Nodes {
            dir: dir.to_owned(),
            net: Net::default(),
            slots: Vec::new(),
            next_id: 1,
            disk,
            creds: None,
        };
        nodes
            .add()
            .await
            .expect("the first node of the cluster starts");
        let made = nodes.data_dir(0).join(metakv::tls::ADMIN_CREDS);
        std::fs::copy(&made, nodes.creds_path()).expect("the first node made admin.creds");
        nodes.creds = Some(ClientCreds::load(&nodes.creds_path()).expect("admin credentials"));
        nodes
            .add_together(n - 1)
            .await
            .expect("the nodes of the first cluster join together");
        nodes
    }

    /// The admin credentials of the run's cluster.
    pub fn creds(&self) -> &ClientCreds {
        self.creds.as_ref().expect("the first node has started")
    }

    /// Where the run keeps the admin credentials.
    pub fn creds_path(&self) -> PathBuf {
        self.dir.join(metakv::tls::ADMIN_CREDS)
    }

    pub fn data_dir(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("slot{slot}"))
    }

    /// An id no node of this run has had.
    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    /// Starts a new node in a new slot, joining through a member's proxy (none for the first).
    pub async fn add(&mut self) -> Result<usize, String> {
        Ok(self.add_together(1).await?[0])
    }

    /// Starts `k` new nodes in new slots at the same instant, each joining through a member's
    /// proxy (none for the first node of a run); answers their slots once every one has
    /// joined, or the first failure.
    pub async fn add_together(&mut self, k: usize) -> Result<Vec<usize>, String> {
        let seed = self
            .members()
            .next()
            .map(|s| self.slots[s].advertise.clone());
        let mut new = Vec::new();
        for _ in 0..k {
            let slot = self.slots.len();
            let advertise = self.net.proxy(slot).await;
            let id = self.fresh_id();
            // Chosen before the node starts: its proxy must know where to relay while it
            // joins (the node prints its address only once it has joined).
            let listen = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| e.to_string())?
                .to_string();
            self.slots.push(Slot {
                id,
                proc: None,
                listen,
                advertise,
                member: false,
            });
            new.push(slot);
        }
        let launches: Vec<_> = new
            .iter()
            .map(|&slot| (slot, self.launch_args(slot, seed.clone())))
            .collect();
        let (dir, net, slots) = (&self.dir, &self.net, &self.slots);
        let started = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let handles: Vec<_> = launches
                    .iter()
                    .map(|(slot, args)| {
                        let s = &slots[*slot];
                        let net = net.clone();
                        scope.spawn(move || {
                            let spawned = |pid| net.set_node(*slot, Some(pid), &s.listen);
                            try_serve_args_then(dir, s.id, args, spawned)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a launching thread does not panic"))
                    .collect::<Vec<_>>()
            })
        });
        let mut failed = None;
        for (&slot, proc) in new.iter().zip(started) {
            match proc {
                Ok(proc) => {
                    let s = &mut self.slots[slot];
                    s.member = true;
                    s.proc = Some(proc);
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(new),
        }
    }

    fn launch_args(&self, slot: usize, seed: Option<String>) -> Vec<String> {
        let s = &self.slots[slot];
        let mut args = vec![
            "--id".to_owned(),
            s.id.to_string(),
            "--listen".to_owned(),
            s.listen.clone(),
            "--advertise".to_owned(),
            s.advertise.clone(),
            "--data-dir".to_owned(),
            self.data_dir(slot).display().to_string(),
            "--archive-root".to_owned(),
            self.dir.display().to_string(),
        ];
        if let Some(seed) = seed {
            args.extend(["--join".to_owned(), seed]);
            // A new node (or a wiped one) gets its certificate with a token; a restarted
            // one has it.
            if !self.data_dir(slot).join("tls").exists() {
                let members: Vec<String> = self
                    .members()
                    .map(|m| self.slots[m].listen.clone())
                    .collect();
                let token = tokio::task::block_in_place(|| {
                    crate::common::cli_token_with(&self.creds_path(), &members.join(","))
                });
                args.extend(["--token".to_owned(), token]);
            }
        }
        args
    }

    /// Starts slot `slot`'s node on its files and addresses, or joining `seed` (a new node).
    pub fn launch(&mut self, slot: usize, seed: Option<String>) -> Result<(), String> {
        let args = self.launch_args(slot, seed);
        let s = &self.slots[slot];
        // The proxies know the process before it dials anyone: a connection it opens while it
        // starts is its own, and is cut like any other.
        let net = self.net.clone();
        let spawned = |pid| net.set_node(slot, Some(pid), &s.listen);
        let proc =
            tokio::task::block_in_place(|| try_serve_args_then(&self.dir, s.id, &args, spawned))?;
        let s = &mut self.slots[slot];
        s.member = true;
        s.proc = Some(proc);
        Ok(())
    }

    /// Restarts slot `slot`'s node on its files, trying for up to 10 s (a port freed by a
    /// killed process can take a moment to bind again).
    pub async fn restart(&mut self, slot: usize) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..20 {
            match self.launch(slot, None) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err(last)
    }

    /// `kill -9` of slot `slot`'s node.
    pub fn kill(&mut self, slot: usize) {
        if let Some(mut p) = self.slots[slot].proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.net
            .set_node(slot, None, &self.slots[slot].listen.clone());
    }

    /// Whether slot `slot`'s process is still running (a node whose disk failed exits).
    pub fn running(&mut self, slot: usize) -> bool {
        self.slots[slot]
            .proc
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// The slots of members, in order.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.slots.len()).filter(|&s| self.slots[s].member)
    }

    /// A client through slot `slot`'s node only.
    pub fn client_of(&self, slot: usize, timeout: Duration) -> Client {
        self.client_to(vec![self.slots[slot].listen.clone()])
            .with_timeout(timeout)
    }

    /// A client through every member.
    pub fn client(&self) -> Client {
        self.client_to(
            self.members()
                .map(|s| self.slots[s].listen.clone())
                .collect(),
        )
    }

    /// An admin client through `endpoints`.
    pub fn client_to(&self, endpoints: Vec<String>) -> Client {
        Client::new(endpoints, "metakv", self.creds()).expect("a client")
    }

    pub async fn status(&self, slot: usize) -> Option<NodeStatus> {
        self.client_of(slot, Duration::from_secs(1))
            .status()
            .await
            .ok()
    }

    /// The slot of the member that leads in the highest term any member reports, once one
    /// does (30 s at most). A leader cut off from the others may still think it leads in an
    /// older term; it is not the one.
    pub async fn leader(&self) -> usize {
        self.try_leader().await.expect("no member leads after 30 s")
    }

    /// [`Nodes::leader`], or `None` if no member leads in the highest term for 30 s.
    pub async fn try_leader(&self) -> Option<usize> {
        for _ in 0..300 {
            let mut best: Option<(u64, usize)> = None;
            let mut term = 0;
            for s in self.members() {
                if let Some(st) = self.status(s).await {
                    term = term.max(st.term);
                    if st.role == Role::Leader && best.is_none_or(|(t, _)| st.term > t) {
                        best = Some((st.term, s));
                    }
                }
            }
            if let Some((t, s)) = best
                && t == term
            {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// The leader's slot once the cluster has healed from the last fault: a member leads in
    /// the highest term, and every member answers, knows that leader and has applied what the
    /// leader had committed when the check began. A fault struck before that would meet the
    /// last one still in effect (a follower paused while another catches up leaves no quorum),
    /// and its timings would be the last one's. After 30 s it gives up waiting for the
    /// stragglers and answers the leader; the end of the run checks every copy anyway. `None`
    /// if no member leads for 30 s: the cluster did not heal.
    pub async fn healed(&self) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let leader = self.try_leader().await?;
            let Some(ls) = self.status(leader).await else {
                if tokio::time::Instant::now() >= deadline {
                    return Some(leader);
                }
                continue;
            };
            let mut caught_up = true;
            for s in self.members().filter(|&s| s != leader) {
                caught_up &= self.status(s).await.is_some_and(|st| {
                    st.leader == Some(ls.id) && st.term == ls.term && st.applied >= ls.committed
                });
            }
            if caught_up || tokio::time::Instant::now() >= deadline {
                return Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `nth` member (modulo their number).
    pub fn nth_member(&self, nth: usize) -> usize {
        let members: Vec<usize> = self.members().collect();
        members[nth % members.len()]
    }

    /// A member other than `leader` (the next one after it).
    pub fn follower_of(&self, leader: usize) -> usize {
        let members: Vec<usize> = self.members().collect();
        let at = members.iter().position(|&s| s == leader).unwrap_or(0);
        members[(at + 1) % members.len()]
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        // The processes first, so that the tmpfs is no longer in use when it is unmounted.
        for s in &mut self.slots {
            s.proc = None;
        }
        self.net.close();
    }
}
