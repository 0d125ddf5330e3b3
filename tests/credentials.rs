//! The files the real `shellrelay` binary reads its credentials from: a
//! missing, short or shared secret file, a missing token file or relay
//! certificate, each a one-line error; and `certs`, which writes a relay
//! key pair and replaces it only when told to.
#![cfg(unix)]

mod support;

use std::path::Path;

use support::bin::*;

#[tokio::test]
async fn missing_secret_file_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing_file = dir.path().join("no-such-secret");
    let missing = path_str(&missing_file);
    let out = run(&token_args(&missing_file, "host", "lab1")).await;
    assert_error_line(&out, &[missing]);

    let cert = dir.path().join("relay.crt");
    let key = dir.path().join("relay.key");
    let out = run(&relay_args("127.0.0.1:0", &missing_file, &cert, &key)).await;
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
    let missing_file = dir.path().join("no-such.token");
    let missing = path_str(&missing_file);
    for role in ["host", "client"] {
        let mut args = peer_args(role, "127.0.0.1:9", &cert, &missing_file);
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
    let missing_file = dir.path().join("no-such.crt");
    let missing = path_str(&missing_file);
    for role in ["host", "client"] {
        let mut args = peer_args(role, "127.0.0.1:9", &missing_file, &token);
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
    let out = run(&relay_args("127.0.0.1:0", &secret, &missing_file, &key)).await;
    assert_error_line(&out, &[missing]);
    assert_eq!(
        std::fs::read_to_string(&key).expect("read key"),
        "not really a key"
    );
}

#[tokio::test]
async fn short_secret_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("short");
    // Fifteen bytes, plus a newline that does not count.
    std::fs::write(&secret, "0123456789abcde\n").expect("write secret");
    make_private(&secret);
    let out = run(&token_args(&secret, "host", "lab1")).await;
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
async fn a_secret_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = run(&token_args(&secret, "host", "lab1")).await;
    assert_error_line(&out, &[path_str(&secret)]);
    assert!(out.stderr.contains("readable by other users"), "{out:?}");
    assert!(out.stderr.contains("chmod 600"), "{out:?}");
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
