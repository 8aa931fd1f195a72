//! What this node and the cluster report (`status`, `cluster status`).

use super::*;

impl Node {
    /// Asks every member (this node included) for its own status, all at once.
    pub(super) async fn cluster_status_now(&self) -> ClusterStatus {
        let mine = self.node_status();
        let asks = mine.members.iter().map(|m| {
            let member = m.clone();
            let mine = mine.clone();
            async move {
                let status = if member.id == self.inner.core.id {
                    Ok(mine)
                } else {
                    match self
                        .inner
                        .core
                        .pool
                        .client_call(&member.addr, &ClientRequest::Status, Duration::from_secs(3))
                        .await
                    {
                        Ok(ClientReply::Status(s)) => Ok(s),
                        Ok(other) => Err(Error::Protocol(format!(
                            "a status request answered {other:?}"
                        ))),
                        Err(e) => Err(unavailable(e)),
                    }
                };
                MemberReport { member, status }
            }
        });
        let nodes = futures_util::future::join_all(asks).await;
        ClusterStatus {
            leader: mine.leader,
            term: mine.term,
            nodes,
        }
    }

    /// This node's view of itself and the cluster.
    pub fn node_status(&self) -> NodeStatus {
        let m = self.inner.core.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let role = match m.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower if !voters.contains(&self.inner.core.id) => Role::Learner,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let size = |name: &str| {
            std::fs::metadata(self.inner.core.config.data_dir.join(name)).map_or(0, |m| m.len())
        };
        NodeStatus {
            id: self.inner.core.id,
            addr: self.inner.addr.clone(),
            role,
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed: m.local_committed.map_or(0, |l| l.index),
            applied: m.last_applied.map_or(0, |l| l.index),
            members,
            state_file_bytes: size(restore::STATE_FILE),
            log_file_bytes: size(restore::LOG_FILE),
            log_fsyncs: self
                .inner
                .log_stats
                .fsyncs
                .load(std::sync::atomic::Ordering::Relaxed),
            log_entries: self
                .inner
                .log_stats
                .entries
                .load(std::sync::atomic::Ordering::Relaxed),
            secure: self.inner.tls.is_some(),
        }
    }
}
