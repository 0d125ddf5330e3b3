//! Frames from a peer: the input as a frame body (`Frame::decode`) and as a
//! stream (`read_frame`, which must take exactly one frame off it).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shellrelay::protocol::{read_frame, Frame, FrameError, MAX_FRAME_LEN};
use tokio::runtime::Runtime;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

/// A decoded frame must survive a trip back through the encoder. Encoding
/// may only fail for size: defaults (an `open` without `session`) make the
/// re-encoded body a little longer than a body right at the limit.
fn check_reencodes(frame: &Frame) {
    match frame.encode() {
        Ok(wire) => {
            let again = Frame::decode(&wire[2..]).expect("a re-encoded frame decodes");
            assert_eq!(&again, frame);
        }
        Err(FrameError::TooLong(n)) => assert!(n > MAX_FRAME_LEN),
        Err(e) => panic!("a decoded frame failed to re-encode: {e}"),
    }
    // Frames are logged with {:?}.
    let _ = format!("{frame:?}");
}

fuzz_target!(|data: &[u8]| {
    match Frame::decode(data) {
        Ok(frame) => check_reencodes(&frame),
        Err(e) => {
            let _ = e.to_string();
        }
    }

    let mut r = data;
    let res = runtime().block_on(read_frame(&mut r));
    let consumed = data.len() - r.len();
    match res {
        Ok(frame) => {
            let len = u16::from_be_bytes([data[0], data[1]]) as usize;
            assert!(len <= MAX_FRAME_LEN);
            assert_eq!(consumed, 2 + len, "read_frame must take exactly one frame");
            let body = Frame::decode(&data[2..2 + len]).expect("the body decodes on its own");
            assert_eq!(body, frame);
        }
        Err(FrameError::TooLong(n)) => {
            assert!(n > MAX_FRAME_LEN);
            assert_eq!(n, u16::from_be_bytes([data[0], data[1]]) as usize);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
