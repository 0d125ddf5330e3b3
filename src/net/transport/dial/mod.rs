//! Dialling the relay and the hello exchange, shared by the host agent and
//! the client forwarder: over QUIC, over TLS over TCP, or both raced
//! ([`Transport::Auto`]); one of several relays ([`connect_any`]); and
//! back to QUIC once it answers again ([`back_to_quic`]).

mod race;
mod several;

pub use several::connect_any;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use thiserror::Error;

use crate::ops::defaults::{CONNECT_TIMEOUT, SHUTDOWN_GRACE};

/// With `--transport quic`, after how long without a QUIC handshake the
/// relay's TCP port is tried, to tell a blocked network from a relay that
/// is down.
const PROBE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
use super::options::{Transport, TransportOptions};
use super::{Conn, Stream};
use crate::access::token::TokenSource;
use crate::net::tls::Trust;
use crate::protocol::{
    Direct, Frame, FrameError, Jwt, Reason, Refusal, Role, DEFAULT_PORT, VERSION,
};
use race::Dial;

/// Where and how to reach the relay.
#[derive(Debug, Clone)]
pub struct RelayAddr {
    /// `HOST:PORT` as given; resolved afresh on every connect.
    pub addr: String,
    /// The address to dial instead of resolving `addr`: a member of a
    /// fleet (see [`crate::net::fleet`]), whose certificate names `addr`.
    pub at: Option<SocketAddr>,
    /// How the relay's certificate is verified.
    pub trust: Trust,
    /// Keep-alive and idle timeout.
    pub transport: TransportOptions,
}

impl RelayAddr {
    /// The server name the relay's certificate must carry: the host part of
    /// [`RelayAddr::addr`], without brackets.
    pub fn server_name(&self) -> &str {
        let host = match self.addr.rsplit_once(':') {
            Some((host, _)) => host,
            None => &self.addr,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Whether `other` is the same relay: the same address, dialled at the
    /// same place.
    pub fn same(&self, other: &RelayAddr) -> bool {
        self.addr == other.addr && self.at == other.at
    }

    /// The relay as logs name it: its address, or for a fleet member the
    /// address it is dialled at (log lines name the fleet apart).
    pub fn name(&self) -> String {
        match self.at {
            Some(at) => at.to_string(),
            None => self.addr.clone(),
        }
    }

    /// The same relay, over QUIC only: what a peer that fell back to TCP
    /// tries again every [`TransportOptions::quic_retry`].
    pub fn quic_only(&self) -> RelayAddr {
        let mut quic = self.clone();
        quic.transport.via = Transport::Quic;
        quic
    }

    /// Whether a link over `conn` should try QUIC again from time to time
    /// ([`back_to_quic`]).
    pub fn retries_quic(&self, conn: &Conn) -> bool {
        self.transport.via == Transport::Auto && matches!(conn, Conn::Tcp(_))
    }

    async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        if let Some(at) = self.at {
            return Ok(at);
        }
        tokio::net::lookup_host(&self.addr)
            .await
            .with_context(|| format!("could not resolve relay address {}", self.addr))?
            .next()
            .with_context(|| format!("relay address {} resolves to nothing", self.addr))
    }
}

/// A relay address given without a port.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("needs a port, as in {0}:{DEFAULT_PORT}")]
pub struct NoPort(String);

/// Checks that a relay address (`--relay`, `relay` in the client config
/// file) names a port, as [`RelayAddr::addr`] must.
pub fn check_relay_addr(addr: &str) -> Result<(), NoPort> {
    if addr.contains(':') {
        Ok(())
    } else {
        Err(NoPort(addr.to_owned()))
    }
}

/// A connection to the relay whose hello was welcomed: a host agent's
/// registration, or a client's admission.
#[derive(Debug)]
pub struct RelayLink {
    /// The connection.
    pub conn: Conn,
    /// The QUIC control stream, kept open for the connection's lifetime
    /// (over TCP the connection keeps its own).
    pub control: Option<Stream>,
    /// What the relay granted: host id and expiry (Unix seconds).
    pub host: String,
    /// Unix time at which the relay closes this connection.
    pub expires_at: u64,
    /// The relay process that welcomed it, if it says (see
    /// [`Frame::Welcome`]).
    pub instance: Option<String>,
    /// The QUIC endpoint it lives on (kept so its socket lives as long as
    /// it does).
    endpoint: Option<quinn::Endpoint>,
    /// The endpoint's socket, shared for a direct path's punches.
    socket: Option<Arc<std::net::UdpSocket>>,
}

impl RelayLink {
    /// A watch on this link's silence, taking its control stream (over
    /// QUIC, the probes go on it): see [`super::liveness`].
    pub fn liveness(&mut self) -> super::liveness::Liveness {
        super::liveness::Liveness::new(self.conn.clone(), self.control.take())
    }

    /// The addresses of this link's endpoint besides the one the relay
    /// sees (see [`super::direct`]); none over TCP.
    pub fn local_candidates(&self) -> Vec<std::net::SocketAddr> {
        match &self.endpoint {
            Some(endpoint) => super::direct::local_candidates(endpoint, self.conn.remote()),
            None => Vec::new(),
        }
    }

    /// Accepts direct connections on this link's endpoint, showing
    /// `identity`, until the listener is dropped; `None` over TCP.
    pub fn direct_listener(
        &self,
        identity: crate::net::tls::Identity,
        options: super::TransportOptions,
    ) -> Option<anyhow::Result<super::direct::DirectListener>> {
        let (endpoint, socket) = (self.endpoint.clone()?, self.socket.clone()?);
        Some(super::direct::DirectListener::new(
            endpoint, socket, identity, options,
        ))
    }

    /// Dials direct connections from this link's endpoint; `None` over TCP.
    pub fn direct_dialer(&self) -> Option<super::direct::DirectDialer> {
        let endpoint = self.endpoint.clone()?;
        Some(super::direct::DirectDialer::new(endpoint, self.conn.rtt()))
    }

    /// Closes the connection with `reason` and waits, within the shutdown
    /// grace, for the relay to acknowledge it (over TCP: to let go of the
    /// connection, which it does once every session on it has ended).
    pub async fn close(&self, reason: Reason, message: &str) {
        self.conn.close(reason, message);
        let acknowledged = async {
            match (&self.conn, &self.endpoint) {
                (Conn::Tcp(conn), _) => conn.gone().await,
                (_, Some(endpoint)) => endpoint.wait_idle().await,
                (_, None) => {}
            }
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, acknowledged).await;
    }
}

/// Why connecting to the relay failed. Cheap to clone, so that one failed
/// attempt can answer several waiting sessions.
#[derive(Debug, Clone, Error)]
pub enum ConnectError {
    /// Local setup failed: address, certificate or token file.
    #[error("{0:#}")]
    Setup(Arc<anyhow::Error>),
    /// No connection could be made.
    #[error("could not connect to relay {addr}: {cause:#}")]
    Connect {
        /// The relay's address.
        addr: String,
        /// The cause.
        cause: Arc<anyhow::Error>,
    },
    /// Nothing answered: one line that says what to check.
    #[error("{0}")]
    NoAnswer(String),
    /// Something answered, but TLS failed: a relay with a certificate this
    /// peer does not trust, or not a relay at all.
    #[error("could not connect to relay {addr}: {cause:#}")]
    Tls {
        /// The relay's address.
        addr: String,
        /// The cause.
        cause: Arc<anyhow::Error>,
    },
    /// The relay refused the hello.
    #[error("relay refused: {0}")]
    Refused(Refusal),
    /// The relay answered the hello with a frame that is not an answer.
    #[error("relay broke the protocol: unexpected answer to hello: {0:?}")]
    Unexpected(Box<Frame>),
    /// The relay's answer could not be read as a frame.
    #[error("relay broke the protocol: {0}")]
    BadAnswer(Arc<FrameError>),
}

impl ConnectError {
    pub(crate) fn setup(err: anyhow::Error) -> ConnectError {
        ConnectError::Setup(Arc::new(err))
    }

    /// The refusal, if the relay refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ConnectError::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the relay was reached and answered (or the setup here
    /// failed): another transport would not fare better.
    fn is_final(&self) -> bool {
        !matches!(
            self,
            ConnectError::Connect { .. } | ConnectError::NoAnswer(_)
        )
    }
}

/// Connects to the relay and says hello as `role`.
pub async fn connect(
    relay: &RelayAddr,
    token: &TokenSource,
    role: Role,
    host: Option<&str>,
) -> Result<RelayLink, ConnectError> {
    connect_with(relay, token, role, host, &HostAsks::default()).await
}

/// What a host agent's hello asks besides its registration (see
/// [`Frame::Hello`]).
#[derive(Debug, Clone, Default)]
pub struct HostAsks {
    /// Leave another connection registered for its id in place.
    pub keep_other: bool,
    /// It moves its registration here.
    pub moving: bool,
    /// It takes direct connections with a certificate whose key has
    /// this pin (over QUIC only; the hello names the endpoint's own
    /// addresses).
    pub direct: Option<String>,
}

/// [`connect`], with what a host's hello asks besides.
pub async fn connect_with(
    relay: &RelayAddr,
    token: &TokenSource,
    role: Role,
    host: Option<&str>,
    asks: &HostAsks,
) -> Result<RelayLink, ConnectError> {
    let HostAsks {
        keep_other,
        moving,
        ref direct,
    } = *asks;
    let token = token.load().map_err(ConnectError::setup)?;
    let addr = relay.resolve().await.map_err(ConnectError::setup)?;
    let hello = Frame::Hello {
        version: VERSION,
        role,
        token: Jwt(token),
        host: host.map(str::to_owned),
        keep_other,
        moving,
        direct: direct.as_ref().map(|pin| Direct::Offer {
            pin: pin.clone(),
            addrs: Vec::new(),
        }),
    };
    let dial = Dial {
        relay,
        addr,
        hello: &hello,
        role,
    };
    let secs = CONNECT_TIMEOUT.as_secs();
    let (name, port) = (relay.name(), addr.port());
    match relay.transport.via {
        Transport::Quic => {
            // Whether the relay's TCP port answers tells a relay that is
            // down from a network that drops UDP; asked only of a QUIC
            // handshake that is slow to come.
            let probe = tokio::spawn(async move {
                tokio::time::sleep(PROBE_AFTER).await;
                tokio::net::TcpStream::connect(addr).await.is_ok()
            });
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, dial.quic()).await;
            let tcp_answers = if probe.is_finished() {
                matches!(probe.await, Ok(true))
            } else {
                probe.abort();
                false
            };
            match attempt {
                Ok(result) => result,
                Err(_) if tcp_answers => Err(ConnectError::NoAnswer(format!(
                    "no answer from relay {name} over UDP within {secs} s, though its TCP port {port} answers: UDP seems blocked on this network; use --transport tcp (or auto)"
                ))),
                Err(_) => Err(ConnectError::NoAnswer(format!(
                    "no answer from relay {name} over UDP within {secs} s: is it running, and is UDP port {port} open?"
                ))),
            }
        }
        Transport::Tcp => match tokio::time::timeout(CONNECT_TIMEOUT, dial.tcp()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::NoAnswer(format!(
                "no answer from relay {name} over TCP within {secs} s: is it running, and is TCP port {port} open?"
            ))),
        },
        Transport::Auto => match tokio::time::timeout(CONNECT_TIMEOUT, dial.race()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::NoAnswer(format!(
                "no answer from relay {name} over UDP or TCP within {secs} s: is it running, and are UDP and TCP port {port} open?"
            ))),
        },
    }
}

/// What [`back_to_quic`] does when its time to try QUIC again comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Try QUIC now.
    Try,
    /// Not now: wait for the next turn.
    Skip,
    /// Stop trying: the link it was for is gone or moved.
    Stop,
}

/// For a link to `relay` that fell back to TCP: tries QUIC again every
/// [`TransportOptions::quic_retry`], with the hello `role` and `host`
/// say, whenever `turn` says [`Turn::Try`]. Returns the link over QUIC
/// once QUIC answers, or `None` once `turn` says [`Turn::Stop`]. The
/// caller decides what moves to the new link and when the old one goes.
pub async fn back_to_quic<F, Fut>(
    relay: &RelayAddr,
    token: &TokenSource,
    role: Role,
    host: Option<&str>,
    direct: Option<&str>,
    mut turn: F,
) -> Option<RelayLink>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Turn>,
{
    let quic = relay.quic_only();
    // Turns come on a fixed grid; one that an attempt overran comes at once.
    let every = relay.transport.quic_retry;
    let mut next = tokio::time::Instant::now() + every;
    loop {
        tokio::time::sleep_until(next).await;
        next = (next + every).max(tokio::time::Instant::now());
        match turn().await {
            Turn::Stop => return None,
            Turn::Skip => continue,
            Turn::Try => {}
        }
        // A host agent's new registration takes the place of its old one,
        // which carries its sessions to their end.
        let asks = HostAsks {
            moving: true,
            direct: direct.map(str::to_owned),
            ..HostAsks::default()
        };
        match connect_with(&quic, token, role, host, &asks).await {
            Ok(link) => return Some(link),
            Err(err) => tracing::debug!("QUIC still fails: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_is_the_host_part() {
        let r = |a: &str| RelayAddr {
            addr: a.into(),
            at: None,
            trust: Trust::System,
            transport: TransportOptions::default(),
        };
        assert_eq!(
            r("relay.example.org:4433").server_name(),
            "relay.example.org"
        );
        assert_eq!(r("127.0.0.1:4433").server_name(), "127.0.0.1");
        assert_eq!(r("[::1]:4433").server_name(), "::1");
    }
}
