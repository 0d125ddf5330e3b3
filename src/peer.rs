//! Dialling the relay and the hello exchange, shared by the host agent and
//! the client forwarder.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use thiserror::Error;

use crate::defaults::{CLOSE_REASON_WAIT, CONNECT_TIMEOUT, SHUTDOWN_GRACE};
use crate::protocol::Role;
use crate::protocol::{
    read_frame, write_frame, Frame, FrameError, Jwt, Reason, Refusal, DEFAULT_PORT, VERSION,
};
use crate::tls::{self, TransportOptions, Trust};
use crate::token::TokenSource;
use crate::transport::{Closed, Conn, Stream};

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
    /// The control stream, kept open for the connection's lifetime.
    pub control: Stream,
    /// What the relay granted: host id and expiry (Unix seconds).
    pub host: String,
    /// Unix time at which the relay closes this connection.
    pub expires_at: u64,
    /// The endpoint it lives on (kept so its socket lives as long as it does).
    endpoint: quinn::Endpoint,
}

impl RelayLink {
    /// Closes the connection with `reason` and waits, within the shutdown
    /// grace, for the relay to acknowledge it.
    pub async fn close(&self, reason: Reason, message: &str) {
        self.conn.close(reason, message);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
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
    #[error("could not connect to relay {addr}: {source}")]
    Connect {
        /// The relay's address.
        addr: String,
        /// The cause.
        source: Arc<anyhow::Error>,
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
    let config = tls::client_config(&relay.trust, relay.transport).map_err(ConnectError::setup)?;
    let addr = relay.resolve().await.map_err(ConnectError::setup)?;
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let connect_err = |source: anyhow::Error| ConnectError::Connect {
        addr: relay.addr.clone(),
        source: Arc::new(source),
    };
    let mut endpoint = tls::bind_endpoint(bind, None).map_err(ConnectError::setup)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint
        .connect(addr, relay.server_name())
        .map_err(|e| connect_err(e.into()))?;
    let lost = |closed: Closed| match closed {
        Closed::Peer(refusal) => ConnectError::Refused(refusal),
        other => connect_err(other.into()),
    };
    let exchange = async {
        let conn = Conn::Quic(connecting.await.map_err(|e| lost(Closed::from(e)))?);
        let (mut send, mut recv) = conn.open().await.map_err(lost)?;
        let hello = Frame::Hello {
            version: VERSION,
            role,
            token: Jwt(token),
            host: host.map(str::to_owned),
            keep_other,
        };
        let answer = async {
            write_frame(&mut send, &hello).await?;
            read_frame(&mut recv).await
        }
        .await;
        match answer {
            Ok(Frame::Welcome {
                host, expires_at, ..
            }) => Ok(RelayLink {
                conn,
                control: (send, recv),
                host,
                expires_at,
                endpoint: endpoint.clone(),
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
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(connect_err(anyhow::anyhow!(
            "no answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
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
