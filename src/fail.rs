//! A failed command: its exit code (the README's table, enforced by `tests/cli.rs`,
//! `exit_codes_follow_the_readme`) and its one line on stderr, or one JSON object with
//! `--json`.

use std::process::ExitCode;

use metakv::{Error, RejectionKind};
use serde_json::json;

/// A failure with its exit code.
pub struct Fail(pub u8, pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match e.rejection_kind() {
            Some(RejectionKind::Invalid) => 2,
            Some(RejectionKind::BucketNotFound | RejectionKind::NotFound) => 3,
            Some(RejectionKind::BucketPaused | RejectionKind::BucketState) => 5,
            Some(RejectionKind::BucketExists | RejectionKind::Exists) => 8,
            _ if matches!(e, Error::Denied { .. }) => 6,
            _ if matches!(e, Error::Ambiguous { .. }) => 7,
            _ => 1,
        };
        let mut message = e.to_string();
        if code == 7 {
            message.push_str(
                " (read it back to know; a write with --if-rev or --if-absent is safe to send again)",
            );
        }
        Fail(code, message)
    }
}

impl Fail {
    /// The same failure, its message after `doing: `.
    pub fn doing(self, doing: &str) -> Fail {
        Fail(self.0, format!("{doing}: {}", self.1))
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail(1, e.to_string())
    }
}

/// A usage error (exit code 2), before anything was sent.
pub fn usage_error(json: bool, message: &str) -> ExitCode {
    fail(json, Fail(2, message.to_owned()))
}

/// What kind of failure an exit code stands for, as `--json` names it.
fn kind_of(code: u8) -> &'static str {
    match code {
        2 => "usage",
        3 => "not_found",
        4 => "expectation_failed",
        5 => "bucket_paused",
        6 => "not_authorised",
        7 => "outcome_unknown",
        8 => "exists",
        _ => "failed",
    }
}

/// Reports a failure: one line on stderr, or with `--json` one object on stderr
/// (`{"error":{"kind","code","message"}}`); the exit code is the same either way.
pub fn fail(json: bool, Fail(code, message): Fail) -> ExitCode {
    if json {
        eprintln!(
            "{}",
            json!({"error": {"kind": kind_of(code), "code": code, "message": message}})
        );
    } else {
        eprintln!("metakv: {message}");
    }
    ExitCode::from(code)
}
