//! The relay's audit log (`--audit-log`): one JSON line for every
//! admission, refusal, session start and session end, naming the token's
//! subject and id, the peer's address, and for a session its bytes each
//! way and how long it lasted. A peer cannot flood it: what it chose is
//! cut and made printable, and its refusals are written at a bounded rate.
//! SIGHUP opens it again by its path, for rotation by rename.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shellrelay::access::token::{Claims, TokenSource};
use shellrelay::net::transport::dial;
use shellrelay::protocol::{read_frame, Frame, Refusal, Role, ALPN};
use support::traffic::*;
use support::*;
use tokio::io::AsyncWriteExt;

/// The audit log's lines so far, parsed; every line must be JSON.
fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Waits until a line has `event` and satisfies `pred`; returns it.
async fn line_with(path: &std::path::Path, event: &str, pred: impl Fn(&Value) -> bool) -> Value {
    within(WAIT, &format!("an audit line {event}"), async {
        loop {
            if let Some(line) = lines(path)
                .into_iter()
                .find(|l| l["event"] == event && pred(l))
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_refusals_and_sessions_each_get_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = path.clone();
    let tunnel = Tunnel::start_with(move |c| {
        c.limits.failures_per_addr = u32::MAX;
        c.audit_log = Some(audit);
    })
    .await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let host = line_with(&path, "admitted", |l| l["role"] == "host").await;
    assert_eq!(host["host"], "lab1");
    assert_eq!(host["subject"], "lab1");
    assert!(
        host["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{host}"
    );
    // A client with a token id, one session of known size.
    let mut claims = Claims::new(
        Role::Client,
        "lab1",
        shellrelay::ops::defaults::AUDIENCE,
        HOUR,
    );
    claims.jti = Some("t-42".into());
    let (client, _peer) = tunnel.client_with(tunnel.sign(&claims), None).await;
    let mut tcp = ping(client).await;
    tcp.write_all(&[7u8; 1000]).await.unwrap();
    let mut back = vec![0u8; 1000];
    tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut back)
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    read_until_closed(&mut tcp).await;
    let admitted = line_with(&path, "admitted", |l| l["role"] == "client").await;
    assert_eq!(admitted["jti"], "t-42");
    assert_eq!(
        admitted["remote"]
            .as_str()
            .map(|r| r.starts_with("127.0.0.1:")),
        Some(true)
    );
    let start = line_with(&path, "session_start", |_| true).await;
    let end = line_with(&path, "session_end", |_| true).await;
    assert_eq!(start["session"], end["session"]);
    assert_eq!(end["jti"], "t-42");
    assert_eq!(end["host"], "lab1");
    // "ping" and the 1,000 bytes, each way, as they crossed the relay: in
    // the records of a resumable session, with 5 bytes of framing for each
    // data record and 10 for each acknowledgement.
    for way in ["bytes_to_host", "bytes_to_client"] {
        let n = end[way].as_u64().unwrap_or(0);
        assert!((1004..=1004 + 64).contains(&n), "{way} {n}: {end}");
    }
    assert_eq!(end["reason"], "done");
    assert!(end["duration_ms"].as_u64().is_some(), "{end}");
    // A refused hello: no subject is known, the reason is.
    let bad = TokenSource::Literal("not.a.token".into());
    let _ = dial::connect(&tunnel.relay_addr(), &bad, Role::Client, None).await;
    let refused = line_with(&path, "refused", |l| l["subject"].is_null()).await;
    assert!(
        refused["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{refused}"
    );
    // A well-signed token refused for what it says (a host token used by a
    // client): whom it names is known.
    let mut claims = Claims::new(
        Role::Host,
        "lab7",
        shellrelay::ops::defaults::AUDIENCE,
        HOUR,
    );
    claims.jti = Some("t-wrong-role".into());
    let wrong = TokenSource::Literal(tunnel.sign(&claims));
    let _ = dial::connect(&tunnel.relay_addr(), &wrong, Role::Client, None).await;
    let refused = line_with(&path, "refused", |l| l["jti"] == "t-wrong-role").await;
    assert_eq!(refused["subject"], "lab7", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("host token used as a client token")),
        "{refused}"
    );
    // A client refused for an offline host: its subject and the host.
    let other = TokenSource::Literal(tunnel.token(Role::Client, "lab9", HOUR));
    let _ = dial::connect(&tunnel.relay_addr(), &other, Role::Client, None).await;
    let offline = line_with(&path, "refused", |l| l["host"] == "lab9").await;
    assert_eq!(offline["subject"], "lab9");
    assert_eq!(offline["role"], "client");
    assert!(
        offline["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not connected")),
        "{offline}"
    );
}

/// Sends `body` as the hello of a new connection to `relay` and returns
/// the refusal the relay answers with, if it gets that far; then closes
/// the connection at once, as a flood would.
async fn refused_hello(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    body: &str,
) -> Option<Refusal> {
    let conn = endpoint.connect(relay, "localhost").ok()?.await.ok()?;
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let mut frame = u16::try_from(body.len()).ok()?.to_be_bytes().to_vec();
    frame.extend_from_slice(body.as_bytes());
    send.write_all(&frame).await.ok()?;
    let _ = send.finish();
    let answer = read_frame(&mut recv).await;
    conn.close(0u32.into(), b"");
    match answer {
        Ok(Frame::Refused { reason, message }) => Some(Refusal { reason, message }),
        _ => None,
    }
}

/// Attack D: 16 KB hellos without a token, each refused as malformed with
/// serde's words quoting the peer's field whole. Every hello whole in the
/// log would be 8 MiB here (22 GB an hour at the rate measured on main).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_huge_hellos_adds_a_bounded_amount_and_a_count_to_the_audit_log() {
    const CONNECTIONS: usize = 64;
    const ROUNDS: usize = 8;
    // At most 10 refusal lines per 10 s from one network, each under 4
    // KiB, and a count when a window ends: a few windows of that.
    const CEILING: u64 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = path.clone();
    let mut tunnel = Tunnel::start_with(move |c| {
        c.limits.failures_per_addr = u32::MAX;
        c.limits.handshakes_per_addr = CONNECTIONS;
        c.audit_log = Some(audit);
    })
    .await;
    let junk = "x".repeat(16_000);
    let bodies: Arc<[String]> = Arc::from([
        format!(r#"{{"type":"hello","version":1,"role":"{junk}","token":"t"}}"#),
        format!(r#"{{"type":"{junk}"}}"#),
        format!(
            r#"{{"type":"hello","version":1,"role":"client","token":"{}","host":"{}"}}"#,
            &junk[..15_000],
            &junk[..1_000]
        ),
    ]);
    let endpoint = tunnel.raw_endpoint(ALPN);
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..CONNECTIONS {
        let (endpoint, bodies, relay) = (endpoint.clone(), bodies.clone(), tunnel.addr);
        flood.spawn(async move {
            let mut refused = 0u64;
            for round in 0..ROUNDS {
                let body = &bodies[(i + round) % bodies.len()];
                let hello = within(WAIT, "a refusal", refused_hello(&endpoint, relay, body)).await;
                refused += u64::from(hello.is_some_and(|r| r.message.contains("malformed")));
            }
            refused
        });
    }
    let mut seen = 0;
    while let Some(refused) = flood.join_next().await {
        seen += refused.unwrap();
    }
    tunnel.stop_relay().await;
    let size = std::fs::metadata(&path).unwrap().len();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines = lines(&path);
    let written = lines.iter().filter(|l| l["event"] == "refused").count() as u64;
    let left_out: u64 = (lines.iter())
        .filter(|l| l["event"] == "refused_summary" || l["event"] == "dropped")
        .map(|l| l["left_out"].as_u64().unwrap_or(0))
        .sum();
    assert!(seen > 10, "only {seen} hellos were refused");
    // Every refusal the flood saw is in the file, written or counted.
    assert!(
        written + left_out >= seen,
        "{written} + {left_out} < {seen}"
    );
    assert!(written + left_out <= tunnel.registry.refused());
    assert!(
        lines.iter().any(|l| l["event"] == "refused_summary"
            && l["network"] == "127.0.0.1"
            && l["left_out"].as_u64() > Some(0)),
        "no count of refusals left out:\n{text}"
    );
    assert!(
        size <= CEILING,
        "{seen} refused hellos made the audit log {size} bytes"
    );
    assert!(text.lines().all(|l| l.len() < 4096), "{text}");
}

/// Attack I: a C1 control (U+009B, a terminal's CSI), bidi overrides and
/// C0 controls in what reaches the audit log: a subject and a token id
/// (of well-signed tokens refused for what they say) and the host a
/// client asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_bidi_characters_never_reach_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let audit = path.clone();
    let mut tunnel = Tunnel::start_with(move |c| {
        c.limits.failures_per_addr = u32::MAX;
        c.audit_log = Some(audit);
    })
    .await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let evil = "\u{9b}31m\u{202e}\u{2066}\u{200f}\u{61c}\n\u{1b}[2J";
    let shown = "?31m??????[2J";
    let audience = shellrelay::ops::defaults::AUDIENCE;
    let subject = format!("lab{evil}1");
    let claims = Claims::new(Role::Client, &subject, audience, HOUR);
    refusal(&tunnel, Role::Client, tunnel.sign(&claims), None).await;
    let mut claims = Claims::new(Role::Host, "lab7", audience, HOUR);
    claims.jti = Some(format!("t{evil}42"));
    refusal(&tunnel, Role::Client, tunnel.sign(&claims), None).await;
    let client = tunnel.token(Role::Client, "lab1", HOUR);
    refusal(&tunnel, Role::Client, client, Some(&subject)).await;
    tunnel.stop_relay().await;

    let text = std::fs::read_to_string(&path).unwrap();
    let raw: Vec<char> = (text.chars())
        .filter(|&c| c != '\n' && !shellrelay::protocol::shown(c))
        .collect();
    assert!(raw.is_empty(), "{raw:?} in\n{text}");
    let lines = lines(&path);
    let refused = |field: &str, value: String| {
        assert!(
            lines
                .iter()
                .any(|l| l["event"] == "refused" && l[field] == *value),
            "no refusal with {field} {value:?} in\n{text}"
        );
    };
    refused("subject", format!("lab{shown}1"));
    refused("jti", format!("t{shown}42"));
    refused("host", format!("lab{shown}1"));
}

/// Rotation as logrotate does it by default: rename the file, then SIGHUP;
/// the relay goes on in a new file at the old path, private to its user.
#[cfg(unix)]
#[tokio::test]
async fn sighup_opens_a_renamed_audit_log_afresh_at_its_path() {
    use shellrelay::net::tls::Trust;
    use shellrelay::net::transport::dial::RelayAddr;
    use shellrelay::net::transport::TransportOptions;
    use support::bin;

    let dir = tempfile::tempdir().unwrap();
    let secret = bin::write_secret(dir.path());
    let path = dir.path().join("audit.jsonl");
    let extra = ["--audit-log", bin::path_str(&path)];
    let (mut relay, addr) = bin::start_relay_with(dir.path(), &secret, &extra).await;
    let relay_addr = RelayAddr {
        addr: addr.to_string(),
        at: None,
        trust: Trust::PinnedFile(dir.path().join("relay.crt")),
        transport: TransportOptions::default(),
    };
    let refused = || async {
        let bad = TokenSource::Literal("not.a.token".into());
        let hello = dial::connect(&relay_addr, &bad, Role::Client, None);
        let answer = within(WAIT, "a refusal", hello).await;
        assert!(answer.is_err(), "a bad token was let in");
    };
    refused().await;
    line_with(&path, "refused", |_| true).await;
    let rotated = dir.path().join("audit.jsonl.1");
    std::fs::rename(&path, &rotated).unwrap();
    relay.signal("HUP");
    relay.wait_for_text("audit log reopened").await;
    assert_eq!(bin::mode(&path), 0o600);
    refused().await;
    line_with(&path, "refused", |_| true).await;
    let status = relay.terminate().await;
    assert!(status.success(), "relay: {status}:\n{}", relay.log());
    assert_eq!(lines(&rotated).len(), 1, "{:?}", lines(&rotated));
    assert_eq!(lines(&path).len(), 1, "{:?}", lines(&path));
}
