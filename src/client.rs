//! The client forwarder: listens on a local TCP port and turns each accepted
//! connection into a fresh QUIC stream to the relay, reading nothing from
//! the socket until the host side reports `ready`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use quinn::{Connection, RecvStream, SendStream};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::peer::{self, ConnectError, RelayAddr};
use crate::protocol::{
    read_frame, write_frame, Frame, Reason, Refusal, Role, CLIENT_SETUP_TIMEOUT, SHUTDOWN_GRACE,
};
use crate::splice;
use crate::token::TokenSource;

/// Default local listening address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2222";

/// After a failed connect, ssh connections within this long get the same
/// error at once instead of each queueing behind a fresh attempt (a relay
/// that is down takes up to the connect timeout to fail).
pub const RECONNECT_HOLDOFF: Duration = Duration::from_secs(1);

/// Settings of a client forwarder.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The relay to connect to.
    pub relay: RelayAddr,
    /// The client token; a file is re-read on every reconnect.
    pub token: TokenSource,
    /// The host to reach (default: the token's `sub`).
    pub host: Option<String>,
}

/// A client forwarder's connection to the relay, made on demand and made
/// again when it has closed.
pub struct Forwarder {
    config: ClientConfig,
    session: tokio::sync::Mutex<Link>,
}

/// The forwarder's connection, or why the last attempt failed.
#[derive(Default)]
struct Link {
    session: Option<peer::Session>,
    failed: Option<(Instant, ConnectError)>,
}

/// A session stream the host side has reported `ready` on.
#[derive(Debug)]
pub struct Opened {
    /// Session id assigned by the relay.
    pub session: u64,
    /// The host it reaches.
    pub host: String,
    /// The connection it lives on.
    pub conn: Connection,
    /// Towards the host.
    pub send: SendStream,
    /// From the host.
    pub recv: RecvStream,
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// No registered connection to the relay.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The relay or host refused the session.
    #[error("session refused: {0}")]
    Refused(Refusal),
    /// The connection failed while the session was being set up.
    #[error("session setup failed: {0}")]
    Failed(String),
}

impl Forwarder {
    /// A forwarder that has not connected yet.
    pub fn new(config: ClientConfig) -> Forwarder {
        Forwarder {
            config,
            session: tokio::sync::Mutex::new(Link::default()),
        }
    }

    /// The live connection and the host it reaches, connecting (again) if
    /// there is none. The last value says whether it was made just now.
    pub async fn connection(&self) -> Result<(Connection, String, bool), ConnectError> {
        let mut link = self.session.lock().await;
        if let Some(session) = link.session.as_ref() {
            if session.conn.close_reason().is_none() {
                return Ok((session.conn.clone(), session.host.clone(), false));
            }
        }
        link.session = None;
        if let Some((at, err)) = &link.failed {
            if at.elapsed() < RECONNECT_HOLDOFF {
                return Err(err.clone());
            }
        }
        let attempt = peer::connect(
            &self.config.relay,
            &self.config.token,
            Role::Client,
            self.config.host.as_deref(),
        )
        .await;
        let session = match attempt {
            Ok(session) => session,
            Err(err) => {
                // Only an unreachable relay is slow to fail; a refusal is
                // quick, and may be gone a moment later (a host coming online).
                if matches!(err, ConnectError::Connect { .. }) {
                    link.failed = Some((Instant::now(), err.clone()));
                }
                return Err(err);
            }
        };
        link.failed = None;
        info!(host = %session.host, relay = %self.config.relay.addr, "connected to relay");
        let (conn, host) = (session.conn.clone(), session.host.clone());
        // Say when and why the relay connection ends, not only when the
        // next ssh connection finds it gone. Ends with the connection.
        let watched = conn.clone();
        tokio::spawn(async move {
            let err = watched.closed().await;
            if matches!(err, quinn::ConnectionError::LocallyClosed) {
                return;
            }
            match Refusal::from_connection_error(&err) {
                Some(r) if r.reason == Reason::Done => {}
                Some(r) => warn!("relay closed the connection: {}", r.message),
                None => warn!("lost the connection to the relay: {err}"),
            }
        });
        link.session = Some(session);
        Ok((conn, host, true))
    }

    /// Opens a session stream and waits for `ready`. Retries once on a fresh
    /// connection when a reused one turns out to be dead.
    pub async fn open(&self) -> Result<Opened, OpenError> {
        loop {
            let (conn, host, fresh) = self.connection().await?;
            match open_on(&conn).await {
                Ok((session, send, recv)) => {
                    return Ok(Opened {
                        session,
                        host,
                        conn,
                        send,
                        recv,
                    })
                }
                Err(OpenError::Failed(_)) if !fresh && conn.close_reason().is_some() => continue,
                Err(OpenError::Failed(err)) => {
                    return Err(match Refusal::of_closed(&conn) {
                        Some(refusal) => OpenError::Refused(refusal),
                        None => OpenError::Failed(err),
                    })
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Closes the connection to the relay, if any.
    pub async fn close(&self) {
        if let Some(session) = self.session.lock().await.session.take() {
            session
                .conn
                .close(Reason::Done.varint(), b"client shutting down");
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, session.endpoint.wait_idle()).await;
        }
    }
}

async fn open_on(conn: &Connection) -> Result<(u64, SendStream, RecvStream), OpenError> {
    let setup = async {
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| OpenError::Failed(e.to_string()))?;
        let open = Frame::Open {
            session: 0,
            client: None,
        };
        write_frame(&mut send, &open)
            .await
            .map_err(|e| OpenError::Failed(e.to_string()))?;
        match read_frame(&mut recv).await {
            Ok(Frame::Ready { session }) => Ok((session, send, recv)),
            Ok(Frame::Refused { reason, message }) => {
                Err(OpenError::Refused(Refusal { reason, message }))
            }
            Ok(other) => Err(OpenError::Failed(format!(
                "unexpected answer to open: {other:?}"
            ))),
            Err(err) => Err(OpenError::Failed(err.to_string())),
        }
    };
    match tokio::time::timeout(CLIENT_SETUP_TIMEOUT, setup).await {
        Ok(result) => result,
        Err(_) => Err(OpenError::Failed(format!(
            "no answer within {}s",
            CLIENT_SETUP_TIMEOUT.as_secs()
        ))),
    }
}

/// Runs the forwarder on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: ClientConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local = listener.local_addr().context("listener has no address")?;
    let forwarder = Arc::new(Forwarder::new(config));
    info!(listen = %local, relay = %forwarder.config.relay.addr, "client forwarder listening");
    // Connect early so that a wrong certificate or token shows at once; a
    // failure is not fatal, every ssh connection tries again.
    if let Err(err) = forwarder.connection().await {
        warn!("could not connect to relay yet: {err}");
    }
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // Session and host ids arrive with `ready`; forward records them.
                let span = tracing::info_span!(
                    "session",
                    %peer,
                    session = tracing::field::Empty,
                    host = tracing::field::Empty
                );
                tasks.spawn(forward(forwarder.clone(), tcp, peer).instrument(span));
            }
            Err(err) => {
                // Out of file descriptors and the like: log and go on, the
                // listener itself is still good.
                warn!(%err, "could not accept a connection");
                tokio::task::yield_now().await;
            }
        }
    }
    drop(listener);
    forwarder.close().await;
    tasks.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await;
    Ok(())
}

async fn forward(forwarder: Arc<Forwarder>, tcp: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let _ = tcp.set_nodelay(true);
    let opened = match forwarder.open().await {
        Ok(opened) => opened,
        Err(err) => {
            warn!(%peer, "closing ssh connection: {err}");
            return;
        }
    };
    let (session, host, conn) = (opened.session, opened.host, opened.conn);
    let span = tracing::Span::current();
    span.record("session", session);
    span.record("host", host.as_str());
    info!("session started");
    let t = splice::tcp_quic(tcp, opened.send, opened.recv).await;
    if let Some(refusal) = Refusal::of_closed(&conn) {
        warn!("relay closed the connection: {}", refusal.message);
    }
    info!(
        to_host = t.sent,
        to_client = t.received,
        aborted = t.aborted,
        duration = ?started.elapsed(),
        "session ended"
    );
}
