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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metakv_raft::secure::{Peer, TransportTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The dir under the data dir that holds the node's TLS material.
pub const TLS_DIR: &str = "tls";
/// The admin credentials file, in the data dir of the node that made the cluster.
pub const ADMIN_CREDS: &str = "admin.creds";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const NODE_CERT: &str = "node.crt";
const NODE_KEY: &str = "node.key";
/// How long the CA and the certificates it issues are valid. Rotation is not built yet, so a
/// certificate must not expire under a running cluster: ten years.
const VALID_DAYS: i64 = 3650;

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

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Node { cluster: String, id: u64 },
    User { cluster: String, name: String },
}

impl Subject {
    /// The SAN URI that names this subject.
    pub fn uri(&self) -> String {
        match self {
            Subject::Node { cluster, id } => format!("metakv://{cluster}/node/{id}"),
            Subject::User { cluster, name } => format!("metakv://{cluster}/user/{name}"),
        }
    }

    /// The subject a SAN URI names; `None` for any other URI. Cluster ids and user names
    /// hold no `/` (the cluster id is checked before a node starts).
    pub fn from_uri(uri: &str) -> Option<Subject> {
        let rest = uri.strip_prefix("metakv://")?;
        let mut parts = rest.split('/');
        let (cluster, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || cluster.is_empty() || name.is_empty() {
            return None;
        }
        let cluster = cluster.to_owned();
        match kind {
            "node" => {
                let id: u64 = name.parse().ok()?;
                (id.to_string() == name).then_some(Subject::Node { cluster, id })
            }
            "user" => Some(Subject::User {
                cluster,
                name: name.to_owned(),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Node { cluster, id } => write!(f, "node {id} of cluster {cluster:?}"),
            Subject::User { cluster, name } => write!(f, "user {name:?} of cluster {cluster:?}"),
        }
    }
}

/// A certificate and its key, both PEM.
#[derive(Clone)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // IMPORTANT: never print a key.
        f.debug_struct("Credential")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The cluster CA: its certificate, and its key where this node holds it.
#[derive(Clone)]
pub struct ClusterCa {
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &hex(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    // A day back, for peers whose clocks run a little behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the first certificate in `pem`.
fn der_of(pem: &str) -> Result<Vec<u8>, String> {
    let (_, parsed) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    Ok(parsed.contents)
}

impl ClusterCa {
    /// The CA of `cert_pem` with its key `key_pem` (empty: a CA whose key this node lacks).
    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<ClusterCa, TlsError> {
        der_of(&cert_pem).map_err(|e| bad("the CA certificate", e))?;
        if !key_pem.is_empty() {
            KeyPair::from_pem(&key_pem)?;
        }
        Ok(ClusterCa { cert_pem, key_pem })
    }

    /// The CA's key (PEM), empty where this node does not hold it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Makes a new CA for cluster `cluster_id`.
    pub fn create(cluster_id: &str) -> Result<ClusterCa, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("metakv cluster {cluster_id} CA"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// SHA-256 of the CA certificate's DER: what a join token carries, so that a joining node
    /// trusts exactly this CA.
    pub fn fingerprint(&self) -> [u8; 32] {
        // The PEM was made here or checked when loaded (`NodeTls::load`).
        let der = der_of(&self.cert_pem).expect("a checked CA certificate");
        let digest = ring::digest::digest(&ring::digest::SHA256, &der);
        digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
    }

    /// Issues a certificate for `subject`, with `host` (an IP address or a DNS name, the
    /// address others dial) as a SAN too when given.
    pub fn issue(&self, subject: &Subject, host: Option<&str>) -> Result<Credential, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, subject.to_string());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(subject.uri().try_into()?)];
        if let Some(host) = host {
            params.subject_alt_names.push(match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(host.to_owned().try_into()?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Credential {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Who the certificate `cert_pem` speaks for: its one metakv SAN URI.
pub fn subject_of(cert_pem: &str) -> Result<Subject, TlsError> {
    subject_of_der(&der_of(cert_pem).map_err(TlsError::NoSubject)?)
}

/// [`subject_of`] a certificate's DER (what a TLS handshake presents).
pub fn subject_of_der(der: &[u8]) -> Result<Subject, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::NoSubject(e.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::NoSubject(e.to_string()))?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let mut subjects = names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(uri) => Subject::from_uri(uri),
        _ => None,
    });
    match (subjects.next(), subjects.next()) {
        (Some(s), None) => Ok(s),
        (None, _) => Err(TlsError::NoSubject("no metakv SAN URI".into())),
        (Some(_), Some(_)) => Err(TlsError::NoSubject("more than one metakv SAN URI".into())),
    }
}

/// A node's TLS material: the cluster CA (its key only on nodes that hold it) and the node's
/// own credential.
#[derive(Debug, Clone)]
pub struct NodeTls {
    pub ca: ClusterCa,
    pub node: Credential,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        doing: "reading",
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let io = |doing, source| TlsError::Io {
        doing,
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = metakv_store::private::create_file(&tmp).map_err(|e| io("creating", e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("writing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming", e))
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
        let dir = data_dir.join(TLS_DIR);
        metakv_store::private::create_dir_all(&dir).map_err(|source| TlsError::Io {
            doing: "creating",
            path: dir.clone(),
            source,
        })?;
        write(&dir.join(CA_CERT), &ca.cert_pem)?;
        write(&dir.join(CA_KEY), &ca.key_pem)?;
        write(&dir.join(NODE_KEY), &node.key_pem)?;
        write(
            &data_dir.join(ADMIN_CREDS),
            &format!("{}{}{}", ca.cert_pem, admin.cert_pem, admin.key_pem),
        )?;
        // Last: `exists` looks for it, so a crash before here makes it all again.
        write(&dir.join(NODE_CERT), &node.cert_pem)?;
        Ok(NodeTls { ca, node })
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
        let dir = data_dir.join(TLS_DIR);
        metakv_store::private::create_dir_all(&dir).map_err(|source| TlsError::Io {
            doing: "creating",
            path: dir.clone(),
            source,
        })?;
        write(&dir.join(CA_CERT), &self.ca.cert_pem)?;
        write(&dir.join(CA_KEY), &self.ca.key_pem)?;
        write(&dir.join(NODE_KEY), &self.node.key_pem)?;
        // Last: `exists` looks for it, so a crash before here leaves no half of the material.
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

/// What a client presents and trusts: the cluster CA, and a user's certificate and key or a
/// user token (or both: the token then names the user). A credentials file holds them as PEM,
/// the CA's certificate first, and a token as a line `metakv-token: <token>`.
#[derive(Clone)]
pub struct ClientCreds {
    pub ca_pem: String,
    pub user: Option<Credential>,
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // IMPORTANT: never print a key or a token.
        f.debug_struct("ClientCreds")
            .field(
                "user",
                &self
                    .user
                    .as_ref()
                    .and_then(|u| subject_of(&u.cert_pem).ok()),
            )
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

/// The line of a credentials file that holds a token.
const TOKEN_LINE: &str = "metakv-token: ";

impl ClientCreds {
    /// Reads a credentials file.
    pub fn load(path: &Path) -> Result<ClientCreds, TlsError> {
        let text = read(path)?;
        ClientCreds::parse(&text).map_err(|reason| TlsError::Unreadable {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses a credentials file's text: the CA's certificate, then a user's certificate and
    /// key, or a token line, or both.
    pub fn parse(pem: &str) -> Result<ClientCreds, String> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a credentials file: {e}"))?;
        let token = pem
            .lines()
            .find_map(|l| l.strip_prefix(TOKEN_LINE))
            .map(|t| t.trim().to_owned());
        let pem_of = |der: &CertificateDer<'_>| pem_encode("CERTIFICATE", der.as_ref());
        let (ca, user) = match (certs.as_slice(), &token) {
            ([ca], Some(_)) => (ca, None),
            ([ca, user], _) => {
                PrivateKeyDer::from_pem_slice(pem.as_bytes())
                    .map_err(|e| format!("no key for the user's certificate: {e}"))?;
                let cert_pem = pem_of(user);
                subject_of(&cert_pem).map_err(|e| e.to_string())?;
                (
                    ca,
                    Some(Credential {
                        cert_pem,
                        key_pem: key_blocks(pem),
                    }),
                )
            }
            _ => {
                return Err(format!(
                    "a credentials file holds the CA's certificate, then a user's certificate \
                     and key or a token; this one holds {} certificates{}",
                    certs.len(),
                    if token.is_some() { " and a token" } else { "" }
                ));
            }
        };
        Ok(ClientCreds {
            ca_pem: pem_of(ca),
            user,
            token,
        })
    }

    /// The same credentials acting for the user of `token` (the CA is kept).
    pub fn with_token(mut self, token: String) -> ClientCreds {
        self.token = Some(token);
        self
    }

    /// The credentials file's text.
    pub fn to_pem(&self) -> String {
        let mut out = self.ca_pem.clone();
        if let Some(user) = &self.user {
            out.push_str(&user.cert_pem);
            out.push_str(&key_blocks(&user.key_pem));
        }
        if let Some(token) = &self.token {
            out.push_str(&format!("{TOKEN_LINE}{token}\n"));
        }
        out
    }

    /// Writes the credentials file `path` (owner-only).
    pub fn store(&self, path: &Path) -> Result<(), TlsError> {
        write(path, &self.to_pem())
    }

    /// The client side of the transport: trusts nodes of `cluster_id` under this CA and
    /// presents the user's certificate, if there is one.
    pub fn transport(&self, cluster_id: &str) -> Result<TransportTls, TlsError> {
        let trust = Trust::Roots(roots(&self.ca_pem)?);
        let client = client_config(cluster_id, trust, self.user.as_ref())?;
        Ok(transport(cluster_id, None, client))
    }
}

/// The private key blocks of a PEM text (a credentials file keeps its key after its
/// certificates).
fn key_blocks(pem: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END") && line.contains("PRIVATE KEY") {
            inside = false;
        }
    }
    out
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use std::fmt::Write as _;
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(
            out,
            "{}",
            std::str::from_utf8(line).expect("base64 is ASCII")
        );
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn bad(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Unreadable {
        path: PathBuf::from(what),
        reason: e.to_string(),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let der = der_of(ca_pem).map_err(|e| bad("the CA certificate", e))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(der))
        .map_err(|e| bad("the CA certificate", e))?;
    Ok(Arc::new(roots))
}

fn chain_and_key(
    cred: &Credential,
    ca_pem: Option<&str>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut chain = vec![CertificateDer::from(
        der_of(&cred.cert_pem).map_err(|e| bad("a certificate", e))?,
    )];
    if let Some(ca) = ca_pem {
        // The CA goes with the node's certificate: a joining node that knows only the CA's
        // fingerprint checks the chain against it.
        chain.push(CertificateDer::from(
            der_of(ca).map_err(|e| bad("the CA certificate", e))?,
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(cred.key_pem.as_bytes())
        .map_err(|e| bad("a private key", e))?;
    Ok((chain, key))
}

/// What a dialer trusts: the CA it holds, or (a joining node) the CA whose SHA-256 its token
/// names, found in the chain the node presents.
#[derive(Debug, Clone)]
enum Trust {
    Roots(Arc<RootCertStore>),
    Pinned([u8; 32]),
}

/// The dialer's check of a node's certificate: it chains to the cluster CA and names a node
/// of `cluster` (which node is the transport's check, against the one it meant to dial). The
/// host name is not checked: a node is known by its certificate's SAN URI.
#[derive(Debug)]
struct NodeVerifier {
    cluster: String,
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = match &self.trust {
            Trust::Roots(roots) => Arc::clone(roots),
            Trust::Pinned(fingerprint) => {
                let ca = intermediates
                    .iter()
                    .find(|c| {
                        ring::digest::digest(&ring::digest::SHA256, c.as_ref()).as_ref()
                            == fingerprint
                    })
                    .ok_or_else(|| {
                        rustls::Error::General(
                            "the node's CA is not the one the join token names".into(),
                        )
                    })?;
                let mut roots = RootCertStore::empty();
                roots.add(ca.clone().into_owned())?;
                Arc::new(roots)
            }
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match identify(&self.cluster, end_entity.as_ref()) {
            Some(Peer::Node(_)) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General(format!(
                "the certificate names no node of cluster {:?}",
                self.cluster
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Who a certificate (DER, already verified against the cluster CA) speaks for, in `cluster`.
fn identify(cluster: &str, der: &[u8]) -> Option<Peer> {
    match subject_of_der(der).ok()? {
        Subject::Node { cluster: c, id } if c == cluster => Some(Peer::Node(id)),
        Subject::User { cluster: c, name } if c == cluster => Some(Peer::User(name)),
        _ => None,
    }
}

fn client_config(
    cluster_id: &str,
    trust: Trust,
    cred: Option<&Credential>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad("TLS settings", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeVerifier {
            cluster: cluster_id.to_owned(),
            trust,
            provider,
        }));
    let config = match cred {
        Some(cred) => {
            let (chain, key) = chain_and_key(cred, None)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("a certificate and its key", e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn transport(
    cluster_id: &str,
    server: Option<Arc<ServerConfig>>,
    client: Arc<ClientConfig>,
) -> TransportTls {
    let cluster = cluster_id.to_owned();
    TransportTls {
        acceptor: server.map(TlsAcceptor::from),
        connector: TlsConnector::from(client),
        identify: Arc::new(move |der: &[u8]| identify(&cluster, der)),
    }
}

/// The dialing side for a node that joins with a token: it trusts only the CA whose SHA-256
/// is `ca_fingerprint` and presents no certificate (it has none yet).
pub fn joiner_transport(
    cluster_id: &str,
    ca_fingerprint: [u8; 32],
) -> Result<TransportTls, TlsError> {
    let client = client_config(cluster_id, Trust::Pinned(ca_fingerprint), None)?;
    Ok(transport(cluster_id, None, client))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> Subject {
        Subject::Node {
            cluster: "prod".into(),
            id,
        }
    }

    #[test]
    fn subjects_round_trip_through_their_uri_and_nothing_else_parses() {
        for s in [
            node(7),
            Subject::User {
                cluster: "prod".into(),
                name: "ada".into(),
            },
        ] {
            assert_eq!(Subject::from_uri(&s.uri()), Some(s));
        }
        for bad in [
            "metakv://prod/node/07",
            "metakv://prod/node/-1",
            "metakv://prod/node/1/x",
            "metakv:///node/1",
            "metakv://prod/group/x",
            "https://prod/node/1",
            "metakv://prod/user/",
        ] {
            assert_eq!(Subject::from_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_issued_certificate_names_its_subject_and_chains_to_the_ca() {
        let ca = ClusterCa::create("prod").unwrap();
        let cred = ca.issue(&node(3), Some("127.0.0.1")).unwrap();
        assert_eq!(subject_of(&cred.cert_pem).unwrap(), node(3));
        let leaf_der = der_of(&cred.cert_pem).unwrap();
        let ca_der = der_of(&ca.cert_pem).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        leaf.verify_signature(Some(root.public_key()))
            .expect("the leaf is signed by the CA");
        let other = ClusterCa::create("prod").unwrap();
        let other_der = der_of(&other.cert_pem).unwrap();
        let (_, stranger) = x509_parser::parse_x509_certificate(&other_der).unwrap();
        assert!(
            leaf.verify_signature(Some(stranger.public_key())).is_err(),
            "another CA's key verifies the leaf"
        );
        assert_ne!(ca.fingerprint(), other.fingerprint());
        assert!(root.is_ca());
    }

    #[test]
    fn a_node_makes_its_material_once_owner_only_and_loads_it_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert!(!NodeTls::exists(&data));
        let made = NodeTls::create(&data, &node(1), Some("127.0.0.1")).unwrap();
        assert!(NodeTls::exists(&data));
        let loaded = NodeTls::load(&data, &node(1)).unwrap();
        assert_eq!(loaded.ca.fingerprint(), made.ca.fingerprint());
        assert_eq!(loaded.node.cert_pem, made.node.cert_pem);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data.join(TLS_DIR)), 0o700);
        for f in [CA_CERT, CA_KEY, NODE_CERT, NODE_KEY] {
            assert_eq!(mode(&data.join(TLS_DIR).join(f)), 0o600, "{f}");
        }
        assert_eq!(mode(&data.join(ADMIN_CREDS)), 0o600);
        let creds = std::fs::read_to_string(data.join(ADMIN_CREDS)).unwrap();
        assert!(creds.starts_with(&made.ca.cert_pem));
        let admin_pem = &creds[made.ca.cert_pem.len()..];
        assert_eq!(
            subject_of(admin_pem).unwrap(),
            Subject::User {
                cluster: "prod".into(),
                name: "admin".into()
            }
        );
        let e = NodeTls::load(&data, &node(2)).unwrap_err();
        assert!(matches!(e, TlsError::OtherSubject { .. }), "{e}");
        std::fs::write(data.join(TLS_DIR).join(CA_CERT), "not a certificate").unwrap();
        let e = NodeTls::load(&data, &node(1)).unwrap_err();
        assert!(matches!(e, TlsError::Unreadable { .. }), "{e}");
        assert!(
            !format!("{made:?}").contains("PRIVATE KEY"),
            "a key in Debug output"
        );
    }
}
