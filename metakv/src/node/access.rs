//! Users and roles: their records, their tokens, and an admin's changes to them (whether a
//! caller may send a request is `authorize`'s).
//!
//! ```text
//!  _sys "user/<name>" -> UserRecord (format 1), sealed: its roles, and each token's id and
//!                        SHA-256 (never a token)
//!  _sys "role/<name>" -> RoleRecord (format 1), sealed: the role's grants
//!  token := "mkvu." name "." id "." secret   (id: 16 hex digits, secret: 32 hex digits)
//! ```
//!
//! The built-in role `admin` (everything) is not stored and cannot be changed; the built-in
//! user `admin` (the admin credential's certificate) always holds it. Every request is
//! authorised on the node that receives it, from that node's applied copy of `_sys`, before
//! anything is proposed or read: a removed user, a revoked role or a replaced token is
//! refused on a node as soon as the entry that did it is applied there. Changes are made by
//! the leader with compare-and-set writes, so two admins' changes to one user cannot lose
//! each other.

use metakv_raft::RejectionKind;
use metakv_store::{Expect, Op, SYS_BUCKET, Scan};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::api::{
    ADMIN, ALL_BUCKETS, AccessReply, AccessRequest, ClientReply, Consistency, Grants, UserInfo,
};
use crate::error::{Error, Result};
use crate::node_core::Redirect;

const USER_RECORD_FORMAT: u8 = 1;
const ROLE_RECORD_FORMAT: u8 = 1;
const TOKEN_PREFIX: &str = "mkvu";
/// Users, and roles, that `user list` and `role list` show at most.
const LISTED_MAX: usize = 10_000;
/// Tokens a user may hold at once.
pub const USER_TOKENS_MAX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TokenHash {
    pub(super) id: u64,
    pub(super) sha256: [u8; 32],
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct UserRecord {
    pub(super) roles: Vec<String>,
    pub(super) tokens: Vec<TokenHash>,
}

fn user_key(name: &str) -> Vec<u8> {
    format!("user/{name}").into_bytes()
}

fn role_key(name: &str) -> Vec<u8> {
    format!("role/{name}").into_bytes()
}

/// A user or role name: 1 to 64 of `[A-Za-z0-9_-]` (no `.`: a token's parts are split on it).
pub(super) fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match ok {
        true => Ok(()),
        false => Err(Error::invalid(format!(
            "{what} name {name:?}: 1 to 64 letters, digits, '_' or '-'"
        ))),
    }
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A user token's parts: (user, id, secret).
pub(super) fn parse_token(token: &str) -> Option<(&str, u64, &str)> {
    let rest = token.trim().strip_prefix(TOKEN_PREFIX)?.strip_prefix('.')?;
    let (rest, secret) = rest.rsplit_once('.')?;
    let (user, id) = rest.rsplit_once('.')?;
    let id = u64::from_str_radix(id, 16)
        .ok()
        .filter(|_| id.len() == 16)?;
    (secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    check_name("user", user).ok()?;
    Some((user, id, secret))
}

/// A new token for `user`, and what the record keeps of it.
fn draw_token(user: &str) -> Result<(String, TokenHash)> {
    let mut secret = [0u8; 16];
    getrandom::fill(&mut secret).map_err(|e| Error::Storage(format!("drawing a token: {e}")))?;
    let id = getrandom::u64().map_err(|e| Error::Storage(format!("drawing a token: {e}")))?;
    let secret = hex(&secret);
    Ok((
        format!("{TOKEN_PREFIX}.{user}.{id:016x}.{secret}"),
        TokenHash {
            id,
            sha256: sha256(secret.as_bytes()),
        },
    ))
}

/// Constant-time equality of two hashes.
pub(super) fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Node {
    /// A `_sys` record from this node's applied copy, with its revision.
    async fn sys_record(&self, key: Vec<u8>) -> Result<Option<(Vec<u8>, u64)>> {
        self.inner
            .core
            .local(move |s| s.read()?.get(SYS_BUCKET, &key, false))
            .await
            .map(|r| r.map(|r| (r.value, r.rev)))
    }

    /// The `_sys` records under `prefix` (users or roles), at most [`LISTED_MAX`], from this
    /// node's applied copy.
    async fn sys_records(&self, prefix: &'static [u8]) -> Result<metakv_store::ScanPage> {
        self.inner
            .core
            .local(move |s| {
                let scan = Scan {
                    prefix: prefix.to_vec(),
                    after: None,
                    limit: LISTED_MAX,
                    include_tombstones: false,
                };
                s.read()?.scan(SYS_BUCKET, &scan)
            })
            .await
    }

    pub(super) async fn user_record(&self, name: &str) -> Result<Option<(UserRecord, u64)>> {
        match self.sys_record(user_key(name)).await? {
            None => Ok(None),
            Some((bytes, rev)) => metakv_store::codec::unseal(USER_RECORD_FORMAT, &bytes)
                .map(|r| Some((r, rev)))
                .map_err(|e| Error::Storage(format!("user {name:?}'s record: {e}"))),
        }
    }

    pub(super) async fn role_grants(&self, name: &str) -> Result<Option<(Grants, u64)>> {
        if name == ADMIN {
            return Ok(Some((Grants::admin(), 0)));
        }
        match self.sys_record(role_key(name)).await? {
            None => Ok(None),
            Some((bytes, rev)) => metakv_store::codec::unseal(ROLE_RECORD_FORMAT, &bytes)
                .map(|r| Some((r, rev)))
                .map_err(|e| Error::Storage(format!("role {name:?}'s record: {e}"))),
        }
    }

    /// An admin's user or role change, on the leader.
    pub(super) async fn access(
        &self,
        request: AccessRequest,
    ) -> std::result::Result<Result<ClientReply>, Redirect> {
        self.lead_here()?;
        self.inner.core.linearize(Consistency::Linearizable).await?;
        let answer = match request {
            AccessRequest::UserAdd { name, roles } => self.user_add(&name, roles).await,
            AccessRequest::UserList => self.user_list().await,
            AccessRequest::UserRemove { name } => self.user_remove(&name).await,
            AccessRequest::UserToken { name, revoke_all } => {
                self.user_token(&name, revoke_all).await
            }
            AccessRequest::UserGrant { name, role } => self.user_roles(&name, &role, true).await,
            AccessRequest::UserRevoke { name, role } => self.user_roles(&name, &role, false).await,
            AccessRequest::RoleAdd { name, grants } => self.role_add(&name, grants).await,
            AccessRequest::RoleList => self.role_list().await,
            AccessRequest::RoleRemove { name } => self.role_remove(&name).await,
        };
        Ok(answer.map(ClientReply::Access))
    }

    /// Proposes `op` (a compare-and-set on a `_sys` record); a lost race is `Busy`.
    async fn change_access(&self, op: Op) -> Result<()> {
        let applied = self
            .inner
            .core
            .propose_here(op, Some(self.inner.core.config.request_timeout))
            .await?;
        match applied {
            metakv_store::Applied::Written { .. } => Ok(()),
            _ => Err(Error::Busy(
                "another change to the same user or role came first; try again".into(),
            )),
        }
    }

    async fn put_user(&self, name: &str, record: &UserRecord, expect: Expect) -> Result<()> {
        self.change_access(Op::Put {
            bucket: SYS_BUCKET.into(),
            key: user_key(name),
            value: metakv_store::codec::seal(USER_RECORD_FORMAT, record),
            expect,
        })
        .await
    }

    async fn existing_user(&self, name: &str) -> Result<(UserRecord, u64)> {
        check_name("user", name)?;
        if name == ADMIN {
            return Err(Error::invalid(
                "user \"admin\" is built in (the admin credential) and cannot be changed",
            ));
        }
        self.user_record(name)
            .await?
            .ok_or_else(|| Error::rejected(RejectionKind::NotFound, format!("no user {name:?}")))
    }

    async fn check_roles(&self, roles: &[String]) -> Result<()> {
        for role in roles {
            check_name("role", role)?;
            if self.role_grants(role).await?.is_none() {
                return Err(Error::rejected(
                    RejectionKind::NotFound,
                    format!("no role {role:?} (`metakv role add {role} ...` first)"),
                ));
            }
        }
        Ok(())
    }

    async fn user_add(&self, name: &str, roles: Vec<String>) -> Result<AccessReply> {
        check_name("user", name)?;
        if name == ADMIN {
            return Err(Error::invalid(
                "user \"admin\" is built in (the admin credential)",
            ));
        }
        self.check_roles(&roles).await?;
        if self.user_record(name).await?.is_some() {
            return Err(Error::rejected(
                RejectionKind::Exists,
                format!("user {name:?} exists already"),
            ));
        }
        let (token, hash) = draw_token(name)?;
        let mut roles = roles;
        roles.sort();
        roles.dedup();
        let record = UserRecord {
            roles,
            tokens: vec![hash],
        };
        self.put_user(name, &record, Expect::Absent).await?;
        Ok(AccessReply::Token {
            user: name.to_owned(),
            token,
        })
    }

    async fn user_list(&self) -> Result<AccessReply> {
        let rows = self.sys_records(b"user/").await?;
        let mut users = vec![UserInfo {
            name: ADMIN.into(),
            roles: vec![ADMIN.into()],
            tokens: 0,
        }];
        for (key, record) in rows.items {
            let name = String::from_utf8_lossy(&key["user/".len()..]).into_owned();
            let r: UserRecord = metakv_store::codec::unseal(USER_RECORD_FORMAT, &record.value)
                .map_err(|e| Error::Storage(format!("user {name:?}'s record: {e}")))?;
            users.push(UserInfo {
                name,
                roles: r.roles,
                tokens: r.tokens.len(),
            });
        }
        Ok(AccessReply::Users(users))
    }

    async fn user_remove(&self, name: &str) -> Result<AccessReply> {
        let (_, rev) = self.existing_user(name).await?;
        self.change_access(Op::Delete {
            bucket: SYS_BUCKET.into(),
            key: user_key(name),
            expect: Expect::Rev(rev),
        })
        .await?;
        Ok(AccessReply::Done)
    }

    async fn user_token(&self, name: &str, revoke_all: bool) -> Result<AccessReply> {
        let (mut record, rev) = self.existing_user(name).await?;
        let (token, hash) = draw_token(name)?;
        if revoke_all {
            record.tokens.clear();
        }
        if record.tokens.len() >= USER_TOKENS_MAX {
            return Err(Error::invalid(format!(
                "user {name:?} holds {USER_TOKENS_MAX} tokens: `user token {name} --revoke-all`"
            )));
        }
        record.tokens.push(hash);
        self.put_user(name, &record, Expect::Rev(rev)).await?;
        Ok(AccessReply::Token {
            user: name.to_owned(),
            token,
        })
    }

    async fn user_roles(&self, name: &str, role: &str, grant: bool) -> Result<AccessReply> {
        let (mut record, rev) = self.existing_user(name).await?;
        if grant {
            self.check_roles(&[role.to_owned()]).await?;
            if !record.roles.iter().any(|r| r == role) {
                record.roles.push(role.to_owned());
                record.roles.sort();
            }
        } else if let Some(i) = record.roles.iter().position(|r| r == role) {
            record.roles.remove(i);
        } else {
            return Err(Error::rejected(
                RejectionKind::NotFound,
                format!("user {name:?} does not hold role {role:?}"),
            ));
        }
        self.put_user(name, &record, Expect::Rev(rev)).await?;
        Ok(AccessReply::Done)
    }

    async fn role_add(&self, name: &str, grants: Grants) -> Result<AccessReply> {
        check_name("role", name)?;
        if name == ADMIN {
            return Err(Error::invalid("role \"admin\" is built in"));
        }
        for bucket in grants.read.iter().chain(&grants.write) {
            if bucket != ALL_BUCKETS {
                metakv_store::validate_bucket_name(bucket).map_err(Error::from_store)?;
            }
        }
        self.change_access(Op::Put {
            bucket: SYS_BUCKET.into(),
            key: role_key(name),
            value: metakv_store::codec::seal(ROLE_RECORD_FORMAT, &grants),
            expect: Expect::Absent,
        })
        .await
        .map_err(|e| match e {
            Error::Busy(_) => Error::rejected(
                RejectionKind::Exists,
                format!("role {name:?} exists already"),
            ),
            e => e,
        })?;
        Ok(AccessReply::Done)
    }

    async fn role_list(&self) -> Result<AccessReply> {
        let rows = self.sys_records(b"role/").await?;
        let mut roles = vec![(ADMIN.to_owned(), Grants::admin())];
        for (key, record) in rows.items {
            let name = String::from_utf8_lossy(&key["role/".len()..]).into_owned();
            let grants: Grants = metakv_store::codec::unseal(ROLE_RECORD_FORMAT, &record.value)
                .map_err(|e| Error::Storage(format!("role {name:?}'s record: {e}")))?;
            roles.push((name, grants));
        }
        Ok(AccessReply::Roles(roles))
    }

    async fn role_remove(&self, name: &str) -> Result<AccessReply> {
        check_name("role", name)?;
        if name == ADMIN {
            return Err(Error::invalid("role \"admin\" is built in"));
        }
        let Some((_, rev)) = self.role_grants(name).await? else {
            return Err(Error::rejected(
                RejectionKind::NotFound,
                format!("no role {name:?}"),
            ));
        };
        self.change_access(Op::Delete {
            bucket: SYS_BUCKET.into(),
            key: role_key(name),
            expect: Expect::Rev(rev),
        })
        .await?;
        Ok(AccessReply::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_back_and_damaged_ones_do_not() {
        let (token, hash) = draw_token("ada-1").unwrap();
        let (user, id, secret) = parse_token(&token).unwrap();
        assert_eq!((user, id), ("ada-1", hash.id));
        assert!(same(&sha256(secret.as_bytes()), &hash.sha256));
        for bad in [
            token.replacen("mkvu", "mkv1", 1),
            token[..token.len() - 1].to_owned(),
            token.replace("ada-1", "a.b"),
            format!("{token}0"),
            String::new(),
        ] {
            assert!(parse_token(&bad).is_none(), "{bad}");
        }
        assert!(check_name("user", "ok_name-2").is_ok());
        for bad in ["", "a.b", "a b", &"x".repeat(65)] {
            assert!(check_name("user", bad).is_err(), "{bad:?}");
        }
    }
}
