//! Raw HTTP/1 against the relay's metrics endpoint: requests sent byte for
//! byte as written, answers read to the end of the stream and checked for
//! what every answer carries.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{within, Tunnel, WAIT};

/// Starts the relay's metrics endpoint on a free loopback port, as
/// `relay --metrics` does, until the tunnel stops.
pub fn metrics_addr(tunnel: &Tunnel) -> SocketAddr {
    let (listener, addr) =
        shellrelay::ops::status::bind("127.0.0.1:0".parse().unwrap()).expect("bind metrics");
    tokio::spawn(shellrelay::ops::status::serve(
        listener,
        tunnel.registry.pages(),
        tunnel.cancel.child_token(),
    ));
    addr
}

/// An HTTP answer: status line, status code, head and body.
#[derive(Debug)]
pub struct Answer {
    pub status_line: String,
    pub code: u16,
    pub head: String,
    pub body: String,
}

/// The value of header `name` (any case) in `head`.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Reads what the endpoint sends on `tcp` to the end of the stream: its
/// answer, or `None` when it closed or reset the connection unanswered.
pub async fn read_answer(tcp: &mut TcpStream) -> Option<Answer> {
    let mut raw = Vec::new();
    match within(
        WAIT,
        "the endpoint to answer or close",
        tcp.read_to_end(&mut raw),
    )
    .await
    {
        Ok(_) => {}
        Err(_) if raw.is_empty() => return None,
        Err(err) => panic!(
            "answer cut off ({err}): {:?}",
            String::from_utf8_lossy(&raw)
        ),
    }
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8(raw).expect("answer is UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    assert!(status_line.starts_with("HTTP/1."), "{head:?}");
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {head:?}"));
    Some(Answer {
        status_line,
        code,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// Sends `request` as is on a fresh connection and reads the answer, if
/// any; a write the endpoint refuses by closing is not an error here.
pub async fn try_exchange(addr: SocketAddr, request: &[u8]) -> Option<Answer> {
    let mut tcp = within(WAIT, "connect to metrics", TcpStream::connect(addr))
        .await
        .expect("connect to metrics");
    let _ = within(WAIT, "send a request", tcp.write_all(request)).await;
    let answer = read_answer(&mut tcp).await?;
    // One request per connection, said so; the length is the body's,
    // which an answer to HEAD leaves out.
    assert_eq!(
        header(&answer.head, "Connection"),
        Some("close"),
        "{}",
        answer.head
    );
    let length: usize = header(&answer.head, "Content-Length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {:?}", answer.head));
    if !request.starts_with(b"HEAD ") {
        assert_eq!(
            length,
            answer.body.len(),
            "Content-Length of {:?}",
            answer.head
        );
    }
    Some(answer)
}

/// As [`try_exchange`], for a request that must be answered.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    try_exchange(addr, request)
        .await
        .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(request)))
}

/// `GET path` over HTTP/1.1.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    exchange(addr, request.as_bytes()).await
}

/// A connection to `addr` from `from`, any address on loopback (such as
/// 127.0.0.2), to stand for another client.
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    within(WAIT, "connect to metrics", socket.connect(addr))
        .await
        .unwrap()
}
