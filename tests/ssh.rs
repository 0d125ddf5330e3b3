//! Real OpenSSH end to end: a private sshd, relay, host agent and client
//! forwarder, and the `ssh` client talking through them.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use sha2::{Digest, Sha256};
use support::sshd::{required_program, user, Sshd};
use support::traffic::*;
use support::*;
use tokio::io::AsyncWriteExt;

/// A relay, a host agent in front of a private sshd, and a client forwarder.
struct Rig {
    sshd: Sshd,
    client_port: u16,
    _tunnel: Tunnel,
    _host: Peer,
}

async fn rig() -> Option<Rig> {
    let sshd = Sshd::start().await?;
    let tunnel = Tunnel::start().await;
    let host = tunnel.host("lab1", sshd.addr()).await;
    let client_port = tunnel.client("lab1").await.port();
    Some(Rig {
        sshd,
        client_port,
        _tunnel: tunnel,
        _host: host,
    })
}

/// Runs `remote` over ssh through the tunnel; returns stdout, failing with
/// stderr and sshd's log if ssh fails.
async fn ssh_output(rig: &Rig, remote: &str) -> String {
    let out = within(
        Duration::from_secs(120),
        &format!("ssh {remote:?}"),
        rig.sshd.ssh(rig.client_port, remote).output(),
    )
    .await
    .expect("ssh runs");
    assert!(
        out.status.success(),
        "ssh {remote:?} failed: {}\nstderr: {}\nsshd log: {:#?}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        rig.sshd.log()
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_echo_hello_through_the_tunnel() {
    let Some(rig) = rig().await else { return };
    assert_eq!(ssh_output(&rig, "echo hello").await, "hello\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_concurrent_ssh_sessions_run_a_live_command_to_the_end() {
    let Some(rig) = rig().await else { return };
    let cmd = "top -b -n 3 -d 0.3; echo top-done";
    let (a, b, c) = tokio::join!(
        ssh_output(&rig, cmd),
        ssh_output(&rig, cmd),
        ssh_output(&rig, cmd)
    );
    for out in [a, b, c] {
        assert_eq!(
            out.matches("top - ").count(),
            3,
            "three screens of top in:\n{out}"
        );
        assert!(out.ends_with("top-done\n"), "output ends early:\n{out}");
    }
}

const BIG: u64 = 256 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_carries_256_mib_each_way_with_equal_sha256() {
    let Some(rig) = rig().await else { return };

    // Host to client: a file of noise on the sshd side, read with cat.
    let file = rig.sshd.dir.path().join("big");
    let file_hash = {
        let mut f = tokio::fs::File::create(&file).await.unwrap();
        let h = write_noise(&mut f, 42, BIG).await;
        f.flush().await.unwrap();
        h
    };
    let download = async {
        let mut child = rig
            .sshd
            .ssh(rig.client_port, &format!("cat {}", file.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (count, hash) = hash_to_end(&mut stdout).await;
        let status = child.wait().await.unwrap();
        assert!(status.success(), "download ssh failed: {status}");
        assert_eq!(count, BIG, "downloaded byte count");
        assert_eq!(hex(&hash), hex(&file_hash), "downloaded SHA-256");
    };

    // Client to host: noise piped into sha256sum on the sshd side.
    let upload = async {
        let mut child = rig
            .sshd
            .ssh(rig.client_port, "sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let sent = write_noise(&mut stdin, 7, BIG).await;
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        assert!(out.status.success(), "upload ssh failed: {}", out.status);
        let remote = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            remote.split_whitespace().next(),
            Some(hex(&sent).as_str()),
            "uploaded SHA-256"
        );
    };

    within(Duration::from_secs(300), "256 MiB each way", async {
        tokio::join!(download, upload)
    })
    .await;
    // The hash helper itself: sanity check against a known vector.
    assert_eq!(
        hex(&Sha256::digest(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_carries_a_real_ssh_session_and_stops_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Some(sshd) = Sshd::start().await else {
        return;
    };
    let mut demo = bin::shellrelay(&[
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--target",
        &sshd.addr().to_string(),
    ])
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let port: u16 = within(WAIT, "the demo's ssh command", async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.trim().strip_prefix("ssh -p ") {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("the demo ended without printing an ssh command");
    })
    .await;
    let out = within(
        WAIT,
        "ssh through the demo",
        sshd.ssh(port, "echo demo-ok").output(),
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "demo-ok\n");

    proc::signal(demo.id().unwrap(), "TERM");
    let status = within(WAIT, "the demo to stop", demo.wait()).await.unwrap();
    assert!(status.success(), "demo exited with {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_cat_into_a_file_ends_with_the_file_complete() {
    let Some(rig) = rig().await else { return };
    let source = rig.sshd.dir.path().join("source");
    let copy = rig.sshd.dir.path().join("copy");
    let len = 32u64 << 20;
    let sent = {
        let mut f = tokio::fs::File::create(&source).await.unwrap();
        let h = write_noise(&mut f, 5, len).await;
        f.flush().await.unwrap();
        h
    };
    // `ssh host 'cat > f' < file`: the end of stdin is the only signal that
    // the copy is complete, so the half-close must travel end to end.
    let stdin = std::fs::File::open(&source).unwrap();
    let status = within(
        Duration::from_secs(120),
        "ssh cat > f",
        rig.sshd
            .ssh(rig.client_port, &format!("cat > {}", copy.display()))
            .stdin(stdin)
            .status(),
    )
    .await
    .unwrap();
    assert!(status.success(), "ssh failed: {status}");
    let mut f = tokio::fs::File::open(&copy).await.unwrap();
    let (count, got) = hash_to_end(&mut f).await;
    assert_eq!(count, len);
    assert_eq!(hex(&got), hex(&sent));
}

/// Host id behind `shellrelay connect`; matches the `Host lab-*` block.
const LAB: &str = "lab-proxy";
/// A second host behind the same `Host lab-*` block and client token.
const LAB2: &str = "lab-second";

/// A relay and a host agent in front of a private sshd, the files
/// `shellrelay connect` reads, and an ssh_config whose `Host lab-*` block
/// reaches the host through it.
struct ProxyRig {
    sshd: Sshd,
    files: ClientFiles,
    ssh_config: std::path::PathBuf,
    dir: tempfile::TempDir,
    _tunnel: Tunnel,
    _hosts: [Peer; 2],
}

async fn proxy_rig() -> Option<ProxyRig> {
    let sshd = Sshd::start().await?;
    let tunnel = Tunnel::start().await;
    let hosts = [
        tunnel.host(LAB, sshd.addr()).await,
        tunnel.host(LAB2, sshd.addr()).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    // One client token for every host the ssh_config block covers.
    let files = tunnel.client_files(dir.path(), "lab-*");
    let ssh_config = dir.path().join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host lab-* db-*\n\
             \x20   User {user}\n\
             \x20   ProxyCommand {bin} connect --host %h\n\
             \x20   IdentityFile {id}\n\
             \x20   IdentitiesOnly yes\n\
             \x20   BatchMode yes\n\
             \x20   StrictHostKeyChecking no\n\
             \x20   UserKnownHostsFile /dev/null\n\
             \x20   LogLevel ERROR\n",
            user = user(),
            bin = bin::BIN,
            id = sshd.dir.path().join("id").display(),
        ),
    )
    .unwrap();
    Some(ProxyRig {
        sshd,
        files,
        ssh_config,
        dir,
        _tunnel: tunnel,
        _hosts: hosts,
    })
}

impl ProxyRig {
    /// `program` with the environment `shellrelay connect` inherits from
    /// ssh: the config file, and nothing else of shellrelay's.
    fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = bin::scrubbed(program);
        cmd.env("SHELLRELAY_CONFIG", &self.files.config);
        cmd
    }

    /// `program args…` with [`ProxyRig::command`]'s environment, which must
    /// succeed within two minutes and print nothing on stderr (connect is
    /// quiet); returns stdout.
    async fn run(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = self.command(program);
        cmd.args(args);
        let what = format!("{program} {args:?}");
        let out = within(Duration::from_secs(120), &what, cmd.output())
            .await
            .unwrap_or_else(|e| panic!("could not run {what}: {e}"));
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{what}: {}\nstderr: {}\nsshd log: {:#?}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.sshd.log()
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn cfg(&self) -> &str {
        self.ssh_config.to_str().expect("temp paths are UTF-8")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_runs_a_command_through_connect_as_its_proxy_command() {
    let Some(rig) = proxy_rig().await else { return };
    // As a person types it: no ssh_config, the ProxyCommand on the line.
    let mut cmd = rig.command("ssh");
    cmd.args(["-F", "/dev/null", "-T"])
        .arg("-o")
        .arg(format!("ProxyCommand={} connect --host %h", bin::BIN))
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(["-o", "IdentitiesOnly=yes", "-i"])
        .arg(rig.sshd.dir.path().join("id"))
        .arg(format!("{}@{LAB}", user()))
        .arg("echo hello from $(hostname); exit 3");
    let out = within(Duration::from_secs(120), "ssh", cmd.output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the remote exit status comes back: {stderr}\nsshd log: {:#?}",
        rig.sshd.log()
    );
    assert!(stderr.is_empty(), "connect is quiet: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("hello from "), "{stdout}");

    // Through the ssh_config's `Host lab-*` block, to either host, with the
    // one token.
    for host in [LAB, LAB2] {
        let out = rig.run("ssh", &["-F", rig.cfg(), host, "echo hello"]).await;
        assert_eq!(out, "hello\n", "{host}");
    }
    // A host the ssh_config block names but the token does not cover is
    // refused, in one line.
    let mut cmd = rig.command("ssh");
    cmd.args(["-F", rig.cfg(), "db-1", "true"]);
    let out = within(Duration::from_secs(120), "ssh db-1", cmd.output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot reach host db-1"),
        "the refusal reaches the user: {stderr}"
    );
}

/// Every file under `root` (by path relative to it) with its mode and
/// SHA-256, and every directory.
fn tree(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = BTreeMap::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::metadata(&path).unwrap();
            if meta.is_dir() {
                found.insert(name, "dir".into());
                dirs.push(path);
            } else {
                let mode = meta.permissions().mode() & 0o777;
                let hash = hex(&Sha256::digest(std::fs::read(&path).unwrap()));
                found.insert(name, format!("{mode:o} {hash}"));
            }
        }
    }
    found
}

/// `sha256sum` output (`hash  ./path` lines) as a path → hash map.
fn sums(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .map(|line| {
            let (hash, path) = line.split_once("  ").expect("sha256sum line");
            (path.trim_start_matches("./").to_owned(), hash.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_and_rsync_through_connect_copy_files_with_equal_sha256() {
    let Some(rig) = proxy_rig().await else { return };
    let Some(_) = required_program("rsync", "rsync") else {
        return;
    };
    // A tree of nested directories: random bytes, text, an empty file, an
    // empty directory and an executable, about 5 MiB in all.
    let local = rig.dir.path().join("local");
    let files: &[(&str, u64)] = &[
        ("big.bin", 2 << 20),
        ("a.bin", 1 << 20),
        ("docs/deep/nested/b.bin", 1_500_000),
        ("docs/deep/empty", 0),
        ("x/y/z/small.bin", 1000),
    ];
    for (i, (name, len)) in files.iter().enumerate() {
        let path = local.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = tokio::fs::File::create(&path).await.unwrap();
        write_noise(&mut f, 100 + i as u64, *len).await;
        f.flush().await.unwrap();
    }
    std::fs::write(
        local.join("docs/readme.txt"),
        "a tree for rsync\n".repeat(100),
    )
    .unwrap();
    std::fs::create_dir_all(local.join("docs/empty-dir")).unwrap();
    let script = local.join("x/run.sh");
    std::fs::write(&script, "#!/bin/sh\necho ran\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let want = tree(&local);
    let remote = rig.sshd.dir.path().join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    let at = |path: &Path| format!("{LAB}:{}", path.display());
    let path = |p: &Path| p.to_str().expect("temp paths are UTF-8").to_owned();

    // scp up and back down: one file of random bytes.
    let big = local.join("big.bin");
    let up = remote.join("scp.bin");
    rig.run("scp", &["-F", rig.cfg(), "-q", &path(&big), &at(&up)])
        .await;
    let down = rig.dir.path().join("scp-back.bin");
    rig.run("scp", &["-F", rig.cfg(), "-q", &at(&up), &path(&down)])
        .await;
    let big_hash = hex(&Sha256::digest(std::fs::read(&big).unwrap()));
    let remote_sum = rig
        .run(
            "ssh",
            &["-F", rig.cfg(), LAB, &format!("sha256sum {}", up.display())],
        )
        .await;
    assert_eq!(
        remote_sum.split_whitespace().next(),
        Some(big_hash.as_str()),
        "SHA-256 after scp, on the host's side"
    );
    assert_eq!(
        hex(&Sha256::digest(std::fs::read(&down).unwrap())),
        big_hash,
        "SHA-256 after scp there and back"
    );

    // rsync -a of the whole tree up, and back down into a fresh directory.
    let ssh = format!("ssh -F {}", rig.cfg());
    let up = remote.join("tree");
    rig.run(
        "rsync",
        &[
            "-a",
            "-e",
            &ssh,
            &format!("{}/", local.display()),
            &format!("{}/", at(&up)),
        ],
    )
    .await;
    let listing = rig
        .run(
            "ssh",
            &[
                "-F",
                rig.cfg(),
                LAB,
                &format!(
                    "cd {} && find . -type f -exec sha256sum {{}} +",
                    up.display()
                ),
            ],
        )
        .await;
    let want_sums: BTreeMap<String, String> = want
        .iter()
        .filter(|(_, v)| *v != "dir")
        .map(|(k, v)| (k.clone(), v.split(' ').nth(1).unwrap().to_owned()))
        .collect();
    assert_eq!(
        sums(&listing),
        want_sums,
        "SHA-256 of every file on the host's side"
    );
    assert_eq!(
        tree(&up),
        want,
        "files, modes and directories on the host's side"
    );
    let down = rig.dir.path().join("back");
    rig.run(
        "rsync",
        &[
            "-a",
            "-e",
            &ssh,
            &format!("{}/", at(&up)),
            &format!("{}/", down.display()),
        ],
    )
    .await;
    assert_eq!(
        tree(&down),
        want,
        "files, modes and directories there and back"
    );
}
