//! Pinning the relay by its public key (`--relay-pin`), with real
//! processes: the relay logs its pin; a peer with the right pin trusts a
//! certificate whose names do not match the address it dials; a wrong pin
//! is refused in one line that shows both pins.

mod support;

use std::path::Path;
use std::process::Stdio;

use shellrelay::net::tls::pin::Pin;
use support::bin::{
    assert_error_line, finish, make_private, path_str, peer_args, pinned_peer_args, shellrelay,
    start_relay, token_file, write_secret,
};
use support::proc::{field, Proc};
use support::traffic::*;
use support::*;
use tokio::io::AsyncReadExt;

/// Writes a self-signed certificate for `name` alone, and its key, where
/// the relay looks for them in `dir`; returns the key's pin.
fn certificate_for(dir: &Path, name: &str) -> Pin {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("relay.crt"), cert.pem()).unwrap();
    let key_path = dir.join("relay.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    make_private(&key_path);
    Pin::of(cert.der()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_key_is_trusted_whatever_the_names_and_a_wrong_pin_shows_both() {
    let dir = tempfile::tempdir().unwrap();
    let pin = certificate_for(dir.path(), "elsewhere.example");
    let secret = write_secret(dir.path());
    let (mut relay, addr) = start_relay(dir.path(), &secret).await;
    let line = relay.logged_text("loaded certificate").await;
    assert_eq!(
        field(&line, "pin"),
        Some(pin.to_string().as_str()),
        "{line}"
    );
    let (relay_at, pin_text) = (addr.to_string(), pin.to_string());
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
    let target = greeting_server().await.to_string();
    let host_cmd = |pin: &str| {
        let mut cmd = shellrelay(&pinned_peer_args("host", &relay_at, pin, &host_token));
        cmd.args(["--target", &target]);
        cmd
    };
    let mut host = Proc::spawn("host", host_cmd(&pin_text));
    host.wait_for_text("registered with relay").await;
    let client_token = token_file(&secret, dir.path(), "client.token", "client", "lab1").await;
    let connect = |pin: &str| {
        let mut cmd = shellrelay(&pinned_peer_args("connect", &relay_at, pin, &client_token));
        cmd.stdin(Stdio::piped());
        cmd
    };
    // The right pin: the certificate names elsewhere.example, the address
    // dialled is 127.0.0.1, and the session works.
    let mut child = connect(&pin_text).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut greeting = vec![0u8; GREETING.len()];
    within(WAIT, "the greeting", stdout.read_exact(&mut greeting))
        .await
        .unwrap();
    assert_eq!(greeting, GREETING);
    drop(child.stdin.take());
    let status = within(WAIT, "connect to exit", child.wait()).await.unwrap();
    assert!(status.success(), "{status}");
    // A wrong pin: refused, in one line naming both keys, over either
    // transport, with none of the TLS stack's wrapping.
    let other_dir = tempfile::tempdir().unwrap();
    let other = certificate_for(other_dir.path(), "x.example");
    for via in ["quic", "tcp", "auto"] {
        let mut cmd = connect(&other.to_string());
        cmd.args(["--transport", via]);
        let out = finish(cmd).await;
        assert_error_line(&out, &[&pin_text, &other.to_string(), "pin the new one"]);
        assert!(!out.stderr.contains("OtherError"), "{via}: {out:?}");
    }
    // The relay's own certificate file, dialled by a name it lacks: one
    // line with the key it showed, and both ways out.
    let by_cert = |cert: &Path, via: &str| {
        let mut cmd = shellrelay(&peer_args("connect", &relay_at, cert, &client_token));
        cmd.args(["--transport", via]);
        cmd
    };
    for via in ["quic", "tcp"] {
        let out = finish(by_cert(&dir.path().join("relay.crt"), via)).await;
        assert_error_line(
            &out,
            &[
                "not valid for 127.0.0.1",
                "elsewhere.example",
                "--add-name 127.0.0.1",
                &format!("--relay-pin {pin_text}"),
            ],
        );
        // Another certificate pinned: the key seen and the key expected.
        let out = finish(by_cert(&other_dir.path().join("relay.crt"), via)).await;
        assert_error_line(&out, &[&pin_text, &other.to_string(), "pin the new one"]);
        assert!(!out.stderr.contains("OtherError"), "{via}: {out:?}");
    }
    // A host agent with a wrong pin says so once, however often it retries.
    let mut wrong = host_cmd(&other.to_string());
    wrong.args(["--max-backoff", "100ms"]);
    let mut wrong = Proc::spawn("host with a wrong pin", wrong);
    for _ in 0..3 {
        wrong.wait_for_text("reconnecting in").await;
    }
    let log = wrong.log();
    assert_eq!(
        log.matches("could not register with relay").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains(&pin_text) && log.contains("pin the new one"),
        "{log}"
    );
    wrong.terminate().await;
    host.terminate().await;
    relay.terminate().await;
}

/// The pin `certs` printed in `out`.
fn printed_pin(out: &support::bin::Out) -> Pin {
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("pin (for --relay-pin): "))
        .unwrap_or_else(|| panic!("no pin in {out:?}"));
    line.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_add_name_keeps_the_pin_and_the_relay_says_when_a_name_is_missing() {
    use support::bin::run;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = path_str(dir.path());
    let made = run(&["certs", "--out", out_dir, "--name", "a.example"]).await;
    assert!(made.status.success(), "{made:?}");
    let pin = printed_pin(&made);
    // A relay told of a name its certificate lacks says so, and how to add
    // it, instead of ignoring the name.
    let secret = write_secret(dir.path());
    let (mut relay, _) = start_relay(dir.path(), &secret).await;
    relay.terminate().await;
    let (mut relay, _) =
        support::bin::start_relay_with(dir.path(), &secret, &["--name", "b.example"]).await;
    let warning = relay.logged_text("not valid for b.example").await;
    assert!(warning.contains("--add-name b.example"), "{warning}");
    relay.terminate().await;
    let added = run(&["certs", "--out", out_dir, "--add-name", "b.example"]).await;
    assert!(added.status.success(), "{added:?}");
    assert!(
        added.stdout.contains("a.example") && added.stdout.contains("b.example"),
        "{added:?}"
    );
    assert_eq!(printed_pin(&added), pin, "the key and its pin stay");
    let (mut relay, _) =
        support::bin::start_relay_with(dir.path(), &secret, &["--name", "b.example"]).await;
    let line = relay.logged_text("loaded certificate").await;
    assert_eq!(
        field(&line, "pin"),
        Some(pin.to_string().as_str()),
        "{line}"
    );
    assert!(!relay.log().contains("not valid for"), "{}", relay.log());
    relay.terminate().await;
    // Nothing to add names to: an error, and nothing made.
    let empty = tempfile::tempdir().unwrap();
    let out = run(&[
        "certs",
        "--out",
        path_str(empty.path()),
        "--add-name",
        "c.example",
    ])
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("no certificate at"), "{out:?}");
    assert!(std::fs::read_dir(empty.path()).unwrap().next().is_none());
}
