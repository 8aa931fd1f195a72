//! A node's TLS material at start, and join tokens: how a new node of a secure cluster gets
//! its certificate.
//!
//! ```text
//!  token   := "mkv1." fingerprint "." id "." secret
//!             fingerprint: SHA-256 of the cluster CA certificate (64 hex digits)
//!             id: 16 hex digits, names the token (to revoke it)
//!             secret: 32 hex digits (128 random bits)
//!  _sys "join-token/<id>" -> TokenRecord (format 1), sealed: SHA-256 of the secret, when it
//!             expires, whether it was used
//! ```
//!
//! The joining node dials the member it was given over TLS, trusting only a chain to the CA
//! whose fingerprint the token names (no trust on first use), and sends the token in an
//! `Enroll` request with no certificate of its own. The leader (a follower forwards the
//! request) checks the secret's hash, the expiry and that the token is unused, and that the id
//! is no member's; marks the token used with a compare-and-set on its record (two nodes with
//! one token: one wins); and answers with a certificate for the node and the cluster CA (its
//! key too, so that later joins go through any member). The node stores them in
//! `<data dir>/tls/` and then joins as any node does, over mutual TLS.
//!
//! The expiry is checked by the leader's clock before anything is proposed; apply never reads
//! a clock.

use std::path::Path;
use std::time::Duration;

use metakv_raft::network::CallError;
use metakv_raft::restore;
use metakv_raft::secure::TransportTls;
use metakv_store::{Expect, Op, SYS_BUCKET};
use serde::{Deserialize, Serialize};

use super::{Node, NodeConfig};
use crate::api::{ClientReply, ClientRequest, Consistency, Enrollment, JoinTokenInfo};
use crate::config::Security;
use crate::error::{Error, Result};
use crate::node_core::{Redirect, blocking_err, now_ms};
use crate::pool::{Pool, unavailable};
use crate::tls::{ClusterCa, Credential, NodeTls, Subject};

const TOKEN_PREFIX: &str = "mkv1";
/// Format of a sealed [`TokenRecord`].
const TOKEN_RECORD_FORMAT: u8 = 1;
/// The longest a join token may live.
pub const TOKEN_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// A join token's parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinToken {
    pub(crate) fingerprint: [u8; 32],
    pub(crate) id: u64,
    secret: [u8; 16],
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl JoinToken {
    fn draw(fingerprint: [u8; 32]) -> Result<JoinToken> {
        let mut secret = [0u8; 16];
        getrandom::fill(&mut secret)
            .map_err(|e| Error::Storage(format!("drawing a join token: {e}")))?;
        let id =
            getrandom::u64().map_err(|e| Error::Storage(format!("drawing a join token: {e}")))?;
        Ok(JoinToken {
            fingerprint,
            id,
            secret,
        })
    }

    pub(crate) fn parse(text: &str) -> Result<JoinToken> {
        let bad = || {
            Error::invalid(
                "not a join token (mkv1.<64 hex>.<16 hex>.<32 hex>, from `metakv cluster \
                 join-token`)",
            )
        };
        let mut parts = text.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(fp), Some(id), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        Ok(JoinToken {
            fingerprint: unhex(fp).ok_or_else(bad)?,
            id: u64::from_be_bytes(unhex(id).ok_or_else(bad)?),
            secret: unhex(secret).ok_or_else(bad)?,
        })
    }

    fn id_text(&self) -> String {
        format!("{:016x}", self.id)
    }

    fn hash(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.secret);
        d.as_ref().try_into().expect("SHA-256 is 32 bytes")
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}",
            hex(&self.fingerprint),
            self.id_text(),
            hex(&self.secret)
        )
    }
}

/// What `_sys` keeps of a join token: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenRecord {
    secret_sha256: [u8; 32],
    expires_ms: u64,
    /// The node that used it, once it has been used.
    used_by: Option<u64>,
}

fn token_key(id: u64) -> Vec<u8> {
    format!("join-token/{id:016x}").into_bytes()
}

impl TokenRecord {
    fn encode(&self) -> Vec<u8> {
        metakv_store::codec::seal(TOKEN_RECORD_FORMAT, self)
    }

    fn decode(bytes: &[u8]) -> Result<TokenRecord> {
        metakv_store::codec::unseal(TOKEN_RECORD_FORMAT, bytes)
            .map_err(|reason| Error::Storage(format!("a join token's record: {reason}")))
    }
}

fn refused(message: impl Into<String>) -> Error {
    Error::invalid(message)
}

/// The node's TLS at start (`None` when insecure): its material loaded from the data dir, made
/// there (a new cluster's first node), or received with its join token. `fresh` tells that
/// the data dir held no Raft log before this start.
pub(super) async fn prepare(
    config: &NodeConfig,
    fresh: bool,
    addr: &str,
) -> Result<Option<(NodeTls, TransportTls)>> {
    if config.security == Security::Insecure {
        tracing::warn!(
            id = config.id,
            "INSECURE: plain TCP, no certificates; anyone who reaches {addr} can read every value \
             and act as a member of the cluster"
        );
        return Ok(None);
    }
    let subject = Subject::Node {
        cluster: config.cluster_id.clone(),
        id: config.id,
    };
    let dir = config.data_dir.clone();
    let host = addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']).to_owned());
    let material = if NodeTls::exists(&dir) {
        blocking(move || NodeTls::load(&dir, &subject))
            .await?
            .map_err(|e| Error::invalid(e.to_string()))?
    } else if let Some(token) = &config.join_token {
        let Some(seed) = &config.join else {
            return Err(Error::invalid(
                "a join token needs a member to join through (`--join ADDR`)",
            ));
        };
        let material = enroll(config, seed, token, addr).await?;
        let stored = material.clone();
        blocking(move || stored.store(&dir, &subject))
            .await?
            .map_err(|e| Error::Storage(format!("storing the node's certificate: {e}")))?;
        tracing::info!(id = config.id, %seed, "received this node's certificate with a join token");
        material
    } else if !fresh {
        return Err(Error::invalid(pre_tls_message(&config.data_dir)));
    } else if config.join.is_some() {
        return Err(Error::invalid(
            "joining a secure cluster needs a join token: run `metakv cluster join-token` \
             against a member, then `metakv serve --join ADDR --token TOKEN`",
        ));
    } else {
        let made = blocking(move || NodeTls::create(&dir, &subject, host.as_deref()))
            .await?
            .map_err(|e| Error::Storage(format!("making the cluster's TLS material: {e}")))?;
        tracing::info!(
            creds = %config.data_dir.join(crate::tls::ADMIN_CREDS).display(),
            "made the cluster CA, this node's certificate and the admin credentials"
        );
        made
    };
    let transport = material
        .transport(&config.cluster_id)
        .map_err(|e| Error::invalid(e.to_string()))?;
    Ok(Some((material, transport)))
}

/// What a node started on a data dir from before TLS is told.
pub(crate) fn pre_tls_message(dir: &Path) -> String {
    format!(
        "{} holds a node that ran without TLS (made before metakv used TLS, or with \
         --insecure), and has no certificate: start its \
         cluster with --insecure, take a backup (`metakv --insecure backup FILE`), restore it \
         into a new data dir (`metakv restore FILE --data-dir DIR`) and serve that: a restored \
         node starts a new, secure cluster",
        dir.display()
    )
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(blocking_err)
}

/// Asks `seed` for this node's certificate with `token`, trusting only the CA it names.
async fn enroll(config: &NodeConfig, seed: &str, token: &str, addr: &str) -> Result<NodeTls> {
    let parsed = JoinToken::parse(token)?;
    let tls = crate::tls::joiner_transport(&config.cluster_id, parsed.fingerprint)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let pool = Pool::new(config.cluster_id.clone(), None, Some(tls));
    let request = ClientRequest::Enroll {
        token: token.trim().to_owned(),
        id: config.id,
        addr: addr.to_owned(),
    };
    // Nodes started together: the member it was given may not listen yet, or have no
    // leader yet. Those are asked again until the deadline; a refusal is final.
    let deadline = tokio::time::Instant::now() + config.request_timeout * 6;
    let e = loop {
        let reply = pool
            .client_call(seed, &request, config.request_timeout * 2)
            .await;
        let retry = match reply {
            Ok(ClientReply::Enrolled(e)) => break e,
            Ok(ClientReply::Error(
                e @ (Error::Unavailable(_) | Error::NotLeader { .. } | Error::Busy(_)),
            )) => e,
            Ok(ClientReply::Error(e)) => return Err(e),
            Ok(other) => return Err(Error::Protocol(format!("enroll answered {other:?}"))),
            // Refused at the handshake (another CA, plaintext): final.
            Err(e @ CallError::Refused { .. }) => return Err(unavailable(e)),
            Err(e) if e.is_connect() => unavailable(e),
            // Sent, and no answer: the token may be used now; a new one is needed.
            Err(e) => {
                return Err(Error::Unavailable(format!(
                    "enrolling through {seed}: no answer ({e}); if the token was used \
                     meanwhile, make a new one"
                )));
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Unavailable(format!(
                "enrolling through {seed} with the join token: {retry}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ca = ClusterCa::from_pem(e.ca_cert_pem, e.ca_key_pem)
        .map_err(|e| Error::Protocol(format!("the CA received: {e}")))?;
    if ca.fingerprint() != parsed.fingerprint {
        return Err(Error::Protocol(
            "the member sent another CA than the one the token names".into(),
        ));
    }
    Ok(NodeTls {
        ca,
        node: Credential {
            cert_pem: e.cert_pem,
            key_pem: e.key_pem,
        },
    })
}

impl Node {
    /// This node's TLS material: `Unavailable` on an insecure node.
    fn material(&self) -> Result<&NodeTls> {
        self.inner.tls.as_ref().ok_or_else(|| {
            Error::invalid("this node runs insecure: it has no CA and takes no join tokens")
        })
    }

    /// Makes a join token (on the leader).
    pub(super) async fn create_join_token(
        &self,
        ttl_ms: u64,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        self.lead_here()?;
        let material = match self.material() {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        if ttl_ms == 0 || ttl_ms > TOKEN_TTL_MAX.as_millis() as u64 {
            return Ok(Err(Error::invalid(format!(
                "a join token lives from 1 ms to {} h",
                TOKEN_TTL_MAX.as_secs() / 3600
            ))));
        }
        let token = match JoinToken::draw(material.ca.fingerprint()) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let expires_ms = now_ms().saturating_add(ttl_ms);
        let record = TokenRecord {
            secret_sha256: token.hash(),
            expires_ms,
            used_by: None,
        };
        let op = Op::Put {
            bucket: SYS_BUCKET.into(),
            key: token_key(token.id),
            value: record.encode(),
            expect: Expect::Absent,
        };
        Ok(self
            .inner
            .core
            .propose(op)
            .await
            .map_err(Redirect::from)?
            .and_then(|applied| match applied {
                metakv_store::Applied::Written { .. } => Ok(()),
                _ => Err(Error::Storage("a join token id drawn twice".into())),
            })
            .map(|()| {
                tracing::info!(token = %token.id_text(), expires_ms, "made a join token");
                ClientReply::JoinToken(JoinTokenInfo {
                    token: token.to_string(),
                    id: token.id_text(),
                    expires_ms,
                })
            }))
    }

    /// The record of token `id` and its revision, as of a linearizable read.
    async fn token_record(
        &self,
        id: u64,
    ) -> std::result::Result<Result<Option<(TokenRecord, u64)>>, Redirect> {
        self.inner.core.linearize(Consistency::Linearizable).await?;
        let key = token_key(id);
        let read = self
            .inner
            .core
            .local(move |s| s.read()?.get(SYS_BUCKET, &key, false))
            .await;
        Ok(read.and_then(|r| {
            r.map(|r| TokenRecord::decode(&r.value).map(|t| (t, r.rev)))
                .transpose()
        }))
    }

    /// Revokes join token `id` (on the leader).
    pub(super) async fn revoke_join_token(
        &self,
        id: &str,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        self.lead_here()?;
        let Some(id) = unhex::<8>(id).map(u64::from_be_bytes) else {
            return Ok(Err(refused(format!(
                "{id:?} is not a join token id (16 hex digits)"
            ))));
        };
        match self.token_record(id).await? {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(Err(refused(format!("no join token {id:016x}")))),
            Err(e) => return Ok(Err(e)),
        }
        let op = Op::Delete {
            bucket: SYS_BUCKET.into(),
            key: token_key(id),
            expect: Expect::Any,
        };
        Ok(self
            .inner
            .core
            .propose(op)
            .await
            .map_err(Redirect::from)?
            .map(|_| ClientReply::Done))
    }

    /// Checks a join token, marks it used, and issues node `id`'s certificate (on the leader).
    pub(super) async fn enroll_node(
        &self,
        token: &str,
        id: u64,
        addr: &str,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        self.lead_here()?;
        let material = match self.material() {
            Ok(m) => m.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let token = match JoinToken::parse(token) {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        if token.fingerprint != material.ca.fingerprint() {
            return Ok(Err(refused("the join token is for another cluster's CA")));
        }
        let (record, rev) = match self.token_record(token.id).await? {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Ok(Err(refused(format!(
                    "join token {} is unknown or revoked",
                    token.id_text()
                ))));
            }
            Err(e) => return Ok(Err(e)),
        };
        if !ring_eq(&record.secret_sha256, &token.hash()) {
            return Ok(Err(refused(format!(
                "join token {} does not match its secret",
                token.id_text()
            ))));
        }
        if let Some(by) = record.used_by {
            return Ok(Err(refused(format!(
                "join token {} was used already (by node {by}): make a new one",
                token.id_text()
            ))));
        }
        if now_ms() >= record.expires_ms {
            return Ok(Err(refused(format!(
                "join token {} has expired: make a new one",
                token.id_text()
            ))));
        }
        if self.is_member(id) {
            return Ok(Err(refused(format!(
                "node {id} is a member already: a token makes a new node; remove node {id} \
                 first (`metakv cluster remove-node {id}`) or give the new node another id"
            ))));
        }
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_owned());
        let subject = Subject::Node {
            cluster: self.inner.core.config.cluster_id.clone(),
            id,
        };
        let cred = match material.ca.issue(&subject, host.as_deref()) {
            Ok(c) => c,
            Err(e) => return Ok(Err(Error::invalid(format!("issuing a certificate: {e}")))),
        };
        let used = TokenRecord {
            used_by: Some(id),
            ..record
        };
        let op = Op::Put {
            bucket: SYS_BUCKET.into(),
            key: token_key(token.id),
            value: used.encode(),
            expect: Expect::Rev(rev),
        };
        match self.inner.core.propose(op).await.map_err(Redirect::from)? {
            Ok(metakv_store::Applied::Written { .. }) => {}
            Ok(_) => {
                return Ok(Err(refused(format!(
                    "join token {} was used or revoked meanwhile: make a new one",
                    token.id_text()
                ))));
            }
            Err(e) => return Ok(Err(e)),
        }
        tracing::info!(token = %token.id_text(), node = id, "issued a node certificate for a join token");
        Ok(Ok(ClientReply::Enrolled(Enrollment {
            ca_cert_pem: material.ca.cert_pem.clone(),
            ca_key_pem: material.ca.key_pem().to_owned(),
            cert_pem: cred.cert_pem,
            key_pem: cred.key_pem,
        })))
    }

    /// Whether node `id` is in this node's membership (voter or learner).
    fn is_member(&self, id: u64) -> bool {
        use openraft::async_runtime::WatchReceiver;
        let metrics = self.inner.core.raft.metrics();
        let m = metrics.borrow_watched();
        m.membership_config.membership().get_node(&id).is_some()
    }
}

/// Constant-time equality of two hashes.
fn ring_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a data dir is a new node's: no Raft log yet, or one a restore wrote that has not
/// started (it starts a new cluster from the backup).
pub(super) fn is_new(dir: &Path) -> bool {
    !dir.join(restore::LOG_FILE).exists() || dir.join(restore::RESTORED).exists()
}

/// A restored node has started: it is no longer new.
pub(super) fn started(dir: &Path) {
    let marker = dir.join(restore::RESTORED);
    if marker.exists()
        && let Err(e) = std::fs::remove_file(&marker)
    {
        tracing::warn!(path = %marker.display(), error = %e, "could not remove the restore marker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_damaged_ones_do_not_parse() {
        let token = JoinToken::draw([7; 32]).unwrap();
        let text = token.to_string();
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert_eq!(JoinToken::parse(&format!(" {text}\n")).unwrap(), token);
        for bad in [
            String::new(),
            text.replacen("mkv1", "mkv2", 1),
            text[..text.len() - 1].to_owned(),
            format!("{text}.x"),
            text.replace('.', "-"),
            format!("{}g", &text[..text.len() - 1]),
        ] {
            assert!(JoinToken::parse(&bad).is_err(), "{bad}");
        }
        let other = JoinToken::draw([7; 32]).unwrap();
        assert_ne!(other.hash(), token.hash());
        assert!(ring_eq(&token.hash(), &token.hash()));
    }

    #[test]
    fn token_records_are_sealed() {
        let record = TokenRecord {
            secret_sha256: [1; 32],
            expires_ms: 5,
            used_by: Some(4),
        };
        let bytes = record.encode();
        assert_eq!(TokenRecord::decode(&bytes).unwrap(), record);
        let mut damaged = bytes.clone();
        damaged[6] ^= 1;
        assert!(TokenRecord::decode(&damaged).is_err());
    }
}
