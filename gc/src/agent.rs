//! The agent: one per node, holds at most one job under a lease.

use metakv_store::TombstoneRef;

use crate::{AgentReply, AgentRequest, JobId, PROTOCOL};

/// The job an agent holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub job: JobId,
    /// The lease runs out at this time of the agent's clock; [`Agent::tick`] then drops the
    /// hold, whatever the manager does.
    pub deadline_ms: u64,
    lease_ms: u64,
    /// The collection: its bounds, fixed when the lease was taken, and where the next page
    /// starts; `None` once the last page was served (or for a compaction-only hold).
    collection: Option<Collection>,
    /// A page read or a compaction is running for this hold.
    busy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Collection {
    max_rev: u64,
    deleted_at_or_before_ms: u64,
    page_size: u32,
    after: Option<(String, Vec<u8>)>,
}

/// A page of collectable tombstones the driver must read from the node's store (adding the
/// pins of the node's open watchers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageQuery {
    pub job: JobId,
    pub after: Option<(String, Vec<u8>)>,
    pub limit: u32,
    pub max_rev: u64,
    pub deleted_at_or_before_ms: u64,
}

/// A page as read: its items, and where the next starts (`None` at the end).
pub type PageRead = (Vec<TombstoneRef>, Option<(String, Vec<u8>)>);

/// What the driver does for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    Reply(AgentReply),
    /// Read this page, then report it with [`Agent::page_read`].
    ReadPage(PageQuery),
    /// Compact the state file, then report with [`Agent::compacted`].
    Compact {
        job: JobId,
    },
}

/// The agent's state machine. Time is the agent's own clock in ms, passed in by the caller.
#[derive(Debug, Default)]
pub struct Agent {
    hold: Option<Hold>,
}

fn refuse(reason: impl Into<String>) -> AgentAction {
    AgentAction::Reply(AgentReply::Refused {
        reason: reason.into(),
    })
}

impl Agent {
    pub fn new() -> Agent {
        Agent::default()
    }

    pub fn hold(&self) -> Option<&Hold> {
        self.hold.as_ref()
    }

    /// A request from the manager; `applied` is the node's applied log index now.
    pub fn request(&mut self, now_ms: u64, applied: u64, request: AgentRequest) -> AgentAction {
        match request {
            AgentRequest::Probe => AgentAction::Reply(AgentReply::Probe { protocol: PROTOCOL }),
            AgentRequest::Collect {
                job,
                lease_ms,
                deleted_at_or_before_ms,
                page_size,
            } => {
                if let Err(busy) = self.may_take(job) {
                    return busy;
                }
                if page_size == 0 {
                    return refuse("a page size of 0");
                }
                let collection = Collection {
                    max_rev: applied,
                    deleted_at_or_before_ms,
                    page_size,
                    after: None,
                };
                self.hold = Some(Hold {
                    job,
                    deadline_ms: now_ms.saturating_add(lease_ms),
                    lease_ms,
                    collection: Some(collection),
                    busy: false,
                });
                self.next_page(now_ms, job)
            }
            AgentRequest::Next { job } => self.next_page(now_ms, job),
            AgentRequest::Compact { job, lease_ms } => {
                match &mut self.hold {
                    Some(h) if h.job == job => {
                        if h.busy {
                            return refuse(format!("job {job} is already reading or compacting"));
                        }
                        h.lease_ms = lease_ms;
                    }
                    _ => {
                        if let Err(busy) = self.may_take(job) {
                            return busy;
                        }
                        self.hold = Some(Hold {
                            job,
                            deadline_ms: 0,
                            lease_ms,
                            collection: None,
                            busy: false,
                        });
                    }
                }
                let h = self.hold.as_mut().expect("held above");
                h.deadline_ms = now_ms.saturating_add(h.lease_ms);
                h.busy = true;
                AgentAction::Compact { job }
            }
            AgentRequest::Release { job } => {
                if self.hold.as_ref().is_some_and(|h| h.job == job) {
                    self.hold = None;
                }
                AgentAction::Reply(AgentReply::Released)
            }
        }
    }

    /// A new job may take the lease if none is held, or the holder is a job of an older term:
    /// a newer leader's job replaces it, since the old leader can no longer purge.
    fn may_take(&mut self, job: JobId) -> Result<(), AgentAction> {
        match &self.hold {
            Some(h) if h.job == job => Err(refuse(format!("job {job} already holds this node"))),
            Some(h) if h.job.term >= job.term => Err(refuse(format!(
                "busy with job {} (lease for {} ms more)",
                h.job, h.lease_ms
            ))),
            _ => Ok(()),
        }
    }

    fn next_page(&mut self, now_ms: u64, job: JobId) -> AgentAction {
        let Some(h) = self.hold.as_mut().filter(|h| h.job == job) else {
            return refuse(format!(
                "no lease on job {job} (it ran out, was released, or the node restarted)"
            ));
        };
        if h.busy {
            return refuse(format!("job {job} is already reading or compacting"));
        }
        let Some(c) = &h.collection else {
            return AgentAction::Reply(AgentReply::Page {
                items: Vec::new(),
                more: false,
            });
        };
        h.deadline_ms = now_ms.saturating_add(h.lease_ms);
        h.busy = true;
        AgentAction::ReadPage(PageQuery {
            job,
            after: c.after.clone(),
            limit: c.page_size,
            max_rev: c.max_rev,
            deleted_at_or_before_ms: c.deleted_at_or_before_ms,
        })
    }

    /// The page asked for by [`AgentAction::ReadPage`]: its items and where the next starts
    /// (`None` at the end), or the storage error that stopped it.
    pub fn page_read(&mut self, job: JobId, page: Result<PageRead, String>) -> AgentReply {
        let Some(h) = self.hold.as_mut().filter(|h| h.job == job) else {
            return AgentReply::Refused {
                reason: format!("the lease on job {job} ran out while its page was read"),
            };
        };
        h.busy = false;
        match page {
            Ok((items, next)) => {
                let more = next.is_some();
                match (&mut h.collection, next) {
                    (Some(c), Some(next)) => c.after = Some(next),
                    (collection, _) => *collection = None,
                }
                AgentReply::Page { items, more }
            }
            Err(e) => {
                self.hold = None;
                AgentReply::Refused {
                    reason: format!("reading tombstones: {e}"),
                }
            }
        }
    }

    /// The end of [`AgentAction::Compact`]: the file bytes before and after, or the error.
    /// A compaction cannot be stopped halfway, so it is reported even if the lease ran out
    /// meanwhile (the hold itself was dropped on time).
    pub fn compacted(&mut self, job: JobId, report: Result<(u64, u64), String>) -> AgentReply {
        if let Some(h) = self.hold.as_mut().filter(|h| h.job == job) {
            h.busy = false;
        }
        match report {
            Ok((bytes_before, bytes_after)) => AgentReply::Compacted {
                bytes_before,
                bytes_after,
            },
            Err(e) => AgentReply::Refused {
                reason: format!("compacting: {e}"),
            },
        }
    }

    /// The clock moved: a lease that ran out is dropped; its job is returned to be logged.
    pub fn tick(&mut self, now_ms: u64) -> Option<JobId> {
        let expired = self.hold.as_ref().filter(|h| now_ms > h.deadline_ms)?.job;
        self.hold = None;
        Some(expired)
    }
}
