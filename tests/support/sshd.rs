//! A private OpenSSH server on a free loopback port, and the programs the
//! real-ssh tests need.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::proc::Proc;

/// Finds program `name` for a test, or returns `None` saying loudly that
/// the test is skipped. Under `CI=true` a missing program fails the test,
/// naming the Debian `package` that has it.
pub fn required_program(name: &str, package: &str) -> Option<PathBuf> {
    if let Some(path) = find_program(name, &["/usr/bin", "/usr/local/bin", "/bin"]) {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{name} is not installed, and CI=true: install {package} (apt-get install {package})"
        );
    }
    eprintln!("\n!!! SKIPPED: {name} is not installed; install {package} to run this test !!!\n");
    None
}

/// A private OpenSSH server on a free loopback port, with its own host
/// key and an authorized key for the current user; stopped on drop.
pub struct Sshd {
    /// The port sshd listens on (127.0.0.1).
    pub port: u16,
    /// Holds keys and config; removed on drop.
    pub dir: tempfile::TempDir,
    proc: Proc,
}

fn find_program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    dirs.iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The current user's name.
pub fn user() -> String {
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn keygen(path: &Path) {
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

impl Sshd {
    /// Starts sshd, or returns `None` (saying so loudly) where OpenSSH is
    /// not installed. Under `CI=true` a missing sshd fails the test.
    pub async fn start() -> Option<Sshd> {
        Sshd::start_in(None).await
    }

    /// [`Sshd::start`] inside network namespace `ns` ([`super::wan`]), on
    /// that namespace's loopback.
    pub async fn start_in(ns: Option<&str>) -> Option<Sshd> {
        let Some(sshd) = find_program("sshd", &["/usr/sbin", "/usr/local/sbin", "/sbin"]) else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("sshd is not installed, and CI=true: install openssh-server (apt-get install openssh-server)");
            }
            eprintln!("\n!!! SKIPPED: sshd is not installed; install openssh-server to run the real-ssh tests !!!\n");
            return None;
        };
        if find_program("ssh", &["/usr/bin"]).is_none() {
            panic!("sshd is installed but the ssh client is not");
        }
        let dir = tempfile::tempdir().unwrap();
        keygen(&dir.path().join("host_key"));
        keygen(&dir.path().join("id"));
        let auth = dir.path().join("authorized_keys");
        std::fs::copy(dir.path().join("id.pub"), &auth).unwrap();
        // sshd refuses to start as root without its privilege-separation
        // directory, which only the service unit creates.
        if user() == "root" {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        for _attempt in 0..5 {
            let port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().port()
            };
            let config = dir.path().join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress {listen}\nHostKey {dir}/host_key\nAuthorizedKeysFile {auth}\n\
                     PidFile {dir}/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
                     MaxStartups 200\nMaxSessions 200\nSubsystem sftp internal-sftp\nLogLevel INFO\n",
                    dir = dir.path().display(),
                    auth = auth.display(),
                    // In a namespace of its own, reachable from the others.
                    listen = if ns.is_some() { "0.0.0.0" } else { "127.0.0.1" },
                ),
            )
            .unwrap();
            let mut cmd = super::wan::command_in(ns, &sshd);
            cmd.arg("-D").arg("-e").arg("-f").arg(&config);
            let mut proc = Proc::spawn("sshd", cmd);
            if proc
                .find(|l| l.contains("Server listening on"))
                .await
                .is_none()
            {
                // Most likely the port was taken in between; try another.
                eprintln!("sshd did not start:\n{}", proc.log());
                continue;
            }
            return Some(Sshd { port, dir, proc });
        }
        panic!("sshd did not start after 5 attempts");
    }

    /// What sshd has logged so far.
    pub fn log(&self) -> Vec<String> {
        self.proc.lines()
    }

    /// The target address for a host agent.
    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// An `ssh` command to `port` on 127.0.0.1 (the client forwarder)
    /// running `remote`, with this server's key and no user config.
    pub fn ssh(&self, port: u16, remote: &str) -> tokio::process::Command {
        self.ssh_in(None, port, remote)
    }

    /// [`Sshd::ssh`] run inside network namespace `ns`, if given.
    pub fn ssh_in(&self, ns: Option<&str>, port: u16, remote: &str) -> tokio::process::Command {
        self.ssh_with(ns, std::net::Ipv4Addr::LOCALHOST, port, &[], Some(remote))
    }

    /// [`Sshd::ssh_in`] to `ip` instead of 127.0.0.1, with more `options`
    /// before the destination, and no remote command when `remote` is
    /// `None`.
    pub fn ssh_with(
        &self,
        ns: Option<&str>,
        ip: std::net::Ipv4Addr,
        port: u16,
        options: &[String],
        remote: Option<&str>,
    ) -> tokio::process::Command {
        let mut cmd = super::wan::command_in(ns, "ssh");
        // ssh takes the first value given for an option: `options` first,
        // so that they can override the defaults below.
        cmd.args(["-F", "/dev/null", "-T", "-p", &port.to_string()])
            .args(options)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "LogLevel=ERROR",
            ])
            .args(["-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=10"])
            .arg("-i")
            .arg(self.dir.path().join("id"))
            .arg(format!("{}@{ip}", user()))
            .args(remote)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}
