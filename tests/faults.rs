//! Faults the tunnel must survive without losing a byte: loss, reordering,
//! duplication and jitter; NAT rebinding; relay and host restarts; a host
//! whose network vanishes; token rotation.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use shellrelay::access::token::{Claims, TokenSource};
use shellrelay::net::transport::options::TransportOptions;
use shellrelay::protocol::Role;
use support::netem::{Impairment, Proxy};
use support::traffic::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most later than the relay made it that [`Tunnel::next_refusals`]
/// may see a refusal: its poll and a loaded scheduler.
const SEEN_LATE: Duration = Duration::from_millis(50);

/// A relay with a proxy in front of it on the host's side and one on the
/// client's side, an echo target, and a client forwarder.
struct Rig {
    tunnel: Tunnel,
    host_proxy: Proxy,
    client_proxy: Proxy,
    client: SocketAddr,
    _host: Peer,
    _client: Peer,
}

async fn rig(transport: TransportOptions) -> Rig {
    let tunnel = Tunnel::start().await;
    let host_proxy = Proxy::start(tunnel.addr).await;
    let client_proxy = Proxy::start(tunnel.addr).await;
    let token = TokenSource::Literal(tunnel.token(Role::Host, "lab1", HOUR));
    let host = tunnel.spawn_host_via(
        tunnel.relay_via(host_proxy.addr(), transport),
        token,
        echo_server().await,
    );
    within(
        WAIT,
        "host to register",
        tunnel.registry.wait_host("lab1", true),
    )
    .await;
    let token = tunnel.token(Role::Client, "lab1", HOUR);
    let (client, client_peer) = tunnel
        .client_via(
            tunnel.relay_via(client_proxy.addr(), transport),
            token,
            None,
        )
        .await;
    Rig {
        tunnel,
        host_proxy,
        client_proxy,
        client,
        _host: host,
        _client: client_peer,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_reordering_and_duplication_lose_no_byte() {
    let rig = rig(TransportOptions::default()).await;
    let bad = Impairment {
        loss: 0.03,
        duplicate: 0.03,
        reorder: 0.03,
        jitter: Duration::ZERO,
    };
    rig.host_proxy.set_impairment(bad, bad);
    rig.client_proxy.set_impairment(bad, bad);
    let t0 = std::time::Instant::now();
    // 64 MiB each way in all, over 8 concurrent sessions.
    let sessions: Vec<_> = (0..8)
        .map(|seed| tokio::spawn(echo_roundtrip(rig.client, seed, 8 << 20)))
        .collect();
    within(
        Duration::from_secs(400),
        "8 sessions through a lossy path",
        async {
            for s in sessions {
                s.await.unwrap();
            }
        },
    )
    .await;
    eprintln!(
        "64 MiB each way through the lossy path in {:?}",
        t0.elapsed()
    );
    for (side, proxy) in [("host", &rig.host_proxy), ("client", &rig.client_proxy)] {
        let stats = proxy.stats();
        eprintln!("{side} side: {stats:?}");
        for dir in [stats.to_upstream, stats.from_upstream] {
            assert!(
                dir.dropped > 0 && dir.duplicated > 0 && dir.reordered > 0,
                "{side}: impairment not applied: {dir:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_on_top_of_loss_loses_no_byte() {
    let rig = rig(TransportOptions::default()).await;
    // Up to 1 ms of delay per datagram reorders most of them on loopback,
    // where the round trip is far shorter: a hard case for loss detection.
    let bad = Impairment {
        loss: 0.01,
        duplicate: 0.01,
        reorder: 0.0,
        jitter: Duration::from_millis(1),
    };
    rig.host_proxy.set_impairment(bad, bad);
    rig.client_proxy.set_impairment(bad, bad);
    let t0 = std::time::Instant::now();
    let sessions: Vec<_> = (0..2)
        .map(|seed| tokio::spawn(echo_roundtrip(rig.client, seed, 2 << 20)))
        .collect();
    within(
        Duration::from_secs(300),
        "2 sessions through a jittery path",
        async {
            for s in sessions {
                s.await.unwrap();
            }
        },
    )
    .await;
    eprintln!(
        "4 MiB each way through the jittery path in {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_nat_rebinding_on_either_side_without_reconnecting() {
    let rig = rig(TransportOptions::default()).await;
    let tcp = TcpStream::connect(rig.client).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    // A session that is mid-transfer while both sides rebind.
    let writer = tokio::spawn(async move {
        let mut sent = Vec::new();
        for i in 0..3u64 {
            sent.push(write_noise(&mut w, 100 + i, 4 << 20).await);
            if i < 2 {
                // Let the other side know to rebind now, then continue.
                w.flush().await.unwrap();
            }
        }
        w.shutdown().await.unwrap();
        sent
    });
    let mut got = vec![0u8; 12 << 20];
    let mut filled = 0;
    let mut rebound = 0;
    let mut accepted = None;
    while filled < got.len() {
        let n = within(WAIT, "session bytes", r.read(&mut got[filled..]))
            .await
            .unwrap();
        assert!(n > 0, "session ended early at {filled} bytes");
        filled += n;
        // Both peers are connected once bytes flow: count from here.
        accepted.get_or_insert_with(|| rig.tunnel.registry.accepted());
        if rebound == 0 && filled > 2 << 20 {
            rig.host_proxy.rebind().await;
            rebound = 1;
        } else if rebound == 1 && filled > 6 << 20 {
            rig.client_proxy.rebind().await;
            rebound = 2;
        }
    }
    let sent = writer.await.unwrap();
    for (i, chunk) in got.chunks(4 << 20).enumerate() {
        use sha2::Digest;
        let h: [u8; 32] = sha2::Sha256::digest(chunk).into();
        assert_eq!(hex(&h), hex(&sent[i]), "part {i} differs");
    }
    assert_eq!(rebound, 2);
    assert_eq!(rig.host_proxy.stats().rebinds, 1);
    assert_eq!(rig.client_proxy.stats().rebinds, 1);
    assert_eq!(
        Some(rig.tunnel.registry.accepted()),
        accepted,
        "a peer reconnected instead of migrating"
    );
    // And new sessions work on the migrated connections.
    echo_roundtrip(rig.client, 9, 1 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_relay_restart_hosts_reregister_and_clients_serve_on() {
    let mut tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;
    echo_roundtrip(client, 1, 1 << 20).await;

    tunnel.stop_relay().await;
    tunnel.start_relay().await;
    let restarted = std::time::Instant::now();
    within(
        Duration::from_secs(5),
        "host to register again within 5 s",
        tunnel.registry.wait_host("lab1", true),
    )
    .await;
    eprintln!(
        "host registered again {:?} after the relay came back",
        restarted.elapsed()
    );
    for seed in 2..6 {
        echo_roundtrip(client, seed, 1 << 20).await;
    }
    // Nothing leaks: once the sessions are over, the relay holds the two
    // connections (host, client) and their two tasks, nothing more.
    within(WAIT, "sessions to wind down", async {
        while tunnel.registry.tasks() > 2 || tunnel.registry.connections() > 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(tunnel.registry.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_network_vanishes_is_unregistered_within_the_idle_timeout() {
    let transport = TransportOptions {
        keep_alive: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(2),
        ..TransportOptions::default()
    };
    let rig = rig(transport).await;
    echo_roundtrip(rig.client, 1, 64 << 10).await;
    rig.host_proxy.set_blackhole(true);
    let vanished = std::time::Instant::now();
    within(
        Duration::from_secs(10),
        "host to be unregistered",
        rig.tunnel.registry.wait_host("lab1", false),
    )
    .await;
    eprintln!(
        "unregistered {:?} after the network vanished",
        vanished.elapsed()
    );
    // The network comes back: the agent reconnects by itself.
    rig.host_proxy.set_blackhole(false);
    within(
        WAIT,
        "host to register again",
        rig.tunnel.registry.wait_host("lab1", true),
    )
    .await;
    echo_roundtrip(rig.client, 2, 64 << 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_replaces_its_stale_registration_at_once() {
    let tunnel = Tunnel::start().await;
    let tagged = |tag: &'static [u8]| {
        serve(move |mut tcp| async move {
            let _ = tcp.write_all(tag).await;
        })
    };
    // The old agent sits behind a proxy that then goes silent: it can say
    // no goodbye, and the relay's idle timeout (30 s) is far away.
    let proxy = Proxy::start(tunnel.addr).await;
    let old = tunnel.spawn_host_via(
        tunnel.relay_via(proxy.addr(), TransportOptions::default()),
        TokenSource::Literal(tunnel.token(Role::Host, "lab1", HOUR)),
        tagged(b"old").await,
    );
    within(
        WAIT,
        "old host to register",
        tunnel.registry.wait_host("lab1", true),
    )
    .await;
    proxy.set_blackhole(true);
    old.cancel.cancel();

    let _new = tunnel.spawn_host(tunnel.token(Role::Host, "lab1", HOUR), tagged(b"new").await);
    let client = tunnel.client("lab1").await;
    within(
        Duration::from_secs(5),
        "sessions to reach the new host",
        async {
            loop {
                let mut tcp = TcpStream::connect(client).await.unwrap();
                if read_until_closed(&mut tcp).await == b"new" {
                    return;
                }
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_rereads_its_token_file_and_waits_out_an_expired_token() {
    let tunnel = Tunnel::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.token");
    let mut expired = Claims::new(
        Role::Host,
        "lab1",
        shellrelay::ops::defaults::AUDIENCE,
        HOUR,
    );
    expired.exp = shellrelay::ops::clock::unix_now() - 10;
    std::fs::write(&file, tunnel.sign(&expired)).unwrap();

    let cancel = tunnel.cancel.child_token();
    let cap = Duration::from_millis(400);
    let config = shellrelay::host::HostConfig {
        relays: vec![tunnel.relay_addr()],
        fleet: None,
        token: TokenSource::File(file.clone()),
        target: echo_server().await.to_string(),
        max_backoff: cap,
        resume_window: shellrelay::session::resume::RESUME_WINDOW,
        max_waiting: Default::default(),
        metrics: None,
        direct: shellrelay::net::transport::direct::DirectMode::Off,
    };
    let agent = tokio::spawn(shellrelay::host::run(config, cancel.clone()));
    // It keeps trying at the backoff cap: neither exits nor spins. From its
    // second refusal on, each delay is the cap less up to half of it
    // (jitter), so refusals come at least half the cap apart (less what
    // seeing them late takes off), and at most the cap and a refused
    // handshake apart; a backoff that went on doubling past the cap would
    // leave more than 1.9 s between the fifth and the sixth.
    let (least, most) = (cap / 2 - SEEN_LATE, cap + Duration::from_millis(1500));
    tunnel.refused_at_least(2).await;
    let times = tunnel.next_refusals(6).await;
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("refused attempts {gaps:?} apart at a {cap:?} cap");
    assert!(
        gaps.iter().all(|gap| (least..=most).contains(gap)),
        "refused attempts {gaps:?} apart at a {cap:?} cap, not between {least:?} and {most:?}"
    );
    assert!(!agent.is_finished(), "the agent gave up");

    // A new token in the file takes effect on the next attempt.
    std::fs::write(&file, tunnel.token(Role::Host, "lab1", HOUR)).unwrap();
    within(
        WAIT,
        "host to register with the new token",
        tunnel.registry.wait_host("lab1", true),
    )
    .await;
    cancel.cancel();
    within(WAIT, "agent to stop", agent).await.unwrap().unwrap();
}
