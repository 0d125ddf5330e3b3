//! `shellrelay token` and `shellrelay keygen`: minting tokens and making
//! the keys that sign them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::{host_id, host_pattern, kid, HumanDuration, SecretOpt};
use crate::access::private::{self, Existing};
use crate::access::token::{self, Claims};
use crate::protocol::Role;
use crate::{access::keys, protocol::id};

/// `shellrelay token`
#[derive(Debug, Args)]
pub struct TokenOpt {
    #[command(flatten)]
    pub(super) mint: MintOpt,
    /// Write the token to this file (mode 0600, replaced if it exists) instead of stdout.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

/// What a token is made of and signed with, for `token` and `invite`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("signing").required(true).args(["secret_file", "secret", "signing_key"])))]
pub struct MintOpt {
    #[command(flatten)]
    secret: SecretOpt,
    /// Sign with this private key instead of the shared secret: Ed25519 or
    /// P-256 in PEM, as `shellrelay keygen` writes.
    #[arg(long, env = "SHELLRELAY_SIGNING_KEY", value_name = "PATH", conflicts_with_all = ["secret_file", "secret"])]
    signing_key: Option<PathBuf>,
    /// Key id (kid) to name in the token's header, so the relay knows which
    /// of its keys checks it.
    #[arg(long, env = "SHELLRELAY_KID", value_name = "KID", value_parser = kid)]
    kid: Option<String>,
    /// What the token allows: register as the host, or reach it as a client.
    #[arg(long, env = "SHELLRELAY_ROLE", value_enum)]
    pub(super) role: Role,
    /// The host id. A client token may name several (repeat, or separate
    /// with commas) and patterns such as `lab-*`.
    #[arg(long, env = "SHELLRELAY_HOST", value_name = "ID", value_parser = host_pattern, value_delimiter = ',', required = true)]
    pub(super) host: Vec<String>,
    /// Who a client token is for (its `sub`, which the relay's logs,
    /// audit log and status name) [default: the host id for a token for one
    /// host, `client` for several].
    #[arg(long, env = "SHELLRELAY_SUBJECT", value_name = "NAME", value_parser = host_id)]
    subject: Option<String>,
    /// How long the token is valid.
    #[arg(long, env = "SHELLRELAY_TTL", default_value_t = HumanDuration(crate::ops::defaults::TOKEN_TTL), value_name = "DURATION")]
    pub(super) ttl: HumanDuration,
    /// The relay's audience.
    #[arg(long, env = "SHELLRELAY_AUDIENCE", default_value = crate::ops::defaults::AUDIENCE)]
    audience: String,
    /// Token id (`jti`), which a revocation file can name (default: random).
    #[arg(long, env = "SHELLRELAY_JTI", value_name = "ID", value_parser = host_id)]
    jti: Option<String>,
}

/// `shellrelay keygen`
#[derive(Debug, Args)]
pub struct KeygenOpt {
    /// Kind of key: a shared secret, or a key pair whose public half the
    /// relay verifies with.
    #[arg(long, env = "SHELLRELAY_KIND", value_enum, default_value = "ed25519")]
    kind: keys::KeyKind,
    /// File for the new secret or private key (mode 0600); a key pair's
    /// public key goes to the same path with `.pub` appended.
    #[arg(long, env = "SHELLRELAY_OUT", value_name = "PATH")]
    out: PathBuf,
}

/// Prints a signed token, or writes it to `--out`.
pub(super) fn run(opt: TokenOpt) -> anyhow::Result<()> {
    let (token, _) = opt.mint.mint()?;
    match &opt.out {
        Some(path) => private::write(path, format!("{token}\n").as_bytes(), Existing::Replace),
        None => {
            println!("{token}");
            Ok(())
        }
    }
}

impl MintOpt {
    /// The signed token and its claims.
    pub(super) fn mint(&self) -> anyhow::Result<(String, Claims)> {
        if self.ttl.0 < Duration::from_secs(1) {
            bail!("--ttl must be at least 1s (token times are whole seconds)");
        }
        let key = match (&self.signing_key, self.secret.load()?) {
            (Some(path), _) => keys::SigningKey::private_key_file(path)?,
            (None, Some(secret)) => keys::SigningKey::secret(&secret),
            (None, None) => bail!("pass --secret-file, --secret or --signing-key"),
        };
        let claims = token_claims(self)?;
        let token = token::mint_with(&key, self.kid.as_deref(), &claims)?;
        Ok((token, claims))
    }
}

/// Writes a new key.
pub(super) fn keygen(opt: KeygenOpt) -> anyhow::Result<()> {
    for path in keys::generate(opt.kind, &opt.out)? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// The claims `shellrelay token` signs.
fn token_claims(opt: &MintOpt) -> anyhow::Result<Claims> {
    let single = match opt.host.as_slice() {
        [one] if id::valid_host_id(one) => Some(one.as_str()),
        _ => None,
    };
    let mut claims = match (opt.role, single, &opt.subject) {
        (Role::Host, _, Some(_)) => {
            bail!("--subject (or SHELLRELAY_SUBJECT) is for client tokens: a host token's subject is its host id")
        }
        (Role::Host, None, None) => {
            bail!("a host token names exactly one host id, without '*' or '?'")
        }
        (_, Some(host), None) => Claims::new(opt.role, host, &opt.audience, opt.ttl.0),
        (Role::Client, _, subject) => {
            let subject = subject.as_deref().unwrap_or("client");
            let mut c = Claims::new(opt.role, subject, &opt.audience, opt.ttl.0);
            c.hosts = opt.host.clone();
            c
        }
    };
    claims.jti = Some(match &opt.jti {
        Some(jti) => jti.clone(),
        None => token::random_id(),
    });
    Ok(claims)
}
