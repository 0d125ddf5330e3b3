//! Who may reach what, end to end through an in-process relay: client
//! tokens for several hosts and patterns, verification keys chosen by
//! `kid` (rotation without downtime, public-key issuers), and revocation
//! that closes live connections; and resumes, taken only from the token
//! that opened the session, with the session's key, once.

mod support;

use std::path::Path;
use std::time::Duration;

use shellrelay::access::keys::Secret;
use shellrelay::access::keys::{self, KeyKind, KeySet, SigningKey, VerifyKey};
use shellrelay::access::token::{self, Claims, TokenSource, Verifier};
use shellrelay::client::{ClientConfig, Forwarder, OpenError, Opened};
use shellrelay::protocol::Role;
use shellrelay::protocol::{Reason, Refusal, Resume};
use shellrelay::session::resume::Position;
use support::traffic::*;
use support::*;

fn claims(role: Role, sub: &str) -> Claims {
    Claims::new(role, sub, shellrelay::ops::defaults::AUDIENCE, HOUR)
}

/// A client token for `sub` reaching `hosts`, with token id `jti`.
fn client_claims(hosts: &[&str], jti: &str) -> Claims {
    let mut c = claims(Role::Client, "alice");
    c.hosts = hosts.iter().map(|h| h.to_string()).collect();
    c.jti = Some(jti.into());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_for_several_hosts_reaches_each_of_them_and_no_other() {
    let tunnel = Tunnel::start().await;
    let echo = echo_server().await;
    let _hosts = [
        tunnel.host("lab-1", echo).await,
        tunnel.host("lab-2", echo).await,
        tunnel.host("db-1", echo).await,
        tunnel.host("web1", echo).await,
    ];
    let token = tunnel.sign(&client_claims(&["lab-*", "web?", "db-9"], "t1"));
    for host in ["lab-1", "lab-2", "web1"] {
        let (client, _peer) = tunnel.client_with(token.clone(), Some(host)).await;
        echo_roundtrip(client, 7, 256 * 1024).await;
    }
    // Hosts outside the token are refused as such, whether they are online
    // (db-1) or not (db-2, lab): the registry is not consulted first.
    for host in ["db-1", "db-2", "lab", "web10"] {
        let (reason, message) = refusal(&tunnel, Role::Client, token.clone(), Some(host)).await;
        assert_eq!(reason, Reason::BadToken, "{host}: {message}");
        assert!(
            message.contains(&format!("cannot reach host {host}")),
            "{host}: {message}"
        );
    }
    // Covered but offline: the usual reason.
    let (reason, message) = refusal(&tunnel, Role::Client, token.clone(), Some("db-9")).await;
    assert_eq!(reason, Reason::HostOffline, "{message}");
    // Several hosts and none named: the client is told to pick one.
    let (reason, message) = refusal(&tunnel, Role::Client, token, None).await;
    assert_eq!(reason, Reason::Protocol, "{message}");
    assert!(message.contains("name one with --host"), "{message}");

    // A long list is named in part, so the refusal still reaches the peer.
    let many: Vec<String> = (0..300).map(|i| format!("host-number-{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let token = tunnel.sign(&client_claims(&many, "t3"));
    let (reason, message) = refusal(&tunnel, Role::Client, token, None).await;
    assert_eq!(reason, Reason::Protocol, "{message}");
    assert!(message.contains("host-number-7, …"), "{message}");

    // One exact host in the list works without naming it.
    let token = tunnel.sign(&client_claims(&["lab-2"], "t2"));
    let (client, _peer) = tunnel.client_with(token, None).await;
    echo_roundtrip(client, 8, 64 * 1024).await;

    // A host token cannot carry a host list.
    let mut bad = claims(Role::Host, "lab-3");
    bad.hosts = vec!["lab-*".into()];
    let (reason, message) = refusal(&tunnel, Role::Host, tunnel.sign(&bad), None).await;
    assert_eq!(reason, Reason::BadToken, "{message}");
}

/// A verification key file for `kind` and the key that signs for it.
fn key_pair(dir: &Path, kind: KeyKind) -> (VerifyKey, SigningKey) {
    let out = dir.join(format!("{kind:?}"));
    let files = keys::generate(kind, &out).unwrap();
    let verify = VerifyKey::public_key_file(files.last().unwrap()).unwrap();
    (verify, SigningKey::private_key_file(&out).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_with_the_key_their_kid_names() {
    let dir = tempfile::tempdir().unwrap();
    let old = Secret::new(b"the secret of last month, 32 b.".to_vec()).unwrap();
    let (ed_verify, ed_sign) = key_pair(dir.path(), KeyKind::Ed25519);
    let (es_verify, es_sign) = key_pair(dir.path(), KeyKind::Es256);
    let tunnel = Tunnel::start_with(|c| {
        let mut set = KeySet::single(VerifyKey::secret(&Secret::new(SECRET.to_vec()).unwrap()));
        set.insert("2026-10", VerifyKey::secret(&old)).unwrap();
        set.insert("issuer-ed", ed_verify).unwrap();
        set.insert("issuer-es", es_verify).unwrap();
        c.verifier = Verifier::with_keys(set, shellrelay::ops::defaults::AUDIENCE);
        c.limits.failures_per_addr = u32::MAX;
    })
    .await;
    let echo = echo_server().await;
    // A host whose token has no kid: the default key.
    let _host = tunnel.host("lab1", echo).await;
    // A host signed by a public-key issuer.
    let host_token =
        token::mint_with(&ed_sign, Some("issuer-ed"), &claims(Role::Host, "lab2")).unwrap();
    let _host2 = tunnel.spawn_host(host_token, echo);
    within(
        WAIT,
        "lab2 to register",
        tunnel.registry.wait_host("lab2", true),
    )
    .await;

    let signed = |key: &SigningKey, kid: &str, host: &str| {
        token::mint_with(key, Some(kid), &claims(Role::Client, host)).unwrap()
    };
    let old_key = SigningKey::secret(&old);
    for (name, token) in [
        ("old secret", signed(&old_key, "2026-10", "lab1")),
        ("ed25519", signed(&ed_sign, "issuer-ed", "lab2")),
        ("p-256", signed(&es_sign, "issuer-es", "lab1")),
    ] {
        let (client, _peer) = tunnel.client_with(token, None).await;
        within(WAIT, name, echo_roundtrip(client, 3, 64 * 1024)).await;
    }
    // The right key under the wrong kid, an unknown kid, a forged kid.
    let cases = [
        (
            signed(&ed_sign, "issuer-es", "lab1"),
            "token signature is invalid",
        ),
        (
            signed(&old_key, "issuer-ed", "lab1"),
            "token signature is invalid",
        ),
        (
            signed(&old_key, "2026-09", "lab1"),
            "token key id \"2026-09\" is not known to this relay",
        ),
        (
            token::mint_with(&old_key, None, &claims(Role::Client, "lab1")).unwrap(),
            "token signature is invalid",
        ),
    ];
    for (token, words) in cases {
        let (reason, message) = refusal(&tunnel, Role::Client, token, None).await;
        assert_eq!(reason, Reason::BadToken, "{message}");
        assert!(message.contains(words), "{message:?} lacks {words:?}");
    }

    // A relay with kid keys only refuses tokens without a kid, by name.
    let strict_dir = dir.path().join("strict");
    std::fs::create_dir(&strict_dir).unwrap();
    let (only_ed, _) = key_pair(&strict_dir, KeyKind::Ed25519);
    let strict = Tunnel::start_with(|c| {
        let mut set = KeySet::default();
        set.insert("issuer-ed", only_ed).unwrap();
        c.verifier = Verifier::with_keys(set, shellrelay::ops::defaults::AUDIENCE);
    })
    .await;
    let (reason, message) = refusal(
        &strict,
        Role::Client,
        strict.token(Role::Client, "lab1", HOUR),
        None,
    )
    .await;
    assert_eq!(reason, Reason::BadToken, "{message}");
    assert!(message.contains("no key id"), "{message}");
}

/// A relay with a revocation file that starts as `text`.
async fn with_revocations(text: &str) -> (tempfile::TempDir, std::path::PathBuf, Tunnel) {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked");
    std::fs::write(&list, text).unwrap();
    let file = list.clone();
    let tunnel = Tunnel::start_with(move |c| {
        c.revocation_file = Some(file);
        c.limits.failures_per_addr = u32::MAX;
    })
    .await;
    (dir, list, tunnel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_closes_its_live_session_and_refuses_it_from_then_on() {
    let (_dir, list, tunnel) = with_revocations("# nothing revoked yet\n").await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let alice = tunnel.sign(&client_claims(&["lab1"], "alice-laptop"));
    let bob = tunnel.sign(&client_claims(&["lab1"], "bob-desktop"));
    let (alice_client, _a) = tunnel.client_with(alice.clone(), None).await;
    let (bob_client, _b) = tunnel.client_with(bob, None).await;
    let mut alice_tcp = ping(alice_client).await;
    let mut bob_tcp = ping(bob_client).await;

    std::fs::write(&list, "# stolen\njti alice-laptop\n").unwrap();
    // What SIGHUP does; the file watch would also see it within a second.
    assert_eq!(tunnel.registry.reload_revocations().unwrap(), 1);
    within(
        WAIT,
        "the revoked session to close",
        read_until_closed(&mut alice_tcp),
    )
    .await;
    // Others carry on.
    echo(&mut bob_tcp, b"pong").await;
    let (reason, message) = refusal(&tunnel, Role::Client, alice, None).await;
    assert_eq!(reason, Reason::Revoked, "{message}");
    assert_eq!(message, "token alice-laptop is revoked");

    // A broken file changes nothing.
    std::fs::write(&list, "jti alice-laptop\nnonsense\n").unwrap();
    let err = tunnel.registry.reload_revocations().unwrap_err();
    assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    ping(bob_client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_revocation_file_is_read_without_a_signal_and_can_revoke_a_host() {
    let (_dir, list, tunnel) = with_revocations("").await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let client = tunnel.client("lab1").await;
    let mut tcp = ping(client).await;

    std::fs::write(&list, "host lab1\n").unwrap();
    // Polled every second: a few polls at most.
    within(
        Duration::from_secs(10),
        "the revoked host to be unregistered",
        tunnel.registry.wait_host("lab1", false),
    )
    .await;
    within(
        WAIT,
        "the host's session to close",
        read_until_closed(&mut tcp),
    )
    .await;
    let host_token = tunnel.token(Role::Host, "lab1", HOUR);
    let (reason, message) = refusal(&tunnel, Role::Host, host_token, None).await;
    assert_eq!(reason, Reason::Revoked, "{message}");
    assert_eq!(message, "host lab1 is revoked");
    let client_token = tunnel.token(Role::Client, "lab1", HOUR);
    let (reason, _) = refusal(&tunnel, Role::Client, client_token, None).await;
    assert_eq!(reason, Reason::Revoked);
}

/// The refusal `opened` carries, failing the test if it is not one.
fn refused(opened: Result<Opened, OpenError>) -> Refusal {
    match opened {
        Err(OpenError::Refused(refusal)) => refusal,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("a resume that should be refused was taken"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_is_taken_only_with_its_client_token_and_key_and_once() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host("lab1", echo_server().await).await;
    let forwarder = |claims: &Claims| {
        Forwarder::new(ClientConfig {
            relays: vec![tunnel.relay_addr()],
            fleet: None,
            token: TokenSource::Literal(tunnel.sign(claims)),
            host: Some("lab1".into()),
            resume_window: Duration::from_secs(60),
            direct: shellrelay::net::transport::direct::DirectMode::Off,
        })
    };
    let alice = forwarder(&client_claims(&["lab1"], "alice-1"));
    let offer = alice.offer().expect("a resumable offer");
    let opened = alice.open_with(Some(&offer.ask)).await.unwrap();
    let session = (offer.accepted(opened.resume.as_ref()))
        .unwrap()
        .expect("the host made the session resumable");
    let ask = session.again();

    // Another token of the same subject for the same host, with the very
    // request: refused, because the token is not the one that opened it.
    let mallory = forwarder(&client_claims(&["lab1"], "alice-2"));
    let r = refused(mallory.open_with(Some(&ask)).await);
    assert_eq!(r.reason, Reason::NotResumable);
    assert!(r.message.contains("another client token"), "{r}");

    // The right token, and all that passed through the relay, but a proof
    // not made with the session's key: refused.
    let Resume::Again {
        id,
        attempt,
        received,
        fin,
        ..
    } = ask.clone()
    else {
        unreachable!("again() asks to resume")
    };
    let forged = Resume::Again {
        id: id.clone(),
        attempt,
        received,
        fin,
        proof: "00".repeat(32),
    };
    let r = refused(alice.open_with(Some(&forged)).await);
    assert!(r.message.contains("not from its client"), "{r}");

    // The real request is taken, and its answer is the host's.
    let taken = alice.open_with(Some(&ask)).await.unwrap();
    assert_eq!(
        session.resumed(taken.resume.as_ref()).unwrap(),
        Position::default()
    );
    // Replayed (by the relay, say): refused.
    let r = refused(alice.open_with(Some(&ask)).await);
    assert!(r.message.contains("replay"), "{r}");

    // A session nobody opened.
    let unknown = Resume::Again {
        id: "ab".repeat(16),
        attempt: 1,
        received: 0,
        fin: false,
        proof: "00".repeat(32),
    };
    let r = refused(alice.open_with(Some(&unknown)).await);
    assert!(r.message.contains("has ended"), "{r}");
    // The session itself still works on the stream the resume brought.
    let mut stream = taken.stream;
    let (mut local, mut remote) = tokio::io::duplex(64 * 1024);
    let carried = tokio::spawn(async move {
        let (mut from, mut to) = tokio::io::split(&mut remote);
        let mut source = shellrelay::session::splice::Reader(&mut from);
        let outcome = session
            .attach(&mut stream, Position::default(), &mut source, &mut to)
            .await;
        (outcome, stream)
    });
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    local.write_all(b"ping\n").await.unwrap();
    let mut back = [0u8; 5];
    within(
        WAIT,
        "the echo after the resume",
        local.read_exact(&mut back),
    )
    .await
    .unwrap();
    assert_eq!(&back, b"ping\n");
    carried.abort();
}
