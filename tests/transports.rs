//! The TLS-over-TCP transport end to end (relay, host agent and client
//! forwarder in-process, real TCP targets on loopback): the same integrity,
//! half-close, abort, banner order and close reasons as over QUIC, on TCP
//! alone and on each mixed path (client and host on different transports).

mod support;

use std::time::Duration;

use shellrelay::access::token::TokenSource;
use shellrelay::net::transport::dial;
use shellrelay::protocol::{Reason, Role};
use support::traffic::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The paths tested: (client's transport, host's transport).
const PATHS: [(Transport, Transport); 3] = [
    (Transport::Tcp, Transport::Tcp),
    (Transport::Tcp, Transport::Quic),
    (Transport::Quic, Transport::Tcp),
];

/// A relay with host `lab1` on `target`, reached over `host_via`, and a
/// client forwarder over `client_via`.
async fn path(
    target: std::net::SocketAddr,
    (client_via, host_via): (Transport, Transport),
) -> (Tunnel, Peer, std::net::SocketAddr) {
    let tunnel = Tunnel::start().await;
    let host = tunnel.host_over("lab1", target, host_via).await;
    let client = tunnel.client_over("lab1", client_via).await;
    (tunnel, host, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_sessions_carry_8_mib_each_way_intact_over_tcp_and_mixed_paths() {
    for via in PATHS {
        let (_tunnel, _host, client) = path(echo_server().await, via).await;
        let sessions: Vec<_> = (0..32)
            .map(|seed| tokio::spawn(echo_roundtrip(client, seed, 8 << 20)))
            .collect();
        within(
            Duration::from_secs(240),
            &format!("32 sessions of 8 MiB, {via:?}"),
            async {
                for s in sessions {
                    s.await.unwrap();
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_speaks_first_and_its_banner_arrives_first() {
    for via in PATHS {
        let (_tunnel, _host, client) = path(greeting_server().await, via).await;
        let mut tcp = TcpStream::connect(client).await.unwrap();
        let mut banner = [0u8; 8];
        within(WAIT, "banner", tcp.read_exact(&mut banner))
            .await
            .unwrap();
        assert_eq!(&banner, b"SSH-2.0-", "{via:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    for via in PATHS {
        let target = counting_server().await;
        let (_tunnel, _host, client) = path(target, via).await;
        let mut tcp = TcpStream::connect(client).await.unwrap();
        tcp.write_all(&vec![7u8; 100_000]).await.unwrap();
        tcp.shutdown().await.unwrap();
        let got = within(WAIT, "answer after half-close", read_until_closed(&mut tcp)).await;
        assert_eq!(got, b"got 100000 bytes", "{via:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_session_resets_the_far_side() {
    for via in PATHS {
        let (target, mut rx) = end_watcher().await;
        let (_tunnel, _host, client) = path(target, via).await;
        let mut tcp = TcpStream::connect(client).await.unwrap();
        tcp.write_all(b"hello").await.unwrap();
        tcp.write_all(b" again").await.unwrap();
        socket2::SockRef::from(&tcp)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(tcp);
        let ended = within(WAIT, "target to see the abort", rx.recv()).await;
        assert_eq!(ended, Some("reset"), "{via:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_close_reasons_reach_a_tcp_peer() {
    let tunnel = Tunnel::start().await;
    let relay = tunnel.relay_over(Transport::Tcp);
    // A bad token: refused in the hello, with the reason.
    let bad = TokenSource::Literal("not.a.token".into());
    let err = within(
        WAIT,
        "refusal",
        dial::connect(&relay, &bad, Role::Client, None),
    )
    .await
    .unwrap_err();
    let refusal = err.refusal().expect("a refusal");
    assert_eq!(refusal.reason, Reason::BadToken, "{err}");
    // An offline host.
    let token = TokenSource::Literal(tunnel.token(Role::Client, "lab1", HOUR));
    let err = within(
        WAIT,
        "refusal",
        dial::connect(&relay, &token, Role::Client, None),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.refusal().map(|r| r.reason),
        Some(Reason::HostOffline),
        "{err}"
    );
    // Admitted, then the relay shuts down: the reason arrives.
    let _host = tunnel
        .host_over("lab1", echo_server().await, Transport::Tcp)
        .await;
    let link = within(
        WAIT,
        "client hello",
        dial::connect(&relay, &token, Role::Client, None),
    )
    .await
    .unwrap();
    assert_eq!(link.conn.transport(), "tcp");
    let conn = link.conn.clone();
    tunnel.stop().await;
    let closed = within(WAIT, "client connection to close", conn.closed()).await;
    let refusal = closed.refusal().expect("an application close");
    assert_eq!(refusal.reason, Reason::ShuttingDown);
}

/// Forwards TCP connections from `listen`'s port (the UDP proxy's) to
/// the relay's TCP listener, so that one `HOST:PORT` reaches the relay
/// over both transports with UDP going through the proxy.
async fn tcp_forwarder(
    listen: std::net::SocketAddr,
    relay: std::net::SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(relay).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// The transports the relay sees: its hosts' and its clients'.
fn transports(tunnel: &Tunnel) -> (Vec<String>, Vec<String>) {
    let status = tunnel.registry.status();
    let mut hosts: Vec<String> = status.hosts.into_iter().map(|h| h.transport).collect();
    let mut clients: Vec<String> = status.clients.into_iter().map(|c| c.transport).collect();
    hosts.sort();
    clients.sort();
    (hosts, clients)
}

/// Waits until the relay sees exactly these transports.
async fn until_transports(tunnel: &Tunnel, hosts: &[&str], clients: &[&str]) {
    let want = (
        hosts.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        clients.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    within(WAIT, &format!("transports {want:?}"), async {
        while transports(tunnel) != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_tcp_where_udp_is_lost_and_moves_back_to_quic_once_it_answers() {
    use support::netem::Proxy;
    let tunnel = Tunnel::start().await;
    let proxy = Proxy::start(tunnel.addr).await;
    proxy.set_blackhole(true);
    let _forwarder = tcp_forwarder(proxy.addr(), tunnel.addr).await;
    let transport = shellrelay::net::transport::options::TransportOptions {
        quic_retry: Duration::from_millis(300),
        ..Default::default()
    };
    let relay = tunnel.relay_via(proxy.addr(), transport);
    let token = TokenSource::Literal(tunnel.token(Role::Host, "lab1", HOUR));
    let _host = tunnel.spawn_host_via(relay.clone(), token, echo_server().await);
    let client_token = tunnel.token(Role::Client, "lab1", HOUR);
    let (client, _peer) = tunnel.client_via(relay, client_token, None).await;
    let mut tcp = within(WAIT, "a session over TCP", ping(client)).await;
    until_transports(&tunnel, &["tcp"], &["tcp"]).await;
    echo(&mut tcp, b"over tcp").await;
    // UDP comes back: the client moves new sessions to QUIC while the one
    // on TCP goes on; the host moves too, its session going on over its
    // old TCP connection, which the relay lets drain.
    proxy.set_blackhole(false);
    until_transports(&tunnel, &["quic"], &["quic", "tcp"]).await;
    echo(&mut tcp, b"still over tcp").await;
    let mut second = within(WAIT, "a session over QUIC", ping(client)).await;
    echo(&mut second, b"new session").await;
    drop((tcp, second));
    until_transports(&tunnel, &["quic"], &["quic"]).await;
    let mut third = within(WAIT, "a session after the move", ping(client)).await;
    echo(&mut third, b"all quic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_session_on_a_tcp_connection_left_behind_keeps_its_last_bytes() {
    use support::netem::Proxy;
    const LEN: usize = 4 << 20;
    for _ in 0..3 {
        let tunnel = Tunnel::start().await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let target = serve(move |mut tcp| {
            let tx = tx.clone();
            async move {
                tcp.write_all(b"bye").await.unwrap();
                tcp.shutdown().await.unwrap();
                let mut all = Vec::new();
                let end = tcp.read_to_end(&mut all).await.map(|_| ());
                let _ = tx.send((all.len(), end.is_ok()));
            }
        })
        .await;
        let _host = tunnel.host("lab1", target).await;
        let proxy = Proxy::start(tunnel.addr).await;
        proxy.set_blackhole(true);
        let _forwarder = tcp_forwarder(proxy.addr(), tunnel.addr).await;
        let transport = shellrelay::net::transport::options::TransportOptions {
            quic_retry: Duration::from_millis(200),
            ..Default::default()
        };
        let relay = tunnel.relay_via(proxy.addr(), transport);
        let token = tunnel.token(Role::Client, "lab1", HOUR);
        let (client, _peer) = tunnel.client_via(relay, token, None).await;
        let mut tcp = TcpStream::connect(client).await.unwrap();
        let got = within(WAIT, "bye", read_until_closed(&mut tcp)).await;
        assert_eq!(got, b"bye");
        // The forwarder moves to QUIC; this session, the last on its TCP
        // connection, then sends its last bytes and ends, which lets the
        // connection go.
        proxy.set_blackhole(false);
        until_transports(&tunnel, &["quic"], &["quic", "tcp"]).await;
        tcp.write_all(&vec![7u8; LEN]).await.unwrap();
        tcp.shutdown().await.unwrap();
        let (len, clean) = within(WAIT, "the target's count", rx.recv()).await.unwrap();
        assert_eq!((len, clean), (LEN, true), "every byte, then the end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_tcp_peers_with_the_reason_and_ends_their_sessions() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel
        .host_over("lab1", echo_server().await, Transport::Tcp)
        .await;
    let relay = tunnel.relay_over(Transport::Tcp);
    let short = Duration::from_secs(2);
    let exp = shellrelay::ops::clock::unix_now() + 2;
    let client_token = tunnel.token(Role::Client, "lab1", short);
    let (client, _peer) = tunnel
        .client_via(relay.clone(), client_token.clone(), None)
        .await;
    let mut session = ping(client).await;
    let link = within(
        WAIT,
        "a client link",
        dial::connect(
            &relay,
            &TokenSource::Literal(client_token),
            Role::Client,
            None,
        ),
    )
    .await
    .unwrap();
    let host_token = TokenSource::Literal(tunnel.token(Role::Host, "lab2", short));
    let host = within(
        WAIT,
        "a host link",
        dial::connect(&relay, &host_token, Role::Host, None),
    )
    .await
    .unwrap();
    within(
        Duration::from_secs(15),
        "the session to close at expiry",
        read_until_closed(&mut session),
    )
    .await;
    for conn in [&link.conn, &host.conn] {
        let closed = within(WAIT, "the link to close", conn.closed()).await;
        let refusal = closed.refusal().expect("a close with a reason");
        assert_eq!(refusal.reason, Reason::TokenExpired, "{refusal:?}");
    }
    assert!(
        shellrelay::ops::clock::unix_now() >= exp,
        "closed before the token expired"
    );
}
