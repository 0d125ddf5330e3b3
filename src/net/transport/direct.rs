//! Direct connections between a client and a host agent, made from the
//! sockets each already reaches the relay with, so that the NAT mappings
//! the relay saw are the ones used.
//!
//! The host's side is a [`DirectListener`] on its relay link's endpoint:
//! it answers connection attempts only from addresses it was introduced
//! to in the last [`INTRODUCED_FOR`], and punches towards them (a few
//! small datagrams, [`PUNCH_AT`]) so that its own NAT lets the client's
//! handshake in. The client's side is a [`DirectDialer`] on its relay
//! link's endpoint: it dials every candidate at once, and the first
//! handshake that completes wins. Whatever identifies the client (the
//! relay's ticket) is the roles' business, on the connection's first
//! stream.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::options::TransportOptions;
use super::{quic, Conn};
use crate::net::tls::pin::Pin;
use crate::net::tls::{client_tls, Identity, Trust};
use crate::protocol::ALPN_DIRECT;

/// Whether a peer goes direct where it can (`--direct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectMode {
    /// Go direct where the NATs allow; the relay carries the rest.
    #[default]
    Auto,
    /// Everything through the relay; a host agent says nothing of its
    /// addresses to the relay or its clients.
    Off,
}

/// How long after an introduction the host answers connection attempts
/// from the client's addresses: long enough for a handshake whose first
/// packets its NAT dropped, short enough that nobody else can use it.
pub const INTRODUCED_FOR: Duration = Duration::from_secs(10);

/// When, after an introduction, a punch goes to each of the client's
/// addresses. Each is [`PUNCH`] (8 bytes of payload; 36 bytes on the wire
/// over IPv4, 56 over IPv6): at most 9 datagrams and 504 bytes per
/// address, 392 bytes of them in the first second, and none after 3.2 s,
/// whatever the address does.
pub const PUNCH_AT: [Duration; 9] = [
    Duration::from_millis(0),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
    Duration::from_millis(3200),
];

/// A punch: a datagram that no QUIC stack reads as a packet (its first
/// byte has the fixed bit clear, and it is too short for a stateless
/// reset), sent only to open the sender's NAT towards the other side.
pub const PUNCH: &[u8; 8] = b"\0srpunch";

/// Most addresses introduced at once; the oldest goes first.
const MAX_INTRODUCED: usize = 64;

/// How long the client waits for a direct handshake.
pub const DIRECT_HANDSHAKE: Duration = Duration::from_secs(5);

/// The addresses that answer for one side of a direct path: the port of
/// `endpoint` on the local address that routes to `relay` (a LAN or
/// IPv6 address; the relay adds the one it sees).
pub(crate) fn local_candidates(endpoint: &quinn::Endpoint, relay: SocketAddr) -> Vec<SocketAddr> {
    let Ok(local) = endpoint.local_addr() else {
        return Vec::new();
    };
    let unspecified: SocketAddr = match relay {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let route = UdpSocket::bind(unspecified).and_then(|probe| {
        probe.connect(relay)?;
        probe.local_addr()
    });
    match route {
        Ok(route) if !route.ip().is_unspecified() => {
            vec![SocketAddr::new(route.ip(), local.port())]
        }
        _ => Vec::new(),
    }
}

/// Addresses recently introduced, each until when.
#[derive(Default)]
struct Introduced(Mutex<Vec<(IpAddr, Instant)>>);

impl Introduced {
    fn add(&self, ips: impl IntoIterator<Item = IpAddr>, until: Instant) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        list.retain(|(_, until)| *until > now);
        for ip in ips {
            list.retain(|(known, _)| *known != ip);
            if list.len() == MAX_INTRODUCED {
                list.remove(0);
            }
            list.push((ip, until));
        }
    }

    fn allows(&self, ip: IpAddr) -> bool {
        let list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        list.iter()
            .any(|(known, until)| *known == ip && *until > now)
    }
}

/// The host agent's side of direct connections, on the endpoint of one
/// of its relay links.
pub struct DirectListener {
    endpoint: quinn::Endpoint,
    /// The endpoint's socket, for punches.
    punch: Arc<UdpSocket>,
    introduced: Introduced,
}

impl DirectListener {
    /// Starts accepting direct connections on `endpoint` with `identity`.
    pub(super) fn new(
        endpoint: quinn::Endpoint,
        punch: Arc<UdpSocket>,
        identity: Identity,
        options: TransportOptions,
    ) -> anyhow::Result<DirectListener> {
        let config = quic::server_config_for(identity, options, ALPN_DIRECT)?;
        endpoint.set_server_config(Some(config));
        Ok(DirectListener {
            endpoint,
            punch,
            introduced: Introduced::default(),
        })
    }

    /// Lets `addrs` connect for [`INTRODUCED_FOR`], and returns the punches
    /// towards them (see [`PUNCH_AT`]) to run, which stop early once
    /// `done` says a direct connection is up.
    pub fn introduce(
        &self,
        addrs: &[SocketAddr],
        done: impl Fn() -> bool + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let start = Instant::now();
        self.introduced
            .add(addrs.iter().map(|a| a.ip()), start + INTRODUCED_FOR);
        let (punch, addrs) = (self.punch.clone(), addrs.to_vec());
        let local_v4 = matches!(punch.local_addr(), Ok(SocketAddr::V4(_)));
        async move {
            for at in PUNCH_AT {
                tokio::time::sleep_until(start + at).await;
                if done() {
                    return;
                }
                for addr in &addrs {
                    if local_v4 && addr.is_ipv6() {
                        continue;
                    }
                    // Non-blocking: a punch the socket has no room for
                    // is left out, as one the network drops would be.
                    let _ = punch.send_to(PUNCH, addr);
                }
            }
        }
    }

    /// The next connection attempt from an introduced address that has
    /// proven it is real; attempts from anywhere else are dropped
    /// unanswered. An unproven one is asked to prove its address (a
    /// stateless retry, one round trip) before any TLS work is done for
    /// it, so that a forged source gets no more than the retry's one
    /// packet. `None` once the endpoint has closed.
    pub async fn accept(&self) -> Option<DirectIncoming> {
        loop {
            let incoming = self.endpoint.accept().await?;
            if !self.introduced.allows(incoming.remote_address().ip()) {
                incoming.ignore();
            } else if !incoming.remote_address_validated() && incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                return Some(DirectIncoming(incoming));
            }
        }
    }
}

impl Drop for DirectListener {
    fn drop(&mut self) {
        // The endpoint goes on dialling the relay; it accepts no more.
        self.endpoint.set_server_config(None);
    }
}

/// A direct connection attempt from an introduced address.
pub struct DirectIncoming(quinn::Incoming);

impl DirectIncoming {
    /// Where the attempt comes from.
    pub fn remote(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Drops the attempt unanswered.
    pub fn ignore(self) {
        self.0.ignore();
    }

    /// Completes the handshake, within [`DIRECT_HANDSHAKE`].
    pub async fn handshake(self) -> anyhow::Result<Conn> {
        let connecting = self.0.accept().context("could not accept")?;
        let conn = tokio::time::timeout(DIRECT_HANDSHAKE, connecting)
            .await
            .context("no handshake in time")??;
        Ok(Conn::Quic(conn))
    }
}

/// The client's side of direct connections, on the endpoint of its relay
/// link.
#[derive(Clone)]
pub struct DirectDialer {
    endpoint: quinn::Endpoint,
    /// The relay link's round trip: the direct path's first guess.
    rtt: Duration,
}

/// Bounds on the direct handshake's first guess of the round trip: its
/// first retransmission comes after three of them, and a first packet
/// that the host's NAT dropped (the host's punch not yet out) is sent
/// again that soon.
const FIRST_RTT: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(333));

impl DirectDialer {
    pub(super) fn new(endpoint: quinn::Endpoint, rtt: Duration) -> DirectDialer {
        DirectDialer { endpoint, rtt }
    }

    /// A direct connection to the host at one of `addrs`, showing a key
    /// with `pin`: every address is dialled at once, and the first
    /// handshake that completes wins.
    pub async fn dial(
        &self,
        addrs: &[SocketAddr],
        pin: Pin,
        options: TransportOptions,
    ) -> anyhow::Result<Conn> {
        let tls = client_tls(&Trust::Key(pin), ALPN_DIRECT)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .context("could not build QUIC TLS configuration")?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quic::transport_config(options)?;
        transport.initial_rtt(self.rtt.clamp(FIRST_RTT.0, FIRST_RTT.1));
        // The client opens every stream on a direct connection: the host
        // may open none, so it can make the client buffer nothing unasked.
        transport.max_concurrent_bidi_streams(0u32.into());
        config.transport_config(Arc::new(transport));
        let local_v4 = matches!(self.endpoint.local_addr(), Ok(SocketAddr::V4(_)));
        let mut attempts: FuturesUnordered<_> = (addrs.iter())
            .filter(|addr| !(local_v4 && addr.is_ipv6()))
            .filter_map(|addr| {
                let connecting = self.endpoint.connect_with(config.clone(), *addr, "host");
                connecting.ok()
            })
            .collect();
        anyhow::ensure!(!attempts.is_empty(), "no address of the host to dial");
        let first = async {
            let mut last = None;
            while let Some(attempt) = attempts.next().await {
                match attempt {
                    Ok(conn) => return Ok(Conn::Quic(conn)),
                    Err(err) => last = Some(err),
                }
            }
            Err(anyhow::anyhow!(
                "no address of the host answered: {}",
                last.map_or_else(String::new, |e| e.to_string())
            ))
        };
        tokio::time::timeout(DIRECT_HANDSHAKE, first)
            .await
            .map_err(|_| anyhow::anyhow!("no handshake within {DIRECT_HANDSHAKE:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn introductions_expire_and_stay_bounded() {
        let introduced = Introduced::default();
        let now = Instant::now();
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        introduced.add([ip(1)], now + Duration::from_secs(60));
        introduced.add([ip(2)], now);
        assert!(introduced.allows(ip(1)));
        assert!(!introduced.allows(ip(2)), "expired");
        assert!(!introduced.allows(ip(3)), "never introduced");
        introduced.add((0..=200).map(ip), now + Duration::from_secs(60));
        assert!(introduced.0.lock().unwrap().len() <= MAX_INTRODUCED);
        assert!(introduced.allows(ip(200)));
    }

    #[test]
    fn punches_are_few_small_and_over_within_five_seconds() {
        let wire = |payload: usize| payload + 48; // IPv6 + UDP headers
        let total: usize = PUNCH_AT.iter().map(|_| wire(PUNCH.len())).sum();
        let first_second: usize = (PUNCH_AT.iter())
            .filter(|at| **at < Duration::from_secs(1))
            .map(|_| wire(PUNCH.len()))
            .sum();
        assert!(total <= 1024, "{total}");
        assert!(first_second <= 1024, "{first_second}");
        assert!(PUNCH_AT.iter().all(|at| *at <= Duration::from_secs(5)));
        assert_eq!(PUNCH[0] & 0x40, 0, "fixed bit clear: not a QUIC packet");
    }
}
