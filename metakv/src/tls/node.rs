//! A node's TLS material in its data dir: made, received with a join token, or loaded.

use std::path::Path;
use std::sync::Arc;

use metakv_raft::secure::TransportTls;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use super::ca::{ClusterCa, Credential};
use super::error::{TlsError, bad};
use super::pem::{der_of, read, subject_of, write};
use super::subject::Subject;
use super::verify::{Trust, chain_and_key, client_config, provider, roots, transport};

/// The dir under the data dir that holds the node's TLS material.
pub const TLS_DIR: &str = "tls";
/// The admin credentials file, in the data dir of the node that made the cluster.
pub const ADMIN_CREDS: &str = "admin.creds";
pub(super) const CA_CERT: &str = "ca.crt";
pub(super) const CA_KEY: &str = "ca.key";
pub(super) const NODE_CERT: &str = "node.crt";
pub(super) const NODE_KEY: &str = "node.key";

/// A node's TLS material: the cluster CA (its key only on nodes that hold it) and the node's
/// own credential.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub ca: ClusterCa,
    pub node: Credential,
}

impl NodeTls {
    /// Whether `data_dir` holds TLS material.
    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(TLS_DIR).join(NODE_CERT).exists()
    }

    /// Makes a new cluster's CA, this node's certificate (for `subject`, reachable at `host`)
    /// and the admin credentials file, in `data_dir`.
    pub fn create(
        data_dir: &Path,
        subject: &Subject,
        host: Option<&str>,
    ) -> Result<NodeTls, TlsError> {
        let Subject::Node { cluster, .. } = subject else {
            return Err(TlsError::NoSubject(format!("{subject} is not a node")));
        };
        let ca = ClusterCa::create(cluster)?;
        let node = ca.issue(subject, host)?;
        let admin = ca.issue(
            &Subject::User {
                cluster: cluster.clone(),
                name: "admin".into(),
            },
            None,
        )?;
        let admin_creds = format!("{}{}{}", ca.cert_pem, admin.cert_pem, admin.key_pem);
        let tls = NodeTls { ca, node };
        tls.write_files(data_dir, Some(&admin_creds))?;
        Ok(tls)
    }

    /// Writes received material (a join token's enrollment) into `data_dir`; the node
    /// certificate must be `expected`'s and chain to the CA.
    pub fn store(&self, data_dir: &Path, expected: &Subject) -> Result<(), TlsError> {
        let found = subject_of(&self.node.cert_pem)?;
        if found != *expected {
            return Err(TlsError::OtherSubject {
                path: data_dir.join(TLS_DIR).join(NODE_CERT),
                found,
                expected: expected.clone(),
            });
        }
        self.write_files(data_dir, None)
    }

    /// Writes the CA, its key (if held), the node's key and `admin_creds` (a new cluster's
    /// admin credentials file), then the node certificate. Last: `exists` looks for it, so a
    /// crash before it leaves no half of the material, and the next start makes (or
    /// receives) it all again.
    fn write_files(&self, data_dir: &Path, admin_creds: Option<&str>) -> Result<(), TlsError> {
        let dir = data_dir.join(TLS_DIR);
        metakv_store::private::create_dir_all(&dir).map_err(|source| TlsError::Io {
            doing: "creating",
            path: dir.clone(),
            source,
        })?;
        write(&dir.join(CA_CERT), &self.ca.cert_pem)?;
        write(&dir.join(CA_KEY), &self.ca.key_pem)?;
        write(&dir.join(NODE_KEY), &self.node.key_pem)?;
        if let Some(text) = admin_creds {
            write(&data_dir.join(ADMIN_CREDS), text)?;
        }
        write(&dir.join(NODE_CERT), &self.node.cert_pem)
    }

    /// Loads `data_dir`'s material and checks that its node certificate is `expected`'s.
    pub fn load(data_dir: &Path, expected: &Subject) -> Result<NodeTls, TlsError> {
        let dir = data_dir.join(TLS_DIR);
        let ca = ClusterCa {
            cert_pem: read(&dir.join(CA_CERT))?,
            key_pem: read(&dir.join(CA_KEY)).unwrap_or_default(),
        };
        // A damaged CA file is refused here, not misread later.
        der_of(&ca.cert_pem).map_err(|reason| TlsError::Unreadable {
            path: dir.join(CA_CERT),
            reason,
        })?;
        let node = Credential {
            cert_pem: read(&dir.join(NODE_CERT))?,
            key_pem: read(&dir.join(NODE_KEY))?,
        };
        let found = subject_of(&node.cert_pem)?;
        if found != *expected {
            return Err(TlsError::OtherSubject {
                path: dir.join(NODE_CERT),
                found,
                expected: expected.clone(),
            });
        }
        Ok(NodeTls { ca, node })
    }
}

impl NodeTls {
    /// This node's side of the transport: TLS 1.3 only, the node certificate (with the CA's)
    /// both ways, client certificates of the cluster CA asked for but not required (a node
    /// that joins with a token has none yet; what a connection without one may ask is the
    /// node's business).
    pub fn transport(&self, cluster_id: &str) -> Result<TransportTls, TlsError> {
        let provider = provider();
        let roots = roots(&self.ca.cert_pem)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .allow_unauthenticated()
                .build()
                .map_err(|e| bad("the CA certificate", e))?;
        let (chain, key) = chain_and_key(&self.node, Some(&self.ca.cert_pem))?;
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad("TLS settings", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| bad("the node certificate and its key", e))?;
        // IMPORTANT: no session tickets. A dialer checks that an idle pooled connection is
        // still open by peeking for bytes (`Stream::is_stale`); a ticket arriving after the
        // handshake would read as a closed connection.
        server.send_tls13_tickets = 0;
        let client = client_config(cluster_id, Trust::Roots(roots), Some(&self.node))?;
        Ok(transport(cluster_id, Some(Arc::new(server)), client))
    }
}
