//! Session streams over HTTP/2 on loopback TCP.

use super::*;
use tokio::net::{TcpListener, TcpStream};

const WINDOW: u32 = 64 * 1024;

/// An HTTP/2 client and server over loopback TCP with a stream window
/// of [`WINDOW`], each connection driven by a task of its own.
async fn pair() -> (Opener, Accepter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (dialled, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (opener, accepter) = tokio::join!(
        client(dialled.unwrap(), WINDOW, None),
        server(accepted.unwrap().0, WINDOW, u32::MAX, None)
    );
    let (opener, driver) = opener.unwrap();
    tokio::spawn(driver.run);
    let (accepter, driver) = accepter.unwrap();
    tokio::spawn(driver.run);
    (opener, accepter)
}

async fn read_all(recv: &mut RecvStream) -> Result<Vec<u8>, StreamError> {
    let mut chunks: [Bytes; 8] = Default::default();
    let mut all = Vec::new();
    while let Some(n) = recv.read_chunks(&mut chunks).await? {
        for c in &chunks[..n] {
            all.extend_from_slice(c);
        }
    }
    Ok(all)
}

#[tokio::test]
async fn bytes_and_each_directions_end_cross_intact() {
    let (opener, accepter) = pair().await;
    let (mut up, mut down) = opener.open().await.unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            for part in data.chunks(100_000) {
                up.write_chunk(Bytes::copy_from_slice(part)).await.unwrap();
            }
            up.finish().unwrap();
            up
        })
    };
    let (mut back, mut recv) = accepter.accept().await.unwrap();
    let got = read_all(&mut recv).await.unwrap();
    assert_eq!(got, data, "client to server");
    // The other direction still works after the first has ended.
    back.write_chunk(Bytes::from_static(b"reply"))
        .await
        .unwrap();
    back.finish().unwrap();
    assert_eq!(read_all(&mut down).await.unwrap(), b"reply");
    drop(writer.await.unwrap());
}

#[tokio::test]
async fn a_reset_reaches_the_peer_with_its_code() {
    let (opener, accepter) = pair().await;
    let (mut up, _down) = opener.open().await.unwrap();
    up.write_chunk(Bytes::from_static(b"x")).await.unwrap();
    let (_back, mut recv) = accepter.accept().await.unwrap();
    up.reset(ErrorCode(0x1234));
    match read_all(&mut recv).await {
        Err(StreamError::Aborted(code)) => assert_eq!(code, ErrorCode(0x1234)),
        other => panic!("expected an abort with the code, got {other:?}"),
    }
}

#[tokio::test]
async fn stalled_readers_do_not_stop_the_other_streams() {
    // More stalled streams than a 64 MiB connection window would
    // hold, each filled to its window by a writer nobody reads.
    let (opener, accepter) = pair().await;
    let stalled = 1100; // × 64 KiB > 64 MiB
    let mut held = Vec::new();
    let open = || async {
        tokio::time::timeout(std::time::Duration::from_secs(20), opener.open())
            .await
            .expect("a stream opens")
            .unwrap()
    };
    for _ in 0..stalled {
        let (mut up, _down) = open().await;
        let writer = tokio::spawn(async move {
            let _ = up
                .write_chunk(Bytes::from(vec![0u8; WINDOW as usize * 2]))
                .await;
            up
        });
        held.push((writer, accepter.accept().await.unwrap()));
    }
    let (mut up, _down) = open().await;
    let (_back, mut recv) = accepter.accept().await.unwrap();
    let live = tokio::spawn(async move {
        up.write_chunk(Bytes::from(vec![1u8; 4 << 20]))
            .await
            .unwrap();
        up.finish().unwrap();
    });
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), read_all(&mut recv))
        .await
        .expect("the live stream moved")
        .unwrap();
    assert_eq!(got.len(), 4 << 20);
    live.await.unwrap();
    drop(held);
}

#[tokio::test]
async fn a_stop_reaches_the_writer_with_its_code() {
    let (opener, accepter) = pair().await;
    let (mut up, _down) = opener.open().await.unwrap();
    up.write_chunk(Bytes::from_static(b"x")).await.unwrap();
    let (_back, mut recv) = accepter.accept().await.unwrap();
    let stopped = up.stopped();
    recv.stop(ErrorCode(0x77));
    assert_eq!(stopped.await, Some(ErrorCode(0x77)));
    // Writing now fails with the peer's code.
    let mut err = None;
    for _ in 0..100 {
        if let Err(e) = up.write_chunk(Bytes::from(vec![0u8; 1 << 16])).await {
            err = Some(e);
            break;
        }
    }
    match err {
        Some(StreamError::Aborted(code)) => assert_eq!(code, ErrorCode(0x77)),
        other => panic!("expected the peer's code, got {other:?}"),
    }
}

#[tokio::test]
async fn frames_cross_through_the_byte_stream_interface() {
    use crate::protocol::{read_frame, write_frame, Frame, Reason as R};
    let (opener, accepter) = pair().await;
    let (mut up, mut down) = opener.open().await.unwrap();
    let (mut back, mut recv) = accepter.accept().await.unwrap();
    let frame = Frame::Refused {
        reason: R::Limit,
        message: "m".repeat(40_000.min(crate::protocol::MAX_FRAME_LEN - 100)),
    };
    write_frame(&mut up, &frame).await.unwrap();
    let got = read_frame(&mut recv).await.unwrap();
    assert_eq!(format!("{got:?}"), format!("{frame:?}"));
    write_frame(&mut back, &frame).await.unwrap();
    tokio::io::AsyncWriteExt::shutdown(&mut back).await.unwrap();
    let got = read_frame(&mut down).await.unwrap();
    assert_eq!(format!("{got:?}"), format!("{frame:?}"));
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut down, &mut rest)
        .await
        .unwrap();
    assert!(rest.is_empty(), "the end of the stream follows the frame");
}
