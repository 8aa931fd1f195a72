//! Connections to other nodes, kept open between calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use metakv_raft::network::{CallError, Conn};
use metakv_raft::secure::TransportTls;
use metakv_raft::wire::{Reply, Request};

use crate::api::{CLIENT_SERVICE, ClientReply, ClientRequest};
use crate::error::{Error, Result};
use crate::sync::lock;

/// Idle connections kept per address.
const IDLE_PER_ADDR_MAX: usize = 8;

#[derive(Debug)]
pub(crate) struct Pool {
    cluster_id: String,
    from: Option<u64>,
    /// TLS for every dial; `None` in insecure mode.
    tls: Option<TransportTls>,
    /// The user token every connection's hello carries (a client acting for a user).
    token: Option<String>,
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

impl Pool {
    pub(crate) fn new(cluster_id: String, from: Option<u64>, tls: Option<TransportTls>) -> Pool {
        Pool {
            cluster_id,
            from,
            tls,
            token: None,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// The same pool acting for the user of `token`.
    pub(crate) fn with_token(mut self, token: Option<String>) -> Pool {
        self.token = token;
        self
    }

    pub(crate) fn token(&self) -> Option<&String> {
        self.token.as_ref()
    }

    pub(crate) fn tls(&self) -> Option<&TransportTls> {
        self.tls.as_ref()
    }

    fn take(&self, addr: &str) -> Option<Conn> {
        lock(&self.idle).get_mut(addr).and_then(Vec::pop)
    }

    fn give(&self, addr: &str, conn: Conn) {
        let mut idle = lock(&self.idle);
        let list = idle.entry(addr.to_owned()).or_default();
        if list.len() < IDLE_PER_ADDR_MAX {
            list.push(conn);
        }
    }

    /// One call on a pooled connection, or a new one. Idle connections the peer has closed since
    /// (a restart) are dropped before anything is sent on them; a call that fails after its
    /// request was sent is not repeated, since the peer may have acted on it.
    pub(crate) async fn call(
        &self,
        addr: &str,
        request: &Request,
        ttl: Duration,
    ) -> Result<Reply, CallError> {
        let mut conn = loop {
            match self.take(addr) {
                Some(conn) if conn.is_stale() => continue,
                Some(conn) => break conn,
                None => {
                    break Conn::dial_as(
                        addr,
                        &self.cluster_id,
                        self.from,
                        self.tls.as_ref(),
                        self.token.as_deref(),
                    )
                    .await?;
                }
            }
        };
        let reply = conn.call(request, ttl).await?;
        self.give(addr, conn);
        Ok(reply)
    }

    /// A call to the client service at `addr`.
    pub(crate) async fn client_call(
        &self,
        addr: &str,
        request: &ClientRequest,
        ttl: Duration,
    ) -> Result<ClientReply, CallError> {
        self.service_call(addr, CLIENT_SERVICE, request, ttl).await
    }

    /// A call to the named service at `addr`, postcard on both ways.
    pub(crate) async fn service_call<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
        &self,
        addr: &str,
        service: &str,
        request: &Req,
        ttl: Duration,
    ) -> Result<Rep, CallError> {
        let payload = postcard::to_stdvec(request).expect("service requests encode");
        let service = Request::Service {
            service: service.into(),
            payload,
        };
        match self.call(addr, &service, ttl).await? {
            Reply::Service(bytes) => postcard::from_bytes(&bytes)
                .map_err(|e| CallError::Unexpected(format!("undecodable service reply: {e}"))),
            other => Err(CallError::Unexpected(format!("{other:?}"))),
        }
    }
}

pub(crate) fn unavailable(e: CallError) -> Error {
    Error::Unavailable(e.to_string())
}
