//! Membership changes on the leader, one at a time.
//!
//! openraft changes voters in two steps (a joint config, then the uniform one), and a second
//! change that lands between the two steps of the first fails the first's second step: with
//! nodes 2 and 3 joining at once, node 3's `add_learner` flattened node 2's joint config, node
//! 2's promotion answered "last membership log id mismatch" although node 2 was a voter, and
//! node 2's retry met the guard against wiped nodes ("already a voter"). So:
//!
//! - every change on this node (a join, a promotion, a removal, an address update) takes the
//!   node's membership turn ([`Inner::membership`]), waiting at most `request_timeout` for it;
//! - a change that fails is settled: a joint config it left is finished (openraft flattens a
//!   joint config toward its last half), and the answer says what holds afterwards, so a
//!   change ends done or undone, never half done;
//! - a join names its node's incarnation (drawn on the node's first start, kept in its data
//!   dir, `identity`), recorded in `_sys` under `member/<id>` before the node becomes a learner.
//!   A join retried by the same incarnation is answered with the join's outcome; a voter's id
//!   joining with another incarnation (a node that lost its files) is refused as before.
//!
//! ```text
//!  _sys "member/<id, 20 decimal digits>" -> MemberRecord (format 1), sealed:
//!  +---------+-----------------------------------------------+--------+
//!  | version | postcard { incarnation: varint u64,            | crc32  |
//!  |  u8 = 1 |            addr: varint len | utf-8 }           | u32 LE |
//!  +---------+-----------------------------------------------+--------+
//! ```

use serde::{Deserialize, Serialize};

use super::*;

/// Where member records live in `_sys`.
pub const MEMBER_KEY_PREFIX: &[u8] = b"member/";
/// Format of a sealed [`MemberRecord`]. Changing its fields is a format change.
pub const MEMBER_RECORD_FORMAT: u8 = 1;

/// What the cluster knows of a member beyond openraft's membership: the incarnation of the
/// data dir that joined under its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    pub(crate) incarnation: u64,
    pub(crate) addr: String,
}

pub(crate) fn member_key(id: u64) -> Vec<u8> {
    let mut key = MEMBER_KEY_PREFIX.to_vec();
    key.extend_from_slice(format!("{id:020}").as_bytes());
    key
}

impl MemberRecord {
    fn encode(&self) -> Vec<u8> {
        metakv_store::codec::seal(MEMBER_RECORD_FORMAT, self)
    }

    fn decode(id: u64, bytes: &[u8]) -> Result<MemberRecord> {
        metakv_store::codec::unseal(MEMBER_RECORD_FORMAT, bytes).map_err(|reason| {
            Error::Storage(format!(
                "the member record of node {id} is unreadable ({reason}): damaged, or written \
                 by a metakv whose format this one does not read"
            ))
        })
    }
}

/// A member as this node's effective membership has it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    Voter(String),
    Learner(String),
    Absent,
}

/// The answer to a membership request made on this node: the reply, or the leader to ask.
type Answer = std::result::Result<Result<ClientReply>, Redirect>;

impl Node {
    /// Waits (at most `request_timeout`) for this node's membership turn: no other change
    /// runs on this node until the guard drops.
    async fn membership_turn(&self) -> Result<tokio::sync::MutexGuard<'_, ()>> {
        let bound = self.inner.core.config.request_timeout;
        tokio::time::timeout(bound, self.inner.membership.lock())
            .await
            .map_err(|_| {
                Error::Busy(format!(
                    "another membership change held the leader for {bound:?}; try again"
                ))
            })
    }

    /// On the leader: its membership turn, with any joint config settled; the leader to ask
    /// if this node does not lead (before or after the wait).
    async fn leader_turn(
        &self,
    ) -> std::result::Result<Result<tokio::sync::MutexGuard<'_, ()>>, Redirect> {
        self.lead_here()?;
        let turn = match self.membership_turn().await {
            Ok(turn) => turn,
            Err(e) => return Ok(Err(e)),
        };
        self.lead_here()?;
        Ok(self.settle().await.map(|()| turn))
    }

    fn standing(&self, id: u64) -> Standing {
        let m = self.inner.core.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let addr = membership.get_node(&id).map(|n| n.addr.clone());
        match (membership.voter_ids().any(|v| v == id), addr) {
            (true, addr) => Standing::Voter(addr.unwrap_or_default()),
            (false, Some(addr)) => Standing::Learner(addr),
            (false, None) => Standing::Absent,
        }
    }

    fn joint(&self) -> bool {
        let m = self.inner.core.raft.metrics().borrow_watched().clone();
        m.membership_config.membership().get_joint_config().len() > 1
    }

    /// The member record of node `id`, as of a linearizable read.
    async fn member_record(
        &self,
        id: u64,
    ) -> std::result::Result<Result<Option<MemberRecord>>, Redirect> {
        self.inner.core.linearize(Consistency::Linearizable).await?;
        let key = member_key(id);
        let read = self
            .inner
            .core
            .local(move |s| s.read()?.get(SYS_BUCKET, &key, false))
            .await;
        Ok(read.and_then(|r| r.map(|r| MemberRecord::decode(id, &r.value)).transpose()))
    }

    async fn write_member_record(&self, id: u64, record: &MemberRecord) -> Result<()> {
        let op = Op::Put {
            bucket: SYS_BUCKET.into(),
            key: member_key(id),
            value: record.encode(),
            expect: metakv_store::Expect::Any,
        };
        self.inner
            .core
            .propose_here(op, Some(self.inner.core.config.request_timeout))
            .await
            .map(|_| ())
    }

    /// Adds node `id` at `addr` (see the module docs): a learner first, a voter once it has
    /// acknowledged the entry that added it. A learner that does not within `request_timeout`
    /// is removed again, so a node that is not there never counts toward a quorum.
    pub(super) async fn join(&self, id: u64, addr: String, incarnation: Option<u64>) -> Answer {
        let _turn = match self.leader_turn().await? {
            Ok(turn) => turn,
            Err(e) => return Ok(Err(e)),
        };
        let standing = self.standing(id);
        if let Standing::Voter(known) = &standing {
            let record = match self.member_record(id).await? {
                Ok(record) => record,
                Err(e) => return Ok(Err(e)),
            };
            return match (incarnation, record) {
                (Some(asked), Some(r)) if r.incarnation == asked => {
                    // The same node asking again: its answer was lost, or it moved.
                    if *known == addr {
                        Ok(Ok(ClientReply::Done))
                    } else {
                        self.move_member(id, asked, addr).await
                    }
                }
                _ => Ok(Err(Error::invalid(format!(
                    "node {id} is already a voter (at {known}); a node that lost its data dir \
                     must be removed before it joins again: `metakv cluster remove-node {id}`"
                )))),
            };
        }
        if let Some(incarnation) = incarnation {
            let record = MemberRecord {
                incarnation,
                addr: addr.clone(),
            };
            if let Err(e) = self.write_member_record(id, &record).await {
                return leader_only(Err(e));
            }
        }
        let raft = &self.inner.core.raft;
        let added = match raft
            .add_learner(id, NodeAddr { addr: addr.clone() }, false)
            .await
        {
            Ok(r) => r.log_id,
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                return Err(redirect(f.leader_id, f.leader_node));
            }
            Err(e) => return Ok(Err(self.settled(e.to_string()).await)),
        };
        let bound = self.inner.core.config.request_timeout;
        let caught_up = raft
            .wait(Some(bound))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|matched| matched.index >= added.index)
                },
                "the new learner to acknowledge its addition",
            )
            .await;
        if caught_up.is_err() {
            let removed = raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await;
            let undo = match removed {
                Ok(_) => "it was removed again".to_owned(),
                Err(e) => format!("removing it again failed too: {e}"),
            };
            return Ok(Err(Error::Unavailable(format!(
                "node {id} at {addr} did not catch up within {bound:?} (is it running, and does \
                 it listen there?); {undo}"
            ))));
        }
        self.change(
            ChangeMembers::AddVoterIds(BTreeSet::from([id])),
            |s| matches!(s, Standing::Voter(_)),
            id,
        )
        .await
    }

    /// A voter whose incarnation joined again from another address: its address is updated
    /// (and its record), so the others dial it there.
    async fn move_member(&self, id: u64, incarnation: u64, addr: String) -> Answer {
        let record = MemberRecord {
            incarnation,
            addr: addr.clone(),
        };
        if let Err(e) = self.write_member_record(id, &record).await {
            return leader_only(Err(e));
        }
        let want = addr.clone();
        self.change(
            ChangeMembers::SetNodes(BTreeMap::from([(id, NodeAddr { addr })])),
            move |s| *s == Standing::Voter(want.clone()),
            id,
        )
        .await
    }

    /// Removes node `id` from the voters (and from the members).
    pub(super) async fn remove(&self, id: u64) -> Answer {
        let _turn = match self.leader_turn().await? {
            Ok(turn) => turn,
            Err(e) => return Ok(Err(e)),
        };
        if matches!(self.standing(id), Standing::Absent) && !self.joint() {
            return Ok(Err(Error::rejected(
                metakv_raft::RejectionKind::NotFound,
                format!("node {id} is not a member of this cluster; nothing was removed"),
            )));
        }
        self.change(
            ChangeMembers::RemoveVoters(BTreeSet::from([id])),
            |s| !matches!(s, Standing::Voter(_)),
            id,
        )
        .await
    }

    /// Records this node's own address (see [`Node::record_own_address`]), in its turn.
    pub(super) async fn set_own_address(&self, addr: String) -> Result<()> {
        let _turn = self.membership_turn().await?;
        let id = self.inner.core.id;
        self.inner
            .core
            .raft
            .change_membership(
                ChangeMembers::SetNodes(BTreeMap::from([(id, NodeAddr { addr })])),
                false,
            )
            .await
            .map(|_| ())
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    /// Proposes `change` (the caller holds the turn); on a failure, settles the membership and
    /// answers `Done` if `done` holds of node `id` afterwards: the change happened although
    /// openraft's answer said otherwise.
    async fn change(
        &self,
        change: ChangeMembers<u64, NodeAddr>,
        done: impl Fn(&Standing) -> bool,
        id: u64,
    ) -> Answer {
        match self.inner.core.raft.change_membership(change, false).await {
            Ok(_) => Ok(Ok(ClientReply::Done)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(redirect(f.leader_id, f.leader_node))
            }
            Err(e) => {
                let e = self.settled(e.to_string()).await;
                if !self.joint() && done(&self.standing(id)) {
                    tracing::info!(id, "a membership change answered an error but took effect");
                    return Ok(Ok(ClientReply::Done));
                }
                Ok(Err(e))
            }
        }
    }

    /// After a failed change: settles the membership, and says what failed.
    async fn settled(&self, failed: String) -> Error {
        match self.settle().await {
            Ok(()) => Error::Unavailable(failed),
            Err(e) => Error::Unavailable(format!("{failed}; finishing the change failed too: {e}")),
        }
    }

    /// Finishes a joint config (a change whose second step failed here, or that a former
    /// leader left), if this node leads: openraft flattens it toward its last half. The caller
    /// holds the turn.
    async fn settle(&self) -> Result<()> {
        if !self.joint() || self.inner.core.leading().is_err() {
            return Ok(());
        }
        match self
            .inner
            .core
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::new()), false)
            .await
        {
            Ok(r) => {
                tracing::info!(log_id = %r.log_id, "finished a joint membership change");
                Ok(())
            }
            Err(e) => Err(Error::Unavailable(format!(
                "finishing a joint membership change: {e}"
            ))),
        }
    }
}

/// While this node leads, finishes a joint config that nothing else will (its change's leader
/// died between the two steps), once its turn is free.
pub(super) async fn drive(node: Weak<Inner>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(DRIVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = node.upgrade() else { return };
        let node = Node { inner };
        if !node.joint() || node.inner.core.leading().is_err() {
            continue;
        }
        let Ok(_turn) = node.inner.membership.try_lock() else {
            continue;
        };
        if let Err(e) = node.settle().await {
            tracing::debug!(error = %e, "a joint membership change is not finished yet");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_records_are_sealed_and_keyed_in_id_order() {
        let record = MemberRecord {
            incarnation: 0xfeed,
            addr: "127.0.0.1:7379".into(),
        };
        assert_eq!(MemberRecord::decode(2, &record.encode()).unwrap(), record);
        let mut damaged = record.encode();
        damaged[1] ^= 1;
        assert!(MemberRecord::decode(2, &damaged).is_err());
        assert!(member_key(9) < member_key(10));
        assert_eq!(member_key(7), b"member/00000000000000000007".to_vec());
    }
}
