//! The driver task: runs the manager while this node leads, carries out its actions and feeds
//! their outcomes back as events.

use super::*;

/// The cluster as the driver needs it: members with addresses, and voters.
pub(super) struct View {
    leader_term: Option<u64>,
    members: BTreeMap<u64, String>,
    voters: Vec<u64>,
}

pub(super) fn view(node: &Gc) -> View {
    let m = node.core.raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    View {
        leader_term: node.core.leading().ok(),
        members: membership
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect(),
        voters: membership.voter_ids().collect(),
    }
}

/// What a finished future tells the driver.
pub(super) enum Step {
    Gc(Event),
    /// A job record's write has resolved (kept typed: the caller waiting on the job's first
    /// record is answered with this error, and `NotLeader` sends it to the new leader).
    Recorded {
        job: JobId,
        written: Result<()>,
    },
    Probed {
        trigger: Trigger,
        dry_run: bool,
        min_age_ms: u64,
        reply: Option<oneshot::Sender<Result<JobId>>>,
        probes: BTreeMap<u64, std::result::Result<u32, ProbeError>>,
        members: Vec<u64>,
        voters: Vec<u64>,
    },
    Janitor {
        term: u64,
        records: Result<Vec<JobRecord>>,
    },
    Tombstones(u64),
}

type Pending = FuturesUnordered<BoxFuture<'static, Step>>;

/// The driver's own state across ticks.
pub(super) struct Driver {
    me: u64,
    config: GcConfig,
    /// The manager of the term this node leads in.
    manager: Option<Manager>,
    /// A manager of an earlier term still writing its last record.
    retiring: Option<Manager>,
    starting: bool,
    /// The caller of a job that has started but whose first record has not committed yet: it
    /// gets the job id only once a record exists, so every id handed out can be waited on.
    answer: Option<(JobId, oneshot::Sender<Result<JobId>>)>,
    counting: bool,
    members: Vec<u64>,
    pending: Pending,
}

/// Runs on every node until `stop`: ticks the agent's leases and, while this node leads,
/// the manager.
pub(crate) async fn drive(
    core: Weak<Core>,
    state: Arc<GcState>,
    mut ctl: mpsc::UnboundedReceiver<Ctl>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(first) = core.upgrade() else { return };
    let mut d = Driver {
        me: first.id,
        config: state.config.clone(),
        manager: None,
        retiring: None,
        starting: false,
        answer: None,
        counting: false,
        members: Vec::new(),
        pending: FuturesUnordered::new(),
    };
    drop(first);
    let mut tick = tokio::time::interval(DRIVER_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        enum Input {
            Ctl(Ctl),
            Step(Step),
            Tick,
        }
        let input = tokio::select! {
            _ = stop.changed() => break,
            Some(c) = ctl.recv() => Input::Ctl(c),
            Some(s) = d.pending.next(), if !d.pending.is_empty() => Input::Step(s),
            _ = tick.tick() => Input::Tick,
        };
        let Some(core) = core.upgrade() else { break };
        let node = Gc {
            core,
            state: Arc::clone(&state),
        };
        match input {
            Input::Ctl(Ctl::Run {
                dry_run,
                min_age_ms,
                reply,
            }) => d.run(&node, Trigger::Demand, dry_run, min_age_ms, Some(reply)),
            Input::Step(step) => d.step(&node, step),
            Input::Tick => d.tick(&node),
        }
        *lock(&node.state.progress) = d.manager.as_ref().and_then(Manager::progress);
    }
}

impl Driver {
    fn tick(&mut self, node: &Gc) {
        let gc = &node.state;
        if let Some(job) = lock(&gc.agent).tick(gc.mono_ms()) {
            tracing::warn!(%job, "GC lease ran out; the job's hold on this node is dropped");
        }
        let v = view(node);
        self.follow_leadership(node, &v);
        let members: Vec<u64> = v.members.keys().copied().collect();
        if members != self.members {
            self.members = members.clone();
            let mut actions = Vec::new();
            for m in [&mut self.manager, &mut self.retiring]
                .into_iter()
                .flatten()
            {
                actions.extend(m.on(
                    now_ms(),
                    Event::Membership {
                        members: members.clone(),
                    },
                ));
            }
            self.carry_out(node, actions);
        }
        let now = now_ms();
        let mut actions = Vec::new();
        for m in [self.manager.as_mut(), self.retiring.as_mut()]
            .into_iter()
            .flatten()
        {
            actions.extend(m.tick(now));
        }
        self.carry_out(node, actions);
        // Triggers: the timer, and the tombstone count (read off the bucket table).
        if let Some(m) = &self.manager
            && m.running().is_none()
            && !self.starting
            && !self.counting
        {
            if let Some(trigger) = m.due(now, 0) {
                self.run(node, trigger, false, None, None);
            } else if self.config.tombstone_threshold > 0 {
                self.counting = true;
                let node = node.clone();
                self.pending.push(Box::pin(async move {
                    let count = node
                        .core
                        .local(|s| s.read()?.buckets())
                        .await
                        .map(|b| b.iter().map(|(_, i)| i.tombstones).sum())
                        .unwrap_or(0);
                    Step::Tombstones(count)
                }));
            }
        }
    }

    /// Starts a manager when this node becomes leader, retires it when it stops leading.
    fn follow_leadership(&mut self, node: &Gc, v: &View) {
        let now = now_ms();
        let current = self.manager.as_ref().map(Manager::term);
        if current.is_some() && current != v.leader_term {
            let mut old = self.manager.take().expect("checked");
            let actions = old.on(now, Event::LeaderLost);
            self.carry_out(node, actions);
            if old.running().is_some() {
                self.retiring = Some(old);
            }
        }
        if let Some(term) = v.leader_term
            && self.manager.is_none()
        {
            self.manager = Some(Manager::new(self.me, term, self.config.clone(), now));
            // The janitor: jobs an earlier leader left unfinished.
            let node = node.clone();
            self.pending.push(Box::pin(async move {
                let records = async {
                    node.core
                        .linearize(crate::Consistency::Linearizable)
                        .await
                        .map_err(|_| Error::Unavailable("not the leader any more".into()))?;
                    node.gc_records(JANITOR_RECORDS).await
                }
                .await;
                Step::Janitor { term, records }
            }));
        }
    }

    fn run(
        &mut self,
        node: &Gc,
        trigger: Trigger,
        dry_run: bool,
        min_age_ms: Option<u64>,
        reply: Option<oneshot::Sender<Result<JobId>>>,
    ) {
        let refuse = |reply: Option<oneshot::Sender<Result<JobId>>>, e: Error| {
            if let Some(r) = reply {
                let _ = r.send(Err(e));
            }
        };
        let Some(m) = &self.manager else {
            let leader = node.core.leading().err().and_then(|not| not.leader);
            return refuse(reply, Error::NotLeader { leader });
        };
        if let Some(job) = m
            .running()
            .or(self.retiring.as_ref().and_then(Manager::running))
        {
            return refuse(
                reply,
                Error::Busy(format!("GC job {job} is already running")),
            );
        }
        if self.starting {
            return refuse(reply, Error::Busy("a GC job is starting".into()));
        }
        self.starting = true;
        let v = view(node);
        let ttl = Duration::from_millis(self.config.call_timeout_ms);
        let min_age_ms = min_age_ms.unwrap_or(self.config.min_age_ms);
        let node = node.clone();
        self.pending.push(Box::pin(async move {
            let asks = v.members.iter().map(|(&id, addr)| {
                let node = node.clone();
                let addr = addr.clone();
                async move {
                    let probe = match node
                        .call_agent(id, Some(addr), AgentRequest::Probe, ttl)
                        .await
                    {
                        Ok(AgentReply::Probe { protocol }) => Ok(protocol),
                        Ok(other) => Err(ProbeError::Unexpected(format!("{other:?}"))),
                        Err(e) => Err(ProbeError::Unanswered(e.to_string())),
                    };
                    (id, probe)
                }
            });
            let probes = futures_util::future::join_all(asks)
                .await
                .into_iter()
                .collect();
            Step::Probed {
                trigger,
                dry_run,
                min_age_ms,
                reply,
                probes,
                members: v.members.keys().copied().collect(),
                voters: v.voters,
            }
        }));
    }

    fn step(&mut self, node: &Gc, step: Step) {
        let now = now_ms();
        match step {
            Step::Gc(event) => {
                let term = event.job().map(|j| j.term);
                let target = match (&mut self.manager, &mut self.retiring) {
                    (Some(m), _) if m.running().map(|j| j.term) == term => Some(m),
                    (_, Some(r)) if r.running().map(|j| j.term) == term => Some(r),
                    (Some(m), _) => Some(m),
                    _ => None,
                };
                if let Some(m) = target {
                    let actions = m.on(now, event);
                    self.carry_out(node, actions);
                }
                if self
                    .retiring
                    .as_ref()
                    .is_some_and(|r| r.running().is_none())
                {
                    self.retiring = None;
                }
            }
            Step::Probed {
                trigger,
                dry_run,
                min_age_ms,
                reply,
                probes,
                members,
                voters,
            } => {
                self.starting = false;
                let started = match &mut self.manager {
                    None => Err(Error::NotLeader { leader: None }),
                    Some(m) => m
                        .start(
                            now, trigger, dry_run, min_age_ms, &members, &voters, &probes,
                        )
                        .map_err(|e| Error::Busy(e.to_string())),
                };
                match started {
                    Ok((job, actions)) => {
                        tracing::info!(%job, ?trigger, dry_run, min_age_ms, "GC job started");
                        // The first action writes the job's record; the caller hears back when
                        // that write resolves (`Step::Recorded`).
                        self.answer = reply.map(|r| (job, r));
                        self.carry_out(node, actions);
                    }
                    Err(e) => {
                        tracing::info!(error = %e, ?trigger, "GC job not started");
                        if let Some(r) = reply {
                            let _ = r.send(Err(e));
                        }
                    }
                }
            }
            Step::Recorded { job, written } => {
                if let Some((_, reply)) = self.answer.take_if(|(j, _)| *j == job) {
                    let _ = reply.send(written.clone().map(|()| job));
                }
                let event = match written {
                    Ok(()) => Event::RecordWritten { job },
                    Err(e) => Event::RecordFailed {
                        job,
                        error: e.to_string(),
                    },
                };
                self.step(node, Step::Gc(event));
            }
            Step::Janitor { term, records } => {
                let records = match records {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "GC janitor could not read the job records");
                        return;
                    }
                };
                for record in records.into_iter().filter(|r| r.id.term < term) {
                    match record.outcome {
                        Outcome::Handoff { compact } => {
                            let Some(m) = self.manager.as_mut().filter(|m| m.term() == term) else {
                                return;
                            };
                            tracing::info!(job = %record.id, compact, "GC job adopted from the previous leader");
                            match m.adopt(now, record) {
                                Ok(actions) => self.carry_out(node, actions),
                                Err(e) => tracing::warn!(error = %e, "GC job not adopted"),
                            }
                        }
                        Outcome::Running => {
                            let failed = Manager::stale(&record, now);
                            tracing::warn!(job = %record.id, "GC job of a previous leader recorded as failed");
                            let node = node.clone();
                            tokio::spawn(async move {
                                if let Err(e) = node.write_record(&failed).await {
                                    tracing::warn!(error = %e, "recording a stale GC job");
                                }
                            });
                        }
                        Outcome::Succeeded | Outcome::Failed { .. } => {}
                    }
                }
            }
            Step::Tombstones(count) => {
                self.counting = false;
                if let Some(trigger) = self.manager.as_ref().and_then(|m| m.due(now, count)) {
                    self.run(node, trigger, false, None, None);
                }
            }
        }
    }

    /// Carries out the manager's actions; their outcomes come back through `pending`.
    fn carry_out(&mut self, node: &Gc, actions: Vec<Action>) {
        for action in actions {
            let node = node.clone();
            match action {
                Action::Call { node: id, request } => self.call(node, id, request),
                Action::Release { node: id, job } => {
                    let addr = view(&node).members.get(&id).cloned();
                    let ttl = Duration::from_millis(self.config.call_timeout_ms);
                    tokio::spawn(async move {
                        let _ = node
                            .call_agent(id, addr, AgentRequest::Release { job }, ttl)
                            .await;
                    });
                }
                Action::Purge { job, items } => self.purge(node, job, items),
                Action::WriteRecord(record) => {
                    let job = record.id;
                    self.pending.push(Box::pin(async move {
                        let written = node.write_record(&record).await;
                        Step::Recorded { job, written }
                    }));
                }
                Action::TransferLeader { to } => {
                    tracing::info!(to, "GC hands leadership over before compacting this node");
                    tokio::spawn(async move {
                        if let Err(e) = node.core.raft.trigger().transfer_leader(to).await {
                            tracing::warn!(error = %e, to, "leadership transfer");
                        }
                    });
                }
                Action::Finished(record) => {
                    tracing::info!(
                        job = %record.id,
                        outcome = ?record.outcome,
                        agreed = record.agreed,
                        purged = record.purged,
                        skipped = record.skipped,
                        bytes_reclaimed = record.bytes_reclaimed(),
                        "GC job finished"
                    );
                }
            }
        }
    }

    /// Calls node `id`'s agent; the answer comes back as `Reply` or `CallFailed`.
    fn call(&mut self, node: Gc, id: u64, request: AgentRequest) {
        let ttl = match request {
            AgentRequest::Compact { .. } => self.config.compact_timeout_ms,
            _ => self.config.call_timeout_ms,
        };
        let ttl = Duration::from_millis(ttl);
        let job = request.job().expect("manager calls belong to a job");
        let addr = view(&node).members.get(&id).cloned();
        self.pending.push(Box::pin(async move {
            Step::Gc(match node.call_agent(id, addr, request, ttl).await {
                Ok(reply) => Event::Reply {
                    job,
                    node: id,
                    reply,
                },
                Err(error) => Event::CallFailed {
                    job,
                    node: id,
                    error: error.to_string(),
                },
            })
        }));
    }

    /// Proposes a guarded purge on this node; the answer comes back as `Purged` or
    /// `PurgeFailed`.
    fn purge(&mut self, node: Gc, job: JobId, items: Vec<metakv_store::TombstoneRef>) {
        let ttl = Duration::from_millis(self.config.call_timeout_ms);
        self.pending.push(Box::pin(async move {
            let write = node.core.propose_here(Op::Purge { items }, Some(ttl)).await;
            Step::Gc(match write {
                Ok(metakv_store::Applied::Purged { purged, skipped }) => Event::Purged {
                    job,
                    purged,
                    skipped,
                },
                Ok(other) => Event::PurgeFailed {
                    job,
                    error: format!("applied as {other:?}"),
                },
                Err(e) => Event::PurgeFailed {
                    job,
                    error: e.to_string(),
                },
            })
        }));
    }
}
