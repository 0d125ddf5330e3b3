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
