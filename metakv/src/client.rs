//! [`Client`]: the client API from another process, through any node of a cluster.

use std::time::Duration;

use crate::api::{ClientReply, ClientRequest, Kv};
use crate::error::{Error, Result};
use crate::pool::{Pool, unavailable};

/// A connection to a cluster through one or more of its nodes. The node asked forwards
/// writes and linearizable reads to the leader: a client never needs to know who leads.
#[derive(Debug)]
pub struct Client {
    endpoints: Vec<String>,
    cluster_id: String,
    pool: Pool,
    timeout: Duration,
}

impl Client {
    /// A client of the cluster `cluster_id` reached through `endpoints` (tried in order; the
    /// next one is tried when one cannot be reached).
    pub fn new(endpoints: Vec<String>, cluster_id: &str) -> Client {
        Client {
            endpoints,
            cluster_id: cluster_id.to_owned(),
            pool: Pool::new(cluster_id.to_owned(), None),
            timeout: Duration::from_secs(15),
        }
    }

    /// A client of the same cluster, with the same timeout, through `endpoint` only: what a
    /// request meant for one node (`compact_node`, `check_node`, `status`) goes through.
    pub fn via(&self, endpoint: &str) -> Client {
        Client::new(vec![endpoint.to_owned()], &self.cluster_id).with_timeout(self.timeout)
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
