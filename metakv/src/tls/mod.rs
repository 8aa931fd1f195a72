//! The cluster's certificate authority and the certificates it issues.
//!
//! A new cluster's first node makes the cluster CA and its own node certificate on its first
//! start, and an admin credential for the CLI:
//!
//! ```text
//!  <data dir>/tls/            0700
//!      ca.crt                 the cluster CA (PEM), ECDSA P-256, 10 years
//!      ca.key                 its key (PEM, PKCS#8)                          0600
//!      node.crt  node.key     this node's certificate and key                0600
//!  <data dir>/admin.creds     the CA certificate, the admin certificate and key (PEM, in that
//!                             order): what `metakv` commands present         0600
//! ```
//!
//! Who a certificate speaks for is its one SAN URI, never what a message says:
//! `metakv://<cluster id>/node/<id>` for a node (with its advertised address as an IP or DNS
//! SAN, so a dialer can check it), `metakv://<cluster id>/user/<name>` for a user. Every
//! certificate is both a TLS server and a TLS client certificate (nodes dial each other).
//!
//! This module makes, stores, loads and reads certificates; the transport that presents and
//! checks them (TLS 1.3 with client certificates) builds on it (`docs/design.md`, "Security").

// The files, bottom up: subject, error, pem, ca, verify, node, creds; each imports only
// those before it, and this file only re-exports.
mod ca;
mod creds;
mod error;
mod node;
mod pem;
mod subject;
#[cfg(test)]
mod tests;
mod verify;

pub use ca::{ClusterCa, Credential};
pub use creds::ClientCreds;
pub use error::TlsError;
pub use node::{ADMIN_CREDS, NodeTls, TLS_DIR};
pub use pem::{subject_of, subject_of_der};
pub use subject::Subject;
pub use verify::joiner_transport;
