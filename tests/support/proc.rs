//! A child process whose stderr is read line by line, killed on drop so
//! that nothing outlives a failed assertion.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::WAIT;

/// A running process and what it has written to stderr.
pub struct Proc {
    name: String,
    child: Child,
    /// Lines not yet looked at by [`Proc::find`].
    fresh: mpsc::UnboundedReceiver<String>,
    /// Every line so far, for failure messages and later checks.
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Proc {
    /// Starts `cmd` (no stdin, stdout discarded, stderr read) under `name`.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {name}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, fresh) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        // Drains stderr for the life of the process, so that it never
        // blocks on a full pipe.
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let line = strip_ansi(&line);
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc {
            name: name.to_owned(),
            child,
            fresh,
            log,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child
            .id()
            .unwrap_or_else(|| panic!("{} has already been reaped", self.name))
    }

    /// Every stderr line read so far.
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// [`Proc::lines`] as one text, for failure messages.
    pub fn log(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits for the next stderr line that satisfies `pred` and returns
    /// it, or `None` once stderr is closed. Panics after [`WAIT`].
    pub async fn find(&mut self, pred: impl Fn(&str) -> bool) -> Option<String> {
        let fresh = &mut self.fresh;
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = fresh.recv().await {
                if pred(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "{} logged no line looked for within {WAIT:?}; it logged:\n{}",
                self.name,
                self.log()
            )
        })
    }

    /// Waits for a stderr line that satisfies `pred` (described by `what`)
    /// and returns it.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match self.find(pred).await {
            Some(line) => line,
            None => panic!(
                "{} closed stderr before logging {what}; it logged:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// Waits for a stderr line containing `needle`.
    pub async fn wait_for_text(&mut self, needle: &str) -> String {
        self.wait_for(&format!("{needle:?}"), |l| l.contains(needle))
            .await
    }

    /// The first stderr line containing `needle`, whether it was logged
    /// already (perhaps passed over by an earlier wait) or is still to come.
    pub async fn logged_text(&mut self, needle: &str) -> String {
        let seen = self.lines().into_iter().find(|l| l.contains(needle));
        match seen {
            Some(line) => line,
            None => self.wait_for_text(needle).await,
        }
    }

    /// Asserts the process is still running.
    pub fn assert_running(&mut self) {
        match self.child.try_wait() {
            Ok(None) => {}
            other => panic!(
                "{} is not running ({other:?}); it logged:\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// Sends signal `name` (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Sends SIGTERM and waits for the exit status and the end of stderr.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(Ok(status)) => {
                // Keep whatever it logged while stopping, for messages.
                while let Ok(Some(_)) = tokio::time::timeout(WAIT, self.fresh.recv()).await {}
                status
            }
            Ok(Err(e)) => panic!("could not wait for {}: {e}", self.name),
            Err(_) => panic!(
                "{} did not exit within {WAIT:?} of SIGTERM; it logged:\n{}",
                self.name,
                self.log()
            ),
        }
    }
}

/// Sends signal `name` (`HUP`, `TERM`, ...) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("could not run kill: {e}"));
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `key=...` in a log line, up to the next space.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("{key}=");
    let mut rest = line;
    while let Some(at) = rest.find(&pat) {
        let before = &rest[..at];
        let value = &rest[at + pat.len()..];
        // A whole field name: at the start or after a space, `{` or `,`.
        if before.is_empty() || before.ends_with([' ', '{', ',']) {
            return value.split([' ', '}', ',']).next();
        }
        rest = value;
    }
    None
}

/// The socket address in field `key` of a log line.
pub fn addr_field(line: &str, key: &str) -> std::net::SocketAddr {
    field(line, key)
        .unwrap_or_else(|| panic!("no {key}= in log line {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key}= in {line:?} is not an address: {e}"))
}

/// Resident set size of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
