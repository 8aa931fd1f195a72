//! A client's credentials file: the cluster CA, and a user's certificate and key or token.

use std::path::Path;

use metakv_raft::secure::TransportTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ca::Credential;
use super::error::TlsError;
use super::pem::{key_blocks, pem_encode, read, subject_of, write};
use super::verify::{Trust, client_config, roots, transport};

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
