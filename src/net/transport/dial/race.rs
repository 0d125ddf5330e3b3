//! One attempt to reach the relay: the transport handshake (QUIC, TLS
//! over TCP, or both raced) and the hello on the connection that won.

use std::net::SocketAddr;
use std::sync::Arc;

use tracing::debug;

use super::{ConnectError, RelayAddr, RelayLink};
use crate::net::tls::pin;
use crate::net::transport::tcp::{self, Side, TcpConn};
use crate::net::transport::{direct, quic};
use crate::net::transport::{Closed, Conn, Stream};
use crate::ops::defaults::{CLOSE_REASON_WAIT, TCP_AFTER};
use crate::protocol::{read_frame, write_frame, Direct, Frame, Reason, Refusal, Role};

/// A QUIC endpoint that dialled the relay, and its socket, shared.
pub(super) struct Dialled {
    endpoint: quinn::Endpoint,
    socket: Arc<std::net::UdpSocket>,
}

/// One attempt to reach the relay with a hello.
pub(super) struct Dial<'a> {
    pub relay: &'a RelayAddr,
    pub addr: SocketAddr,
    pub hello: &'a Frame,
    pub role: Role,
}

impl Dial<'_> {
    fn connect_err(&self, cause: anyhow::Error) -> ConnectError {
        ConnectError::Connect {
            addr: self.relay.name(),
            cause: Arc::new(cause),
        }
    }

    /// QUIC first; TLS over TCP too once QUIC has not completed its
    /// handshake within [`TCP_AFTER`] (or has failed). Whichever handshake
    /// completes first sends the hello and the other is dropped, so the
    /// relay never sees two hellos: a host agent's second registration
    /// would replace its first.
    pub async fn race(&self) -> Result<RelayLink, ConnectError> {
        let quic = self.quic_handshake();
        let tcp = self.tcp_handshake();
        let head_start = tokio::time::sleep(TCP_AFTER);
        tokio::pin!(quic, tcp, head_start);
        let (mut quic_failed, mut tcp_failed, mut tcp_started) = (None, None, false);
        loop {
            tokio::select! {
                result = &mut quic, if quic_failed.is_none() => match result {
                    Ok((conn, endpoint)) => return self.quic_hello(conn, endpoint).await,
                    Err(err) if !err.is_final() => {
                        debug!("QUIC attempt failed: {err}");
                        quic_failed = Some(err);
                        tcp_started = true;
                    }
                    Err(err) => return Err(err),
                },
                () = &mut head_start, if !tcp_started => {
                    debug!("no QUIC handshake within {TCP_AFTER:?}; trying TCP too");
                    tcp_started = true;
                }
                result = &mut tcp, if tcp_started && tcp_failed.is_none() => match result {
                    Ok(tls) => return self.tcp_hello(tls).await,
                    Err(err) if !err.is_final() => {
                        debug!("TCP attempt failed: {err}");
                        tcp_failed = Some(err);
                    }
                    Err(err) => return Err(err),
                },
            }
            if let (Some(quic), Some(_)) = (&quic_failed, &tcp_failed) {
                return Err(quic.clone());
            }
        }
    }

    /// The hello over QUIC.
    pub async fn quic(&self) -> Result<RelayLink, ConnectError> {
        let (conn, endpoint) = self.quic_handshake().await?;
        self.quic_hello(conn, endpoint).await
    }

    /// The hello over TLS over TCP.
    pub async fn tcp(&self) -> Result<RelayLink, ConnectError> {
        let tls = self.tcp_handshake().await?;
        self.tcp_hello(tls).await
    }

    fn lost(&self, closed: Closed) -> ConnectError {
        match closed {
            Closed::Peer(refusal) => ConnectError::Refused(refusal),
            other => self.connect_err(other.into()),
        }
    }

    /// A QUIC connection to the relay, and the endpoint it lives on.
    async fn quic_handshake(&self) -> Result<(Conn, Dialled), ConnectError> {
        let relay = self.relay;
        let config =
            quic::client_config(&relay.trust, relay.transport).map_err(ConnectError::setup)?;
        let bind: SocketAddr = if self.addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let (mut endpoint, socket) = quic::bind_dialling(bind).map_err(ConnectError::setup)?;
        endpoint.set_default_client_config(config);
        let connecting = endpoint
            .connect(self.addr, relay.server_name())
            .map_err(|e| self.connect_err(e.into()))?;
        let conn = connecting.await.map_err(|e| match &e {
            // An untrusted relay says so in its own words, once, as over TCP.
            quinn::ConnectionError::TransportError(t) => match pin::untrusted_in(&t.reason) {
                Some(words) => ConnectError::Tls {
                    addr: relay.name(),
                    cause: Arc::new(anyhow::anyhow!("{words}")),
                },
                None => self.lost(Closed::from(e)),
            },
            _ => self.lost(Closed::from(e)),
        })?;
        let dialled = Dialled {
            endpoint,
            socket: Arc::new(socket),
        };
        Ok((Conn::Quic(conn), dialled))
    }

    /// The hello on a QUIC connection's first stream.
    async fn quic_hello(&self, conn: Conn, endpoint: Dialled) -> Result<RelayLink, ConnectError> {
        let Stream { mut send, mut recv } = conn.open().await.map_err(|c| self.lost(c))?;
        // A host that takes direct connections names its own addresses:
        // this endpoint's port on the address that routes to the relay.
        let mut hello = self.hello.clone();
        if let Frame::Hello {
            direct: Some(Direct::Offer { addrs, .. }),
            ..
        } = &mut hello
        {
            let local = direct::local_candidates(&endpoint.endpoint, self.addr);
            *addrs = crate::protocol::direct::written(&local);
        }
        let answer = async {
            write_frame(&mut send, &hello).await?;
            read_frame(&mut recv).await
        }
        .await;
        match answer {
            Ok(Frame::Welcome {
                host,
                expires_at,
                relay,
                ..
            }) => Ok(RelayLink {
                conn,
                control: Some(Stream { send, recv }),
                host,
                expires_at,
                instance: relay,
                endpoint: Some(endpoint.endpoint),
                socket: Some(endpoint.socket),
            }),
            Ok(Frame::Refused { reason, message }) => {
                conn.close(Reason::Done, "");
                Err(ConnectError::Refused(
                    Refusal { reason, message }.printable(),
                ))
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
                        Some(closed) => Err(self.lost(closed)),
                        None => Err(ConnectError::BadAnswer(Arc::new(err))),
                    },
                }
            }
        }
    }

    /// A TLS-over-TCP connection to the relay.
    async fn tcp_handshake(&self) -> Result<Tls, ConnectError> {
        let relay = self.relay;
        let config = tcp::tcp_client_config(&relay.trust).map_err(ConnectError::setup)?;
        tcp::dial(self.addr, relay.server_name(), config)
            .await
            .map_err(|err| {
                // TLS failed: something answered, and QUIC will not fare
                // better with the same certificate.
                let rustls = err
                    .downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>());
                let tls = rustls.is_some();
                // An untrusted relay says so in its own words, once.
                let cause = match rustls.and_then(pin::untrusted) {
                    Some(untrusted) => anyhow::anyhow!("{untrusted}"),
                    None => err.context("over TCP"),
                };
                let cause = Arc::new(cause);
                let addr = relay.name();
                match tls {
                    true => ConnectError::Tls { addr, cause },
                    false => ConnectError::Connect { addr, cause },
                }
            })
    }

    /// The hello as a raw frame on the TLS stream; HTTP/2 starts on the
    /// connection once the relay has welcomed it.
    async fn tcp_hello(&self, mut tls: Tls) -> Result<RelayLink, ConnectError> {
        // No direct path from a peer whose UDP may be blocked.
        let mut hello = self.hello.clone();
        if let Frame::Hello { direct, .. } = &mut hello {
            *direct = None;
        }
        let answer = async {
            write_frame(&mut tls, &hello).await?;
            read_frame(&mut tls).await
        }
        .await;
        match answer {
            Ok(Frame::Welcome {
                host,
                expires_at,
                relay: instance,
                ..
            }) => {
                let (side, max_streams) = match self.role {
                    // The relay opens a stream per session towards a host.
                    Role::Host => (Side::Accepts, u32::MAX),
                    Role::Client => (Side::Opens, 0),
                };
                let options = self.relay.transport;
                let settings = tcp::Settings {
                    window: options.window(),
                    max_streams,
                    keep_alive: options.keep_alive,
                    idle_timeout: options.idle_timeout,
                };
                let conn = TcpConn::pending(self.addr);
                if let Err(closed) = conn.start(tls, side, settings).await {
                    return Err(self.lost(closed));
                }
                Ok(RelayLink {
                    conn: Conn::Tcp(conn),
                    control: None,
                    host,
                    expires_at,
                    instance,
                    endpoint: None,
                    socket: None,
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

/// A TLS stream to the relay over TCP.
type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
