//! The `shellrelay` binary as tests run it: a command with a scrubbed
//! environment, what a finished run printed, the one-line error check, and
//! the files its subcommands read (secret, tokens, certificates).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use tokio::process::Command;

use super::proc::{addr_field, Proc};
use super::{within, SECRET, WAIT};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shellrelay");

/// `program` with an environment scrubbed of the caller's shellrelay
/// settings: no `SHELLRELAY_*` variable, no `RUST_LOG` (each subcommand logs
/// at its own default level) and no user client config file. Text logs
/// without colour, a backtrace on a panic (which the tests look for), no
/// stdin, stdout and stderr piped, killed on drop. Direct paths are off
/// (`SHELLRELAY_DIRECT=off`): peers on one machine can always go direct,
/// and most tests are about what the relay carries; a test of direct
/// paths passes `--direct auto`, which wins over the variable.
pub fn scrubbed(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SHELLRELAY_") {
            cmd.env_remove(&key);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env(
            "XDG_CONFIG_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-config-dir"),
        )
        .env("NO_COLOR", "1")
        .env("SHELLRELAY_DIRECT", "off")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The binary with `args`, [`scrubbed`].
pub fn shellrelay(args: &[&str]) -> Command {
    let mut cmd = scrubbed(BIN);
    cmd.args(args);
    cmd
}

/// The binary with `args` inside network namespace `ns` ([`super::wan`]),
/// [`scrubbed`].
pub fn shellrelay_in(ns: &str, args: &[&str]) -> Command {
    let mut cmd = scrubbed("ip");
    cmd.args(["netns", "exec", ns, BIN]).args(args);
    cmd
}

/// What a finished run printed.
pub struct Out {
    /// How it ended.
    pub status: ExitStatus,
    /// Its standard output, lossily decoded.
    pub stdout: String,
    /// Its standard error, lossily decoded.
    pub stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout\n{}--- stderr\n{}---",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to completion, within [`WAIT`].
pub async fn finish(mut cmd: Command) -> Out {
    let what = format!("{cmd:?}");
    let output = within(WAIT, &what, cmd.output())
        .await
        .unwrap_or_else(|e| panic!("could not run {what}: {e}"));
    Out {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the binary with `args` to completion.
pub async fn run(args: &[&str]) -> Out {
    finish(shellrelay(args)).await
}

/// Asserts a run failed with exit status 1 and one `error: ...` line on
/// stderr naming every needle, without a panic, and printed nothing on
/// stdout (which `connect` keeps for session bytes).
pub fn assert_error_line(out: &Out, needles: &[&str]) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit status 1: {out:?}"
    );
    assert!(!out.stderr.contains("panicked"), "panicked: {out:?}");
    assert!(
        !out.stderr.contains("backtrace"),
        "printed a backtrace: {out:?}"
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr: {out:?}");
    assert!(
        lines[0].starts_with("error: "),
        "expected `error: ...`: {out:?}"
    );
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "expected the error to name {needle:?}: {out:?}"
        );
    }
    assert!(out.stdout.is_empty(), "expected nothing on stdout: {out:?}");
}

/// `path` as text; temporary paths are UTF-8.
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// Makes `path` readable and writable by its owner only.
pub fn make_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Writes [`SECRET`] and a trailing newline (which does not count) to a
/// private file `secret` in `dir`.
pub fn write_secret(dir: &Path) -> PathBuf {
    let path = dir.join("secret");
    std::fs::write(&path, [SECRET, b"\n"].concat()).expect("write secret file");
    make_private(&path);
    path
}

/// Mints a token as [`mint_token`] does and writes it to the private file
/// `dir/name`; returns the file's path.
pub async fn token_file(secret: &Path, dir: &Path, name: &str, role: &str, host: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, mint_token(secret, role, host, "1h").await).expect("write token");
    make_private(&path);
    path
}

/// Mints a client token for `host` with token id `jti`, in the private
/// file `dir/jti`.
pub async fn jti_token_file(secret: &Path, dir: &Path, host: &str, jti: &str) -> PathBuf {
    let mut args = token_args(secret, "client", host);
    args.extend(["--jti", jti]);
    let out = run(&args).await;
    assert!(out.status.success(), "token failed: {out:?}");
    let path = dir.join(jti);
    std::fs::write(&path, out.stdout.trim()).expect("write token");
    make_private(&path);
    path
}

/// The arguments of `token` signing with the secret in `secret`, for
/// `role` on `host` (one host id, or a list or pattern for a client).
pub fn token_args<'a>(secret: &'a Path, role: &'a str, host: &'a str) -> Vec<&'a str> {
    vec![
        "token",
        "--secret-file",
        path_str(secret),
        "--role",
        role,
        "--host",
        host,
    ]
}

/// Mints a token with the `token` subcommand and returns it.
pub async fn mint_token(secret: &Path, role: &str, host: &str, ttl: &str) -> String {
    let mut args = token_args(secret, role, host);
    args.extend(["--ttl", ttl]);
    let out = run(&args).await;
    assert!(out.status.success(), "token failed: {out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "token prints exactly one line: {out:?}");
    assert!(out.stdout.ends_with('\n'), "token ends its line: {out:?}");
    lines[0].to_owned()
}

/// Runs `certs --out dir` and checks it worked; returns the certificate
/// and key paths.
pub async fn make_certs(dir: &Path) -> (PathBuf, PathBuf) {
    let out = run(&["certs", "--out", path_str(dir)]).await;
    assert!(out.status.success(), "certs failed: {out:?}");
    (dir.join("relay.crt"), dir.join("relay.key"))
}

/// A SHA-256 fingerprint as the binary prints it: 32 colon-separated hex bytes.
pub fn is_fingerprint(text: &str) -> bool {
    let bytes: Vec<&str> = text.split(':').collect();
    bytes.len() == 32
        && bytes
            .iter()
            .all(|b| b.len() == 2 && b.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Starts a relay process on a free loopback port with its certificate in
/// `dir`; returns it once it listens, and its address.
pub async fn start_relay(dir: &Path, secret: &Path) -> (Proc, SocketAddr) {
    start_relay_with(dir, secret, &[]).await
}

/// [`start_relay`] with `extra` arguments.
pub async fn start_relay_with(dir: &Path, secret: &Path, extra: &[&str]) -> (Proc, SocketAddr) {
    let (cert, key) = (dir.join("relay.crt"), dir.join("relay.key"));
    let mut args = relay_args("127.0.0.1:0", secret, &cert, &key);
    args.extend_from_slice(extra);
    let mut relay = Proc::spawn("relay", shellrelay(&args));
    let line = relay.wait_for_text("relay listening").await;
    let addr = addr_field(&line, "addr");
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{line}");
    assert_ne!(addr.port(), 0, "{line}");
    (relay, addr)
}

/// The arguments of a relay listening on `listen`, with the token secret
/// in `secret` and its certificate and key at `cert` and `key` (made on its
/// first start).
pub fn relay_args<'a>(
    listen: &'a str,
    secret: &'a Path,
    cert: &'a Path,
    key: &'a Path,
) -> Vec<&'a str> {
    vec![
        "relay",
        "--listen",
        listen,
        "--secret-file",
        path_str(secret),
        "--cert",
        path_str(cert),
        "--key",
        path_str(key),
    ]
}

/// The arguments of a host agent or client forwarder (`role`) for the
/// relay at `relay` with certificate `cert`, with the token in `token`.
pub fn peer_args<'a>(
    role: &'a str,
    relay: &'a str,
    cert: &'a Path,
    token: &'a Path,
) -> Vec<&'a str> {
    trusting_peer_args(role, relay, ["--relay-cert", path_str(cert)], token)
}

/// [`peer_args`] trusting the relay by the pin of its key (`--relay-pin`)
/// instead of its certificate file.
pub fn pinned_peer_args<'a>(
    role: &'a str,
    relay: &'a str,
    pin: &'a str,
    token: &'a Path,
) -> Vec<&'a str> {
    trusting_peer_args(role, relay, ["--relay-pin", pin], token)
}

/// The arguments of `role` for `relay`, trusted as the flag and value in
/// `trust` say, with the token in `token`.
fn trusting_peer_args<'a>(
    role: &'a str,
    relay: &'a str,
    trust: [&'a str; 2],
    token: &'a Path,
) -> Vec<&'a str> {
    let mut args = vec![role, "--relay", relay];
    args.extend(trust);
    args.extend(["--token-file", path_str(token)]);
    args
}

/// Runs `connect` as `cmd` says, to a host in front of an echo target:
/// sends a line, checks it comes back and that `connect` then exits 0.
/// Returns how long the echo took from the start.
pub async fn echo_via_connect(cmd: Command) -> std::time::Duration {
    try_echo_via_connect(cmd)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`echo_via_connect`], with a failure as `connect`'s stderr.
pub async fn try_echo_via_connect(mut cmd: Command) -> Result<std::time::Duration, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = std::time::Instant::now();
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"ping\n").await.unwrap();
    let mut back = [0u8; 5];
    let read = within(
        WAIT,
        "the echo through connect",
        stdout.read_exact(&mut back),
    )
    .await;
    let took = started.elapsed();
    drop(stdin);
    let out = within(WAIT, "connect to exit", child.wait_with_output())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match (read, out.status.success()) {
        (Ok(_), true) if &back == b"ping\n" => Ok(took),
        (read, _) => Err(format!("{read:?} {back:?} {}: {stderr}", out.status)),
    }
}
