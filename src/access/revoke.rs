//! The relay's revocation list: token ids (`jti`) and host ids that may no
//! longer connect, read from a file that the relay re-reads on SIGHUP and
//! when it changes. Connections that a new list revokes are closed.
//!
//! The file holds one entry a line, `jti ID` or `host ID`; `#` starts a
//! comment and blank lines are ignored:
//!
//! ```text
//! # laptop stolen 2026-11-20
//! jti 3f0c9a1e5b7d4c2a8e6f1b3d5c7a9e0f
//! host lab-7
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use thiserror::Error;
use tokio::sync::watch;

/// Revoked token ids and host ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    jtis: HashSet<String>,
    hosts: HashSet<String>,
}

impl Revocations {
    /// Parses the file format described in the module documentation.
    pub fn parse(text: &str) -> Result<Revocations, ParseError> {
        let mut list = Revocations::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (kind, id, extra) = (words.next(), words.next(), words.next());
            let set = match kind {
                Some("jti") => &mut list.jtis,
                Some("host") => &mut list.hosts,
                _ => {
                    return Err(ParseError::UnknownKind {
                        line: n + 1,
                        text: line.to_owned(),
                    })
                }
            };
            match (id, extra) {
                (Some(id), None) => {
                    set.insert(id.to_owned());
                }
                _ => {
                    return Err(ParseError::NotOneId {
                        line: n + 1,
                        kind: kind.unwrap_or_default().to_owned(),
                    })
                }
            }
        }
        Ok(list)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<Revocations> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("could not read revocation file {}", path.display()))?;
        Revocations::parse(&text).with_context(|| format!("revocation file {}", path.display()))
    }

    /// Why a connection with token id `jti` bound to `host` is revoked, if
    /// it is.
    pub fn check(&self, jti: Option<&str>, host: &str) -> Option<Revoked> {
        if let Some(jti) = jti.filter(|j| self.jtis.contains(*j)) {
            return Some(Revoked::Token(jti.to_owned()));
        }
        self.hosts
            .contains(host)
            .then(|| Revoked::Host(host.to_owned()))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.jtis.len() + self.hosts.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a connection is revoked; the words are what the peer is told.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Revoked {
    /// Its token id is on the list.
    #[error("token {0} is revoked")]
    Token(String),
    /// Its host id is on the list.
    #[error("host {0} is revoked")]
    Host(String),
}

/// A line of a revocation file that is not an entry.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// The line starts with neither `jti` nor `host`.
    #[error("line {line}: expected `jti ID` or `host ID`, found {text:?}")]
    UnknownKind {
        /// 1-based line number.
        line: usize,
        /// The line, without its comment.
        text: String,
    },
    /// `jti` or `host` is not followed by exactly one id.
    #[error("line {line}: expected one id after {kind:?}")]
    NotOneId {
        /// 1-based line number.
        line: usize,
        /// `jti` or `host`.
        kind: String,
    },
}

/// What identifies a version of the file without reading it.
type Stamp = (Option<SystemTime>, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let ino = 0;
    Some((meta.modified().ok(), meta.len(), ino))
}

/// The current list, shared with every live connection, and the file it
/// comes from.
pub struct RevocationList {
    path: Option<PathBuf>,
    current: watch::Sender<Arc<Revocations>>,
    /// The version of the file last read, good or bad. Held across a whole
    /// reload, so that SIGHUP and the file watch never put an older read in
    /// force after a newer one.
    seen: std::sync::Mutex<Option<Stamp>>,
}

impl RevocationList {
    /// Loads `path` (none: an empty list that never changes).
    pub fn open(path: Option<PathBuf>) -> anyhow::Result<RevocationList> {
        let (list, seen) = match &path {
            Some(p) => {
                let seen = stamp(p);
                (Revocations::load(p)?, seen)
            }
            None => (Revocations::default(), None),
        };
        Ok(RevocationList {
            path,
            current: watch::Sender::new(Arc::new(list)),
            seen: std::sync::Mutex::new(seen),
        })
    }

    /// The list now.
    pub fn current(&self) -> Arc<Revocations> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every new list.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Revocations>> {
        self.current.subscribe()
    }

    /// Re-reads the file. On an error the previous list stays in force.
    /// Returns the number of entries now in force.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Recorded even when the file does not parse: it is reported once,
        // not at every look, and read again when it changes.
        *seen = stamp(path);
        let list = Revocations::load(path)?;
        let n = list.len();
        self.current.send_if_modified(|old| {
            let changed = **old != list;
            if changed {
                *old = Arc::new(list);
            }
            changed
        });
        Ok(n)
    }

    /// Re-reads the file if it changed since the last read.
    pub fn reload_if_changed(&self) -> Option<anyhow::Result<usize>> {
        let path = self.path.as_ref()?;
        let now = stamp(path);
        let unchanged = self.seen.lock().map(|s| *s == now).unwrap_or(false);
        (!unchanged).then(|| self.reload())
    }

    /// Whether a file backs this list.
    pub fn has_file(&self) -> bool {
        self.path.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_comments_and_names_bad_lines() {
        let list =
            Revocations::parse("# comment\n\njti abc  # trailing\nhost lab-7\n  host lab-8 \n")
                .unwrap();
        assert_eq!(list.len(), 3);
        assert_eq!(
            list.check(Some("abc"), "lab-1").map(|r| r.to_string()),
            Some("token abc is revoked".into())
        );
        assert_eq!(
            list.check(None, "lab-7").map(|r| r.to_string()),
            Some("host lab-7 is revoked".into())
        );
        assert_eq!(list.check(Some("other"), "lab-1"), None);
        let err = Revocations::parse("jti a\nuser bob\n").unwrap_err();
        assert!(err.to_string().starts_with("line 2:"), "{err}");
        let err = Revocations::parse("host a b\n").unwrap_err();
        assert!(err.to_string().starts_with("line 1:"), "{err}");
        assert!(Revocations::parse("jti\n").is_err());
    }

    #[test]
    fn reload_keeps_the_old_list_on_a_bad_file_and_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("revoked");
        std::fs::write(&path, "jti a\n").unwrap();
        let list = RevocationList::open(Some(path.clone())).unwrap();
        assert!(list.reload_if_changed().is_none());
        std::fs::write(&path, "nonsense\n").unwrap();
        assert!(list.reload().is_err());
        assert_eq!(list.current().len(), 1);
        std::fs::write(&path, "jti a\nhost b\n").unwrap();
        assert_eq!(list.reload_if_changed().unwrap().unwrap(), 2);
        assert!(list.current().check(None, "b").is_some());
    }
}
