//! Reaching one of several relays: the client side asks them in turn, a
//! little apart, as happy eyeballs does with addresses, and takes the first
//! that welcomes it. (A host agent registers with each; see `host`.)

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::{connect, ConnectError, RelayAddr, RelayLink};
use crate::access::token::TokenSource;
use crate::ops::defaults::RELAY_STAGGER;
use crate::protocol::{Reason, Role};

/// Connects to the first of `relays` that welcomes the hello. The first is
/// asked at once; each next one [`RELAY_STAGGER`] after the one before, or
/// at once when every attempt under way has failed. An error for which
/// `give_up` is true (a bad token, say) ends the search; otherwise, when
/// every relay has failed, the first refusal is returned (a relay that
/// answered says more than one that did not), else the first relay's
/// error. Returns the index of the relay that answered, and its link.
pub async fn connect_any(
    relays: &[RelayAddr],
    token: &TokenSource,
    role: Role,
    host: Option<&str>,
    give_up: &(dyn Fn(&ConnectError) -> bool + Sync),
) -> Result<(usize, RelayLink), ConnectError> {
    if relays.is_empty() {
        return Err(ConnectError::setup(anyhow::anyhow!(
            "no relay to connect to"
        )));
    }
    let mut pending = FuturesUnordered::new();
    let mut failed: Vec<(usize, ConnectError)> = Vec::new();
    let mut next = 0;
    let attempt = |i: usize| async move { (i, connect(&relays[i], token, role, host).await) };
    loop {
        if next < relays.len() && pending.is_empty() {
            pending.push(attempt(next));
            next += 1;
        }
        let stagger = tokio::time::sleep(RELAY_STAGGER);
        tokio::select! {
            Some((i, result)) = pending.next() => match result {
                Ok(link) => return Ok((i, link)),
                Err(err) if give_up(&err) => return Err(err),
                Err(err) => {
                    tracing::debug!(relay = %relays[i].addr, "{err}");
                    failed.push((i, err));
                }
            },
            () = stagger, if next < relays.len() => {
                pending.push(attempt(next));
                next += 1;
            }
        }
        if pending.is_empty() && next >= relays.len() {
            failed.sort_by_key(|(i, _)| *i);
            let refused = failed
                .iter()
                .position(|(_, e)| e.refusal().is_some_and(|r| r.reason != Reason::Replaced));
            let chosen = failed.into_iter().nth(refused.unwrap_or(0));
            return Err(chosen.map_or_else(
                || ConnectError::setup(anyhow::anyhow!("no relay answered")),
                |(_, err)| err,
            ));
        }
    }
}
