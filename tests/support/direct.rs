//! Shellrelay with direct paths, as processes: a relay, a host agent in
//! front of a private sshd and a client forwarder, each in a network
//! namespace of its own or on this machine's loopback, with `--direct`
//! as each test asks. What each logs says which path a session took.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::bin::*;
use super::proc::{addr_field, field, Proc};
use super::sshd::Sshd;

/// Where each role runs: a network namespace, or here.
#[derive(Clone, Copy, Default)]
pub struct Places<'a> {
    pub relay: Option<&'a str>,
    pub host: Option<&'a str>,
    pub client: Option<&'a str>,
}

/// The relay, host agent (in front of `sshd`) and client forwarder.
pub struct Rig {
    pub sshd: Sshd,
    pub relay: Proc,
    pub host: Proc,
    pub client: Proc,
    /// The forwarder's port, on its namespace's loopback.
    pub port: u16,
    pub client_ns: Option<String>,
    pub dir: tempfile::TempDir,
    /// The relay's address, its certificate and the client's token file,
    /// for `connect`.
    pub relay_at: String,
    pub cert: std::path::PathBuf,
    pub client_token: std::path::PathBuf,
}

fn spawn(name: &str, ns: Option<&str>, args: &[&str]) -> Proc {
    Proc::spawn(
        name,
        match ns {
            Some(ns) => shellrelay_in(ns, args),
            None => shellrelay(args),
        },
    )
}

/// More arguments for the relay and for both peers.
#[derive(Clone, Copy, Default)]
pub struct Extra<'a> {
    pub relay: &'a [&'a str],
    pub peers: &'a [&'a str],
}

impl Rig {
    /// [`Rig::start_with`] with no more arguments.
    pub async fn start(
        places: Places<'_>,
        relay_ip: std::net::IpAddr,
        modes: (&str, &str),
    ) -> Option<Rig> {
        Rig::start_with(places, relay_ip, modes, Extra::default()).await
    }

    /// Starts the three roles, the relay listening on `relay_ip` (port 0),
    /// each peer with `--direct` as `host_direct` and `client_direct` say;
    /// and `extra` arguments; returns once the client is connected, or
    /// `None` without OpenSSH. The client's token has token id `alice`.
    pub async fn start_with(
        places: Places<'_>,
        relay_ip: std::net::IpAddr,
        (host_direct, client_direct): (&str, &str),
        extra: Extra<'_>,
    ) -> Option<Rig> {
        let sshd = Sshd::start_in(places.host).await?;
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = write_secret(dir.path());
        let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
        let listen = std::net::SocketAddr::new(relay_ip, 0).to_string();
        let name = relay_ip.to_string();
        let mut args = relay_args(&listen, &secret, &cert, &key);
        args.extend(["--name", &name]);
        args.extend(extra.relay);
        let mut relay = spawn("relay", places.relay, &args);
        let line = relay.wait_for_text("relay listening").await;
        let relay_at = addr_field(&line, "addr").to_string();
        let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab1").await;
        let client_token = jti_token_file(&secret, dir.path(), "lab1", "alice").await;
        // The host agent dials sshd on its own namespace's loopback.
        let target = format!("127.0.0.1:{}", sshd.addr().port());
        let mut args = peer_args("host", &relay_at, &cert, &host_token);
        args.extend(["--target", &target, "--direct", host_direct]);
        args.extend(extra.peers);
        let mut host = spawn("host", places.host, &args);
        host.wait_for_text("registered with relay").await;
        let mut args = peer_args("client", &relay_at, &cert, &client_token);
        args.extend(["--listen", "127.0.0.1:0", "--direct", client_direct]);
        args.extend(extra.peers);
        let mut client = spawn("client", places.client, &args);
        let line = client.wait_for_text("client forwarder listening").await;
        let port = addr_field(&line, "listen").port();
        client.wait_for_text("connected to relay").await;
        Some(Rig {
            sshd,
            relay,
            host,
            client,
            port,
            client_ns: places.client.map(str::to_owned),
            dir,
            relay_at,
            cert,
            client_token,
        })
    }

    /// `remote` over ssh through the forwarder, from the client's place.
    pub fn ssh(&self, remote: &str) -> tokio::process::Command {
        self.sshd
            .ssh_in(self.client_ns.as_deref(), self.port, remote)
    }

    /// `remote` over ssh with `shellrelay connect --direct auto` as its
    /// ProxyCommand, from the client's place, its log lines (info) on
    /// ssh's stderr.
    pub fn ssh_via_connect(&self, remote: &str) -> tokio::process::Command {
        let proxy = format!(
            "ProxyCommand={BIN} connect --relay {} --relay-cert {} --token-file {} --direct auto",
            self.relay_at,
            self.cert.display(),
            self.client_token.display()
        );
        let options = ["-o".to_owned(), proxy];
        let ip = std::net::Ipv4Addr::LOCALHOST;
        let mut cmd =
            (self.sshd).ssh_with(self.client_ns.as_deref(), ip, 22, &options, Some(remote));
        cmd.env("RUST_LOG", "shellrelay=info");
        cmd
    }

    /// Runs `remote` over ssh; its stdout, failing the test if ssh fails.
    pub async fn ssh_output(&self, remote: &str) -> Vec<u8> {
        let out = super::within(
            super::WAIT,
            &format!("ssh {remote}"),
            self.ssh(remote).output(),
        )
        .await
        .expect("ssh runs");
        assert!(
            out.status.success(),
            "ssh {remote} failed: {}\nstderr: {}\nclient:\n{}\nhost:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.client.log(),
            self.host.log()
        );
        out.stdout
    }

    /// Downloads `len` bytes of noise (from `seed`) from the host with
    /// `ssh host cat`, on whichever path the client takes, and checks
    /// they came byte-exact (count and SHA-256).
    pub async fn download_checked(&self, len: u64, seed: u64) {
        use super::traffic::{hash_to_end, hex, write_noise};
        let file = self.sshd.dir.path().join(format!("noise-{seed}"));
        let want = {
            let mut f = tokio::fs::File::create(&file).await.expect("noise file");
            let hash = write_noise(&mut f, seed, len).await;
            tokio::io::AsyncWriteExt::flush(&mut f)
                .await
                .expect("flush");
            hash
        };
        let mut child = self
            .ssh(&format!("cat {}", file.display()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("ssh runs");
        let mut out = child.stdout.take().expect("stdout");
        let (got, hash) = super::within(super::WAIT, "the download", hash_to_end(&mut out)).await;
        assert!(
            child.wait().await.expect("ssh exits").success(),
            "the download's ssh"
        );
        assert_eq!((got, hex(&hash)), (len, hex(&want)), "the download");
    }

    /// Waits until the client's direct path is up; how long that took
    /// after the line that says the path was asked for.
    pub async fn direct_up(&mut self) -> String {
        self.client
            .wait_for_text("direct path to the host is up")
            .await
    }

    /// The paths of the sessions the host agent started, in order.
    pub fn host_paths(&self) -> Vec<String> {
        self.host
            .lines()
            .iter()
            .filter(|l| l.contains("session started"))
            .filter_map(|l| field(l, "path").map(|p| p.trim_matches('"').to_owned()))
            .collect()
    }
}

/// Runs a ticker over ssh (`lines` lines, one every 10 ms, numbered) and
/// checks every line arrived, once and in order; the longest gap between
/// two lines as they arrived. `during` runs once the first line is in.
pub async fn ticker<F: std::future::Future<Output = ()>>(
    rig: &Rig,
    lines: u32,
    during: F,
) -> Duration {
    ticker_over(|remote| rig.ssh(remote), lines, during).await.0
}

/// [`ticker`] over the ssh command `ssh` makes for a remote command; with
/// what ssh wrote to stderr.
pub async fn ticker_over<F: std::future::Future<Output = ()>>(
    ssh: impl Fn(&str) -> tokio::process::Command,
    lines: u32,
    during: F,
) -> (Duration, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let remote = format!("i=0; while [ $i -lt {lines} ]; do echo $i; i=$((i+1)); sleep 0.01; done");
    let mut child = ssh(&remote)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ssh runs");
    let mut stderr = child.stderr.take().expect("stderr");
    let said = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = tokio::io::BufReader::new(stdout).lines();
    let read = async {
        let mut longest = Duration::ZERO;
        let mut last = None::<Instant>;
        let mut during = std::pin::pin!(during);
        let mut started = false;
        for want in 0..lines {
            let line = loop {
                tokio::select! {
                    line = reader.next_line() => break line,
                    () = &mut during, if started => started = false,
                }
            };
            let line = line
                .expect("read")
                .unwrap_or_else(|| panic!("ended before line {want}"));
            assert_eq!(line, want.to_string(), "lines out of order or lost");
            let now = Instant::now();
            if let Some(last) = last {
                longest = longest.max(now - last);
            }
            last = Some(now);
            if want == 0 {
                started = true;
            }
        }
        longest
    };
    let longest = super::within(Duration::from_secs(60), "the ticker", read).await;
    let status = child.wait().await.expect("ssh exits");
    let said = said.await.unwrap_or_default();
    assert!(status.success(), "ticker ssh failed: {status}: {said}");
    (longest, said)
}
