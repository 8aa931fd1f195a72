//! Who a certificate speaks for: its one SAN URI, `metakv://<cluster>/node/<id>` or
//! `metakv://<cluster>/user/<name>`.

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Node { cluster: String, id: u64 },
    User { cluster: String, name: String },
}

impl Subject {
    /// The SAN URI that names this subject.
    pub fn uri(&self) -> String {
        match self {
            Subject::Node { cluster, id } => format!("metakv://{cluster}/node/{id}"),
            Subject::User { cluster, name } => format!("metakv://{cluster}/user/{name}"),
        }
    }

    /// The subject a SAN URI names; `None` for any other URI. Cluster ids and user names
    /// hold no `/` (the cluster id is checked before a node starts).
    pub fn from_uri(uri: &str) -> Option<Subject> {
        let rest = uri.strip_prefix("metakv://")?;
        let mut parts = rest.split('/');
        let (cluster, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || cluster.is_empty() || name.is_empty() {
            return None;
        }
        let cluster = cluster.to_owned();
        match kind {
            "node" => {
                let id: u64 = name.parse().ok()?;
                (id.to_string() == name).then_some(Subject::Node { cluster, id })
            }
            "user" => Some(Subject::User {
                cluster,
                name: name.to_owned(),
            }),
            _ => None,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Node { cluster, id } => write!(f, "node {id} of cluster {cluster:?}"),
            Subject::User { cluster, name } => write!(f, "user {name:?} of cluster {cluster:?}"),
        }
    }
}
