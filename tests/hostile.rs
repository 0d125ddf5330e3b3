//! Hostile and bad input at the relay: garbage datagrams, wrong ALPN,
//! silent or malformed hellos, limits, and rate limiting of bad tokens.
//! Throughout, the relay keeps serving everyone else.

mod support;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use shellrelay::access::token::TokenSource;
use shellrelay::client::{ClientConfig, Forwarder, OpenError};
use shellrelay::net::transport::dial::{self, ConnectError};
use shellrelay::protocol::Role;
use shellrelay::protocol::{Reason, Refusal, ALPN};
use support::traffic::*;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A raw QUIC connection to the relay offering `alpn`, for peers that
/// misbehave on purpose.
async fn raw_connect(
    tunnel: &Tunnel,
    alpn: &[u8],
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let endpoint = tunnel.raw_endpoint(alpn);
    within(
        WAIT,
        "handshake",
        endpoint.connect(tunnel.addr, "localhost").unwrap(),
    )
    .await
}

/// Checks that the relay still serves a real session through `client`.
async fn still_serving(client: std::net::SocketAddr) {
    let mut tcp = TcpStream::connect(client).await.unwrap();
    tcp.write_all(b"still there?").await.unwrap();
    tcp.shutdown().await.unwrap();
    let got = within(WAIT, "echo", read_until_closed(&mut tcp)).await;
    assert_eq!(got, b"still there?");
}

fn close_reason(err: &quinn::ConnectionError) -> Refusal {
    shellrelay::net::transport::refusal_of(err)
        .unwrap_or_else(|| panic!("not an application close: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_datagrams_are_ignored() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;
    still_serving(client).await;
    let baseline = tunnel.registry.connections();

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..20_000u32 {
        let len = rng.random_range(0..1500);
        let mut datagram = vec![0u8; len];
        rng.fill(&mut datagram[..]);
        if i % 2 == 0 && len > 0 {
            // Looks like a QUIC long-header Initial, then garbage or a cut-off.
            datagram[0] = 0xc0 | (datagram[0] & 0x0f);
            if len > 5 {
                datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
            }
        }
        let _ = socket.send_to(&datagram, tunnel.addr).await;
        if i % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    still_serving(client).await;
    assert_eq!(
        tunnel.registry.connections(),
        baseline,
        "garbage left connections behind"
    );
    assert_eq!(tunnel.registry.hosts(), vec!["lab1".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_alpn_fails_the_handshake() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;
    let err = raw_connect(&tunnel, b"h3")
        .await
        .expect_err("a wrong ALPN must not connect");
    assert!(
        err.to_string()
            .to_lowercase()
            .contains("application protocol")
            || err.to_string().contains("120"),
        "{err}"
    );
    assert!(raw_connect(&tunnel, ALPN).await.is_ok());
    still_serving(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_says_hello_is_dropped_after_the_hello_timeout() {
    let tunnel = Tunnel::start_with(|c| c.hello_timeout = Duration::from_millis(500)).await;
    let conn = raw_connect(&tunnel, ALPN).await.unwrap();
    let err = within(
        Duration::from_secs(10),
        "relay to drop a silent peer",
        conn.closed(),
    )
    .await;
    let refusal = close_reason(&err);
    assert_eq!(refusal.reason, Reason::Protocol);
    assert!(
        refusal.message.contains("no hello within"),
        "{}",
        refusal.message
    );
    within(WAIT, "connection count back to zero", async {
        while tunnel.registry.connections() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_malformed_hellos_are_refused_as_protocol_errors() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;
    let framed = |body: &str| {
        let mut bytes = (body.len() as u16).to_be_bytes().to_vec();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    };
    let cases: [(Vec<u8>, &str); 5] = [
        (b"\xff\xff".to_vec(), "exceeds the limit"),
        (framed("{nope"), "malformed"),
        (framed(r#"{"type":"open"}"#), "expected a hello"),
        (
            framed(r#"{"type":"hello","version":9,"role":"host","token":"x.y.z"}"#),
            "version 9",
        ),
        (
            b"\x00\x10{\"type\"".to_vec(),
            "stream ended in the middle of a frame",
        ),
    ];
    for (bytes, words) in cases {
        let conn = raw_connect(&tunnel, ALPN).await.unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        let _ = send.finish();
        let err = within(WAIT, "refusal", conn.closed()).await;
        assert_protocol_refusal(&close_reason(&err), words);
    }
    still_serving(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_the_per_client_limit_are_refused_with_a_reason() {
    let tunnel = Tunnel::start_with(|c| c.limits.sessions_per_client = 8).await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let forwarder = Forwarder::new(ClientConfig {
        relays: vec![tunnel.relay_addr()],
        fleet: None,
        token: TokenSource::Literal(tunnel.token(Role::Client, "lab1", HOUR)),
        host: None,
        resume_window: shellrelay::session::resume::RESUME_WINDOW,
        direct: shellrelay::net::transport::direct::DirectMode::Off,
    });
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(within(WAIT, "session", forwarder.open()).await.unwrap());
    }
    for _ in 0..20 {
        match within(WAIT, "refusal", forwarder.open()).await {
            Err(OpenError::Refused(r)) => {
                assert_eq!(r.reason, Reason::Limit);
                assert!(r.message.contains("limit 8"), "{}", r.message);
            }
            Err(other) => panic!("expected a limit refusal, got {other}"),
            Ok(_) => panic!("a session over the limit was opened"),
        }
    }
    // Ending sessions frees their places.
    open.clear();
    until_a_place_frees_up(
        || forwarder.open(),
        |e| matches!(e, OpenError::Refused(r) if r.reason == Reason::Limit),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_admits_no_more_sessions_than_its_memory_budget_holds() {
    use shellrelay::relay::budget::{session_bytes, PRE_HELLO_RESERVE};
    // Room for three sessions of four stream windows each, over every
    // client token together.
    let window = u64::from(shellrelay::net::transport::options::STREAM_WINDOW);
    let budget = PRE_HELLO_RESERVE
        + 3 * session_bytes(shellrelay::net::transport::options::STREAM_WINDOW)
        + window;
    let tunnel = Tunnel::start_with(|c| c.limits.max_buffered = budget).await;
    assert_eq!(tunnel.registry.sessions(), (0, 3));
    let _host = tunnel.host("lab1", echo_server().await).await;
    let forwarder = |user: &str| {
        let mut claims = shellrelay::access::token::Claims::new(
            Role::Client,
            "lab1",
            shellrelay::ops::defaults::AUDIENCE,
            HOUR,
        );
        claims.jti = Some(user.to_owned());
        Forwarder::new(ClientConfig {
            relays: vec![tunnel.relay_addr()],
            fleet: None,
            token: TokenSource::Literal(
                shellrelay::access::token::mint(&tunnel.secret, &claims).unwrap(),
            ),
            host: None,
            resume_window: shellrelay::session::resume::RESUME_WINDOW,
            direct: shellrelay::net::transport::direct::DirectMode::Off,
        })
    };
    let (alice, bob) = (forwarder("alice"), forwarder("bob"));
    let mut open = vec![
        within(WAIT, "session", alice.open()).await.unwrap(),
        within(WAIT, "session", alice.open()).await.unwrap(),
        within(WAIT, "session", bob.open()).await.unwrap(),
    ];
    for who in [&alice, &bob] {
        match within(WAIT, "refusal", who.open()).await {
            Err(OpenError::Refused(r)) => {
                assert_eq!(r.reason, Reason::Limit);
                assert!(
                    r.message.contains("relay is at its limit of 3 sessions"),
                    "{}",
                    r.message
                );
            }
            Err(other) => panic!("expected a limit refusal, got {other}"),
            Ok(_) => panic!("a session over the relay's budget was opened"),
        }
    }
    assert_eq!(tunnel.registry.sessions(), (3, 3));
    open.pop();
    until_a_place_frees_up(
        || bob.open(),
        |e| matches!(e, OpenError::Refused(r) if r.reason == Reason::Limit),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_token_are_capped() {
    let tunnel = Tunnel::start_with(|c| c.limits.connections_per_client = 2).await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let token = TokenSource::Literal(tunnel.token(Role::Client, "lab1", HOUR));
    let relay = tunnel.relay_addr();
    let first = dial::connect(&relay, &token, Role::Client, None)
        .await
        .unwrap();
    let second = dial::connect(&relay, &token, Role::Client, None)
        .await
        .unwrap();
    match dial::connect(&relay, &token, Role::Client, None).await {
        Err(ConnectError::Refused(r)) => {
            assert_eq!(r.reason, Reason::Limit);
            assert!(r.message.contains("too many connections"), "{}", r.message);
        }
        Err(other) => panic!("expected a limit refusal, got {other}"),
        Ok(_) => panic!("a third connection of the token was admitted"),
    }
    // A connection that closes gives its place back.
    first.conn.close(Reason::Done, "done");
    drop(first);
    until_a_place_frees_up(
        || dial::connect(&relay, &token, Role::Client, None),
        |e| matches!(e, ConnectError::Refused(r) if r.reason == Reason::Limit),
    )
    .await;
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_holds_per_token_across_connections() {
    let tunnel = Tunnel::start_with(|c| c.limits.sessions_per_client = 4).await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let token = tunnel.token(Role::Client, "lab1", HOUR);
    // Four connections with one token: more connections buy no more
    // sessions.
    let forwarders: Vec<Forwarder> = (0..4)
        .map(|_| {
            Forwarder::new(ClientConfig {
                relays: vec![tunnel.relay_addr()],
                fleet: None,
                token: TokenSource::Literal(token.clone()),
                host: None,
                resume_window: shellrelay::session::resume::RESUME_WINDOW,
                direct: shellrelay::net::transport::direct::DirectMode::Off,
            })
        })
        .collect();
    let mut open = Vec::new();
    for f in &forwarders {
        open.push(within(WAIT, "session", f.open()).await.unwrap());
    }
    for f in &forwarders {
        match within(WAIT, "refusal", f.open()).await {
            Err(OpenError::Refused(r)) => {
                assert_eq!(r.reason, Reason::Limit);
                assert!(r.message.contains("limit 4"), "{}", r.message);
            }
            Err(other) => panic!("expected a limit refusal, got {other}"),
            Ok(_) => panic!("a fifth session of one token was opened"),
        }
    }
    // Another token (counted by its jti; tokens without one by their
    // subject) has places of its own.
    let mut claims = shellrelay::access::token::Claims::new(
        Role::Client,
        "lab1",
        shellrelay::ops::defaults::AUDIENCE,
        HOUR,
    );
    claims.jti = Some("another-token".into());
    let other = Forwarder::new(ClientConfig {
        relays: vec![tunnel.relay_addr()],
        fleet: None,
        token: TokenSource::Literal(tunnel.sign(&claims)),
        host: None,
        resume_window: shellrelay::session::resume::RESUME_WINDOW,
        direct: shellrelay::net::transport::direct::DirectMode::Off,
    });
    within(WAIT, "a session of another token", other.open())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_per_address_are_capped() {
    let tunnel = Tunnel::start_with(|c| {
        c.limits.handshakes_per_addr = 2;
        c.hello_timeout = Duration::from_secs(2);
    })
    .await;
    // Two unproven addresses' slots; past them a peer must prove its
    // address (a stateless retry, which a real client passes) and takes one
    // of two slots for proven addresses, so forged Initials cannot fill
    // them. Past those too, it is refused.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(raw_connect(&tunnel, ALPN).await.unwrap());
    }
    let err = raw_connect(&tunnel, ALPN)
        .await
        .expect_err("a fifth pending connection must be refused");
    assert!(
        matches!(err, quinn::ConnectionError::ConnectionClosed(_)),
        "{err}"
    );
    // Once the silent ones are dropped at the hello timeout, new peers get in.
    for conn in &silent {
        within(WAIT, "silent peers to be dropped", conn.closed()).await;
    }
    let _host = tunnel.host("lab1", echo_server().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_over_the_limit_are_refused() {
    let tunnel = Tunnel::start_with(|c| c.limits.max_hosts = 1).await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let err = dial::connect(
        &tunnel.relay_addr(),
        &TokenSource::Literal(tunnel.token(Role::Host, "lab2", HOUR)),
        Role::Host,
        None,
    )
    .await
    .expect_err("a second host must be refused");
    let refusal = err.refusal().expect("a refusal").clone();
    assert_eq!(refusal.reason, Reason::Limit);
    assert!(
        refusal.message.contains("limit of 1 hosts"),
        "{}",
        refusal.message
    );
    // The same host id may still reconnect (it replaces itself).
    let _again = tunnel.host("lab1", echo_server().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_from_an_address_are_penalised_but_good_ones_from_it_get_in() {
    let tunnel = Tunnel::start_with(|c| c.limits.failures_per_addr = 3).await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let connect = |token: String, role: Role| {
        let relay = tunnel.relay_addr();
        async move { dial::connect(&relay, &TokenSource::Literal(token), role, None).await }
    };
    for _ in 0..3 {
        let err = connect("garbage".into(), Role::Client)
            .await
            .expect_err("refused");
        assert_eq!(
            err.refusal().map(|r| r.reason),
            Some(Reason::BadToken),
            "{err}"
        );
    }
    // More junk from this address is refused as over the limit, saying why.
    for _ in 0..8 {
        let err = connect("garbage".into(), Role::Client)
            .await
            .expect_err("rate limited");
        let refusal = err.refusal().expect("a refusal");
        assert_eq!(refusal.reason, Reason::Limit, "{err}");
        assert!(
            refusal.message.contains("too many refused tokens"),
            "{}",
            refusal.message
        );
    }
    // But a good client and a good host agent behind the same address (an
    // office, a carrier-grade NAT) get in at once.
    let client = connect(tunnel.token(Role::Client, "lab1", HOUR), Role::Client)
        .await
        .expect("a good client token is let in");
    assert_eq!(client.host, "lab1");
    let host = connect(tunnel.token(Role::Host, "lab2", HOUR), Role::Host)
        .await
        .expect("a good host token is let in");
    assert_eq!(host.host, "lab2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_does_not_reveal_whether_a_host_exists() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let other =
        shellrelay::access::keys::Secret::new(b"not the relay's secret at all".to_vec()).unwrap();
    let mut answers = Vec::new();
    for host in ["lab1", "no-such-host"] {
        let claims = shellrelay::access::token::Claims::new(
            Role::Client,
            host,
            shellrelay::ops::defaults::AUDIENCE,
            HOUR,
        );
        let forged = shellrelay::access::token::mint(&other, &claims).unwrap();
        let err = dial::connect(
            &tunnel.relay_addr(),
            &TokenSource::Literal(forged),
            Role::Client,
            Some(host),
        )
        .await
        .expect_err("forged token refused");
        match err {
            ConnectError::Refused(r) => answers.push((r.reason, r.message)),
            other => panic!("{other}"),
        }
    }
    assert_eq!(
        answers[0], answers[1],
        "refusals differ between an existing and a missing host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_takes_no_datagrams_from_anyone() {
    let tunnel = Tunnel::start().await;
    let conn = raw_connect(&tunnel, ALPN).await.unwrap();
    // The relay advertises no DATAGRAM support, so there is no buffer at
    // the relay for a peer to fill, before its hello or after.
    assert_eq!(conn.max_datagram_size(), None);
    let sent = conn.send_datagram(bytes::Bytes::from_static(b"unread"));
    assert!(
        matches!(sent, Err(quinn::SendDatagramError::UnsupportedByPeer)),
        "{sent:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_its_hello_a_peer_gets_one_stream_and_a_small_window() {
    let tunnel = Tunnel::start().await;
    let conn = raw_connect(&tunnel, ALPN).await.unwrap();
    let (mut control, _recv) = conn.open_bi().await.unwrap();
    // The control stream is all the credit there is: a second stream cannot
    // even be opened until the relay grants more, which it does only to an
    // authenticated client.
    control.write_all(b"\x00").await.unwrap();
    let second = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
    assert!(
        second.is_err(),
        "a second stream was opened before the hello"
    );
    // And it cannot push more than the pre-auth window: a write far larger
    // stalls instead of being buffered at the relay.
    let big = vec![0u8; 4 << 20];
    let pushed = tokio::time::timeout(Duration::from_millis(500), control.write_all(&big)).await;
    assert!(
        pushed.is_err(),
        "the relay accepted 4 MiB from an unauthenticated peer"
    );
}
