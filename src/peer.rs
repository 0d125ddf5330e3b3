//! Dialling the relay and the hello exchange, shared by the host agent and
//! the client forwarder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use thiserror::Error;

use crate::protocol::{
    read_frame, write_frame, Frame, FrameError, Refusal, Role, DEFAULT_PORT, VERSION,
};
use crate::tls::{self, TransportOptions, Trust};
use crate::token::TokenSource;

/// Longest wait for the QUIC handshake and the relay's answer to a hello.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// When the control stream fails before the relay's answer, how long to wait
/// for the connection's close, which carries the refusal's reason.
const CLOSE_REASON_WAIT: Duration = Duration::from_secs(1);

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

/// A registered connection to the relay.
#[derive(Debug)]
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// The endpoint it lives on (kept so its socket lives as long as it does).
    pub endpoint: quinn::Endpoint,
    /// The control stream, kept open for the connection's lifetime.
    pub control: (quinn::SendStream, quinn::RecvStream),
    /// What the relay granted: host id and expiry (Unix seconds).
    pub host: String,
    /// Unix time at which the relay closes this connection.
    pub expires_at: u64,
}

/// Why connecting to the relay failed. Cheap to clone, so that one failed
/// attempt can answer several waiting sessions.
#[derive(Debug, Clone, Error)]
pub enum ConnectError {
    /// Local setup failed: address, certificate or token file.
    #[error("{0:#}")]
    Setup(Arc<anyhow::Error>),
    /// No QUIC connection could be made.
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
    /// The relay answered with something that is not a hello answer.
    #[error("relay broke the protocol: {0}")]
    Protocol(String),
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
) -> Result<Session, ConnectError> {
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
    let exchange = async {
        let conn = connecting
            .await
            .map_err(|e| handshake_error(e, &connect_err))?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| handshake_error(e, &connect_err))?;
        let hello = Frame::Hello {
            version: VERSION,
            role,
            token: crate::protocol::Jwt(token),
            host: host.map(str::to_owned),
        };
        let answer = async {
            write_frame(&mut send, &hello).await?;
            read_frame(&mut recv).await
        }
        .await;
        match answer {
            Ok(Frame::Welcome {
                host, expires_at, ..
            }) => Ok(Session {
                conn,
                endpoint: endpoint.clone(),
                control: (send, recv),
                host,
                expires_at,
            }),
            Ok(Frame::Refused { reason, message }) => {
                conn.close(crate::protocol::Reason::Done.varint(), b"");
                Err(ConnectError::Refused(Refusal { reason, message }))
            }
            Ok(other) => {
                conn.close(
                    crate::protocol::Reason::Protocol.varint(),
                    b"unexpected frame",
                );
                Err(ConnectError::Protocol(format!(
                    "unexpected answer to hello: {other:?}"
                )))
            }
            Err(err) => {
                // A refusal may arrive as the connection's close reason
                // before the frame that carries it.
                let closed = tokio::time::timeout(CLOSE_REASON_WAIT, conn.closed()).await;
                match closed
                    .ok()
                    .as_ref()
                    .and_then(Refusal::from_connection_error)
                {
                    Some(refusal) => Err(ConnectError::Refused(refusal)),
                    None => Err(frame_error(err, &conn, &connect_err)),
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

fn handshake_error(
    err: quinn::ConnectionError,
    connect_err: &impl Fn(anyhow::Error) -> ConnectError,
) -> ConnectError {
    match Refusal::from_connection_error(&err) {
        Some(refusal) => ConnectError::Refused(refusal),
        None => connect_err(err.into()),
    }
}

fn frame_error(
    err: FrameError,
    conn: &quinn::Connection,
    connect_err: &impl Fn(anyhow::Error) -> ConnectError,
) -> ConnectError {
    match conn.close_reason() {
        Some(reason) => handshake_error(reason, connect_err),
        None => ConnectError::Protocol(err.to_string()),
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
