//! Property tests for every decoder of peer-controlled bytes: frames
//! (`read_frame`, `Frame::decode`), tokens (`Verifier::verify`) and close
//! codes and reasons (`Reason::from_code`, `Refusal::from_connection_error`).
//!
//! Failing cases are printed (shrunk) but not persisted to a regressions
//! file; add a plain test for any case worth keeping.
//!
//! No test here restates the code it checks: signed tokens are built with
//! the defects they should be refused for, and host patterns are compared
//! with a plain recursive definition. One file, longer than most, because
//! the three decoders share the strategies for text, JSON and claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::Value;
use shellrelay::access::keys::Secret;
use shellrelay::access::token::{mint, Claims, TokenError, Verifier};
use shellrelay::ops::clock::MAX_EXP;
use shellrelay::protocol::id::{glob_match, valid_host_pattern, MAX_HOST_ID_LEN};
use shellrelay::protocol::Role;
use shellrelay::protocol::{
    read_frame, Direct, Frame, FrameError, Jwt, Reason, Resume, Who, MAX_FRAME_LEN,
};
use tokio::runtime::Runtime;

const AUDIENCE: &str = "shellrelay";

/// Every reason, the one for unknown codes included.
fn all_reasons() -> Vec<Reason> {
    Reason::ALL.into_iter().chain([Reason::Unknown]).collect()
}

/// Field names of every frame variant, so generated JSON hits real fields.
const FIELD_NAMES: [&str; 11] = [
    "type",
    "version",
    "role",
    "token",
    "host",
    "expires_at",
    "session",
    "client",
    "reason",
    "message",
    "jti",
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime")
}

/// Runs `read_frame` over `input`; returns its result and how many bytes it
/// consumed.
fn read_one(rt: &Runtime, input: &[u8]) -> (Result<Frame, FrameError>, usize) {
    let mut r = input;
    let res = rt.block_on(read_frame(&mut r));
    (res, input.len() - r.len())
}

fn kind(res: &Result<Frame, FrameError>) -> &'static str {
    match res {
        Ok(_) => "ok",
        Err(FrameError::Truncated) => "truncated",
        Err(FrameError::TooLong(_)) => "too long",
        Err(FrameError::Malformed(_)) => "malformed",
        Err(FrameError::Io(_)) => "io",
    }
}

// ---------------------------------------------------------------- strategies

/// Any string: unicode, control characters, quotes and backslashes (which
/// JSON must escape), usually short, sometimes long enough that the frame
/// exceeds MAX_FRAME_LEN.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        8 => any::<String>(),
        8 => prop::collection::vec(any::<char>(), 0..48).prop_map(String::from_iter),
        2 => "[\"\\\\\\x00-\\x1f\\u{7f}\\u{2028}\\u{2029}\\u{feff}\\u{fffd}\\u{10ffff}]{0,16}",
        1 => prop::collection::vec(any::<char>(), 0..6000).prop_map(String::from_iter),
        // Control characters take six bytes each in JSON: this straddles
        // MAX_FRAME_LEN.
        1 => "[\\x00-\\x1f]{2900,3300}",
    ]
    .boxed()
}

fn bytes(max: usize) -> BoxedStrategy<Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max).boxed()
}

fn arb_role() -> BoxedStrategy<Role> {
    prop_oneof![Just(Role::Host), Just(Role::Client)].boxed()
}

fn arb_reason() -> BoxedStrategy<Reason> {
    prop::sample::select(all_reasons()).boxed()
}

fn arb_u64() -> BoxedStrategy<u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(1u64 << 53),
        Just((1u64 << 53) + 1)
    ]
    .boxed()
}

fn arb_direct() -> BoxedStrategy<Direct> {
    let addrs = || prop::collection::vec(text(), 0..6);
    prop_oneof![
        (text(), addrs()).prop_map(|(pin, addrs)| Direct::Offer { pin, addrs }),
        addrs().prop_map(|addrs| Direct::Ask { addrs }),
        (text(), addrs(), arb_u64()).prop_map(|(ticket, addrs, expires_at)| Direct::Expect {
            ticket,
            addrs,
            expires_at
        }),
        (text(), addrs(), text()).prop_map(|(ticket, addrs, pin)| Direct::Meet {
            ticket,
            addrs,
            pin
        }),
    ]
    .boxed()
}

fn arb_frame() -> BoxedStrategy<Frame> {
    prop_oneof![
        (
            any::<u32>(),
            arb_role(),
            text(),
            prop::option::of(text()),
            any::<bool>()
        )
            .prop_map(|(version, role, token, host, keep_other)| Frame::Hello {
                version,
                role,
                token: Jwt(token),
                host,
                keep_other,
                moving: false,
                direct: None,
            }),
        (text(), arb_role(), arb_u64(), prop::option::of(text())).prop_map(
            |(host, role, expires_at, relay)| Frame::Welcome {
                host,
                role,
                expires_at,
                relay,
            }
        ),
        (
            arb_u64(),
            prop::option::of(text()),
            prop::option::of(arb_resume()),
            prop::option::of(text()),
            prop::option::of((text(), prop::option::of(text()))),
            prop::option::of(arb_direct())
        )
            .prop_map(
                |(session, client, resume, owner, who, direct)| Frame::Open {
                    session,
                    client,
                    resume,
                    owner,
                    who: who.map(|(subject, jti)| Who { subject, jti }),
                    direct,
                }
            ),
        text().prop_map(|ticket| Frame::Ticket { ticket }),
        (arb_u64(), prop::option::of(arb_resume())).prop_map(|(session, resume)| Frame::Ready {
            session,
            resume,
            direct: None
        }),
        (arb_reason(), text()).prop_map(|(reason, message)| Frame::Refused { reason, message }),
        Just(Frame::Ping),
    ]
    .boxed()
}

/// Any resume step, with any text where hex belongs.
fn arb_resume() -> impl Strategy<Value = Resume> {
    prop_oneof![
        (text(), text()).prop_map(|(id, key)| Resume::Offer { id, key }),
        text().prop_map(|key| Resume::Accept { key }),
        (text(), arb_u64(), arb_u64(), any::<bool>(), text()).prop_map(
            |(id, attempt, received, fin, proof)| Resume::Again {
                id,
                attempt,
                received,
                fin,
                proof
            }
        ),
        (arb_u64(), arb_u64(), any::<bool>(), text()).prop_map(
            |(attempt, received, fin, proof)| Resume::Resumed {
                attempt,
                received,
                fin,
                proof
            }
        ),
    ]
}

/// Any JSON value, biased towards the field names frames use.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        arb_u64().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::from),
        prop::sample::select(vec![
            "hello", "welcome", "open", "ready", "refused", "host", "client", "done", "limit",
            "unknown", "",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn field_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => prop::sample::select(FIELD_NAMES.to_vec()).prop_map(str::to_owned),
        1 => text(),
    ]
    .boxed()
}

/// An edit to a frame's JSON object.
#[derive(Debug, Clone)]
enum Edit {
    Remove(Index),
    Replace(Index, Value),
    Insert(String, Value),
}

fn edit() -> BoxedStrategy<Edit> {
    prop_oneof![
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), json_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        (field_name(), json_value()).prop_map(|(k, v)| Edit::Insert(k, v)),
    ]
    .boxed()
}

fn apply(frame: &Frame, edits: &[Edit]) -> Value {
    let mut v = serde_json::to_value(frame).expect("frame to JSON");
    let obj = v.as_object_mut().expect("frames are JSON objects");
    for e in edits {
        match e {
            Edit::Remove(i) if !obj.is_empty() => {
                let key = obj.keys().nth(i.index(obj.len())).cloned();
                if let Some(key) = key {
                    obj.remove(&key);
                }
            }
            Edit::Replace(i, val) if !obj.is_empty() => {
                let n = i.index(obj.len());
                if let Some((_, slot)) = obj.iter_mut().nth(n) {
                    *slot = val.clone();
                }
            }
            Edit::Insert(k, val) => {
                obj.insert(k.clone(), val.clone());
            }
            _ => {}
        }
    }
    v
}

/// Bytes for `read_frame`: pure noise, noise behind a plausible length
/// prefix, and real frames with bytes flipped and noise after them.
fn wire_input() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        2 => bytes(600),
        2 => (bytes(600), any::<u16>()).prop_map(|(body, n)| {
            // A prefix within two bytes of the body's length either way.
            let len = (n as usize) % (body.len() + 3);
            let mut out = (len as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&body);
            out
        }),
        3 => (
            arb_frame(),
            prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
            bytes(32)
        )
            .prop_map(|(frame, flips, trailing)| {
                let mut out = frame
                    .encode()
                    .unwrap_or_else(|_| Frame::Ready {
                        session: 1,
                        resume: None,
                        direct: None,
                    }
                    .encode().expect("encode"));
                for (i, b) in flips {
                    let n = i.index(out.len());
                    out[n] = b;
                }
                out.extend_from_slice(&trailing);
                out
            }),
        2 => (arb_frame(), prop::collection::vec(edit(), 0..4), bytes(16)).prop_map(
            |(frame, edits, trailing)| {
                let body = serde_json::to_vec(&apply(&frame, &edits)).expect("JSON");
                let len = body.len().min(u16::MAX as usize);
                let mut out = (len as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&body);
                out.extend_from_slice(&trailing);
                out
            }
        ),
    ]
    .boxed()
}

// -------------------------------------------------------------------- frames

#[test]
fn every_frame_round_trips_and_read_frame_leaves_trailing_bytes() {
    let rt = runtime();
    proptest!(config(768), |(frame in arb_frame(), trailing in bytes(64))| {
        match frame.encode() {
            Ok(wire) => {
                prop_assert!(wire.len() >= 2);
                let body = &wire[2..];
                prop_assert!(body.len() <= MAX_FRAME_LEN);
                prop_assert_eq!(u16::from_be_bytes([wire[0], wire[1]]) as usize, body.len());
                match Frame::decode(body) {
                    Ok(decoded) => prop_assert_eq!(&decoded, &frame),
                    Err(e) => prop_assert!(false, "decode failed: {e}"),
                }

                let mut input = wire.clone();
                input.extend_from_slice(&trailing);
                let mut r = &input[..];
                match rt.block_on(read_frame(&mut r)) {
                    Ok(read) => prop_assert_eq!(&read, &frame),
                    Err(e) => prop_assert!(false, "read_frame failed: {e}"),
                }
                prop_assert_eq!(r, &trailing[..], "read_frame must leave what follows unread");
            }
            Err(FrameError::TooLong(n)) => {
                // Only a body over the limit may be refused, and it says how long.
                prop_assert!(n > MAX_FRAME_LEN);
                prop_assert_eq!(n, serde_json::to_vec(&frame).expect("JSON").len());
            }
            Err(e) => prop_assert!(false, "encode failed: {e}"),
        }
    });
}

#[test]
fn read_frame_of_any_bytes_follows_its_spec() {
    let rt = runtime();
    proptest!(config(2048), |(input in wire_input())| {
        let (res, consumed) = read_one(&rt, &input);
        if input.len() < 2 {
            prop_assert_eq!(kind(&res), "truncated");
            return Ok(());
        }
        let len = u16::from_be_bytes([input[0], input[1]]) as usize;
        if len > MAX_FRAME_LEN {
            prop_assert!(matches!(res, Err(FrameError::TooLong(n)) if n == len), "{}", kind(&res));
        } else if input.len() < 2 + len {
            prop_assert_eq!(kind(&res), "truncated");
        } else {
            let body = &input[2..2 + len];
            match (&res, Frame::decode(body)) {
                (Ok(read), Ok(decoded)) => {
                    prop_assert_eq!(read, &decoded);
                    prop_assert_eq!(consumed, 2 + len, "must consume exactly one frame");
                }
                (Err(FrameError::Malformed(_)), Err(FrameError::Malformed(_))) => {}
                (got, want) => prop_assert!(
                    false,
                    "read_frame gave {} but Frame::decode of the body gave {}",
                    kind(got),
                    kind(&want)
                ),
            }
        }
        if res.is_ok() {
            prop_assert_eq!(consumed, 2 + len);
        }
    });
}

#[test]
fn a_prefix_above_the_limit_is_too_long_whatever_follows() {
    let rt = runtime();
    let follow = prop_oneof![
        bytes(256).prop_map(Follow::Noise),
        // A real frame's JSON padded with whitespace to exactly the announced
        // length: valid JSON, and still refused for its size.
        (arb_frame(), bytes(8)).prop_map(|(f, tail)| Follow::Padded(Box::new(f), tail)),
    ];
    proptest!(config(192), |(len in (MAX_FRAME_LEN as u16 + 1)..=u16::MAX, follow in follow)| {
        let body = follow.materialise(len as usize);
        let mut input = len.to_be_bytes().to_vec();
        input.extend_from_slice(&body);
        let (res, _) = read_one(&rt, &input);
        prop_assert!(
            matches!(res, Err(FrameError::TooLong(n)) if n == len as usize),
            "prefix {} gave {}", len, kind(&res)
        );
        if body.len() > MAX_FRAME_LEN {
            prop_assert!(matches!(Frame::decode(&body), Err(FrameError::TooLong(_))));
        }
    });
}

#[test]
fn the_limit_is_exactly_max_frame_len() {
    let rt = runtime();
    let lens = (MAX_FRAME_LEN - 3)..=(MAX_FRAME_LEN + 3);
    proptest!(config(96), |(frame in arb_frame(), len in lens, trailing in bytes(8))| {
        let mut body = serde_json::to_vec(&frame).expect("JSON");
        prop_assume!(body.len() <= len);
        body.resize(len, b' ');
        let mut input = (len as u16).to_be_bytes().to_vec();
        input.extend_from_slice(&body);
        input.extend_from_slice(&trailing);
        let (res, consumed) = read_one(&rt, &input);
        if len <= MAX_FRAME_LEN {
            match res {
                Ok(read) => prop_assert_eq!(read, frame.clone()),
                Err(e) => prop_assert!(false, "a {len}-byte frame was refused: {e}"),
            }
            prop_assert_eq!(consumed, 2 + len);
            prop_assert_eq!(Frame::decode(&body).expect("decodes"), frame);
        } else {
            prop_assert!(matches!(res, Err(FrameError::TooLong(n)) if n == len));
            prop_assert!(matches!(Frame::decode(&body), Err(FrameError::TooLong(n)) if n == len));
        }
    });
}

/// What follows an oversize prefix.
#[derive(Debug, Clone)]
enum Follow {
    Noise(Vec<u8>),
    Padded(Box<Frame>, Vec<u8>),
}

impl Follow {
    fn materialise(&self, len: usize) -> Vec<u8> {
        match self {
            Follow::Noise(b) => b.clone(),
            Follow::Padded(f, tail) => {
                let mut body = serde_json::to_vec(f).expect("JSON");
                if body.len() < len {
                    body.resize(len, b' ');
                }
                body.extend_from_slice(tail);
                body
            }
        }
    }
}

/// Whatever decodes must survive a trip back through the encoder. Encoding
/// may only fail for size: defaults (an `open` without `session`) make the
/// re-encoded body a little longer than a body right at the limit.
fn check_reencodes(frame: &Frame) -> Result<(), TestCaseError> {
    match frame.encode() {
        Ok(wire) => match Frame::decode(&wire[2..]) {
            Ok(again) => prop_assert_eq!(&again, frame),
            Err(e) => prop_assert!(false, "a re-encoded frame failed to decode: {e}"),
        },
        Err(FrameError::TooLong(n)) => prop_assert!(n > MAX_FRAME_LEN),
        Err(e) => prop_assert!(false, "a decoded frame failed to re-encode: {e}"),
    }
    Ok(())
}

#[test]
fn decode_of_any_bytes_never_panics() {
    proptest!(config(2048), |(body in prop_oneof![bytes(1024), wire_input()])| {
        if let Ok(frame) = Frame::decode(&body) {
            check_reencodes(&frame)?;
        }
    });
}

#[test]
fn decode_of_edited_frame_json_never_panics_and_ignores_unknown_fields() {
    proptest!(config(1024), |(
        frame in arb_frame(),
        edits in prop::collection::vec(edit(), 0..5),
        unknown in prop::collection::btree_map("x-[a-z_]{0,8}", json_value(), 1..4),
    )| {
        let edited = serde_json::to_vec(&apply(&frame, &edits)).expect("JSON");
        if let Ok(decoded) = Frame::decode(&edited) {
            check_reencodes(&decoded)?;
        }

        // Fields this version does not know are ignored (forward compatibility).
        let mut v = serde_json::to_value(&frame).expect("JSON");
        let obj = v.as_object_mut().expect("object");
        for (k, val) in unknown {
            obj.insert(k, val);
        }
        let body = serde_json::to_vec(&v).expect("JSON");
        if body.len() <= MAX_FRAME_LEN {
            match Frame::decode(&body) {
                Ok(decoded) => prop_assert_eq!(decoded, frame),
                Err(e) => prop_assert!(false, "unknown fields broke decoding: {e}"),
            }
        }
    });
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let rt = runtime();
    let open = prop::sample::select(vec!["[", "{\"a\":", "{\"type\":", "[{\"x\":"]);
    proptest!(config(48), |(depth in 0usize..MAX_FRAME_LEN, open in open)| {
        let mut body = open.repeat(depth).into_bytes();
        body.truncate(MAX_FRAME_LEN);
        prop_assert!(Frame::decode(&body).is_err());
        let mut input = (body.len() as u16).to_be_bytes().to_vec();
        input.extend_from_slice(&body);
        let (res, _) = read_one(&rt, &input);
        prop_assert!(res.is_err());
    });
}

// -------------------------------------------------------------------- tokens

fn secret() -> Secret {
    Secret::new(b"property-test-secret-0123456789".to_vec()).expect("secret")
}

/// Host ids: mostly valid ones, some of any text, some just past the limits.
fn arb_sub() -> BoxedStrategy<String> {
    prop_oneof![
        12 => "[A-Za-z0-9_][A-Za-z0-9._-]{0,63}",
        2 => text(),
        1 => Just("x".repeat(MAX_HOST_ID_LEN + 1)),
        1 => "[A-Za-z0-9]{1,8}[^A-Za-z0-9._-][A-Za-z0-9]{0,8}",
    ]
    .boxed()
}

/// Token times: mostly plausible, some at or past MAX_EXP.
fn arb_time() -> BoxedStrategy<u64> {
    prop_oneof![
        30 => 0..=MAX_EXP,
        1 => Just(MAX_EXP),
        1 => Just(MAX_EXP + 1),
        2 => arb_u64(),
    ]
    .boxed()
}

fn arb_claims() -> BoxedStrategy<Claims> {
    (
        arb_sub(),
        arb_role(),
        prop_oneof![3 => Just(AUDIENCE.to_owned()), 1 => text()],
        arb_time(),
        arb_time(),
        arb_u64(),
        prop::option::of(text()),
        prop_oneof![
            4 => Just(Vec::new()),
            2 => prop::collection::vec("[a-z0-9*?.-]{1,12}", 1..4),
            1 => prop::collection::vec(text(), 1..3),
        ],
    )
        .prop_map(|(sub, role, aud, exp, nbf, iat, jti, hosts)| Claims {
            sub,
            role,
            aud,
            exp,
            nbf,
            iat,
            jti,
            hosts,
        })
        .boxed()
}

/// The obvious recursive definition of a match, which `glob_match` (a
/// single pass that backtracks to the last `*`) must agree with.
fn glob_model(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| glob_model(rest, &s[i..])),
        Some((&c, rest)) => match s.split_first() {
            Some((&d, tail)) => (c == b'?' || c == d) && glob_model(rest, tail),
            None => false,
        },
    }
}

#[test]
fn host_patterns_match_as_the_simple_model_does() {
    proptest!(config(4096), |(p in "[ab*?]{0,8}", s in "[ab]{0,10}")| {
        prop_assert_eq!(glob_match(&p, &s), glob_model(p.as_bytes(), s.as_bytes()), "{} {}", p, s);
    });
}

/// What `verify` finds wrong with a validly signed token, in the order it
/// looks: a token built with several of these is refused for the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Defect {
    /// `exp` or `nbf` after [`MAX_EXP`].
    OutOfRange,
    /// `sub` not a host id, a `hosts` entry not a pattern, or a host token
    /// with a host list.
    BadHostId,
    /// `aud` names another relay.
    WrongAudience,
    /// Checked for the other role.
    WrongRole,
    /// Checked at or after `exp`.
    Expired,
    /// Checked before `nbf`.
    NotYetValid,
}

impl Defect {
    /// The refusal of `claims`, checked for `role`, whose first defect this is.
    fn refusal(self, claims: &Claims, role: Role) -> TokenError {
        match self {
            Defect::OutOfRange => TokenError::OutOfRange,
            Defect::BadHostId => TokenError::BadHostId,
            Defect::WrongAudience => TokenError::WrongAudience {
                found: claims.aud.clone(),
                expected: AUDIENCE.to_owned(),
            },
            Defect::WrongRole => TokenError::WrongRole {
                found: claims.role,
                wanted: role,
            },
            Defect::Expired => TokenError::Expired(claims.exp),
            Defect::NotYetValid => TokenError::NotYetValid(claims.nbf),
        }
    }
}

/// Claims built to have exactly `defects` (sorted) when checked for `role`
/// at `now`. The defects come from how the claims were made, never from
/// looking at them.
#[derive(Debug, Clone)]
struct Built {
    claims: Claims,
    role: Role,
    now: u64,
    defects: Vec<Defect>,
}

/// A host id by its grammar: 1 to 64 ASCII letters, digits, `.`, `_`, `-`,
/// the first not `.` or `-`.
const HOST_ID: &str = "[A-Za-z0-9_][A-Za-z0-9._-]{0,63}";
/// A host pattern: the same with `*` and `?`.
const HOST_PATTERN: &str = "[A-Za-z0-9_*?][A-Za-z0-9._*?-]{0,63}";

/// A character outside the host id grammar (`extra` also allowed).
fn outside(extra: &'static str) -> BoxedStrategy<char> {
    any::<char>()
        .prop_filter("outside the grammar", move |c| {
            !(c.is_ascii_alphanumeric() || "._-".contains(*c) || extra.contains(*c))
        })
        .boxed()
}

/// Not a host id (`extra` characters also allowed): empty, too long,
/// starting with `.` or `-`, or with one character outside the grammar.
fn not_a_host_id(chars: &str, extra: &'static str) -> BoxedStrategy<String> {
    let regex = |r: String| proptest::string::string_regex(&r).expect("a valid regex");
    let part = || regex(format!("[{chars}]{{0,30}}"));
    prop_oneof![
        Just(String::new()),
        regex(format!("[{chars}]{{65,100}}")),
        (prop::sample::select(vec!['.', '-']), part()).prop_map(|(c, b)| format!("{c}{b}")),
        (part(), outside(extra), part()).prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ]
    .boxed()
}

/// How a host id defect is built into a token.
#[derive(Debug, Clone)]
enum BadHost {
    /// This `sub`.
    Subject(String),
    /// This entry in `hosts`, at this place.
    Pattern(String, Index),
    /// A role of host and these (valid) patterns.
    HostList(Vec<String>),
}

fn bad_host() -> BoxedStrategy<BadHost> {
    prop_oneof![
        not_a_host_id("A-Za-z0-9._-", "").prop_map(BadHost::Subject),
        (not_a_host_id("A-Za-z0-9._*?-", "*?"), any::<Index>())
            .prop_map(|(p, i)| BadHost::Pattern(p, i)),
        prop::collection::vec(HOST_PATTERN, 1..4).prop_map(BadHost::HostList),
    ]
    .boxed()
}

/// How far a time lies from `now`: at the boundary, past it by some
/// seconds, or at the end of the range (0 or [`MAX_EXP`]).
#[derive(Debug, Clone, Copy)]
enum Reach {
    Edge,
    By(u64),
    Limit,
}

/// `exp`, `nbf`, `now` and the time defects they were built with.
fn times() -> BoxedStrategy<(u64, u64, u64, Vec<Defect>)> {
    const QUARTER: u64 = MAX_EXP / 4;
    let reach = || {
        prop_oneof![
            2 => Just(Reach::Edge),
            2 => (1u64..1000).prop_map(Reach::By),
            2 => (1..QUARTER).prop_map(Reach::By),
            1 => Just(Reach::Limit),
        ]
    };
    let flag = || prop::bool::weighted(0.25);
    let in_range = (QUARTER..3 * QUARTER, flag(), reach(), flag(), reach()).prop_map(
        |(now, expired, to_exp, early, to_nbf)| {
            let exp = match (expired, to_exp) {
                (true, Reach::Edge) => now,
                (true, Reach::By(d)) => now - d,
                (true, Reach::Limit) => 0,
                (false, Reach::Edge) => now + 1,
                (false, Reach::By(d)) => now + 1 + d,
                (false, Reach::Limit) => MAX_EXP,
            };
            let nbf = match (early, to_nbf) {
                (true, Reach::Edge) => now + 1,
                (true, Reach::By(d)) => now + 1 + d,
                (true, Reach::Limit) => MAX_EXP,
                (false, Reach::Edge) => now,
                (false, Reach::By(d)) => now - d,
                (false, Reach::Limit) => 0,
            };
            let mut defects = Vec::new();
            if expired {
                defects.push(Defect::Expired);
            }
            if early {
                defects.push(Defect::NotYetValid);
            }
            (exp, nbf, now, defects)
        },
    );
    // Past the range, times are not compared with `now` at all.
    let beyond = || prop_oneof![Just(MAX_EXP + 1), (MAX_EXP + 1)..=u64::MAX, Just(u64::MAX)];
    let within_range = || prop_oneof![0..=MAX_EXP, Just(MAX_EXP)];
    let out_of_range = prop_oneof![
        (beyond(), within_range()),
        (within_range(), beyond()),
        (beyond(), beyond()),
    ];
    prop_oneof![
        4 => in_range,
        1 => (out_of_range, arb_u64())
            .prop_map(|((exp, nbf), now)| (exp, nbf, now, vec![Defect::OutOfRange])),
    ]
    .boxed()
}

/// Tokens with any combination of defects, each built in on purpose, and
/// about one in five with none.
fn built() -> BoxedStrategy<Built> {
    let client_hosts = prop_oneof![Just(Vec::new()), prop::collection::vec(HOST_PATTERN, 1..4),];
    let other_audience = prop_oneof![
        text(),
        Just(String::new()),
        Just("Shellrelay".to_owned()),
        Just(format!("{AUDIENCE} ")),
    ]
    .prop_filter("another audience", |a| a != AUDIENCE);
    (
        (
            arb_role(),
            HOST_ID,
            client_hosts,
            arb_u64(),
            prop::option::of(text()),
        ),
        prop::option::weighted(0.25, bad_host()),
        prop::option::weighted(0.25, other_audience),
        prop::bool::weighted(0.25),
        times(),
    )
        .prop_map(
            |((role, sub, hosts, iat, jti), bad_host, aud, wrong_role, times)| {
                let (exp, nbf, now, mut defects) = times;
                let mut claims = Claims {
                    sub,
                    role,
                    aud: AUDIENCE.to_owned(),
                    exp,
                    nbf,
                    iat,
                    jti,
                    hosts: if role == Role::Client {
                        hosts
                    } else {
                        Vec::new()
                    },
                };
                if let Some(bad) = bad_host {
                    match bad {
                        BadHost::Subject(sub) => claims.sub = sub,
                        BadHost::Pattern(p, at) => {
                            claims.hosts.insert(at.index(claims.hosts.len() + 1), p);
                        }
                        BadHost::HostList(hosts) => {
                            claims.role = Role::Host;
                            claims.hosts = hosts;
                        }
                    }
                    defects.push(Defect::BadHostId);
                }
                if let Some(aud) = aud {
                    claims.aud = aud;
                    defects.push(Defect::WrongAudience);
                }
                let role = match (claims.role, wrong_role) {
                    (r, false) => r,
                    (Role::Host, true) => Role::Client,
                    (Role::Client, true) => Role::Host,
                };
                if wrong_role {
                    defects.push(Defect::WrongRole);
                }
                defects.sort();
                Built {
                    claims,
                    role,
                    now,
                    defects,
                }
            },
        )
        .boxed()
}

/// Strings shaped like JWTs (but never validly signed), and noise.
fn token_like() -> BoxedStrategy<String> {
    let header = prop_oneof![
        prop::sample::select(vec![
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"ES256"}"#,
            r#"{"alg":"EdDSA"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"alg":"HS256","jwk":{"kty":"oct","k":"AAAA"}}"#,
        ])
        .prop_map(|h| h.as_bytes().to_vec()),
        json_value().prop_map(|v| serde_json::to_vec(&v).expect("JSON")),
        bytes(64),
    ];
    let payload = prop_oneof![
        arb_claims().prop_map(|c| serde_json::to_vec(&c).expect("JSON")),
        json_value().prop_map(|v| serde_json::to_vec(&v).expect("JSON")),
        bytes(128),
    ];
    let segment = prop_oneof![
        "[A-Za-z0-9_=+/-]{0,64}",
        "[A-Za-z0-9_-]{0,8}[^A-Za-z0-9_-][A-Za-z0-9_-]{0,8}",
        bytes(48).prop_map(|b| URL_SAFE_NO_PAD.encode(&b)),
    ];
    prop_oneof![
        any::<String>(),
        prop::collection::vec(any::<char>(), 0..256).prop_map(String::from_iter),
        (header, payload, prop_oneof![Just(Vec::new()), bytes(40)]).prop_map(|(h, p, s)| format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&h),
            URL_SAFE_NO_PAD.encode(&p),
            URL_SAFE_NO_PAD.encode(&s)
        )),
        prop::collection::vec(segment, 0..6).prop_map(|s| s.join(".")),
    ]
    .boxed()
}

#[test]
fn verify_of_any_string_never_panics_and_never_accepts() {
    let v = Verifier::new(&secret(), AUDIENCE);
    proptest!(config(1024), |(token in token_like(), role in arb_role(), now in arb_u64())| {
        let res = v.verify(&token, role, now);
        prop_assert!(res.is_err(), "accepted an unsigned token: {:?}", res);
        // The relay sends this text to the peer.
        let _ = res.map_err(|e| e.to_string());
    });
}

#[test]
fn verify_of_signed_tokens_reports_the_first_defect_they_were_built_with() {
    let s = secret();
    let v = Verifier::new(&s, AUDIENCE);
    proptest!(config(768), |(t in built())| {
        let token = mint(&s, &t.claims).expect("mint");
        let got = v.verify(&token, t.role, t.now);
        let want = match t.defects.first() {
            None => Ok(t.claims.clone()),
            Some(first) => Err(first.refusal(&t.claims, t.role)),
        };
        prop_assert_eq!(&got, &want, "built with {:?}", t.defects);
        // The relay logs this and sends it to the peer: it must not panic
        // whatever times the token holds.
        if let Err(e) = got {
            prop_assert!(!e.to_string().is_empty());
        }
    });
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, u8),
    Delete(Index),
    Insert(Index, u8),
}

#[test]
fn verify_of_a_mutated_token_never_panics_or_yields_other_claims() {
    let s = secret();
    let v = Verifier::new(&s, AUDIENCE);
    let mutation = prop_oneof![
        6 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        1 => any::<Index>().prop_map(Mutation::Delete),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ];
    let valid = (
        arb_claims(),
        "[A-Za-z0-9_][A-Za-z0-9._-]{0,63}",
        0..MAX_EXP / 2,
        1..MAX_EXP / 2,
        any::<Index>(),
    )
        .prop_map(|(mut c, sub, nbf, span, at)| {
            c.sub = sub;
            c.aud = AUDIENCE.to_owned();
            // Valid host lists, and only on client tokens.
            c.hosts.retain(|p| valid_host_pattern(p));
            if c.role == Role::Host {
                c.hosts.clear();
            }
            c.nbf = nbf;
            c.exp = nbf + span;
            let now = nbf + at.index(span as usize) as u64;
            (c, now)
        });
    proptest!(config(1024), |((claims, now) in valid, m in mutation)| {
        let token = mint(&s, &claims).expect("mint");
        prop_assert_eq!(v.verify(&token, claims.role, now), Ok(claims.clone()));

        let mut raw = token.clone().into_bytes();
        match m {
            Mutation::Replace(i, b) => {
                let n = i.index(raw.len());
                raw[n] = b;
            }
            Mutation::Delete(i) => {
                raw.remove(i.index(raw.len()));
            }
            Mutation::Insert(i, b) => raw.insert(i.index(raw.len() + 1), b),
        }
        let mutated = String::from_utf8_lossy(&raw);
        for role in [Role::Host, Role::Client] {
            match v.verify(&mutated, role, now) {
                // Only a change the decoders cannot see (none, or a base64
                // padding bit) may pass, and then it must mean the same.
                Ok(got) => prop_assert_eq!(got, claims.clone()),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    });
}

// ------------------------------------------------------ close codes/reasons

#[test]
fn every_reason_code_round_trips() {
    for r in all_reasons() {
        assert_eq!(Reason::from_code(r.code().into()), r, "{r:?}");
        assert_eq!(Reason::from_name(r.as_str()), r, "{r:?}");
        assert_eq!(
            Reason::from_code(shellrelay::net::transport::ErrorCode::from(r).0),
            r,
            "{r:?}"
        );
    }
}

fn arb_code() -> BoxedStrategy<u64> {
    prop_oneof![
        0u64..16,
        any::<u64>(),
        Just(0xff),
        // Known codes in the low bits with junk above, to catch truncation.
        (0u64..13, 1u64..=u32::MAX as u64).prop_map(|(lo, hi)| hi << 32 | lo),
        (0u64..13, 1u64..=0xffff).prop_map(|(lo, hi)| hi << 16 | lo),
    ]
    .boxed()
}

#[test]
fn unknown_codes_are_unknown_and_known_codes_map_back() {
    proptest!(config(2048), |(code in arb_code())| {
        let r = Reason::from_code(code);
        if code <= 11 {
            prop_assert_ne!(r, Reason::Unknown);
            prop_assert_eq!(u64::from(r.code()), code);
        } else {
            prop_assert_eq!(r, Reason::Unknown);
        }
    });
}

#[test]
fn any_application_close_reads_as_a_refusal() {
    let reason_bytes = prop_oneof![
        bytes(1200),
        text().prop_map(String::into_bytes),
        Just(Vec::new()),
    ];
    let code = arb_code().prop_map(|c| c & ((1 << 62) - 1));
    proptest!(config(1024), |(code in code, reason in reason_bytes)| {
        let err = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u64(code).expect("within varint range"),
            reason: Bytes::from(reason.clone()),
        });
        let refusal = shellrelay::net::transport::refusal_of(&err);
        prop_assert!(refusal.is_some());
        let refusal = refusal.expect("checked");
        prop_assert_eq!(refusal.reason, Reason::from_code(code));
        if reason.is_empty() {
            prop_assert_eq!(&refusal.message, &refusal.reason.to_string());
        } else {
            prop_assert_eq!(&refusal.message, &String::from_utf8_lossy(&reason).into_owned());
        }
        prop_assert!(!refusal.message.is_empty());
        prop_assert_eq!(refusal.to_string(), refusal.message.clone());

        // A close reason fits in one packet, so the refusal always fits in a frame.
        if reason.len() <= 1200 {
            let frame = refusal.frame();
            let wire = frame.encode().expect("refusal frame encodes");
            prop_assert_eq!(Frame::decode(&wire[2..]).expect("decodes"), frame);
        }
    });
}

#[test]
fn other_connection_errors_are_not_refusals() {
    for err in [
        quinn::ConnectionError::VersionMismatch,
        quinn::ConnectionError::Reset,
        quinn::ConnectionError::TimedOut,
        quinn::ConnectionError::LocallyClosed,
        quinn::ConnectionError::CidsExhausted,
    ] {
        assert_eq!(shellrelay::net::transport::refusal_of(&err), None, "{err}");
    }
}
