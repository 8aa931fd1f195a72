//! The transport's TLS settings: TLS 1.3 only, what a dialer trusts (the cluster CA, or the
//! CA a join token names) and how a peer's certificate becomes who it is.

use std::sync::Arc;

use metakv_raft::secure::{Peer, TransportTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ca::Credential;
use super::error::{TlsError, bad};
use super::pem::{der_of, subject_of_der};
use super::subject::Subject;

pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(super) fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let der = der_of(ca_pem).map_err(|e| bad("the CA certificate", e))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(der))
        .map_err(|e| bad("the CA certificate", e))?;
    Ok(Arc::new(roots))
}

pub(super) fn chain_and_key(
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
pub(super) enum Trust {
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
pub(super) fn identify(cluster: &str, der: &[u8]) -> Option<Peer> {
    match subject_of_der(der).ok()? {
        Subject::Node { cluster: c, id } if c == cluster => Some(Peer::Node(id)),
        Subject::User { cluster: c, name } if c == cluster => Some(Peer::User(name)),
        _ => None,
    }
}

pub(super) fn client_config(
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

pub(super) fn transport(
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
