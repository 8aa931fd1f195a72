//! [`Client`]: the client API from another process, through any node of a cluster.

use std::time::Duration;

use crate::api::{ClientReply, ClientRequest, Kv};
use crate::error::{Error, Result};
use crate::pool::{Pool, unavailable};
use crate::tls::ClientCreds;

/// A connection to a cluster through one or more of its nodes. The node asked forwards
/// writes and linearizable reads to the leader: a client never needs to know who leads.
/// Its operations are [`Kv`]'s.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use metakv::{Client, ClientCreds, Kv};
///
/// // The credentials file the cluster's first node wrote (or a user's, from
/// // `metakv user add --creds-out`): the cluster CA and who this client is.
/// let creds = ClientCreds::load("metakv-data/admin.creds".as_ref())?;
/// let client = Client::new(
///     vec!["10.0.0.1:7379".into(), "10.0.0.2:7379".into()],
///     "metakv",
///     &creds,
/// )?;
/// if let Some(ada) = client.get("users", b"ada").await? {
///     println!("ada at revision {}", ada.rev);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<String>,
    cluster_id: String,
    pool: Pool,
    timeout: Duration,
}

impl Client {
    /// A client of the secure cluster `cluster_id` reached through `endpoints` (tried in
    /// order; the next one is tried when one cannot be reached). It talks TLS 1.3, trusts
    /// only nodes certified by the CA in `creds`, and acts for the user of its token, or else
    /// of its certificate.
    ///
    /// # Errors
    ///
    /// `Rejected` (kind `Invalid`) when `creds` cannot be used (a damaged certificate or key).
    pub fn new(endpoints: Vec<String>, cluster_id: &str, creds: &ClientCreds) -> Result<Client> {
        let tls = creds
            .transport(cluster_id)
            .map_err(|e| Error::invalid(format!("credentials: {e}")))?;
        Ok(Client {
            endpoints,
            cluster_id: cluster_id.to_owned(),
            pool: Pool::new(cluster_id.to_owned(), None, Some(tls)).with_token(creds.token.clone()),
            timeout: Duration::from_secs(15),
        })
    }

    /// A client of a cluster whose nodes run insecure ([`crate::Security::Insecure`]): plain
    /// TCP, nothing verified. A secure node refuses it.
    pub fn insecure(endpoints: Vec<String>, cluster_id: &str) -> Client {
        Client {
            endpoints,
            cluster_id: cluster_id.to_owned(),
            pool: Pool::new(cluster_id.to_owned(), None, None),
            timeout: Duration::from_secs(15),
        }
    }

    /// A client of the same cluster, with the same credentials and timeout, through
    /// `endpoint` only: what a request meant for one node (`compact_node`, `check_node`,
    /// `status`) goes through.
    pub fn via(&self, endpoint: &str) -> Client {
        Client {
            endpoints: vec![endpoint.to_owned()],
            cluster_id: self.cluster_id.clone(),
            pool: Pool::new(self.cluster_id.clone(), None, self.pool.tls().cloned())
                .with_token(self.pool.token().cloned()),
            timeout: self.timeout,
        }
    }

    /// How long one request may take, forwarding included.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }
}

impl Kv for Client {
    async fn request(&self, request: ClientRequest) -> Result<ClientReply> {
        let mut last = None;
        for addr in &self.endpoints {
            match self.pool.client_call(addr, &request, self.timeout).await {
                Ok(ClientReply::Error(e)) => return Err(e),
                Ok(reply) => return Ok(reply),
                // Only a failure to reach the node is retried elsewhere: the request was not sent.
                Err(e) if e.is_connect() => last = Some(e),
                // Sent, and no answer: a write's outcome is unknown.
                Err(e) => return Err(request.failed_after_sending(e.to_string())),
            }
        }
        Err(last
            .map(unavailable)
            .unwrap_or_else(|| Error::Unavailable("no endpoints".into())))
    }
}
