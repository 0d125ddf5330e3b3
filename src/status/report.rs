//! `shellrelay status`: one GET of the relay's `/status`, printed as a
//! table.

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock::fmt_unix;
use crate::defaults::FETCH_TIMEOUT;
use crate::metrics::Status;

/// Largest answer `shellrelay status` reads: a host takes about 150 bytes,
/// so this holds the default limit of 10,000 hosts many times over.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Fetches `/status` from the endpoint at `addr` (`HOST:PORT`).
pub async fn fetch(addr: &str) -> anyhow::Result<Status> {
    let body = tokio::time::timeout(FETCH_TIMEOUT, get(addr, "/status"))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr} within {FETCH_TIMEOUT:?}"))??;
    serde_json::from_slice(&body)
        .with_context(|| format!("http://{addr}/status did not answer with a relay status"))
}

/// One GET on a fresh connection; returns the body of a 200 answer. Reads
/// to the end of the stream, as the relay's endpoint closes after answering.
async fn get(addr: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await.with_context(|| {
        format!("could not reach the relay's metrics endpoint at {addr} (is the relay running with --metrics {addr}?)")
    })?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .with_context(|| format!("could not send a request to {addr}"))?;
    let mut raw = Vec::new();
    (&mut tcp)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .with_context(|| format!("could not read the answer from {addr}"))?;
    if raw.len() > MAX_RESPONSE {
        bail!("the answer from {addr} is longer than {MAX_RESPONSE} bytes");
    }
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("{addr} did not answer with HTTP");
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head.lines().next().unwrap_or_default();
    if status.split(' ').nth(1) != Some("200") {
        bail!("http://{addr}{path} answered {status:?}");
    }
    Ok(raw.split_off(end + 4))
}

/// `status` as a table, one line per host, or a line saying there are none.
pub fn table(status: &Status) -> String {
    if status.hosts.is_empty() {
        return "no hosts online\n".to_owned();
    }
    let header = [
        "HOST",
        "SINCE",
        "REMOTE",
        "SESSIONS",
        "BYTES TO HOST",
        "BYTES TO CLIENT",
    ];
    let rows: Vec<[String; 6]> = status
        .hosts
        .iter()
        .map(|h| {
            [
                h.id.clone(),
                fmt_unix(h.since),
                h.remote.to_string(),
                h.sessions.to_string(),
                h.bytes_to_host.to_string(),
                h.bytes_to_client.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Text left-aligned, counts right-aligned.
            let cell = if i < 3 {
                format!("{cell:<w$}")
            } else {
                format!("{cell:>w$}")
            };
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(&cell);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::HostStatus;

    #[test]
    fn table_aligns_columns() {
        let host = |id: &str, sessions, bytes| HostStatus {
            id: id.into(),
            since: 1_700_000_000,
            remote: "192.0.2.7:50000".parse().unwrap(),
            sessions,
            bytes_to_host: bytes,
            bytes_to_client: bytes * 10,
        };
        let status = Status {
            hosts: vec![host("a", 2, 5), host("longer-id", 10, 123_456)],
        };
        let want = "\
HOST       SINCE                 REMOTE           SESSIONS  BYTES TO HOST  BYTES TO CLIENT
a          2023-11-14T22:13:20Z  192.0.2.7:50000         2              5               50
longer-id  2023-11-14T22:13:20Z  192.0.2.7:50000        10         123456          1234560
";
        assert_eq!(table(&status), want);
        assert_eq!(table(&Status { hosts: vec![] }), "no hosts online\n");
    }
}
