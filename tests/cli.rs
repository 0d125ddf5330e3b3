//! Runs the real `shellrelay` binary: help texts, error messages, the
//! `token` and `certs` subcommands, and relay and client processes talking
//! to each other over loopback.
//!
//! Every wait is bounded by a timeout; every port is picked by the kernel.
#![cfg(unix)]

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use support::bin::*;
use support::proc::{addr_field, field, Proc};
use support::{SECRET, WAIT};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Longest wait for the far side to close a forwarded TCP connection.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- helpers

/// Collapses runs of whitespace, so that help text wrapped at any terminal
/// width reads as one line.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes unpadded base64url, as used in JWTs.
fn base64url(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("{:?} is not base64url: {text:?}", c as char),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    assert!(bits < 6 && acc == 0, "trailing bits in base64url {text:?}");
    out
}

/// HMAC-SHA256 (RFC 2104), to check a token's signature.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Checks `jwt` is three base64url parts, HS256-signed with `secret`, and
/// returns its header and claims.
fn decode_jwt(jwt: &str, secret: &[u8]) -> (serde_json::Value, serde_json::Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {jwt:?}");
    assert!(
        parts.iter().all(|p| !p.is_empty()),
        "empty JWT part: {jwt:?}"
    );
    let json = |part: &str| -> serde_json::Value {
        serde_json::from_slice(&base64url(part))
            .unwrap_or_else(|e| panic!("JWT part {part:?} is not JSON: {e}"))
    };
    let (header, claims) = (json(parts[0]), json(parts[1]));
    let signed = format!("{}.{}", parts[0], parts[1]);
    assert_eq!(
        base64url(parts[2]),
        hmac_sha256(secret, signed.as_bytes()),
        "signature is not HMAC-SHA256 over the secret: {jwt:?}"
    );
    (header, claims)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ------------------------------------------------------------------ tests

#[tokio::test]
async fn help_of_every_subcommand_names_the_defaults() {
    let cases: &[(&str, &[&str])] = &[
        (
            "relay",
            &[
                "--listen",
                "[default: [::]:4433]",
                "--secret-file",
                "--secret",
                "--cert",
                "[default: certs/relay.crt]",
                "--key",
                "[default: certs/relay.key]",
                "--audience",
                "[default: shellrelay]",
                "--name",
                "--keep-alive",
                "[default: 10s]",
                "--idle-timeout",
                "[default: 30s]",
                "--metrics",
            ],
        ),
        (
            "host",
            &[
                "--relay",
                "--relay-cert",
                "--token-file",
                "--token",
                "--target",
                "[default: 127.0.0.1:22]",
                "--max-backoff",
                "--keep-alive",
                "[default: 10s]",
                "--idle-timeout",
                "[default: 30s]",
            ],
        ),
        (
            "client",
            &[
                "--relay",
                "--relay-cert",
                "--token-file",
                "--token",
                "--listen",
                "[default: 127.0.0.1:2222]",
                "--host",
                "--config",
                "client.toml",
                "--keep-alive",
                "[default: 10s]",
                "--idle-timeout",
                "[default: 30s]",
            ],
        ),
        (
            "connect",
            &[
                "--relay",
                "--relay-cert",
                "--token-file",
                "--token",
                "--host",
                "--config",
                "client.toml",
                "--keep-alive",
                "[default: 10s]",
                "--idle-timeout",
                "[default: 30s]",
            ],
        ),
        (
            "token",
            &[
                "--secret-file",
                "--secret",
                "--role",
                "--host",
                "--ttl",
                "[default: 1h]",
                "--audience",
                "[default: shellrelay]",
                "--jti",
            ],
        ),
        ("certs", &["--out", "[default: certs]", "--name", "--force"]),
        (
            "demo",
            &[
                "--target",
                "[default: 127.0.0.1:22]",
                "--listen",
                "[default: 127.0.0.1:2222]",
            ],
        ),
        ("status", &["--metrics", "[default: 127.0.0.1:9100]"]),
    ];
    for (sub, needles) in cases {
        let out = run(&[sub, "--help"]).await;
        assert!(out.status.success(), "{sub} --help failed: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{sub} --help wrote to stderr: {out:?}"
        );
        let help = squash(&out.stdout);
        assert!(
            help.contains(&format!("Usage: shellrelay {sub}")),
            "{sub} --help has no usage line: {out:?}"
        );
        for needle in *needles {
            assert!(
                help.contains(needle),
                "{sub} --help does not mention {needle:?}: {out:?}"
            );
        }
    }

    let out = run(&["--help"]).await;
    assert!(out.status.success(), "--help failed: {out:?}");
    for (sub, _) in cases {
        assert!(
            out.stdout.contains(sub),
            "--help does not list {sub}: {out:?}"
        );
    }
    let out = run(&["--version"]).await;
    assert!(out.status.success(), "--version failed: {out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("shellrelay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn wrong_flags_are_short_usage_errors() {
    let mut cases: Vec<Vec<&str>> = [
        "relay", "host", "client", "connect", "token", "certs", "demo",
    ]
    .iter()
    .map(|sub| vec![*sub, "--no-such-flag"])
    .collect();
    cases.push(vec!["no-such-command"]);
    cases.push(vec![]);
    cases.push(vec![
        "token",
        "--secret-file",
        "s",
        "--role",
        "admin",
        "--host",
        "x",
    ]);
    cases.push(vec![
        "relay",
        "--secret",
        "0123456789abcdef",
        "--listen",
        "nowhere",
    ]);
    for args in cases {
        let out = run(&args).await;
        assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: clap's usage exit code: {out:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout: {out:?}");
        assert!(
            out.stderr.starts_with("error: ") || out.stderr.starts_with("Relay ssh"),
            "{args:?}: expected an error or the usage: {out:?}"
        );
        // The bare command prints the short help: a line per subcommand.
        assert!(
            out.stderr.lines().count() <= 30,
            "{args:?}: too long: {out:?}"
        );
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(!out.stderr.contains(bad), "{args:?}: {bad}: {out:?}");
        }
    }
}

#[tokio::test]
async fn missing_secret_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-secret");
    let missing = path_str(&missing);
    let out = run(&[
        "token",
        "--secret-file",
        missing,
        "--role",
        "host",
        "--host",
        "lab1",
    ])
    .await;
    assert_error_line(&out, &[missing]);

    let cert = dir.path().join("relay.crt");
    let key = dir.path().join("relay.key");
    let out = run(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--secret-file",
        missing,
        "--cert",
        path_str(&cert),
        "--key",
        path_str(&key),
    ])
    .await;
    assert_error_line(&out, &[missing]);
    assert!(
        !cert.exists() && !key.exists(),
        "a relay without a secret wrote a certificate"
    );
}

#[tokio::test]
async fn missing_token_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, _) = make_certs(dir.path()).await;
    let missing = dir.path().join("no-such.token");
    let missing = path_str(&missing);
    for role in ["host", "client"] {
        let mut args = vec![
            role,
            "--relay",
            "127.0.0.1:9",
            "--relay-cert",
            path_str(&cert),
            "--token-file",
            missing,
        ];
        if role == "client" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let out = run(&args).await;
        assert_error_line(&out, &[missing]);
    }
}

#[tokio::test]
async fn missing_relay_cert_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let token = dir.path().join("host.token");
    std::fs::write(&token, mint_token(&secret, "host", "lab1", "1h").await).expect("write token");
    let missing = dir.path().join("no-such.crt");
    let missing = path_str(&missing);
    for role in ["host", "client"] {
        let mut args = vec![
            role,
            "--relay",
            "127.0.0.1:9",
            "--relay-cert",
            missing,
            "--token-file",
            path_str(&token),
        ];
        if role == "client" {
            args.extend(["--listen", "127.0.0.1:0"]);
        }
        let out = run(&args).await;
        assert_error_line(&out, &[missing]);
    }

    // The relay's own certificate: a key without its certificate is an
    // error, not a reason to make a new pair over the old key.
    let key = dir.path().join("relay.key");
    std::fs::write(&key, "not really a key").expect("write key");
    let out = run(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--secret-file",
        path_str(&secret),
        "--cert",
        missing,
        "--key",
        path_str(&key),
    ])
    .await;
    assert_error_line(&out, &[missing]);
    assert_eq!(
        std::fs::read_to_string(&key).expect("read key"),
        "not really a key"
    );
}

#[tokio::test]
async fn token_is_a_signed_jwt_with_the_asked_claims() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let before = unix_now();
    let jwt = mint_token(&secret, "host", "lab1", "1h").await;
    let after = unix_now();
    let (header, claims) = decode_jwt(&jwt, SECRET);
    assert_eq!(header["alg"], "HS256", "{header}");
    assert_eq!(claims["sub"], "lab1", "{claims}");
    assert_eq!(claims["role"], "host", "{claims}");
    assert_eq!(claims["aud"], "shellrelay", "{claims}");
    let iat = claims["iat"].as_u64().expect("iat is a number");
    let exp = claims["exp"].as_u64().expect("exp is a number");
    assert_eq!(exp - iat, 3600, "{claims}");
    assert_eq!(claims["nbf"].as_u64(), Some(iat), "{claims}");
    assert!(
        before <= iat && iat <= after,
        "iat {iat} not in [{before}, {after}]"
    );
    // A random token id, which a revocation file can name.
    let jti = claims["jti"].as_str().expect("jti is a string");
    assert!(
        jti.len() == 32 && jti.bytes().all(|b| b.is_ascii_hexdigit()),
        "{claims}"
    );
}

#[tokio::test]
async fn token_ttl_takes_durations_and_refuses_nonsense() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let key = SECRET;
    for (ttl, secs) in [("30s", 30), ("15m", 900), ("1h", 3600), ("2days", 172_800)] {
        let jwt = mint_token(&secret, "client", "lab1", ttl).await;
        let (_, claims) = decode_jwt(&jwt, key);
        assert_eq!(claims["role"], "client", "{claims}");
        let iat = claims["iat"].as_u64().expect("iat");
        let exp = claims["exp"].as_u64().expect("exp");
        assert_eq!(exp - iat, secs, "--ttl {ttl}: {claims}");
    }
    for ttl in ["banana", "0s", "-5m", ""] {
        let out = run(&[
            "token",
            "--secret-file",
            path_str(&secret),
            "--role",
            "host",
            "--host",
            "lab1",
            // `=` so that "-5m" reaches the parser instead of looking like a flag.
            &format!("--ttl={ttl}"),
        ])
        .await;
        assert!(!out.status.success(), "--ttl {ttl:?} succeeded: {out:?}");
        assert!(
            out.stdout.is_empty(),
            "--ttl {ttl:?} printed a token: {out:?}"
        );
        assert!(out.stderr.starts_with("error: "), "--ttl {ttl:?}: {out:?}");
        assert!(out.stderr.contains("ttl"), "--ttl {ttl:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "--ttl {ttl:?}: {out:?}");
    }
}

#[tokio::test]
async fn short_secret_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("short");
    // Fifteen bytes, plus a newline that does not count.
    std::fs::write(&secret, "0123456789abcde\n").expect("write secret");
    make_private(&secret);
    let out = run(&[
        "token",
        "--secret-file",
        path_str(&secret),
        "--role",
        "host",
        "--host",
        "lab1",
    ])
    .await;
    assert_error_line(&out, &[path_str(&secret)]);
    assert!(out.stderr.contains("15 bytes"), "{out:?}");
    assert!(out.stderr.contains("at least 16"), "{out:?}");

    let out = run(&[
        "token", "--secret", "tooshort", "--role", "host", "--host", "lab1",
    ])
    .await;
    assert_error_line(&out, &["at least 16"]);
}

#[tokio::test]
async fn secret_file_can_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let mut cmd = shellrelay(&[
        "token", "--role", "client", "--host", "lab1", "--ttl", "15m",
    ]);
    cmd.env("SHELLRELAY_SECRET_FILE", &secret);
    let out = finish(cmd).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout.lines().count(), 1, "{out:?}");
    let (_, claims) = decode_jwt(out.stdout.trim_end(), SECRET);
    assert_eq!(claims["sub"], "lab1", "{claims}");
    assert_eq!(claims["role"], "client", "{claims}");
    let iat = claims["iat"].as_u64().expect("iat");
    assert_eq!(claims["exp"].as_u64(), Some(iat + 900), "{claims}");

    // Without the flag or the variable, the secret is asked for.
    let out = run(&["token", "--role", "client", "--host", "lab1"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("--secret-file"), "{out:?}");
}

#[tokio::test]
async fn certs_writes_a_pair_and_replaces_it_only_with_force() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().join("out");
    let (cert, key) = (out_dir.join("relay.crt"), out_dir.join("relay.key"));
    let args = [
        "certs",
        "--out",
        path_str(&out_dir),
        "--name",
        "relay.example.org",
    ];

    let out = run(&args).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    let cert_pem = std::fs::read_to_string(&cert).expect("read cert");
    let key_pem = std::fs::read_to_string(&key).expect("read key");
    assert!(
        cert_pem.starts_with("-----BEGIN CERTIFICATE-----"),
        "{cert_pem}"
    );
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "not PKCS#8 PEM"
    );
    assert_eq!(
        mode(&key),
        0o600,
        "the key must be readable by its owner only"
    );
    let fingerprint_line = out
        .stdout
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("sha-256 fingerprint: "))
        .unwrap_or_else(|| panic!("no sha-256 fingerprint printed: {out:?}"));
    let fingerprint = &fingerprint_line["sha-256 fingerprint: ".len()..];
    assert!(is_fingerprint(fingerprint), "{fingerprint_line}");
    assert!(out.stdout.contains("relay.example.org"), "{out:?}");

    let modified = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .expect("mtime")
    };
    let (cert_time, key_time) = (modified(&cert), modified(&key));
    let out = run(&args).await;
    assert_error_line(&out, &["--force"]);
    assert_eq!(std::fs::read_to_string(&cert).expect("cert"), cert_pem);
    assert_eq!(std::fs::read_to_string(&key).expect("key"), key_pem);
    assert_eq!(modified(&cert), cert_time, "cert was touched");
    assert_eq!(modified(&key), key_time, "key was touched");

    let mut forced = args.to_vec();
    forced.push("--force");
    let out = run(&forced).await;
    assert!(out.status.success(), "{out:?}");
    assert_ne!(std::fs::read_to_string(&cert).expect("cert"), cert_pem);
    assert_ne!(std::fs::read_to_string(&key).expect("key"), key_pem);
    assert_eq!(mode(&key), 0o600);
    assert!(
        !out.stdout.contains(fingerprint),
        "same fingerprint after --force"
    );
}

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
    let mut client = Proc::spawn(
        "client",
        shellrelay(&[
            "client",
            "--relay",
            &relay_at,
            "--relay-cert",
            path_str(&cert),
            "--token-file",
            path_str(&token),
            "--listen",
            "127.0.0.1:0",
        ]),
    );
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
async fn a_secret_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(&[
        "token",
        "--secret-file",
        path_str(&secret),
        "--role",
        "host",
        "--host",
        "lab1",
    ])
    .await;
    assert_error_line(&out, &[path_str(&secret)]);
    assert!(out.stderr.contains("readable by other users"), "{out:?}");
    assert!(out.stderr.contains("chmod 600"), "{out:?}");
}

#[tokio::test]
async fn every_role_stops_gracefully_and_the_relay_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) = start_relay(&certs, &secret).await;
    let relay_at = relay_addr.to_string();
    let cert = certs.join("relay.crt");
    let host_token = dir.path().join("host.token");
    std::fs::write(&host_token, mint_token(&secret, "host", "lab1", "1h").await)
        .expect("write token");
    make_private(&host_token);
    let client_token = dir.path().join("client.token");
    std::fs::write(
        &client_token,
        mint_token(&secret, "client", "lab1", "1h").await,
    )
    .expect("write token");
    make_private(&client_token);
    let peer = |role: &'static str, token: &Path, extra: &[&str]| {
        let mut args = vec![
            role,
            "--relay",
            &relay_at,
            "--relay-cert",
            path_str(&cert),
            "--token-file",
            path_str(token),
        ];
        args.extend_from_slice(extra);
        Proc::spawn(role, shellrelay(&args))
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
async fn token_names_several_hosts_and_signs_with_a_generated_key_under_a_kid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let out = run(&[
        "token",
        "--secret-file",
        path_str(&secret),
        "--role",
        "client",
        "--host",
        "lab-1,lab-2",
        "--host",
        "web-*",
        "--subject",
        "alice",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let (_, claims) = decode_jwt(out.stdout.trim_end(), SECRET);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(
        claims["hosts"],
        serde_json::json!(["lab-1", "lab-2", "web-*"]),
        "{claims}"
    );
    let out = run(&[
        "token",
        "--secret-file",
        path_str(&secret),
        "--role",
        "host",
        "--host",
        "lab-*",
    ])
    .await;
    assert_error_line(&out, &["a host token names exactly one host id"]);

    let key = dir.path().join("issuer");
    let out = run(&["keygen", "--kind", "ed25519", "--out", path_str(&key)]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.contains("issuer.pub"), "{out:?}");
    assert_eq!(mode(&key) & 0o077, 0, "private key must be private");
    let out = run(&[
        "token",
        "--signing-key",
        path_str(&key),
        "--kid",
        "issuer",
        "--role",
        "host",
        "--host",
        "lab1",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let jwt = out.stdout.trim_end();
    let header: serde_json::Value =
        serde_json::from_slice(&base64url(jwt.split('.').next().unwrap_or_default()))
            .expect("header is JSON");
    assert_eq!(header["alg"], "EdDSA", "{header}");
    assert_eq!(header["kid"], "issuer", "{header}");

    // A relay that knows the issuer's public key by its kid, from a
    // settings file, accepts that token; SIGHUP re-reads its revocations.
    let (cert, relay_key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    let revoked = dir.path().join("revoked");
    std::fs::write(&revoked, "jti nobody\n").expect("write revocations");
    let settings = dir.path().join("relay.toml");
    std::fs::write(
        &settings,
        format!(
            "listen = \"127.0.0.1:0\"\ncert = {cert:?}\nkey = {relay_key:?}\nrevocation_file = {revoked:?}\n\n[token_keys]\nissuer = {:?}\n",
            dir.path().join("issuer.pub")
        ),
    )
    .expect("write settings");
    let mut relay = Proc::spawn(
        "relay",
        shellrelay(&["relay", "--config", path_str(&settings)]),
    );
    relay.wait_for_text("token keys by key id").await;
    let line = relay.wait_for_text("relay listening").await;
    let addr = addr_field(&line, "addr");
    let token_file = dir.path().join("host.token");
    std::fs::write(&token_file, jwt).expect("write token");
    make_private(&token_file);
    let mut host = Proc::spawn(
        "host",
        shellrelay(&[
            "host",
            "--relay",
            &addr.to_string(),
            "--relay-cert",
            path_str(&cert),
            "--token-file",
            path_str(&token_file),
        ]),
    );
    host.wait_for_text("registered with relay").await;
    relay.signal("HUP");
    relay
        .wait_for_text("SIGHUP: revocation file re-read entries=1")
        .await;
    relay.assert_running();
    host.assert_running();
}

// ------------------------------------------- completions, man pages, units

/// Every subcommand, as completions and man pages must name them.
const SUBCOMMANDS: [&str; 11] = [
    "relay",
    "host",
    "client",
    "connect",
    "token",
    "keygen",
    "certs",
    "demo",
    "status",
    "completions",
    "man",
];

#[tokio::test]
async fn completions_for_every_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]).await;
        assert!(out.status.success(), "completions {shell}: {out:?}");
        assert!(out.stderr.is_empty(), "completions {shell}: {out:?}");
        assert!(
            out.stdout.contains("shellrelay"),
            "completions {shell}: {out:?}"
        );
        for sub in SUBCOMMANDS {
            assert!(
                out.stdout.contains(sub),
                "completions {shell} does not name {sub}: {out:?}"
            );
        }
        assert!(
            out.stdout.contains("--log-format") || out.stdout.contains("log-format"),
            "completions {shell} do not know --log-format: {out:?}"
        );
    }
    let out = run(&["completions", "tcsh"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("bash"), "lists the shells: {out:?}");
}

#[tokio::test]
async fn bash_completion_completes_subcommands_flags_and_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = run(&["completions", "bash"]).await;
    assert!(out.status.success(), "{out:?}");
    let script = dir.path().join("shellrelay.bash");
    std::fs::write(&script, &out.stdout).expect("write completion script");
    // What bash does on TAB: the words so far, the index of the word under
    // the cursor, then the completion function with (command, word, previous word).
    let complete = |words: &[&str]| {
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let cword = words.len() - 1;
        let prev = words[cword.saturating_sub(1)];
        format!(
            "COMP_WORDS=({}); COMP_CWORD={cword}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
             _shellrelay shellrelay '{}' '{prev}'; echo \"${{COMPREPLY[*]}}\"",
            quoted.join(" "),
            words.join(" "),
            words[cword],
        )
    };
    let cases: &[(&[&str], &[&str])] = &[
        (&["shellrelay", "re"], &["relay"]),
        (&["shellrelay", "co"], &["completions", "connect"]),
        (
            &["shellrelay", "relay", "--se"],
            &["--secret-file", "--secret"],
        ),
        (&["shellrelay", "host", "--token-f"], &["--token-file"]),
        (&["shellrelay", "--log-format", ""], &["text", "json"]),
        (&["shellrelay", "completions", "b"], &["bash"]),
    ];
    for (words, expected) in cases {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("source \"$1\" && {}", complete(words)))
            .arg("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = finish(cmd).await;
        assert!(out.status.success(), "{words:?}: {out:?}");
        let mut got: Vec<&str> = out.stdout.split_whitespace().collect();
        let mut want = expected.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want, "completing {words:?}: {out:?}");
    }
}

#[tokio::test]
async fn man_prints_roff_and_writes_one_page_per_subcommand() {
    let out = run(&["man"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert!(
        out.stdout.starts_with(".ie") || out.stdout.contains("\n.TH "),
        "not roff: {out:?}"
    );
    assert!(out.stdout.contains(".TH shellrelay 1"), "{out:?}");
    assert!(out.stdout.contains(".SH SYNOPSIS"), "{out:?}");
    for sub in SUBCOMMANDS {
        assert!(out.stdout.contains(sub), "man does not list {sub}: {out:?}");
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let man1 = dir.path().join("share/man/man1");
    let out = run(&["man", "--dir", path_str(&man1)]).await;
    assert!(out.status.success(), "{out:?}");
    let mut pages: Vec<String> = std::fs::read_dir(&man1)
        .expect("read the man page directory")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    pages.sort();
    let mut expected: Vec<String> = SUBCOMMANDS
        .iter()
        .map(|sub| format!("shellrelay-{sub}.1"))
        .chain(["shellrelay.1".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(pages, expected, "{out:?}");
    for page in &pages {
        let path = man1.join(page);
        assert!(
            out.stdout.contains(path_str(&path)),
            "{page} is not reported: {out:?}"
        );
        let roff = std::fs::read_to_string(&path).expect("read man page");
        let title = page.trim_end_matches(".1");
        assert!(
            roff.contains(&format!(".TH {title} 1")),
            "{page} has no title line:\n{roff}"
        );
    }
    let relay = std::fs::read_to_string(man1.join("shellrelay-relay.1")).expect("read page");
    for flag in ["secret\\-file", "listen", "cert", "log\\-format"] {
        assert!(
            relay.contains(flag),
            "shellrelay-relay.1 lacks {flag}:\n{relay}"
        );
    }
}

/// The example units, sorted by name.
fn unit_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    units
}

/// A unit's `Key=value` settings in order, continuation lines joined and
/// comments left out.
fn unit_settings(text: &str) -> Vec<(String, String)> {
    let mut settings = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with(['#', ';', '['])) {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let (key, value) = pending
            .split_once('=')
            .unwrap_or_else(|| panic!("not a setting: {pending:?}"));
        settings.push((key.trim().to_owned(), value.trim().to_owned()));
        pending.clear();
    }
    settings
}

#[tokio::test]
async fn systemd_units_start_the_binary_with_flags_it_accepts() {
    use clap::Parser;
    use shellrelay::cli::{Cli, Command as Sub};

    let units = unit_files();
    let names: Vec<String> = units
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["shellrelay-host.service", "shellrelay-relay.service"],
        "the example units"
    );
    for unit in &units {
        let name = unit
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(unit).expect("read unit");
        let settings = unit_settings(&text);
        let values = |key: &str| -> Vec<&str> {
            settings
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        for (key, value) in [
            ("DynamicUser", "yes"),
            ("NoNewPrivileges", "yes"),
            ("Restart", "on-failure"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("SystemCallFilter", "@system-service"),
            ("MemoryDenyWriteExecute", "yes"),
            ("LockPersonality", "yes"),
        ] {
            assert!(
                values(key).contains(&value),
                "{name}: expected {key}={value}"
            );
        }
        assert_eq!(values("RestartSec").len(), 1, "{name}: RestartSec");

        let exec = values("ExecStart");
        assert_eq!(exec.len(), 1, "{name}: one ExecStart= line");
        let exec = exec[0];
        // Every credential the command reads is one the unit loads.
        let loaded: Vec<&str> = values("LoadCredential")
            .iter()
            .map(|v| v.split_once(':').map_or(*v, |(id, _)| id))
            .collect();
        for word in exec.split_whitespace() {
            if let Some(id) = word.strip_prefix("%d/") {
                assert!(loaded.contains(&id), "{name}: %d/{id} is not loaded");
                assert!(
                    text.contains(&format!("LoadCredential={id}:/etc/shellrelay/{id}")),
                    "{name}: {id} should come from /etc/shellrelay/{id}"
                );
            }
            if let Some(path) = word.strip_prefix("%S/") {
                let state = path.split('/').next().expect("a directory");
                assert!(
                    values("StateDirectory").contains(&state),
                    "{name}: %S/{state} is not a StateDirectory="
                );
            }
        }

        // The command line after systemd expands the specifiers.
        let expanded = exec
            .replace("%d", "/run/credentials/unit")
            .replace("%S", "/var/lib");
        assert!(
            !expanded.contains('%'),
            "{name}: a specifier this test does not know: {exec}"
        );
        let mut args: Vec<&str> = expanded.split_whitespace().collect();
        assert!(
            args[0].starts_with('/') && args[0].ends_with("/shellrelay"),
            "{name}: ExecStart= should run the installed binary by its full path: {exec}"
        );
        args[0] = "shellrelay";
        let cli = Cli::try_parse_from(&args).unwrap_or_else(|e| {
            panic!("{name}: ExecStart= does not parse (or a SHELLRELAY_* variable of this environment conflicts): {exec}\n{e}")
        });
        let role_matches = match name.as_str() {
            "shellrelay-relay.service" => matches!(cli.command, Sub::Relay(_)),
            "shellrelay-host.service" => matches!(cli.command, Sub::Host(_)),
            _ => false,
        };
        assert!(role_matches, "{name} runs {:?}", cli.command);
    }
}

#[tokio::test]
async fn systemd_units_pass_systemd_analyze_verify() {
    let have = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let units = Path::new("/usr/lib/systemd/system");
    if !have || !units.is_dir() {
        // CI installs systemd (.ci/run): there, missing it is a failure.
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze or {} is missing under CI=true; .ci/run installs systemd",
            units.display()
        );
        eprintln!(
            "SKIPPED systemd_units_pass_systemd_analyze_verify: no systemd-analyze or no {} \
             (apt-get install systemd)",
            units.display()
        );
        return;
    }
    // A root of its own: the system's units (for the targets the examples
    // name), an executable at the path ExecStart= names, and the examples.
    let root = tempfile::tempdir().expect("temp dir");
    let r = root.path();
    for d in [
        "usr/lib/systemd",
        "usr/local/bin",
        "bin",
        "etc/systemd/system",
    ] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    let mut copy = Command::new("cp");
    copy.arg("-r")
        .arg(units)
        .arg(r.join("usr/lib/systemd/"))
        .stdin(Stdio::null());
    let out = finish(copy).await;
    assert!(out.status.success(), "copy the system's units: {out:?}");
    // Stand-ins for the executables ExecStart= and ExecReload= name.
    for bin in ["usr/local/bin/shellrelay", "bin/kill"] {
        let bin = r.join(bin);
        std::fs::write(&bin, "#!/bin/sh\n").expect("write stand-in binary");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let mut names = Vec::new();
    for unit in unit_files() {
        let name = unit.file_name().expect("name").to_owned();
        std::fs::copy(&unit, r.join("etc/systemd/system").join(&name)).expect("copy unit");
        names.push(name);
    }
    let mut verify = Command::new("systemd-analyze");
    verify
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", path_str(r)))
        .args(&names)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = finish(verify).await;
    // Unknown keys and bad values are warnings with exit status 0: any
    // output at all is a finding.
    assert!(out.status.success(), "{out:?}");
    assert!(out.stderr.trim().is_empty(), "{out:?}");
    assert!(out.stdout.trim().is_empty(), "{out:?}");
}

// ------------------------------------------------------------- JSON logs

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
    // Every line about the session, in any role, names it and its host.
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
    for (value, line) in &about_session {
        assert_eq!(value["span"]["name"], "session", "{line}");
        assert_eq!(value["span"]["session"].as_u64(), Some(id), "{line}");
        assert_eq!(value["span"]["host"], "demo", "{line}");
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
    let mut cmd = shellrelay(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--secret-file",
        path_str(&secret),
        "--cert",
        path_str(&certs.join("relay.crt")),
        "--key",
        path_str(&certs.join("relay.key")),
    ]);
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

#[tokio::test]
async fn status_prints_the_hosts_online_from_the_relays_metrics_endpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let certs = dir.path().join("certs");
    let (mut relay, relay_addr) =
        start_relay_with(&certs, &secret, &["--metrics", "127.0.0.1:0"]).await;
    let line = relay.wait_for_text("metrics listening").await;
    let metrics = addr_field(&line, "addr");
    assert_eq!(metrics.ip().to_string(), "127.0.0.1", "{line}");
    assert_ne!(metrics.port(), 0, "{line}");
    let metrics = metrics.to_string();

    let out = run(&["status", "--metrics", &metrics]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "no hosts online\n", "{out:?}");

    let token = dir.path().join("host.token");
    std::fs::write(&token, mint_token(&secret, "host", "lab1", "1h").await).expect("write token");
    make_private(&token);
    let mut host = Proc::spawn(
        "host",
        shellrelay(&[
            "host",
            "--relay",
            &relay_addr.to_string(),
            "--relay-cert",
            path_str(&certs.join("relay.crt")),
            "--token-file",
            path_str(&token),
            "--target",
            "127.0.0.1:9",
        ]),
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
            "SESSIONS",
            "BYTES TO HOST",
            "BYTES TO CLIENT"
        ],
        "{out:?}"
    );
    let row = &lines[1];
    assert_eq!(row.len(), 6, "{out:?}");
    assert_eq!(row[0], "lab1", "{out:?}");
    assert!(
        row[1].len() == "2024-01-01T00:00:00Z".len() && row[1].ends_with('Z'),
        "since is RFC 3339: {out:?}"
    );
    let remote: SocketAddr = row[2].parse().expect("remote is an address");
    assert_eq!(remote.ip().to_string(), "127.0.0.1", "{out:?}");
    assert_eq!(&row[3..], ["0", "0", "0"], "{out:?}");

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
