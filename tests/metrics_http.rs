//! The metrics endpoint's HTTP, served by hyper: odd and hostile requests
//! are answered or dropped and leave the relay serving; the request head
//! is limited to the byte; a head must arrive within its timeout; and the
//! connection caps, applied at accept, keep slow clients from starving
//! scrapes.
//!
//! Every wait is bounded by a timeout; every port is picked by the kernel.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use shellrelay::ops::defaults::{HEAD_TIMEOUT, REQUEST_TIMEOUT};
use shellrelay::ops::status::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_ADDR, MAX_REQUEST};
use support::http::{connect_from, exchange, get, metrics_addr, read_answer, try_exchange};
use support::traffic::{echo_roundtrip, echo_server, Noise};
use support::{within, Tunnel, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Loopback address number `n` (127.0.0.n), standing for another client.
fn loopback(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A GET of `/metrics` whose head is `len` bytes, its blank line included.
fn head_of(len: usize) -> Vec<u8> {
    let mut head = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    head.resize(len - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_leave_the_relay_serving() {
    let tunnel = Tunnel::start().await;
    let addr = metrics_addr(&tunnel);
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;

    // A connection that says nothing is held while others are served.
    let silent = TcpStream::connect(addr).await.unwrap();
    // One that closes at once.
    drop(TcpStream::connect(addr).await.unwrap());

    // A head longer than the limit: refused, and the answer arrives whole.
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    long.resize(16 * 1024, b'a');
    let answer = exchange(addr, &long).await;
    assert_eq!(answer.code, 431, "{}", answer.head);

    // Binary garbage.
    let mut garbage = vec![0u8; 4096];
    Noise::new(1).fill(&mut garbage);
    garbage.extend_from_slice(b"\r\n\r\n");
    assert_eq!(exchange(addr, &garbage).await.code, 400);

    // Malformed request lines.
    for line in [
        "GET\r\n\r\n",
        "GET /metrics\r\n\r\n",
        "GET /metrics HTTP/1.1 extra\r\n\r\n",
        "GET /metrics SSH-2.0-OpenSSH_9.6\r\n\r\n",
        "GET /metrics HTTP/2.0\r\n\r\n",
        "G\u{e9}T /metrics HTTP/1.1\r\n\r\n",
        "GET /metrics HTTP/1.1\r\nNo colon\r\n\r\n",
    ] {
        let answer = exchange(addr, line.as_bytes()).await;
        assert_eq!(answer.code, 400, "{line:?}: {}", answer.head);
    }

    // The relay, its endpoint and its sessions carry on.
    drop(silent);
    assert_eq!(get(addr, "/metrics").await.code, 200);
    echo_roundtrip(client, 9, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_limit_is_exactly_8_kib() {
    let tunnel = Tunnel::start().await;
    let addr = metrics_addr(&tunnel);
    assert_eq!(MAX_REQUEST, 8 * 1024);
    // A head of exactly MAX_REQUEST bytes, its blank line included, is
    // served; one byte more is refused.
    assert_eq!(exchange(addr, &head_of(MAX_REQUEST)).await.code, 200);
    assert_eq!(exchange(addr, &head_of(MAX_REQUEST + 1)).await.code, 431);
    // Empty lines before the request line are ignored, as HTTP/1.1 asks,
    // but they count towards the limit.
    let mut led = b"\r\n".to_vec();
    led.extend_from_slice(&head_of(MAX_REQUEST - 2));
    assert_eq!(exchange(addr, &led).await.code, 200);
    led.insert(0, b'\n');
    assert_eq!(exchange(addr, &led).await.code, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_and_half_closed_clients_are_answered() {
    let tunnel = Tunnel::start().await;
    let addr = metrics_addr(&tunnel);
    // HTTP/1.0 is answered in HTTP/1.0; bare newlines end a head too.
    let answer = exchange(addr, b"GET /status HTTP/1.0\n\n").await;
    assert_eq!(answer.code, 200, "{}", answer.head);
    assert!(
        answer.status_line.starts_with("HTTP/1.0 "),
        "{}",
        answer.head
    );
    let answer = get(addr, "/status").await;
    assert!(
        answer.status_line.starts_with("HTTP/1.1 "),
        "{}",
        answer.head
    );

    // A client that shuts its side after the request still reads the
    // answer, as `nc -N` does.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    let answer = read_answer(&mut tcp).await.expect("an answer");
    assert_eq!(answer.code, 200, "{}", answer.head);

    // Nothing but empty lines and then the end: no request, no answer.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"\r\n\r\n").await.unwrap();
    tcp.shutdown().await.unwrap();
    assert!(read_answer(&mut tcp).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_must_arrive_within_the_head_timeout() {
    let tunnel = Tunnel::start().await;
    let addr = metrics_addr(&tunnel);
    let start = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let trickle = TcpStream::connect(addr).await.unwrap();
    // The trickler sends a valid head a byte every 100 ms: whole, it would
    // take far longer than the head timeout.
    let head = head_of(200);
    let (mut from, mut to) = trickle.into_split();
    let send = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        for byte in &head {
            ticks.tick().await;
            if to.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
    };
    let hear = async {
        let mut raw = Vec::new();
        let _ = from.read_to_end(&mut raw).await;
        (raw, start.elapsed())
    };
    let ((raw, trickle_cut), ()) = within(WAIT, "the trickler to be cut off", async {
        tokio::join!(hear, send)
    })
    .await;
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    assert!(trickle_cut >= HEAD_TIMEOUT, "cut off after {trickle_cut:?}");
    assert!(
        trickle_cut < REQUEST_TIMEOUT,
        "cut off after {trickle_cut:?}"
    );

    // The silent one went at the same deadline.
    let mut raw = Vec::new();
    let read = within(
        WAIT,
        "the silent one to be closed",
        silent.read_to_end(&mut raw),
    )
    .await;
    assert!(read.is_err() || raw.is_empty(), "{raw:?}");
    assert!(start.elapsed() < REQUEST_TIMEOUT);
    assert_eq!(get(addr, "/metrics").await.code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_hold_its_connection_after_the_answer() {
    let tunnel = Tunnel::start().await;
    let addr = metrics_addr(&tunnel);
    let start = Instant::now();

    // One that reads its answer and then neither sends nor closes.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /status HTTP/1.1\r\n\r\n")
        .await
        .unwrap();

    // One that sends a body without end: it is answered, then cut off.
    let (mut from, mut to) = TcpStream::connect(addr).await.unwrap().into_split();
    let send = async {
        let head = b"POST /metrics HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n";
        let chunk = [b'x'; 16 * 1024];
        if to.write_all(head).await.is_ok() {
            while to.write_all(&chunk).await.is_ok() {}
        }
    };
    let hear = async {
        let mut raw = Vec::new();
        let _ = from.read_to_end(&mut raw).await;
        raw
    };
    let (raw, ()) = within(WAIT, "the sender to be cut off", async {
        tokio::join!(hear, send)
    })
    .await;
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 405 "), "{text:?}");

    let answer = read_answer(&mut idle).await.expect("an answer");
    assert_eq!(answer.code, 200, "{}", answer.head);
    assert!(start.elapsed() < REQUEST_TIMEOUT, "{:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_from_one_address_cannot_starve_scrapes() {
    let tunnel = Tunnel::start().await;
    let addr = metrics_addr(&tunnel);
    // More silent connections than the endpoint serves at once, all from
    // one address (127.0.0.2, on loopback as well).
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(connect_from(loopback(2), addr).await);
    }
    // A scrape from elsewhere is still answered while they hold.
    assert_eq!(get(addr, "/metrics").await.code, 200);
    // Past the first few, they were closed as they were accepted, before
    // any parsing: a valid request on one is not answered.
    let mut refused = silent.split_off(MAX_CONNECTIONS_PER_ADDR);
    for tcp in &mut refused {
        let _ = tcp.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(read_answer(tcp).await.is_none());
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_32_connections_are_served_at_once() {
    let tunnel = Tunnel::start().await;
    let addr = metrics_addr(&tunnel);
    assert_eq!(MAX_CONNECTIONS, 32);
    // Every slot taken by silent connections, a few from each of several
    // addresses...
    let start = Instant::now();
    let mut held = Vec::new();
    for n in 2.. {
        for _ in 0..MAX_CONNECTIONS_PER_ADDR {
            held.push(connect_from(loopback(n), addr).await);
        }
        if held.len() >= MAX_CONNECTIONS {
            break;
        }
    }
    // ...so one more, from yet another address, is closed unanswered as
    // it is accepted.
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut late = connect_from(loopback(100), addr).await;
    let _ = late.write_all(request.as_bytes()).await;
    let answer = read_answer(&mut late).await;
    assert!(
        start.elapsed() < HEAD_TIMEOUT,
        "the held connections may have timed out: {:?}",
        start.elapsed()
    );
    assert!(answer.is_none(), "{answer:?}");

    // Once they go, the endpoint serves again (each slot comes back when
    // the endpoint has seen its connection close).
    drop(held);
    let answer = within(WAIT, "a slot to come free", async {
        loop {
            match try_exchange(addr, request.as_bytes()).await {
                Some(answer) => return answer,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(answer.code, 200, "{}", answer.head);
}
