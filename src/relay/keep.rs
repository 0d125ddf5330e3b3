//! How long an admitted connection stays: until it closes, its token
//! expires or is revoked, or the relay shuts down.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::State;
use crate::access::revoke::Revoked;
use crate::access::token::Claims;
use crate::net::transport::{Closed, Conn};
use crate::ops::clock::fmt_unix;
use crate::protocol::Reason;

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
    Revoked(Revoked),
    Closed(Closed),
}

/// Waits until the connection closes, its token expires or is revoked, or
/// the relay shuts down, closing it with the matching reason in all but the
/// first case. `host` is the host the connection is bound to.
pub(super) async fn keep_until_ended(
    state: &State,
    conn: &Conn,
    claims: &Claims,
    host: &str,
) -> Ended {
    let ended = wait(state, conn, claims, host).await;
    if !matches!(ended, Ended::Closed(_)) {
        conn.closing().await;
    }
    ended
}

async fn wait(state: &State, conn: &Conn, claims: &Claims, host: &str) -> Ended {
    let mut revoked = state.revoked.subscribe();
    let jti = claims.jti.as_deref();
    // A list that came in after the peer was admitted, and before this
    // subscription, applies now.
    let why = revoked.borrow_and_update().check(jti, host);
    if let Some(why) = why {
        conn.close(Reason::Revoked, &why.to_string());
        return Ended::Revoked(why);
    }
    loop {
        tokio::select! {
            biased;
            _ = state.cancel.cancelled() => {
                conn.close(Reason::ShuttingDown, "relay shutting down");
                return Ended::Shutdown;
            }
            _ = expiry(claims.exp) => {
                let msg = format!("token expired at {}", fmt_unix(claims.exp));
                conn.close(Reason::TokenExpired, &msg);
                return Ended::Expired(claims.exp);
            }
            changed = revoked.changed() => {
                if changed.is_err() {
                    // The list outlives every connection; should it not,
                    // nothing more can be revoked.
                    return Ended::Closed(conn.closed().await);
                }
                let why = revoked.borrow_and_update().check(jti, host);
                if let Some(why) = why {
                    conn.close(Reason::Revoked, &why.to_string());
                    return Ended::Revoked(why);
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
            Ended::Revoked(why) => write!(f, "{why}"),
            Ended::Closed(Closed::Peer(refusal)) => f.write_str(&refusal.message),
            Ended::Closed(closed) => write!(f, "{closed}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expiry_fires_when_the_token_runs_out_and_not_before() {
        let exp = crate::ops::clock::unix_now() + 3600;
        let started = tokio::time::Instant::now();
        expiry(exp).await;
        let waited = started.elapsed();
        assert!(
            waited > Duration::from_secs(3598) && waited <= Duration::from_secs(3600),
            "{waited:?}"
        );
        let started = tokio::time::Instant::now();
        expiry(crate::ops::clock::unix_now() - 5).await;
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a past expiry fires at once"
        );
        let century = Duration::from_secs(100 * 365 * 24 * 3600);
        let never = tokio::time::timeout(century, expiry(u64::MAX)).await;
        assert!(
            never.is_err(),
            "an expiry past the clock's range never fires"
        );
    }
}
