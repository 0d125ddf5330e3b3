//! The client's direct path to its host. While it has none (and is not
//! backing off from one that failed), a session over QUIC asks the relay
//! for an introduction in its `open`; the `ready` brings the host's
//! addresses, key pin and a ticket, and the client dials the host from
//! the endpoint it reaches the relay with, presents the ticket, and from
//! then on opens new sessions on that connection. Live resumable sessions
//! move to it through a resume ([`super::resume`]). A direct connection
//! that goes silent while sessions are live is closed within
//! [`crate::ops::defaults::SILENT_AFTER`], and its sessions resume over
//! the relay; the direct path is tried again with backoff.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::net::tls::pin::Pin;
use crate::net::transport::direct::{DirectDialer, DirectMode};
use crate::net::transport::liveness::Liveness;
use crate::net::transport::{Conn, Stream, TransportOptions};
use crate::ops::memory::Trim;
use crate::ops::tasks::Tasks;
use crate::protocol::direct::{candidates, written};
use crate::protocol::{read_frame, write_frame, Direct, Frame, Reason};
use crate::session::backoff::Backoff;

/// How long a new session waits for the direct path's `ready` (or four
/// round trips, on a longer path) before the relay takes it: as long as a
/// live session's silent path is given.
pub const DIRECT_OPEN_WITHIN: Duration = crate::ops::defaults::SILENT_AFTER;

/// Longest wait before the direct path is tried again after it failed
/// or broke.
pub const DIRECT_RETRY_MAX: Duration = Duration::from_secs(5 * 60);

/// How long a client whose session was not introduced (its host takes no
/// direct connections, or the relay is an older one) waits before asking
/// again.
pub const NOT_INTRODUCED_RETRY: Duration = Duration::from_secs(60);

/// An introduction asked for and not yet answered; see [`DirectPath::ask`].
pub(super) struct Asked(Option<Arc<DirectPath>>);

impl Drop for Asked {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            path.retry_after(Duration::ZERO);
        }
    }
}

/// A direct connection to the host, up.
#[derive(Clone)]
pub(super) struct Up {
    pub conn: Conn,
    /// The host it reaches.
    pub host: String,
}

/// The client's direct path, and when to try for one.
pub(super) struct DirectPath {
    mode: DirectMode,
    options: TransportOptions,
    state: Mutex<State>,
    up: watch::Sender<Option<Up>>,
}

struct State {
    /// An introduction asked for or a dial under way.
    trying: bool,
    /// Not before then.
    next_try: Instant,
    backoff: Backoff,
}

impl DirectPath {
    pub fn new(mode: DirectMode, options: TransportOptions) -> DirectPath {
        DirectPath {
            mode,
            options,
            state: Mutex::new(State {
                trying: false,
                next_try: Instant::now(),
                backoff: Backoff::new(DIRECT_RETRY_MAX),
            }),
            up: watch::Sender::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The direct connection, if one is up.
    pub fn current(&self) -> Option<Up> {
        let up = self.up.borrow();
        up.as_ref()
            .filter(|up| up.conn.close_reason().is_none())
            .cloned()
    }

    /// Resolves with the direct connection once one is up.
    pub async fn until_up(&self) -> Up {
        let mut rx = self.up.subscribe();
        loop {
            if let Some(up) = self.current() {
                return up;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// What to ask the relay in a session's `open`, if an introduction is
    /// due: none while a direct connection is up or being made, or while
    /// backing off. `own` are the client's own addresses. The guard
    /// says the answer is still to come: dropped without
    /// [`DirectPath::answered`] (the session failed, or lost a race), it
    /// lets the next session ask.
    pub fn ask(
        this: &Arc<Self>,
        dialer: Option<&DirectDialer>,
        own: &[std::net::SocketAddr],
    ) -> Option<(Direct, Asked)> {
        if this.mode == DirectMode::Off || dialer.is_none() || this.current().is_some() {
            return None;
        }
        let mut state = this.lock();
        if state.trying || Instant::now() < state.next_try {
            return None;
        }
        state.trying = true;
        let ask = Direct::Ask {
            addrs: written(own),
        };
        Some((ask, Asked(Some(this.clone()))))
    }

    /// The relay's answer to an ask: `meet` if it introduced, which is
    /// dialled with `dialer` in a task of `tasks`.
    pub fn answered(
        self: &Arc<Self>,
        (meet, mut asked): (Option<Direct>, Asked),
        dialer: DirectDialer,
        host: String,
        (tasks, live): (&Tasks, &Trim),
    ) {
        asked.0 = None;
        let Some(Direct::Meet { ticket, addrs, pin }) = meet else {
            debug!("not introduced to the host: through the relay only");
            self.retry_after(NOT_INTRODUCED_RETRY);
            return;
        };
        let this = self.clone();
        let live = live.clone();
        let _none = tracing::Span::none().entered();
        tasks.spawn(async move {
            let started = std::time::Instant::now();
            match this.dial(&dialer, &addrs, &pin, ticket).await {
                Ok((conn, control)) => {
                    info!(host = %host, remote = %conn.remote(), took = ?started.elapsed(), "direct path to the host is up; new sessions go direct");
                    this.lock().backoff.reset();
                    this.serve(Up { conn, host }, control, live).await;
                }
                Err(err) => {
                    let delay = this.lock().backoff.delay();
                    info!("no direct path to the host ({err:#}); staying on the relay, trying again in {delay:.0?}");
                    this.retry_after(delay);
                }
            }
        });
    }

    fn retry_after(&self, delay: Duration) {
        let mut state = self.lock();
        state.trying = false;
        state.next_try = Instant::now() + delay;
    }

    /// Dials the host and presents the ticket: the connection and its
    /// control stream once the host welcomed it.
    async fn dial(
        &self,
        dialer: &DirectDialer,
        addrs: &[String],
        pin: &str,
        ticket: String,
    ) -> anyhow::Result<(Conn, Stream)> {
        let pin: Pin = pin.parse()?;
        let conn = dialer.dial(&candidates(addrs), pin, self.options).await?;
        let hello = async {
            let mut control = conn.open().await?;
            let _ = write_frame(&mut control.send, &Frame::Ticket { ticket }).await;
            match read_frame(&mut control.recv).await {
                Ok(answer) => anyhow::Ok((control, answer)),
                // A refusal may come as the close, ahead of its frame.
                Err(err) => match conn.closed().await {
                    crate::net::transport::Closed::Peer(refusal) => {
                        anyhow::bail!("the host refused: {}", refusal.message)
                    }
                    _ => Err(err.into()),
                },
            }
        };
        let timeout = crate::net::transport::direct::DIRECT_HANDSHAKE;
        let (control, answer) = tokio::time::timeout(timeout, hello)
            .await
            .map_err(|_| anyhow::anyhow!("the host did not answer the ticket in time"))??;
        match answer {
            Frame::Welcome { .. } => Ok((conn, control)),
            Frame::Refused { message, .. } => {
                conn.close(Reason::Done, "");
                anyhow::bail!(
                    "the host refused: {}",
                    crate::protocol::Printable::message(&message)
                )
            }
            _ => {
                conn.close(Reason::Protocol, "unexpected answer to the ticket");
                anyhow::bail!("the host answered the ticket with something else")
            }
        }
    }

    /// Offers `up` to new sessions (and takeovers) until it closes, or goes
    /// silent while sessions are live; then backs off before the next.
    async fn serve(&self, up: Up, control: Stream, live: Trim) {
        let conn = up.conn.clone();
        self.up.send_replace(Some(up));
        let liveness = Liveness::new(conn.clone(), Some(control));
        tokio::select! {
            closed = conn.closed() => info!("direct path to the host closed ({closed}); sessions go through the relay"),
            quiet = liveness.silent(|| live.live() > 0) => {
                warn!("no answer on the direct path for {quiet:.1?} with sessions live; its sessions resume through the relay");
                conn.close(Reason::Aborted, "the direct path went silent");
            }
        }
        self.up.send_replace(None);
        let delay = self.lock().backoff.delay();
        self.retry_after(delay);
    }
}

impl super::Forwarder {
    /// What to ask the relay for in the next session's `open`, and the
    /// dialler to take the answer with, if an introduction is due.
    pub(super) async fn direct_ask(&self) -> Option<(Direct, (DirectDialer, Asked))> {
        let state = self.link.lock().await;
        let link = state.current.as_ref()?;
        let dialer = link.direct_dialer()?;
        let (ask, asked) = DirectPath::ask(&self.direct, Some(&dialer), &link.local_candidates())?;
        Some((ask, (dialer, asked)))
    }

    /// A session on the direct path, if one is up. `None` sends the session
    /// through a relay: no direct path, or one that failed it (it is closed).
    pub(super) async fn open_direct(
        &self,
        ask: Option<&crate::protocol::Resume>,
    ) -> Result<Option<super::Opened>, super::OpenError> {
        let Some(Up { conn, host }) = self.direct.current() else {
            return Ok(None);
        };
        // A direct connection from which nothing at all comes in time is
        // dead (it is watched only while sessions are live): the relay
        // takes the session, and the connection goes. One that answers
        // is given the session's whole setup time (its host may be slow
        // to reach sshd).
        let within = DIRECT_OPEN_WITHIN.max(conn.rtt().saturating_mul(4));
        let open = super::open_on(&conn, ask, None);
        tokio::pin!(open);
        let mut heard = conn.heard();
        let opened = loop {
            tokio::select! {
                opened = &mut open => break Ok(opened),
                () = tokio::time::sleep(within) => {
                    let now = conn.heard();
                    if now == heard {
                        break Err(());
                    }
                    heard = now;
                }
            }
        };
        let err = match opened {
            Ok(Ok(ready)) => {
                return Ok(Some(super::Opened {
                    session: ready.session,
                    host,
                    conn: conn.clone(),
                    stream: ready.stream,
                    resume: ready.resume,
                    direct: true,
                }))
            }
            // The host has no room for it directly: the relay's limits
            // decide.
            Ok(Err(super::OpenError::Refused(r))) if r.reason == Reason::Limit => {
                debug!("{}", r.message);
                return Ok(None);
            }
            // The host's own answer: the relay would bring the same.
            Ok(Err(err @ super::OpenError::Refused(_))) => return Err(err),
            Ok(Err(err)) => err.to_string(),
            Err(()) => format!("nothing heard within {within:?}"),
        };
        warn!("the direct path failed a session ({err}); closing it, through the relay");
        conn.close(Reason::Aborted, "the direct path failed a session");
        Ok(None)
    }

    /// Resolves with the direct connection once one is up.
    pub(super) async fn direct_up(&self) -> Conn {
        self.direct.until_up().await.conn
    }
}
