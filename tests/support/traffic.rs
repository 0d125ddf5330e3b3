//! Targets behind a host agent (echo, greeting, any handler) and the
//! traffic tests send through a tunnel: pings, echoes and deterministic
//! noise checked by SHA-256.

use std::future::Future;
use std::net::SocketAddr;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{within, WAIT};

/// A TCP server that echoes every connection back and closes after the
/// peer's FIN; returns its address.
pub async fn echo_server() -> SocketAddr {
    serve(echo_back).await
}

/// Echoes `tcp` back until the peer's FIN, then closes.
async fn echo_back(mut tcp: TcpStream) {
    let (mut r, mut w) = tcp.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

/// Like [`echo_server`], and how many connections to it are open now.
pub async fn counted_echo_server() -> (SocketAddr, tokio::sync::watch::Receiver<usize>) {
    let (open, count) = tokio::sync::watch::channel(0usize);
    let open = std::sync::Arc::new(open);
    let target = serve(move |tcp| {
        let open = open.clone();
        async move {
            open.send_modify(|n| *n += 1);
            echo_back(tcp).await;
            open.send_modify(|n| *n -= 1);
        }
    })
    .await;
    (target, count)
}

/// Greeting a target sends the moment a connection is accepted.
pub const GREETING: &[u8] = b"SSH-2.0-target_speaks_first\r\n";

/// Like [`echo_server`], but it writes [`GREETING`] first, as sshd does.
pub async fn greeting_server() -> SocketAddr {
    serve(|mut tcp| async move {
        if tcp.write_all(GREETING).await.is_err() {
            return;
        }
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Serves each accepted connection with `handle` on its own task.
pub async fn serve<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handle)
}

/// [`echo_server`] on 127.0.0.1 inside network namespace `ns`: the socket
/// is made on a thread that joined the namespace, and stays in it.
#[cfg(unix)]
pub async fn echo_server_in(ns: &str) -> SocketAddr {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    let listener = std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns moves only this short-lived thread into the
        // namespace; `netns` is an open namespace file.
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        std::net::TcpListener::bind("127.0.0.1:0").unwrap()
    })
    .join()
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    serve_on(TcpListener::from_std(listener).unwrap(), echo_back)
}

/// Serves connections to `listener` with `handle`; returns its address.
pub fn serve_on<F, Fut>(listener: TcpListener, handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(handle(tcp));
        }
    });
    addr
}

/// A fast deterministic byte stream (xorshift64*), so that senders and
/// checkers agree without keeping the data.
pub struct Noise(u64);

impl Noise {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Noise {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` bytes of [`Noise`] for `seed` to `w`; returns their SHA-256.
pub async fn write_noise<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> [u8; 32] {
    let mut noise = Noise::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        noise.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n as u64;
    }
    hash.finalize().into()
}

/// Reads `r` to its end; returns the byte count and SHA-256.
pub async fn hash_to_end<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> (u64, [u8; 32]) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            return (total, hash.finalize().into());
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
}

/// Sends `len` bytes of noise (for `seed`) through one session at `client`
/// to an echo target and checks that exactly the same bytes come back.
pub async fn echo_roundtrip(client: SocketAddr, seed: u64, len: u64) {
    let tcp = TcpStream::connect(client).await.unwrap();
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let sent = write_noise(&mut w, seed, len).await;
        w.shutdown().await.unwrap();
        sent
    });
    let (count, got) = hash_to_end(&mut r).await;
    let sent = writer.await.unwrap();
    assert_eq!(count, len, "session {seed}: byte count");
    assert_eq!(hex(&got), hex(&sent), "session {seed}: SHA-256");
}

/// Opens a session through the client forwarder at `client` and checks
/// that `ping` comes back from the echo target behind it; returns the
/// session, still open.
pub async fn ping(client: SocketAddr) -> TcpStream {
    let mut tcp = within(WAIT, "connect to the client", TcpStream::connect(client))
        .await
        .unwrap();
    echo(&mut tcp, b"ping").await;
    tcp
}

/// Sends `data` on an open session to an echo target and checks that the
/// same bytes come back.
pub async fn echo(tcp: &mut TcpStream, data: &[u8]) {
    let mut back = vec![0u8; data.len()];
    within(WAIT, "the echo", async {
        tcp.write_all(data).await.unwrap();
        tcp.read_exact(&mut back).await.unwrap();
    })
    .await;
    assert_eq!(back, data, "echoed bytes");
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until the far side closes `tcp` (end of stream or reset),
/// discarding anything still in flight; returns what was read.
pub async fn read_until_closed(tcp: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A target that reports how each session to it ended: `"eof"` for an
/// orderly end, `"reset"` for an abort.
pub async fn end_watcher() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<&'static str>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let target = serve(move |mut tcp| {
        let tx = tx.clone();
        async move {
            let mut buf = [0u8; 1024];
            let ended = loop {
                match tcp.read(&mut buf).await {
                    Ok(0) => break "eof",
                    Ok(_) => {}
                    Err(_) => break "reset",
                }
            };
            let _ = tx.send(ended);
        }
    })
    .await;
    (target, rx)
}

/// A target that reads everything until the client's FIN, then answers
/// `got N bytes` and closes: it only answers if the FIN travelled end to
/// end while the way back stayed open.
pub async fn counting_server() -> SocketAddr {
    serve(|mut tcp| async move {
        let mut all = Vec::new();
        tcp.read_to_end(&mut all).await.unwrap();
        tcp.write_all(format!("got {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
    })
    .await
}
