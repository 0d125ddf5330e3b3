//! What a [`RelayHandle`] shows of a running relay, and the few things it
//! can ask of it (re-reading the revocation file, reopening the audit log).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::RelayHandle;
use crate::ops::metrics::Status;
use crate::ops::status::{Page, Render};

impl RelayHandle {
    /// Re-reads the revocation file (as SIGHUP does) and closes the live
    /// connections it revokes. Returns the entries now in force; on an
    /// error the previous list stays.
    pub fn reload_revocations(&self) -> anyhow::Result<usize> {
        self.state.revoked.reload()
    }

    /// Opens the audit log again by its path (as SIGHUP does), after the
    /// lines already queued: rotate it by renaming it, then asking this.
    pub fn reopen_audit_log(&self) {
        self.state.audit.reopen()
    }

    /// Ids of the hosts connected now, sorted.
    pub fn hosts(&self) -> Vec<String> {
        self.state
            .hosts
            .snapshot()
            .into_iter()
            .map(|h| h.id)
            .collect()
    }

    /// Sessions now, set up or running, and the most the relay's memory
    /// budget allows.
    pub fn sessions(&self) -> (usize, usize) {
        (self.state.sessions.get(), self.state.max_sessions)
    }

    /// Connections open now, authenticated or not.
    pub fn connections(&self) -> usize {
        self.state.connections.get()
    }

    /// Connections that completed the QUIC handshake since the relay started;
    /// a peer that migrates to a new address keeps its connection.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Hellos and sessions refused since the relay started, as
    /// `shellrelay_refusals_total` counts them.
    pub fn refused(&self) -> u64 {
        self.state.metrics.refusals()
    }

    /// Tasks running now: one per connection and one per session.
    pub fn tasks(&self) -> usize {
        self.state.tasks.len()
    }

    /// The metrics as OpenMetrics text.
    pub fn metrics(&self) -> String {
        self.state.metrics.encode(self.state.hosts.len())
    }

    /// The hosts online now, with their counters.
    pub fn status(&self) -> Status {
        Status {
            hosts: self.state.hosts.snapshot(),
            clients: self.state.clients.snapshot(),
        }
    }

    /// The relay's pages, for [`crate::ops::status::serve`]: its metrics, and
    /// its status as JSON.
    pub fn pages(&self) -> Render {
        let relay = self.clone();
        Arc::new(move |page| match page {
            Page::Metrics => Ok(relay.metrics().into_bytes()),
            Page::Status => match serde_json::to_vec_pretty(&relay.status()) {
                Ok(mut json) => {
                    json.push(b'\n');
                    Ok(json)
                }
                Err(err) => Err(err.to_string()),
            },
        })
    }

    /// Waits until host `id` is connected (`online`) or not (`!online`).
    pub async fn wait_host(&self, id: &str, online: bool) {
        self.state.hosts.wait(id, online).await
    }
}
