//! Hostile and bad input at the relay's TLS-over-TCP listener: garbage
//! instead of TLS, another protocol in ALPN, silent and slow peers before
//! and after TLS, oversize and malformed hellos, the caps on connections
//! before their hello, and the memory budget with sessions over TCP.
//! Throughout, the relay keeps serving everyone else.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rustls::pki_types::ServerName;
use shellrelay::access::token::TokenSource;
use shellrelay::client::{ClientConfig, Forwarder, OpenError, SetupError};
use shellrelay::net::tls::Trust;
use shellrelay::net::transport::dial;
use shellrelay::net::transport::tcp::{dial, tcp_client_config};
use shellrelay::net::transport::{ErrorCode, StreamError};
use shellrelay::ops::defaults::{HANDSHAKE_TIMEOUT, MAX_HANDSHAKES};
use shellrelay::protocol::{
    read_frame, Frame, FrameError, Jwt, Reason, Refusal, Role, ALPN, ALPN_TCP, MAX_FRAME_LEN,
    VERSION,
};
use shellrelay::relay::RelayConfig;
use support::traffic::*;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Where attacks come from: a loopback address of its own, so that the
/// per-address caps they run into do not apply to the good peers, which
/// come from 127.0.0.1.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Another attacker, or a bystander, on an address of its own.
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// What a peer that was cut off early, and not by a timeout, must have
/// been cut off within: half the TLS handshake timeout, so that the
/// timeout cannot be what closed it.
const PROMPTLY: Duration = Duration::from_secs(HANDSHAKE_TIMEOUT.as_secs() / 2);

/// The paths tested for the memory budget: (client's transport, host's
/// transport).
const PATHS: [(Transport, Transport); 3] = [
    (Transport::Tcp, Transport::Tcp),
    (Transport::Tcp, Transport::Quic),
    (Transport::Quic, Transport::Tcp),
];

/// A relay that `configure` adjusts (refused tokens are not rate limited,
/// as in [`Tunnel::start`]), with host `lab1` on an echo server and a
/// client forwarder for it, both over TCP. The client has connected and
/// carried a session when this returns.
async fn tcp_tunnel(configure: impl FnOnce(&mut RelayConfig)) -> (Tunnel, Peer, SocketAddr) {
    let tunnel = Tunnel::start_with(|c| {
        c.limits.failures_per_addr = u32::MAX;
        configure(c);
    })
    .await;
    let host = tunnel
        .host_over("lab1", echo_server().await, Transport::Tcp)
        .await;
    let client = tunnel.client_over("lab1", Transport::Tcp).await;
    still_serving(client).await;
    (tunnel, host, client)
}

/// Checks that the relay still serves a real session through `client`.
async fn still_serving(client: SocketAddr) {
    let mut tcp = within(WAIT, "connect to the forwarder", TcpStream::connect(client))
        .await
        .unwrap();
    tcp.write_all(b"still there?").await.unwrap();
    tcp.shutdown().await.unwrap();
    let got = within(WAIT, "echo", read_until_closed(&mut tcp)).await;
    assert_eq!(got, b"still there?");
}

/// Checks that a new client connection over TCP from 127.0.0.1 is
/// welcomed.
async fn a_new_client_gets_in(tunnel: &Tunnel) {
    let token = TokenSource::Literal(tunnel.token(Role::Client, "lab1", HOUR));
    let relay = tunnel.relay_over(Transport::Tcp);
    let link = within(
        WAIT,
        "a new client's welcome",
        dial::connect(&relay, &token, Role::Client, None),
    )
    .await
    .expect("a good client is let in");
    assert_eq!(link.conn.transport(), "tcp");
    assert_eq!(link.host, "lab1");
}

/// Waits until the relay has exactly `n` connections open.
async fn until_connections(tunnel: &Tunnel, n: usize) {
    let what = format!("the relay's connections to be {n}");
    within(WAIT, &what, async {
        while tunnel.registry.connections() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// The TLS configuration peers dial the relay with, but offering `alpn`.
fn tls_config(tunnel: &Tunnel, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let good = tcp_client_config(&Trust::Pinned(tunnel.cert.clone())).unwrap();
    let mut config = (*good).clone();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

/// A TCP connection to the relay from the loopback address `from`.
async fn tcp_from(tunnel: &Tunnel, from: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    within(WAIT, "TCP connect", socket.connect(tunnel.addr))
        .await
        .unwrap()
}

/// TLS to the relay from `from` with `config`.
async fn tls_from(
    tunnel: &Tunnel,
    from: IpAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(tunnel, from).await;
    let name = ServerName::try_from("localhost").unwrap();
    within(
        WAIT,
        "TLS handshake",
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
}

/// TLS to the relay as peers dial it, from 127.0.0.1.
async fn tls(tunnel: &Tunnel) -> TlsStream<TcpStream> {
    let config = tcp_client_config(&Trust::Pinned(tunnel.cert.clone())).unwrap();
    within(WAIT, "TLS", dial(tunnel.addr, "localhost", config))
        .await
        .unwrap()
}

/// Reads until the relay ends the stream (cleanly or not) within `limit`;
/// returns what was read.
async fn closed_within<R: AsyncRead + Unpin>(limit: Duration, what: &str, r: &mut R) -> Vec<u8> {
    within(limit, what, async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

/// Reads the relay's answer to a hello, which must be a refusal, and then
/// the end of the stream with nothing after it.
async fn refused_then_closed<R: AsyncRead + Unpin>(r: &mut R) -> Refusal {
    let frame = within(WAIT, "the relay's answer", read_frame(r))
        .await
        .expect("a frame");
    let Frame::Refused { reason, message } = frame else {
        panic!("expected a refusal, got {frame:?}");
    };
    let after = closed_within(WAIT, "the relay to close", r).await;
    assert!(after.is_empty(), "{} bytes after the refusal", after.len());
    Refusal { reason, message }
}

/// The error `err` (of a TLS handshake) is the relay's `alert`.
fn is_alert(err: &std::io::Error, alert: rustls::AlertDescription) -> bool {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .is_some_and(|e| *e == rustls::Error::AlertReceived(alert))
}

/// A length-prefixed frame with `body`, which need not be JSON.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut bytes = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// A good hello from a client of `lab1`, framed.
fn good_hello(tunnel: &Tunnel) -> Vec<u8> {
    Frame::Hello {
        version: VERSION,
        role: Role::Client,
        token: Jwt(tunnel.token(Role::Client, "lab1", HOUR)),
        host: None,
        keep_other: false,
        moving: false,
        direct: None,
    }
    .encode()
    .unwrap()
}

/// The first flight of a TLS client of the relay: its ClientHello, as
/// bytes to send by hand.
fn client_hello(tunnel: &Tunnel) -> Vec<u8> {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(tls_config(tunnel, &[ALPN_TCP]), name).unwrap();
    let mut bytes = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut bytes).unwrap();
    }
    bytes
}

/// Writes `bytes` one at a time, `pace` apart, until all are out or the
/// relay stops taking them; counts what went out in `sent`.
async fn drip<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    pace: Duration,
    sent: &AtomicUsize,
) {
    for b in bytes {
        if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
            return;
        }
        sent.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(pace).await;
    }
}

/// Garbage of many kinds where the ClientHello should be: each connection
/// is closed at once (not at the handshake timeout), none stays behind,
/// and sessions over TCP go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_tls_is_closed_at_once() {
    let (tunnel, _host, client) = tcp_tunnel(|_| {}).await;
    let baseline = tunnel.registry.connections();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("an ssh client".into(), b"SSH-2.0-OpenSSH_9.6\r\n".to_vec()),
        (
            "an HTTP request".into(),
            b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/2 in clear".into(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ),
        // A handshake record longer than TLS allows.
        (
            "an oversize TLS record".into(),
            b"\x16\x03\x01\xff\xff".to_vec(),
        ),
        // A TLS record that is not a handshake.
        (
            "application data first".into(),
            b"\x17\x03\x03\x00\x05hello".to_vec(),
        ),
        ("a megabyte of zeros".into(), vec![0u8; 1 << 20]),
    ];
    // A ClientHello with its body trampled (the record header kept).
    let mut trampled = client_hello(&tunnel);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    rng.fill(&mut trampled[5..]);
    cases.push(("a trampled ClientHello".into(), trampled));
    // Random bytes, more than the largest TLS record, so that any record
    // header they happen to make is followed by a whole (bad) record.
    for i in 0..20 {
        let mut bytes = vec![0u8; 20 * 1024 + i * 997];
        rng.fill(&mut bytes[..]);
        cases.push((format!("random bytes #{i}"), bytes));
    }
    for (what, bytes) in &cases {
        let mut tcp = tcp_from(&tunnel, ATTACKER).await;
        // The relay may close before it has read everything: a reset.
        let _ = tcp.write_all(bytes).await;
        closed_within(PROMPTLY, &format!("the relay to close {what}"), &mut tcp).await;
    }
    until_connections(&tunnel, baseline).await;
    still_serving(client).await;
    a_new_client_gets_in(&tunnel).await;
}

/// A TLS client that asks for another protocol (QUIC's, HTTP/2's,
/// HTTP/1.1's) is turned away in the handshake with
/// `no_application_protocol`; so is one that offers only TLS 1.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_alpn_or_tls_version_fails_the_handshake() {
    let (tunnel, _host, client) = tcp_tunnel(|_| {}).await;
    let baseline = tunnel.registry.connections();
    let wrong: [&[&[u8]]; 4] = [
        &[ALPN],
        &[b"h2"],
        &[b"http/1.1"],
        &[b"h2", b"http/1.1", b"shellrelay-tcp/2"],
    ];
    for alpn in wrong {
        let err = tls_from(&tunnel, ATTACKER, tls_config(&tunnel, alpn))
            .await
            .expect_err("a wrong ALPN must not get through TLS");
        assert!(
            is_alert(&err, rustls::AlertDescription::NoApplicationProtocol),
            "{alpn:?}: {err}"
        );
    }
    // TLS 1.2 only: the relay speaks 1.3 alone.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tunnel.cert[0].clone()).unwrap();
    let mut tls12 = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls12.alpn_protocols = vec![ALPN_TCP.to_vec()];
    let err = tls_from(&tunnel, ATTACKER, Arc::new(tls12))
        .await
        .expect_err("TLS 1.2 must not get through");
    assert!(
        is_alert(&err, rustls::AlertDescription::ProtocolVersion),
        "{err}"
    );
    // The relay's own protocol gets through.
    let tls = tls_from(&tunnel, ATTACKER, tls_config(&tunnel, &[b"h2", ALPN_TCP]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_TCP));
    drop(tls);
    until_connections(&tunnel, baseline).await;
    still_serving(client).await;
}

/// A TLS client that offers no ALPN at all has not asked for this relay's
/// protocol either (rustls lets it finish the handshake): the relay closes
/// the connection at once and never reads its hello, however good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_without_alpn_is_closed_before_its_hello_is_read() {
    let (tunnel, _host, client) = tcp_tunnel(|_| {}).await;
    let baseline = tunnel.registry.connections();
    if let Ok(mut tls) = tls_from(&tunnel, ATTACKER, tls_config(&tunnel, &[])).await {
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        let _ = tls.write_all(&good_hello(&tunnel)).await;
        let answer = closed_within(WAIT, "the relay to close", &mut tls).await;
        assert!(
            answer.is_empty(),
            "the relay answered a client without ALPN"
        );
    }
    until_connections(&tunnel, baseline).await;
    still_serving(client).await;
}

/// Peers that connect and send nothing, half a ClientHello, or a
/// ClientHello a byte at a time hold their place for the handshake
/// timeout and no longer; then the relay has no connection left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_silent_or_slow_before_tls_are_dropped_at_the_handshake_timeout() {
    let tunnel = Tunnel::start().await;
    let hello = client_hello(&tunnel);
    // Before the relay accepts any of them, so before its clocks start.
    let start = Instant::now();
    let mut silent = tcp_from(&tunnel, ATTACKER).await;
    let mut half = tcp_from(&tunnel, ATTACKER).await;
    half.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let slow = tcp_from(&tunnel, ATTACKER).await;
    until_connections(&tunnel, 3).await;
    let sent = AtomicUsize::new(0);
    let slowloris = async {
        let (mut r, mut w) = slow.into_split();
        // Far slower than the handshake timeout allows.
        let pace = HANDSHAKE_TIMEOUT * 4 / u32::try_from(hello.len()).unwrap();
        tokio::select! {
            got = closed_within(HANDSHAKE_TIMEOUT + WAIT, "slow ClientHello", &mut r) => got,
            () = drip(&mut w, &hello, pace, &sent) => panic!("the whole ClientHello went out"),
        }
    };
    let limit = HANDSHAKE_TIMEOUT + WAIT;
    let (from_silent, from_half, from_slow) = tokio::join!(
        closed_within(limit, "silent peer", &mut silent),
        closed_within(limit, "half a ClientHello", &mut half),
        slowloris,
    );
    let took = start.elapsed();
    assert!(
        from_silent.is_empty() && from_half.is_empty() && from_slow.is_empty(),
        "the relay answered a peer that never finished its ClientHello"
    );
    assert!(
        took >= HANDSHAKE_TIMEOUT,
        "dropped after {took:?}, before the handshake timeout"
    );
    assert!(sent.load(Ordering::Relaxed) < hello.len());
    until_connections(&tunnel, 0).await;
}

/// A peer that completes TLS and then says nothing is refused at the
/// hello timeout with a typed reason, and its place is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_silent_after_tls_is_refused_at_the_hello_timeout() {
    let hello_timeout = Duration::from_millis(500);
    let tunnel = Tunnel::start_with(|c| c.hello_timeout = hello_timeout).await;
    // Before TLS, so before the relay's clock starts.
    let start = Instant::now();
    let mut tls = tls(&tunnel).await;
    assert_eq!(tunnel.registry.connections(), 1);
    let refusal = refused_then_closed(&mut tls).await;
    let took = start.elapsed();
    assert_eq!(refusal.reason, Reason::Protocol, "{}", refusal.message);
    assert!(
        refusal.message.contains("no hello within 500ms"),
        "{}",
        refusal.message
    );
    assert!(took >= hello_timeout, "refused after {took:?}");
    until_connections(&tunnel, 0).await;
}

/// A good hello sent a byte at a time, slower than the hello timeout
/// allows, is cut off at the timeout: the clock does not start again with
/// each byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_dripped_a_byte_at_a_time_is_cut_at_the_hello_timeout() {
    let hello_timeout = Duration::from_secs(1);
    let (tunnel, _host, client) = tcp_tunnel(|c| c.hello_timeout = hello_timeout).await;
    let baseline = tunnel.registry.connections();
    let hello = good_hello(&tunnel);
    let start = Instant::now();
    let tls = tls_from(&tunnel, ATTACKER, tls_config(&tunnel, &[ALPN_TCP]))
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let sent = AtomicUsize::new(0);
    // Every byte well within the timeout, the whole far beyond it.
    let pace = hello_timeout / 10;
    assert!(pace * u32::try_from(hello.len()).unwrap() > hello_timeout * 10);
    let refusal = tokio::select! {
        refusal = refused_then_closed(&mut r) => refusal,
        () = drip(&mut w, &hello, pace, &sent) => panic!("the whole hello went out"),
    };
    let took = start.elapsed();
    assert_eq!(refusal.reason, Reason::Protocol, "{}", refusal.message);
    assert!(
        refusal.message.contains("no hello within 1s"),
        "{}",
        refusal.message
    );
    assert!(
        took >= hello_timeout && took < hello_timeout + PROMPTLY,
        "cut after {took:?}"
    );
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 2 && sent < hello.len(), "{sent} bytes went out");
    drop((r, w));
    until_connections(&tunnel, baseline).await;
    still_serving(client).await;
}

/// Hellos too long, malformed, of another kind or version, or cut off
/// each get a refusal frame with [`Reason::Protocol`], and then the relay
/// closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_hellos_get_a_protocol_refusal_and_are_closed() {
    let (tunnel, _host, client) = tcp_tunnel(|_| {}).await;
    let baseline = tunnel.registry.connections();
    let over = MAX_FRAME_LEN + 1;
    let mut just_over = u16::try_from(over).unwrap().to_be_bytes().to_vec();
    just_over.extend(std::iter::repeat_n(b' ', over));
    // (bytes, whether to end the stream after them, words of the refusal)
    let cases: [(Vec<u8>, bool, &str); 8] = [
        (b"\xff\xff".to_vec(), false, "exceeds the limit"),
        (just_over, false, "frame of 16385 bytes exceeds the limit"),
        (framed(b"{nope"), false, "malformed"),
        (framed(b"\xff\xfe\x00\x01junk"), false, "malformed"),
        (framed(br#"{"type":"open"}"#), false, "expected a hello"),
        (
            framed(br#"{"type":"welcome","host":"lab1","role":"host","expires_at":0}"#),
            false,
            "expected a hello",
        ),
        (
            framed(br#"{"type":"hello","version":9,"role":"host","token":"x.y.z"}"#),
            false,
            "version 9",
        ),
        (
            b"\x00\x10{\"type\"".to_vec(),
            true,
            "stream ended in the middle of a frame",
        ),
    ];
    for (bytes, end, words) in cases {
        let mut tls = tls_from(&tunnel, ATTACKER, tls_config(&tunnel, &[ALPN_TCP]))
            .await
            .unwrap();
        tls.write_all(&bytes).await.unwrap();
        if end {
            tls.shutdown().await.unwrap();
        }
        let refusal = refused_then_closed(&mut tls).await;
        assert_protocol_refusal(&refusal, words);
    }
    until_connections(&tunnel, baseline).await;
    still_serving(client).await;
}

/// Past `handshakes_per_addr` connections before their hello, an address
/// is closed before TLS; other addresses get in, and the address does
/// again once its connections are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_per_address_are_capped_before_tls() {
    let (tunnel, _host, client) = tcp_tunnel(|c| c.limits.handshakes_per_addr = 2).await;
    let baseline = tunnel.registry.connections();
    // Two silent connections: they hold the address's places for the
    // handshake timeout.
    let holders = [
        tcp_from(&tunnel, ATTACKER).await,
        tcp_from(&tunnel, ATTACKER).await,
    ];
    until_connections(&tunnel, baseline + 2).await;
    for _ in 0..5 {
        // Closed before TLS: the handshake fails at once.
        let err = within(
            PROMPTLY,
            "a connection over the cap to be closed",
            tls_from(&tunnel, ATTACKER, tls_config(&tunnel, &[ALPN_TCP])),
        )
        .await
        .expect_err("a third pending connection from one address got through TLS");
        assert!(
            err.get_ref()
                .and_then(|e| e.downcast_ref::<rustls::Error>())
                .is_none(),
            "the relay spoke TLS: {err}"
        );
        // And without a word from the relay.
        let mut tcp = tcp_from(&tunnel, ATTACKER).await;
        let got = closed_within(PROMPTLY, "a connection over the cap", &mut tcp).await;
        assert!(got.is_empty());
    }
    assert_eq!(tunnel.registry.connections(), baseline + 2);
    // Other addresses are not affected.
    let other = tls_from(&tunnel, OTHER, tls_config(&tunnel, &[ALPN_TCP])).await;
    assert!(other.is_ok(), "{other:?}");
    drop(other);
    a_new_client_gets_in(&tunnel).await;
    still_serving(client).await;
    // Once the silent ones leave, their places are free again.
    drop(holders);
    until_connections(&tunnel, baseline).await;
    let mut tls = tls_from(&tunnel, ATTACKER, tls_config(&tunnel, &[ALPN_TCP]))
        .await
        .expect("the address gets in again");
    tls.write_all(&good_hello(&tunnel)).await.unwrap();
    let answer = within(WAIT, "welcome", read_frame(&mut tls)).await.unwrap();
    assert!(matches!(answer, Frame::Welcome { .. }), "{answer:?}");
}

/// Attack C: silent TCP connections from 69 networks, 16 each (the cap
/// per network), held throughout. They once filled the one pool of
/// [`MAX_HANDSHAKES`] places before the hello that both transports shared,
/// and nobody got in over either. Now a network's part shrinks as its
/// transport's pool fills, and each transport has a pool of its own: peers
/// from a network never seen before get in over TCP, and peers get in over
/// QUIC, every time, while the attack holds its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_69_networks_lock_no_one_out() {
    let (tunnel, _host, client) = tcp_tunnel(|_| {}).await;
    let baseline = tunnel.registry.connections();
    let mut holders = Vec::with_capacity(69 * 16);
    for net in 0..69u8 {
        let from = IpAddr::V4(Ipv4Addr::new(127, 1, 0, net + 1));
        for _ in 0..16 {
            holders.push(tcp_from(&tunnel, from).await);
        }
    }
    // The attack holds most of the TCP pool (about 950 places).
    within(WAIT, "the attack's connections to be held", async {
        while tunnel.registry.connections() < baseline + MAX_HANDSHAKES * 7 / 8 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for _ in 0..6 {
        let mut tls = within(
            PROMPTLY,
            "TLS from a new network",
            tls_from(&tunnel, OTHER, tls_config(&tunnel, &[ALPN_TCP])),
        )
        .await
        .expect("a new network's peer got no place before its hello");
        tls.write_all(&good_hello(&tunnel)).await.unwrap();
        let answer = within(WAIT, "welcome", read_frame(&mut tls)).await.unwrap();
        assert!(matches!(answer, Frame::Welcome { .. }), "{answer:?}");
        let quic = tunnel.client_over("lab1", Transport::Quic).await;
        still_serving(quic).await;
    }
    still_serving(client).await;
    assert!(
        tunnel.registry.connections() >= baseline + MAX_HANDSHAKES * 7 / 8,
        "the attack's connections were let go during the test"
    );
    drop(holders);
}

/// A target that writes without end and reads nothing.
async fn flood_server() -> SocketAddr {
    serve(|mut tcp| async move {
        let chunk = vec![0x5a; 64 * 1024];
        while tcp.write_all(&chunk).await.is_ok() {}
    })
    .await
}

/// A forwarder for `lab1` over `via` with a token of its own (`user` is
/// its id).
fn forwarder(tunnel: &Tunnel, via: Transport, user: &str) -> Forwarder {
    let mut claims = shellrelay::access::token::Claims::new(
        Role::Client,
        "lab1",
        shellrelay::ops::defaults::AUDIENCE,
        HOUR,
    );
    claims.jti = Some(user.to_owned());
    Forwarder::new(ClientConfig {
        relays: vec![tunnel.relay_over(via)],
        fleet: None,
        token: TokenSource::Literal(tunnel.sign(&claims)),
        host: None,
        resume_window: shellrelay::session::resume::RESUME_WINDOW,
        direct: shellrelay::net::transport::direct::DirectMode::Off,
    })
}

/// Whether `err` is a session refused at a limit: typed, or, for a client
/// over TCP, the stream the relay refused it on reset before the client's
/// `open` went out, so that the reason never reached it (see
/// [`a_session_over_a_limit_gets_its_reason_over_tcp`]).
fn over_a_limit(err: &OpenError) -> bool {
    match err {
        OpenError::Refused(r) => r.reason == Reason::Limit,
        OpenError::Setup(SetupError::Frame(FrameError::Io(io))) => io
            .get_ref()
            .and_then(|e| e.downcast_ref::<StreamError>())
            .is_some_and(|e| matches!(e, StreamError::Aborted(ErrorCode(0)))),
        _ => false,
    }
}

/// The relay's memory budget caps sessions over TCP as over QUIC, and on
/// each mixed path: with room for three, a fourth is not opened while
/// three stall (the target writes, nobody reads), and ending one frees its
/// place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_admits_no_more_tcp_sessions_than_its_memory_budget_holds() {
    use shellrelay::relay::budget::{session_bytes, PRE_HELLO_RESERVE};
    let window = u64::from(shellrelay::net::transport::options::STREAM_WINDOW);
    let budget = PRE_HELLO_RESERVE
        + 3 * session_bytes(shellrelay::net::transport::options::STREAM_WINDOW)
        + window;
    let flood = flood_server().await;
    for (client_via, host_via) in PATHS {
        let path = format!("client over {client_via:?}, host over {host_via:?}");
        let tunnel = Tunnel::start_with(|c| {
            c.limits.failures_per_addr = u32::MAX;
            c.limits.max_buffered = budget;
        })
        .await;
        assert_eq!(tunnel.registry.sessions(), (0, 3));
        let _host = tunnel.host_over("lab1", flood, host_via).await;
        let alice = forwarder(&tunnel, client_via, "alice");
        let bob = forwarder(&tunnel, client_via, "bob");
        let mut open = Vec::new();
        for who in [&alice, &alice, &bob] {
            let opened = within(WAIT, "session", who.open()).await.unwrap();
            let transport = match client_via {
                Transport::Tcp => "tcp",
                _ => "quic",
            };
            assert_eq!(opened.conn.transport(), transport, "{path}");
            open.push(opened);
        }
        for who in [&alice, &bob] {
            match within(WAIT, "refusal", who.open()).await {
                Err(OpenError::Refused(r)) => {
                    assert_eq!(r.reason, Reason::Limit, "{path}");
                    assert!(
                        r.message.contains("relay is at its limit of 3 sessions"),
                        "{path}: {}",
                        r.message
                    );
                }
                Err(other) if client_via == Transport::Tcp && over_a_limit(&other) => {}
                Err(other) => panic!("{path}: expected a limit refusal, got {other}"),
                Ok(_) => panic!("{path}: a session over the relay's budget was opened"),
            }
        }
        assert_eq!(tunnel.registry.sessions(), (3, 3), "{path}");
        open.pop();
        until_a_place_frees_up(|| bob.open(), over_a_limit).await;
    }
}

/// A client over TCP whose session is refused at a limit learns why, as
/// one over QUIC does, however fast the relay refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_over_a_limit_gets_its_reason_over_tcp() {
    let tunnel = Tunnel::start_with(|c| c.limits.sessions_per_client = 1).await;
    let _host = tunnel
        .host_over("lab1", flood_server().await, Transport::Tcp)
        .await;
    let alice = forwarder(&tunnel, Transport::Tcp, "alice");
    let _open = within(WAIT, "session", alice.open()).await.unwrap();
    for _ in 0..20 {
        match within(WAIT, "refusal", alice.open()).await {
            Err(OpenError::Refused(r)) => {
                assert_eq!(r.reason, Reason::Limit);
                assert!(r.message.contains("limit 1"), "{}", r.message);
            }
            Err(other) => panic!("expected a limit refusal, got {other}"),
            Ok(_) => panic!("a session over the limit was opened"),
        }
    }
}

/// Every attack above at once, from two addresses, while a client over
/// TCP opens sessions and a new one connects: the good peers notice
/// nothing, and once the attacks are over the relay holds only their
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_tcp_client_is_served_while_the_attacks_run() {
    let hello_timeout = Duration::from_secs(1);
    let (tunnel, _host, client) = tcp_tunnel(|c| c.hello_timeout = hello_timeout).await;
    let baseline = tunnel.registry.connections();
    let tunnel = &tunnel;
    let attack = |from: IpAddr, seed: u64| async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Silent connections, after TLS and before it, kept until the end.
        let mut silent = (Vec::new(), Vec::new());
        for round in 0..20 {
            // Garbage instead of TLS.
            let mut garbage = vec![0u8; 20 * 1024];
            rng.fill(&mut garbage[..]);
            let mut tcp = tcp_from(tunnel, from).await;
            let _ = tcp.write_all(&garbage).await;
            drop(tcp);
            // A wrong ALPN.
            let _ = tls_from(tunnel, from, tls_config(tunnel, &[ALPN])).await;
            // TLS, then an oversize hello, or silence. Past the address's
            // cap, TLS fails.
            if let Ok(mut tls) = tls_from(tunnel, from, tls_config(tunnel, &[ALPN_TCP])).await {
                if round % 2 == 0 {
                    let _ = tls.write_all(b"\xff\xff").await;
                    let _ = closed_within(WAIT, "an oversize hello", &mut tls).await;
                } else {
                    silent.0.push(tls);
                }
            }
            // Silence before TLS.
            silent.1.push(tcp_from(tunnel, from).await);
        }
        silent
    };
    let good = async {
        for _ in 0..10 {
            still_serving(client).await;
            a_new_client_gets_in(tunnel).await;
        }
    };
    let (_, silent_a, silent_b) = tokio::join!(good, attack(ATTACKER, 1), attack(OTHER, 2));
    still_serving(client).await;
    drop((silent_a, silent_b));
    until_connections(tunnel, baseline).await;
}

/// Attack A in small: a client that grants the relay no stream credit at
/// all (an HTTP/2 initial window of 0) and opens streams past its session
/// limit, each with 16 KiB of data. The refusals cannot be written, so
/// each stream is reset at once with the reason's code: the relay keeps
/// no task, no stream and none of the client's data for them (it once
/// kept each for 10 s, waiting for credit that never came).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_grants_no_credit_pins_no_refused_stream() {
    use bytes::Bytes;
    use shellrelay::protocol::write_frame;
    let (tunnel, _host, _client) = tcp_tunnel(|c| c.limits.sessions_per_client = 1).await;
    let refused_before = tunnel.registry.refused();
    let config = tcp_client_config(&Trust::Pinned(tunnel.cert.clone())).unwrap();
    let mut tls = dial(tunnel.addr, "localhost", config).await.unwrap();
    let hello = Frame::Hello {
        version: VERSION,
        role: Role::Client,
        token: Jwt(tunnel.token(Role::Client, "lab1", HOUR)),
        host: None,
        keep_other: false,
        moving: false,
        direct: None,
    };
    write_frame(&mut tls, &hello).await.unwrap();
    let answer = within(WAIT, "welcome", read_frame(&mut tls)).await.unwrap();
    assert!(matches!(answer, Frame::Welcome { .. }), "{answer:?}");
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = || {
        ::http::Request::post("https://shellrelay/session")
            .body(())
            .unwrap()
    };
    let mut send = send.ready().await.unwrap();
    let mut streams = Vec::new();
    // The control stream, then streams over the limit, each with data.
    for _ in 0..21 {
        send = within(WAIT, "a stream", send.ready()).await.unwrap();
        let (response, mut body) = send.send_request(request(), false).unwrap();
        // The relay may have reset the stream already: it refuses at once.
        let _ = body.send_data(Bytes::from(vec![0x55u8; 16 * 1024]), false);
        streams.push((response, body));
    }
    let _control = streams.remove(0);
    // Every stream ends well within the 10 s a refusal once waited: reset
    // at a limit, or (the ones that took the one session's place, whose
    // 0x55 bytes are no `open`) as a protocol error.
    let mut limits = 0;
    for (response, _body) in streams {
        let code = within(PROMPTLY, "the stream to be reset", async {
            let mut body = match response.await {
                Ok(response) => response.into_body(),
                Err(err) => return err.reason(),
            };
            loop {
                match body.data().await {
                    Some(Ok(_)) => continue,
                    Some(Err(err)) => return err.reason(),
                    None => return None,
                }
            }
        })
        .await;
        // Our codes travel over HTTP/2 above its own, 256 on.
        let code = code.map(|c| u32::from(c).wrapping_sub(256));
        if code == Some(Reason::Limit.code()) {
            limits += 1;
        } else {
            assert_eq!(code, Some(Reason::Protocol.code()), "a stream's end");
        }
    }
    assert!(
        limits >= 10,
        "only {limits} of 20 streams were refused at the limit"
    );
    assert!(tunnel.registry.refused() >= refused_before + limits);
}
