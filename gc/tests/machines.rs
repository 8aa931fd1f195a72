//! The manager and agent state machines, driven by hand: every phase, timeout and abort path.

use std::collections::BTreeMap;

use metakv_gc::{
    Action, Agent, AgentAction, AgentReply, AgentRequest, Event, GcConfig, JobId, Manager, Outcome,
    PROTOCOL, ProbeError, StartError, Trigger,
};
use metakv_store::TombstoneRef;

const ME: u64 = 1;

fn t(bucket: &str, key: &str, rev: u64) -> TombstoneRef {
    TombstoneRef {
        bucket: bucket.into(),
        key: key.as_bytes().to_vec(),
        rev,
    }
}

fn config() -> GcConfig {
    GcConfig {
        page_size: 2,
        purge_batch: 2,
        call_timeout_ms: 1_000,
        compact_timeout_ms: 5_000,
        lease_ms: 3_000,
        ..GcConfig::default()
    }
}

fn probes(nodes: &[u64], protocol: u32) -> BTreeMap<u64, Result<u32, ProbeError>> {
    nodes.iter().map(|&n| (n, Ok(protocol))).collect()
}

/// A manager of term 5 with a job over `nodes` that has written its start record and sent
/// its collect calls.
fn collecting(nodes: &[u64], dry_run: bool) -> (Manager, JobId) {
    collecting_with(config(), nodes, dry_run)
}

/// A manager whose job has written its start record and asked every node for a page.
fn collecting_with(config: GcConfig, nodes: &[u64], dry_run: bool) -> (Manager, JobId) {
    let mut m = Manager::new(ME, 5, config, 0);
    let (job, actions) = m
        .start(
            100,
            Trigger::Demand,
            dry_run,
            0,
            nodes,
            nodes,
            &probes(nodes, PROTOCOL),
        )
        .unwrap();
    assert!(matches!(&actions[..], [Action::WriteRecord(r)] if r.outcome == Outcome::Running));
    let actions = m.on(110, Event::RecordWritten { job });
    let called: Vec<u64> = actions
        .iter()
        .map(|a| match a {
            Action::Call {
                node,
                request: AgentRequest::Collect { .. },
            } => *node,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(called, nodes);
    (m, job)
}

fn page(job: JobId, node: u64, items: Vec<TombstoneRef>, more: bool) -> Event {
    Event::Reply {
        job,
        node,
        reply: AgentReply::Page { items, more },
    }
}

fn purges(actions: &[Action]) -> Vec<TombstoneRef> {
    actions
        .iter()
        .flat_map(|a| match a {
            Action::Purge { items, .. } => items.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn failed_with(actions: &[Action], nodes: &[u64], needle: &str) {
    let released: Vec<u64> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Release { node, .. } => Some(*node),
            _ => None,
        })
        .collect();
    assert_eq!(released, nodes, "{actions:?}");
    match actions.last() {
        Some(Action::WriteRecord(r)) => match &r.outcome {
            Outcome::Failed { reason } => assert!(reason.contains(needle), "{reason}"),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_full_job_purges_the_exact_intersection_then_compacts_and_hands_off() {
    let nodes = [1, 2, 3];
    let (mut m, job) = collecting(&nodes, false);
    // Node 1 and 2 agree on a@4 and c@9; node 3 has b (others do not) and c@9.
    assert!(
        m.on(
            120,
            page(job, 1, vec![t("u", "a", 4), t("u", "c", 9)], false)
        )
        .is_empty()
    );
    assert!(
        m.on(
            121,
            page(job, 2, vec![t("u", "a", 4), t("u", "c", 9)], false)
        )
        .is_empty()
    );
    let actions = m.on(
        122,
        page(job, 3, vec![t("u", "a", 5), t("u", "b", 6)], true),
    );
    // a disagrees on rev; b is on node 3 only; node 3 must say whether it has c.
    assert!(purges(&actions).is_empty());
    assert!(matches!(
        &actions[..],
        [Action::Call {
            node: 3,
            request: AgentRequest::Next { .. }
        }]
    ));
    let actions = m.on(130, page(job, 3, vec![t("u", "c", 9)], false));
    assert_eq!(purges(&actions), vec![t("u", "c", 9)]);
    assert!(m.progress().unwrap().phase.starts_with("collect"));
    let actions = m.on(
        140,
        Event::Purged {
            job,
            purged: 1,
            skipped: 0,
        },
    );
    // The intersection is complete: leases released, follower 2 compacts first.
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Release { .. }))
            .count(),
        3
    );
    assert!(matches!(
        actions.last(),
        Some(Action::Call {
            node: 2,
            request: AgentRequest::Compact { .. }
        })
    ));
    let compacted = |node| Event::Reply {
        job,
        node,
        reply: AgentReply::Compacted {
            bytes_before: 100,
            bytes_after: 60,
        },
    };
    let actions = m.on(150, compacted(2));
    assert!(matches!(
        &actions[..],
        [Action::Call {
            node: 3,
            request: AgentRequest::Compact { .. }
        }]
    ));
    let actions = m.on(160, compacted(3));
    let Some(Action::WriteRecord(handoff)) = actions.last() else {
        panic!("{actions:?}");
    };
    assert_eq!(handoff.outcome, Outcome::Handoff { compact: ME });
    let handoff = handoff.clone();
    let actions = m.on(170, Event::RecordWritten { job });
    assert_eq!(actions, vec![Action::TransferLeader { to: 2 }]);
    assert!(m.on(180, Event::LeaderLost).is_empty());
    assert_eq!(m.running(), None);

    // Node 2 leads now and adopts the job from its record.
    let mut next = Manager::new(2, 6, config(), 200);
    let actions = next.adopt(200, handoff).unwrap();
    assert!(matches!(
        &actions[..],
        [Action::Call {
            node: 1,
            request: AgentRequest::Compact { .. }
        }]
    ));
    let actions = next.on(210, compacted(1));
    let Some(Action::WriteRecord(end)) = actions.last() else {
        panic!("{actions:?}");
    };
    assert_eq!(end.outcome, Outcome::Succeeded);
    assert_eq!((end.agreed, end.purged, end.skipped), (1, 1, 0));
    assert_eq!(end.collected, vec![(1, 2), (2, 2), (3, 3)]);
    assert_eq!(end.compactions.len(), 3);
    assert_eq!(end.bytes_reclaimed(), 120);
    let actions = next.on(220, Event::RecordWritten { job });
    assert!(matches!(&actions[..], [Action::Finished(r)] if r.outcome == Outcome::Succeeded));
    assert_eq!(next.running(), None);
}

#[test]
fn purges_go_in_bounded_batches_with_a_bounded_number_in_flight() {
    // Batches of 2 (`config()`), two of them in flight.
    let (mut m, job) = collecting_with(
        GcConfig {
            purges_in_flight: 2,
            ..config()
        },
        &[1, 2],
        false,
    );
    let items: Vec<_> = (0..7).map(|i| t("u", &format!("k{i}"), 10 + i)).collect();
    let purged = |n| Event::Purged {
        job,
        purged: n,
        skipped: 0,
    };
    let compacting = |actions: &[Action]| {
        actions.iter().any(|a| {
            matches!(
                a,
                Action::Call {
                    request: AgentRequest::Compact { .. },
                    ..
                }
            )
        })
    };
    m.on(1, page(job, 1, items.clone(), false));
    let actions = m.on(2, page(job, 2, items.clone(), false));
    assert_eq!(purges(&actions), items[..4].to_vec());
    assert_eq!(actions.len(), 2, "two entries of two: {actions:?}");
    // Nothing more until one of them is applied.
    assert!(
        m.on(
            3,
            Event::Membership {
                members: vec![1, 2]
            }
        )
        .is_empty()
    );
    let actions = m.on(
        4,
        Event::Purged {
            job,
            purged: 1,
            skipped: 1,
        },
    );
    assert_eq!(purges(&actions), items[4..6].to_vec());
    // The last, partial batch goes as soon as the intersection ends.
    let actions = m.on(5, purged(2));
    assert_eq!(purges(&actions), items[6..].to_vec());
    // Compaction waits for every purge to be applied.
    let actions = m.on(6, purged(2));
    assert!(
        purges(&actions).is_empty() && !compacting(&actions),
        "{actions:?}"
    );
    let actions = m.on(7, purged(1));
    assert!(compacting(&actions), "{actions:?}");
    let p = m.progress().unwrap();
    assert_eq!((p.agreed, p.purged, p.skipped), (7, 6, 1));
}

#[test]
fn one_purge_in_flight_by_default() {
    assert_eq!(config().purges_in_flight, 1);
    let (mut m, job) = collecting(&[1, 2], false);
    let items: Vec<_> = (0..4).map(|i| t("u", &format!("k{i}"), 10 + i)).collect();
    m.on(101, page(job, 1, items.clone(), false));
    let actions = m.on(102, page(job, 2, items.clone(), false));
    assert_eq!(purges(&actions), items[..2].to_vec());
    let actions = m.on(
        103,
        Event::Purged {
            job,
            purged: 2,
            skipped: 0,
        },
    );
    assert_eq!(purges(&actions), items[2..].to_vec());
}

#[test]
fn a_dry_run_samples_and_purges_nothing() {
    let (mut m, job) = collecting(&[1, 2], true);
    let items: Vec<_> = (0..30).map(|i| t("u", &format!("k{i:02}"), 3)).collect();
    m.on(1, page(job, 1, items.clone(), false));
    let actions = m.on(2, page(job, 2, items, false));
    assert!(purges(&actions).is_empty());
    let Some(Action::WriteRecord(r)) = actions.last() else {
        panic!("{actions:?}");
    };
    assert_eq!((r.agreed, r.purged, r.sample.len()), (30, 0, 20));
    assert!(r.compactions.is_empty());
    assert_eq!(r.outcome, Outcome::Succeeded);
}

#[test]
fn a_single_node_compacts_in_place() {
    let (mut m, job) = collecting(&[1], false);
    let actions = m.on(1, page(job, 1, vec![], false));
    assert!(matches!(
        actions.last(),
        Some(Action::Call {
            node: 1,
            request: AgentRequest::Compact { .. }
        })
    ));
}

#[test]
fn the_version_gate_and_one_job_at_a_time() {
    let mut m = Manager::new(ME, 5, config(), 0);
    let mut p = probes(&[1, 2, 3], PROTOCOL);
    p.insert(3, Ok(0));
    assert_eq!(
        m.start(1, Trigger::Demand, false, 0, &[1, 2, 3], &[1, 2, 3], &p),
        Err(StartError::Version {
            node: 3,
            protocol: 0
        })
    );
    let refused = ProbeError::Unanswered("connection refused".into());
    p.insert(3, Err(refused.clone()));
    assert_eq!(
        m.start(1, Trigger::Demand, false, 0, &[1, 2, 3], &[1, 2, 3], &p),
        Err(StartError::Unreachable {
            node: 3,
            error: refused
        })
    );
    p.remove(&3);
    assert_eq!(
        m.start(1, Trigger::Demand, false, 0, &[1, 2, 3], &[1, 2, 3], &p),
        Err(StartError::Unreachable {
            node: 3,
            error: ProbeError::NotProbed
        })
    );
    assert_eq!(m.running(), None);
    let (job, _) = m
        .start(
            1,
            Trigger::Demand,
            false,
            0,
            &[1, 2],
            &[1, 2],
            &probes(&[1, 2], PROTOCOL),
        )
        .unwrap();
    assert_eq!(job, JobId { term: 5, seq: 1 });
    assert_eq!(
        m.start(
            2,
            Trigger::Demand,
            false,
            0,
            &[1, 2],
            &[1, 2],
            &probes(&[1, 2], PROTOCOL)
        ),
        Err(StartError::AlreadyRunning { job })
    );
    assert_eq!(m.due(u64::MAX, u64::MAX), None);
}

#[test]
fn triggers_fire_on_the_timer_and_the_threshold() {
    let c = GcConfig {
        interval_ms: 1_000_000,
        tombstone_threshold: 100,
        ..config()
    };
    let m = Manager::new(ME, 1, c, 0);
    assert_eq!(m.due(10, 100), None);
    // The threshold waits for its pause after the last job (here: since leadership began).
    assert_eq!(m.due(10, 101), None);
    assert_eq!(
        m.due(60_000, 101),
        Some(Trigger::Threshold { tombstones: 101 })
    );
    assert_eq!(m.due(1_000_000, 0), Some(Trigger::Timer));
}

#[test]
fn every_abort_path_releases_every_lease_and_records_the_reason() {
    type Case = (&'static str, Box<dyn Fn(JobId) -> Event>);
    let cases: Vec<Case> = vec![
        (
            "node 2: connection reset",
            Box::new(|job| Event::CallFailed {
                job,
                node: 2,
                error: "connection reset".into(),
            }),
        ),
        (
            "refused: no lease",
            Box::new(|job| Event::Reply {
                job,
                node: 3,
                reply: AgentReply::Refused {
                    reason: "no lease".into(),
                },
            }),
        ),
        (
            "membership changed",
            Box::new(|_| Event::Membership {
                members: vec![1, 2, 3, 4],
            }),
        ),
        ("lost leadership", Box::new(|_| Event::LeaderLost)),
        (
            "out of order",
            Box::new(|job| page(job, 2, vec![t("u", "b", 1), t("u", "a", 2)], true)),
        ),
    ];
    for (needle, event) in cases {
        let (mut m, job) = collecting(&[1, 2, 3], false);
        let actions = m.on(1, event(job));
        failed_with(&actions, &[1, 2, 3], needle);
        // Late answers of the failed job change nothing; the end record closes it.
        assert!(m.on(2, page(job, 1, vec![], false)).is_empty());
        let actions = m.on(3, Event::RecordWritten { job });
        assert!(
            matches!(&actions[..], [Action::Finished(r)] if matches!(r.outcome, Outcome::Failed { .. }))
        );
        assert_eq!(m.running(), None, "{needle}");
    }
    // A failed purge.
    let (mut m, job) = collecting(&[1, 2], false);
    m.on(1, page(job, 1, vec![t("u", "a", 1), t("u", "b", 2)], false));
    let actions = m.on(2, page(job, 2, vec![t("u", "a", 1), t("u", "b", 2)], false));
    assert_eq!(purges(&actions).len(), 2);
    let actions = m.on(
        3,
        Event::PurgeFailed {
            job,
            error: "not leader".into(),
        },
    );
    failed_with(&actions, &[1, 2], "purge: not leader");
    // Membership changes after the purges no longer matter.
    let (mut m, job) = collecting(&[1, 2], false);
    m.on(1, page(job, 1, vec![], false));
    m.on(2, page(job, 2, vec![], false));
    assert!(
        m.on(
            3,
            Event::Membership {
                members: vec![1, 2, 3]
            }
        )
        .is_empty()
    );
}

#[test]
fn every_timeout() {
    // A node that does not answer a collect.
    let (mut m, job) = collecting(&[1, 2], false);
    m.on(120, page(job, 1, vec![t("u", "a", 1)], false));
    assert!(m.tick(1_000).is_empty());
    failed_with(&m.tick(1_200), &[1, 2], "node 2 did not answer");
    // A purge that is not committed.
    let (mut m, job) = collecting(&[1, 2], false);
    m.on(
        120,
        page(job, 1, vec![t("u", "a", 1), t("u", "b", 1)], false),
    );
    m.on(
        130,
        page(job, 2, vec![t("u", "a", 1), t("u", "b", 1)], false),
    );
    failed_with(&m.tick(1_200), &[1, 2], "purge was not committed");
    // A compaction gets the longer timeout.
    let (mut m, job) = collecting(&[1, 2], false);
    m.on(120, page(job, 1, vec![], false));
    m.on(130, page(job, 2, vec![], false));
    assert!(m.tick(4_000).is_empty());
    failed_with(&m.tick(5_200), &[1, 2], "node 2 did not answer");
    // A record write that never commits: the job ends anyway, the reason kept.
    let actions = m.tick(7_000);
    let [Action::Finished(r)] = &actions[..] else {
        panic!("{actions:?}");
    };
    let Outcome::Failed { reason } = &r.outcome else {
        panic!()
    };
    assert!(reason.contains("could not be written"), "{reason}");
    // A leadership transfer that does not happen: the leader compacts in place.
    let (mut m, job) = collecting(&[1, 2], false);
    m.on(120, page(job, 1, vec![], false));
    m.on(130, page(job, 2, vec![], false));
    m.on(
        140,
        Event::Reply {
            job,
            node: 2,
            reply: AgentReply::Compacted {
                bytes_before: 2,
                bytes_after: 1,
            },
        },
    );
    m.on(150, Event::RecordWritten { job });
    assert!(m.tick(1_000).is_empty());
    let actions = m.tick(1_200);
    assert!(matches!(
        &actions[..],
        [Action::Call {
            node: 1,
            request: AgentRequest::Compact { .. }
        }]
    ));
}

#[test]
fn a_stale_running_record_is_recorded_as_failed() {
    let (_, job) = collecting(&[1, 2], false);
    let mut other = Manager::new(2, 9, config(), 0);
    let (_, actions) = other
        .start(
            0,
            Trigger::Timer,
            false,
            0,
            &[1, 2],
            &[1, 2],
            &probes(&[1, 2], PROTOCOL),
        )
        .unwrap();
    let [Action::WriteRecord(running)] = &actions[..] else {
        panic!()
    };
    let failed = Manager::stale(running, 5);
    assert!(matches!(failed.outcome, Outcome::Failed { .. }));
    assert_eq!(failed.finished_ms, Some(5));
    assert_ne!(failed.id, job);
}

// --- the agent ---

fn collect(job: JobId) -> AgentRequest {
    AgentRequest::Collect {
        job,
        lease_ms: 100,
        deleted_at_or_before_ms: 50,
        page_size: 2,
    }
}

const JOB: JobId = JobId { term: 3, seq: 1 };

#[test]
fn the_agent_serves_pages_under_its_lease() {
    let mut a = Agent::new();
    assert_eq!(
        a.request(0, 7, AgentRequest::Probe),
        AgentAction::Reply(AgentReply::Probe { protocol: PROTOCOL })
    );
    let AgentAction::ReadPage(q) = a.request(0, 42, collect(JOB)) else {
        panic!()
    };
    assert_eq!(
        (
            q.after.clone(),
            q.limit,
            q.max_rev,
            q.deleted_at_or_before_ms
        ),
        (None, 2, 42, 50)
    );
    // One page at a time.
    assert!(matches!(
        a.request(1, 42, AgentRequest::Next { job: JOB }),
        AgentAction::Reply(AgentReply::Refused { .. })
    ));
    let next = Some(("u".to_owned(), b"b".to_vec()));
    let reply = a.page_read(
        JOB,
        Ok((vec![t("u", "a", 1), t("u", "b", 2)], next.clone())),
    );
    assert!(matches!(reply, AgentReply::Page { more: true, .. }));
    // The next page resumes after "b", with the same bounds (the applied index moved on).
    let AgentAction::ReadPage(q) = a.request(90, 99, AgentRequest::Next { job: JOB }) else {
        panic!()
    };
    assert_eq!((q.after, q.max_rev), (next, 42));
    assert_eq!(a.hold().unwrap().deadline_ms, 190, "the lease was renewed");
    let reply = a.page_read(JOB, Ok((vec![], None)));
    assert_eq!(
        reply,
        AgentReply::Page {
            items: vec![],
            more: false
        }
    );
    assert_eq!(
        a.request(100, 99, AgentRequest::Next { job: JOB }),
        AgentAction::Reply(AgentReply::Page {
            items: vec![],
            more: false
        })
    );
    assert_eq!(
        a.request(101, 0, AgentRequest::Release { job: JOB }),
        AgentAction::Reply(AgentReply::Released)
    );
    assert!(a.hold().is_none());
}

#[test]
fn a_lease_runs_out_by_itself() {
    let mut a = Agent::new();
    a.request(0, 1, collect(JOB));
    a.page_read(JOB, Ok((vec![], Some(("u".into(), b"a".to_vec())))));
    assert_eq!(a.tick(100), None);
    assert_eq!(a.tick(101), Some(JOB));
    assert!(a.hold().is_none());
    assert!(matches!(
        a.request(102, 1, AgentRequest::Next { job: JOB }),
        AgentAction::Reply(AgentReply::Refused { reason }) if reason.contains("no lease")
    ));
    // A page read whose lease ran out meanwhile is refused, not served.
    a.request(200, 1, collect(JOB));
    a.tick(301);
    assert!(matches!(
        a.page_read(JOB, Ok((vec![], None))),
        AgentReply::Refused { .. }
    ));
    // A restarted agent knows no job.
    let mut fresh = Agent::new();
    assert!(matches!(
        fresh.request(0, 1, AgentRequest::Next { job: JOB }),
        AgentAction::Reply(AgentReply::Refused { .. })
    ));
}

#[test]
fn one_job_per_node_unless_a_newer_leader_takes_over() {
    let mut a = Agent::new();
    a.request(0, 1, collect(JOB));
    a.page_read(JOB, Ok((vec![], Some(("u".into(), b"a".to_vec())))));
    let same_term = JobId { term: 3, seq: 2 };
    assert!(
        matches!(a.request(1, 1, collect(same_term)), AgentAction::Reply(AgentReply::Refused { reason }) if reason.contains("busy with job 3.1"))
    );
    assert!(matches!(
        a.request(1, 1, collect(JOB)),
        AgentAction::Reply(AgentReply::Refused { .. })
    ));
    // Releasing another job leaves the hold.
    a.request(2, 1, AgentRequest::Release { job: same_term });
    assert_eq!(a.hold().unwrap().job, JOB);
    let newer = JobId { term: 4, seq: 1 };
    assert!(matches!(
        a.request(3, 1, collect(newer)),
        AgentAction::ReadPage(_)
    ));
    assert_eq!(a.hold().unwrap().job, newer);
}

#[test]
fn compaction_runs_under_a_lease_and_reports_bytes() {
    let mut a = Agent::new();
    assert_eq!(
        a.request(
            0,
            1,
            AgentRequest::Compact {
                job: JOB,
                lease_ms: 10
            }
        ),
        AgentAction::Compact { job: JOB }
    );
    assert!(matches!(
        a.request(
            1,
            1,
            AgentRequest::Compact {
                job: JOB,
                lease_ms: 10
            }
        ),
        AgentAction::Reply(AgentReply::Refused { .. })
    ));
    assert_eq!(
        a.compacted(JOB, Ok((10, 4))),
        AgentReply::Compacted {
            bytes_before: 10,
            bytes_after: 4
        }
    );
    assert!(
        matches!(a.compacted(JOB, Err("disk full".into())), AgentReply::Refused { reason } if reason.contains("disk full"))
    );
    assert_eq!(a.tick(11), Some(JOB));
    // A storage error while reading a page drops the hold.
    a.request(20, 1, collect(JOB));
    assert!(matches!(
        a.page_read(JOB, Err("corrupt".into())),
        AgentReply::Refused { .. }
    ));
    assert!(a.hold().is_none());
}
