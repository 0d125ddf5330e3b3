//! Admission decisions: whether a hello's token is good, which host a
//! client may reach, and the typed refusal for everything else. Nothing
//! here touches a connection.

use std::net::IpAddr;
use std::time::Instant;

use tracing::{debug, warn};

use super::audit::Party;
use super::{State, LOG_TARGET};
use crate::access::token::{Claims, TokenError};
use crate::protocol::{Frame, FrameError, Reason, Refusal, Role, VERSION};

/// An admitted hello: the role, the token's claims, and for a client the
/// host it asked for.
pub(super) struct Hello {
    pub role: Role,
    pub claims: Claims,
    pub host: Option<String>,
    /// For a host: leave another registration of its id in place.
    pub keep_other: bool,
    /// For a host: it moves its registration here; the older connection
    /// drains its sessions before it closes.
    pub moving: bool,
    /// For a host: it takes direct connections ([`crate::protocol::Direct::Offer`]).
    pub direct: Option<crate::protocol::Direct>,
}

/// A refused hello: why, and whom its token names if it was well signed.
pub(super) struct Refused {
    pub refusal: Refusal,
    pub who: Party,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused {
            refusal,
            who: Party::default(),
        }
    }
}

/// The hello in `frame`, if its version and token are good, or why it is
/// refused. Refused tokens that could be guesses count against `ip`.
pub(super) fn check_hello(
    state: &State,
    ip: IpAddr,
    frame: Result<Frame, FrameError>,
) -> Result<Hello, Refused> {
    let (role, token, host, keep_other, moving, direct) = match frame {
        Ok(Frame::Hello {
            version: VERSION,
            role,
            token,
            host,
            keep_other,
            moving,
            direct,
        }) => (role, token, host, keep_other, moving, direct),
        Ok(Frame::Hello { version, .. }) => {
            let msg = format!(
                "protocol version {version} is not supported (this relay speaks {VERSION})"
            );
            return Err(Refusal::new(Reason::Protocol, msg).into());
        }
        Ok(_) => return Err(Refusal::new(Reason::Protocol, "expected a hello frame").into()),
        Err(err) => return Err(Refusal::new(Reason::Protocol, format!("bad hello: {err}")).into()),
    };
    match state
        .config
        .verifier
        .verify(&token.0, role, crate::ops::clock::unix_now())
    {
        // A good token is let in however many bad ones its address sent:
        // an office or a carrier-grade NAT puts many people behind one.
        Ok(claims) => Ok(Hello {
            role,
            claims,
            host,
            keep_other,
            moving,
            direct,
        }),
        Err(err) => {
            let now = Instant::now();
            let limit = state.config.limits.failures_per_addr;
            // Only tokens that could be guesses are penalised: a
            // well-signed token that expired is told so.
            let guess = matches!(err, TokenError::BadSignature | TokenError::Malformed);
            let blocked = guess
                .then(|| state.failures.blocked(ip, limit, now))
                .flatten();
            if let Some(wait) = blocked {
                let msg = format!(
                    "too many refused tokens from {ip}; try again in {}s",
                    wait.as_secs() + 1
                );
                debug!(target: LOG_TARGET, %role, %err, "refused token from a penalised address");
                return Err(Refusal::new(Reason::Limit, msg).into());
            }
            // Only tokens that could be guesses count towards the limit: a
            // well-signed token that expired (an agent retrying with a stale
            // token) must not penalise everyone behind the same address.
            if guess {
                state.failures.record(ip, now);
            }
            let reason = match err {
                TokenError::Expired(_) => Reason::TokenExpired,
                _ => Reason::BadToken,
            };
            if let Some(n) = state.bad_tokens.allow(now) {
                warn!(target: LOG_TARGET, %role, %err, "refused token{}", super::throttle::left_out(n));
            }
            let who = match err.well_signed() {
                true => crate::access::token::peek_claims(&token.0).map(|c| Party::of(&c)),
                false => Ok(Party::default()),
            };
            Err(Refused {
                refusal: Refusal::new(reason, err.to_string()),
                who: who.unwrap_or_default(),
            })
        }
    }
}

/// The host a client asks for (or its token's only host), if it is a valid
/// host id that the client's token covers.
pub(super) fn client_host(claims: &Claims, requested: Option<String>) -> Result<String, Refusal> {
    let Some(host) = requested.or_else(|| claims.only_host().map(str::to_owned)) else {
        let msg = format!(
            "client token covers several hosts ({}); name one with --host",
            covered(claims)
        );
        return Err(Refusal::new(Reason::Protocol, msg));
    };
    if !crate::protocol::id::valid_host_id(&host) {
        return Err(Refusal::new(
            Reason::Protocol,
            "the host asked for is not a valid host id",
        ));
    }
    // Before the registry is consulted: a token learns nothing about hosts
    // it does not cover, not even whether they are online.
    if !claims.covers(&host) {
        let msg = format!(
            "client token for host {} cannot reach host {host}",
            covered(claims)
        );
        warn!(target: LOG_TARGET, %msg, "refused client");
        return Err(Refusal::new(Reason::BadToken, msg));
    }
    Ok(host)
}

/// The hosts a client token covers, for a refusal. The list is the peer's:
/// a few are named, so that the refusal always fits in a frame.
fn covered(claims: &Claims) -> String {
    const NAMED: usize = 8;
    match claims.hosts.as_slice() {
        [] => claims.sub.clone(),
        many if many.len() > NAMED => format!("{}, …", many[..NAMED].join(", ")),
        many => many.join(", "),
    }
}

/// Why a connection with `claims`, bound to `host`, is revoked, if it is.
pub(super) fn revoked(state: &State, claims: &Claims, host: &str) -> Option<Refusal> {
    let why = state.revoked.current().check(claims.jti.as_deref(), host)?;
    warn!(target: LOG_TARGET, host = %host, role = %claims.role, "refused: {why}");
    Some(Refusal::new(Reason::Revoked, why.to_string()))
}

/// What a client token's session limit is counted by: its id (`jti`), or
/// its subject when it has none.
/// The client token as the host learns it, to bind resumes to: a digest
/// of all its claims, which differ between any two tokens (two tokens with
/// the same claims are the same token).
pub(super) fn owner(claims: &Claims) -> String {
    use sha2::Digest;
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&claims)[..16])
}

pub(super) fn token_key(claims: &Claims) -> String {
    // With the subject too, so that two issuers' token ids cannot collide
    // unless their subjects do.
    match &claims.jti {
        Some(jti) => format!("jti {jti} sub {}", claims.sub),
        None => format!("sub {}", claims.sub),
    }
}
