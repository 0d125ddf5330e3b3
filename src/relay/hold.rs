//! How long an admitted connection stays: until it closes, its token
//! expires or is revoked, or the relay shuts down.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::Connection;

use super::State;
use crate::clock::fmt_unix;
use crate::protocol::{Reason, Refusal};
use crate::token::Claims;

/// Resolves when a token with expiry `exp` (Unix seconds) runs out.
async fn expiry(exp: u64) {
    // The verifier refuses an `exp` past MAX_EXP, so this cannot overflow;
    // should it, the connection simply never expires by timer.
    let Some(at) = UNIX_EPOCH.checked_add(Duration::from_secs(exp)) else {
        return std::future::pending().await;
    };
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::sleep(left).await;
}

/// Why a live connection ended, for the log.
pub(super) enum Ended {
    Shutdown,
    Expired(u64),
    Revoked(String),
    Closed(quinn::ConnectionError),
}

/// Waits until the connection closes, its token expires or is revoked, or
/// the relay shuts down, closing it with the matching reason in all but the
/// first case. `host` is the host the connection is bound to.
pub(super) async fn hold(state: &State, conn: &Connection, claims: &Claims, host: &str) -> Ended {
    let mut revoked = state.revoked.subscribe();
    let jti = claims.jti.as_deref();
    // A list that came in after the peer was admitted, and before this
    // subscription, applies now.
    let why = revoked.borrow_and_update().check(jti, host);
    if let Some(msg) = why {
        conn.close(Reason::Revoked.varint(), msg.as_bytes());
        return Ended::Revoked(msg);
    }
    loop {
        tokio::select! {
            biased;
            _ = state.cancel.cancelled() => {
                conn.close(Reason::ShuttingDown.varint(), b"relay shutting down");
                return Ended::Shutdown;
            }
            _ = expiry(claims.exp) => {
                let msg = format!("token expired at {}", fmt_unix(claims.exp));
                conn.close(Reason::TokenExpired.varint(), msg.as_bytes());
                return Ended::Expired(claims.exp);
            }
            changed = revoked.changed() => {
                if changed.is_err() {
                    // The list outlives every connection; should it not,
                    // nothing more can be revoked.
                    return Ended::Closed(conn.closed().await);
                }
                let why = revoked.borrow_and_update().check(jti, host);
                if let Some(msg) = why {
                    conn.close(Reason::Revoked.varint(), msg.as_bytes());
                    return Ended::Revoked(msg);
                }
            }
            err = conn.closed() => return Ended::Closed(err),
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Shutdown => f.write_str("relay shutting down"),
            Ended::Expired(exp) => write!(f, "token expired at {}", fmt_unix(*exp)),
            Ended::Revoked(msg) => f.write_str(msg),
            Ended::Closed(err) => match Refusal::from_connection_error(err) {
                Some(r) => write!(f, "{}", r.message),
                None => write!(f, "{err}"),
            },
        }
    }
}
