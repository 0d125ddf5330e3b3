//! The relay's metrics endpoint: `/metrics` counts hosts, sessions, bytes,
//! refusals and latencies; `/status` lists the hosts online; other paths and
//! methods are refused; `HEAD` is answered like `GET`; `shellrelay status`
//! reads it and refuses odd answers. Its HTTP limits are in
//! `tests/metrics_http.rs`.
//!
//! Every wait is bounded by a timeout; every port is picked by the kernel.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use shellrelay::access::keys::Secret;
use shellrelay::access::token::{self, Claims, TokenSource};
use shellrelay::net::transport::dial;
use shellrelay::ops::metrics::Status;
use shellrelay::ops::status::{fetch, MAX_RESPONSE};
use shellrelay::protocol::Reason;
use shellrelay::protocol::Role;
use support::http::{exchange, get, header, metrics_addr};
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
        &Claims::new(
            Role::Client,
            "lab1",
            shellrelay::ops::defaults::AUDIENCE,
            HOUR,
        ),
    )
    .unwrap();
    let err = within(
        WAIT,
        "the relay to refuse a forged token",
        dial::connect(
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
    assert_eq!(
        status(addr).await,
        Status {
            hosts: vec![],
            clients: vec![]
        }
    );

    let before = shellrelay::ops::clock::unix_now();
    let _lab1 = tunnel.host("lab1", echo_server().await).await;
    let _lab2 = tunnel.host("lab2", echo_server().await).await;
    let after = shellrelay::ops::clock::unix_now();
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
        assert_eq!(answer.body, "not found; try /metrics or /status\n");
    }
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        for path in ["/metrics", "/status"] {
            let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
            let answer = exchange(addr, request.as_bytes()).await;
            assert_eq!(answer.code, 405, "{method} {path}: {}", answer.head);
            assert_eq!(header(&answer.head, "Allow"), Some("GET, HEAD"), "{method}");
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_like_get_without_the_body() {
    let tunnel = tunnel().await;
    let addr = metrics_addr(&tunnel);
    for path in ["/metrics", "/status"] {
        let got = get(addr, path).await;
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let head = exchange(addr, request.as_bytes()).await;
        assert_eq!(head.code, 200, "HEAD {path}: {}", head.head);
        assert_eq!(head.body, "", "HEAD {path}");
        for name in ["Content-Type", "Content-Length"] {
            assert_eq!(
                header(&head.head, name),
                header(&got.head, name),
                "{name} of HEAD {path}"
            );
        }
    }
}

/// Serves `answer` once on a free loopback port after reading a request
/// head, as a stand-in for an endpoint that answers oddly.
async fn answer_once(answer: Vec<u8>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        // The client may stop reading an answer that is too long.
        let _ = tcp.write_all(&answer).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shellrelay_status_reads_the_endpoint_and_refuses_odd_answers() {
    let tunnel = tunnel().await;
    let addr = metrics_addr(&tunnel);
    let _lab1 = tunnel.host("lab1", echo_server().await).await;
    let fetched = within(WAIT, "fetch", fetch(&addr.to_string())).await;
    assert_eq!(fetched.unwrap(), tunnel.registry.status());

    // A chunked answer is read as well.
    let json = br#"{"hosts":[]}"#;
    let mut chunked = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        json.len()
    )
    .into_bytes();
    chunked.extend_from_slice(json);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let odd = answer_once(chunked).await;
    let fetched = within(WAIT, "fetch", fetch(&odd.to_string())).await;
    assert_eq!(
        fetched.unwrap(),
        Status {
            hosts: vec![],
            clients: vec![]
        }
    );

    let too_long = MAX_RESPONSE + 1;
    let mut long = format!("HTTP/1.1 200 OK\r\nContent-Length: {too_long}\r\n\r\n").into_bytes();
    long.resize(long.len() + too_long, b' ');
    let cases: [(Vec<u8>, &str); 4] = [
        (
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            "/status answered 404 Not Found",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi".to_vec(),
            "did not answer with a relay status",
        ),
        (
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n".to_vec(),
            "could not read the answer",
        ),
        (long, &format!("longer than {MAX_RESPONSE} bytes")),
    ];
    for (answer, want) in cases {
        let odd = answer_once(answer).await;
        let err = within(WAIT, "fetch", fetch(&odd.to_string()))
            .await
            .expect_err("an odd answer was taken");
        let err = format!("{err:#}");
        assert!(err.contains(want), "{err}");
    }
}
