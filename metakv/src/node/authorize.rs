//! Whether a caller may send a request: who it is (its token, checked against its user's
//! record, or its certificate), what its roles grant, and whom the request then acts for.
//!
//! The users and grants of recent callers are cached while `_sys` is unchanged (a change
//! counter of the state machine's, read before the records). A request a member passes on for
//! a user (`ClientRequest::OnBehalf`) is authorised here again, as if that user's own
//! connection had reached this node; `node::permitted` says what a caller that is no user may
//! send.

use metakv_raft::secure::Peer;
use metakv_raft::server::{Caller, RefusalLog};
use metakv_store::Op;

use super::Node;
use super::access::{check_name, hex, parse_token, same, sha256};
use crate::api::{ADMIN, ClientRequest, Grants, Need};
use crate::error::{Error, Result};

/// Callers whose user and grants [`AccessCache`] keeps at most (then it starts again).
const CACHED_CALLERS_MAX: usize = 4096;

/// What a caller was found to be: its user (or why it is refused) and the grants of its
/// roles, as of a value of the state machine's `_sys` change counter.
#[derive(Debug, Clone)]
struct Found {
    changes: u64,
    user: Result<String>,
    grants: Vec<Grants>,
}

/// The users and grants of recent callers, by token or certificate: reading them from `_sys`
/// on every request cost a third of the writes per second at 64 clients. An entry is used
/// only while `_sys` has not changed since it was read.
#[derive(Debug)]
pub(crate) struct AccessCache {
    /// The state machine's counter of `_sys` changes.
    changes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    found: std::sync::Mutex<std::collections::HashMap<String, Found>>,
}

impl AccessCache {
    pub(crate) fn new(changes: std::sync::Arc<std::sync::atomic::AtomicU64>) -> AccessCache {
        AccessCache {
            changes,
            found: Default::default(),
        }
    }
}

/// Whom a request acts for, once it is authorised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Acting {
    /// This process (the embedded API), or a member node asking for itself.
    Trusted,
    /// A user. A request passed on to another node carries it, with the token it came with,
    /// so that the node that answers authorises it again (`ClientRequest::OnBehalf`).
    User { name: String, token: Option<String> },
}

impl Acting {
    /// `request`, as this caller sends it to another node.
    pub(crate) fn wrap(&self, request: &ClientRequest) -> ClientRequest {
        match self {
            Acting::Trusted => request.clone(),
            Acting::User { name, token } => ClientRequest::OnBehalf {
                user: name.clone(),
                token: token.clone(),
                request: Box::new(request.clone()),
            },
        }
    }

    /// The user, if a user acts; `None` for a trusted caller.
    pub(crate) fn user(&self) -> Option<&str> {
        match self {
            Acting::Trusted => None,
            Acting::User { name, .. } => Some(name),
        }
    }
}

impl Node {
    /// The user a caller acts for: its token's (checked against the user's record), else its
    /// certificate's.
    async fn user_of(&self, caller: &Caller) -> Result<String> {
        let unknown = |user: &str| Error::Denied {
            user: format!("{user:?}"),
            action: "connect: the token is unknown, revoked or damaged".into(),
        };
        if let Some(token) = &caller.token {
            let (user, id, secret) = parse_token(token).ok_or_else(|| unknown("?"))?;
            let record = self.user_record(user).await?;
            let valid = record.is_some_and(|(r, _)| {
                r.tokens
                    .iter()
                    .any(|t| t.id == id && same(&t.sha256, &sha256(secret.as_bytes())))
            });
            return match valid {
                true => Ok(user.to_owned()),
                false => Err(unknown(user)),
            };
        }
        match &caller.peer {
            Peer::User(name) => Ok(name.clone()),
            other => Err(Error::Denied {
                user: other.to_string(),
                action: "connect: it presents neither a user certificate nor a token".into(),
            }),
        }
    }

    /// The grants of `user`'s roles.
    async fn grants_of(&self, user: &str) -> Result<Vec<Grants>> {
        if user == ADMIN {
            return Ok(vec![Grants::admin()]);
        }
        let Some((record, _)) = self.user_record(user).await? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for role in &record.roles {
            if let Some((grants, _)) = self.role_grants(role).await? {
                out.push(grants);
            }
        }
        Ok(out)
    }

    /// Who `caller` is and what its roles grant: from the cache while `_sys` is unchanged,
    /// else read (the counter is read first, so a change applied meanwhile is seen next time).
    async fn found(&self, caller: &Caller) -> Result<Found> {
        let cache = &self.inner.access;
        // A token is kept as its hash: a hello may carry a token up to a client frame long,
        // and 4,096 of those would be gigabytes.
        let key = match (&caller.token, &caller.peer) {
            (Some(token), _) => format!("token {}", hex(&sha256(token.as_bytes()))),
            (None, peer) => format!("peer {peer:?}"),
        };
        let changes = cache.changes.load(std::sync::atomic::Ordering::Acquire);
        if let Some(found) = crate::sync::lock(&cache.found).get(&key)
            && found.changes == changes
        {
            return Ok(found.clone());
        }
        let user = self.user_of(caller).await;
        let grants = match &user {
            Ok(user) => self.grants_of(user).await?,
            Err(_) => Vec::new(),
        };
        let found = Found {
            changes,
            user,
            grants,
        };
        let mut map = crate::sync::lock(&cache.found);
        if map.len() >= CACHED_CALLERS_MAX {
            map.clear();
        }
        map.insert(key, found.clone());
        Ok(found)
    }

    /// Whether `caller` may send `request` (see the module docs and `node::permitted`), and
    /// whom it acts for. A member's `OnBehalf` is authorised for the user it names, as if
    /// that user had sent what it carries here.
    pub(super) async fn authorize(
        &self,
        caller: &Caller,
        request: ClientRequest,
        denials: &RefusalLog,
    ) -> Result<(ClientRequest, Acting)> {
        let ClientRequest::OnBehalf {
            user,
            token,
            request,
        } = request
        else {
            let acting = self.authorize_one(caller, &request, denials).await?;
            return Ok((request, acting));
        };
        if caller.node.is_none() {
            return Err(Error::Denied {
                user: caller.peer.to_string(),
                action: "send a request on a user's behalf: only a member node may".into(),
            });
        }
        if let Some(why) = super::route::internal_only(&request)
            .or_else(|| matches!(*request, ClientRequest::OnBehalf { .. }).then(|| "a request on a user's behalf carries one request, not another on a user's behalf".to_owned()))
        {
            return Err(Error::invalid(why));
        }
        // Checked before it is looked up or cached: a name no user can have.
        check_name("user", &user)?;
        let user = Caller {
            node: None,
            peer: Peer::User(user),
            token,
        };
        let acting = self.authorize_one(&user, &request, denials).await?;
        Ok((*request, acting))
    }

    /// Whether `caller` may send `request` itself.
    async fn authorize_one(
        &self,
        caller: &Caller,
        request: &ClientRequest,
        denials: &RefusalLog,
    ) -> Result<Acting> {
        let user_call = caller.token.is_some() || matches!(caller.peer, Peer::User(_));
        if !user_call {
            return super::permitted(caller, request).map(|()| Acting::Trusted);
        }
        let need = request.need();
        let found = self.found(caller).await?;
        let verdict = match found.user {
            Ok(name) if found.grants.iter().any(|g| g.grants(&need)) => {
                return Ok(Acting::User {
                    name,
                    token: caller.token.clone(),
                });
            }
            Ok(user) => Error::Denied {
                user: format!("user {user:?}"),
                action: match request_bucket(request) {
                    Some(b) => format!("{} (bucket {b:?}): it needs to {need}", request.name()),
                    None => format!("{}: it needs to {need}", request.name()),
                },
            },
            Err(e) => e,
        };
        if denials.allow() {
            tracing::warn!(peer = %caller.peer, op = request.name(), bucket = request_bucket(request).unwrap_or("-"), error = %verdict, "denied");
        }
        Err(verdict)
    }
}

/// The bucket a request is about, for messages.
fn request_bucket(request: &ClientRequest) -> Option<&str> {
    match request.need() {
        Need::Read(_) | Need::Write(_) => match request {
            ClientRequest::Write(Op::Put { bucket, .. } | Op::Delete { bucket, .. })
            | ClientRequest::Get { bucket, .. }
            | ClientRequest::Scan { bucket, .. }
            | ClientRequest::Changes { bucket, .. }
            | ClientRequest::Bucket { bucket, .. }
            | ClientRequest::Hibernation { bucket } => Some(bucket),
            _ => None,
        },
        _ => None,
    }
}
