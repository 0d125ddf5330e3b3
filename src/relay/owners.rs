//! The client tokens admitted lately, by the digest hosts know them by
//! (`owner`), with the host each reaches: when one is revoked or expires,
//! the host is told, and ends that token's sessions that wait for a
//! resume rather than wait out the window for one that cannot come. This
//! holds for a token revoked while its client has no connection at all
//! (its path broke): the relay looks each second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tracing::{debug, info};

use super::{State, LOG_TARGET};
use crate::access::revoke::Revocations;
use crate::ops::clock::unix_now;
use crate::ops::defaults::{HOST_SETUP_TIMEOUT, REVOCATION_POLL};
use crate::protocol::{write_frame, Frame, Resume};

/// Most client tokens watched at once; past it, those that expire soonest
/// go first (their hosts are not told).
pub(super) const MAX_OWNERS: usize = 16_384;

/// A client token admitted for one host.
struct Owner {
    jti: Option<String>,
    /// When it expires, Unix seconds.
    exp: u64,
}

/// The client tokens admitted lately: `(owner, host)` to the token.
#[derive(Default)]
pub(super) struct Owners(Mutex<HashMap<(String, String), Owner>>);

impl Owners {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Owner>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that a client token (`owner`, with `jti`, expiring at `exp`)
    /// was admitted for `host`.
    pub fn admitted(&self, owner: String, host: String, jti: Option<String>, exp: u64) {
        let mut owners = self.lock();
        if owners.len() >= MAX_OWNERS && !owners.contains_key(&(owner.clone(), host.clone())) {
            let soonest = (owners.iter())
                .min_by_key(|(_, o)| o.exp)
                .map(|(k, _)| k.clone());
            if let Some(soonest) = soonest {
                owners.remove(&soonest);
            }
        }
        owners.insert((owner, host), Owner { jti, exp });
    }

    /// Takes out the tokens that have expired by `now` or that `revoked`
    /// names: `(owner, host, why)` for each.
    fn ended(&self, now: u64, revoked: &Revocations) -> Vec<(String, String, String)> {
        let mut ended = Vec::new();
        self.lock().retain(|(owner, host), token| {
            let why = match revoked.check(token.jti.as_deref(), host) {
                Some(revoked) => format!("the client token was revoked ({revoked})"),
                None if token.exp <= now => "the client token has expired".to_owned(),
                None => return true,
            };
            ended.push((owner.clone(), host.clone(), why));
            false
        });
        ended
    }
}

/// Each [`REVOCATION_POLL`], tells the hosts of client tokens that were
/// revoked or have expired, until the relay shuts down.
pub(super) async fn watch(state: Arc<State>) {
    let mut tick = tokio::time::interval(REVOCATION_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let revoked = state.revoked.subscribe().borrow().clone();
        for (owner, host, why) in state.owners.ended(unix_now(), &revoked) {
            state.tasks.spawn(tell(state.clone(), owner, host, why));
        }
    }
}

/// How long the relay keeps trying to tell a host that a client token has
/// ended, while the host is not registered (reconnecting) or does not
/// take the word: its direct connections with that token, and sessions
/// waiting for it, end only once it is told.
const TELL_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// Tells host `host`, on a stream of its own, that the client token
/// `owner` has ended, and why; tried again each second for [`TELL_FOR`]
/// while the host is away or the word does not get through.
async fn tell(state: Arc<State>, owner: String, host: String, why: String) {
    let open = Frame::Open {
        session: 0,
        client: None,
        resume: Some(Resume::Ended { why: why.clone() }),
        owner: Some(owner),
        who: None,
        direct: None,
    };
    let deadline = tokio::time::Instant::now() + TELL_FOR;
    loop {
        if let Some(target) = state.hosts.get(&host) {
            let told = tokio::time::timeout(HOST_SETUP_TIMEOUT, async {
                let mut stream = target.conn.open().await.ok()?;
                write_frame(&mut stream.send, &open).await.ok()?;
                stream.send.finish().ok()?;
                // Until the host has read it (it ends its side), or the deadline.
                let _ = stream.send.stopped().await;
                Some(())
            })
            .await;
            if let Ok(Some(())) = told {
                info!(target: LOG_TARGET, host = %host, "told the host a client token has ended: {why}");
                return;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            debug!(target: LOG_TARGET, host = %host, "could not tell the host a client token has ended");
            return;
        }
        tokio::select! {
            _ = state.cancel.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_end_when_revoked_or_expired_and_only_once() {
        let owners = Owners::default();
        owners.admitted("a".into(), "lab1".into(), Some("alice".into()), 2_000);
        owners.admitted("b".into(), "lab1".into(), Some("bob".into()), 1_000);
        owners.admitted("c".into(), "lab2".into(), None, 2_000);
        let none = Revocations::parse("").unwrap();
        assert!(owners.ended(999, &none).is_empty());
        let ended = owners.ended(1_000, &none);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].0, "b");
        assert!(ended[0].2.contains("expired"), "{ended:?}");
        let revoked = Revocations::parse("jti alice\nhost lab2\n").unwrap();
        let mut ended = owners.ended(1_500, &revoked);
        ended.sort();
        let who: Vec<&str> = ended.iter().map(|(o, _, _)| o.as_str()).collect();
        assert_eq!(who, ["a", "c"]);
        assert!(ended.iter().all(|(_, _, why)| why.contains("revoked")));
        assert!(owners.ended(5_000, &revoked).is_empty(), "told once");
    }
}
