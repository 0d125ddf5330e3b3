//! Direct paths at the host agent. With `--direct auto`, the agent says
//! in its hello that it takes direct connections, with a certificate of
//! its own (made at start; the relay passes its pin to clients). When the
//! relay introduces a client (a [`Direct::Expect`] in a session's
//! `open`), the registration's endpoint lets the client's addresses in
//! for a few seconds and punches towards them; the client then connects
//! from the endpoint it reaches the relay with, presents the ticket once,
//! and opens its sessions on that connection as it would through the
//! relay. A direct connection lives until its client's token expires, the
//! relay says the token has ended, or either side closes it.
//!
//! Bounds: at most [`MAX_TICKETS`] tickets wait at once (each a few
//! hundred bytes; the oldest goes first), at most [`MAX_DIRECT_CONNS`]
//! direct connections ([`MAX_DIRECT_CONNS_PER_CLIENT`] of one client
//! token), each with at most [`MAX_DIRECT_SESSIONS`] sessions and
//! [`DIRECT_CONN_WINDOWS`] stream windows of unread data in all: with the
//! default 512 KiB window, 128 MiB for all of them, 16 MiB for one token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tracing::{debug, warn};

use crate::net::tls::{pin::Pin, self_signed, Identity};
use crate::net::transport::dial::RelayLink;
use crate::net::transport::direct::{DirectListener, DirectMode, INTRODUCED_FOR};
use crate::net::transport::{Conn, Stream, TransportOptions};
use crate::ops::clock::unix_now;
use crate::ops::defaults::OPEN_TIMEOUT;
use crate::ops::metrics::HostMetrics;
use crate::ops::tasks::Tasks;
use crate::protocol::direct::{candidates, is_ticket};
use crate::protocol::{read_frame, write_frame, Direct, Frame, Reason, Refusal, Role, Who};

/// Most tickets waiting to be presented at once.
pub const MAX_TICKETS: usize = 256;

/// Most direct connections at once; a client past it stays on the relay.
pub const MAX_DIRECT_CONNS: usize = 32;

/// Most direct connections of one client token at once (a forwarder
/// keeps one; each `connect` keeps its own).
pub const MAX_DIRECT_CONNS_PER_CLIENT: usize = 4;

/// Most sessions on one direct connection at once.
pub const MAX_DIRECT_SESSIONS: u32 = 64;

/// Stream windows of data a direct connection's client may have sent and
/// the host not yet passed on, over all its sessions: a client whose
/// sessions stall holds up its own others, nobody else's.
pub const DIRECT_CONN_WINDOWS: u64 = 8;

/// Direct connections being set up at once (handshake and ticket),
/// before any is admitted: more attempts are dropped unanswered.
pub const MAX_PENDING_DIRECT: usize = 16;

/// Most client tokens the host remembers the relay said had ended, for
/// [`ENDED_FOR`] each: their tickets are refused.
const MAX_ENDED: usize = 1024;

/// How long a client token the relay said had ended is refused a direct
/// connection, whatever ticket it shows: longer than any ticket lives.
const ENDED_FOR: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Streams a direct connection may open beyond its session limit, so that
/// sessions over it get a refusal rather than wait for credit.
const REFUSAL_STREAMS: u32 = 16;

/// Session ids on direct connections start here, above any a relay gives
/// out in years, so that logs never show one id for two sessions.
const DIRECT_SESSION_IDS: u64 = 1 << 40;

/// What the relay said of a client it introduced.
struct Ticket {
    /// The client's token (a digest), which its resumes must match.
    owner: Option<String>,
    who: Option<Who>,
    /// Where it may connect from.
    addrs: Vec<SocketAddr>,
    /// When its token expires (Unix seconds).
    expires_at: u64,
    given: Instant,
    /// Set once presented: its punches stop.
    used: Arc<AtomicBool>,
}

/// A client admitted on a direct connection.
pub(super) struct Admitted {
    pub owner: Option<String>,
    pub who: Option<Who>,
    pub client: SocketAddr,
    paths: Arc<DirectPaths>,
}

impl Admitted {
    /// The id of a new session on this connection.
    pub fn next_session(&self) -> u64 {
        self.paths.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The agent's direct paths: its certificate, the tickets the relays gave
/// it, and its direct connections.
pub(super) struct DirectPaths {
    identity: Identity,
    /// The pin of `identity`'s key, which the relay passes to clients.
    pub pin: String,
    options: TransportOptions,
    tickets: Mutex<HashMap<String, Ticket>>,
    conns: Mutex<Vec<(Option<String>, Conn)>>,
    next_id: AtomicU64,
    pub(super) tasks: Tasks,
    /// Bytes direct connections that have closed carried.
    carried: AtomicU64,
    metrics: Arc<HostMetrics>,
    /// Client tokens the relay said had ended, until when.
    ended: Mutex<HashMap<String, Instant>>,
    /// Places for direct connections being set up.
    pending: Arc<tokio::sync::Semaphore>,
    /// New sessions per client token on direct connections.
    pub(super) rates: crate::ops::limits::Rates<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DirectPaths {
    /// The agent's direct paths, unless `config` turns them off.
    pub fn unless_off(
        config: &super::HostConfig,
        tasks: Tasks,
        metrics: Arc<HostMetrics>,
    ) -> anyhow::Result<Option<Arc<DirectPaths>>> {
        if config.direct == DirectMode::Off {
            return Ok(None);
        }
        let transport = (config.relays.first()).map(|relay| relay.transport);
        let paths = DirectPaths::new(transport.unwrap_or_default(), tasks, metrics)?;
        Ok(Some(Arc::new(paths)))
    }

    /// Direct paths with a new certificate.
    pub fn new(
        options: TransportOptions,
        tasks: Tasks,
        metrics: Arc<HostMetrics>,
    ) -> anyhow::Result<DirectPaths> {
        let identity = self_signed(&["shellrelay-host".to_owned()])?;
        let leaf = identity
            .chain
            .first()
            .ok_or_else(|| anyhow::anyhow!("no certificate"))?;
        let pin = Pin::of(leaf)?.to_string();
        Ok(DirectPaths {
            identity,
            pin,
            options,
            tickets: Mutex::default(),
            conns: Mutex::default(),
            next_id: AtomicU64::new(DIRECT_SESSION_IDS),
            tasks,
            carried: AtomicU64::new(0),
            metrics,
            ended: Mutex::default(),
            pending: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_DIRECT)),
            rates: Default::default(),
        })
    }

    /// Starts taking direct connections on `link`'s endpoint, if it is
    /// over QUIC.
    pub fn listen(&self, link: &RelayLink) -> Option<Arc<DirectListener>> {
        match link.direct_listener(self.identity.clone(), self.options)? {
            Ok(listener) => Some(Arc::new(listener)),
            Err(err) => {
                warn!("direct connections are off on this relay's link: {err:#}");
                None
            }
        }
    }

    /// Takes the relay's introduction of a client (`expect`, from an
    /// `open` whose `owner` and `who` name the client) and punches from
    /// `listener` towards it.
    pub fn expect(
        &self,
        listener: &DirectListener,
        expect: Direct,
        owner: Option<String>,
        who: Option<Who>,
    ) {
        let Direct::Expect {
            ticket,
            addrs,
            expires_at,
        } = expect
        else {
            return;
        };
        let addrs = candidates(&addrs);
        if !is_ticket(&ticket) || addrs.is_empty() || expires_at <= unix_now() {
            debug!("an introduction that cannot be used: left alone");
            return;
        }
        let used = Arc::new(AtomicBool::new(false));
        {
            let mut tickets = lock(&self.tickets);
            let before = tickets.len();
            tickets.retain(|_, t| t.given.elapsed() < INTRODUCED_FOR);
            if tickets.len() >= MAX_TICKETS {
                let oldest = (tickets.iter().min_by_key(|(_, t)| t.given)).map(|(k, _)| k.clone());
                oldest.map(|k| tickets.remove(&k));
            }
            for _ in tickets.len()..before {
                self.metrics.introduced("not_presented", None);
            }
            let ticket_of = Ticket {
                owner,
                who,
                addrs: addrs.clone(),
                expires_at,
                given: Instant::now(),
                used: used.clone(),
            };
            tickets.insert(ticket, ticket_of);
        }
        debug!(?addrs, "introduced to a client; punching towards it");
        let punches = listener.introduce(&addrs, move || used.load(Ordering::Relaxed));
        self.tasks.spawn(punches);
    }

    /// A place for a direct connection to be set up in, if there is one.
    pub fn pending(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.pending.clone().try_acquire_owned().ok()
    }

    /// Takes `ticket` presented from `from`, once, if the relay gave it
    /// lately for that address and has not said its token ended since.
    fn take(&self, ticket: &str, from: SocketAddr) -> Option<Ticket> {
        let mut tickets = lock(&self.tickets);
        let fresh = |t: &Ticket| t.given.elapsed() < INTRODUCED_FOR;
        let known = tickets.get(ticket)?;
        if !fresh(known) || !known.addrs.iter().any(|a| a.ip() == from.ip()) {
            return None;
        }
        if let Some(owner) = &known.owner {
            let ended = lock(&self.ended);
            if ended
                .get(owner)
                .is_some_and(|until| *until > Instant::now())
            {
                return None;
            }
        }
        let taken = tickets.remove(ticket)?;
        taken.used.store(true, Ordering::Relaxed);
        self.metrics
            .introduced("direct", Some(taken.given.elapsed()));
        Some(taken)
    }

    /// Direct connections open now.
    pub fn connections(&self) -> usize {
        let conns = lock(&self.conns);
        conns
            .iter()
            .filter(|(_, c)| c.close_reason().is_none())
            .count()
    }

    /// Bytes sent and received on direct connections so far.
    pub fn bytes(&self) -> u64 {
        let conns = lock(&self.conns);
        let live: u64 = (conns.iter())
            .map(|(_, c)| {
                let (tx, rx) = c.traffic();
                tx + rx
            })
            .sum();
        self.carried.load(Ordering::Relaxed) + live
    }

    /// Closes the direct connections of the client token `owner` (its
    /// token revoked or expired, as the relay said: `why`).
    pub fn end_owner(&self, owner: &str, why: &str) {
        {
            let mut ended = lock(&self.ended);
            let now = Instant::now();
            ended.retain(|_, until| *until > now);
            if ended.len() >= MAX_ENDED {
                let first = (ended.iter().min_by_key(|(_, u)| **u)).map(|(k, _)| k.clone());
                first.map(|k| ended.remove(&k));
            }
            ended.insert(owner.to_owned(), now + ENDED_FOR);
        }
        lock(&self.tickets).retain(|_, t| t.owner.as_deref() != Some(owner));
        let mut conns = lock(&self.conns);
        conns.retain(|(of, conn)| {
            let ended = of.as_deref() == Some(owner);
            if ended {
                conn.close(Reason::Revoked, why);
            }
            !ended && conn.close_reason().is_none()
        });
    }

    /// Reads the ticket on `conn`'s control stream and answers it; the
    /// client admitted, when its token expires, and its control stream.
    pub(super) async fn admit(
        self: &Arc<Self>,
        conn: &Conn,
        from: SocketAddr,
    ) -> Option<(Admitted, u64, Stream, Listed)> {
        let first = async {
            let mut control = conn.accept().await.ok()?;
            let frame = read_frame(&mut control.recv).await.ok()?;
            Some((control, frame))
        };
        let (mut control, frame) = tokio::time::timeout(OPEN_TIMEOUT, first).await.ok()??;
        let ticket = match frame {
            Frame::Ticket { ticket } => self.take(&ticket, from),
            _ => None,
        };
        let Some(ticket) = ticket else {
            let message = "no such introduction: ask the relay for another";
            return refuse(&mut control, conn, Refusal::new(Reason::BadToken, message)).await;
        };
        // Its place first: a client told welcome must be able to stay.
        let Some(listed) = Listed::new(self.clone(), ticket.owner.clone(), conn) else {
            let message = "the host has too many direct connections; through the relay";
            return refuse(&mut control, conn, Refusal::new(Reason::Limit, message)).await;
        };
        // Past the session limit, a stream is refused (and its session
        // goes through the relay), not kept waiting for credit.
        conn.admit(MAX_DIRECT_SESSIONS + 1 + REFUSAL_STREAMS);
        let window = u64::from(self.options.window());
        conn.set_receive_window(window * DIRECT_CONN_WINDOWS);
        let welcome = Frame::Welcome {
            host: String::new(),
            role: Role::Client,
            expires_at: ticket.expires_at,
            relay: None,
        };
        let welcomed = tokio::time::timeout(OPEN_TIMEOUT, write_frame(&mut control.send, &welcome));
        welcomed.await.ok()?.ok()?;
        let admitted = Admitted {
            owner: ticket.owner,
            who: ticket.who,
            client: from,
            paths: self.clone(),
        };
        Some((admitted, ticket.expires_at, control, listed))
    }
}

/// Says `refusal` on a direct connection's control stream and closes the
/// connection with it; a client that grants no credit for the words is
/// not waited for beyond [`REFUSAL_WAIT`]. Always `None`: nobody admitted.
async fn refuse<T>(control: &mut Stream, conn: &Conn, refusal: Refusal) -> Option<T> {
    let frame = refusal.frame();
    let _ = tokio::time::timeout(REFUSAL_WAIT, write_frame(&mut control.send, &frame)).await;
    conn.close(refusal.reason, &refusal.message);
    None
}

/// How long a refusal's words may wait for the client's credit.
const REFUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A direct connection's place in the list that [`DirectPaths::end_owner`]
/// closes from; given up when dropped.
pub(super) struct Listed {
    paths: Arc<DirectPaths>,
    conn: Conn,
}

impl Listed {
    fn new(paths: Arc<DirectPaths>, owner: Option<String>, conn: &Conn) -> Option<Listed> {
        {
            let mut conns = lock(&paths.conns);
            conns.retain(|(_, c)| c.close_reason().is_none());
            let of_client = conns.iter().filter(|(o, _)| *o == owner).count();
            if conns.len() >= MAX_DIRECT_CONNS || of_client >= MAX_DIRECT_CONNS_PER_CLIENT {
                return None;
            }
            conns.push((owner, conn.clone()));
        }
        Some(Listed {
            paths,
            conn: conn.clone(),
        })
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let (tx, rx) = self.conn.traffic();
        self.paths.carried.fetch_add(tx + rx, Ordering::Relaxed);
        let mut conns = lock(&self.paths.conns);
        conns.retain(|(_, c)| !c.same(&self.conn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(owner: &str, from: &str) -> Ticket {
        Ticket {
            owner: Some(owner.to_owned()),
            who: None,
            addrs: vec![from.parse().unwrap()],
            expires_at: u64::MAX,
            given: Instant::now(),
            used: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_ticket_works_once_from_its_address_and_never_for_an_ended_token() {
        let paths =
            DirectPaths::new(TransportOptions::default(), Tasks::new(), Arc::default()).unwrap();
        let from: SocketAddr = "192.0.2.1:4000".parse().unwrap();
        let elsewhere: SocketAddr = "192.0.2.2:4000".parse().unwrap();
        let put = |name: &str, t: Ticket| lock(&paths.tickets).insert(name.to_owned(), t);
        put("a", ticket("alice", "192.0.2.1:1"));
        assert!(paths.take("a", elsewhere).is_none(), "from another address");
        assert!(paths.take("a", from).is_some(), "the port may differ");
        assert!(paths.take("a", from).is_none(), "once");

        // The relay says alice's token ended: her unused tickets go, and
        // any the relay gave before it said so are refused too.
        put("b", ticket("alice", "192.0.2.1:1"));
        paths.end_owner("alice", "revoked");
        assert!(paths.take("b", from).is_none());
        put("c", ticket("alice", "192.0.2.1:1"));
        assert!(paths.take("c", from).is_none());
        put("d", ticket("bob", "192.0.2.1:1"));
        assert!(paths.take("d", from).is_some(), "bob's is his own");
    }
}
