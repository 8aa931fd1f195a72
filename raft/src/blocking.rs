//! Running redb work off the async tasks: every blocking call of this crate goes through here.

use std::io;

/// Runs `f` on tokio's blocking pool and waits for it.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking task: {e}")))?
}
