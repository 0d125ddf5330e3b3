//! Certificates ([`certs`]: self-signed with rcgen, or loaded from PEM
//! files) and the rustls/quinn configurations that every role builds on.

mod certs;
mod verify;

pub use certs::{
    add_names, cert_names, create_self_signed, default_names, fingerprint, load_certs,
    load_or_create, self_signed, Identity, CERT_FILE, KEY_FILE,
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::CertificateDer;

pub use crate::congestion::{Congestion, CONGESTION};
use crate::defaults::{
    IDLE_TIMEOUT, INCOMING_BUFFER, INCOMING_BUFFER_TOTAL, KEEP_ALIVE, MAX_INCOMING,
};
use crate::protocol::ALPN;

/// Most concurrent sessions (bidirectional streams) per connection: far
/// above quinn's default of 100 so that many ssh sessions share one
/// connection without waiting.
pub const MAX_STREAMS: u32 = 16_384;

/// Default per-stream receive window (`--stream-window`). One session
/// moves at most a window per round trip of each hop: 512 KiB carries
/// 100 Mbit/s over hops of 20 ms round trip (85 Mbit/s at 40 ms; 1 MiB
/// reaches 96). It also bounds what a stalled session (an ssh client that
/// stops reading) holds at each hop: quinn keeps received packets whole
/// and compacts a stream's buffer only past 1.5 times its data, so up to
/// 2.5 windows of memory. README "Limits" has the measured trade-off.
pub const STREAM_WINDOW: u32 = 512 * 1024;

/// Smallest stream window accepted: a protocol frame and its length must
/// fit in one.
pub const MIN_STREAM_WINDOW: u32 = 64 * 1024;

/// Largest stream window accepted: 1 Gbit/s over a 500 ms round trip.
pub const MAX_STREAM_WINDOW: u32 = 64 * 1024 * 1024;

/// How peers verify the relay's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Trust exactly these certificates (a pinned self-signed relay certificate).
    Pinned(Vec<CertificateDer<'static>>),
    /// A pinned certificate file, read when the configuration is built.
    PinnedFile(PathBuf),
    /// The system's root certificates.
    System,
    /// The relay's public key, whatever certificate carries it.
    Key(crate::pin::Pin),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which transport a peer dials the relay with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC, and TLS over TCP too if QUIC has not answered within
    /// [`crate::defaults::TCP_AFTER`]: whichever answers first.
    #[default]
    Auto,
    /// QUIC over UDP only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

/// Transport settings shared by every role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportOptions {
    /// Interval of keep-alive packets.
    pub keep_alive: Duration,
    /// Silence after which a connection is considered dead.
    pub idle_timeout: Duration,
    /// Per-stream receive window, bytes ([`STREAM_WINDOW`]).
    pub stream_window: u32,
    /// Congestion controller.
    pub congestion: Congestion,
    /// Which transport a peer dials the relay with.
    pub via: Transport,
    /// With [`Transport::Auto`], how often a peer on TCP
    /// tries QUIC again.
    pub quic_retry: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            keep_alive: KEEP_ALIVE,
            idle_timeout: IDLE_TIMEOUT,
            stream_window: STREAM_WINDOW,
            congestion: CONGESTION,
            via: Transport::Auto,
            quic_retry: crate::defaults::QUIC_RETRY,
        }
    }
}

impl TransportOptions {
    /// The stream window in force: [`TransportOptions::stream_window`]
    /// within [`MIN_STREAM_WINDOW`]..=[`MAX_STREAM_WINDOW`].
    pub fn window(&self) -> u32 {
        self.stream_window
            .clamp(MIN_STREAM_WINDOW, MAX_STREAM_WINDOW)
    }
}

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
    let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
    quinn::Endpoint::new(endpoint, server, socket.into(), runtime)
        .with_context(|| format!("could not listen on {addr}"))
}

/// Connection receive window of a peer that has not yet been authenticated:
/// room for a hello, not for megabytes of unsolicited data.
pub const PRE_AUTH_WINDOW: u32 = 64 * 1024;

/// The relay's server configuration. A new connection may open only its
/// control stream and send little until its token is accepted; the relay
/// then raises both limits ([`quinn::Connection::set_max_concurrent_bi_streams`],
/// [`quinn::Connection::set_receive_window`]).
pub fn server_config(
    identity: Identity,
    opts: TransportOptions,
) -> anyhow::Result<quinn::ServerConfig> {
    let tls = server_tls(identity, ALPN)?;
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

/// TLS 1.3 with `identity`, offering only `alpn`, no early data.
pub(crate) fn server_tls(identity: Identity, alpn: &[u8]) -> anyhow::Result<rustls::ServerConfig> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is unavailable")?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)
        .context("certificate and key do not form a usable identity")?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// TLS 1.3 trusting `trust`, asking for `alpn`. A refusal names the key
/// the relay showed and what to do ([`crate::pin::untrusted`]).
pub(crate) fn client_tls(trust: &Trust, alpn: &[u8]) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let versions = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 is unavailable")?;
    let pinned = match trust {
        Trust::Key(pin) => {
            let verifier = crate::pin::PinVerifier::new(*pin, &provider());
            let mut tls = versions
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            tls.alpn_protocols = vec![alpn.to_vec()];
            return Ok(tls);
        }
        Trust::Pinned(certs) => certs.clone(),
        Trust::PinnedFile(path) => load_certs(path)?,
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // A malformed system root is skipped, as browsers do.
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                bail!("no system root certificates found; pass --relay-cert or --relay-pin");
            }
            Vec::new()
        }
    };
    if pinned.is_empty() && roots.is_empty() {
        bail!("no certificate to pin: the relay's certificate file holds none");
    }
    let mut keys = Vec::new();
    for c in pinned {
        // A certificate whose key cannot be read still goes to webpki,
        // which will say what is wrong with it.
        keys.extend(crate::pin::Pin::of(&c).ok());
        roots.add(c).context("pinned certificate is not usable")?;
    }
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .context("could not build the certificate verifier")?;
    let verifier = verify::ExplainingVerifier::new(inner, keys);
    let mut tls = versions
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}
