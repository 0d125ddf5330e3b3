//! What the host agent keeps beside its registrations: under which name
//! it registered with each relay process, and the pages it serves.

use std::collections::HashMap;
use std::sync::Arc;

use super::session::Sessions;

/// The relay processes this agent has registered with, by the id their
/// welcome gives, and under which of its relay names: one relay process
/// keeps one name for the agent's lifetime (a restarted relay has a new
/// id), so two names for one relay cannot take turns evicting each other.
#[derive(Debug, Clone, Default)]
pub(super) struct Instances(Arc<std::sync::Mutex<HashMap<String, String>>>);

impl Instances {
    /// Whether relay process `instance` may be registered with under
    /// `name`: yes unless another name has been.
    pub(super) fn claim(&self, instance: Option<&str>, name: &str) -> bool {
        let Some(instance) = instance else {
            return true;
        };
        let mut names = self.0.lock().unwrap_or_else(|e| e.into_inner());
        names
            .entry(instance.to_owned())
            .or_insert_with(|| name.to_owned())
            .as_str()
            == name
    }
}

/// The host agent's pages: its metrics, and the same figures as JSON.
pub(super) fn pages(sessions: Arc<Sessions>) -> crate::ops::status::Render {
    Arc::new(move |page| {
        let parked = &sessions.parked;
        let (resumable, waiting, buffered) = (parked.len(), parked.waiting(), parked.buffered());
        match page {
            crate::ops::status::Page::Metrics => {
                if let Some(paths) = &sessions.direct {
                    sessions.metrics.set_direct_bytes(paths.bytes());
                }
                let text = sessions.metrics.encode(resumable, waiting, buffered);
                Ok(text.into_bytes())
            }
            crate::ops::status::Page::Status => {
                let m = &sessions.metrics;
                let status = serde_json::json!({
                    "sessions_resumable": resumable,
                    "sessions_waiting": waiting,
                    "resume_buffered_bytes": buffered,
                    "resumes": m.resumes("resumed"),
                    "resume_window_passed": m.resumes("window_passed"),
                    "sessions_on_relay": m.active("relay"),
                    "sessions_direct": m.active("direct"),
                    "direct_connections": sessions.direct.as_ref().map_or(0, |d| d.connections()),
                    "direct_bytes": sessions.direct.as_ref().map_or(0, |d| d.bytes()),
                });
                let mut json = serde_json::to_vec_pretty(&status).map_err(|e| e.to_string())?;
                json.push(b'\n');
                Ok(json)
            }
        }
    })
}
