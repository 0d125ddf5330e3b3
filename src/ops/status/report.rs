//! `shellrelay status`: one GET of the relay's `/status` with hyper's
//! HTTP/1 client, printed as a table.

use std::pin::pin;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONNECTION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::ops::clock::fmt_unix;
use crate::ops::defaults::FETCH_TIMEOUT;
use crate::ops::metrics::Status;

/// Largest answer `shellrelay status` reads: a host takes about 150 bytes,
/// so this holds the default limit of 10,000 hosts many times over.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Fetches `/status` from the endpoint at `addr` (`HOST:PORT`).
pub async fn fetch(addr: &str) -> anyhow::Result<Status> {
    let body = tokio::time::timeout(FETCH_TIMEOUT, get(addr, "/status"))
        .await
        .map_err(|_| anyhow!("no answer from {addr} within {FETCH_TIMEOUT:?}"))??;
    serde_json::from_slice(&body)
        .with_context(|| format!("http://{addr}/status did not answer with a relay status"))
}

/// One GET on a fresh connection; returns the body of a 200 answer.
async fn get(addr: &str, path: &'static str) -> anyhow::Result<Bytes> {
    let tcp = TcpStream::connect(addr).await.with_context(|| {
        format!("could not reach the relay's metrics endpoint at {addr} (is the relay running with --metrics {addr}?)")
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .with_context(|| format!("could not start HTTP with {addr}"))?;
    let mut request = Request::get(path).body(Empty::<Bytes>::new())?;
    let headers = request.headers_mut();
    headers.insert(
        HOST,
        HeaderValue::from_str(addr).with_context(|| format!("{addr:?} is not a host name"))?,
    );
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    let exchange = async move {
        let answer = sender
            .send_request(request)
            .await
            .with_context(|| format!("could not read the answer from {addr}"))?;
        if answer.status() != StatusCode::OK {
            bail!("http://{addr}{path} answered {}", answer.status());
        }
        let body = Limited::new(answer.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|err| {
                if err.is::<LengthLimitError>() {
                    anyhow!("the answer from {addr} is longer than {MAX_RESPONSE} bytes")
                } else {
                    anyhow!("could not read the answer from {addr}: {err}")
                }
            })?;
        Ok(body.to_bytes())
    };
    // The connection is driven here, not spawned: it ends with the answer.
    let (mut exchange, mut conn) = (pin!(exchange), pin!(conn));
    tokio::select! {
        body = &mut exchange => body,
        ended = &mut conn => {
            ended.with_context(|| format!("could not read the answer from {addr}"))?;
            exchange.await
        }
    }
}

/// `status` as tables: one line per host, or a line saying there are
/// none; then one line per client connection, if there are any.
pub fn table(status: &Status) -> String {
    if status.hosts.is_empty() {
        return "no hosts online\n".to_owned();
    }
    let hosts: Vec<Vec<String>> = status
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.id.clone(),
                fmt_unix(h.since),
                h.remote.to_string(),
                h.transport.clone(),
                if h.direct { "auto" } else { "off" }.to_owned(),
                h.sessions.to_string(),
                h.bytes_to_host.to_string(),
                h.bytes_to_client.to_string(),
            ]
        })
        .collect();
    let header = [
        "HOST",
        "SINCE",
        "REMOTE",
        "TRANSPORT",
        "DIRECT",
        "SESSIONS",
        "BYTES TO HOST",
        "BYTES TO CLIENT",
    ];
    let mut out = columns(&header, &hosts, 5);
    if !status.clients.is_empty() {
        let clients: Vec<Vec<String>> = status
            .clients
            .iter()
            .map(|c| {
                vec![
                    c.host.clone(),
                    c.subject.clone(),
                    fmt_unix(c.since),
                    c.remote.to_string(),
                    c.transport.clone(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&columns(
            &["CLIENT OF", "SUBJECT", "SINCE", "REMOTE", "TRANSPORT"],
            &clients,
            5,
        ));
    }
    out
}

/// `rows` under `header` in aligned columns: the first `text` columns
/// left-aligned, the counts after them right-aligned.
fn columns(header: &[&str], rows: &[Vec<String>], text: usize) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut line = String::new();
        for (i, (cell, &w)) in cells.iter().zip(&widths).enumerate() {
            let cell = if i < text {
                format!("{cell:<w$}")
            } else {
                format!("{cell:>w$}")
            };
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&cell);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::metrics::{ClientStatus, HostStatus};

    #[test]
    fn table_aligns_columns() {
        let host = |id: &str, sessions, bytes| HostStatus {
            id: id.into(),
            since: 1_700_000_000,
            remote: "192.0.2.7:50000".parse().unwrap(),
            transport: "quic".into(),
            direct: false,
            sessions,
            bytes_to_host: bytes,
            bytes_to_client: bytes * 10,
        };
        let client = ClientStatus {
            host: "a".into(),
            subject: "alice".into(),
            since: 1_700_000_000,
            remote: "198.51.100.1:40000".parse().unwrap(),
            transport: "tcp".into(),
        };
        let status = Status {
            hosts: vec![host("a", 2, 5), host("longer-id", 10, 123_456)],
            clients: vec![client],
        };
        let want = "\
HOST       SINCE                 REMOTE           TRANSPORT  DIRECT  SESSIONS  BYTES TO HOST  BYTES TO CLIENT
a          2023-11-14T22:13:20Z  192.0.2.7:50000  quic       off            2              5               50
longer-id  2023-11-14T22:13:20Z  192.0.2.7:50000  quic       off           10         123456          1234560

CLIENT OF  SUBJECT  SINCE                 REMOTE              TRANSPORT
a          alice    2023-11-14T22:13:20Z  198.51.100.1:40000  tcp
";
        assert_eq!(table(&status), want);
        let none = Status {
            hosts: vec![],
            clients: vec![],
        };
        assert_eq!(table(&none), "no hosts online\n");
    }
}
