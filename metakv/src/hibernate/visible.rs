//! A local archive location must be the same directory on every voter: the leader that
//! resumes a bucket, or whose janitor finishes a pause a crash cut short, may be any of them.
//! Before a pause (or a resume from a moved archive) changes anything, the leader writes a
//! marker into the location and every other voter reads it back.

use super::*;
use crate::api::{ClientReply, ClientRequest};
use crate::archives::{Marker, local_dir, read_marker};
use crate::node_core::blocking_err;
use openraft::async_runtime::WatchReceiver;

impl Hibernation {
    /// For a local `archive` location: writes a marker there, asks every other voter to read
    /// it back, and removes it; refuses unless each voter did. An `s3://` location is the
    /// same for every node.
    pub(super) async fn confirm_visible(&self, archive: &str) -> Result<()> {
        let Some(dir) = local_dir(archive) else {
            return Ok(());
        };
        let marker = tokio::task::spawn_blocking(move || Marker::write(&dir))
            .await
            .map_err(blocking_err)?
            .map_err(|e| archive_err(format!("writing a marker into {archive}: {e}")))?;
        let voters: Vec<(u64, String)> = {
            let metrics = self.core.raft.metrics();
            let m = metrics.borrow_watched();
            let membership = m.membership_config.membership();
            membership
                .voter_ids()
                .filter(|&id| id != self.core.id)
                .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                .collect()
        };
        let request = ClientRequest::ArchiveVisible {
            location: archive.to_owned(),
            marker: marker.name.clone(),
        };
        let ttl = self.core.config.request_timeout;
        let answers = futures_util::future::join_all(voters.iter().map(|(id, addr)| {
            let request = &request;
            async move {
                let answer = self.core.pool.client_call(addr, request, ttl).await;
                (*id, answer)
            }
        }))
        .await;
        tokio::task::spawn_blocking(move || marker.remove())
            .await
            .map_err(blocking_err)?;
        let failed: Vec<String> = answers
            .into_iter()
            .filter_map(|(id, answer)| match answer {
                Ok(ClientReply::Done) => None,
                Ok(ClientReply::Error(e)) => Some(format!("node {id}: {e}")),
                Ok(_) => Some(format!("node {id} answered something other than the check")),
                Err(e) => Some(format!("node {id} did not answer: {e}")),
            })
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "archive location {archive:?} is not the same directory on every voter, so another \
             leader could not resume the bucket ({}); a local archive root must be a directory \
             every voter mounts at the same path, and under its archive roots",
            failed.join("; ")
        )))
    }

    /// On a voter: whether the marker `marker` the leader wrote into `location` is there.
    pub(crate) async fn marker_visible(&self, location: &str, marker: &str) -> Result<()> {
        let (location, marker) = (location.to_owned(), marker.to_owned());
        let roots = self.state.config.archive_roots.clone();
        tokio::task::spawn_blocking(move || read_marker(&location, &marker, &roots))
            .await
            .map_err(blocking_err)?
            .map_err(Error::invalid)
    }
}
