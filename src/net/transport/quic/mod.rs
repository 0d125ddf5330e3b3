//! The QUIC transport's setup: UDP sockets and quinn endpoints, their
//! transport and TLS configurations, the relay's endpoint keys
//! ([`keys`]) and congestion control ([`congestion`]).

pub mod congestion;
pub mod keys;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use super::options::{TransportOptions, MAX_STREAMS, PRE_AUTH_WINDOW};
use crate::net::tls::{client_tls, server_tls, Identity, Trust};
use crate::ops::defaults::{INCOMING_BUFFER, INCOMING_BUFFER_TOTAL, MAX_INCOMING};
use crate::protocol::ALPN;

/// The quinn transport configuration for `opts`.
pub fn transport_config(opts: TransportOptions) -> anyhow::Result<quinn::TransportConfig> {
    let window = opts.window();
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(MAX_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(window.into())
        // No connection-level cap: with one, sessions whose readers stall
        // would use up the shared window and freeze every other session on
        // the connection. Memory stays bounded by the stream window times
        // the session limit.
        .receive_window(quinn::VarInt::MAX)
        // A window per stream: a session never waits for buffer that
        // another holds. The relay gives each connection one window per
        // session instead ([`crate::relay::budget`]).
        .send_window(u64::from(window) * u64::from(MAX_STREAMS))
        // No DATAGRAM frames: nothing here reads them, so a peer (even one
        // without a token) could fill a buffer nobody drains.
        .datagram_receive_buffer_size(None)
        .datagram_send_buffer_size(0)
        .congestion_controller_factory(opts.congestion.factory())
        .keep_alive_interval(Some(opts.keep_alive))
        .max_idle_timeout(Some(
            opts.idle_timeout
                .try_into()
                .context("idle timeout is too long")?,
        ));
    Ok(t)
}

/// UDP socket buffer asked for, each way: a burst of a few windows at
/// multi-Gbit/s must fit, or the kernel drops datagrams and congestion
/// control backs off. The kernel caps it at `net.core.rmem_max` /
/// `net.core.wmem_max`.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// Binds a UDP socket with large buffers on `addr` and makes a quinn
/// endpoint of it, a server when `server` is given. Logs once per process
/// when the kernel grants smaller buffers, with the sysctl that raises them.
pub fn bind_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> anyhow::Result<quinn::Endpoint> {
    bind_endpoint_with(addr, quinn::EndpointConfig::default(), server)
}

/// [`bind_endpoint`] with an endpoint configuration of its own (the
/// relay's, whose stateless-reset key outlives restarts).
pub fn bind_endpoint_with(
    addr: SocketAddr,
    endpoint: quinn::EndpointConfig,
    server: Option<quinn::ServerConfig>,
) -> anyhow::Result<quinn::Endpoint> {
    let socket = udp_socket(addr)?;
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    quinn::Endpoint::new(endpoint, server, socket, runtime)
        .with_context(|| format!("could not listen on {addr}"))
}

/// A dialling endpoint on `addr` (see [`bind_endpoint`]), and its socket
/// shared, for the punches of a direct path
/// ([`super::direct::DirectListener::introduce`]).
pub fn bind_dialling(addr: SocketAddr) -> anyhow::Result<(quinn::Endpoint, std::net::UdpSocket)> {
    let socket = udp_socket(addr)?;
    let shared = socket
        .try_clone()
        .context("could not share the UDP socket")?;
    shared
        .set_nonblocking(true)
        .context("could not share the UDP socket")?;
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
        .with_context(|| format!("could not listen on {addr}"))?;
    Ok((endpoint, shared))
}

/// A UDP socket bound on `addr`, with buffers as large as the kernel grants
/// up to [`UDP_BUFFER`].
fn udp_socket(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("could not create a UDP socket")?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too, as a plain bind would on Linux.
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    let got = (
        socket.recv_buffer_size().unwrap_or(0),
        socket.send_buffer_size().unwrap_or(0),
    );
    if got.0 < UDP_BUFFER || got.1 < UDP_BUFFER {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                recv = got.0,
                send = got.1,
                wanted = UDP_BUFFER,
                "the kernel caps UDP socket buffers below what bulk transfers need; \
                 raise them with: sysctl -w net.core.rmem_max={UDP_BUFFER} net.core.wmem_max={UDP_BUFFER}"
            );
        });
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("could not bind UDP {addr}"))?;
    Ok(socket.into())
}

/// The relay's server configuration. A new connection may open only its
/// control stream and send little until its token is accepted; the relay
/// then raises both limits ([`super::Conn::admit`],
/// [`super::Conn::set_receive_window`]).
pub fn server_config(
    identity: Identity,
    opts: TransportOptions,
) -> anyhow::Result<quinn::ServerConfig> {
    server_config_for(identity, opts, ALPN)
}

/// [`server_config`] offering `alpn`: a host agent's direct connections
/// are admitted the same way, with [`crate::protocol::ALPN_DIRECT`].
pub fn server_config_for(
    identity: Identity,
    opts: TransportOptions,
    alpn: &[u8],
) -> anyhow::Result<quinn::ServerConfig> {
    let tls = server_tls(identity, alpn)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("could not build QUIC TLS configuration")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = transport_config(opts)?;
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .receive_window(PRE_AUTH_WINDOW.into())
        // The control stream's share; sessions add theirs.
        .send_window(opts.window().into());
    config.transport_config(Arc::new(transport));
    // Datagrams of connection attempts not yet accepted: a few Initials
    // each, and a bound on all of them ([`INCOMING_BUFFER_TOTAL`]).
    config
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    Ok(config)
}

/// The configuration with which hosts and clients dial the relay.
pub fn client_config(trust: &Trust, opts: TransportOptions) -> anyhow::Result<quinn::ClientConfig> {
    let tls = client_tls(trust, ALPN)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("could not build QUIC TLS configuration")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(opts)?));
    Ok(config)
}
