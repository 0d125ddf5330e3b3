//! The host agent: keeps one connection out to each of its relays (so the
//! host needs no open port) and, for each session stream a relay opens,
//! dials its one configured target (sshd) and carries the bytes. It never
//! dials a peer-chosen address.
//!
//! Each registration is made and kept on its own, with backoff, over QUIC
//! or over TLS and HTTP/2 on TCP where UDP is blocked (and back to QUIC,
//! between sessions, once it answers again); with a fleet, the relays are
//! the `k` that DNS and rendezvous hashing choose for this host. A
//! session whose client asked for it is resumable (`session`): when its
//! path breaks, it waits with its connection to sshd open for the client
//! to resume it through any relay, up to the resume window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::access::token::TokenSource;
use crate::net::fleet::Fleet;
use crate::net::transport::dial::{self, HostAsks, RelayAddr, RelayLink, Turn};
use crate::net::transport::direct::DirectMode;
use crate::net::transport::Closed;
use crate::ops::clock::fmt_unix;
use crate::ops::defaults::{DISPLACED_RETRY, SHUTDOWN_GRACE, STABLE_AFTER};
use crate::ops::memory::Trim;
use crate::ops::tasks::Tasks;
use crate::protocol::Reason;
use crate::protocol::Role;
use crate::session::backoff::Backoff;

/// How often a registration error that stays the same is said again.
const REPEAT_WARNING: Duration = Duration::from_secs(10 * 60);

mod direct;
mod direct_conns;
mod fleet_relays;
use fleet_relays::follow_fleet;
mod instances;
mod session;

use instances::{pages, Instances};

use direct::DirectPaths;
use session::{host_session, Origin, Sessions};

/// Settings of a host agent.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The relays to register with: one registration with each, all
    /// serving sessions. At least one. With `fleet`, the one name whose
    /// DNS records are the relays.
    pub relays: Vec<RelayAddr>,
    /// Register with `k` relays of a fleet named by DNS (see
    /// [`crate::net::fleet`]) rather than with each of `relays`.
    pub fleet: Option<Fleet>,
    /// The host token; a file is re-read on every reconnect.
    pub token: TokenSource,
    /// `HOST:PORT` dialled for every session (default [`crate::ops::defaults::TARGET`]).
    pub target: String,
    /// Cap on the reconnect delay (default [`crate::ops::defaults::MAX_BACKOFF`]).
    pub max_backoff: Duration,
    /// How long a session whose path broke waits to be resumed; zero:
    /// sessions are not resumable.
    pub resume_window: Duration,
    /// Most sessions that wait for a resume at once, in all and of one
    /// client token; default [`crate::session::resume::parked::WaitingLimits::default`].
    pub max_waiting: crate::session::resume::parked::WaitingLimits,
    /// Where to serve `/metrics` and `/status`, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Whether clients may connect directly where the NATs allow
    /// (default [`DirectMode::Auto`]).
    pub direct: DirectMode,
}

/// Runs the host agent until `shutdown` is cancelled: registered with
/// every relay at once, each registration on its own. A connection that
/// ends, for whatever reason (another connection with this host's token
/// taking its place included), is made again with backoff.
pub async fn run(config: HostConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(!config.relays.is_empty(), "no relay to register with");
    let tasks = Tasks::new();
    let trim = Trim::default();
    let metrics = Arc::new(crate::ops::metrics::HostMetrics::new());
    let sessions = Arc::new(Sessions {
        target: config.target.clone().into(),
        parked: Arc::new(crate::session::resume::parked::Parked::new(
            config.max_waiting,
        )),
        window: config.resume_window,
        replay_limit: crate::session::resume::replay_limit(
            (config.relays.first()).map_or(0, |relay| relay.transport.window()),
        ),
        metrics: metrics.clone(),
        direct: DirectPaths::unless_off(&config, tasks.clone(), metrics)?,
    });
    if let Some(addr) = config.metrics {
        let (listener, _) = crate::ops::status::bind(addr)?;
        let pages = pages(sessions.clone());
        tasks.spawn(crate::ops::status::serve(listener, pages, shutdown.clone()));
    }
    let shared = (Instances::default(), sessions);
    tasks.spawn(trim.clone().run(shutdown.clone()));
    let result = match (config.fleet, config.relays.as_slice()) {
        (Some(fleet), [name]) => {
            follow_fleet(name, fleet, &config, &tasks, &trim, &shared, &shutdown).await;
            Ok(())
        }
        (Some(_), _) => Err(anyhow::anyhow!("a fleet is named by one relay name")),
        (None, relays) => {
            let registrations = (relays.iter())
                .map(|relay| keep_registered(relay, &config, &tasks, &trim, &shared, &shutdown));
            futures_util::future::try_join_all(registrations)
                .await
                .map(drop)
        }
    };
    tasks.shutdown(SHUTDOWN_GRACE).await;
    result
}

/// Registers with `relay` and serves sessions, reconnecting with backoff,
/// until shutdown.
async fn keep_registered(
    relay: &RelayAddr,
    config: &HostConfig,
    tasks: &Tasks,
    trim: &Trim,
    (instances, sessions): &(Instances, Arc<Sessions>),
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let registration = Registration {
        relay,
        config,
        tasks,
        trim,
        instances,
        sessions,
        shutdown,
    };
    registration.keep().await;
    Ok(())
}

/// Says why a registration ended; true if another connection took this
/// host's place. That is not final: the other connection may hold a
/// stolen or leaked token, and may go away. The agent backs off and
/// registers again once it has, without resetting the backoff.
fn said_closed(relay: &RelayAddr, closed: Closed) -> bool {
    match closed {
        Closed::Peer(refusal) if refusal.reason == Reason::Replaced => {
            warn!(
                "{}; is another host agent running with this host id, or has its token leaked? Asking the relay again every {DISPLACED_RETRY:?} until it leaves or stops answering",
                refusal.message
            );
            true
        }
        Closed::Peer(refusal) => {
            warn!(relay = %relay.name(), reason = %refusal.message, "relay closed the connection");
            false
        }
        Closed::Lost(err) => {
            warn!(relay = %relay.name(), "lost the connection to the relay: {err}");
            false
        }
        Closed::Local => {
            warn!(relay = %relay.name(), "lost the connection to the relay");
            false
        }
    }
}

/// Says that registering failed, `why`: once while it stays the same (a
/// wrong pin, an expired token), and again every [`REPEAT_WARNING`]; each
/// retry in between says it in the debug log only. `failing` is what was
/// said last, and when.
fn say_failure(relay: &RelayAddr, failing: &mut Option<(String, Instant)>, why: String) {
    match failing {
        Some((said, at)) if *said == why && at.elapsed() < REPEAT_WARNING => {
            debug!(relay = %relay.name(), "could not register with relay, as before: {why}");
        }
        _ => {
            warn!(relay = %relay.name(), "could not register with relay: {why}");
            *failing = Some((why, Instant::now()));
        }
    }
}

/// How serving a registered connection ended.
enum Served {
    /// The agent is shutting down.
    Shutdown,
    /// QUIC works again: this registration over QUIC replaces the one
    /// over TCP.
    Moved(Box<RelayLink>),
    /// The connection closed, for this reason.
    Closed(Closed),
}

/// One registration of the agent's: the relay, and what serving it needs
/// from the agent.
struct Registration<'a> {
    relay: &'a RelayAddr,
    config: &'a HostConfig,
    tasks: &'a Tasks,
    trim: &'a Trim,
    /// The relay processes the agent is registered with.
    instances: &'a Instances,
    sessions: &'a Arc<Sessions>,
    shutdown: &'a CancellationToken,
}

impl Registration<'_> {
    /// Registers and serves sessions, reconnecting with backoff, until
    /// shutdown (or until the relay turns out to be one the agent is
    /// registered with under another name).
    async fn keep(&self) {
        let Registration {
            relay,
            config,
            instances,
            sessions,
            shutdown,
            ..
        } = *self;
        let mut backoff = Backoff::new(config.max_backoff);
        let mut displaced = false;
        // The last registration error and when it was said: said again only
        // when it changes, or every REPEAT_WARNING while it stays the same.
        let mut failing: Option<(String, Instant)> = None;
        loop {
            // Once another connection took this host's place, take it back only
            // when that one has left: two agents with one id do not evict each
            // other (and their sessions) in turns.
            let asks = HostAsks {
                keep_other: displaced,
                moving: false,
                direct: sessions.direct.as_ref().map(|paths| paths.pin.clone()),
            };
            let connect = dial::connect_with(relay, &config.token, Role::Host, None, &asks);
            let attempt = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                attempt = connect => attempt,
            };
            match attempt {
                Ok(link) => {
                    // One relay under two names (or addresses): its welcome
                    // names the same process. This registration took the
                    // other's place, which takes it back; this one goes.
                    if !instances.claim(link.instance.as_deref(), &relay.name()) {
                        warn!(
                            relay = %relay.name(),
                            "the same relay as another of this agent's relays (one relay under two names or addresses); keeping one registration with it"
                        );
                        link.close(Reason::Done, "registered with this relay already")
                            .await;
                        return;
                    }
                    failing = None;
                    let started = Instant::now();
                    info!(
                        host = %link.host,
                        relay = %relay.name(),
                        transport = link.conn.transport(),
                        target = %sessions.target,
                        expires = %fmt_unix(link.expires_at),
                        "registered with relay"
                    );
                    let Some(closed) = self.serve_moving(link).await else {
                        return;
                    };
                    displaced = said_closed(relay, closed);
                    if !displaced && started.elapsed() >= STABLE_AFTER {
                        backoff.reset();
                    }
                }
                // Said once, at warn, when the place was taken.
                Err(err)
                    if displaced && err.refusal().is_some_and(|r| r.reason == Reason::Replaced) =>
                {
                    debug!(relay = %relay.name(), "{err}")
                }
                Err(err) => say_failure(relay, &mut failing, err.to_string()),
            }
            // While another connection holds the id, ask again at a short,
            // steady interval: the relay hands the id over as soon as that
            // one has left, or stopped answering.
            let delay = match displaced {
                true => DISPLACED_RETRY,
                false => backoff.delay(),
            };
            match displaced {
                true => debug!(relay = %relay.name(), "asking again in {delay:.1?}"),
                false => info!(relay = %relay.name(), "reconnecting in {delay:.1?}"),
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Serves sessions on a registration, and on the one over QUIC that
    /// takes its place once QUIC answers again, until it closes (with why)
    /// or the agent shuts down (`None`).
    async fn serve_moving(&self, mut link: RelayLink) -> Option<Closed> {
        let relay = self.relay;
        loop {
            match self.serve(&mut link).await {
                Served::Moved(quic) => {
                    info!(
                        host = %quic.host,
                        relay = %relay.name(),
                        "QUIC answers again; registered over QUIC and leaving TCP"
                    );
                    self.drain(std::mem::replace(&mut link, *quic));
                }
                Served::Shutdown => return None,
                Served::Closed(closed) => return Some(closed),
            }
        }
    }

    /// Serves sessions on a registered connection until it closes or the agent
    /// shuts down.
    /// Lets a registration that another took the place of carry its
    /// sessions to their end: it takes the streams the relay opened on it
    /// before the move, and goes when the relay closes it (once its
    /// sessions have ended) or the agent shuts down.
    fn drain(&self, old: RelayLink) {
        let (sessions, tasks, trim) =
            (self.sessions.clone(), self.tasks.clone(), self.trim.clone());
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = shutdown.cancelled() => {
                        old.close(Reason::Done, "host agent shutting down").await;
                        return;
                    }
                    stream = old.conn.accept() => stream,
                };
                match stream {
                    Ok(stream) => {
                        let origin = Origin::Relay(None);
                        tasks.spawn(host_session(
                            sessions.clone(),
                            stream,
                            trim.session(),
                            origin,
                        ))
                    }
                    Err(_) => return,
                }
            }
        });
    }

    async fn serve(&self, link: &mut RelayLink) -> Served {
        let Registration {
            relay,
            config,
            sessions,
            tasks,
            trim,
            shutdown,
            ..
        } = *self;
        // While sessions are live, a relay that goes silent is left within
        // seconds: their clients resume them through another relay, and
        // this registration is made again.
        let silent = link.liveness().silent(|| trim.live() > 0);
        let mut silent = std::pin::pin!(silent);
        // While on TCP, QUIC is tried again from time to time, sessions or
        // not: the new registration takes this one's place at the relay,
        // and this one carries its sessions to their end
        // ([`Registration::drain`]).
        let turn = || async { Turn::Try };
        let pin = sessions.direct.as_ref().map(|paths| paths.pin.as_str());
        let back_to_quic = async {
            match relay.retries_quic(&link.conn) {
                true => dial::back_to_quic(relay, &config.token, Role::Host, None, pin, turn).await,
                false => std::future::pending().await,
            }
        };
        // Fused: polled again after it ended, it stays pending.
        let mut back_to_quic = std::pin::pin!(futures_util::FutureExt::fuse(back_to_quic));
        // Clients this relay introduces connect on its link's endpoint.
        let paths = sessions.direct.as_ref();
        let listener = paths.and_then(|paths| paths.listen(link));
        loop {
            // Made anew each turn: quinn keeps an attempt that came while
            // no accept was waiting.
            let direct = direct_conns::accept(listener.as_deref());
            let stream = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    link.close(Reason::Done, "host agent shutting down").await;
                    return Served::Shutdown;
                }
                stream = link.conn.accept() => stream,
                Some(quic) = &mut back_to_quic => return Served::Moved(Box::new(quic)),
                Some(incoming) = direct => {
                    // Only a listener (made from `paths`) brings one.
                    let Some(paths) = paths.cloned() else { continue };
                    let Some(pending) = paths.pending() else {
                        incoming.ignore();
                        continue;
                    };
                    let (ctx, on) = (sessions.clone(), (trim.clone(), shutdown.clone()));
                    tasks.spawn(direct_conns::serve(paths, ctx, (incoming, pending), on));
                    continue;
                }
                quiet = &mut silent => {
                    let why = format!("no answer from the relay for {quiet:.1?} with sessions live");
                    link.conn.close(Reason::Aborted, "the relay went silent");
                    return Served::Closed(Closed::Lost(std::sync::Arc::new(std::io::Error::other(why))));
                }
            };
            match stream {
                Ok(stream) => {
                    // The session id and the client's token's subject and jti
                    // arrive with `open`; host_session records them.
                    let _span = tracing::info_span!(
                        "session",
                        session = tracing::field::Empty,
                        host = %link.host,
                        subject = tracing::field::Empty,
                        jti = tracing::field::Empty
                    )
                    .entered();
                    // Counted from here, so that no QUIC move starts while a
                    // session is being set up.
                    let origin = Origin::Relay(listener.as_ref().map(Arc::downgrade));
                    tasks.spawn(host_session(
                        sessions.clone(),
                        stream,
                        trim.session(),
                        origin,
                    ));
                }
                Err(closed) => return Served::Closed(closed),
            }
        }
    }
}
