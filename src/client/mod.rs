//! The client side: the forwarder, which listens on a local TCP port
//! (`127.0.0.1:2222`) and turns each accepted ssh connection into a
//! session, and [`connect`], which carries one session over stdin and
//! stdout for ssh's `ProxyCommand`.
//!
//! A session is a fresh stream on the forwarder's one connection to a
//! relay ([`Forwarder`]), over QUIC or over TLS and HTTP/2 on TCP,
//! whichever the transport's dialler got through with (on TCP, QUIC is
//! tried again from time to time). Nothing is read from ssh until the
//! host side reports `ready`, since ssh clients speak first. With several
//! relays, or a fleet, the first that answers serves, and a new session
//! does not wait on one that stopped answering (`relays`). A session is
//! resumable when the window is not zero and the host agrees: when its
//! path breaks, it is taken up again through any relay (`resume`).

pub mod connect;
mod direct;
mod forward;
mod open;
mod relays;
mod resume;

use forward::forward;
use open::open_on;
pub use open::{OpenError, SetupError};

use relays::retry_quic;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access::token::TokenSource;
use crate::net::transport::dial::{self, ConnectError, RelayAddr, RelayLink};
pub use crate::net::transport::direct::DirectMode;
use crate::net::transport::{Closed, Conn, Stream};
use crate::ops::defaults::{ACCEPT_BACKOFF, RECONNECT_HOLDOFF, SESSION_FALLBACK, SHUTDOWN_GRACE};
use crate::ops::memory::{Live, Trim};
use crate::ops::tasks::Tasks;
use crate::protocol::Role;
use crate::protocol::{Reason, Resume};

/// Settings of a client forwarder.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The relays to connect to; the first that answers serves (see
    /// [`dial::connect_any`]). At least one. With `fleet`, the one name
    /// whose DNS records are the relays.
    pub relays: Vec<RelayAddr>,
    /// Ask the `k` relays of a fleet named by DNS that the host uses (see
    /// [`crate::net::fleet`]) rather than each of `relays`.
    pub fleet: Option<crate::net::fleet::Fleet>,
    /// The client token; a file is re-read on every reconnect.
    pub token: TokenSource,
    /// The host to reach (default: the token's `sub`).
    pub host: Option<String>,
    /// How long a session whose path broke tries to resume; zero: not
    /// resumable.
    pub resume_window: std::time::Duration,
    /// Whether to go direct to the host where the NATs allow (default
    /// [`DirectMode::Auto`]).
    pub direct: DirectMode,
}

/// A client forwarder's connection to the relay, made on demand and made
/// again when it has closed.
pub struct Forwarder {
    config: ClientConfig,
    link: Arc<tokio::sync::Mutex<LinkState>>,
    /// The watcher of each connection's end.
    tasks: Tasks,
    /// Cancelled when a refusal that retrying cannot change came in.
    stop: CancellationToken,
    /// Held by the one session that looks for another relay.
    switching: tokio::sync::Mutex<()>,
    /// How long the last session took to get `ready`, in microseconds.
    last_ready: std::sync::atomic::AtomicU64,
    given_up: std::sync::Mutex<Option<String>>,
    /// Sessions under way, over every connection.
    live: Trim,
    /// The direct path to the host.
    direct: Arc<direct::DirectPath>,
}

/// The forwarder's connection, or why the last attempt failed.
#[derive(Default)]
struct LinkState {
    current: Option<RelayLink>,
    /// The relay `current` is to.
    relay: Option<RelayAddr>,
    failed: Option<(Instant, ConnectError)>,
    /// The forwarder's sessions under way ([`Forwarder::session_started`]):
    /// while there are any, the relay's silence is watched for.
    live: Trim,
}

/// A session stream the host side has reported `ready` on.
#[derive(Debug)]
pub struct Opened {
    /// Session id assigned by the relay.
    pub session: u64,
    /// The host it reaches.
    pub host: String,
    /// The connection it lives on.
    pub conn: Conn,
    /// The stream, towards the host and from it.
    pub stream: Stream,
    /// The host's answer to the resume step asked for, if any.
    pub resume: Option<Resume>,
    /// Whether it goes over the direct path (else through a relay).
    pub direct: bool,
}

impl Forwarder {
    /// A forwarder that has not connected yet.
    pub fn new(config: ClientConfig) -> Forwarder {
        let live = Trim::default();
        let options = (config.relays.first()).map(|relay| relay.transport);
        let direct = direct::DirectPath::new(config.direct, options.unwrap_or_default());
        Forwarder {
            direct: Arc::new(direct),
            config,
            link: Arc::new(tokio::sync::Mutex::new(LinkState {
                live: live.clone(),
                ..LinkState::default()
            })),
            live,
            tasks: Tasks::new(),
            stop: CancellationToken::new(),
            switching: tokio::sync::Mutex::new(()),
            last_ready: std::sync::atomic::AtomicU64::new(0),
            given_up: std::sync::Mutex::new(None),
        }
    }

    /// The live connection and the host it reaches, connecting (again) if
    /// there is none. The last value says whether it was made just now.
    pub async fn connection(&self) -> Result<(Conn, String, bool), ConnectError> {
        let mut state = self.link.lock().await;
        if let Some(link) = state.current.as_ref() {
            if link.conn.close_reason().is_none() {
                return Ok((link.conn.clone(), link.host.clone(), false));
            }
        }
        state.current = None;
        if let Some((at, err)) = &state.failed {
            if at.elapsed() < RECONNECT_HOLDOFF {
                return Err(err.clone());
            }
        }
        let relays = self.candidates().await?;
        let attempt = dial::connect_any(
            &relays,
            &self.config.token,
            Role::Client,
            self.config.host.as_deref(),
            &|err| self.is_final(err),
        )
        .await;
        let (relay, link) = match attempt {
            Ok((i, link)) => (relays[i].clone(), link),
            Err(err) => {
                // Only an unreachable relay is slow to fail; a refusal is
                // quick, and may be gone a moment later (a host coming online).
                if matches!(err, ConnectError::Connect { .. }) {
                    state.failed = Some((Instant::now(), err.clone()));
                }
                return Err(err);
            }
        };
        state.failed = None;
        let (conn, host) = (link.conn.clone(), link.host.clone());
        self.install(&mut state, link, relay);
        Ok((conn, host, true))
    }

    /// Makes `link`, to `relay`, the forwarder's connection; over TCP, QUIC
    /// is tried again from time to time while it lasts.
    fn install(&self, state: &mut LinkState, link: RelayLink, relay: RelayAddr) {
        if relay.retries_quic(&link.conn) {
            // Not in the span of the session that happened to connect.
            let _none = tracing::Span::none().entered();
            let retry = retry_quic(
                self.link.clone(),
                self.config.clone(),
                relay.clone(),
                self.tasks.clone(),
            );
            // Ends with the connection it is for.
            let closed = link.conn.watch_closed();
            self.tasks.spawn(async move {
                tokio::select! {
                    _ = closed => {}
                    () = retry => {}
                }
            });
        }
        install(state, link, relay, &self.tasks);
    }

    /// [`Forwarder::open`] on the current connection, made if there is
    /// none. Retries once on a fresh connection when a reused one turns
    /// out to be dead.
    pub(super) async fn open_current(&self, ask: Option<&Resume>) -> Result<Opened, OpenError> {
        loop {
            let (conn, host, fresh) = self.connection().await?;
            let asked = Instant::now();
            let (introduce, asking) = self.direct_ask().await.unzip();
            match open_on(&conn, ask, introduce).await {
                Ok(ready) => {
                    self.ready_after(asked.elapsed());
                    if let Some((dialer, asking)) = asking {
                        let given = (&self.tasks, &self.live);
                        let answer = (ready.direct, asking);
                        (self.direct).answered(answer, dialer, host.clone(), given);
                    }
                    return Ok(Opened {
                        session: ready.session,
                        host,
                        conn,
                        stream: ready.stream,
                        resume: ready.resume,
                        direct: false,
                    });
                }
                Err(OpenError::Setup(_)) if !fresh && conn.close_reason().is_some() => continue,
                Err(OpenError::Setup(err)) => {
                    return Err(match conn.refusal() {
                        Some(refusal) => OpenError::Refused(refusal),
                        None => OpenError::Setup(err),
                    })
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Who this forwarder's token names (read afresh, as each connection
    /// reads it), for log lines; `None` if it cannot be read.
    pub fn who(&self) -> Option<crate::protocol::Who> {
        let token = self.config.token.load().ok()?;
        let claims = crate::access::token::peek_claims(&token).ok()?;
        Some(crate::protocol::Who {
            subject: claims.sub,
            jti: claims.jti,
        })
    }

    /// Whether `err` is a refusal of this forwarder's token or request that
    /// trying again cannot change: a bad or revoked token, one for another
    /// role or host, a token for several hosts with no host named. An
    /// expired token is final unless it comes from a file, which may be
    /// renewed in place.
    pub fn is_final(&self, err: &ConnectError) -> bool {
        let Some(refusal) = err.refusal() else {
            return false;
        };
        match refusal.reason {
            Reason::BadToken | Reason::Protocol | Reason::Revoked => true,
            Reason::TokenExpired => matches!(self.config.token, TokenSource::Literal(_)),
            _ => false,
        }
    }

    /// Counts a session as under way until the guard goes: while any is,
    /// the relay in use is watched for silence, and a relay that goes
    /// silent is left within seconds (its sessions resume elsewhere).
    pub fn session_started(&self) -> Live {
        self.live.session()
    }

    /// Records that the forwarder cannot go on, and why; [`run`] ends.
    fn give_up(&self, why: String) {
        let mut given_up = self.given_up.lock().unwrap_or_else(|e| e.into_inner());
        if given_up.is_none() {
            *given_up = Some(why);
        }
        self.stop.cancel();
    }

    /// Resolves once the forwarder has given up, with why.
    async fn given_up(&self) -> String {
        self.stop.cancelled().await;
        let given_up = self.given_up.lock().unwrap_or_else(|e| e.into_inner());
        given_up.clone().unwrap_or_default()
    }

    /// Closes the connection to the relay, and the direct one, if any.
    pub async fn close(&self) {
        if let Some(up) = self.direct.current() {
            up.conn.close(Reason::Done, "client shutting down");
        }
        let current = self.link.lock().await.current.take();
        if let Some(link) = current {
            link.close(Reason::Done, "client shutting down").await;
        }
        self.tasks.shutdown(SHUTDOWN_GRACE).await;
    }
}

/// Makes `link`, to `relay`, the forwarder's connection, logs it, and
/// watches for its end.
fn install(state: &mut LinkState, mut link: RelayLink, relay: RelayAddr, tasks: &Tasks) {
    info!(
        host = %link.host,
        relay = %relay.name(),
        transport = link.conn.transport(),
        "connected to relay"
    );
    // Say when and why the relay connection ends, not only when the next
    // ssh connection finds it gone. Ends with the connection. While
    // sessions are live, a relay that goes silent is left: the connection
    // closes here and its sessions resume through whichever relay answers.
    let closed = link.conn.watch_closed();
    let (liveness, conn, live) = (link.liveness(), link.conn.downgrade(), state.live.clone());
    let name = relay.name();
    // Not in the span of the session that happened to connect.
    let _none = tracing::Span::none().entered();
    tasks.spawn(async move {
        let closed = tokio::select! {
            closed = closed => closed,
            quiet = liveness.silent(|| live.live() > 0) => {
                warn!(relay = %name, "no answer from the relay for {quiet:.1?} with sessions live; leaving it");
                if let Some(conn) = conn.upgrade() {
                    conn.close(Reason::Aborted, "the relay went silent");
                }
                return;
            }
        };
        match closed {
            Closed::Local => {}
            Closed::Peer(r) if r.reason == Reason::Done => {}
            Closed::Peer(r) => warn!("relay closed the connection: {}", r.message),
            Closed::Lost(err) => warn!("lost the connection to the relay: {err}"),
        }
    });
    state.current = Some(link);
    state.relay = Some(relay);
}

/// Runs the forwarder on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: ClientConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local = listener.local_addr().context("listener has no address")?;
    let forwarder = Arc::new(Forwarder::new(config));
    let relays: Vec<&str> = forwarder
        .config
        .relays
        .iter()
        .map(|r| r.addr.as_str())
        .collect();
    info!(listen = %local, relay = %relays.join(","), "client forwarder listening");
    // Connect early so that a wrong certificate or token shows at once; a
    // failure is not fatal, every ssh connection tries again, unless it is
    // a refusal that trying again cannot change.
    match forwarder.connection().await {
        Err(err) if forwarder.is_final(&err) => {
            forwarder.close().await;
            anyhow::bail!("{err}; not retrying");
        }
        Err(err) => warn!("could not connect to relay yet: {err}"),
        Ok(_) => {}
    }
    let tasks = Tasks::new();
    let trim = Trim::default();
    tasks.spawn(trim.clone().run(shutdown.clone()));
    let mut given_up = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            why = forwarder.given_up() => {
                given_up = Some(why);
                break;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, from)) => {
                // Session and host ids arrive with `ready`; forward records
                // them, and the token's subject and jti.
                let _span = tracing::info_span!(
                    "session",
                    peer = %from,
                    session = tracing::field::Empty,
                    host = tracing::field::Empty,
                    subject = tracing::field::Empty,
                    jti = tracing::field::Empty
                )
                .entered();
                tasks.spawn(forward(forwarder.clone(), tcp, from, trim.clone()));
            }
            Err(err) => {
                // Out of file descriptors and the like: log and go on after
                // a pause, the listener itself is still good.
                warn!(%err, "could not accept a connection");
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    drop(listener);
    forwarder.close().await;
    tasks.shutdown(SHUTDOWN_GRACE).await;
    match given_up {
        Some(why) => anyhow::bail!("{why}; not retrying"),
        None => Ok(()),
    }
}
