//! The relay's side of a connection's start, whatever the transport: its
//! sockets ([`Listener`]), each connection attempt before its handshake
//! ([`Incoming`]), the handshake and the hello ([`Handshaken`]), and the
//! hello's answer ([`Pending`]).
//!
//! Over QUIC the hello and its answer travel on the connection's first
//! stream; over TLS over TCP they are raw frames on the TLS stream, and
//! HTTP/2 starts only once the answer is a welcome, so that an
//! unauthenticated peer holds no more than a TLS session and one frame.

mod hello;

pub use hello::{Handshaken, Incoming, NoHello, Pending};

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::options::TransportOptions;
use super::{quic, tcp, Conn, ErrorCode};
use crate::net::tls::Identity;
use crate::ops::defaults::ACCEPT_BACKOFF;
use crate::protocol::Reason;

/// Where the relay listens for TLS over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenTcp {
    /// The UDP socket's address and port.
    #[default]
    Same,
    /// This address.
    At(SocketAddr),
    /// Nowhere: QUIC only.
    Off,
}

/// The stateless-reset and connection-id keys of the relay's QUIC
/// endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointKeys {
    /// Random, new for each process.
    #[default]
    Random,
    /// Derived from the relay's private key, so that they survive
    /// restarts ([`quic::keys::endpoint_config`]).
    FromIdentity,
}

/// Which transport a connection attempt came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// QUIC.
    Quic,
    /// TLS over TCP.
    Tcp,
}

/// The relay's sockets: a QUIC endpoint, which can dial as well as
/// accept, and a TCP listener unless TCP is off.
pub struct Listener {
    quic: quinn::Endpoint,
    tcp: Option<(TcpListener, TlsAcceptor)>,
}

impl Listener {
    /// Binds the UDP socket on `addr` (port 0 picks a free port) and the
    /// TCP listener as `tcp` says (by default the same address and port),
    /// serving with `identity`. With port 0 and TCP on the same address,
    /// the port picked for UDP may be taken for TCP: then another is
    /// picked, a few times over. Must be called inside the runtime.
    pub fn bind(
        addr: SocketAddr,
        identity: Identity,
        options: TransportOptions,
        tcp: ListenTcp,
        keys: EndpointKeys,
    ) -> anyhow::Result<Listener> {
        let acceptor = match tcp {
            ListenTcp::Off => None,
            _ => Some(TlsAcceptor::from(tcp::tcp_server_config(identity.clone())?)),
        };
        let endpoint = match keys {
            EndpointKeys::Random => quinn::EndpointConfig::default(),
            EndpointKeys::FromIdentity => quic::keys::endpoint_config(&identity),
        };
        let server = quic::server_config(identity, options)?;
        let bind_udp = || quic::bind_endpoint_with(addr, endpoint.clone(), Some(server.clone()));
        let bind_tcp = |at: SocketAddr| {
            let listener = std::net::TcpListener::bind(at)
                .with_context(|| format!("could not listen on TCP {at} (see --listen-tcp)"))?;
            listener.set_nonblocking(true)?;
            Ok::<_, anyhow::Error>(TcpListener::from_std(listener)?)
        };
        let (quic, tcp) = match tcp {
            ListenTcp::Off => (bind_udp()?, None),
            ListenTcp::At(at) => (bind_udp()?, Some(bind_tcp(at)?)),
            ListenTcp::Same => {
                let mut tries = if addr.port() == 0 { 16 } else { 1 };
                loop {
                    let endpoint = bind_udp()?;
                    let at = endpoint.local_addr()?;
                    match bind_tcp(at) {
                        Ok(tcp) => break (endpoint, Some(tcp)),
                        Err(_) if tries > 1 => tries -= 1,
                        Err(err) => return Err(err),
                    }
                }
            }
        };
        Ok(Listener {
            quic,
            tcp: tcp.zip(acceptor),
        })
    }

    /// The address of the UDP socket.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.quic
            .local_addr()
            .context("relay socket has no address")
    }

    /// The address of the TCP listener, if there is one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The next connection attempt, over either transport; `None` once the
    /// QUIC endpoint is closed. A failure to accept over TCP (out of file
    /// descriptors and the like) is logged and waited out: the listener
    /// itself is still good.
    pub async fn accept(&self) -> Option<Incoming> {
        loop {
            let tcp = async {
                match &self.tcp {
                    Some((listener, _)) => listener.accept().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                incoming = self.quic.accept() => return incoming.map(|i| Incoming::Quic(Box::new(i))),
                accepted = tcp => match (accepted, &self.tcp) {
                    (Ok((stream, remote)), Some((_, acceptor))) => {
                        let acceptor = acceptor.clone();
                        return Some(Incoming::Tcp { stream, remote, acceptor });
                    }
                    (Err(err), _) => {
                        tracing::warn!(%err, "could not accept a TCP connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                    (Ok(_), None) => {}
                },
            }
        }
    }

    /// Stops accepting, and closes every QUIC connection with `reason`
    /// (TCP connections close with their own tasks).
    pub fn close(&mut self, reason: Reason, message: &str) {
        self.tcp = None;
        self.quic
            .close(ErrorCode::from(reason).varint(), message.as_bytes());
    }

    /// Resolves once every QUIC connection is gone, its peer having had
    /// the close.
    pub async fn wait_idle(&self) {
        self.quic.wait_idle().await;
    }

    /// A QUIC connection from this listener's socket to `addr`, which must
    /// present a certificate for `server_name` that `trust` accepts: the
    /// same endpoint dials as well as accepts.
    pub async fn dial_quic(
        &self,
        addr: SocketAddr,
        server_name: &str,
        trust: &crate::net::tls::Trust,
        options: TransportOptions,
    ) -> anyhow::Result<Conn> {
        let config = quic::client_config(trust, options)?;
        let connecting = self.quic.connect_with(config, addr, server_name)?;
        Ok(Conn::Quic(connecting.await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::{self_signed, Trust};

    fn listener() -> (Listener, Trust) {
        let identity = self_signed(&["localhost".to_owned()]).unwrap();
        let trust = Trust::Pinned(identity.chain.clone());
        let options = TransportOptions::default();
        let bound = Listener::bind(
            "127.0.0.1:0".parse().unwrap(),
            identity,
            options,
            ListenTcp::Off,
            EndpointKeys::Random,
        )
        .unwrap();
        (bound, trust)
    }

    /// One socket both accepts and dials (as the host agent's will, for a
    /// direct path between client and host): the peer it dials sees the listener's own address, and
    /// it still accepts meanwhile.
    #[tokio::test]
    async fn one_endpoint_both_accepts_and_dials() {
        let (a, a_trust) = listener();
        let (b, b_trust) = listener();
        let (a_at, b_at) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let options = TransportOptions::default();
        let handshake = |incoming: Option<Incoming>, from: SocketAddr| async move {
            let incoming = incoming.expect("an attempt");
            assert_eq!(
                incoming.remote(),
                from,
                "dialled from the listener's socket"
            );
            assert_eq!(incoming.via(), Via::Quic);
            assert!(incoming.handshake().await.is_ok());
        };
        // `a` dials `b`, and accepts `b`'s call, on one socket.
        let (there, back, _, _) = tokio::join!(
            a.dial_quic(b_at, "localhost", &b_trust, options),
            b.dial_quic(a_at, "localhost", &a_trust, options),
            async { handshake(b.accept().await, a_at).await },
            async { handshake(a.accept().await, b_at).await },
        );
        assert_eq!(there.unwrap().remote(), b_at);
        assert_eq!(back.unwrap().remote(), a_at);
    }
}
