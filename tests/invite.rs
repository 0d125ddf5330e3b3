//! Onboarding with one string, as a new user does it, with real processes
//! and real OpenSSH: a relay; `invite --role host`; `host --join` on the
//! machine behind NAT (and `--save`, after which `host` needs no
//! arguments); `invite --role client`; `join` in a fresh config directory;
//! then `ssh -o ProxyCommand='shellrelay connect --host %h' USER@ID` with
//! no other flag. The `Host` blocks `join` prints for patterns, never
//! `Host *`. And the errors a wrong string gets.
#![cfg(unix)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use shellrelay::cli::invite::Invite;
use shellrelay::protocol::Role;
use support::bin::{
    assert_error_line, finish, mode, path_str, peer_args, run, shellrelay, start_relay, token_file,
    write_secret, BIN,
};
use support::proc::{field, Proc};
use support::sshd::{required_program, user, Sshd};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Runs `invite` for `role` and `host` against the relay whose certificate
/// and secret are in `dir`, naming `relay` (if given); returns the join
/// string, after checking it is stdout's one line and that stderr says
/// what to run.
async fn invite(dir: &Path, role: &str, host: &str, relay: Option<&str>) -> String {
    let cert = dir.join("relay.crt");
    let secret = dir.join("secret");
    let mut args = vec!["invite", "--role", role, "--host", host];
    args.extend([
        "--secret-file",
        path_str(&secret),
        "--cert",
        path_str(&cert),
    ]);
    if let Some(relay) = relay {
        args.extend(["--relay", relay]);
    }
    let out = run(&args).await;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {out:?}");
    assert!(lines[0].starts_with("sr1:"), "{out:?}");
    let command = match role {
        "host" => "shellrelay host --join - --save",
        _ => "shellrelay join -",
    };
    assert!(out.stderr.contains(command), "{out:?}");
    lines[0].to_owned()
}

/// `cmd` with its config directory at `config_home`.
fn in_config_home(mut cmd: tokio::process::Command, config_home: &Path) -> tokio::process::Command {
    cmd.env("XDG_CONFIG_HOME", config_home);
    cmd
}

/// Runs `shellrelay join -` with `string` on stdin, as pasted at a
/// terminal (a blank line, the string, Enter, and stdin left open), and
/// the config directory at `config_home`.
async fn join_from_stdin(config_home: &Path, string: &str) -> support::bin::Out {
    let mut cmd = in_config_home(shellrelay(&["join", "-"]), config_home);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"\n").await.unwrap();
    stdin.write_all(string.as_bytes()).await.unwrap();
    stdin.write_all(b"\n").await.unwrap();
    let output = within(
        WAIT,
        "join to finish with stdin still open",
        child.wait_with_output(),
    )
    .await
    .unwrap();
    drop(stdin);
    support::bin::Out {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `shellrelay join STRING` with the config directory at
/// `config_home`, its stdout and stderr into one file, so that what it
/// printed reads in the order it was printed.
async fn join_interleaved(config_home: &Path, string: &str) -> String {
    let path = config_home.with_extension("out");
    let out = std::fs::File::create(&path).unwrap();
    let mut cmd = in_config_home(shellrelay(&["join", string]), config_home);
    cmd.stdout(out.try_clone().unwrap()).stderr(out);
    let status = within(WAIT, "join to finish", cmd.status()).await.unwrap();
    let printed = std::fs::read_to_string(&path).unwrap();
    assert!(status.success(), "{status}: {printed}");
    printed
}

/// The files `join` or `host --save` writes for `kind` under `config_home`.
fn written(config_home: &Path, kind: &str) -> (PathBuf, PathBuf) {
    let dir = config_home.join("shellrelay");
    (
        dir.join(format!("{kind}.toml")),
        dir.join(format!("{kind}.token")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_then_join_then_ssh_through_proxy_command_with_no_other_flag() {
    let Some(sshd) = Sshd::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let (mut relay, addr) = start_relay(dir.path(), &secret).await;
    let pin = field(&relay.logged_text("certificate cert=").await, "pin")
        .unwrap()
        .to_owned();
    let relay_at = addr.to_string();

    // On the machine behind NAT: one string, read from a file so that it
    // sits in no argv, and saved.
    let host_string = invite(dir.path(), "host", "lab-inv", Some(&relay_at)).await;
    let decoded = Invite::decode(&host_string).unwrap();
    assert_eq!(
        decoded.pin.to_string(),
        pin,
        "the invite pins the relay's key"
    );
    assert_eq!(decoded.relays, [relay_at.as_str()]);
    assert_eq!(decoded.claims().unwrap().role, Role::Host);
    let string_file = dir.path().join("host-invite");
    std::fs::write(&string_file, format!("{host_string}\n")).unwrap();
    let host_home = dir.path().join("host-home");
    let target = sshd.addr().to_string();
    let join_arg = format!("@{}", string_file.display());
    let args = ["host", "--join", &join_arg, "--save", "--target", &target];
    // A SHELLRELAY_* variable left in the environment does not stop it:
    // the string wins, and says so.
    let mut cmd = in_config_home(shellrelay(&args), &host_home);
    cmd.env("SHELLRELAY_RELAY", "elsewhere.example:1");
    let mut host = Proc::spawn("host", cmd);
    host.wait_for_text("registered with relay").await;
    let warned = host.logged_text("ignoring").await;
    assert!(warned.contains("SHELLRELAY_RELAY"), "{warned}");
    let (host_toml, host_token) = written(&host_home, "host");
    assert_eq!(mode(&host_toml), 0o600);
    assert_eq!(mode(&host_token), 0o600);
    let text = std::fs::read_to_string(&host_toml).unwrap();
    for needle in [relay_at.as_str(), &pin, "host.token", &target] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // Later starts need no argument at all.
    host.terminate().await;
    let mut host = Proc::spawn("host", in_config_home(shellrelay(&["host"]), &host_home));
    host.wait_for_text("registered with relay").await;

    // On the user's machine: join, from stdin, in a fresh config directory.
    let client_string = invite(dir.path(), "client", "lab-inv", Some(&relay_at)).await;
    let client_home = dir.path().join("client-home");
    let out = join_from_stdin(&client_home, &client_string).await;
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.starts_with("Host lab-inv\n"), "{out:?}");
    assert!(
        out.stdout.contains("ProxyCommand ") && out.stdout.contains(" connect --host %h"),
        "{out:?}"
    );
    let (client_toml, client_token) = written(&client_home, "client");
    assert_eq!(mode(&client_toml), 0o600);
    assert_eq!(mode(&client_token), 0o600);

    // ssh as the issue has it: the ProxyCommand on the line, no other
    // shellrelay flag; `connect` finds relay, pin and token in the config
    // directory it inherits from ssh.
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = std::env::join_paths(
        std::iter::once(bin_dir.to_owned())
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut ssh = in_config_home(support::bin::scrubbed("ssh"), &client_home);
    ssh.env("PATH", path)
        .args(["-F", "/dev/null", "-T"])
        .args(["-o", "ProxyCommand=shellrelay connect --host %h"])
        .args(["-o", "StrictHostKeyChecking=no"])
        .args(["-o", "UserKnownHostsFile=/dev/null"])
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
        .args(["-o", "IdentitiesOnly=yes", "-i"])
        .arg(sshd.dir.path().join("id"))
        .arg(format!("{}@lab-inv", user()))
        .arg("echo hello");
    let out = finish(ssh).await;
    assert_eq!(
        out.stdout,
        "hello\n",
        "{out:?}\nhost log:\n{}\nsshd log: {:#?}",
        host.log(),
        sshd.log()
    );
    assert!(out.status.success(), "{out:?}");
    relay.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_pins_the_certificates_key_and_names_its_addresses_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let (mut relay, _addr) = start_relay(dir.path(), &secret).await;
    let pin = field(&relay.logged_text("certificate cert=").await, "pin")
        .unwrap()
        .to_owned();
    // A client invite takes the host forms of `token --host`: lists and
    // patterns.
    let string = invite(dir.path(), "client", "lab-*,db1", None).await;
    let invite = Invite::decode(&string).unwrap();
    assert_eq!(invite.pin.to_string(), pin);
    // One relay: the certificate's name others are likeliest to reach, with
    // the default port; a loopback name only when there is nothing else.
    let [relay] = invite.relays.as_slice() else {
        panic!("one relay: {:?}", invite.relays);
    };
    assert!(relay.ends_with(":4433"), "{relay}");
    assert!(
        !relay.starts_with("127.")
            && !relay.starts_with("[::1]")
            && !relay.starts_with("localhost"),
        "{relay}"
    );
    let claims = invite.claims().unwrap();
    assert_eq!(claims.hosts, ["lab-*", "db1"]);
    // `join` writes an ssh Host block for exactly those.
    let home = dir.path().join("home");
    let out = join_from_stdin(&home, &string).await;
    assert!(out.stdout.starts_with("Host lab-* db1\n"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_every_host_gets_a_host_block_for_names_ending_shellrelay_only() {
    let Some(_ssh) = required_program("ssh", "openssh-client") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let (mut relay, addr) = start_relay(dir.path(), &secret).await;
    let relay_at = addr.to_string();
    // Stands in for sshd: reports the first line ssh sends it.
    let (said, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let target = traffic::serve(move |tcp| {
        let said = said.clone();
        async move {
            let mut line = String::new();
            let mut tcp = tokio::io::BufReader::new(tcp);
            if tcp.read_line(&mut line).await.is_ok() {
                let _ = said.send(line);
            }
        }
    })
    .await
    .to_string();
    let host_token = token_file(&secret, dir.path(), "host.token", "host", "lab-any").await;
    let cert = dir.path().join("relay.crt");
    let mut args = peer_args("host", &relay_at, &cert, &host_token);
    args.extend(["--target", &target]);
    let mut host = Proc::spawn("host", shellrelay(&args));
    host.wait_for_text("registered with relay").await;

    // A token that reaches every host: no `Host *`, and a word on stderr.
    let string = invite(dir.path(), "client", "*", Some(&relay_at)).await;
    let home = dir.path().join("home");
    let out = join_from_stdin(&home, &string).await;
    assert!(out.status.success(), "{out:?}");
    let patterns: Vec<&str> = (out.stdout.lines())
        .filter_map(|line| line.strip_prefix("Host "))
        .flat_map(str::split_whitespace)
        .collect();
    assert_eq!(patterns, ["*.shellrelay"], "{out:?}");
    assert!(
        out.stderr
            .contains("this invite's token reaches every host the relay serves (*)"),
        "{out:?}"
    );
    let ssh_config = dir.path().join("ssh_config");
    std::fs::write(&ssh_config, &out.stdout).unwrap();
    let ssh = |destination: &str, options: &[&str]| {
        let mut cmd = in_config_home(support::bin::scrubbed("ssh"), &home);
        cmd.arg("-F")
            .arg(&ssh_config)
            .args(["-o", "StrictHostKeyChecking=no"])
            .args(["-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20"])
            .args(options)
            .arg(format!("{}@{destination}", user()));
        cmd
    };
    // Another destination is not taken through the relay.
    let resolved = finish(ssh("elsewhere.example", &["-G"])).await;
    assert!(resolved.status.success(), "{resolved:?}");
    assert!(
        !resolved.stdout.to_lowercase().contains("proxycommand"),
        "{resolved:?}"
    );
    // ssh with the printed block reaches host lab-any: its first words
    // arrive at the target.
    let mut cmd = ssh("lab-any.shellrelay", &[]);
    cmd.arg("true");
    let tried = finish(cmd).await;
    let first = heard.try_recv().unwrap_or_else(|_| {
        panic!(
            "ssh did not reach the target: {tried:?}\nhost log:\n{}",
            host.log()
        )
    });
    assert!(first.starts_with("SSH-2.0-"), "{first:?}");
    relay.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_says_what_a_pattern_reaches_before_its_host_block() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let (_relay, addr) = start_relay(dir.path(), &secret).await;
    let relay_at = addr.to_string();
    let string = invite(dir.path(), "client", "lab*", Some(&relay_at)).await;
    let printed = join_interleaved(&dir.path().join("pattern"), &string).await;
    let note = printed.find("this invite's token reaches the hosts matching lab*");
    let block = printed.find("\nHost lab*\n    ProxyCommand ");
    assert!(
        matches!((note, block), (Some(note), Some(block)) if note < block),
        "{printed}"
    );
    assert!(!printed.contains("--host-suffix"), "{printed}");
    // One host: the block, and nothing to say about it.
    let string = invite(dir.path(), "client", "lab1", Some(&relay_at)).await;
    let printed = join_interleaved(&dir.path().join("one"), &string).await;
    assert!(!printed.contains("note:"), "{printed}");
    assert!(
        printed.contains("\nHost lab1\n    ProxyCommand "),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_join_string_gets_one_line_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let (_relay, addr) = start_relay(dir.path(), &secret).await;
    let relay_at = addr.to_string();
    let host_string = invite(dir.path(), "host", "lab1", Some(&relay_at)).await;
    let client_string = invite(dir.path(), "client", "lab1", Some(&relay_at)).await;
    let home = dir.path().join("home");

    // Each string on the wrong side.
    let out = finish(in_config_home(shellrelay(&["join", &host_string]), &home)).await;
    assert_error_line(&out, &["host invite", "shellrelay host --join"]);
    let out = finish(in_config_home(
        shellrelay(&["host", "--join", &client_string]),
        &home,
    ))
    .await;
    assert_error_line(&out, &["client invite", "shellrelay join"]);

    // Damaged or not a join string at all, without echoing the token.
    let cut = &client_string[..client_string.len() - 40];
    for (bad, says) in [
        (cut, "damaged"),
        ("hello", "starts with sr1:"),
        ("sr9:AAAA", "format sr9"),
    ] {
        let out = run(&["join", bad]).await;
        assert_error_line(&out, &[says]);
        assert!(!out.stderr.contains(&cut[20..60]), "{out:?}");
    }
    let missing = dir.path().join("nope");
    let out = run(&["join", &format!("@{}", missing.display())]).await;
    assert_error_line(
        &out,
        &["could not read join string file", path_str(&missing)],
    );

    // A second join does not silently replace the first.
    let out = finish(in_config_home(shellrelay(&["join", &client_string]), &home)).await;
    assert!(out.status.success(), "{out:?}");
    let out = finish(in_config_home(shellrelay(&["join", &client_string]), &home)).await;
    assert_error_line(&out, &["exists already", "--force"]);
    let mut cmd = in_config_home(shellrelay(&["join", "--force", &client_string]), &home);
    cmd.stdin(Stdio::null());
    assert!(finish(cmd).await.status.success());

    // A config file named by a relative path is named absolutely in the
    // ProxyCommand, which ssh runs from wherever it is started.
    let mut cmd = shellrelay(&["join", "--config", "my dir/c.toml", &client_string]);
    cmd.current_dir(dir.path());
    let out = finish(cmd).await;
    assert!(out.status.success(), "{out:?}");
    let absolute = dir.path().join("my dir/c.toml");
    assert!(
        out.stdout
            .contains(&format!("--config '{}' --host %h", absolute.display())),
        "{out:?}"
    );
    assert_eq!(mode(&absolute), 0o600);

    // A host with neither flags, nor a config file, nor --join says how.
    let out = finish(in_config_home(shellrelay(&["host"]), &home)).await;
    assert_error_line(&out, &["--relay", "host.toml", "--join"]);

    // An invite needs the relay's certificate, for its pin.
    let out = run(&[
        "invite",
        "--role",
        "host",
        "--host",
        "lab1",
        "--secret-file",
        path_str(&secret),
        "--cert",
        path_str(&dir.path().join("none.crt")),
    ])
    .await;
    assert_error_line(&out, &["none.crt", "--cert"]);
}
