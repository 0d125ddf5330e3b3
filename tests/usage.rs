//! The command line of the real `shellrelay` binary: every subcommand's
//! help names its defaults, and a wrong flag or command is a short usage
//! error.
#![cfg(unix)]

mod support;

use support::bin::run;

/// Collapses runs of whitespace, so that help text wrapped at any terminal
/// width reads as one line.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn help_of_every_subcommand_names_the_defaults() {
    let cases: &[(&str, &[&str])] = &[
        (
            "relay",
            &[
                "--listen",
                "[default: [::]:4433]",
                "--secret-file",
                "--secret",
                "--cert",
                "[default: certs/relay.crt]",
                "--key",
                "[default: certs/relay.key]",
                "--audience",
                "[default: shellrelay]",
                "--name",
                "--keep-alive",
                "[default: 4s]",
                "--idle-timeout",
                "[default: 30s]",
                "--metrics",
            ],
        ),
        (
            "host",
            &[
                "--relay",
                "--relay-cert",
                "--token-file",
                "--token",
                "--target",
                "else 127.0.0.1:22]",
                "--join",
                "--save",
                "--config",
                "host.toml",
                "--max-backoff",
                "--keep-alive",
                "[default: 4s]",
                "--idle-timeout",
                "[default: 30s]",
            ],
        ),
        (
            "client",
            &[
                "--relay",
                "--relay-cert",
                "--token-file",
                "--token",
                "--listen",
                "[default: 127.0.0.1:2222]",
                "--host",
                "--config",
                "client.toml",
                "--keep-alive",
                "[default: 4s]",
                "--idle-timeout",
                "[default: 30s]",
            ],
        ),
        (
            "connect",
            &[
                "--relay",
                "--relay-cert",
                "--token-file",
                "--token",
                "--host",
                "--config",
                "client.toml",
                "--keep-alive",
                "[default: 4s]",
                "--idle-timeout",
                "[default: 30s]",
            ],
        ),
        (
            "token",
            &[
                "--secret-file",
                "--secret",
                "--role",
                "--host",
                "--ttl",
                "[default: 1h]",
                "--audience",
                "[default: shellrelay]",
                "--jti",
            ],
        ),
        ("certs", &["--out", "[default: certs]", "--name", "--force"]),
        (
            "invite",
            &[
                "--role",
                "--host",
                "--ttl",
                "[default: 30d]",
                "--relay",
                "--cert",
                "[default: certs/relay.crt]",
                "--secret-file",
                "--signing-key",
                "--kid",
            ],
        ),
        ("join", &["<STRING>", "--config", "--force"]),
        (
            "demo",
            &[
                "--target",
                "[default: 127.0.0.1:22]",
                "--listen",
                "[default: 127.0.0.1:2222]",
            ],
        ),
        ("status", &["--metrics", "[default: 127.0.0.1:9100]"]),
    ];
    for (sub, needles) in cases {
        let out = run(&[sub, "--help"]).await;
        assert!(out.status.success(), "{sub} --help failed: {out:?}");
        assert!(
            out.stderr.is_empty(),
            "{sub} --help wrote to stderr: {out:?}"
        );
        let help = squash(&out.stdout);
        assert!(
            help.contains(&format!("Usage: shellrelay {sub}")),
            "{sub} --help has no usage line: {out:?}"
        );
        for needle in *needles {
            assert!(
                help.contains(needle),
                "{sub} --help does not mention {needle:?}: {out:?}"
            );
        }
    }

    let out = run(&["--help"]).await;
    assert!(out.status.success(), "--help failed: {out:?}");
    for (sub, _) in cases {
        assert!(
            out.stdout.contains(sub),
            "--help does not list {sub}: {out:?}"
        );
    }
    let out = run(&["--version"]).await;
    assert!(out.status.success(), "--version failed: {out:?}");
    assert_eq!(
        out.stdout.trim(),
        format!("shellrelay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn wrong_flags_are_short_usage_errors() {
    let mut cases: Vec<Vec<&str>> = [
        "relay", "host", "client", "connect", "invite", "join", "token", "certs", "demo",
    ]
    .iter()
    .map(|sub| vec![*sub, "--no-such-flag"])
    .collect();
    cases.push(vec!["no-such-command"]);
    cases.push(vec![]);
    cases.push(vec![
        "token",
        "--secret-file",
        "s",
        "--role",
        "admin",
        "--host",
        "x",
    ]);
    cases.push(vec![
        "relay",
        "--secret",
        "0123456789abcdef",
        "--listen",
        "nowhere",
    ]);
    for args in cases {
        let out = run(&args).await;
        assert!(!out.status.success(), "{args:?} succeeded: {out:?}");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: clap's usage exit code: {out:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?} wrote to stdout: {out:?}");
        assert!(
            out.stderr.starts_with("error: ") || out.stderr.starts_with("Relay ssh"),
            "{args:?}: expected an error or the usage: {out:?}"
        );
        // The bare command prints the short help: a line per subcommand.
        assert!(
            out.stderr.lines().count() <= 30,
            "{args:?}: too long: {out:?}"
        );
        for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
            assert!(!out.stderr.contains(bad), "{args:?}: {bad}: {out:?}");
        }
    }
}
