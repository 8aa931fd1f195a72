//! Why TLS material could not be made, stored or read.

use std::path::PathBuf;

use super::subject::Subject;

/// Why TLS material could not be made, stored or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{doing} {path}: {source}")]
    Io {
        doing: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error(
        "a certificate names no metakv subject (a SAN URI metakv://<cluster>/node/<id> or /user/<name>): {0}"
    )]
    NoSubject(String),
    #[error(
        "{path} is the certificate of {found}, not of {expected}: this data dir's TLS material belongs to another node or cluster"
    )]
    OtherSubject {
        path: PathBuf,
        found: Subject,
        expected: Subject,
    },
}

pub(super) fn bad(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Unreadable {
        path: PathBuf::from(what),
        reason: e.to_string(),
    }
}
