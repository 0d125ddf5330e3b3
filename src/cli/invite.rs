//! Join strings: one line that carries everything a host agent or a client
//! needs to reach a relay, so onboarding a machine is one command. `shellrelay
//! invite` prints one; `host --join` and `join` read it.
//!
//! A join string is `sr1:` followed by unpadded base64url of a JSON object:
//! `{"relays":["relay.example.org:4433"],"pin":"sha256:…","token":"…"}`.
//! The pin is the relay's public key (see [`crate::net::tls::pin`]), so the joining
//! machine needs no certificate file. The token is the secret part: whoever
//! holds the string holds the token, so it is read from a file or stdin
//! rather than argv where it matters.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::access::token::Claims;
use crate::net::tls::pin::Pin;
use crate::net::transport::dial;
use crate::protocol::id;

/// What every join string starts with; the digit is the format's version.
pub const PREFIX: &str = "sr1:";

/// Longest join string read: a token of a few hundred bytes and a handful
/// of addresses fit many times over, and a file named by mistake fails fast.
pub const MAX_LEN: usize = 16 * 1024;

/// What a join string carries.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// The relays, `HOST:PORT`: a host agent registers with each, the
    /// client side takes the first that answers. They share the key of
    /// `pin`.
    pub relays: Vec<String>,
    /// The relay's public key.
    pub pin: Pin,
    /// The token, host or client.
    pub token: String,
    /// The one relay names a fleet, of this many relays per host (see
    /// [`crate::net::fleet`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<u8>,
}

/// Checks a relay address from a join string: `HOST:PORT` with a port
/// number, and nothing but printable ASCII (it goes into config files).
pub fn check_relay(relay: &str) -> anyhow::Result<()> {
    if let Err(err) = dial::check_relay_addr(relay) {
        bail!("relay {relay} {err}");
    }
    let port = relay.rsplit_once(':').map(|(_, port)| port);
    if !relay.chars().all(|c| c.is_ascii_graphic())
        || port.and_then(|p| p.parse::<u16>().ok()).is_none()
    {
        bail!("relay {relay:?} is not HOST:PORT");
    }
    Ok(())
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("relays", &self.relays)
            .field("pin", &self.pin)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Invite {
    /// The join string: `sr1:` and base64url of the JSON.
    pub fn encode(&self) -> anyhow::Result<String> {
        let json = serde_json::to_vec(self).context("could not encode the invite")?;
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json);
        Ok(format!("{PREFIX}{text}"))
    }

    /// Reads a join string, surrounding whitespace allowed. Errors say what
    /// is wrong without echoing the string, which holds a token.
    pub fn decode(text: &str) -> anyhow::Result<Invite> {
        let text = text.trim();
        if text.len() > MAX_LEN {
            bail!(
                "a join string is at most {MAX_LEN} bytes; this is {}",
                text.len()
            );
        }
        let Some(body) = text.strip_prefix(PREFIX) else {
            match text.split_once(':') {
                Some((version, _)) if version.starts_with("sr") => bail!(
                    "this join string is format {version}, which this shellrelay does not read \
                     (it reads {PREFIX}); upgrade shellrelay, or make the invite with this version"
                ),
                _ => bail!(
                    "not a join string: a join string starts with {PREFIX}, as `shellrelay \
                     invite` prints it"
                ),
            }
        };
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .context("join string damaged: it is not base64url after sr1: (copied in full?)")?;
        let invite: Invite = serde_json::from_slice(&json)
            .context("join string damaged: its contents are not an invite")?;
        if invite.relays.is_empty() {
            bail!("join string names no relay");
        }
        for relay in &invite.relays {
            check_relay(relay).context("join string")?;
        }
        if invite.token.trim().is_empty() {
            bail!("join string carries no token");
        }
        match invite.fleet {
            Some(k) if !(1..=16).contains(&k) || invite.relays.len() != 1 => {
                bail!("join string names a fleet of {k}, which needs 1 to 16 and one relay name")
            }
            _ => {}
        }
        Ok(invite)
    }

    /// Reads a join string given as `--join` takes it: the string itself,
    /// `@FILE` for a file holding it, or `-` for stdin.
    pub fn read_arg(arg: &str) -> anyhow::Result<Invite> {
        let arg = arg.trim();
        if arg == "-" {
            // The first line that is not blank: a string pasted at a
            // terminal ends with Enter, not with the end of input.
            let mut stdin = std::io::stdin().lock().take(MAX_LEN as u64 + 1);
            let mut text = String::new();
            while text.trim().is_empty() {
                text.clear();
                let read = stdin
                    .read_line(&mut text)
                    .context("could not read the join string from stdin")?;
                if read == 0 {
                    bail!("no join string on stdin");
                }
            }
            return Invite::decode(&text).context("join string from stdin");
        }
        if let Some(path) = arg.strip_prefix('@') {
            let path = Path::new(path);
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_LEN as u64 + 1).read_to_string(&mut text))
                .with_context(|| format!("could not read join string file {}", path.display()))?;
            return Invite::decode(&text)
                .with_context(|| format!("join string file {}", path.display()));
        }
        Invite::decode(arg)
    }

    /// Writes the config file (`crate::cli::config`) at `path` that reaches this relay:
    /// the token goes to `path` with the extension `token`, and the file names
    /// the relays, their pin, the token file and,
    /// for a host agent, `target`. Both are written readable by their owner
    /// only, in a directory made if missing. Existing files are replaced only
    /// with `force`. Returns the token file's path.
    pub fn save(&self, path: &Path, target: Option<&str>, force: bool) -> anyhow::Result<PathBuf> {
        use crate::access::private::{self, Existing};
        let token_path = path.with_extension("token");
        if !force {
            for existing in [path, token_path.as_path()] {
                if existing.exists() {
                    bail!(
                        "{} exists already; pass --force to replace it, or --config PATH to write \
                         another file",
                        existing.display()
                    );
                }
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
        }
        let quote = |s: &str| serde_json::Value::from(s).to_string();
        let relay = match self.relays.as_slice() {
            [] => bail!("the invite names no relay"),
            [one] => quote(one),
            several => format!(
                "[{}]",
                several
                    .iter()
                    .map(|r| quote(r))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let token_name = token_path
            .file_name()
            .and_then(|n| n.to_str())
            .context("the config file needs a name")?;
        let mut text = String::from(
            "# Written by `shellrelay`: the relay, its public key and the token file.\n",
        );
        text += &format!("relay = {relay}\n");
        text += &format!("relay_pin = {}\n", quote(&self.pin.to_string()));
        text += &format!("token_file = {}\n", quote(token_name));
        if let Some(k) = self.fleet {
            text += &format!("fleet = {k}\n");
        }
        if let Some(target) = target {
            text += &format!("target = {}\n", quote(target));
        }
        let existing = if force {
            Existing::Replace
        } else {
            Existing::Refuse
        };
        private::write(
            &token_path,
            format!("{}\n", self.token.trim()).as_bytes(),
            existing,
        )?;
        private::write(path, text.as_bytes(), existing)?;
        Ok(token_path)
    }

    /// The token's claims, read without checking its signature: the relay
    /// checks that. They tell the joining side its role and hosts, for its
    /// messages and files, so host ids and patterns are checked here: a
    /// forged string must not put anything else into an ssh config.
    pub fn claims(&self) -> anyhow::Result<Claims> {
        let claims = self.unchecked_claims()?;
        if let Err(err) = id::host_id(&claims.sub) {
            bail!("the join string's token names a subject that {err}");
        }
        for pattern in &claims.hosts {
            if let Err(err) = id::host_pattern(pattern) {
                bail!("the join string's token names a host that {err}");
            }
        }
        Ok(claims)
    }

    fn unchecked_claims(&self) -> anyhow::Result<Claims> {
        crate::access::token::peek_claims(&self.token).context("the join string's token")
    }
}

/// The invite `--join` names, which must be a host's.
pub(super) fn host_invite(arg: &str) -> anyhow::Result<Invite> {
    let invite = Invite::read_arg(arg)?;
    let claims = invite.claims()?;
    if claims.role != crate::protocol::Role::Host {
        bail!(
            "this join string is a client invite: run `shellrelay join` with it on the machine \
             you ssh from; a host agent needs one made with `shellrelay invite --role host`"
        );
    }
    Ok(invite)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::keys::Secret;
    use crate::protocol::Role;
    use std::time::Duration;

    fn invite() -> Invite {
        let secret = Secret::new(b"0123456789abcdef0123".to_vec()).unwrap();
        let claims = Claims::new(Role::Host, "lab1", "shellrelay", Duration::from_secs(60));
        Invite {
            relays: vec!["relay.example.org:4433".into(), "[2001:db8::1]:4433".into()],
            pin: "sha256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
                .parse()
                .unwrap(),
            token: crate::access::token::mint(&secret, &claims).unwrap(),
            fleet: None,
        }
    }

    #[test]
    fn a_join_string_round_trips_and_names_its_claims() {
        let invite = invite();
        let text = invite.encode().unwrap();
        assert!(text.starts_with("sr1:"), "{text}");
        assert!(!text.contains(char::is_whitespace), "{text}");
        assert_eq!(Invite::decode(&format!("  {text}\n")).unwrap(), invite);
        let claims = invite.claims().unwrap();
        assert_eq!((claims.role, claims.sub.as_str()), (Role::Host, "lab1"));
        assert!(!format!("{invite:?}").contains(&invite.token));
    }

    #[test]
    fn bad_join_strings_are_refused_without_echoing_them() {
        let good = invite().encode().unwrap();
        let cut = &good[..good.len() / 2];
        for (text, says) in [
            ("hello", "not a join string"),
            ("sr2:abc", "format sr2"),
            ("sr1:!!!", "not base64url"),
            (cut, "damaged"),
            ("sr1:e30", "not an invite"),
        ] {
            let err = format!("{:#}", Invite::decode(text).unwrap_err());
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.len() < 300 && !err.contains(&good[10..40]), "{err}");
        }
        let mut no_port = invite();
        no_port.relays = vec!["relay.example.org".into()];
        let err = format!(
            "{:#}",
            Invite::decode(&no_port.encode().unwrap()).unwrap_err()
        );
        assert!(err.contains("needs a port"), "{err}");
        let long = format!("sr1:{}", "A".repeat(MAX_LEN));
        assert!(format!("{:#}", Invite::decode(&long).unwrap_err()).contains("at most"));
    }

    #[test]
    fn a_forged_token_cannot_put_anything_but_host_ids_into_files() {
        let secret = Secret::new(b"0123456789abcdef0123".to_vec()).unwrap();
        let forge = |sub: &str, hosts: &[&str]| {
            let mut claims = Claims::new(Role::Client, sub, "shellrelay", Duration::from_secs(60));
            claims.hosts = hosts.iter().map(|h| h.to_string()).collect();
            let mut invite = invite();
            invite.token = crate::access::token::mint(&secret, &claims).unwrap();
            invite
        };
        assert!(forge("client", &["lab-*", "db1"]).claims().is_ok());
        for (sub, hosts) in [
            ("lab1\n    ProxyCommand sh -c evil\nHost lab1", &[][..]),
            ("client", &["lab1\n    ProxyCommand evil"][..]),
            ("client", &["a b"][..]),
        ] {
            let err = format!("{:#}", forge(sub, hosts).claims().unwrap_err());
            assert!(err.contains("the join string's token names"), "{err}");
        }
    }

    #[test]
    fn a_fleet_travels_in_the_string_and_into_the_saved_file() {
        let mut fleet = invite();
        fleet.relays = vec!["relays.example.org:4433".into()];
        fleet.fleet = Some(2);
        let read = Invite::decode(&fleet.encode().unwrap()).unwrap();
        assert_eq!(read.fleet, Some(2));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        read.save(&path, None, false).unwrap();
        let saved = crate::cli::config::parse(
            crate::cli::config::Kind::Client,
            &path,
            &std::fs::read_to_string(&path).unwrap(),
        )
        .unwrap();
        assert_eq!((saved.fleet, saved.relay.len()), (Some(2), 1));
        for (k, relays) in [(0, 1), (17, 1), (2, 2)] {
            let mut bad = fleet.clone();
            bad.fleet = Some(k);
            bad.relays = vec!["a.example:1".into(); relays];
            let err = format!("{:#}", Invite::decode(&bad.encode().unwrap()).unwrap_err());
            assert!(err.contains("names a fleet"), "{err}");
        }
    }

    #[test]
    fn a_join_string_is_read_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("invite");
        let invite = invite();
        std::fs::write(&path, format!("{}\n", invite.encode().unwrap())).unwrap();
        let read = Invite::read_arg(&format!("@{}", path.display())).unwrap();
        assert_eq!(read, invite);
        let err = Invite::read_arg(&format!("@{}/nope", dir.path().display())).unwrap_err();
        assert!(format!("{err:#}").contains("could not read join string file"));
    }
}
