//! Close codes and reasons from a peer: `Reason::from_code` on a code and
//! `Refusal::from_connection_error` on an application close, both split from
//! the input (eight bytes of code, little-endian, then the reason).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use quinn::{ApplicationClose, ConnectionError, VarInt};
use shellrelay::protocol::{Frame, FrameError, Reason, Refusal, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let split = data.len().min(8);
    let (code, reason) = data.split_at(split);
    let mut raw = [0u8; 8];
    raw[..split].copy_from_slice(code);
    let code = u64::from_le_bytes(raw);

    let r = Reason::from_code(code);
    if code <= 9 {
        assert_ne!(r, Reason::Unknown);
        assert_eq!(u64::from(r.code()), code);
    } else {
        assert_eq!(r, Reason::Unknown);
    }
    let _ = r.to_string();

    // A QUIC varint holds 62 bits.
    let varint = VarInt::from_u64(code & ((1 << 62) - 1)).expect("62 bits fit a varint");
    let err = ConnectionError::ApplicationClosed(ApplicationClose {
        error_code: varint,
        reason: Bytes::copy_from_slice(reason),
    });
    let _ = err.to_string();
    let refusal = Refusal::from_connection_error(&err).expect("an application close is a refusal");
    assert_eq!(refusal.reason, Reason::from_code(varint.into_inner()));
    if reason.is_empty() {
        assert_eq!(refusal.message, refusal.reason.to_string());
    } else {
        assert_eq!(refusal.message, String::from_utf8_lossy(reason));
    }
    assert_eq!(refusal.to_string(), refusal.message);

    let frame = refusal.frame();
    match frame.encode() {
        Ok(wire) => assert_eq!(Frame::decode(&wire[2..]).expect("decodes"), frame),
        Err(FrameError::TooLong(n)) => assert!(n > MAX_FRAME_LEN),
        Err(e) => panic!("a refusal failed to encode: {e}"),
    }
});
