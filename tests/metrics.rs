//! The relay's metrics endpoint: `/metrics` counts hosts, sessions, bytes,
//! refusals and latencies; `/status` lists the hosts online; other paths and
//! methods are refused; bad requests never take the relay down.
//!
//! Every wait is bounded by a timeout; every port is picked by the kernel.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use shellrelay::keys::Secret;
use shellrelay::metrics::Status;
use shellrelay::peer;
use shellrelay::protocol::Reason;
use shellrelay::protocol::Role;
use shellrelay::token::{self, Claims, TokenSource};
use support::traffic::{echo, echo_roundtrip, echo_server, Noise};
use support::{within, Tunnel, HOUR, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A relay that never blocks an address for refused tokens.
async fn tunnel() -> Tunnel {
    Tunnel::start_with(|c| {
        c.limits.failures_per_addr = u32::MAX;
    })
    .await
}

/// Starts the relay's metrics endpoint on a free loopback port, as
/// `relay --metrics` does, until the tunnel stops.
fn metrics_addr(tunnel: &Tunnel) -> SocketAddr {
    let (listener, addr) =
        shellrelay::status::bind("127.0.0.1:0".parse().unwrap()).expect("bind metrics");
    tokio::spawn(shellrelay::status::serve(
        listener,
        tunnel.registry.clone(),
        tunnel.cancel.child_token(),
    ));
    addr
}

/// An HTTP answer: status code, head and body.
struct Answer {
    code: u16,
    head: String,
    body: String,
}

/// Sends `request` as is on a fresh connection and reads the answer to the
/// end of the stream.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    within(WAIT, "an HTTP answer", async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect to metrics");
        tcp.write_all(request).await.expect("send request");
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await.expect("read answer");
        let text = String::from_utf8(raw).expect("answer is UTF-8");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {head:?}"));
        assert!(head.starts_with("HTTP/1.1 "), "{head:?}");
        assert!(head.contains("\r\nConnection: close"), "{head:?}");
        let length: usize = header(head, "Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
        assert_eq!(length, body.len(), "Content-Length of {head:?}");
        Answer {
            code,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    })
    .await
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

async fn get(addr: SocketAddr, path: &str) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    exchange(addr, request.as_bytes()).await
}

/// `/metrics` as a map from sample name (with labels) to value.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let answer = get(addr, "/metrics").await;
    assert_eq!(answer.code, 200, "{}\n{}", answer.head, answer.body);
    assert!(
        header(&answer.head, "Content-Type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{}",
        answer.head
    );
    assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
    answer
        .body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l:?}"));
            let value = value.parse().unwrap_or_else(|e| panic!("{l:?}: {e}"));
            (name.to_owned(), value)
        })
        .collect()
}

fn sample(samples: &HashMap<String, f64>, name: &str) -> f64 {
    *samples
        .get(name)
        .unwrap_or_else(|| panic!("no sample {name} in {samples:#?}"))
}

async fn status(addr: SocketAddr) -> Status {
    let answer = get(addr, "/status").await;
    assert_eq!(answer.code, 200, "{}\n{}", answer.head, answer.body);
    assert_eq!(
        header(&answer.head, "Content-Type"),
        Some("application/json")
    );
    serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("/status is not a status ({e}): {}", answer.body))
}

/// Opens a session at `client` and sends and reads back `len` bytes
/// through the echo target, leaving the session open.
async fn open_session(client: SocketAddr, len: usize) -> TcpStream {
    let mut tcp = within(WAIT, "connect to the client", TcpStream::connect(client))
        .await
        .unwrap();
    let mut data = vec![0u8; len];
    Noise::new(7).fill(&mut data);
    echo(&mut tcp, &data).await;
    tcp
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_hosts_sessions_bytes_refusals_and_latencies() {
    let tunnel = tunnel().await;
    let addr = metrics_addr(&tunnel);
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;

    let before = scrape(addr).await;
    assert_eq!(sample(&before, "shellrelay_hosts_connected"), 1.0);
    assert_eq!(sample(&before, "shellrelay_sessions_total"), 0.0);

    // Bytes are counted as they move, not only when a session ends.
    let open = open_session(client, 64 * 1024).await;
    let during = scrape(addr).await;
    for direction in ["to_host", "to_client"] {
        let name = format!("shellrelay_relayed_bytes_total{{direction=\"{direction}\"}}");
        assert!(
            sample(&during, &name) >= 65536.0,
            "{name} while the session is open: {during:#?}"
        );
    }
    assert_eq!(sample(&during, "shellrelay_sessions_active"), 1.0);
    drop(open);

    let lens = [100_000u64, 250_001, 3];
    for (seed, len) in lens.iter().enumerate() {
        echo_roundtrip(client, seed as u64, *len).await;
    }
    let sent = 64 * 1024 + lens.iter().sum::<u64>();

    let other = Secret::new(b"some other secret, long enough".to_vec()).unwrap();
    let forged = token::mint(
        &other,
        &Claims::new(Role::Client, "lab1", shellrelay::defaults::AUDIENCE, HOUR),
    )
    .unwrap();
    let err = within(
        WAIT,
        "the relay to refuse a forged token",
        peer::connect(
            &tunnel.relay_addr(),
            &TokenSource::Literal(forged),
            Role::Client,
            None,
        ),
    )
    .await
    .expect_err("the relay accepted a forged token");
    assert_eq!(err.refusal().map(|r| r.reason), Some(Reason::BadToken));

    let after = scrape(addr).await;
    assert_eq!(sample(&after, "shellrelay_hosts_connected"), 1.0);
    assert_eq!(
        sample(&after, "shellrelay_sessions_total"),
        (1 + lens.len()) as f64
    );
    for direction in ["to_host", "to_client"] {
        let name = format!("shellrelay_relayed_bytes_total{{direction=\"{direction}\"}}");
        assert!(
            sample(&after, &name) >= sent as f64,
            "{name} < {sent}: {after:#?}"
        );
    }
    assert_eq!(
        sample(&after, "shellrelay_refusals_total{reason=\"bad_token\"}"),
        1.0
    );
    // The host, the client and nothing else had their hellos accepted.
    assert_eq!(
        sample(&after, "shellrelay_handshake_duration_seconds_count"),
        2.0
    );
    assert!(sample(&after, "shellrelay_handshake_duration_seconds_sum") > 0.0);
    assert_eq!(
        sample(&after, "shellrelay_session_setup_duration_seconds_count"),
        (1 + lens.len()) as f64
    );
    assert_eq!(
        sample(
            &after,
            "shellrelay_session_setup_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        (1 + lens.len()) as f64
    );

    // The per-host counters agree.
    let status = status(addr).await;
    let host = &status.hosts[0];
    assert!(host.bytes_to_host >= sent, "{host:?}");
    assert!(host.bytes_to_client >= sent, "{host:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_each_host_with_its_counters() {
    let tunnel = tunnel().await;
    let addr = metrics_addr(&tunnel);
    assert_eq!(status(addr).await, Status { hosts: vec![] });

    let before = shellrelay::clock::unix_now();
    let _lab1 = tunnel.host("lab1", echo_server().await).await;
    let _lab2 = tunnel.host("lab2", echo_server().await).await;
    let after = shellrelay::clock::unix_now();
    let client = tunnel.client("lab1").await;
    let _open = open_session(client, 10_000).await;

    let status = status(addr).await;
    let ids: Vec<&str> = status.hosts.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["lab1", "lab2"], "{status:#?}");
    let (lab1, lab2) = (&status.hosts[0], &status.hosts[1]);
    assert!(
        (before..=after).contains(&lab1.since),
        "since {} not within {before}..={after}",
        lab1.since
    );
    assert_eq!(lab1.remote.ip().to_string(), "127.0.0.1", "{lab1:?}");
    assert_ne!(lab1.remote.port(), 0, "{lab1:?}");
    assert_eq!(lab1.sessions, 1, "{lab1:?}");
    assert!(lab1.bytes_to_host >= 10_000, "{lab1:?}");
    assert!(lab1.bytes_to_client >= 10_000, "{lab1:?}");
    assert_eq!(
        (lab2.sessions, lab2.bytes_to_host, lab2.bytes_to_client),
        (0, 0, 0),
        "{lab2:?}"
    );
    // The endpoint serves what the handle shows.
    assert_eq!(status, tunnel.registry.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_are_not_found_and_other_methods_not_allowed() {
    let tunnel = tunnel().await;
    let addr = metrics_addr(&tunnel);
    for path in ["/", "/metricsx", "/metrics/", "/status/x", "/favicon.ico"] {
        let answer = get(addr, path).await;
        assert_eq!(answer.code, 404, "GET {path}: {}", answer.head);
    }
    for method in ["POST", "PUT", "DELETE", "HEAD"] {
        for path in ["/metrics", "/status"] {
            let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            let answer = exchange(addr, request.as_bytes()).await;
            assert_eq!(answer.code, 405, "{method} {path}: {}", answer.head);
            assert_eq!(header(&answer.head, "Allow"), Some("GET"), "{method}");
        }
    }
    // A body after the head is left unread and does not spoil the answer.
    let answer = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(answer.code, 405);
    assert_eq!(get(addr, "/metrics?name=x").await.code, 200);
    assert_eq!(
        exchange(addr, b"GET /status HTTP/1.0\n\n").await.code,
        200,
        "bare newlines end a head too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_requests_leave_the_relay_serving() {
    let tunnel = tunnel().await;
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
        "\r\n\r\n",
    ] {
        let answer = exchange(addr, line.as_bytes()).await;
        assert_eq!(answer.code, 400, "{line:?}: {}", answer.head);
    }

    // The relay, its endpoint and its sessions carry on.
    drop(silent);
    assert_eq!(get(addr, "/metrics").await.code, 200);
    let status = status(addr).await;
    assert_eq!(status.hosts.len(), 1, "{status:?}");
    echo_roundtrip(client, 9, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_limit_is_exactly_8_kib() {
    let tunnel = tunnel().await;
    let addr = metrics_addr(&tunnel);
    // A head of exactly MAX_REQUEST bytes, its blank line included, is
    // served; one byte more is refused.
    let head_of = |len: usize| {
        let mut head = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
        head.resize(len - 4, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        head
    };
    let limit = shellrelay::status::MAX_REQUEST;
    assert_eq!(exchange(addr, &head_of(limit)).await.code, 200);
    assert_eq!(exchange(addr, &head_of(limit + 1)).await.code, 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_from_one_address_cannot_starve_scrapes() {
    let tunnel = tunnel().await;
    let addr = metrics_addr(&tunnel);
    // More silent connections than the endpoint serves at once, all from
    // one address (127.0.0.2, on loopback as well).
    let mut silent = Vec::new();
    for _ in 0..40 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        silent.push(socket.connect(addr).await.unwrap());
    }
    // A scrape from elsewhere is still answered while they hold.
    assert_eq!(get(addr, "/metrics").await.code, 200);
    drop(silent);
}
