//! The audit log (`relay --audit-log FILE`): one JSON object per line for
//! every admission, refusal, session start and session end, appended to a
//! file the relay never truncates. Each line is written whole with one
//! write to a file opened for appending, so lines from concurrent events
//! never interleave. The relay keeps the file open: rotate it by copying
//! and truncating (logrotate's `copytruncate`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::token::Claims;

/// Who a line is about: the token's subject and id, once the token is
/// known.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Who {
    /// The token's `sub`.
    pub subject: Option<String>,
    /// The token's `jti`.
    pub jti: Option<String>,
}

impl Who {
    /// Whom `claims` name. Each is cut to [`WHO_CHARS`] printable
    /// characters: they go into every session line, the audit log and
    /// the `open` the host gets, and a token refused for a bad `sub` may
    /// hold anything its issuer put there.
    pub fn of(claims: &Claims) -> Who {
        Who {
            subject: Some(printable(&claims.sub)),
            jti: claims.jti.as_deref().map(printable),
        }
    }
}

/// Most characters of a subject or token id that lines name.
pub(super) const WHO_CHARS: usize = 128;

fn printable(text: &str) -> String {
    (text.chars())
        .map(|c| if c.is_control() { '?' } else { c })
        .take(WHO_CHARS)
        .collect()
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
pub(super) struct Line<'a> {
    /// `admitted`, `refused`, `session_start` or `session_end`.
    pub event: &'static str,
    /// `host` or `client`, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The host registered or reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<&'a str>,
    #[serde(flatten)]
    pub who: &'a Who,
    /// The peer's address.
    pub remote: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_to_host: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_to_client: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why: a refusal's words, or how a session ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

impl<'a> Line<'a> {
    /// A line for `event` from `remote` about `who`, the rest unset.
    pub fn new(event: &'static str, who: &'a Who, remote: SocketAddr) -> Line<'a> {
        Line {
            event,
            role: None,
            host: None,
            who,
            remote,
            session: None,
            bytes_to_host: None,
            bytes_to_client: None,
            duration_ms: None,
            reason: None,
        }
    }
}

/// The audit log, or none.
#[derive(Debug, Default)]
pub(super) struct Audit {
    file: Option<Mutex<File>>,
}

impl Audit {
    /// Opens `path` for appending (made mode 0600 if it does not exist).
    pub fn open(path: Option<&Path>) -> anyhow::Result<Audit> {
        let Some(path) = path else {
            return Ok(Audit::default());
        };
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(path)
            .with_context(|| format!("could not open audit log {}", path.display()))?;
        Ok(Audit {
            file: Some(Mutex::new(file)),
        })
    }

    /// Appends `line`, with the time, as one JSON line. A failed write is
    /// logged, not fatal: the relay serves on.
    pub fn write(&self, line: &Line<'_>) {
        let Some(file) = &self.file else {
            return;
        };
        #[derive(Serialize)]
        struct Timed<'a, 'b> {
            time: String,
            #[serde(flatten)]
            line: &'a Line<'b>,
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let timed = Timed {
            time: crate::clock::fmt_unix_millis(now),
            line,
        };
        let Ok(mut text) = serde_json::to_vec(&timed) else {
            return;
        };
        text.push(b'\n');
        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = file.write_all(&text) {
            tracing::warn!(target: super::LOG_TARGET, %err, "could not write to the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Role;

    #[test]
    fn whom_a_token_names_is_printable_and_bounded() {
        let mut claims = Claims::new(Role::Client, "alice", "aud", std::time::Duration::ZERO);
        claims.jti = Some(format!("a\nb\u{1b}[31m{}", "x".repeat(10_000)));
        let who = Who::of(&claims);
        assert_eq!(who.subject.as_deref(), Some("alice"));
        let jti = who.jti.unwrap();
        assert_eq!(jti.chars().count(), WHO_CHARS);
        assert!(jti.starts_with("a?b?[31m"), "{jti}");
    }
}
