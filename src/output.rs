//! How the client commands print what they got: one line per item for people, one JSON
//! object per line with `--json`.

use base64::Engine;
use metakv::{GcOutcome, JobRecord, NodeStatus, Record, Role};
use serde_json::{Value, json};

pub(crate) fn role(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Shutdown => "shutdown",
    }
}

/// `value` as UTF-8 text when it is, else `value_base64`.
pub(crate) fn value_field(obj: &mut serde_json::Map<String, Value>, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(s) => obj.insert("value".into(), json!(s)),
        Err(_) => obj.insert(
            "value_base64".into(),
            json!(base64::engine::general_purpose::STANDARD.encode(value)),
        ),
    };
}

pub(crate) fn record_json(bucket: Option<&str>, key: &[u8], r: &Record) -> Value {
    let mut o = serde_json::Map::new();
    if let Some(b) = bucket {
        o.insert("bucket".into(), json!(b));
    }
    o.insert("key".into(), json!(String::from_utf8_lossy(key)));
    value_field(&mut o, &r.value);
    o.insert("rev".into(), json!(r.rev));
    o.insert("create_rev".into(), json!(r.create_rev));
    o.insert("version".into(), json!(r.version));
    o.insert("deleted".into(), json!(r.deleted));
    Value::Object(o)
}

/// A GC job record as `--json` prints it: enumerations in lower case, one entry per node.
pub(crate) fn job_json(r: &JobRecord) -> Value {
    let (outcome, reason) = match &r.outcome {
        GcOutcome::Running => ("running", None),
        GcOutcome::Handoff { .. } => ("handoff", None),
        GcOutcome::Succeeded => ("succeeded", None),
        GcOutcome::Failed { reason } => ("failed", Some(reason.clone())),
    };
    let trigger = trigger_name(&r.trigger).0;
    let nodes: Vec<Value> = r
        .members
        .iter()
        .map(|&id| {
            let collected = r.collected.iter().find(|(n, _)| *n == id).map(|(_, c)| *c);
            let c = r.compactions.iter().find(|c| c.node == id);
            json!({"id": id, "collected": collected,
                   "bytes_before": c.map(|c| c.bytes_before), "bytes_after": c.map(|c| c.bytes_after)})
        })
        .collect();
    let phases: Vec<Value> = r
        .phases
        .iter()
        .map(|p| json!({"phase": p.phase, "ms": p.ms}))
        .collect();
    let sample: Vec<Value> = r
        .sample
        .iter()
        .map(|t| json!({"bucket": t.bucket, "key": String::from_utf8_lossy(&t.key), "rev": t.rev}))
        .collect();
    json!({"job": r.id.to_string(), "outcome": outcome, "reason": reason, "trigger": trigger,
           "dry_run": r.dry_run, "leader": r.leader, "started_ms": r.started_ms,
           "finished_ms": r.finished_ms, "agreed": r.agreed, "purged": r.purged,
           "skipped": r.skipped, "nodes": nodes, "phases": phases, "sample": sample})
}

pub(crate) fn status_line(s: &NodeStatus) -> String {
    format!(
        "{:>4}  {:<21}  {:<9}  term {:<4} applied {:<8} committed {:<8} state {} B, log {} B",
        s.id,
        s.addr,
        role(s.role),
        s.term,
        s.applied,
        s.committed,
        s.state_file_bytes,
        s.log_file_bytes
    )
}

pub(crate) fn outcome(o: &GcOutcome) -> String {
    match o {
        GcOutcome::Running => "running".into(),
        GcOutcome::Handoff { compact } => format!("running (next leader compacts node {compact})"),
        GcOutcome::Succeeded => "succeeded".into(),
        GcOutcome::Failed { reason } => format!("failed: {reason}"),
    }
}

/// What started a GC job: (its JSON name, a phrase).
fn trigger_name(t: &metakv::gc_engine::Trigger) -> (&'static str, &'static str) {
    match t {
        metakv::gc_engine::Trigger::Timer => ("timer", "started by the timer"),
        metakv::gc_engine::Trigger::Threshold { .. } => {
            ("threshold", "started at the tombstone threshold")
        }
        metakv::gc_engine::Trigger::Demand => ("demand", "started on demand"),
    }
}

pub(crate) fn print_job(r: &JobRecord) {
    let took = r.finished_ms.map_or(String::new(), |f| {
        format!(", took {} ms", f.saturating_sub(r.started_ms))
    });
    outln!(
        "job {}{}  {}  ({}, on leader {}, min age {} ms{took})",
        r.id,
        if r.dry_run { " (dry run)" } else { "" },
        outcome(&r.outcome),
        trigger_name(&r.trigger).1,
        r.leader,
        r.min_age_ms
    );
    let collected: Vec<String> = r
        .collected
        .iter()
        .map(|(n, c)| format!("node {n}: {c}"))
        .collect();
    outln!("  collected  {}", collected.join(", "));
    outln!(
        "  agreed {}  purged {}  skipped by the guard {}",
        r.agreed,
        r.purged,
        r.skipped
    );
    for c in &r.compactions {
        outln!(
            "  node {} state file {} B -> {} B",
            c.node,
            c.bytes_before,
            c.bytes_after
        );
    }
    if !r.phases.is_empty() {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|p| format!("{} {} ms", p.phase, p.ms))
            .collect();
        outln!("  phases  {}", phases.join(", "));
    }
    for t in &r.sample {
        outln!(
            "  would purge {}/{} @{}",
            t.bucket,
            String::from_utf8_lossy(&t.key),
            t.rev
        );
    }
}

pub(crate) fn progress_line(bucket: &str, p: &metakv::OpProgress) -> String {
    let of = |n: u64, total: Option<u64>| match total {
        Some(t) => format!("{n}/{t}"),
        None => n.to_string(),
    };
    format!(
        "{} {bucket} (op {}): {} {} records, {} bytes",
        p.kind.as_str(),
        p.op,
        p.step,
        of(p.records, p.records_total),
        of(p.bytes, p.bytes_total)
    )
}

pub(crate) fn hibernation_line(h: &metakv::HibernationStatus) -> Option<String> {
    let r = h.record.as_ref()?;
    let mut line = format!(
        "last {} (op {}): {}, archive {}/{}",
        r.kind.as_str(),
        r.op,
        r.phase.as_str(),
        r.archive,
        r.objects
    );
    if let Some(m) = &r.manifest {
        line.push_str(&format!(
            ", {}, {} at revision {}",
            count(m.records, "record"),
            count(m.bytes, "byte"),
            m.rev
        ));
    }
    if let Some(e) = &r.error {
        line.push_str(&format!(", error: {e}"));
    }
    Some(line)
}

pub(crate) fn hibernation_json(h: &metakv::HibernationStatus) -> Value {
    let record = h.record.as_ref().map(|r| {
        json!({"op": r.op.to_string(), "kind": r.kind.as_str(), "phase": r.phase.as_str(),
               "archive": r.archive, "objects": r.objects, "started_ms": r.started_ms,
               "finished_ms": r.finished_ms, "error": r.error,
               "manifest": r.manifest.as_ref().map(|m| json!({"records": m.records, "bytes": m.bytes, "rev": m.rev, "chunks": m.chunks.len()}))})
    });
    let running = h.running.as_ref().map(|p| {
        json!({"op": p.op.to_string(), "kind": p.kind.as_str(), "step": p.step, "records": p.records,
               "bytes": p.bytes, "records_total": p.records_total, "bytes_total": p.bytes_total})
    });
    json!({"bucket": h.bucket, "state": h.state.as_str(), "last": record, "running": running})
}

/// A duration as a person reads it: `1h`, `30m`, `2d`, `1500ms`.
pub(crate) fn duration_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    for (size, unit) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// Node ids as a person lists them: `1, 2, 3`.
pub(crate) fn id_list(ids: &[u64]) -> String {
    ids.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `n` and a noun, singular for one: `1 chunk`, `3 chunks`.
pub(crate) fn count(n: u64, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}
