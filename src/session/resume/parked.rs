//! The host agent's resumable sessions by id, for a resume (through
//! whichever relay) to find its session. Each entry lives as long as its
//! session, at most the resume window past its last stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::engine::{Position, Resumable};
use crate::net::transport::Stream;
use crate::protocol::{Reason, Refusal};

/// A new stream for a session, from a resume its session has taken.
pub struct Takeover {
    /// The stream, `ready` not yet sent.
    pub stream: Stream,
    /// The client's attempt.
    pub attempt: u64,
    /// Where the client is.
    pub peer_at: Position,
    /// The path the stream came by, for log lines: `relay` or `direct`.
    pub path: &'static str,
}

/// A resume not taken: why (for the client, and as a metric label), and
/// the stream it came on.
pub struct NotTaken {
    /// What the client is told.
    pub refusal: Refusal,
    /// Why, as a metric label: `ended`, `other_token` or `bad_proof`.
    pub kind: &'static str,
    /// The resume's stream, to refuse it on.
    pub takeover: Takeover,
}

/// Where a session finds the stream a resume brought.
#[derive(Default)]
pub struct Handoff {
    slot: Mutex<Option<Takeover>>,
    arrived: Notify,
}

impl Handoff {
    /// The next stream a resume brings (the newest, if several came).
    pub async fn next(&self) -> Takeover {
        loop {
            let notified = self.arrived.notified();
            if let Some(takeover) = self.lock().take() {
                return takeover;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Takeover>> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Entry {
    session: Arc<Resumable>,
    owner: Option<String>,
    handoff: Arc<Handoff>,
    /// The session ended well; it is kept a little longer only to tell a
    /// late resume so ([`Registered::finished`]).
    finished: bool,
}

/// Most client tokens remembered as ended at once; past it, those kept
/// the shortest go first.
pub const MAX_ENDED_TOKENS: usize = 4096;

/// Most sessions that wait for a resume at once by default, over all
/// client tokens (`host --max-waiting`).
pub const MAX_WAITING: usize = 1024;

/// Most sessions of one client token that wait for a resume at once by
/// default (`host --max-waiting-per-client`). A waiting session holds its
/// connection to sshd, and one whose ssh never logged in counts against
/// sshd's `MaxStartups` (10:30:100 by default: once 10 connections have
/// not logged in, sshd drops new ones at random) until sshd's
/// `LoginGraceTime` (120 s) closes it; at 8, one token that leaves its
/// sessions waiting cannot make sshd refuse other users' logins on its own.
pub const MAX_WAITING_PER_CLIENT: usize = 8;

/// Most sessions that may wait for a resume at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingLimits {
    /// Over all client tokens; default [`MAX_WAITING`].
    pub all: usize,
    /// Of one client token; default [`MAX_WAITING_PER_CLIENT`].
    pub per_client: usize,
}

impl Default for WaitingLimits {
    fn default() -> WaitingLimits {
        WaitingLimits {
            all: MAX_WAITING,
            per_client: MAX_WAITING_PER_CLIENT,
        }
    }
}

/// The sessions that a resume may take up.
pub struct Parked {
    sessions: Mutex<HashMap<String, Entry>>,
    /// Client tokens the relay said have ended (revoked or expired), by
    /// digest: until when this is kept, and why. At most
    /// [`MAX_ENDED_TOKENS`].
    ended: Mutex<HashMap<String, (std::time::Instant, String)>>,
    /// Bumped whenever a client token ends.
    ended_changes: tokio::sync::watch::Sender<u64>,
    /// Sessions waiting for a resume, by client token, and in all.
    waiting: Mutex<Waiters>,
    /// Most sessions waiting at once.
    limits: WaitingLimits,
}

impl Default for Parked {
    fn default() -> Parked {
        Parked::new(WaitingLimits::default())
    }
}

/// Sessions waiting for a resume, by client token (none kept at zero), and
/// in all.
type Waiters = (HashMap<Option<String>, usize>, usize);

/// Takes a session out of [`Parked`] when dropped.
pub struct Registered {
    parked: Arc<Parked>,
    id: String,
    owner: Option<String>,
    /// Where the session's next stream comes.
    pub handoff: Arc<Handoff>,
}

impl Registered {
    /// Notes that the session ended well: it no longer counts as
    /// resumable, and is kept only to answer a late resume.
    pub fn finished(&self) {
        if let Some(entry) = self.parked.lock().get_mut(&self.id) {
            entry.finished = true;
        }
    }

    /// Why the session's client token has ended (revoked or expired), if
    /// the relay said it has: no resume can come.
    pub fn token_ended(&self) -> Option<String> {
        self.parked.token_ended(self.owner.as_deref()?)
    }

    /// Resolves once the relay says the session's client token has
    /// ended, with why.
    pub async fn until_token_ended(&self) -> String {
        let mut changes = self.parked.ended_changes.subscribe();
        loop {
            if let Some(why) = self.token_ended() {
                return why;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// A place among the sessions waiting for a resume, held until the
    /// guard goes; `None` when the session's client token, or the host,
    /// has as many waiting as [`Parked::limits`] allows.
    pub fn wait(&self) -> Option<Waiting<'_>> {
        let limits = self.parked.limits;
        let mut waiting = self.parked.waiters();
        let (by_owner, all) = &mut *waiting;
        let mine = by_owner.get(&self.owner).copied().unwrap_or(0);
        if mine >= limits.per_client || *all >= limits.all {
            return None;
        }
        by_owner.insert(self.owner.clone(), mine + 1);
        *all += 1;
        Some(Waiting(self))
    }
}

/// A session's place among those waiting for a resume.
pub struct Waiting<'a>(&'a Registered);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Registered { parked, owner, .. } = self.0;
        let mut waiting = parked.waiters();
        let (by_owner, all) = &mut *waiting;
        *all = all.saturating_sub(1);
        if let Some(mine) = by_owner.get_mut(owner) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                by_owner.remove(owner);
            }
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.parked.lock().remove(&self.id);
    }
}

impl Parked {
    /// No session yet; at most `limits` may wait for a resume at once.
    pub fn new(limits: WaitingLimits) -> Parked {
        Parked {
            sessions: Mutex::default(),
            ended: Mutex::default(),
            ended_changes: tokio::sync::watch::Sender::new(0),
            waiting: Mutex::default(),
            limits,
        }
    }

    /// Most sessions that may wait for a resume at once.
    pub fn limits(&self) -> WaitingLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that the client token `owner` has ended (the relay said so),
    /// for `keep_for` (the resume window): its sessions that wait for a
    /// resume end now, and those whose path breaks later end at once.
    pub fn end_token(&self, owner: &str, why: String, keep_for: std::time::Duration) {
        let now = std::time::Instant::now();
        {
            let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
            ended.retain(|_, (until, _)| *until > now);
            if ended.len() >= MAX_ENDED_TOKENS {
                let soonest = (ended.iter())
                    .min_by_key(|(_, (until, _))| *until)
                    .map(|(k, _)| k.clone());
                if let Some(soonest) = soonest {
                    ended.remove(&soonest);
                }
            }
            ended.insert(owner.to_owned(), (now + keep_for, why));
        }
        self.ended_changes.send_modify(|n| *n += 1);
    }

    /// Why client token `owner` has ended, if the relay said so lately.
    pub fn token_ended(&self, owner: &str) -> Option<String> {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        let (until, why) = ended.get(owner)?;
        (*until > std::time::Instant::now()).then(|| why.clone())
    }

    /// Sessions that may be resumed now, carried or waiting (not those
    /// that ended well and only answer a late resume).
    pub fn len(&self) -> usize {
        self.lock().values().filter(|e| !e.finished).count()
    }

    /// Sessions whose path broke that wait for a resume now.
    pub fn waiting(&self) -> usize {
        self.waiters().1
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes all sessions keep for resumes.
    pub fn buffered(&self) -> usize {
        self.lock().values().map(|e| e.session.buffered()).sum()
    }

    /// Makes `session`, opened with the client token `owner`, one that
    /// resumes can find, until the returned guard goes.
    pub fn register(
        self: &Arc<Self>,
        session: Arc<Resumable>,
        owner: Option<String>,
    ) -> Result<Registered, Refusal> {
        let id = session.id.clone();
        let handoff = Arc::new(Handoff::default());
        let mut sessions = self.lock();
        if sessions.contains_key(&id) {
            return Err(Refusal::new(Reason::Protocol, "session id in use"));
        }
        let entry = Entry {
            session,
            owner: owner.clone(),
            handoff: handoff.clone(),
            finished: false,
        };
        sessions.insert(id.clone(), entry);
        Ok(Registered {
            parked: self.clone(),
            id,
            owner,
            handoff,
        })
    }

    /// Hands `stream` to session `id` if this resume may take it up: the
    /// same client token, a proof made with the session's key, an attempt
    /// newer than any taken. Otherwise the stream comes back with why not.
    pub fn take_up(
        &self,
        id: &str,
        owner: Option<&str>,
        takeover: Takeover,
        proof: &str,
    ) -> Result<(), Box<NotTaken>> {
        let refuse = |kind, why: &str, takeover| {
            let message = format!("cannot resume the session: {why}");
            Err(Box::new(NotTaken {
                refusal: Refusal::new(Reason::NotResumable, message),
                kind,
                takeover,
            }))
        };
        let sessions = self.lock();
        let Some(entry) = sessions.get(id) else {
            let why = "it has ended, or its resume window has passed";
            return refuse("ended", why, takeover);
        };
        if entry.owner.as_deref() != owner {
            let why = "it was opened with another client token";
            return refuse("other_token", why, takeover);
        }
        let (attempt, peer_at) = (takeover.attempt, takeover.peer_at);
        if !entry.session.take_again(attempt, peer_at, proof) {
            let why = "the request is not from its client, or is a replay";
            return refuse("bad_proof", why, takeover);
        }
        *entry.handoff.lock() = Some(takeover);
        entry.handoff.arrived.notify_one();
        Ok(())
    }
}
