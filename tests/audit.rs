//! The relay's audit log (`--audit-log`): one JSON line for every
//! admission, refusal, session start and session end, naming the token's
//! subject and id, the peer's address, and for a session its bytes each
//! way and how long it lasted.

mod support;

use std::time::Duration;

use serde_json::Value;
use shellrelay::peer;
use shellrelay::protocol::Role;
use shellrelay::token::{Claims, TokenSource};
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
    let mut claims = Claims::new(Role::Client, "lab1", shellrelay::defaults::AUDIENCE, HOUR);
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
    let _ = peer::connect(&tunnel.relay_addr(), &bad, Role::Client, None).await;
    let refused = line_with(&path, "refused", |l| l["subject"].is_null()).await;
    assert!(
        refused["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{refused}"
    );
    // A well-signed token refused for what it says (a host token used by a
    // client): whom it names is known.
    let mut claims = Claims::new(Role::Host, "lab7", shellrelay::defaults::AUDIENCE, HOUR);
    claims.jti = Some("t-wrong-role".into());
    let wrong = TokenSource::Literal(tunnel.sign(&claims));
    let _ = peer::connect(&tunnel.relay_addr(), &wrong, Role::Client, None).await;
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
    let _ = peer::connect(&tunnel.relay_addr(), &other, Role::Client, None).await;
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
