//! Users, roles and what each request needs: the types a client sees.
//!
//! A role grants `read` (get, ls, watch, bucket status) and `write` (put, del) on named buckets
//! or on all (`*`), and `admin` everything else: bucket create, drop, pause and resume, GC,
//! compaction, checks, backups, cluster membership and join tokens, users and roles. The
//! built-in role `admin` (all of it) exists from the first start; the built-in user `admin`
//! (the admin credential of `admin.creds`) holds it and cannot lose it.

use serde::{Deserialize, Serialize};

use super::ClientRequest;
use metakv_store::Op;

/// The built-in role and user.
pub const ADMIN: &str = "admin";
/// What names a bucket grant for every bucket.
pub const ALL_BUCKETS: &str = "*";

/// What a role grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// Buckets (or `*`) whose records, changes and status it may read.
    pub read: Vec<String>,
    /// Buckets (or `*`) it may put into and delete from.
    pub write: Vec<String>,
    /// Everything else (see the module docs).
    pub admin: bool,
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Nothing beyond being a known user (node status).
    User,
    Read(String),
    Write(String),
    Admin,
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::User => f.write_str("connect"),
            Need::Read(b) if b == ALL_BUCKETS => f.write_str("read every bucket"),
            Need::Read(b) => write!(f, "read bucket {b:?}"),
            Need::Write(b) => write!(f, "write bucket {b:?}"),
            Need::Admin => f.write_str("administer the cluster"),
        }
    }
}

impl Grants {
    /// The built-in `admin` role.
    pub fn admin() -> Grants {
        Grants {
            read: Vec::new(),
            write: Vec::new(),
            admin: true,
        }
    }

    /// Whether this role grants `need`.
    pub fn grants(&self, need: &Need) -> bool {
        let on =
            |list: &[String], bucket: &str| list.iter().any(|b| b == ALL_BUCKETS || b == bucket);
        match need {
            _ if self.admin => true,
            Need::User => true,
            Need::Read(bucket) => on(&self.read, bucket),
            Need::Write(bucket) => on(&self.write, bucket),
            Need::Admin => false,
        }
    }
}

impl ClientRequest {
    /// What this request needs of its caller.
    pub fn need(&self) -> Need {
        match self {
            ClientRequest::Write(Op::Put { bucket, .. } | Op::Delete { bucket, .. }) => {
                Need::Write(bucket.clone())
            }
            ClientRequest::Write(_) => Need::Admin,
            ClientRequest::Get { bucket, .. }
            | ClientRequest::Scan { bucket, .. }
            | ClientRequest::Changes { bucket, .. }
            | ClientRequest::Bucket { bucket, .. }
            | ClientRequest::Hibernation { bucket } => match bucket.as_str() {
                // metakv's own records (users and their token hashes, roles, join tokens):
                // not part of `*`.
                metakv_store::SYS_BUCKET => Need::Admin,
                _ => Need::Read(bucket.clone()),
            },
            ClientRequest::Buckets { .. } => Need::Read(ALL_BUCKETS.to_owned()),
            ClientRequest::Status | ClientRequest::ClusterStatus => Need::User,
            ClientRequest::Join { .. }
            | ClientRequest::Remove { .. }
            | ClientRequest::JoinToken { .. }
            | ClientRequest::RevokeJoinToken { .. }
            | ClientRequest::Enroll { .. }
            | ClientRequest::GcRun { .. }
            | ClientRequest::GcStatus { .. }
            | ClientRequest::CompactNode
            | ClientRequest::CheckNode
            | ClientRequest::PauseBucket { .. }
            | ClientRequest::ResumeBucket { .. }
            | ClientRequest::BackupBegin
            | ClientRequest::BackupChunk { .. }
            | ClientRequest::BackupEnd { .. }
            | ClientRequest::Access(_)
            | ClientRequest::ArchiveVisible { .. } => Need::Admin,
            // Only a member may send one (`node::permitted`); what it carries is authorised
            // for the user it names.
            ClientRequest::OnBehalf { .. } => Need::Admin,
        }
    }
}

/// A user, as `user list` shows it (never a token).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub name: String,
    pub roles: Vec<String>,
    /// How many tokens it has.
    pub tokens: usize,
}

/// Managing users and roles (an admin's requests, answered by the leader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessRequest {
    /// A new user with these roles; answered with its first token.
    UserAdd {
        name: String,
        roles: Vec<String>,
    },
    UserList,
    UserRemove {
        name: String,
    },
    /// A new token for the user; with `revoke_all`, its other tokens stop working.
    UserToken {
        name: String,
        revoke_all: bool,
    },
    UserGrant {
        name: String,
        role: String,
    },
    UserRevoke {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
        grants: Grants,
    },
    RoleList,
    RoleRemove {
        name: String,
    },
}

/// The answer to an [`AccessRequest`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessReply {
    /// A token, shown once.
    Token {
        user: String,
        token: String,
    },
    Users(Vec<UserInfo>),
    Roles(Vec<(String, Grants)>),
    Done,
}

impl std::fmt::Debug for AccessReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // IMPORTANT: never print a token.
            AccessReply::Token { user, .. } => f
                .debug_struct("Token")
                .field("user", user)
                .finish_non_exhaustive(),
            AccessReply::Users(u) => f.debug_tuple("Users").field(u).finish(),
            AccessReply::Roles(r) => f.debug_tuple("Roles").field(r).finish(),
            AccessReply::Done => f.write_str("Done"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_they_name_and_admin_grants_all() {
        let reader = Grants {
            read: vec!["users".into()],
            write: vec![],
            admin: false,
        };
        assert!(reader.grants(&Need::Read("users".into())));
        assert!(!reader.grants(&Need::Read("roles".into())));
        assert!(!reader.grants(&Need::Write("users".into())));
        assert!(!reader.grants(&Need::Admin));
        assert!(reader.grants(&Need::User));
        let all = Grants {
            read: vec![ALL_BUCKETS.into()],
            write: vec![ALL_BUCKETS.into()],
            admin: false,
        };
        assert!(all.grants(&Need::Write("x".into())) && !all.grants(&Need::Admin));
        assert!(Grants::admin().grants(&Need::Admin));
    }
}
