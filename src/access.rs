//! `metakv user ...` and `metakv role ...`.

use metakv::{AccessReply, AccessRequest, Client, Grants, Kv};
use serde_json::json;

use crate::args::{RoleCmd, UserCmd};
use crate::fail::Fail;

async fn ask(client: &Client, request: AccessRequest) -> Result<AccessReply, Fail> {
    Ok(client.access(request).await?)
}

/// Checks a `--creds-out FILE` before anything is asked of the cluster: a failure after the
/// user is made would leave a token nobody holds. It needs the cluster's CA, a FILE that does
/// not exist (a credentials file is not overwritten), and a directory that does.
fn check_creds_out(ca_pem: Option<&str>, creds_out: Option<&std::path::Path>) -> Result<(), Fail> {
    let Some(path) = creds_out else {
        return Ok(());
    };
    if ca_pem.is_none() {
        return Err(Fail(
            2,
            "--creds-out needs the cluster's CA: not with --insecure".into(),
        ));
    }
    if path.symlink_metadata().is_ok() {
        return Err(Fail(
            8,
            format!(
                "--creds-out {} exists; name a new file (credentials are not overwritten)",
                path.display()
            ),
        ));
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        return Err(Fail(
            2,
            format!(
                "--creds-out {}: no directory {}",
                path.display(),
                parent.display()
            ),
        ));
    }
    Ok(())
}

/// Prints a new token (once), and writes the user's credentials file if asked. The token is
/// printed even if the file cannot be written, so that it is not lost.
fn token_out(
    ca_pem: Option<&str>,
    json: bool,
    reply: AccessReply,
    creds_out: Option<&std::path::Path>,
) -> Result<(), Fail> {
    let AccessReply::Token { user, token } = reply else {
        return Err(Fail(1, format!("unexpected answer {reply:?}")));
    };
    let written = match (creds_out, ca_pem) {
        (Some(path), Some(ca_pem)) => metakv::ClientCreds {
            ca_pem: ca_pem.to_owned(),
            user: None,
            token: Some(token.clone()),
        }
        .store(path)
        .map_err(|e| {
            Fail(
                1,
                format!(
                    "writing {}: {e} (the token printed above is the user's)",
                    path.display()
                ),
            )
        }),
        _ => Ok(()),
    };
    if json {
        outln!("{}", json!({"user": user, "token": token}));
    } else {
        outln!("{token}");
        eprintln!(
            "the token of user {user}: shown once, only its hash is kept{}",
            creds_out
                .filter(|_| written.is_ok())
                .map_or(String::new(), |p| format!(
                    "; credentials in {}",
                    p.display()
                ))
        );
    }
    written
}

pub async fn user_command(
    client: &Client,
    ca_pem: Option<&str>,
    json: bool,
    cmd: UserCmd,
) -> Result<(), Fail> {
    match cmd {
        UserCmd::Add {
            name,
            roles,
            creds_out,
        } => {
            check_creds_out(ca_pem, creds_out.as_deref())?;
            let reply = ask(client, AccessRequest::UserAdd { name, roles }).await?;
            token_out(ca_pem, json, reply, creds_out.as_deref())?;
        }
        UserCmd::Token {
            name,
            revoke_all,
            creds_out,
        } => {
            check_creds_out(ca_pem, creds_out.as_deref())?;
            let reply = ask(client, AccessRequest::UserToken { name, revoke_all }).await?;
            token_out(ca_pem, json, reply, creds_out.as_deref())?;
        }
        UserCmd::List => {
            let AccessReply::Users(users) = ask(client, AccessRequest::UserList).await? else {
                return Err(Fail(1, "unexpected answer to user list".into()));
            };
            for u in users {
                if json {
                    outln!(
                        "{}",
                        json!({"user": u.name, "roles": u.roles, "tokens": u.tokens})
                    );
                } else {
                    let roles = match u.roles.is_empty() {
                        true => "no roles".to_owned(),
                        false => u.roles.join(", "),
                    };
                    let tokens = match u.tokens {
                        1 => "1 token".to_owned(),
                        n => format!("{n} tokens"),
                    };
                    outln!("{:<20} {roles}; {tokens}", u.name);
                }
            }
        }
        UserCmd::Remove { name } => {
            ask(client, AccessRequest::UserRemove { name: name.clone() }).await?;
            done(json, &format!("user {name} removed"));
        }
        UserCmd::Grant { name, role } => {
            let request = AccessRequest::UserGrant {
                name: name.clone(),
                role: role.clone(),
            };
            ask(client, request).await?;
            done(json, &format!("user {name} holds role {role}"));
        }
        UserCmd::Revoke { name, role } => {
            let request = AccessRequest::UserRevoke {
                name: name.clone(),
                role: role.clone(),
            };
            ask(client, request).await?;
            done(json, &format!("user {name} no longer holds role {role}"));
        }
    }
    Ok(())
}

fn done(json: bool, what: &str) {
    if json {
        outln!("{}", json!({"done": what}));
    } else {
        outln!("{what}");
    }
}

fn grants_line(g: &Grants) -> String {
    if g.admin {
        return "admin (everything)".into();
    }
    let list = |l: &[String]| match l.is_empty() {
        true => "-".to_owned(),
        false => l.join(","),
    };
    format!("read {}; write {}", list(&g.read), list(&g.write))
}

pub async fn role_command(client: &Client, json: bool, cmd: RoleCmd) -> Result<(), Fail> {
    match cmd {
        RoleCmd::Add {
            name,
            read,
            write,
            admin,
        } => {
            if read.is_empty() && write.is_empty() && !admin {
                return Err(Fail(
                    2,
                    "a role grants something: --read BUCKET, --write BUCKET or --admin".into(),
                ));
            }
            let grants = Grants { read, write, admin };
            ask(
                client,
                AccessRequest::RoleAdd {
                    name: name.clone(),
                    grants,
                },
            )
            .await?;
            done(json, &format!("role {name} added"));
        }
        RoleCmd::List => {
            let AccessReply::Roles(roles) = ask(client, AccessRequest::RoleList).await? else {
                return Err(Fail(1, "unexpected answer to role list".into()));
            };
            for (name, g) in roles {
                if json {
                    outln!(
                        "{}",
                        json!({"role": name, "read": g.read, "write": g.write, "admin": g.admin})
                    );
                } else {
                    outln!("{name:<20} {}", grants_line(&g));
                }
            }
        }
        RoleCmd::Remove { name } => {
            ask(client, AccessRequest::RoleRemove { name: name.clone() }).await?;
            done(json, &format!("role {name} removed"));
        }
    }
    Ok(())
}
