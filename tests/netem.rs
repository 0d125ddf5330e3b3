//! Self-tests of the UDP impairment proxy in tests/support/netem.rs.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::netem::{Impairment, Proxy};
use support::{within, WAIT};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A UDP echo server on 127.0.0.1:0 that answers each datagram with `tag`
/// followed by the datagram, and records the sequence number (first 8 bytes)
/// and source address of everything it receives.
struct Echo {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<(u64, SocketAddr)>>>,
    task: JoinHandle<()>,
}

impl Echo {
    async fn start(tag: u8) -> Echo {
        Echo::start_at("127.0.0.1:0".parse().unwrap(), tag).await
    }

    async fn start_at(addr: SocketAddr, tag: u8) -> Echo {
        let sock = UdpSocket::bind(addr).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                if n >= 8 {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                    log2.lock().unwrap().push((seq, from));
                }
                let mut reply = Vec::with_capacity(n + 1);
                reply.push(tag);
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from).await;
            }
        });
        Echo { addr, log, task }
    }

    fn log(&self) -> Vec<(u64, SocketAddr)> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Sends sequence number `seq` to `to`.
async fn send_seq(sock: &UdpSocket, to: SocketAddr, seq: u64) {
    sock.send_to(&seq.to_be_bytes(), to).await.unwrap();
}

/// Receives one echo reply: (tag, seq).
async fn recv_reply(sock: &UdpSocket) -> (u8, u64) {
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).await.unwrap();
    assert_eq!(n, 9, "reply is tag + 8-byte sequence number");
    (buf[0], u64::from_be_bytes(buf[1..9].try_into().unwrap()))
}

/// Sends `seq` and waits for its reply, returning the reply's tag.
async fn round_trip(sock: &UdpSocket, to: SocketAddr, seq: u64) -> u8 {
    send_seq(sock, to, seq).await;
    let (tag, got) = recv_reply(sock).await;
    assert_eq!(got, seq);
    tag
}

/// Collects replies until `quiet` passes with nothing new.
async fn collect_until_quiet(sock: &UdpSocket, quiet: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    while let Ok((_, seq)) = tokio::time::timeout(quiet, recv_reply(sock)).await {
        got.push(seq);
    }
    got
}

#[tokio::test]
async fn clean_proxy_delivers_everything() {
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    let sock = client().await;
    within(WAIT, "1000 round trips", async {
        for seq in 0..1000 {
            assert_eq!(round_trip(&sock, proxy.addr(), seq).await, b'A');
        }
    })
    .await;
    let stats = proxy.stats();
    assert_eq!(stats.to_upstream.forwarded, 1000);
    assert_eq!(stats.from_upstream.forwarded, 1000);
    assert_eq!(stats.to_upstream.dropped, 0);
    assert_eq!(stats.flows, 1);
    let seqs: Vec<u64> = echo.log().into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, (0..1000).collect::<Vec<_>>());
}

#[tokio::test]
async fn loss_drops_about_half() {
    const N: u64 = 2000;
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    proxy.set_impairment(Impairment::loss(0.5), Impairment::NONE);
    let sock = Arc::new(client().await);
    let to = proxy.addr();
    let got = within(WAIT, "lossy burst", async {
        let reader = tokio::spawn({
            let sock = Arc::clone(&sock);
            async move { collect_until_quiet(&sock, Duration::from_secs(1)).await }
        });
        for seq in 0..N {
            send_seq(&sock, to, seq).await;
            if seq % 64 == 63 {
                // Let the proxy and echo drain their sockets now and then so
                // small default socket buffers do not add loss of their own.
                tokio::task::yield_now().await;
            }
        }
        reader.await.unwrap()
    })
    .await;
    let stats = proxy.stats();
    let up = stats.to_upstream;
    let ratio = got.len() as f64 / N as f64;
    assert!(
        (0.35..=0.65).contains(&ratio),
        "{} of {N} arrived; {stats:?}",
        got.len()
    );
    assert_eq!(up.received, N, "{stats:?}");
    assert_eq!(up.dropped + up.forwarded, up.received, "{stats:?}");
    assert_eq!(echo.log().len() as u64, up.forwarded, "{stats:?}");
    assert_eq!(stats.from_upstream.forwarded, got.len() as u64, "{stats:?}");
    assert_eq!(stats.from_upstream.dropped, 0);
}

#[tokio::test]
async fn duplicate_sends_everything_twice() {
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    proxy.set_impairment(
        Impairment {
            duplicate: 1.0,
            ..Impairment::NONE
        },
        Impairment::NONE,
    );
    let sock = client().await;
    within(WAIT, "duplicated round trips", async {
        for seq in 0..100 {
            send_seq(&sock, proxy.addr(), seq).await;
            assert_eq!(recv_reply(&sock).await, (b'A', seq));
            assert_eq!(recv_reply(&sock).await, (b'A', seq));
        }
    })
    .await;
    let stats = proxy.stats();
    assert_eq!(stats.to_upstream.duplicated, 100);
    assert_eq!(stats.to_upstream.forwarded, 200);
    assert_eq!(stats.from_upstream.forwarded, 200);
}

#[tokio::test]
async fn reorder_changes_order_but_loses_nothing() {
    const N: u64 = 100;
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    proxy.set_impairment(
        Impairment {
            reorder: 1.0,
            ..Impairment::NONE
        },
        Impairment::NONE,
    );
    let sock = client().await;
    let mut got = within(WAIT, "reordered burst", async {
        for seq in 0..N {
            send_seq(&sock, proxy.addr(), seq).await;
        }
        let mut got = Vec::new();
        while got.len() < N as usize {
            got.push(recv_reply(&sock).await.1);
        }
        got
    })
    .await;
    let arrived: Vec<u64> = echo.log().into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(arrived.len(), N as usize);
    assert_ne!(arrived, (0..N).collect::<Vec<_>>(), "order unchanged");
    let mut sorted = arrived.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..N).collect::<Vec<_>>());
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert!(proxy.stats().to_upstream.reordered > 0);
}

#[tokio::test]
async fn reorder_releases_a_lone_datagram() {
    // With nothing following, a held datagram must still go out.
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    let always = Impairment {
        reorder: 1.0,
        ..Impairment::NONE
    };
    proxy.set_impairment(always, always);
    let sock = client().await;
    within(WAIT, "held datagrams released", async {
        for seq in 0..20 {
            assert_eq!(round_trip(&sock, proxy.addr(), seq).await, b'A');
        }
    })
    .await;
}

#[tokio::test]
async fn jitter_delays_but_delivers() {
    const N: u64 = 200;
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    let jitter = Impairment {
        jitter: Duration::from_millis(20),
        ..Impairment::NONE
    };
    proxy.set_impairment(jitter, jitter);
    let sock = client().await;
    let mut got = within(WAIT, "jittered burst", async {
        for seq in 0..N {
            send_seq(&sock, proxy.addr(), seq).await;
        }
        let mut got = Vec::new();
        while got.len() < N as usize {
            got.push(recv_reply(&sock).await.1);
        }
        got
    })
    .await;
    got.sort_unstable();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
}

#[tokio::test]
async fn blackhole_drops_both_ways_until_lifted() {
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    let sock = client().await;
    within(WAIT, "before", round_trip(&sock, proxy.addr(), 0)).await;

    proxy.set_blackhole(true);
    for seq in 1..=10 {
        send_seq(&sock, proxy.addr(), seq).await;
    }
    let during = collect_until_quiet(&sock, Duration::from_millis(300)).await;
    assert!(during.is_empty(), "got {during:?} through the black hole");
    assert_eq!(proxy.stats().to_upstream.dropped, 10);

    proxy.set_blackhole(false);
    within(WAIT, "after", async {
        for seq in 100..110 {
            assert_eq!(round_trip(&sock, proxy.addr(), seq).await, b'A');
        }
    })
    .await;
    let seqs: Vec<u64> = echo.log().into_iter().map(|(seq, _)| seq).collect();
    assert_eq!(seqs, [0].into_iter().chain(100..110).collect::<Vec<_>>());
}

#[tokio::test]
async fn blackhole_drops_replies_too() {
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    // Replies are lost even though requests get through.
    proxy.set_impairment(Impairment::NONE, Impairment::loss(1.0));
    let sock = client().await;
    send_seq(&sock, proxy.addr(), 1).await;
    let got = collect_until_quiet(&sock, Duration::from_millis(300)).await;
    assert!(got.is_empty());
    assert_eq!(echo.log().len(), 1);
    let stats = proxy.stats();
    assert_eq!(stats.from_upstream.dropped, 1);

    proxy.clear_impairment();
    proxy.set_blackhole(true);
    send_seq(&sock, proxy.addr(), 2).await;
    let got = collect_until_quiet(&sock, Duration::from_millis(300)).await;
    assert!(got.is_empty());
    assert_eq!(echo.log().len(), 1, "request crossed the black hole");
}

#[tokio::test]
async fn rebind_changes_source_port() {
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    let sock = client().await;
    within(WAIT, "before rebind", round_trip(&sock, proxy.addr(), 0)).await;
    within(WAIT, "rebind", proxy.rebind()).await;
    within(WAIT, "after rebind", round_trip(&sock, proxy.addr(), 1)).await;
    within(WAIT, "rebind again", proxy.rebind()).await;
    within(
        WAIT,
        "after second rebind",
        round_trip(&sock, proxy.addr(), 2),
    )
    .await;

    let log = echo.log();
    let sources: Vec<SocketAddr> = log.iter().map(|(_, from)| *from).collect();
    assert_eq!(
        log.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_ne!(sources[0].port(), sources[1].port());
    assert_ne!(sources[1].port(), sources[2].port());
    assert_ne!(sources[0].port(), sources[2].port());
    let stats = proxy.stats();
    assert_eq!(stats.rebinds, 2);
    assert_eq!(stats.flows, 1);
}

#[tokio::test]
async fn flows_are_separate() {
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    let a = client().await;
    let b = client().await;
    within(WAIT, "two flows", async {
        round_trip(&a, proxy.addr(), 1).await;
        round_trip(&b, proxy.addr(), 2).await;
        round_trip(&a, proxy.addr(), 3).await;
    })
    .await;
    let by_seq: HashMap<u64, SocketAddr> = echo.log().into_iter().collect();
    assert_ne!(by_seq[&1], by_seq[&2]);
    assert_eq!(by_seq[&1], by_seq[&3]);
    assert_eq!(proxy.stats().flows, 2);
}

#[tokio::test]
async fn set_upstream_switches_server() {
    let a = Echo::start(b'A').await;
    let b = Echo::start(b'B').await;
    let proxy = Proxy::start(a.addr).await;
    let sock = client().await;
    within(WAIT, "to A", async {
        assert_eq!(round_trip(&sock, proxy.addr(), 0).await, b'A');
    })
    .await;
    proxy.set_upstream(b.addr);
    assert_eq!(proxy.upstream(), b.addr);
    within(WAIT, "to B", async {
        for seq in 1..10 {
            assert_eq!(round_trip(&sock, proxy.addr(), seq).await, b'B');
        }
    })
    .await;
    assert_eq!(a.log().len(), 1);
    assert_eq!(b.log().len(), 9);
}

#[tokio::test]
async fn survives_upstream_restart_at_same_address() {
    let echo = Echo::start(b'A').await;
    let addr = echo.addr;
    let proxy = Proxy::start(addr).await;
    let sock = client().await;
    within(WAIT, "before restart", round_trip(&sock, proxy.addr(), 0)).await;

    // Server gone: datagrams go nowhere, and the proxy keeps running.
    drop(echo);
    tokio::task::yield_now().await;
    for seq in 1..=5 {
        send_seq(&sock, proxy.addr(), seq).await;
    }
    let got = collect_until_quiet(&sock, Duration::from_millis(200)).await;
    assert!(got.is_empty(), "{got:?}");

    // Back at the same address (the aborted task may take a moment to
    // release the port).
    let echo = within(WAIT, "rebind the server's port", async {
        loop {
            match UdpSocket::bind(addr).await {
                Ok(probe) => {
                    drop(probe);
                    break Echo::start_at(addr, b'C').await;
                }
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    within(WAIT, "after restart", async {
        assert_eq!(round_trip(&sock, proxy.addr(), 100).await, b'C');
    })
    .await;
    assert_eq!(echo.log().len(), 1);
}

#[tokio::test]
async fn drop_stops_the_proxy() {
    let echo = Echo::start(b'A').await;
    let proxy = Proxy::start(echo.addr).await;
    let addr = proxy.addr();
    let sock = client().await;
    within(WAIT, "round trip", round_trip(&sock, addr, 0)).await;
    drop(proxy);
    // The listening socket closes once the cancelled tasks let go of it.
    within(WAIT, "listening port released", async {
        while UdpSocket::bind(addr).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
