//! The objects of an operation's archive under its location.

use super::*;

pub(super) fn objects(base: &ObjectPath, prefix: &str) -> (ObjectPath, ObjectPath, ObjectPath) {
    let dir = prefix
        .split('/')
        .fold(base.clone(), |p, part| p.clone().join(part));
    (
        dir.clone(),
        dir.clone().join(ARCHIVE_OBJECT),
        dir.join(MANIFEST_OBJECT),
    )
}

/// Deletes every object under an operation's prefix (a partial or rolled-back archive).
pub(super) async fn delete_objects(store: &Arc<dyn ObjectStore>, base: &ObjectPath, prefix: &str) {
    let (dir, ..) = objects(base, prefix);
    let mut listed = store.list(Some(&dir));
    while let Some(item) = listed.next().await {
        match item {
            Ok(meta) => {
                if let Err(e) = store.delete(&meta.location).await {
                    tracing::warn!(object = %meta.location, error = %e, "could not delete");
                }
            }
            Err(e) => {
                tracing::warn!(prefix = %dir, error = %e, "could not list");
                break;
            }
        }
    }
}
