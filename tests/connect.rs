//! `shellrelay connect` and the client config file, run as processes
//! against a relay and host agents in this process: exact bytes over stdin
//! and stdout, quiet ends, one-line errors, and which value wins among
//! flags, environment variables and the file.
#![cfg(unix)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use support::bin::{assert_error_line, finish, shellrelay};
use support::proc::{addr_field, signal, Proc};
use support::traffic::*;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A relay with host agent `host` in front of `target`, and the files a
/// client process needs, in `dir`.
async fn rig(dir: &Path, host: &str, target: SocketAddr) -> (Tunnel, Peer, ClientFiles) {
    let tunnel = Tunnel::start().await;
    let agent = tunnel.host(host, target).await;
    let files = tunnel.client_files(dir, host);
    (tunnel, agent, files)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_carries_stdin_and_stdout_exactly_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let (_tunnel, _host, files) = rig(dir.path(), "lab-greet", greeting_server().await).await;
    let mut child = shellrelay(&["connect", "--host", "lab-greet"])
        .env("SHELLRELAY_CONFIG", &files.config)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    // Written the moment the process starts, long before the session is
    // ready, as ssh does: none of it may be lost or come before the
    // target's greeting.
    let len = 4u64 << 20;
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let sent = write_noise(&mut stdin, 11, len).await;
        drop(stdin);
        sent
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut greeting = vec![0u8; GREETING.len()];
    within(WAIT, "the greeting", stdout.read_exact(&mut greeting))
        .await
        .unwrap();
    assert_eq!(greeting, GREETING);
    let (count, got) = within(WAIT, "the echo", hash_to_end(&mut stdout)).await;
    let sent = writer.await.unwrap();
    assert_eq!(count, len, "echoed byte count");
    assert_eq!(hex(&got), hex(&sent), "echoed SHA-256");
    exits_quietly(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_ends_quietly_on_the_sighup_ssh_sends_its_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let (_tunnel, _host, files) = rig(dir.path(), "lab-echo", echo_server().await).await;
    let mut child = shellrelay(&["connect", "--config", files.config.to_str().unwrap()])
        .args(["--host", "lab-echo"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    let mut echo = [0u8; 5];
    within(WAIT, "the echo", stdout.read_exact(&mut echo))
        .await
        .unwrap();
    assert_eq!(&echo, b"ping\n");
    // stdin stays open: ssh sends SIGHUP without closing it first.
    signal(child.id().unwrap(), "HUP");
    exits_quietly(child).await;
    drop(stdin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let tunnel = Tunnel::start().await;
    let files = tunnel.client_files(dir.path(), "lab-off");
    let relay = tunnel.addr.to_string();
    let flags = |host: &str| {
        let mut cmd = shellrelay(&["connect", "--relay", &relay, "--host", host]);
        cmd.arg("--relay-cert").arg(&files.cert);
        cmd
    };

    // The host is not connected.
    let mut cmd = flags("lab-off");
    cmd.arg("--token-file").arg(&files.token);
    let out = finish(cmd).await;
    assert_error_line(&out, &["host lab-off is not connected"]);

    // A token that is not one.
    let mut cmd = flags("lab-off");
    cmd.args(["--token", "not.a.token"]);
    let out = finish(cmd).await;
    assert_error_line(&out, &["relay refused"]);

    // A token for another host.
    let mut cmd = flags("lab-other");
    cmd.arg("--token-file").arg(&files.token);
    let out = finish(cmd).await;
    assert_error_line(&out, &["cannot reach host lab-other"]);

    // The host is connected but nothing listens on its target.
    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let _host = tunnel.host("lab-off", closed).await;
    let mut cmd = flags("lab-off");
    cmd.arg("--token-file").arg(&files.token);
    let out = finish(cmd).await;
    assert_error_line(&out, &["session refused"]);

    // No relay to be had at all: nothing given, no config file.
    let out = finish(shellrelay(&["connect", "--host", "lab-off"])).await;
    assert_error_line(&out, &["pass --relay", "client.toml"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_keys_are_read_and_flags_and_env_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let tunnel = Tunnel::start().await;
    let files = tunnel.client_files(dir.path(), "lab1");
    let relay = tunnel.addr.to_string();

    // Every key from the file, named by $SHELLRELAY_CONFIG. The relay
    // refuses for the offline host the file names, which shows that the
    // relay, certificate, token and host all came from the file.
    std::fs::write(&files.config, format!(
        "relay = \"{relay}\"\nrelay_cert = \"relay.crt\"\ntoken_file = \"client.token\"\nhost = \"lab1\"\n"
    ))
    .unwrap();
    let mut cmd = shellrelay(&["connect"]);
    cmd.env("SHELLRELAY_CONFIG", &files.config);
    assert_error_line(&finish(cmd).await, &["host lab1 is not connected"]);

    // A file whose relay and token would fail: flags win over both...
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        "relay = \"127.0.0.1:9\"\nrelay_cert = \"relay.crt\"\ntoken_file = \"missing.token\"\nhost = \"lab1\"\n",
    )
    .unwrap();
    let mut cmd = shellrelay(&["connect", "--relay", &relay]);
    cmd.arg("--config").arg(&wrong);
    cmd.arg("--token-file").arg(&files.token);
    assert_error_line(&finish(cmd).await, &["host lab1 is not connected"]);

    // ...and so do environment variables; `--host` beats the file's host.
    let mut cmd = shellrelay(&["connect", "--host", "lab2"]);
    cmd.env("SHELLRELAY_CONFIG", &wrong)
        .env("SHELLRELAY_RELAY", &relay)
        .env("SHELLRELAY_TOKEN_FILE", &files.token);
    assert_error_line(&finish(cmd).await, &["cannot reach host lab2"]);

    // The client forwarder reads the same file.
    let _host = tunnel.host("lab1", echo_server().await).await;
    let mut client = shellrelay(&["client", "--listen", "127.0.0.1:0"]);
    client
        .env("SHELLRELAY_CONFIG", &files.config)
        .env("RUST_LOG", "info");
    let mut client = Proc::spawn("client", client);
    let line = client
        .wait_for("the client to listen", |l| l.contains("listen="))
        .await;
    let listen: SocketAddr = addr_field(&line, "listen");
    within(
        WAIT,
        "an echo through the client",
        echo_roundtrip(listen, 3, 1 << 20),
    )
    .await;
}

#[tokio::test]
async fn config_file_errors_name_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("client.toml");
    std::fs::write(
        &config,
        "relay = \"127.0.0.1:9\"\ntoken_file = \"t\"\ncolour = \"blue\"\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    for role in [&["connect"][..], &["client", "--listen", "127.0.0.1:0"]] {
        let mut cmd = shellrelay(role);
        cmd.args(["--config", path]);
        assert_error_line(
            &finish(cmd).await,
            &[path, "line 3, column 1", "unknown field `colour`"],
        );
    }

    // A file named by --config or $SHELLRELAY_CONFIG must exist; the
    // default one need not.
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let out = finish(shellrelay(&["connect", "--config", missing])).await;
    assert_error_line(&out, &[missing]);
    let mut cmd = shellrelay(&["connect"]);
    cmd.env("SHELLRELAY_CONFIG", missing);
    assert_error_line(&finish(cmd).await, &[missing]);
    let mut cmd = shellrelay(&["connect"]);
    cmd.env("XDG_CONFIG_HOME", dir.path());
    let out = finish(cmd).await;
    assert_error_line(&out, &["pass --relay"]);
}

/// Waits for `connect` to exit 0 having printed nothing on stderr.
async fn exits_quietly(child: tokio::process::Child) {
    let out = within(WAIT, "connect to exit", child.wait_with_output())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(out.stderr.is_empty(), "quiet: {}", text(&out.stderr));
}
