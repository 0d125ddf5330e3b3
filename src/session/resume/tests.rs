//! The engine and a real stream (HTTP/2 over loopback TCP): how a session
//! lets go of a stream a write to it was cut short on.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::key::{new_id, Half, SessionKey};
use super::record::{self, Event, Parser};
use super::{end, Outcome, Position, Resumable, Side, REPLAY_LIMIT};
use crate::net::transport::{http2, RecvStream, SendStream, Stream};
use crate::session::splice::Reader;

/// Two ends of one HTTP/2 stream with `window` bytes of credit, over a
/// loopback TCP connection: (the opener's, the accepter's).
pub(crate) async fn stream_pair(window: u32) -> (Stream, Stream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, server) = tokio::join!(
        http2::client(dialled.unwrap(), window, None),
        http2::server(accepted.unwrap().0, window, 100, None)
    );
    let (opener, driver) = client.unwrap();
    tokio::spawn(driver.run);
    let (accepter, driver) = server.unwrap();
    tokio::spawn(driver.run);
    let (send, recv) = opener.open().await.unwrap();
    let (their_send, their_recv) = accepter.accept().await.unwrap();
    (
        Stream {
            send: SendStream::Http2(send),
            recv: RecvStream::Http2(recv),
        },
        Stream {
            send: SendStream::Http2(their_send),
            recv: RecvStream::Http2(their_recv),
        },
    )
}

/// The two ends' keys for one session: (the client's, the host's, the id).
pub(crate) fn session_keys() -> (SessionKey, SessionKey, String) {
    let id = new_id().unwrap();
    let (client, host) = (Half::new().unwrap(), Half::new().unwrap());
    let (client_public, host_public) = (client.public.clone(), host.public.clone());
    let client_key = client.agree(&host_public, &id).unwrap();
    let host_key = host.agree(&client_public, &id).unwrap();
    (client_key, host_key, id)
}

/// A local side that cannot be written to.
struct Failing;

impl AsyncWrite for Failing {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The local side fails while the stream's sending half is blocked inside
/// a data record (the peer grants no credit). An abort record written
/// after it would land inside that record and reach the peer as data: the
/// peer must see only whole records, then an abort or a reset.
#[tokio::test]
async fn an_abort_after_a_write_cut_short_resets_instead() {
    const WINDOW: u32 = 64 * 1024;
    let (mut ours, mut theirs) = stream_pair(WINDOW).await;
    let (mut local, from_local) = tokio::io::duplex(1 << 20);
    local.write_all(&vec![7u8; 512 * 1024]).await.unwrap();
    let (_, key, id) = session_keys();
    let session = std::sync::Arc::new(Resumable::new(id, key, REPLAY_LIMIT));
    let attached = tokio::spawn({
        let session = session.clone();
        async move {
            let (mut source, mut writer) = (Reader(from_local), Failing);
            let outcome = session
                .attach(&mut ours, Position::default(), &mut source, &mut writer)
                .await;
            end(&session, &outcome, &mut ours).await;
            drop(local);
            outcome
        }
    });
    // A read of a window's worth is being written: with its header, more
    // than the stream's credit, so the sending half blocks inside it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while session.buffered() < WINDOW as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never read its local side"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Data from the peer now finds the local side failing.
    let mut data = [record::data(3), Bytes::from_static(b"abc")];
    theirs.send.write_all_chunks(&mut data).await.unwrap();
    // The peer reads on meanwhile, so that what this end sends next can go.
    let read = tokio::spawn(async move {
        let (mut parser, mut events) = (Parser::default(), Vec::new());
        let mut chunks: [Bytes; 32] = Default::default();
        loop {
            let read = tokio::time::timeout(
                Duration::from_secs(10),
                theirs.recv.read_chunks(&mut chunks),
            );
            match read.await.expect("the stream neither ended nor was reset") {
                Ok(Some(n)) => {
                    for chunk in &mut chunks[..n] {
                        parser.feed(std::mem::take(chunk), &mut events).unwrap();
                    }
                }
                Ok(None) => return ("finished", events),
                Err(_) => return ("reset", events),
            }
        }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(10), attached).await;
    let outcome = outcome.unwrap().unwrap();
    assert!(
        matches!(outcome, Outcome::Aborted(Side::Local)),
        "{outcome:?}"
    );
    let (ended, events) = read.await.unwrap();
    for event in &events {
        if let Event::Data(data) = event {
            assert!(
                data.iter().all(|&b| b == 7),
                "a record reached the peer corrupted"
            );
        }
    }
    assert!(
        ended == "reset" || events.last() == Some(&Event::Abort),
        "the stream {ended} after {:?}, with no abort",
        events.last()
    );
}

/// Sessions waiting for a resume are capped per client token and in all;
/// a place comes free when a session stops waiting.
#[test]
fn waiting_sessions_are_capped_per_token_and_per_host() {
    use super::parked::{Parked, WaitingLimits};
    let limits = WaitingLimits {
        all: 64,
        per_client: 16,
    };
    let parked = std::sync::Arc::new(Parked::new(limits));
    let (waiting_per_host, waiting_per_token) = (limits.all, limits.per_client);
    assert_eq!(parked.limits(), limits);
    let register = |owner: &str| {
        let (_, key, id) = session_keys();
        let session = std::sync::Arc::new(Resumable::new(id, key, REPLAY_LIMIT));
        parked.register(session, Some(owner.into())).unwrap()
    };
    let greedy: Vec<_> = (0..=waiting_per_token)
        .map(|_| register("greedy"))
        .collect();
    let mut waiting: Vec<_> = greedy[..waiting_per_token]
        .iter()
        .map(|r| r.wait().unwrap())
        .collect();
    assert_eq!(parked.waiting(), waiting_per_token);
    let last = &greedy[waiting_per_token];
    assert!(last.wait().is_none(), "one token waits beyond its share");
    waiting.pop();
    assert!(
        last.wait().is_some(),
        "a place that came free was not given"
    );

    let others: Vec<_> = (0..waiting_per_host)
        .map(|i| register(&format!("other {i}")))
        .collect();
    let held = waiting_per_token - 1;
    let room: Vec<_> = others[..waiting_per_host - held]
        .iter()
        .map(|r| r.wait().unwrap())
        .collect();
    assert_eq!(room.len() + waiting.len(), waiting_per_host);
    assert_eq!(parked.waiting(), waiting_per_host);
    assert!(
        others[waiting_per_host - held].wait().is_none(),
        "the host waits beyond its limit"
    );
}

/// Larger stream windows keep more for replay: what is in flight grows
/// with them.
#[test]
fn the_replay_limit_follows_the_stream_window() {
    assert_eq!(super::replay_limit(512 * 1024), REPLAY_LIMIT);
    assert_eq!(super::replay_limit(4 * 1024 * 1024), 32 * 1024 * 1024);
}
