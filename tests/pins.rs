//! Pinning the relay by its public key (`--relay-pin`), with real
//! processes: the relay logs its pin; a peer with the right pin trusts a
//! certificate whose names do not match the address it dials; a wrong pin
//! is refused in one line that shows both pins.

mod support;

use std::path::Path;
use std::process::Stdio;

use shellrelay::pin::Pin;
use support::bin::{
    assert_error_line, finish, make_private, mint_token, path_str, shellrelay, start_relay,
    write_secret,
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

/// Writes `token` to `dir/name`, readable by its owner only.
fn token_file(dir: &Path, name: &str, token: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, token).unwrap();
    make_private(&path);
    path
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
    let host_token = mint_token(&secret, "host", "lab1", "1h").await;
    let host_token = token_file(dir.path(), "host.token", &host_token);
    let target = greeting_server().await.to_string();
    let mut host = Proc::spawn(
        "host",
        shellrelay(&[
            "host",
            "--relay",
            &relay_at,
            "--relay-pin",
            &pin_text,
            "--token-file",
            path_str(&host_token),
            "--target",
            &target,
        ]),
    );
    host.wait_for_text("registered with relay").await;
    let client_token = mint_token(&secret, "client", "lab1", "1h").await;
    let client_token = token_file(dir.path(), "client.token", &client_token);
    let connect = |pin: &str| {
        let mut cmd = shellrelay(&[
            "connect",
            "--relay",
            &relay_at,
            "--relay-pin",
            pin,
            "--token-file",
            path_str(&client_token),
        ]);
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
    // A wrong pin: refused, in one line naming both keys.
    let other = certificate_for(tempfile::tempdir().unwrap().path(), "x.example");
    let out = finish(connect(&other.to_string())).await;
    assert_error_line(&out, &[&pin_text, &other.to_string(), "pin the new one"]);
    host.terminate().await;
    relay.terminate().await;
}
