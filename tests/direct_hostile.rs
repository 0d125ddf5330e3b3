//! The direct path against peers that misbehave on purpose: introductions
//! beyond a token's rate, a direct connection from an address nobody
//! introduced, a wrong ticket and a ticket used twice. An in-process
//! relay and host agent on loopback; the client is this test, speaking
//! the protocol itself.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use shellrelay::access::token::TokenSource;
use shellrelay::net::transport::dial::{self, RelayLink};
use shellrelay::net::transport::{Closed, Conn, TransportOptions};
use shellrelay::protocol::{
    read_frame, write_frame, Direct, Frame, FrameError, Reason, Resume, Role,
};
use support::traffic::echo_server;
use support::*;

/// A client connection to the relay for host `lab1`.
async fn client(tunnel: &Tunnel) -> RelayLink {
    let token = TokenSource::Literal(tunnel.token(Role::Client, "lab1", HOUR));
    within(
        WAIT,
        "the client's hello",
        dial::connect(&tunnel.relay_addr(), &token, Role::Client, None),
    )
    .await
    .expect("client connects")
}

/// Opens a session asking for an introduction; the relay's answer to it.
async fn ask(conn: &Conn) -> Option<Direct> {
    let ask = Direct::Ask { addrs: vec![] };
    match open(conn, None, Some(ask)).await.1 {
        Ok(Frame::Ready { direct, .. }) => direct,
        other => panic!("not ready: {other:?}"),
    }
}

/// Opens a session on `conn` with `resume` and `direct`, and as some
/// other token's (which the relay or host must not believe): its stream
/// and the answer.
async fn open(
    conn: &Conn,
    resume: Option<Resume>,
    direct: Option<Direct>,
) -> (
    shellrelay::net::transport::Stream,
    Result<Frame, FrameError>,
) {
    let mut stream = within(WAIT, "a stream", conn.open())
        .await
        .expect("a stream");
    let open = Frame::Open {
        session: 0,
        client: None,
        resume,
        owner: Some("someone else".into()),
        who: None,
        direct,
    };
    write_frame(&mut stream.send, &open).await.expect("open");
    let answer = within(WAIT, "an answer", read_frame(&mut stream.recv)).await;
    (stream, answer)
}

/// A host agent that takes direct connections, and the relay's
/// introduction of a client to it: the host's addresses, pin and ticket.
async fn introduced(tunnel: &Tunnel) -> (Peer, RelayLink, Vec<SocketAddr>, String, String) {
    let host = tunnel.host_direct("lab1", echo_server().await).await;
    let link = client(tunnel).await;
    let Some(Direct::Meet { ticket, addrs, pin }) = ask(&link.conn).await else {
        panic!("no introduction");
    };
    let addrs = shellrelay::protocol::direct::candidates(&addrs);
    (host, link, addrs, pin, ticket)
}

/// Presents `ticket` on `conn`: whether the host welcomed it, or why it
/// refused (in a frame, or in closing the connection, which may overtake
/// the frame).
async fn present(conn: &Conn, ticket: &str) -> Result<(), Reason> {
    let mut control = conn.open().await.expect("control stream");
    let frame = Frame::Ticket {
        ticket: ticket.to_owned(),
    };
    let _ = write_frame(&mut control.send, &frame).await;
    match within(WAIT, "the host's answer", read_frame(&mut control.recv)).await {
        Ok(Frame::Welcome { .. }) => Ok(()),
        Ok(Frame::Refused { reason, .. }) => Err(reason),
        Ok(other) => panic!("the host answered {other:?}"),
        Err(err) => match within(WAIT, "the close", conn.closed()).await {
            Closed::Peer(refusal) => Err(refusal.reason),
            other => panic!("no answer ({err}) and the connection {other:?}"),
        },
    }
}

#[tokio::test]
async fn a_token_is_introduced_at_most_its_burst_at_once() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host_direct("lab1", echo_server().await).await;
    let link = client(&tunnel).await;
    let mut met = 0;
    let started = std::time::Instant::now();
    for _ in 0..12 {
        if let Some(Direct::Meet { .. }) = ask(&link.conn).await {
            met += 1;
        }
    }
    // A burst of 8, and one a second after that (the asks take some
    // milliseconds each; on a slow machine more).
    let most = 8 + started.elapsed().as_secs() + 1;
    assert!(
        met >= 8 && met <= most,
        "{met} introductions of 12 asked, at most {most}"
    );
}

#[tokio::test]
async fn a_right_ticket_is_welcomed_once_and_a_wrong_one_closes_the_connection() {
    let tunnel = Tunnel::start().await;
    let (_host, link, addrs, pin, ticket) = introduced(&tunnel).await;
    let dialer = link.direct_dialer().expect("over QUIC");
    let options = TransportOptions::default();
    let pin = pin.parse().expect("a pin");

    let wrong = "0".repeat(32);
    let conn = dialer
        .dial(&addrs, pin, options)
        .await
        .expect("a handshake");
    assert_eq!(present(&conn, &wrong).await, Err(Reason::BadToken));
    within(
        WAIT,
        "the wrong ticket's connection to close",
        conn.closed(),
    )
    .await;

    let conn = dialer
        .dial(&addrs, pin, options)
        .await
        .expect("a handshake");
    assert_eq!(present(&conn, &ticket).await, Ok(()), "the relay's ticket");
    let again = dialer
        .dial(&addrs, pin, options)
        .await
        .expect("a handshake");
    assert_eq!(
        present(&again, &ticket).await,
        Err(Reason::BadToken),
        "used twice"
    );

    // Only a relay says a token has ended: from a client, it is refused.
    let ended = Resume::Ended { why: "x".into() };
    assert!(
        session(&conn, Some(ended)).await.is_none(),
        "an ended from a client"
    );
    // A plain session on the admitted connection reaches the target.
    assert!(session(&conn, None).await.is_some(), "a session on it");
}

/// Opens a session on `conn` with `resume`; its id once `ready`.
async fn session(conn: &Conn, resume: Option<Resume>) -> Option<u64> {
    match open(conn, resume, None).await.1 {
        Ok(Frame::Ready { session, .. }) => Some(session),
        _ => None,
    }
}

/// 127.0.0.2 is this machine too, but nobody introduced it: its attempt
/// gets no answer at all, not even a refusal.
#[tokio::test]
async fn an_address_nobody_introduced_gets_no_answer() {
    let tunnel = Tunnel::start().await;
    let (_host, _link, addrs, _pin, _ticket) = introduced(&tunnel).await;
    let host = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .copied()
        .expect("an IPv4 address");
    let alpn = b"shellrelay-direct/1";
    // From the introduced address the same attempt is answered (its TLS
    // fails: this endpoint trusts the relay's certificate, not the
    // host's): the host does listen there.
    let known = tunnel.raw_endpoint_at("127.0.0.1:0".parse().unwrap(), alpn);
    let attempt = known.connect(host, "host").expect("an attempt");
    let answer = tokio::time::timeout(Duration::from_secs(3), attempt).await;
    assert!(
        answer.is_ok(),
        "the host did not answer an introduced address"
    );
    let stranger = tunnel.raw_endpoint_at("127.0.0.2:0".parse().unwrap(), alpn);
    let attempt = stranger.connect(host, "host").expect("an attempt");
    let answer = tokio::time::timeout(Duration::from_secs(3), attempt).await;
    assert!(answer.is_err(), "the host answered a stranger: {answer:?}");
}

/// A client token holds at most 4 direct connections: the fifth is
/// refused before its welcome (so the client stays on the relay), and a
/// direct connection takes at most 64 sessions, the next refused so that
/// the client opens it through the relay.
#[tokio::test]
async fn direct_connections_and_their_sessions_are_capped_with_a_refusal() {
    let tunnel = Tunnel::start().await;
    let _host = tunnel.host_direct("lab1", echo_server().await).await;
    let link = client(&tunnel).await;
    let dialer = link.direct_dialer().expect("over QUIC");
    let mut admitted = Vec::new();
    for i in 0..5 {
        let Some(Direct::Meet { ticket, addrs, pin }) = ask(&link.conn).await else {
            panic!("no introduction");
        };
        let addrs = shellrelay::protocol::direct::candidates(&addrs);
        let options = TransportOptions::default();
        let conn = dialer
            .dial(&addrs, pin.parse().unwrap(), options)
            .await
            .expect("a handshake");
        let answer = present(&conn, &ticket).await;
        match i {
            0..=3 => assert_eq!(answer, Ok(()), "connection {i}"),
            _ => assert_eq!(answer, Err(Reason::Limit), "connection {i}"),
        }
        admitted.push(conn);
    }
    let conn = &admitted[0];
    let mut held = Vec::new();
    for i in 0..64 {
        let stream = open(conn, None, None).await;
        assert!(
            matches!(stream.1, Ok(Frame::Ready { .. })),
            "session {i}: {:?}",
            stream.1
        );
        held.push(stream.0);
    }
    let over = open(conn, None, None).await.1;
    assert!(
        matches!(
            &over,
            Ok(Frame::Refused {
                reason: Reason::Limit,
                ..
            })
        ),
        "the 65th: {over:?}"
    );
}
