//! Fair shares at the relay, over QUIC and over TLS over TCP: one client
//! token cannot take every session from everyone else (attack B), a token
//! that opens and resets streams is cut off and refused for a while
//! (attack E), and a burst of sessions from one forwarder still starts at
//! once.

mod support;

use shellrelay::access::token::{Claims, TokenSource};
use shellrelay::client::{ClientConfig, Forwarder, OpenError};
use shellrelay::net::transport::dial::{self, ConnectError};
use shellrelay::net::transport::{Closed, Conn, Stream};
use shellrelay::protocol::{Reason, Role};
use shellrelay::relay::budget::{session_bytes, PRE_HELLO_RESERVE};
use support::traffic::*;
use support::*;
use tokio::io::AsyncWriteExt;

const TRANSPORTS: [Transport; 2] = [Transport::Quic, Transport::Tcp];

/// A relay whose memory budget holds `sessions` sessions, with host
/// `lab1` on an echo server over `via`.
async fn relay_for(sessions: u64, via: Transport) -> (Tunnel, Peer) {
    let tunnel = Tunnel::start_with(|c| {
        c.limits.failures_per_addr = u32::MAX;
        c.limits.max_buffered = PRE_HELLO_RESERVE
            + sessions * session_bytes(shellrelay::net::transport::options::STREAM_WINDOW);
    })
    .await;
    assert_eq!(tunnel.registry.sessions(), (0, sessions as usize));
    let host = tunnel.host_over("lab1", echo_server().await, via).await;
    (tunnel, host)
}

/// A client token for `lab1` of `user`'s own (its `jti`).
fn token_of(tunnel: &Tunnel, user: &str) -> TokenSource {
    let mut claims = Claims::new(
        Role::Client,
        "lab1",
        shellrelay::ops::defaults::AUDIENCE,
        HOUR,
    );
    claims.jti = Some(user.to_owned());
    TokenSource::Literal(tunnel.sign(&claims))
}

/// A forwarder over `via` with `user`'s token.
fn forwarder(tunnel: &Tunnel, via: Transport, user: &str) -> Forwarder {
    Forwarder::new(ClientConfig {
        relays: vec![tunnel.relay_over(via)],
        fleet: None,
        token: token_of(tunnel, user),
        host: None,
        resume_window: shellrelay::session::resume::RESUME_WINDOW,
        direct: shellrelay::net::transport::direct::DirectMode::Off,
    })
}

/// A raw client connection over `via` with `user`'s token, for a client
/// that misbehaves on purpose.
async fn raw_client(tunnel: &Tunnel, via: Transport, user: &str) -> Conn {
    let relay = tunnel.relay_over(via);
    let token = token_of(tunnel, user);
    within(
        WAIT,
        "a welcome",
        dial::connect(&relay, &token, Role::Client, None),
    )
    .await
    .expect("a good client is let in")
    .conn
}

/// Waits until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    within(WAIT, what, async {
        while !done() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Attack B: one token opens as many streams as the relay has sessions,
/// and never completes their `open`. It once took every place, and
/// everyone else was refused ("relay is at its limit"); now it holds half,
/// the rest of its streams are refused as over its share, and another
/// user's six sessions all start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_cannot_take_every_session() {
    for via in TRANSPORTS {
        let (tunnel, _host) = relay_for(40, via).await;
        let mallory = raw_client(&tunnel, via, "mallory").await;
        let refused = tunnel.registry.refused();
        let mut held = Vec::new();
        for _ in 0..40 {
            let Stream { mut send, recv } = within(WAIT, "a stream", mallory.open()).await.unwrap();
            // The first byte of a frame's length: an `open` never to come.
            // (Over the share the relay may have refused the stream
            // already.)
            let _ = send.write_all(&[0]).await;
            held.push((send, recv));
        }
        until("the relay to hold half and refuse the rest", || {
            tunnel.registry.sessions().0 == 20 && tunnel.registry.refused() >= refused + 20
        })
        .await;
        let bob = forwarder(&tunnel, via, "bob");
        let mut sessions = Vec::new();
        for _ in 0..6 {
            let opened = within(WAIT, "bob's session", bob.open()).await;
            sessions.push(opened.unwrap_or_else(|e| panic!("{via:?}: bob was refused: {e}")));
        }
        assert_eq!(tunnel.registry.sessions().0, 26, "{via:?}");
        // Mallory still gets no more than its share.
        match within(
            WAIT,
            "mallory's refusal",
            forwarder(&tunnel, via, "mallory").open(),
        )
        .await
        {
            Err(OpenError::Refused(r)) => {
                assert_eq!(r.reason, Reason::Limit);
                assert!(r.message.contains("its share"), "{}", r.message);
            }
            Err(other) => panic!("{via:?}: expected a refusal at its share, got {other}"),
            Ok(_) => panic!("{via:?}: a token took more than its share"),
        }
        drop(held);
    }
}

/// Attack E: a token that opens streams and resets them at once has its
/// connection closed at a limit after a few dozen, and is refused for a
/// while when it comes back; another user gets in and starts sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_opens_and_resets_streams_is_cut_off() {
    for via in TRANSPORTS {
        let (tunnel, _host) = relay_for(64, via).await;
        let mallory = raw_client(&tunnel, via, "mallory").await;
        let mut opened = 0;
        let closed = within(WAIT, "the relay to cut the token off", async {
            loop {
                match mallory.open().await {
                    Ok(Stream { mut send, mut recv }) => {
                        opened += 1;
                        let _ = send.write_all(&[0]).await;
                        send.reset(Reason::Aborted);
                        recv.stop(Reason::Aborted);
                    }
                    Err(closed) => return closed,
                }
            }
        })
        .await;
        match &closed {
            Closed::Peer(r) if r.reason == Reason::Limit => {
                assert!(r.message.contains("abandoned"), "{}", r.message)
            }
            other => panic!("{via:?}: expected a close at a limit, got {other}"),
        }
        // Cut off before it could use up the stream credit it was given
        // twice over (a session limit's worth and 64 more, at once).
        let credit = shellrelay::ops::defaults::SESSIONS_PER_CLIENT + 64;
        assert!(
            opened <= 2 * credit,
            "{via:?}: cut off only after {opened} streams"
        );
        let relay = tunnel.relay_over(via);
        match dial::connect(&relay, &token_of(&tunnel, "mallory"), Role::Client, None).await {
            Err(ConnectError::Refused(r)) => {
                assert_eq!(r.reason, Reason::Limit);
                assert!(r.message.contains("connect again in"), "{}", r.message);
            }
            Err(other) => panic!("{via:?}: expected a refusal, got {other}"),
            Ok(_) => panic!("{via:?}: a token cut off for abandoning streams got back in"),
        }
        let bob = forwarder(&tunnel, via, "bob");
        for _ in 0..6 {
            let opened = within(WAIT, "bob's session", bob.open()).await;
            opened.unwrap_or_else(|e| panic!("{via:?}: bob was refused: {e}"));
        }
    }
}

/// A forwarder that starts a hundred sessions at once starts them all,
/// each carrying its bytes: the rate per token leaves such bursts alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_a_hundred_sessions_starts_at_once() {
    for via in TRANSPORTS {
        let (tunnel, _host) = relay_for(256, via).await;
        let (client, _peer) = tunnel
            .client_via(
                tunnel.relay_over(via),
                tunnel.token(Role::Client, "lab1", HOUR),
                None,
            )
            .await;
        let sessions = (0..100).map(|i| async move {
            let mut tcp = within(WAIT, "connect", tokio::net::TcpStream::connect(client))
                .await
                .unwrap();
            let words = format!("session {i}");
            tcp.write_all(words.as_bytes()).await.unwrap();
            tcp.shutdown().await.unwrap();
            let got = within(WAIT, "echo", read_until_closed(&mut tcp)).await;
            assert_eq!(got, words.as_bytes(), "{via:?}");
        });
        futures_util::future::join_all(sessions).await;
    }
}
