//! The `token` and `keygen` subcommands of the real `shellrelay` binary:
//! signed claims, lifetimes, the secret from the environment, several
//! hosts, and keys named by a key id that a relay process accepts.
#![cfg(unix)]

mod support;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use support::bin::*;
use support::proc::{addr_field, Proc};
use support::SECRET;

/// Checks `jwt` is three non-empty parts whose signature is HMAC-SHA256
/// over the secret, and returns its header and claims.
fn decode_jwt(jwt: &str, secret: &[u8]) -> (Header, serde_json::Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {jwt:?}");
    assert!(
        parts.iter().all(|p| !p.is_empty()),
        "empty JWT part: {jwt:?}"
    );
    // Only the signature: the tests check the claims themselves.
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode(jwt, &DecodingKey::from_secret(secret), &validation)
        .unwrap_or_else(|e| {
            panic!("not JSON signed with HMAC-SHA256 over the secret ({e}): {jwt:?}")
        });
    (data.header, data.claims)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[tokio::test]
async fn token_is_a_signed_jwt_with_the_asked_claims() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let before = unix_now();
    let jwt = mint_token(&secret, "host", "lab1", "1h").await;
    let after = unix_now();
    let (header, claims) = decode_jwt(&jwt, SECRET);
    assert_eq!(header.alg, Algorithm::HS256, "{header:?}");
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
async fn token_out_writes_a_file_only_its_owner_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let out_file = dir.path().join("host.token");
    // Even over a file that others could read.
    std::fs::write(&out_file, "old").unwrap();
    let mut args = token_args(&secret, "host", "lab1");
    args.extend(["--out", path_str(&out_file)]);
    let out = run(&args).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "the token is not printed: {out:?}");
    assert_eq!(mode(&out_file), 0o600);
    let jwt = std::fs::read_to_string(&out_file).unwrap();
    let (_, claims) = decode_jwt(jwt.trim(), SECRET);
    assert_eq!(claims["sub"], "lab1", "{claims}");
    // `keygen --out` and `certs --out` read SHELLRELAY_OUT; `token` does
    // not, so a variable set for them never overwrites the secret.
    let mut cmd = shellrelay(&token_args(&secret, "host", "lab1"));
    cmd.env("SHELLRELAY_OUT", &secret);
    let out = finish(cmd).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(decode_jwt(out.stdout.trim(), SECRET).1["sub"], "lab1");
    assert_eq!(std::fs::read(&secret).unwrap(), [SECRET, b"\n"].concat());
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
        // `=` so that "-5m" reaches the parser instead of looking like a flag.
        let flag = format!("--ttl={ttl}");
        let mut args = token_args(&secret, "host", "lab1");
        args.push(&flag);
        let out = run(&args).await;
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
async fn token_names_several_hosts_and_signs_with_a_generated_key_under_a_kid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = write_secret(dir.path());
    let mut args = token_args(&secret, "client", "lab-1,lab-2");
    args.extend(["--host", "web-*", "--subject", "alice"]);
    let out = run(&args).await;
    assert!(out.status.success(), "{out:?}");
    let (_, claims) = decode_jwt(out.stdout.trim_end(), SECRET);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(
        claims["hosts"],
        serde_json::json!(["lab-1", "lab-2", "web-*"]),
        "{claims}"
    );
    let out = run(&token_args(&secret, "host", "lab-*")).await;
    assert_error_line(&out, &["a host token names exactly one host id"]);
    // A client token for one host, with a subject: the subject is kept.
    let token = |role: &'static str| {
        let mut args = token_args(&secret, role, "lab1");
        args.extend(["--subject", "alice"]);
        async move { run(&args).await }
    };
    let out = token("client").await;
    assert!(out.status.success(), "{out:?}");
    let (_, claims) = decode_jwt(out.stdout.trim_end(), SECRET);
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["hosts"], serde_json::json!(["lab1"]), "{claims}");
    let out = token("host").await;
    assert_error_line(
        &out,
        &["--subject (or SHELLRELAY_SUBJECT) is for client tokens"],
    );

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
    let header = jsonwebtoken::decode_header(jwt).expect("the header is JSON");
    assert_eq!(header.alg, Algorithm::EdDSA, "{header:?}");
    assert_eq!(header.kid.as_deref(), Some("issuer"), "{header:?}");

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
    let relay_at = addr.to_string();
    let mut host = Proc::spawn(
        "host",
        shellrelay(&peer_args("host", &relay_at, &cert, &token_file)),
    );
    host.wait_for_text("registered with relay").await;
    relay.signal("HUP");
    relay
        .wait_for_text("SIGHUP: revocation file re-read entries=1")
        .await;
    relay.assert_running();
    host.assert_running();
}

#[tokio::test]
async fn keygen_key_pairs_are_read_by_openssl() {
    let Some(openssl) = support::sshd::required_program("openssl", "openssl") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    for kind in ["ed25519", "es256"] {
        let key = dir.path().join(kind);
        let out = run(&["keygen", "--kind", kind, "--out", path_str(&key)]).await;
        assert!(out.status.success(), "{out:?}");
        // PKCS#8 v1 (RFC 8410) for Ed25519: OpenSSL 3 refuses ring's v2.
        let public = std::process::Command::new(&openssl)
            .args(["pkey", "-pubout", "-in", path_str(&key)])
            .output()
            .expect("run openssl");
        assert!(
            public.status.success(),
            "openssl cannot read the {kind} key: {}",
            String::from_utf8_lossy(&public.stderr)
        );
        let written =
            std::fs::read_to_string(format!("{}.pub", key.display())).expect("read the public key");
        assert_eq!(
            String::from_utf8_lossy(&public.stdout),
            written,
            "the {kind} public key keygen wrote is not the private key's"
        );
    }
}
