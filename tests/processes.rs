//! The relay, host agent, client forwarder and `status` run as separate
//! `shellrelay` processes talking over loopback: what they log, how they
//! stop, and what a client does while its host is offline.
//!
//! Every wait is bounded by a timeout; every port is picked by the kernel.
#![cfg(unix)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use support::bin::*;
use support::netem::Proxy;
use support::proc::{addr_field, field, Proc};
use support::{within, WAIT};
use tokio::io::AsyncReadExt;

/// Longest wait for the far side to close a forwarded TCP connection.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// How long a connection that carried nothing either way has been idle:
/// far longer than a QUIC retransmission timeout over loopback (a few
/// milliseconds), and half of a 1 s keep-alive interval, the longest an
/// idle connection stays silent.
const IDLE: Duration = Duration::from_millis(500);

#[tokio::test]
async fn relay_makes_its_certificate_logs_its_port_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, _) = start_relay(&certs, &secret).await;

    let made = relay
        .lines()
        .iter()
        .find(|l| l.contains("made a self-signed certificate"))
        .cloned()
        .unwrap_or_else(|| panic!("no certificate was made:\n{}", relay.log()));
    let fingerprint =
        field(&made, "fingerprint").unwrap_or_else(|| panic!("no fingerprint= in {made:?}"));
    assert!(is_fingerprint(fingerprint), "{made}");
    let (cert, key) = (certs.join("relay.crt"), certs.join("relay.key"));
    assert!(cert.is_file(), "{} was not written", cert.display());
    assert!(key.is_file(), "{} was not written", key.display());
    assert_eq!(
        mode(&key),
        0o600,
        "the key must be readable by its owner only"
    );
    relay.assert_running();

    let status = relay.terminate().await;
    assert!(
        status.success(),
        "relay did not exit 0 on SIGTERM ({status}); it logged:\n{}",
        relay.log()
    );
    assert!(
        relay
            .lines()
            .iter()
            .any(|l| l.contains("relay shutting down")),
        "no shutdown line:\n{}",
        relay.log()
    );

    // A second start loads the same pair and logs the same fingerprint.
    let (mut again, _) = start_relay(&certs, &secret).await;
    let loaded = again
        .lines()
        .iter()
        .find(|l| l.contains("loaded certificate"))
        .cloned()
        .unwrap_or_else(|| panic!("certificate was not reused:\n{}", again.log()));
    assert_eq!(field(&loaded, "fingerprint"), Some(fingerprint), "{loaded}");
    let status = again.terminate().await;
    assert!(status.success(), "{status}:\n{}", again.log());
}

#[tokio::test]
async fn client_closes_ssh_connections_while_the_host_is_offline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) = start_relay(&certs, &secret).await;

    let token = dir.path().join("client.token");
    std::fs::write(
        &token,
        mint_token(&secret, "client", "lab1", "1h").await + "\n",
    )
    .expect("write token");
    let relay_at = relay_addr.to_string();
    let cert = certs.join("relay.crt");
    let mut args = peer_args("client", &relay_at, &cert, &token);
    args.extend(["--listen", "127.0.0.1:0"]);
    let mut client = Proc::spawn("client", shellrelay(&args));
    let line = client.wait_for_text("client forwarder listening").await;
    let listen = addr_field(&line, "listen");
    assert_ne!(listen.port(), 0, "{line}");

    let mut tcp = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(listen))
        .await
        .unwrap_or_else(|_| panic!("could not connect to the client on {listen} within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("could not connect to the client on {listen}: {e}"));
    let ours = tcp.local_addr().expect("local address").to_string();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(CLOSE_WAIT, tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!(
            "client sent {n} bytes ({:?}) instead of closing",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(_) => panic!(
            "client did not close the connection within {CLOSE_WAIT:?}; it logged:\n{}",
            client.log()
        ),
    }
    // The refusal is logged for this very connection (its span names our
    // address), not only for the forwarder's first connect.
    client
        .wait_for("the host-offline refusal of our connection", |l| {
            l.contains("host lab1 is not connected") && l.contains(&ours)
        })
        .await;
    relay.wait_for_text("host offline").await;
    client.assert_running();
    relay.assert_running();

    let status = client.terminate().await;
    assert!(status.success(), "client: {status}:\n{}", client.log());
    let status = relay.terminate().await;
    assert!(status.success(), "relay: {status}:\n{}", relay.log());
    for (name, log) in [("client", client.log()), ("relay", relay.log())] {
        assert!(!log.contains("panicked"), "{name} panicked:\n{log}");
    }
}

#[tokio::test]
async fn client_exits_on_a_refusal_that_retrying_cannot_fix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) = start_relay(&certs, &secret).await;
    let relay_at = relay_addr.to_string();
    let cert = certs.join("relay.crt");
    // A host's token given to a client, and a client token for several
    // hosts with none named: neither gets better by trying again.
    let cases = [
        ("host.token", "host", "lab1", "host token"),
        (
            "several.token",
            "client",
            "lab1,lab2",
            "name one with --host",
        ),
    ];
    for (file, role, hosts, words) in cases {
        let token = token_file(&secret, dir.path(), file, role, hosts).await;
        let mut args = peer_args("client", &relay_at, &cert, &token);
        args.extend(["--listen", "127.0.0.1:0"]);
        let out = finish(shellrelay(&args)).await;
        assert_eq!(out.status.code(), Some(1), "{file}: {out:?}");
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains(words) && last.contains("not retrying"),
            "{file}: {out:?}"
        );
    }
    relay.assert_running();
    relay.terminate().await;
}

#[tokio::test]
async fn every_role_stops_gracefully_and_the_relay_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) = start_relay(&certs, &secret).await;
    let relay_at = relay_addr.to_string();
    let cert = certs.join("relay.crt");
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let client_token = token_file(&secret, dir.path(), "client.token", "client", "lab1").await;
    let peer = |role: &'static str, token: &Path, extra: &[&str]| {
        spawn_peer(role, &relay_at, &cert, token, extra)
    };
    let mut host = peer("host", &host_token, &["--target", "127.0.0.1:9"]);
    host.wait_for_text("registered with relay").await;
    let mut client = peer("client", &client_token, &["--listen", "127.0.0.1:0"]);
    client.wait_for_text("connected to relay").await;

    let started = std::time::Instant::now();
    let status = relay.terminate().await;
    let took = started.elapsed();
    assert!(status.success(), "relay: {status}:\n{}", relay.log());
    assert!(
        took <= Duration::from_secs(2),
        "relay took {took:?} to stop"
    );
    host.wait_for_text("relay shutting down").await;
    client.wait_for_text("relay shutting down").await;

    for (name, proc) in [("host", &mut host), ("client", &mut client)] {
        proc.assert_running();
        let status = proc.terminate().await;
        assert!(status.success(), "{name}: {status}:\n{}", proc.log());
        assert!(
            !proc.log().contains("panicked"),
            "{name} panicked:\n{}",
            proc.log()
        );
    }
}

#[tokio::test]
async fn status_prints_the_hosts_online_from_the_relays_metrics_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) =
        start_relay_with(&certs, &secret, &["--metrics", "127.0.0.1:0"]).await;
    // Waiting for the relay's port may have passed over this line.
    let line = relay.logged_text("metrics listening").await;
    let metrics = addr_field(&line, "addr");
    assert_eq!(metrics.ip().to_string(), "127.0.0.1", "{line}");
    assert_ne!(metrics.port(), 0, "{line}");
    let metrics = metrics.to_string();

    let out = run(&["status", "--metrics", &metrics]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "no hosts online\n", "{out:?}");

    let token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let mut host = spawn_peer(
        "host",
        &relay_addr.to_string(),
        &certs.join("relay.crt"),
        &token,
        &["--target", "127.0.0.1:9"],
    );
    host.wait_for_text("registered with relay").await;

    // The address may come from the environment, as every flag's may.
    let mut cmd = shellrelay(&["status"]);
    cmd.env("SHELLRELAY_METRICS", &metrics);
    let out = finish(cmd).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let lines: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(lines.len(), 2, "a header and one host: {out:?}");
    assert_eq!(
        lines[0],
        [
            "HOST",
            "SINCE",
            "REMOTE",
            "TRANSPORT",
            "DIRECT",
            "SESSIONS",
            "BYTES TO HOST",
            "BYTES TO CLIENT"
        ],
        "{out:?}"
    );
    let row = &lines[1];
    assert_eq!(row.len(), 8, "{out:?}");
    assert_eq!(row[0], "lab1", "{out:?}");
    assert!(
        row[1].len() == "2024-01-01T00:00:00Z".len() && row[1].ends_with('Z'),
        "since is RFC 3339: {out:?}"
    );
    let remote: SocketAddr = row[2].parse().expect("remote is an address");
    assert_eq!(remote.ip().to_string(), "127.0.0.1", "{out:?}");
    assert_eq!(row[3], "quic", "{out:?}");
    // Test processes run with SHELLRELAY_DIRECT=off.
    assert_eq!(row[4], "off", "{out:?}");
    assert_eq!(&row[5..], ["0", "0", "0"], "{out:?}");

    host.terminate().await;
    relay.terminate().await;
    let out = run(&["status", "--metrics", &metrics]).await;
    assert_error_line(
        &out,
        &[&format!(
            "could not reach the relay's metrics endpoint at {metrics}"
        )],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_and_a_restart_hosts_and_clients_are_back_within_5_s() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) = start_relay(&certs, &secret).await;
    let relay_at = relay_addr.to_string();
    let cert = certs.join("relay.crt");
    let target = support::traffic::echo_server().await.to_string();
    let mut tokens = Vec::new();
    for role in ["host", "client"] {
        let name = format!("{role}.token");
        tokens.push(token_file(&secret, dir.path(), &name, role, "lab1").await);
    }
    // The host agent reaches the relay through a UDP proxy, which shows
    // when its connection is idle.
    let proxy = Proxy::start(relay_addr).await;
    let via_proxy = proxy.addr().to_string();
    // The default keep-alive (4 s) bounds how long an idle agent takes to
    // hear the new relay's reset; 1 s keeps this test's margin wide on a
    // loaded machine.
    let mut host = spawn_peer(
        "host",
        &via_proxy,
        &cert,
        &tokens[0],
        &["--target", &target, "--keep-alive", "1s"],
    );
    host.wait_for_text("registered with relay").await;
    let mut client = spawn_peer(
        "client",
        &relay_at,
        &cert,
        &tokens[1],
        &["--listen", "127.0.0.1:0", "--keep-alive", "1s"],
    );
    let line = client.wait_for_text("client forwarder listening").await;
    let listen = addr_field(&line, "listen");
    assert!(echo_once(listen).await, "no session before the crash");
    // Idle, so that what brings the agent back is the reset of a
    // keep-alive, not a retransmission of the session's last packets: the
    // agent has ended the session, and its connection has then carried
    // nothing either way for IDLE, so it holds no packet unacknowledged
    // (it would have sent it again by then), and the next it sends is a
    // keep-alive.
    host.wait_for_text("session ended").await;
    proxy.until_quiet(IDLE).await;

    // A crash: no close reaches anyone, and the new relay knows none of the
    // old connections. It is the same relay (port, certificate, key).
    let (mut again, up) = crash_and_restart(&mut relay, &certs, &secret, &relay_at).await;
    // The host agent's next registration, after the one before the crash.
    host.find(|l| l.contains("registered with relay")).await;
    let host_back = up.elapsed();
    let session_back = session_back(listen, up, &client).await;
    eprintln!("after SIGKILL and a restart: host registered again in {host_back:?}, a session worked in {session_back:?}");
    assert!(
        host_back <= Duration::from_secs(5) && session_back <= Duration::from_secs(5),
        "host registered again after {host_back:?}, a session worked after {session_back:?}"
    );
    stop_gracefully([
        ("host", &mut host),
        ("client", &mut client),
        ("relay", &mut again),
    ])
    .await;
}

/// Kills `relay` with SIGKILL (no close reaches anyone) and starts it again
/// on `relay_at` with the same certificate and key, in `certs`; the new
/// relay and when it was up.
async fn crash_and_restart(
    relay: &mut Proc,
    certs: &Path,
    secret: &Path,
    relay_at: &str,
) -> (Proc, std::time::Instant) {
    relay.signal("KILL");
    let _ = relay.terminate().await;
    let (cert, key) = (certs.join("relay.crt"), certs.join("relay.key"));
    let mut again = Proc::spawn(
        "relay",
        shellrelay(&relay_args(relay_at, secret, &cert, &key)),
    );
    again.wait_for_text("relay listening").await;
    (again, std::time::Instant::now())
}

/// How long after `up` an echo through the forwarder at `listen` first
/// came back.
async fn session_back(listen: SocketAddr, up: std::time::Instant, client: &Proc) -> Duration {
    tokio::time::timeout(WAIT, async {
        while !echo_once(listen).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        up.elapsed()
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no session within {WAIT:?}; client logged:\n{}",
            client.log()
        )
    })
}

/// Stops each process with SIGTERM and checks it exited cleanly.
async fn stop_gracefully<const N: usize>(procs: [(&str, &mut Proc); N]) {
    for (name, proc) in procs {
        let status = proc.terminate().await;
        assert!(status.success(), "{name}: {status}:\n{}", proc.log());
    }
}

/// One short echo through the client forwarder at `listen`; false if it
/// did not come back within a second.
async fn echo_once(listen: SocketAddr) -> bool {
    use tokio::io::AsyncWriteExt;
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(listen).await.ok()?;
        tcp.write_all(b"ping").await.ok()?;
        let mut got = [0u8; 4];
        tcp.read_exact(&mut got).await.ok()?;
        (got == *b"ping").then_some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Some(()))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_is_one_warning_not_one_each() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) =
        start_relay_with(&certs, &secret, &["--hello-timeout", "200ms"]).await;
    let cert = rustls::pki_types::CertificateDer::from_pem_file(certs.join("relay.crt"))
        .expect("the relay's certificate");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("a usable certificate");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![shellrelay::protocol::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC TLS");
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    // Three rounds of ten connections that never say hello (under the cap
    // of handshakes per address), each closed by the relay's hello timeout.
    for _ in 0..3 {
        let mut round = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let connecting = endpoint.connect(relay_addr, "localhost").expect("connect");
            round.spawn(async move {
                let conn = connecting.await.expect("handshake");
                conn.closed().await
            });
        }
        let closes = tokio::time::timeout(WAIT, round.join_all())
            .await
            .expect("the relay closes silent connections");
        assert!(closes
            .iter()
            .all(|c| c.to_string().contains("no hello within")));
    }
    let warnings = relay
        .lines()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("no hello within"))
        .count();
    assert_eq!(
        warnings,
        1,
        "one summarised warning; the relay logged:\n{}",
        relay.log()
    );
    let status = relay.terminate().await;
    assert!(status.success(), "{status}:\n{}", relay.log());
}

/// Starts `role` (`host` or `client`) as a process reaching the relay at
/// `relay` with its certificate `cert` and the token in `token`.
fn spawn_peer(role: &str, relay: &str, cert: &Path, token: &Path, extra: &[&str]) -> Proc {
    let mut args = peer_args(role, relay, cert, token);
    args.extend_from_slice(extra);
    Proc::spawn(role, shellrelay(&args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_says_when_nothing_listens_at_its_target_and_copes_without_user() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    // A port nothing listens on: bound, then let go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut cmd = shellrelay(&["demo", "--listen", "127.0.0.1:0", "--target", &closed]);
    cmd.env_remove("USER").env_remove("LOGNAME");
    let mut demo = cmd.spawn().unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let printed = within(WAIT, "the demo's ssh command", async {
        let mut printed = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.trim().starts_with("ssh -p ");
            printed.push(line);
            if done {
                return printed;
            }
        }
        panic!("the demo ended without printing an ssh command: {printed:?}");
    })
    .await;
    let text = printed.join("\n");
    // Before the ssh line: what is wrong and both ways to fix it.
    assert!(
        text.contains(&format!("Nothing accepts connections on {closed}")),
        "{text}"
    );
    assert!(
        text.contains("Start sshd") && text.contains("--target"),
        "{text}"
    );
    // No user name known: ssh picks the local one; no literal `$USER`.
    let ssh = printed.last().unwrap().trim();
    assert!(!ssh.contains('$') && !ssh.contains('@'), "{ssh}");
    assert!(ssh.ends_with(" 127.0.0.1"), "{ssh}");
    support::proc::signal(demo.id().unwrap(), "TERM");
    let status = within(WAIT, "the demo to stop", demo.wait()).await.unwrap();
    assert!(status.success(), "demo exited with {status}");
}

/// The same crash as above with both peers on TLS over TCP: the kernel
/// resets their connections when the relay dies, and once it is back they
/// register and connect again, and sessions work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_and_a_restart_tcp_peers_are_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) = start_relay(&certs, &secret).await;
    let relay_at = relay_addr.to_string();
    let cert = certs.join("relay.crt");
    let target = support::traffic::echo_server().await.to_string();
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let client_token = token_file(&secret, dir.path(), "client.token", "client", "lab1").await;
    let tcp = ["--transport", "tcp"];
    let mut host_args = vec!["--target", target.as_str()];
    host_args.extend(tcp);
    let mut host = spawn_peer("host", &relay_at, &cert, &host_token, &host_args);
    let line = host.wait_for_text("registered with relay").await;
    assert!(line.contains("transport=\"tcp\""), "{line}");
    let mut client_args = vec!["--listen", "127.0.0.1:0"];
    client_args.extend(tcp);
    let mut client = spawn_peer("client", &relay_at, &cert, &client_token, &client_args);
    let line = client.wait_for_text("client forwarder listening").await;
    let listen = addr_field(&line, "listen");
    assert!(echo_once(listen).await, "no session before the crash");

    let (mut again, up) = crash_and_restart(&mut relay, &certs, &secret, &relay_at).await;
    let line = host.find(|l| l.contains("registered with relay")).await;
    let line = line.expect("the host agent registered again");
    assert!(line.contains("transport=\"tcp\""), "{line}");
    let host_back = up.elapsed();
    let session_back = session_back(listen, up, &client).await;
    eprintln!("TCP peers, after SIGKILL and a restart: host registered again in {host_back:?}, a session worked in {session_back:?}");
    stop_gracefully([
        ("host", &mut host),
        ("client", &mut client),
        ("relay", &mut again),
    ])
    .await;
}
