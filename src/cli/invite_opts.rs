//! `shellrelay invite` and `shellrelay join`: onboarding a machine with one
//! string. `invite` runs next to the relay and prints a join string;
//! `host --join` (in `peer_opts`) and `join` read it.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use super::token_opts::MintOpt;
use crate::access::token::Claims;
use crate::cli::invite::Invite;
use crate::net::tls::pin::Pin;
use crate::ops::clock::fmt_unix;
use crate::protocol::Role;
use crate::{cli::config, net::tls};

/// `shellrelay invite`
#[derive(Debug, Args)]
#[command(mut_arg("ttl", |a| a.default_value(crate::ops::defaults::INVITE_TTL)))]
pub struct InviteOpt {
    #[command(flatten)]
    mint: MintOpt,
    /// Address the other machine dials the relay at [default: the name in the relay's certificate others are likeliest to reach, with port 4433]. Several (repeat, or separate with commas) are several relays sharing the certificate's key: the host registers with each, the client takes the first that answers.
    #[arg(
        long = "relay",
        env = "SHELLRELAY_RELAY",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    relays: Vec<String>,
    /// The --relay name is a fleet: its DNS records are the relays, and each host uses K of them (see `host --fleet`).
    #[arg(long, env = "SHELLRELAY_FLEET", value_name = "K", value_parser = clap::value_parser!(u8).range(1..=16))]
    fleet: Option<u8>,
    /// The relay's certificate, whose public key the invite pins.
    #[arg(long, env = "SHELLRELAY_CERT", default_value = crate::ops::defaults::CERT, value_name = "PATH")]
    cert: PathBuf,
}

/// `shellrelay join`
#[derive(Debug, Args)]
pub struct JoinOpt {
    /// Join string from `shellrelay invite --role client`: the string, @FILE, or - for stdin.
    #[arg(value_name = "STRING")]
    join: String,
    /// Client config file to write [default: $XDG_CONFIG_HOME/shellrelay/client.toml or ~/.config/shellrelay/client.toml]; the token goes beside it, with the extension .token.
    #[arg(long, env = config::CONFIG_ENV, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Replace an existing config file and token file.
    #[arg(long)]
    force: bool,
}

/// Mints the token and prints the join string on stdout, and on stderr
/// what to do with it.
pub(super) fn invite(opt: InviteOpt) -> anyhow::Result<()> {
    let certs = tls::load_certs(&opt.cert).with_context(|| {
        format!(
            "the invite pins the relay's key, read from its certificate: run invite next to the \
             relay, or pass --cert with the relay's certificate (its --cert; default {})",
            crate::ops::defaults::CERT
        )
    })?;
    let cert = certs.first().context("no certificate in --cert")?;
    let pin = Pin::of(cert)?;
    // Several --relay are several relays, which share the key pinned here;
    // without, the certificate's name others are likeliest to reach.
    let relays = match opt.relays.as_slice() {
        [] => {
            let names = default_relays(tls::cert_names(cert)?);
            let Some(first) = names.first() else {
                bail!(
                    "{} names no DNS name or address; pass --relay HOST:PORT",
                    opt.cert.display()
                );
            };
            vec![first.clone()]
        }
        given => {
            for relay in given {
                crate::cli::invite::check_relay(relay).context("--relay")?;
            }
            given.to_vec()
        }
    };
    let first = &relays[0];
    let (token, claims) = opt.mint.mint()?;
    if opt.fleet.is_some() && relays.len() != 1 {
        bail!("--fleet takes one --relay: the name whose DNS records are the relays");
    }
    let invite = Invite {
        relays: relays.clone(),
        pin,
        token,
        fleet: opt.fleet,
    };
    println!("{}", invite.encode()?);
    eprintln!("{}", instructions(&claims, &relays));
    if loopback(first) {
        eprintln!(
            "note: the relay address {first} is this machine's loopback, which only works here; \
             for another machine pass --relay with the name or address it dials"
        );
    } else if opt.relays.is_empty() && short_name(first) {
        eprintln!(
            "note: the relay address {first} is a short name, which other machines may not \
             resolve; pass --relay with the name or address they dial (or start the relay with \
             --name, or run `shellrelay certs --add-name NAME`)"
        );
    }
    Ok(())
}

/// The relay addresses an invite names when `--relay` is not given: the
/// certificate's names with the default port, those other machines are
/// likeliest to reach first: full DNS names, then addresses, then short
/// names (the machine's hostname, which the certificate always names),
/// loopback last. The order within a rank is the certificate's.
fn default_relays(names: Vec<String>) -> Vec<String> {
    let port = crate::protocol::DEFAULT_PORT;
    let mut relays: Vec<(u8, String)> = names
        .into_iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) if ip.is_loopback() => (4, format!("{}", std::net::SocketAddr::new(ip, port))),
            Ok(ip) => (1, format!("{}", std::net::SocketAddr::new(ip, port))),
            Err(_) if name == "localhost" => (3, format!("{name}:{port}")),
            Err(_) if !name.trim_end_matches('.').contains('.') => (2, format!("{name}:{port}")),
            Err(_) => (0, format!("{name}:{port}")),
        })
        .collect();
    relays.sort_by_key(|(rank, _)| *rank);
    relays.into_iter().map(|(_, relay)| relay).collect()
}

/// Whether `relay` (`HOST:PORT`) names a host by a short name, which other
/// machines may not resolve.
fn short_name(relay: &str) -> bool {
    let host = relay.rsplit_once(':').map_or(relay, |(host, _)| host);
    !host.contains('.') && !host.contains(':') && !host.starts_with('[') && host != "localhost"
}

/// Whether `relay` (`HOST:PORT`) names this machine's loopback.
fn loopback(relay: &str) -> bool {
    let host = relay.rsplit_once(':').map_or(relay, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// What `invite` says on stderr: whom the invite is for, until when, and
/// the command to run with it.
fn instructions(claims: &Claims, relays: &[String]) -> String {
    let expires = fmt_unix(claims.exp);
    let jti = claims.jti.as_deref().unwrap_or("-");
    let relays = relays.join(", ");
    match claims.role {
        Role::Host => format!(
            "host invite for {host}, relay {relays}, valid until {expires} (jti {jti}).\n\
             On {host}, run this and paste the line above:\n    \
             shellrelay host --join - --save\n\
             (or save the line to a file and pass --join @FILE; --target HOST:PORT if sshd is not \
             at 127.0.0.1:22)",
            host = claims.sub
        ),
        Role::Client => format!(
            "client invite for {hosts}, relay {relays}, valid until {expires} (jti {jti}).\n\
             On the machine you ssh from, run this and paste the line above:\n    \
             shellrelay join -\n\
             then: ssh -o ProxyCommand='shellrelay connect --host %h' USER@{example}",
            hosts = hosts(claims).join(", "),
            example = claims.only_host().unwrap_or("HOST")
        ),
    }
}

/// The hosts (ids or patterns) a client token reaches.
fn hosts(claims: &Claims) -> Vec<String> {
    match claims.hosts.as_slice() {
        [] => vec![claims.sub.clone()],
        hosts => hosts.to_vec(),
    }
}

/// What `join`'s `Host` block for a pattern of only `*` and `?` names
/// after it, and `connect --host-suffix` takes off again: `ssh
/// lab1.shellrelay` reaches host lab1. No real domain ends so, so such a
/// block takes no ssh destination that is not the relay's, where `Host *`
/// would take every one.
const SSH_SUFFIX: &str = ".shellrelay";

/// The `Host` patterns of ~/.ssh/config for a client token's `hosts`,
/// in the order `join` prints their blocks: those named with
/// [`SSH_SUFFIX`], then the others as they are.
#[derive(Debug, Default, PartialEq, Eq)]
struct SshHosts {
    /// Patterns of only `*` and `?`, [`SSH_SUFFIX`] added.
    suffixed: Vec<String>,
    /// Host ids and patterns with a character of their own.
    plain: Vec<String>,
    /// What `join` says on stderr before printing them: what a pattern
    /// reaches, and what its block takes.
    notes: Vec<String>,
}

impl SshHosts {
    fn new(hosts: &[String]) -> SshHosts {
        let mut ssh = SshHosts::default();
        for host in hosts {
            let wild = |c: char| c == '*' || c == '?';
            if !host.contains(wild) {
                ssh.plain.push(host.clone());
            } else if host.chars().all(wild) {
                let reaches = match host.contains('*') {
                    true => format!("every host the relay serves ({host})"),
                    false => format!("every host whose id matches {host}"),
                };
                ssh.notes.push(format!(
                    "note: this invite's token reaches {reaches}; rather than a `Host {host}` \
                     block, which would send ssh destinations that are not the relay's through \
                     it, the block below is for names ending {SSH_SUFFIX}: \
                     `ssh USER@lab1{SSH_SUFFIX}` reaches host lab1"
                ));
                ssh.suffixed.push(format!("{host}{SSH_SUFFIX}"));
            } else {
                ssh.notes.push(format!(
                    "note: this invite's token reaches the hosts matching {host}; the `Host \
                     {host}` block below sends every ssh destination matching it through the \
                     relay (name hosts one by one there to narrow it)"
                ));
                ssh.plain.push(host.clone());
            }
        }
        ssh
    }
}

/// Writes the client config and token from a client invite, and prints the
/// `Host` block for `~/.ssh/config`.
pub(super) fn join(opt: JoinOpt) -> anyhow::Result<()> {
    let invite = Invite::read_arg(&opt.join)?;
    let claims = invite.claims()?;
    if claims.role != Role::Client {
        bail!(
            "this join string is a host invite: run `shellrelay host --join …` with it on the \
             machine behind NAT; to ssh from here, ask for one made with `shellrelay invite \
             --role client`"
        );
    }
    let path = match &opt.config {
        Some(path) => path.clone(),
        None => config::default_path(config::Kind::Client).with_context(|| {
            format!(
                "no config directory: HOME is not set; name the file with --config or ${}",
                config::CONFIG_ENV
            )
        })?,
    };
    let token = invite.save(&path, None, opt.force)?;
    let ssh = SshHosts::new(&hosts(&claims));
    for note in &ssh.notes {
        eprintln!("{note}");
    }
    eprintln!(
        "wrote {} and {} (token until {}); add this to ~/.ssh/config:",
        path.display(),
        token.display(),
        fmt_unix(claims.exp)
    );
    let program = std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(proxy_word))
        .unwrap_or_else(|| "shellrelay".to_owned());
    // ssh runs the ProxyCommand from wherever ssh is started.
    let config = match &opt.config {
        Some(path) => {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            format!(" --config {}", proxy_word(&path.to_string_lossy()))
        }
        None => String::new(),
    };
    // First, so that a plain pattern (`lab*`) cannot take lab1.shellrelay.
    if !ssh.suffixed.is_empty() {
        println!("Host {}", ssh.suffixed.join(" "));
        println!("    ProxyCommand {program} connect{config} --host %h --host-suffix {SSH_SUFFIX}");
    }
    if !ssh.plain.is_empty() {
        println!("Host {}", ssh.plain.join(" "));
        println!("    ProxyCommand {program} connect{config} --host %h");
    }
    Ok(())
}

/// `word` for a `ProxyCommand` line, which ssh expands (`%`) and then hands
/// to a shell: quoted where it needs to be, with `%` doubled.
fn proxy_word(word: &str) -> String {
    let word = word.replace('%', "%%");
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+,:@=".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_relays_put_names_others_can_dial_first() {
        let names = [
            "127.0.0.1",
            "::1",
            "localhost",
            "relay.example.org",
            "192.0.2.7",
        ];
        let relays = default_relays(names.iter().map(|n| n.to_string()).collect());
        assert_eq!(
            relays,
            [
                "relay.example.org:4433",
                "192.0.2.7:4433",
                "localhost:4433",
                "127.0.0.1:4433",
                "[::1]:4433"
            ]
        );
        assert!(loopback("[::1]:4433") && loopback("localhost:1") && loopback("127.0.0.1:2"));
        assert!(!loopback("relay.example.org:4433") && !loopback("192.0.2.7:4433"));
    }

    #[test]
    fn no_host_block_takes_every_ssh_destination() {
        let hosts =
            |h: &[&str]| SshHosts::new(&h.iter().map(|h| h.to_string()).collect::<Vec<_>>());
        let exact = hosts(&["lab1", "db1"]);
        assert_eq!(
            (exact.plain, exact.suffixed),
            (vec!["lab1".into(), "db1".into()], vec![])
        );
        assert!(exact.notes.is_empty());
        let every = hosts(&["*", "lab1", "??"]);
        assert_eq!(every.suffixed, ["*.shellrelay", "??.shellrelay"]);
        assert_eq!(every.plain, ["lab1"]);
        assert!(
            every.notes[0].contains("every host the relay serves (*)"),
            "{:?}",
            every.notes
        );
        assert!(every.notes[1].contains("every host whose id matches ??"));
        let pattern = hosts(&["lab*"]);
        assert_eq!(pattern.plain, ["lab*"]);
        assert!(pattern.notes[0].contains("the hosts matching lab*"));
    }

    #[test]
    fn proxy_command_words_survive_ssh_and_the_shell() {
        assert_eq!(
            proxy_word("/usr/local/bin/shellrelay"),
            "/usr/local/bin/shellrelay"
        );
        assert_eq!(proxy_word("/home/a b/c.toml"), "'/home/a b/c.toml'");
        assert_eq!(proxy_word("/x/100%/it's"), r"'/x/100%%/it'\''s'");
    }
}
