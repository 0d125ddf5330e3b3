//! The tunnel end to end (relay, host agent, client forwarder in-process,
//! real TCP targets on loopback): integrity, ordering, auth, expiry,
//! offline hosts and stream semantics.

mod support;

use std::time::{Duration, Instant};

use shellrelay::access::keys::Secret;
use shellrelay::access::token::{self, Claims, TokenSource};
use shellrelay::net::transport::dial;
use shellrelay::ops::clock::unix_now;
use shellrelay::protocol::Reason;
use shellrelay::protocol::Role;
use support::traffic::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_concurrent_sessions_carry_8_mib_each_intact() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;
    let sessions: Vec<_> = (0..32)
        .map(|seed| tokio::spawn(echo_roundtrip(client, seed, 8 << 20)))
        .collect();
    within(Duration::from_secs(240), "32 sessions of 8 MiB", async {
        for s in sessions {
            s.await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_sessions_share_one_connection() {
    // A budget for 1,000 sessions of four stream windows each.
    let tunnel = Tunnel::start_with(|c| c.limits.max_buffered = 8 << 30).await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;
    within(Duration::from_secs(120), "1,000 open sessions", async {
        // Open all sessions first and keep them open, then use them all.
        let mut open = Vec::new();
        for i in 0..1000u32 {
            let mut tcp = TcpStream::connect(client).await.unwrap();
            tcp.write_all(&i.to_be_bytes()).await.unwrap();
            open.push(tcp);
        }
        for (i, tcp) in open.iter_mut().enumerate() {
            let mut back = [0u8; 4];
            tcp.read_exact(&mut back).await.unwrap();
            assert_eq!(u32::from_be_bytes(back), i as u32);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_written_at_once_against_a_target_that_speaks_first_arrive_in_order() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", greeting_server().await).await;
    let client = tunnel.client("lab1").await;
    let sessions: Vec<_> = (0..50u32)
        .map(|i| {
            tokio::spawn(async move {
                let mut tcp = TcpStream::connect(client).await.unwrap();
                // Written before anything is read, the instant TCP connects.
                let mut sent = Vec::new();
                for line in 0..200u32 {
                    sent.extend_from_slice(format!("session {i} line {line}\n").as_bytes());
                }
                tcp.write_all(&sent).await.unwrap();
                tcp.shutdown().await.unwrap();
                let got = read_until_closed(&mut tcp).await;
                let mut want = GREETING.to_vec();
                want.extend_from_slice(&sent);
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want)
                );
            })
        })
        .collect();
    within(WAIT, "50 ordered sessions", async {
        for s in sessions {
            s.await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_keeps_the_other_direction_open() {
    let tunnel = Tunnel::start().await;
    let target = counting_server().await;
    let _host = tunnel.host("lab1", target).await;
    let client = tunnel.client("lab1").await;
    let mut tcp = TcpStream::connect(client).await.unwrap();
    tcp.write_all(&vec![7u8; 100_000]).await.unwrap();
    tcp.shutdown().await.unwrap();
    let got = within(WAIT, "answer after half-close", read_until_closed(&mut tcp)).await;
    assert_eq!(got, b"got 100000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_session_resets_the_far_side() {
    let tunnel = Tunnel::start().await;
    let (target, mut rx) = end_watcher().await;
    let _host = tunnel.host("lab1", target).await;
    let client = tunnel.client("lab1").await;
    let tcp = TcpStream::connect(client).await.unwrap();
    let mut tcp = tcp;
    tcp.write_all(b"hello").await.unwrap();
    // Make sure the session is established end to end before aborting.
    tcp.write_all(b" again").await.unwrap();
    socket2::SockRef::from(&tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(tcp);
    let ended = within(WAIT, "target to see the abort", rx.recv()).await;
    assert_eq!(ended, Some("reset"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_their_reason_and_the_relay_serves_on() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;
    let now = unix_now();
    let claims = |role| Claims::new(role, "lab1", shellrelay::ops::defaults::AUDIENCE, HOUR);
    let other = Secret::new(b"some other secret, long enough".to_vec()).unwrap();

    let mut expired = claims(Role::Client);
    expired.exp = now - 60;
    expired.nbf = now - 120;
    let mut early = claims(Role::Client);
    early.nbf = now + 600;
    let mut elsewhere = claims(Role::Client);
    elsewhere.aud = "another-relay".into();

    // (name, role asked for, token, host asked for, reason, words in the message)
    type Case<'a> = (&'a str, Role, String, Option<&'a str>, Reason, &'a str);
    let cases: Vec<Case> = vec![
        (
            "bad signature",
            Role::Client,
            token::mint(&other, &claims(Role::Client)).unwrap(),
            None,
            Reason::BadToken,
            "token signature is invalid",
        ),
        (
            "expired",
            Role::Client,
            tunnel.sign(&expired),
            None,
            Reason::TokenExpired,
            "token expired at ",
        ),
        (
            "not yet valid",
            Role::Client,
            tunnel.sign(&early),
            None,
            Reason::BadToken,
            "token is not valid before ",
        ),
        (
            "wrong audience",
            Role::Client,
            tunnel.sign(&elsewhere),
            None,
            Reason::BadToken,
            "audience",
        ),
        (
            "host token as client",
            Role::Client,
            tunnel.sign(&claims(Role::Host)),
            None,
            Reason::BadToken,
            "host token used as a client token",
        ),
        (
            "client token as host",
            Role::Host,
            tunnel.sign(&claims(Role::Client)),
            None,
            Reason::BadToken,
            "client token used as a host token",
        ),
        (
            "client token for another host",
            Role::Client,
            tunnel.token(Role::Client, "lab2", HOUR),
            Some("lab1"),
            Reason::BadToken,
            "client token for host lab2 cannot reach host lab1",
        ),
        (
            "client token for a host that is not connected",
            Role::Client,
            tunnel.token(Role::Client, "lab2", HOUR),
            None,
            Reason::HostOffline,
            "host lab2 is not connected",
        ),
        (
            "garbage",
            Role::Client,
            "not a token at all".into(),
            None,
            Reason::BadToken,
            "token is malformed",
        ),
        (
            "garbage host",
            Role::Host,
            "x.y.z".into(),
            None,
            Reason::BadToken,
            "token is malformed",
        ),
    ];
    for (name, role, token, host, reason, words) in cases {
        let (got_reason, message) = refusal(&tunnel, role, token, host).await;
        assert_eq!(got_reason, reason, "{name}: {message}");
        assert!(
            message.contains(words),
            "{name}: {message:?} lacks {words:?}"
        );
        // The refused peer did not disturb anyone else.
        assert_eq!(tunnel.registry.hosts(), vec!["lab1".to_owned()], "{name}");
    }
    echo_roundtrip(client, 1, 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_is_closed_when_the_client_token_expires() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let token = tunnel.token(Role::Client, "lab1", Duration::from_secs(3));
    let exp = unix_now() + 3;
    let (client, _peer) = tunnel.client_with(token, None).await;
    let mut tcp = ping(client).await;
    within(
        Duration::from_secs(15),
        "session to close at expiry",
        read_until_closed(&mut tcp),
    )
    .await;
    assert!(unix_now() >= exp, "closed before the token expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_is_unregistered_when_its_token_expires() {
    let tunnel = Tunnel::start().await;
    let exp = unix_now() + 3;
    let token = tunnel.token(Role::Host, "lab1", Duration::from_secs(3));
    let _host = tunnel.spawn_host(token, echo_server().await);
    within(
        WAIT,
        "host to register",
        tunnel.registry.wait_host("lab1", true),
    )
    .await;
    within(
        Duration::from_secs(15),
        "host to be dropped at expiry",
        tunnel.registry.wait_host("lab1", false),
    )
    .await;
    assert!(unix_now() >= exp, "unregistered before the token expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_host_closes_the_session_promptly_then_works_once_it_connects() {
    let tunnel = Tunnel::start().await;
    let client = tunnel.client("lab1").await;
    let mut tcp = TcpStream::connect(client).await.unwrap();
    tcp.write_all(b"SSH-2.0-client\r\n").await.unwrap();
    let started = Instant::now();
    let got = within(
        Duration::from_secs(10),
        "offline session to close",
        read_until_closed(&mut tcp),
    )
    .await;
    assert!(got.is_empty(), "nothing should come back: {got:?}");
    eprintln!("offline session closed after {:?}", started.elapsed());

    let _host = tunnel.host("lab1", echo_server().await).await;
    echo_roundtrip(client, 2, 1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_target_closes_the_session_promptly() {
    let tunnel = Tunnel::start().await;
    // A port that was free a moment ago: nothing listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let _host = tunnel.host("lab1", dead).await;
    let client = tunnel.client("lab1").await;
    let mut tcp = TcpStream::connect(client).await.unwrap();
    let got = within(
        Duration::from_secs(10),
        "session to close",
        read_until_closed(&mut tcp),
    )
    .await;
    assert!(got.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_host_agent_keeps_trying_and_serves_again_once_the_other_leaves() {
    let tunnel = Tunnel::start().await;
    let agent = tunnel.host("lab1", echo_server().await).await;
    // Someone else says hello with the host's token (stolen, or a second
    // agent): it takes the registration over.
    let thief = within(
        WAIT,
        "the other connection's hello",
        dial::connect(
            &tunnel.relay_addr(),
            &TokenSource::Literal(tunnel.token(Role::Host, "lab1", HOUR)),
            Role::Host,
            None,
        ),
    )
    .await
    .unwrap();
    within(WAIT, "the replacement to be counted", async {
        while !tunnel.registry.metrics().lines().any(|l| {
            l.starts_with("shellrelay_host_replacements_total ")
                && l != "shellrelay_host_replacements_total 0"
        }) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The real agent keeps trying, but leaves the other connection in place
    // (two agents with one id must not evict each other in turns): the
    // relay refuses it, and the other connection stays.
    within(WAIT, "the agent's attempt to be refused", async {
        while !tunnel
            .registry
            .metrics()
            .lines()
            .any(|l| l.starts_with("shellrelay_refusals_total{reason=\"replaced\"}"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        thief.conn.close_reason().is_none(),
        "the agent evicted the other connection"
    );
    assert!(tunnel
        .registry
        .metrics()
        .lines()
        .any(|l| l == "shellrelay_host_replacements_total 1"));
    // The other connection serves no sessions; once it leaves, the real
    // agent, which never stopped trying, is registered again and sessions
    // work.
    thief.close(Reason::Done, "leaving").await;
    drop(thief);
    let (client, _client) = tunnel
        .client_with(tunnel.token(Role::Client, "lab1", HOUR), None)
        .await;
    within(WAIT, "a session through the real agent again", async {
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(2), async {
                let mut tcp = TcpStream::connect(client).await.ok()?;
                tcp.write_all(b"back?").await.ok()?;
                let mut got = [0u8; 5];
                tcp.read_exact(&mut got).await.ok()?;
                Some(got)
            })
            .await;
            if let Ok(Some(got)) = attempt {
                assert_eq!(&got, b"back?");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(!agent.task.is_finished(), "the replaced agent gave up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_shutdown_closes_peers_with_the_reason() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let session = within(
        WAIT,
        "client hello",
        dial::connect(
            &tunnel.relay_addr(),
            &TokenSource::Literal(tunnel.token(Role::Client, "lab1", HOUR)),
            Role::Client,
            None,
        ),
    )
    .await
    .unwrap();
    let conn = session.conn.clone();
    tunnel.stop().await;
    let err = within(WAIT, "client connection to close", conn.closed()).await;
    let refusal = err.refusal().expect("an application close");
    assert_eq!(refusal.reason, Reason::ShuttingDown);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_sessions_do_not_block_other_sessions_of_the_host() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let tunnel = Tunnel::start().await;
    // 'S' makes the target stream without end (counting what it wrote);
    // anything else is echoed.
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let target = serve(move |mut tcp| {
        let counter = counter.clone();
        async move {
            let mut first = [0u8; 1];
            if tcp.read_exact(&mut first).await.is_err() {
                return;
            }
            if &first == b"S" {
                let chunk = vec![7u8; 64 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            } else {
                tcp.write_all(&first).await.unwrap();
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        }
    })
    .await;
    let _host = tunnel.host("lab1", target).await;
    let stalling_client = tunnel.client("lab1").await;
    let other_client = tunnel.client("lab1").await;

    // Eight sessions whose ssh side never reads: their data piles up in
    // every buffer on the way, stream windows included.
    let stalled = 8u64;
    let mut keep = Vec::new();
    for _ in 0..stalled {
        let mut tcp = TcpStream::connect(stalling_client).await.unwrap();
        tcp.write_all(b"S").await.unwrap();
        keep.push(tcp);
    }
    let enough = stalled * 2 * u64::from(shellrelay::net::transport::options::STREAM_WINDOW);
    within(WAIT, "stalled sessions to fill their windows", async {
        while written.load(Ordering::Relaxed) < enough {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // Another session of the same host, from another client connection,
    // and one from the stalling client's own connection, still flow.
    for client in [other_client, stalling_client] {
        let mut tcp = TcpStream::connect(client).await.unwrap();
        tcp.write_all(b"Eping").await.unwrap();
        let mut got = [0u8; 5];
        within(
            Duration::from_secs(10),
            "an echo past the stalled sessions",
            tcp.read_exact(&mut got),
        )
        .await
        .unwrap();
        assert_eq!(&got, b"Eping");
    }
    drop(keep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bulk_sessions_share_a_connection_without_starving_any() {
    // A target that streams without end: every session wants all the
    // bandwidth there is, so any unfairness in the shared connection shows.
    let tunnel = Tunnel::start().await;
    let target = serve(|mut tcp| async move {
        let chunk = vec![7u8; 64 * 1024];
        while tcp.write_all(&chunk).await.is_ok() {}
    })
    .await;
    let _host = tunnel.host("lab1", target).await;
    let client = tunnel.client("lab1").await;
    let sessions = 48;
    let mut open = Vec::new();
    for _ in 0..sessions {
        open.push(TcpStream::connect(client).await.unwrap());
    }
    // Count what each session receives; when the leader has 16 MiB, a fair
    // share for everyone is far more than 1 MiB.
    let counts: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>> =
        std::sync::Arc::new((0..sessions).map(|_| Default::default()).collect());
    for (i, mut tcp) in open.into_iter().enumerate() {
        let counts = counts.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                counts[i].fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    within(WAIT, "one session to reach 16 MiB", async {
        while counts.iter().map(load).max().unwrap_or(0) < 16 << 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let snapshot: Vec<u64> = counts.iter().map(load).collect();
    let slowest = snapshot.iter().copied().min().unwrap_or(0);
    assert!(slowest >= 1 << 20, "starved sessions: {snapshot:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_whose_token_expired_for_good_stops_with_the_reason() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    // A token given on the command line cannot be renewed in place.
    let token = tunnel.token(Role::Client, "lab1", Duration::from_secs(2));
    let (client, peer) = tunnel.client_with(token, None).await;
    drop(ping(client).await);
    // After the expiry, the next ssh connection meets the refusal, and the
    // forwarder stops instead of refusing every connection for ever.
    let ended = within(Duration::from_secs(15), "the forwarder to stop", async {
        loop {
            if let Ok(mut tcp) = TcpStream::connect(client).await {
                read_until_closed(&mut tcp).await;
            }
            if peer.task.is_finished() {
                return peer.task.await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let err = ended.unwrap_err().to_string();
    assert!(
        err.contains("expired") && err.contains("not retrying"),
        "{err}"
    );
}

/// Sixteen sessions whose ssh side stops reading hold their windows at
/// every hop, and the other sessions on the same connections still move:
/// the connections' receive windows leave the live ones room to earn the
/// credit QUIC announces only an eighth of a window at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_sessions_do_not_stop_the_others_on_their_connections() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let written = Arc::new(AtomicU64::new(0));
    let count = written.clone();
    // `D`: writes without end; anything else: echoes it and the rest.
    let target = serve(move |mut tcp| {
        let written = count.clone();
        async move {
            let mut command = [0u8; 1];
            if tcp.read_exact(&mut command).await.is_err() {
                return;
            }
            if command[0] == b'D' {
                let chunk = vec![0x5a; 64 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {
                    written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            } else {
                let (mut r, mut w) = tcp.split();
                let _ = w.write_all(&command).await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        }
    })
    .await;
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", target).await;
    let client = tunnel.client("lab1").await;
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut tcp = TcpStream::connect(client).await.unwrap();
        tcp.write_all(b"D").await.unwrap();
        stalled.push(tcp);
    }
    // Every buffer on the way is full once the target stops getting rid
    // of bytes for a second.
    within(WAIT, "the stalled sessions to fill their buffers", async {
        let mut last = u64::MAX;
        loop {
            let now = written.load(Ordering::Relaxed);
            if now == last && now >= 16 * 1024 * 1024 {
                return;
            }
            last = now;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
    .await;
    let mut live = TcpStream::connect(client).await.unwrap();
    let sent = vec![0x42u8; 4 * 1024 * 1024];
    let (mut r, mut w) = live.split();
    let (_, got) = within(WAIT, "a live session's 4 MiB each way", async {
        tokio::join!(
            async {
                w.write_all(b"E").await.unwrap();
                w.write_all(&sent).await.unwrap();
            },
            async {
                let mut got = vec![0u8; sent.len() + 1];
                r.read_exact(&mut got).await.unwrap();
                got
            }
        )
    })
    .await;
    assert_eq!(&got[1..], &sent[..]);
    drop(stalled);
}
