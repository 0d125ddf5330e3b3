//! What the benchmarks share: the target they measure through (it greets
//! as sshd does, then uploads, downloads or echoes on a one-byte command),
//! transfers against it, the binary as a logged process, and settled RSS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::bin::shellrelay;
use super::proc::{field, rss_kib, Proc};

/// The byte the target greets with.
pub const GREETING: u8 = b'G';
/// Wakes the target's held sessions.
static HELD: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Closes every session the target holds unread.
pub fn release_held() {
    HELD.notify_waiters();
}

/// Size of the target's and the transfers' buffers.
pub const CHUNK: usize = 256 * 1024;

/// The target behind the host agent (and the direct baseline): greets with
/// one byte as sshd does, then obeys a one-byte command.
pub async fn target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("target address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = serve(tcp).await;
            });
        }
    });
    addr
}

pub async fn serve(mut tcp: TcpStream) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    tcp.write_all(&[GREETING]).await?;
    let mut cmd = [0u8; 1];
    tcp.read_exact(&mut cmd).await?;
    match cmd[0] {
        // Upload: count to EOF, answer with the count.
        b'U' => {
            let mut buf = vec![0u8; CHUNK];
            let mut n = 0u64;
            loop {
                let got = tcp.read(&mut buf).await?;
                if got == 0 {
                    break;
                }
                n += got as u64;
            }
            tcp.write_all(&n.to_be_bytes()).await?;
        }
        // Download: send the asked number of bytes, then close.
        b'D' => {
            let mut len = [0u8; 8];
            tcp.read_exact(&mut len).await?;
            let mut left = u64::from_be_bytes(len);
            let buf = vec![0x5au8; CHUNK];
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                tcp.write_all(&buf[..n]).await?;
                left -= n as u64;
            }
        }
        // Hold: read nothing until [`release_held`], so that whatever is
        // sent piles up on the way.
        b'H' => HELD.notified().await,
        // Echo; also holds idle sessions open.
        _ => {
            let (mut r, mut w) = tcp.split();
            tokio::io::copy(&mut r, &mut w).await?;
        }
    }
    Ok(())
}

pub async fn open(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let mut g = [0u8; 1];
    tcp.read_exact(&mut g).await.expect("greeting");
    tcp
}

/// Sends `len` bytes up; returns seconds until the target counted them all.
pub async fn upload(addr: SocketAddr, len: u64) -> f64 {
    let mut tcp = open(addr).await;
    let buf = vec![0xa5u8; CHUNK];
    let start = Instant::now();
    tcp.write_all(b"U").await.expect("cmd");
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        tcp.write_all(&buf[..n]).await.expect("upload");
        left -= n as u64;
    }
    tcp.shutdown().await.expect("fin");
    let mut count = [0u8; 8];
    tcp.read_exact(&mut count).await.expect("count");
    assert_eq!(u64::from_be_bytes(count), len, "upload lost bytes");
    start.elapsed().as_secs_f64()
}

/// Asks for `len` bytes down; returns seconds until all arrived.
pub async fn download(addr: SocketAddr, len: u64) -> f64 {
    let mut tcp = open(addr).await;
    let mut buf = vec![0u8; CHUNK];
    let start = Instant::now();
    tcp.write_all(b"D").await.expect("cmd");
    tcp.write_all(&len.to_be_bytes()).await.expect("len");
    let mut got = 0u64;
    loop {
        let n = tcp.read(&mut buf).await.expect("download");
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert_eq!(got, len, "download lost bytes");
    start.elapsed().as_secs_f64()
}

/// Starts `shellrelay args` as process `name`, logging its own info lines
/// and other crates' warnings.
pub fn spawn(name: &str, args: &[&str]) -> Proc {
    let mut cmd = shellrelay(args);
    cmd.env("RUST_LOG", "warn,shellrelay=info");
    Proc::spawn(name, cmd)
}

/// The value of `key=` in the next log line of `proc` containing `needle`.
pub async fn logged(proc: &mut Proc, needle: &str, key: &str) -> String {
    let line = proc.wait_for_text(needle).await;
    field(&line, key).unwrap_or_default().to_owned()
}

/// The machine, for a benchmark's header: cores and CPU model.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cores} cores, {cpu}")
}

/// RSS once it has stopped moving (allocator and kernel catch up).
pub async fn settle_rss(pid: u32) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = rss_kib(pid);
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// User plus system CPU seconds of `pid`.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ')'.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}
