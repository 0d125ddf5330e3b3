//! A session at the host agent, with real streams and a real TCP
//! connection standing in for sshd.

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;
use crate::session::resume::key::End;
use crate::session::resume::record;
use crate::session::resume::tests::{session_keys, stream_pair};
use crate::session::resume::REPLAY_LIMIT;

const WINDOW: u32 = 64 * 1024;
const BOUND: Duration = Duration::from_secs(10);

/// Reads `stream` until `want` bytes came; what came.
async fn read_exactly(stream: &mut Stream, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunks: [Bytes; 32] = Default::default();
    while got.len() < want {
        let read = tokio::time::timeout(BOUND, stream.recv.read_chunks(&mut chunks)).await;
        let n = read
            .expect("nothing came")
            .unwrap()
            .expect("the stream ended");
        for chunk in &chunks[..n] {
            got.extend_from_slice(chunk);
        }
    }
    got
}

/// A resume comes while the session's stream still runs, and its own
/// stream fails before the host agent answers. The session must go on
/// waiting for the next resume rather than go back to the stream it let go
/// of or end; the next resume then carries it on.
#[tokio::test]
async fn a_resume_whose_stream_fails_leaves_the_session_waiting_for_the_next() {
    let ctx = Sessions {
        target: "127.0.0.1:1".into(),
        parked: Arc::default(),
        window: Duration::from_secs(60),
        replay_limit: REPLAY_LIMIT,
        metrics: Arc::default(),
        direct: None,
    };
    let (client_key, host_key, id) = session_keys();
    let session = Arc::new(Resumable::new(id.clone(), host_key, REPLAY_LIMIT));
    let registered = ctx
        .parked
        .register(session.clone(), Some("owner".into()))
        .unwrap();
    let parked = ctx.parked.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tcp, sshd) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (tcp, mut sshd) = (tcp.unwrap(), sshd.unwrap().0);
    let (host_end, mut client) = stream_pair(WINDOW).await;
    let carried = tokio::spawn({
        let session = session.clone();
        async move { carry(&ctx, &session, &registered, tcp, host_end).await.0 }
    });

    // sshd says hello; the client has it, and acknowledges it.
    sshd.write_all(b"hello").await.unwrap();
    assert_eq!(&read_exactly(&mut client, 10).await[5..], b"hello");
    client
        .send
        .write_chunk(record::ack(5, false))
        .await
        .unwrap();

    // A resume whose stream is gone by the time the host answers.
    let (mut dead, _far) = stream_pair(WINDOW).await;
    dead.send.reset(Reason::Aborted);
    let peer_at = Position {
        received: 5,
        fin: false,
    };
    let takeover = Takeover {
        stream: dead,
        attempt: 1,
        peer_at,
        path: "relay",
    };
    let proof = client_key.prove(End::Client, 1, 5, false);
    assert!(parked.take_up(&id, Some("owner"), takeover, &proof).is_ok());
    // The host agent lets go of the old stream for it.
    let mut chunks: [Bytes; 32] = Default::default();
    loop {
        let read = tokio::time::timeout(BOUND, client.recv.read_chunks(&mut chunks)).await;
        if !matches!(read.expect("the old stream was kept"), Ok(Some(_))) {
            break;
        }
    }

    // The next resume takes the session up, and sshd's next bytes come.
    let (host_end, mut client) = stream_pair(WINDOW).await;
    let takeover = Takeover {
        stream: host_end,
        attempt: 2,
        peer_at,
        path: "relay",
    };
    let proof = client_key.prove(End::Client, 2, 5, false);
    let taken = parked.take_up(&id, Some("owner"), takeover, &proof);
    assert!(taken.is_ok(), "the session no longer waits for a resume");
    let answer = tokio::time::timeout(BOUND, read_frame(&mut client.recv)).await;
    match answer.expect("no answer to the resume").unwrap() {
        Frame::Ready {
            resume: Some(Resume::Resumed { attempt: 2, .. }),
            ..
        } => {}
        other => panic!("the resume was answered {other:?}"),
    }
    sshd.write_all(b"world").await.unwrap();
    let got = read_exactly(&mut client, 10).await;
    assert_eq!(&got[got.len() - 5..], b"world");

    carried.abort();
}

/// The host's last acknowledgement is lost with the path: the client has
/// every byte and the host's end of data, but not the host's word that
/// its own end arrived, and asks for a resume. The host, done with the
/// session, still answers it for a while: the client learns everything
/// arrived, and the session ends well at both ends.
#[tokio::test]
async fn a_client_that_missed_the_last_acknowledgement_learns_it_finished() {
    use crate::session::resume::record::{Event, Parser};
    let (client_key, host_key, id) = session_keys();
    let parked: Arc<Parked> = Arc::default();
    let host = Arc::new(Resumable::new(id.clone(), host_key, REPLAY_LIMIT));
    let registered = parked.register(host.clone(), Some("owner".into())).unwrap();
    let client = Resumable::new(id.clone(), client_key, REPLAY_LIMIT);

    // The first path: client, a middle that passes every record but the
    // host's acknowledgement of the client's end (and then breaks the
    // client's stream), host.
    let (mut client_end, middle_c) = stream_pair(WINDOW).await;
    let (middle_h, mut host_end) = stream_pair(WINDOW).await;
    let (
        Stream {
            send: mut to_client,
            recv: mut from_client,
        },
        Stream {
            send: mut to_host_side,
            recv: mut from_host,
        },
    ) = (middle_c, middle_h);
    let middle = tokio::spawn(async move {
        // The client's end of data waits until its acknowledgement of the
        // host's end has gone on: the host is then done the moment it has
        // acknowledged the client's end, its last word.
        let up = async {
            let (mut parser, mut events) = (Parser::default(), Vec::new());
            let (mut acked_host_end, mut held_end) = (false, false);
            let mut chunks: [Bytes; 32] = Default::default();
            while let Ok(Some(n)) = from_client.read_chunks(&mut chunks).await {
                for chunk in &mut chunks[..n] {
                    parser.feed(std::mem::take(chunk), &mut events).unwrap();
                }
                for event in events.drain(..) {
                    let mut records = match event {
                        Event::Data(bytes) => vec![record::data(bytes.len() as u32), bytes],
                        Event::Ack { received, fin } => {
                            acked_host_end |= fin;
                            let mut records = vec![record::ack(received, fin)];
                            if fin && std::mem::take(&mut held_end) {
                                records.push(record::fin());
                            }
                            records
                        }
                        Event::Fin if !acked_host_end => {
                            held_end = true;
                            continue;
                        }
                        Event::Fin => vec![record::fin()],
                        Event::Abort => vec![record::abort()],
                    };
                    if to_host_side.write_all_chunks(&mut records).await.is_err() {
                        return;
                    }
                }
            }
            // The client's stream broke: the host's stays as it is.
            std::future::pending::<()>().await
        };
        let down = async {
            let (mut parser, mut events) = (Parser::default(), Vec::new());
            let mut chunks: [Bytes; 32] = Default::default();
            while let Ok(Some(n)) = from_host.read_chunks(&mut chunks).await {
                for chunk in &mut chunks[..n] {
                    parser.feed(std::mem::take(chunk), &mut events).unwrap();
                }
                for event in events.drain(..) {
                    let mut records = match event {
                        Event::Ack { fin: true, .. } => {
                            // Lost with the path, which breaks on the
                            // client's side only.
                            to_client.reset(Reason::Aborted);
                            return std::future::pending::<()>().await;
                        }
                        Event::Ack { received, fin } => vec![record::ack(received, fin)],
                        Event::Data(bytes) => {
                            vec![record::data(bytes.len() as u32), bytes]
                        }
                        Event::Fin => vec![record::fin()],
                        Event::Abort => vec![record::abort()],
                    };
                    to_client.write_all_chunks(&mut records).await.unwrap();
                }
            }
        };
        tokio::select! {
            () = up => {}
            () = down => {}
        }
    });
    let (mut hello, mut from_host_side) = (splice::Reader(&b"hello"[..]), Vec::new());
    let (mut nothing, mut to_host) = (splice::Reader(tokio::io::empty()), Vec::new());
    let (client_did, host_did) = tokio::join!(
        client.attach(
            &mut client_end,
            Position::default(),
            &mut hello,
            &mut from_host_side
        ),
        async {
            let at = Position::default();
            let outcome = host
                .attach(&mut host_end, at, &mut nothing, &mut to_host)
                .await;
            crate::session::resume::end(&host, &outcome, &mut host_end).await;
            outcome
        },
    );
    assert!(matches!(host_did, Outcome::Done), "{host_did:?}");
    assert_eq!(to_host, b"hello");
    assert!(matches!(client_did, Outcome::Broken(_)), "{client_did:?}");
    middle.abort();
    let lingering = tokio::spawn(async move { linger(&host, &registered, BOUND).await });

    // The resume, on a path of its own.
    let Resume::Again {
        attempt,
        received,
        fin,
        proof,
        ..
    } = client.again()
    else {
        panic!("not a resume request");
    };
    let (mut client_end, host_end) = stream_pair(WINDOW).await;
    let takeover = Takeover {
        stream: host_end,
        attempt,
        peer_at: Position { received, fin },
        path: "relay",
    };
    assert!(parked.take_up(&id, Some("owner"), takeover, &proof).is_ok());
    assert_eq!(
        parked.len(),
        0,
        "a finished session does not count as resumable"
    );
    let ready = tokio::time::timeout(BOUND, read_frame(&mut client_end.recv))
        .await
        .unwrap()
        .unwrap();
    let Frame::Ready { resume, .. } = ready else {
        panic!("not ready: {ready:?}");
    };
    let at = client.resumed(resume.as_ref()).unwrap();
    let (mut nothing, mut nowhere) = (splice::Reader(tokio::io::empty()), Vec::new());
    let resumed = client.attach(&mut client_end, at, &mut nothing, &mut nowhere);
    let outcome = tokio::time::timeout(BOUND, resumed).await.unwrap();
    assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
    lingering.abort();
}
