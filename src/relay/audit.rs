//! The audit log (`relay --audit-log FILE`): one JSON object per line for
//! every admission, refusal, session start and session end, appended to a
//! file the relay never truncates.
//!
//! Lines are made on the async workers and written by a thread of their
//! own ([`writer`]), which owns the file: a slow disk never stalls a
//! connection. Every field a peer chose is cut and made
//! [`Printable`], and refusals are written at a bounded rate per network
//! ([`refusals`]), so a peer cannot flood the file. On SIGHUP
//! ([`Audit::reopen`]) the file is opened again by its path: rotate it by
//! renaming it, then sending SIGHUP.

mod refusals;
mod writer;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::access::token::Claims;
use crate::protocol::Printable;
use writer::{Msg, Writer};

/// Lines waiting for the writer, at most: about 1 MiB of typical lines
/// (4 MiB if every field is as long as it may be), enough to ride out a
/// slow disk for a moment. Past it lines are dropped and counted.
const QUEUE: usize = 1024;

/// Longest wait at shutdown for the queued lines to reach the file: a
/// disk that hangs must not hang the relay's exit.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// The party a line is about: the token's subject and id, once the token is
/// known.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Party {
    /// The token's `sub`.
    #[serde(serialize_with = "name")]
    pub subject: Option<String>,
    /// The token's `jti`.
    #[serde(serialize_with = "name")]
    pub jti: Option<String>,
}

impl Party {
    /// Whom `claims` name. Each is made [`Printable`] and cut to
    /// [`MAX_NAME_CHARS`](crate::protocol::MAX_NAME_CHARS): they go into every session line, the audit log
    /// and the `open` the host gets, and a token refused for a bad `sub`
    /// may hold anything its issuer put there.
    pub fn of(claims: &Claims) -> Party {
        let name = |text: &str| Printable::name(text).to_string();
        Party {
            subject: Some(name(&claims.sub)),
            jti: claims.jti.as_deref().map(name),
        }
    }
}

/// One line of the audit log. The names and words in it are written
/// [`Printable`], cut to [`MAX_NAME_CHARS`](crate::protocol::MAX_NAME_CHARS) and
/// [`MAX_MESSAGE_CHARS`](crate::protocol::MAX_MESSAGE_CHARS).
#[derive(Debug, Serialize)]
pub(super) struct Line<'a> {
    /// `admitted`, `refused`, `session_start` or `session_end`.
    pub event: &'static str,
    /// `host` or `client`, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The host registered or reached, or the one a client asked for.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "name")]
    pub host: Option<&'a str>,
    #[serde(flatten)]
    pub who: &'a Party,
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
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "message")]
    pub reason: Option<&'a str>,
}

impl<'a> Line<'a> {
    /// A line for `event` from `remote` about `who`, the rest unset.
    pub fn new(event: &'static str, who: &'a Party, remote: SocketAddr) -> Line<'a> {
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

/// Writes a name a peer chose as [`Printable::name`].
fn name<T: AsRef<str>, S: Serializer>(text: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => s.collect_str(&Printable::name(text.as_ref())),
        None => s.serialize_none(),
    }
}

/// Writes words a peer chose as [`Printable::message`].
fn message<S: Serializer>(text: &Option<&str>, s: S) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => s.collect_str(&Printable::message(text)),
        None => s.serialize_none(),
    }
}

/// The audit log, or none.
#[derive(Debug, Default)]
pub(super) struct Audit {
    log: Option<Log>,
}

/// The way to the writer thread.
#[derive(Debug)]
struct Log {
    lines: SyncSender<Msg>,
    flags: Arc<Flags>,
    /// Resolves when the writer has written everything and stopped.
    stopped: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// What the relay asks of the writer outside the queue of lines.
#[derive(Debug, Default)]
struct Flags {
    /// Lines dropped because the queue was full, not yet noted in the log.
    dropped: AtomicU64,
    /// Open the file again by its path (asked while the queue was full).
    reopen: AtomicBool,
    /// Write what is queued, then stop.
    stop: AtomicBool,
}

impl Audit {
    /// Opens `path` for appending (made mode 0600 if it does not exist)
    /// and starts the thread that writes to it.
    pub fn open(path: Option<&Path>) -> anyhow::Result<Audit> {
        let Some(path) = path else {
            return Ok(Audit::default());
        };
        let (lines, queue) = std::sync::mpsc::sync_channel(QUEUE);
        let flags = Arc::new(Flags::default());
        let stopped = Writer::start(path, queue, flags.clone())?;
        Ok(Audit {
            log: Some(Log {
                lines,
                flags,
                stopped: Mutex::new(Some(stopped)),
            }),
        })
    }

    /// Queues `line`, with the time, as one JSON line. Never waits: when
    /// the writer is behind by [`QUEUE`] lines, the line is dropped and
    /// counted, and the writer notes the count once it catches up.
    pub fn write(&self, line: &Line<'_>) {
        let Some(log) = &self.log else {
            return;
        };
        #[derive(Serialize)]
        struct Timed<'a, 'b> {
            time: String,
            #[serde(flatten)]
            line: &'a Line<'b>,
        }
        let timed = Timed {
            time: writer::unix_millis(),
            line,
        };
        let Ok(mut text) = serde_json::to_vec(&timed) else {
            return;
        };
        text.push(b'\n');
        // Refusals are what a peer can cause at will: the writer writes
        // them at a bounded rate per network.
        let refused = (line.event == "refused").then(|| line.remote.ip());
        match log.lines.try_send(Msg::Line { text, refused }) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                log.flags.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Opens the file again by its path, in the writer, after the lines
    /// queued before: what logrotate's default (rename, then SIGHUP) needs.
    /// With the queue full, as soon as the writer has caught up with it.
    pub fn reopen(&self) {
        let Some(log) = &self.log else {
            return;
        };
        if let Err(TrySendError::Full(_)) = log.lines.try_send(Msg::Reopen) {
            log.flags.reopen.store(true, Ordering::Relaxed);
        }
    }

    /// Writes every line queued so far, and the counts of those left
    /// out, then stops the writer; waits at most [`CLOSE_WAIT`]. Lines
    /// after this are not written.
    pub async fn close(&self) {
        let Some(log) = &self.log else {
            return;
        };
        log.flags.stop.store(true, Ordering::Relaxed);
        log.wake();
        let stopped = log.stopped.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stopped) = stopped {
            let _ = tokio::time::timeout(CLOSE_WAIT, stopped).await;
        }
    }
}

impl Log {
    /// Makes the writer look at its flags. A full queue needs no wake:
    /// the writer is busy, and looks after its next batch.
    fn wake(&self) {
        let _ = self.lines.try_send(Msg::Wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Role, MAX_NAME_CHARS};

    #[test]
    fn whom_a_token_names_is_printable_and_bounded() {
        let mut claims = Claims::new(Role::Client, "alice", "aud", std::time::Duration::ZERO);
        claims.jti = Some(format!(
            "a\nb\u{1b}[31m\u{9b}\u{202e}{}",
            "x".repeat(10_000)
        ));
        let who = Party::of(&claims);
        assert_eq!(who.subject.as_deref(), Some("alice"));
        let jti = who.jti.unwrap();
        assert_eq!(jti.chars().count(), MAX_NAME_CHARS);
        assert!(jti.starts_with("a?b?[31m??xx"), "{jti}");
        assert!(jti.ends_with('…'), "{jti}");
    }

    #[test]
    fn every_field_a_peer_chose_is_written_printable_and_cut() {
        // Built by hand, as a refusal is before any token is known.
        let who = Party {
            subject: Some("sub\u{202e}\u{9b}".into()),
            jti: Some("j".repeat(4096)),
        };
        let mut line = Line::new("refused", &who, "127.0.0.1:9".parse().unwrap());
        let host = format!("lab\u{9b}1\u{2066}{}", "h".repeat(16_000));
        let reason = format!("bad hello: \u{85}\u{200f}{}", "r".repeat(16_000));
        line.host = Some(&host);
        line.reason = Some(&reason);
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.len() < 2 * 1024, "{} bytes", text.len());
        assert!(!text.chars().any(|c| !crate::protocol::shown(c)), "{text}");
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["subject"], "sub??");
        assert!(value["host"].as_str().unwrap().starts_with("lab?1?hh"));
        assert!(value["reason"]
            .as_str()
            .unwrap()
            .starts_with("bad hello: ??rr"));
        assert!(value["jti"].as_str().unwrap().ends_with('…'));
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(path).unwrap();
        let parse = |l: &str| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        text.lines().map(parse).collect()
    }

    #[tokio::test]
    async fn refusals_past_their_rate_are_counted_and_a_renamed_file_is_replaced() {
        use refusals::PER_NETWORK;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::open(Some(&path)).unwrap();
        let who = Party::default();
        let remote = "198.51.100.7:4000".parse().unwrap();
        let mut refused = Line::new("refused", &who, remote);
        refused.reason = Some("bad hello");
        // Fewer than the queue holds: none is dropped, whatever the
        // writer's pace.
        for _ in 0..QUEUE / 2 {
            audit.write(&refused);
        }
        // Rotation: rename, then reopen; the lines before stay in the
        // renamed file, those after go to a new one at the path.
        let rotated = dir.path().join("audit.jsonl.1");
        std::fs::rename(&path, &rotated).unwrap();
        audit.reopen();
        audit.write(&Line::new("admitted", &who, remote));
        audit.close().await;
        let old = lines(&rotated);
        assert_eq!(old.len(), PER_NETWORK as usize, "{old:?}");
        assert!(old.iter().all(|l| l["event"] == "refused"), "{old:?}");
        let new = lines(&path);
        assert_eq!(new[0]["event"], "admitted", "{new:?}");
        // The count of those left out comes when the window ends, here
        // when the writer stops.
        assert_eq!(new[1]["event"], "refused_summary", "{new:?}");
        assert_eq!(new[1]["network"], "198.51.100.7");
        assert_eq!(new[1]["left_out"], QUEUE / 2 - PER_NETWORK as usize);
        assert_eq!(new.len(), 2, "{new:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // After the close nothing is written, and nothing waits.
        audit.write(&refused);
        audit.close().await;
        assert_eq!(lines(&path).len(), 2);
    }
}
