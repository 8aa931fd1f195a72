//! The cluster CA: made on a new cluster's first node, it issues every node's and user's
//! certificate.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::error::{TlsError, bad};
use super::pem::{der_of, hex};
use super::subject::Subject;

/// How long the CA and the certificates it issues are valid. Rotation is not built yet, so a
/// certificate must not expire under a running cluster: ten years.
const VALID_DAYS: i64 = 3650;

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
    pub(super) key_pem: String,
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
