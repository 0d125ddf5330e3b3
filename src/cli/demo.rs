//! `shellrelay demo`: relay, host agent and client forwarder in one process
//! on loopback, with a throwaway secret and certificate.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::access::keys::Secret;
use crate::access::token::{self, Claims, TokenSource, Verifier};
use crate::client::{self, ClientConfig};
use crate::host::{self, HostConfig};
use crate::net::tls::{self, Trust};
use crate::net::transport::dial::RelayAddr;
use crate::net::transport::TransportOptions;
use crate::ops::defaults::DEMO_REGISTER_TIMEOUT;
use crate::protocol::Role;
use crate::relay::{Relay, RelayConfig};

/// Host id the demo registers.
pub const DEMO_HOST: &str = "demo";

/// The user name ssh will log in as: `$USER`, else `$LOGNAME`. `None`
/// leaves it to ssh, which takes the local user's name.
fn login_name() -> Option<String> {
    ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|name| !name.is_empty() && !name.contains(char::is_whitespace))
}

/// Runs the demo until `shutdown` is cancelled.
pub async fn run(
    target: &str,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let secret = Secret::generate();
    let identity = tls::self_signed(&["localhost".into(), "127.0.0.1".into()])?;
    let trust = Trust::Pinned(identity.chain.clone());
    let relay = Relay::bind(
        (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        identity,
        RelayConfig::new(Verifier::new(&secret, crate::ops::defaults::AUDIENCE)),
    )?;
    let relay_addr = relay.local_addr()?;
    let registry = relay.handle();
    let ttl = Duration::from_secs(24 * 3600);
    let mint = |role| {
        let mut claims = Claims::new(role, DEMO_HOST, crate::ops::defaults::AUDIENCE, ttl);
        claims.jti = Some(token::random_id());
        token::mint(&secret, &claims)
    };
    let relay_at = RelayAddr {
        addr: relay_addr.to_string(),
        at: None,
        trust,
        transport: TransportOptions::default(),
    };
    let host_config = HostConfig {
        relays: vec![relay_at.clone()],
        fleet: None,
        token: TokenSource::Literal(mint(Role::Host)?),
        target: target.to_owned(),
        max_backoff: crate::ops::defaults::MAX_BACKOFF,
        resume_window: crate::session::resume::RESUME_WINDOW,
        max_waiting: Default::default(),
        metrics: None,
        // Client and host share this machine: a direct path between them
        // would carry nothing the relay does not, and add a move.
        direct: crate::net::transport::direct::DirectMode::Off,
    };
    let client_config = ClientConfig {
        relays: vec![relay_at],
        fleet: None,
        token: TokenSource::Literal(mint(Role::Client)?),
        host: None,
        resume_window: crate::session::resume::RESUME_WINDOW,
        // Client and host share this machine: a direct path between them
        // would carry nothing the relay does not, and add a move.
        direct: crate::net::transport::direct::DirectMode::Off,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("could not listen on {listen}"))?;
    let local = listener.local_addr()?;

    // Dropped on an early return, which aborts the roles started so far.
    let mut roles = tokio::task::JoinSet::new();
    roles.spawn(relay.run(shutdown.child_token()));
    roles.spawn(host::run(host_config, shutdown.child_token()));
    tokio::time::timeout(DEMO_REGISTER_TIMEOUT, registry.wait_host(DEMO_HOST, true))
        .await
        .context("the demo host did not register with the demo relay")?;
    let target_down = match tokio::time::timeout(
        crate::ops::defaults::DIAL_TIMEOUT,
        tokio::net::TcpStream::connect(target),
    )
    .await
    {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(err.to_string()),
        Err(_) => Some(format!(
            "no answer within {:?}",
            crate::ops::defaults::DIAL_TIMEOUT
        )),
    };
    roles.spawn(client::run(client_config, listener, shutdown.child_token()));

    println!("shellrelay demo: relay on udp {relay_addr}, host \"{DEMO_HOST}\" -> {target}, client on tcp {local}");
    println!();
    if let Some(err) = &target_down {
        println!("Nothing accepts connections on {target} ({err}), so ssh would only see");
        println!(
            "its connection reset. Start sshd there (for example `sudo systemctl start ssh`),"
        );
        println!("or run the demo again with --target HOST:PORT naming your sshd. Then:");
        println!();
    }
    let user = login_name().map(|u| format!("{u}@")).unwrap_or_default();
    println!("    ssh -p {} {user}{}", local.port(), local.ip());
    println!();
    println!("Ctrl-C stops the demo.");

    let mut first_error = Ok(());
    while let Some(ended) = roles.join_next().await {
        let ended = ended.context("a demo role panicked").and_then(|r| r);
        if let (Err(err), Ok(())) = (ended, &first_error) {
            first_error = Err(err);
        }
    }
    first_error
}
