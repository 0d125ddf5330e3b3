//! Dialling the relay and the hello exchange, shared by the host agent and
//! the client forwarder: over QUIC, over TLS over TCP, or both raced
//! ([`Transport::Auto`]).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use thiserror::Error;

use tracing::debug;

use crate::defaults::{CLOSE_REASON_WAIT, CONNECT_TIMEOUT, SHUTDOWN_GRACE, TCP_AFTER};
use crate::protocol::Role;
use crate::protocol::{
    read_frame, write_frame, Frame, FrameError, Jwt, Reason, Refusal, DEFAULT_PORT, VERSION,
};
use crate::tls::{self, TransportOptions, Trust};
use crate::token::TokenSource;
use crate::transport::tcp::{self, Side, TcpConn};
use crate::transport::{Closed, Conn, Stream, Transport};

/// Where and how to reach the relay.
#[derive(Debug, Clone)]
pub struct RelayAddr {
    /// `HOST:PORT` as given; resolved afresh on every connect.
    pub addr: String,
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

    /// The same relay, over QUIC only: what a peer that fell back to TCP
    /// tries again every [`TransportOptions::quic_retry`].
    pub fn quic_only(&self) -> RelayAddr {
        let mut quic = self.clone();
        quic.transport.via = Transport::Quic;
        quic
    }

    /// Whether a link over `conn` should try QUIC again from time to time.
    pub fn retries_quic(&self, conn: &Conn) -> bool {
        self.transport.via == Transport::Auto && matches!(conn, Conn::Tcp(_))
    }

    async fn resolve(&self) -> anyhow::Result<SocketAddr> {
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
    /// The QUIC endpoint it lives on (kept so its socket lives as long as
    /// it does).
    endpoint: Option<quinn::Endpoint>,
}

impl RelayLink {
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
    fn setup(err: anyhow::Error) -> ConnectError {
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
    connect_with(relay, token, role, host, false).await
}

/// [`connect`], and for a host whether to leave another connection
/// registered for its id in place (`keep_other`, see [`Frame::Hello`]).
pub async fn connect_with(
    relay: &RelayAddr,
    token: &TokenSource,
    role: Role,
    host: Option<&str>,
    keep_other: bool,
) -> Result<RelayLink, ConnectError> {
    let token = token.load().map_err(ConnectError::setup)?;
    let addr = relay.resolve().await.map_err(ConnectError::setup)?;
    let hello = Frame::Hello {
        version: VERSION,
        role,
        token: Jwt(token),
        host: host.map(str::to_owned),
        keep_other,
    };
    let dial = Dial {
        relay,
        addr,
        hello: &hello,
        role,
    };
    let secs = CONNECT_TIMEOUT.as_secs();
    let (name, port) = (&relay.addr, addr.port());
    match relay.transport.via {
        Transport::Quic => {
            // Whether the relay's TCP port answers tells a relay that is
            // down from a network that drops UDP.
            let probe = tokio::spawn(tokio::net::TcpStream::connect(addr));
            let attempt = tokio::time::timeout(CONNECT_TIMEOUT, dial.quic()).await;
            let tcp_answers = probe.is_finished() && matches!(probe.await, Ok(Ok(_)));
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

/// One attempt to reach the relay with a hello.
struct Dial<'a> {
    relay: &'a RelayAddr,
    addr: SocketAddr,
    hello: &'a Frame,
    role: Role,
}

impl Dial<'_> {
    fn connect_err(&self, cause: anyhow::Error) -> ConnectError {
        ConnectError::Connect {
            addr: self.relay.addr.clone(),
            cause: Arc::new(cause),
        }
    }

    /// QUIC first; TLS over TCP too once QUIC has not answered within
    /// [`TCP_AFTER`] (or has failed); the first welcome or refusal wins,
    /// and the other attempt is dropped.
    async fn race(&self) -> Result<RelayLink, ConnectError> {
        let quic = self.quic();
        let tcp = self.tcp();
        let head_start = tokio::time::sleep(TCP_AFTER);
        tokio::pin!(quic, tcp, head_start);
        let (mut quic_failed, mut tcp_failed, mut tcp_started) = (None, None, false);
        loop {
            tokio::select! {
                result = &mut quic, if quic_failed.is_none() => match result {
                    Err(err) if !err.is_final() => {
                        debug!("QUIC attempt failed: {err}");
                        quic_failed = Some(err);
                        tcp_started = true;
                    }
                    result => return result,
                },
                () = &mut head_start, if !tcp_started => {
                    debug!("no answer over QUIC within {TCP_AFTER:?}; trying TCP too");
                    tcp_started = true;
                }
                result = &mut tcp, if tcp_started && tcp_failed.is_none() => match result {
                    Err(err) if !err.is_final() => {
                        debug!("TCP attempt failed: {err}");
                        tcp_failed = Some(err);
                    }
                    result => return result,
                },
            }
            if let (Some(quic), Some(_)) = (&quic_failed, &tcp_failed) {
                return Err(quic.clone());
            }
        }
    }

    /// The hello over QUIC.
    async fn quic(&self) -> Result<RelayLink, ConnectError> {
        let relay = self.relay;
        let config =
            tls::client_config(&relay.trust, relay.transport).map_err(ConnectError::setup)?;
        let bind: SocketAddr = if self.addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = tls::bind_endpoint(bind, None).map_err(ConnectError::setup)?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint
            .connect(self.addr, relay.server_name())
            .map_err(|e| self.connect_err(e.into()))?;
        let lost = |closed: Closed| match closed {
            Closed::Peer(refusal) => ConnectError::Refused(refusal),
            other => self.connect_err(other.into()),
        };
        let conn = Conn::Quic(connecting.await.map_err(|e| lost(Closed::from(e)))?);
        let (mut send, mut recv) = conn.open().await.map_err(lost)?;
        let answer = async {
            write_frame(&mut send, self.hello).await?;
            read_frame(&mut recv).await
        }
        .await;
        match answer {
            Ok(Frame::Welcome {
                host, expires_at, ..
            }) => Ok(RelayLink {
                conn,
                control: Some((send, recv)),
                host,
                expires_at,
                endpoint: Some(endpoint.clone()),
            }),
            Ok(Frame::Refused { reason, message }) => {
                conn.close(Reason::Done, "");
                Err(ConnectError::Refused(Refusal { reason, message }))
            }
            Ok(other) => {
                conn.close(Reason::Protocol, "unexpected frame");
                Err(ConnectError::Unexpected(Box::new(other)))
            }
            Err(err) => {
                // A refusal may arrive as the connection's close reason
                // before the frame that carries it.
                match tokio::time::timeout(CLOSE_REASON_WAIT, conn.closed()).await {
                    Ok(Closed::Peer(refusal)) => Err(ConnectError::Refused(refusal)),
                    _ => match conn.close_reason() {
                        Some(closed) => Err(lost(closed)),
                        None => Err(ConnectError::BadAnswer(Arc::new(err))),
                    },
                }
            }
        }
    }

    /// The hello over TLS over TCP, as a raw frame; HTTP/2 starts on the
    /// connection once the relay has welcomed it.
    async fn tcp(&self) -> Result<RelayLink, ConnectError> {
        let relay = self.relay;
        let config = tcp::tcp_client_config(&relay.trust).map_err(ConnectError::setup)?;
        let mut tls = tcp::dial(self.addr, relay.server_name(), config)
            .await
            .map_err(|e| self.connect_err(e.context("over TCP")))?;
        let answer = async {
            write_frame(&mut tls, self.hello).await?;
            read_frame(&mut tls).await
        }
        .await;
        match answer {
            Ok(Frame::Welcome {
                host, expires_at, ..
            }) => {
                let (side, max_streams) = match self.role {
                    // The relay opens a stream per session towards a host.
                    Role::Host => (Side::Accepts, u32::MAX),
                    Role::Client => (Side::Opens, 0),
                };
                let options = relay.transport;
                let settings = tcp::Settings {
                    window: options.window(),
                    max_streams,
                    keep_alive: options.keep_alive,
                    idle_timeout: options.idle_timeout,
                };
                let conn = TcpConn::pending(self.addr);
                if let Err(closed) = conn.start(tls, side, settings).await {
                    return Err(match closed {
                        Closed::Peer(refusal) => ConnectError::Refused(refusal),
                        other => self.connect_err(other.into()),
                    });
                }
                Ok(RelayLink {
                    conn: Conn::Tcp(conn),
                    control: None,
                    host,
                    expires_at,
                    endpoint: None,
                })
            }
            Ok(Frame::Refused { reason, message }) => Err(ConnectError::Refused(
                Refusal { reason, message }.printable(),
            )),
            Ok(other) => Err(ConnectError::Unexpected(Box::new(other))),
            Err(err) => Err(ConnectError::BadAnswer(Arc::new(err))),
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
