//! The host registry: which connection serves each host id. A host holds
//! its place through a [`Registration`] guard; a newer connection for the
//! same id takes the place over, and the older guard then gives up nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::budget::Shares;
use crate::net::transport::liveness::Prober;
use crate::net::transport::Conn;
use crate::ops::metrics::{ClientStatus, HostStats, HostStatus};

/// Host id → the connection that serves it.
pub(super) struct Registry {
    hosts: Mutex<HashMap<String, Entry>>,
    /// Most hosts at once.
    max: usize,
    /// Stream window of the relay's connections, bytes.
    window: u32,
    /// Bumped on every change, so waiters need not poll.
    changes: watch::Sender<u64>,
    /// Tells registrations of one host id apart.
    generations: AtomicU64,
}

struct Entry {
    generation: u64,
    host: Host,
}

/// A registered host as sessions see it.
#[derive(Clone)]
pub(super) struct Host {
    /// The host's connection.
    pub conn: Conn,
    /// Its sessions now, set up or running, each with its share of the
    /// connection's send buffer.
    pub sessions: Arc<Shares>,
    /// Its counters.
    pub stats: Arc<HostStats>,
    /// Asks the host whether it is still there.
    pub prober: Prober,
    /// What it offers for direct paths, if it takes them.
    pub direct: Option<Arc<super::introduce::Offered>>,
}

/// Why a host could not register.
#[derive(Debug)]
pub(super) enum Refused {
    /// The registry is at its limit of hosts.
    Full(usize),
    /// Another connection holds the id, and the newcomer asked to leave it.
    Taken,
}

/// A host's place in the registry, given up when dropped unless a newer
/// connection has taken it over.
pub(super) struct Registration {
    registry: Arc<Registry>,
    id: String,
    generation: u64,
}

impl Registry {
    /// An empty registry for at most `max` hosts, whose connections have
    /// stream windows of `window` bytes.
    pub fn new(max: usize, window: u32) -> Registry {
        Registry {
            hosts: Mutex::new(HashMap::new()),
            max,
            window,
            changes: watch::Sender::new(0),
            generations: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // Every update is a single insert or remove, so a panic while the
        // lock is held cannot leave the map half-updated.
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `conn` as host `id` since `since` (Unix seconds). Returns
    /// the guard and the host entry it replaced, if any; refuses a new id
    /// when the registry is full, and a taken id when `keep_other`.
    pub fn register(
        self: &Arc<Self>,
        id: &str,
        conn: Conn,
        (prober, direct): (Prober, Option<super::introduce::Offered>),
        since: u64,
        keep_other: bool,
    ) -> Result<(Registration, Option<Host>), Refused> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let replaced = {
            let mut hosts = self.lock();
            if keep_other && hosts.contains_key(id) {
                return Err(Refused::Taken);
            }
            if hosts.len() >= self.max && !hosts.contains_key(id) {
                return Err(Refused::Full(self.max));
            }
            let host = Host {
                sessions: Shares::new(conn.clone(), self.window),
                conn,
                stats: Arc::new(HostStats::new(since)),
                prober,
                direct: direct.map(Arc::new),
            };
            hosts.insert(id.to_owned(), Entry { generation, host })
        };
        self.changes.send_modify(|n| *n += 1);
        let registration = Registration {
            registry: self.clone(),
            id: id.to_owned(),
            generation,
        };
        Ok((registration, replaced.map(|e| e.host)))
    }

    /// Host `id`, if registered.
    pub fn get(&self, id: &str) -> Option<Host> {
        self.lock().get(id).map(|e| e.host.clone())
    }

    /// Hosts registered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Every host registered now with its counters, sorted by id.
    pub fn snapshot(&self) -> Vec<HostStatus> {
        let mut hosts: Vec<HostStatus> = self
            .lock()
            .iter()
            .map(|(id, e)| HostStatus {
                id: id.clone(),
                since: e.host.stats.since,
                remote: e.host.conn.remote(),
                transport: e.host.conn.transport().to_owned(),
                direct: e.host.direct.is_some(),
                sessions: e.host.sessions.get() as u64,
                bytes_to_host: e.host.stats.to_host(),
                bytes_to_client: e.host.stats.to_client(),
            })
            .collect();
        hosts.sort_by(|a, b| a.id.cmp(&b.id));
        hosts
    }

    /// Waits until host `id` is registered (`online`) or not (`!online`).
    pub async fn wait(&self, id: &str, online: bool) {
        let mut changes = self.changes.subscribe();
        loop {
            if self.lock().contains_key(id) == online {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Forgets every host, letting go of their connections.
    pub fn clear(&self) {
        self.lock().clear();
        self.changes.send_modify(|n| *n += 1);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        {
            let mut hosts = self.registry.lock();
            if hosts.get(&self.id).map(|e| e.generation) == Some(self.generation) {
                hosts.remove(&self.id);
            }
        }
        self.registry.changes.send_modify(|n| *n += 1);
    }
}
/// The client connections admitted now, for `/status`.
#[derive(Default)]
pub(super) struct Clients {
    open: Mutex<std::collections::BTreeMap<u64, ClientStatus>>,
    ids: AtomicU64,
}

/// A client's line in [`Clients`], removed when dropped.
pub(super) struct Listed {
    clients: Arc<Clients>,
    id: u64,
}

impl Clients {
    /// Lists a client connection until the returned guard is dropped.
    pub fn add(self: &Arc<Self>, host: &str, subject: &str, conn: &Conn, since: u64) -> Listed {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let line = ClientStatus {
            host: host.to_owned(),
            subject: subject.to_owned(),
            since,
            remote: conn.remote(),
            transport: conn.transport().to_owned(),
        };
        lock(&self.open).insert(id, line);
        Listed {
            clients: self.clone(),
            id,
        }
    }

    /// Every client connection now, sorted by host and address.
    pub fn snapshot(&self) -> Vec<ClientStatus> {
        let mut all: Vec<ClientStatus> = lock(&self.open).values().cloned().collect();
        all.sort_by(|a, b| (&a.host, a.remote).cmp(&(&b.host, b.remote)));
        all
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        lock(&self.clients.open).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding it; a poisoned one is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
