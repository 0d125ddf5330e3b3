//! Log output of the real `shellrelay` binary: JSON logs, one object per
//! line, name each session and its host in every role; the format may come
//! from the environment, and an unknown one is refused.
#![cfg(unix)]

mod support;

use std::net::SocketAddr;

use support::bin::*;
use support::proc::Proc;
use support::WAIT;
use tokio::io::AsyncReadExt;

/// A log line as JSON; panics naming the line when it is not.
fn json(line: &str) -> serde_json::Value {
    let value: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}"));
    assert!(value.is_object(), "log line is not an object: {line:?}");
    value
}

/// The `message` of a JSON log line, if it is one.
fn message(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value["fields"]["message"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_session_and_host_ids() {
    // The target: echoes what it reads, then closes.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the echo target");
    let target_addr = target.local_addr().expect("target address").to_string();
    let echo = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = target.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });

    // The flag after the subcommand: it is global.
    let mut demo = Proc::spawn(
        "demo",
        shellrelay(&[
            "demo",
            "--log-format",
            "json",
            "--target",
            &target_addr,
            "--listen",
            "127.0.0.1:0",
        ]),
    );
    let line = demo
        .wait_for("the client forwarder's address", |l| {
            message(l).as_deref() == Some("client forwarder listening")
        })
        .await;
    let listen: SocketAddr = json(&line)["fields"]["listen"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listen address in {line:?}"));

    // One session: bytes there and back, then both sides close.
    let mut tcp = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(listen))
        .await
        .expect("connect within the wait")
        .expect("connect to the client forwarder");
    let sent = b"one session through the demo\n";
    let echoed = tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncWriteExt;
        tcp.write_all(sent).await?;
        tcp.shutdown().await?;
        let mut got = Vec::new();
        tcp.read_to_end(&mut got).await?;
        std::io::Result::Ok(got)
    })
    .await
    .unwrap_or_else(|_| panic!("no echo within {WAIT:?}; demo logged:\n{}", demo.log()))
    .expect("echo through the demo");
    assert_eq!(echoed, sent);

    // Relay, host agent and client forwarder each log the session's end.
    let mut ended = Vec::new();
    for _ in 0..3 {
        let line = demo
            .wait_for("session ended", |l| {
                message(l).as_deref() == Some("session ended")
            })
            .await;
        ended.push(json(&line)["target"].as_str().unwrap_or("").to_owned());
    }
    ended.sort();
    assert_eq!(
        ended,
        [
            "shellrelay::client",
            "shellrelay::host",
            "shellrelay::relay"
        ],
        "demo logged:\n{}",
        demo.log()
    );
    let status = demo.terminate().await;
    assert!(status.success(), "demo: {status}:\n{}", demo.log());
    echo.abort();

    let seen = demo.lines();
    let lines: Vec<serde_json::Value> = seen.iter().map(|l| json(l)).collect();
    assert!(lines.len() >= 8, "too few lines:\n{}", demo.log());
    for (value, line) in lines.iter().zip(&seen) {
        for key in ["timestamp", "level", "target"] {
            assert!(value[key].is_string(), "no {key} in {line:?}");
        }
        assert!(
            value["fields"]["message"].is_string(),
            "no message in {line:?}"
        );
    }
    // Every line about the session, in any role, names it, its host, and
    // the client token's subject and jti.
    let about_session: Vec<(&serde_json::Value, &String)> = lines
        .iter()
        .zip(&seen)
        .filter(|(v, _)| {
            v["span"]["name"] == "session"
                || v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("session "))
        })
        .collect();
    let first = about_session
        .first()
        .unwrap_or_else(|| panic!("no line about the session:\n{}", demo.log()))
        .0;
    let id = first["span"]["session"]
        .as_u64()
        .unwrap_or_else(|| panic!("no session id in {first}"));
    let jti = first["span"]["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .unwrap_or_else(|| panic!("no jti in {first}"));
    for (value, line) in &about_session {
        assert_eq!(value["span"]["name"], "session", "{line}");
        assert_eq!(value["span"]["session"].as_u64(), Some(id), "{line}");
        assert_eq!(value["span"]["host"], "demo", "{line}");
        assert_eq!(value["span"]["subject"], "demo", "{line}");
        assert_eq!(value["span"]["jti"].as_str(), Some(jti), "{line}");
    }
    for target in [
        "shellrelay::relay",
        "shellrelay::host",
        "shellrelay::client",
    ] {
        for what in ["session started", "session ended"] {
            assert!(
                about_session
                    .iter()
                    .any(|(v, _)| v["target"] == target && v["fields"]["message"] == what),
                "{target} did not log {what:?} in the session's span:\n{}",
                demo.log()
            );
        }
    }
}

#[tokio::test]
async fn log_format_comes_from_the_environment_and_refuses_unknown_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (cert, key) = (certs.join("relay.crt"), certs.join("relay.key"));
    let mut cmd = shellrelay(&relay_args("127.0.0.1:0", &secret, &cert, &key));
    cmd.env("SHELLRELAY_LOG_FORMAT", "json");
    let mut relay = Proc::spawn("relay", cmd);
    let line = relay
        .wait_for("relay listening", |l| {
            message(l).as_deref() == Some("relay listening")
        })
        .await;
    assert!(json(&line)["fields"]["addr"].is_string(), "{line}");
    let status = relay.terminate().await;
    assert!(status.success(), "relay: {status}:\n{}", relay.log());
    for line in &relay.lines() {
        json(line);
    }
    assert!(
        relay
            .lines()
            .iter()
            .any(|l| message(l).as_deref() == Some("relay shutting down")),
        "{}",
        relay.log()
    );

    let out = run(&["--log-format", "yaml", "demo"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        out.stderr.contains("text") && out.stderr.contains("json"),
        "{out:?}"
    );
    let mut cmd = shellrelay(&["demo"]);
    cmd.env("SHELLRELAY_LOG_FORMAT", "yaml");
    let out = finish(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
