//! A UDP impairment proxy for tests: sits between QUIC peers and a QUIC
//! server on 127.0.0.1 and loses, duplicates, reorders and delays datagrams,
//! can black-hole the path, simulate NAT rebinding and follow a server that
//! moved. Needs no root and no `tc`.
//!
//! Every downstream peer address (a client's or host agent's UDP socket) is
//! one flow. Each flow has its own upstream socket bound to 127.0.0.1:0: the
//! proxy sends the peer's datagrams to upstream from it and sends whatever
//! arrives on it back to the peer from the proxy's listening socket.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

/// What the proxy does to datagrams in one direction. All probabilities 0.0..=1.0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Probability that a datagram is dropped.
    pub loss: f64,
    /// Probability that a datagram is sent twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back and sent right after the
    /// next datagram of the same flow and direction (or after
    /// [`REORDER_HOLD`] if none comes).
    pub reorder: f64,
    /// Each datagram copy is delayed by a uniformly random time in
    /// `[0, jitter]`.
    pub jitter: Duration,
}

impl Impairment {
    /// No impairment at all.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        jitter: Duration::ZERO,
    };

    /// Only loss, with probability `loss`.
    pub fn loss(loss: f64) -> Impairment {
        Impairment {
            loss,
            ..Impairment::NONE
        }
    }
}

/// A bottleneck link in one direction: datagrams leave at `rate` bits per
/// second through a drop-tail queue holding at most `queue` worth of
/// sending time, and arrive `delay` later. Applied after loss; while a
/// link is set, duplication, reordering and jitter are not applied in that
/// direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Bottleneck rate in bits per second; 0 for no rate limit.
    pub rate: u64,
    /// Longest a datagram may wait in the bottleneck's queue before it is
    /// dropped instead.
    pub queue: Duration,
}

impl Link {
    /// No link: datagrams are forwarded as they come.
    pub const NONE: Link = Link {
        delay: Duration::ZERO,
        rate: 0,
        queue: Duration::ZERO,
    };

    /// A path of `rate` bits/s and one-way `delay`, whose queue holds one
    /// bandwidth-delay product of the round trip (2 × `delay`).
    pub fn path(rate: u64, delay: Duration) -> Link {
        Link {
            delay,
            rate,
            queue: delay * 2,
        }
    }

    fn is_none(&self) -> bool {
        *self == Link::NONE
    }
}

/// A datagram on a link, with when it arrives.
type OnWire = (tokio::time::Instant, Arc<Flow>, Vec<u8>);

/// The sending side of one direction's link.
#[derive(Default)]
struct Shaper {
    /// When the bottleneck is free to send the next datagram.
    next_free: Option<Instant>,
    /// Datagrams on the wire, with when each arrives.
    wire: Option<tokio::sync::mpsc::UnboundedSender<OnWire>>,
}

/// Counters of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams the proxy read in this direction.
    pub received: u64,
    /// Datagram copies handed to the socket (duplicates count twice; a copy
    /// whose send failed is counted in `send_errors` instead).
    pub forwarded: u64,
    /// Datagrams dropped by `loss` or by the black hole.
    pub dropped: u64,
    /// Datagrams that were sent twice.
    pub duplicated: u64,
    /// Datagrams that were held back to be sent after a later one.
    pub reordered: u64,
    /// Sends that failed (e.g. ECONNREFUSED); ignored otherwise.
    pub send_errors: u64,
}

/// Snapshot of the proxy's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Peer → upstream.
    pub to_upstream: DirStats,
    /// Upstream → peer.
    pub from_upstream: DirStats,
    /// Datagrams dropped by a full link queue, both directions.
    pub queue_drops: u64,
    /// Number of completed [`Proxy::rebind`] calls.
    pub rebinds: u64,
    /// Flows currently known.
    pub flows: usize,
}

/// A held-back datagram is released after at most this long.
pub const REORDER_HOLD: Duration = Duration::from_millis(5);
/// A flow with no datagram either way for this long is removed.
pub const FLOW_IDLE: Duration = Duration::from_secs(60);
/// At most this many flows; the least recently active one is evicted.
pub const MAX_FLOWS: usize = 1024;

const MAX_DATAGRAM: usize = 65535;
const SOCKET_BUFFER: usize = 4 << 20;
const BASE_SEED: u64 = 0x6e65_7465_6d5f_7273; // "netem_rs"

static PROXY_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A UDP impairment proxy; stops all its tasks when dropped.
pub struct Proxy {
    inner: Arc<Inner>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream` (a UDP server address).
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let n = PROXY_COUNTER.fetch_add(1, Ordering::Relaxed);
        Proxy::start_seeded(upstream, BASE_SEED.wrapping_add(n)).await
    }

    /// Like [`Proxy::start`] with an explicit RNG seed.
    pub async fn start_seeded(upstream: SocketAddr, seed: u64) -> Proxy {
        let listen = bind_loopback().expect("netem: bind the proxy's listening socket");
        let addr = listen
            .local_addr()
            .expect("netem: local address of the listening socket");
        let inner = Arc::new(Inner {
            listen,
            addr,
            settings: Mutex::new(Settings {
                to_upstream: Impairment::NONE,
                from_upstream: Impairment::NONE,
                links: [Link::NONE; 2],
                upstream,
            }),
            blackhole: AtomicBool::new(false),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
            flows: Mutex::new(HashMap::new()),
            epoch: Instant::now(),
            token: CancellationToken::new(),
            to_upstream: Counters::default(),
            from_upstream: Counters::default(),
            rebinds: AtomicU64::new(0),
            shapers: [Mutex::default(), Mutex::default()],
            queue_drops: AtomicU64::new(0),
        });
        inner.spawn(Arc::clone(&inner).listen_loop());
        inner.spawn(Arc::clone(&inner).janitor());
        Proxy { inner }
    }

    /// The address peers should send to instead of `upstream`.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The address datagrams are currently forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        lock(&self.inner.settings).upstream
    }

    /// Impairment applied to datagrams going towards upstream / coming back from it.
    pub fn set_impairment(&self, to_upstream: Impairment, from_upstream: Impairment) {
        let mut settings = lock(&self.inner.settings);
        settings.to_upstream = to_upstream;
        settings.from_upstream = from_upstream;
    }

    /// Puts a bottleneck link into each direction ([`Link::NONE`] for none).
    pub fn set_link(&self, to_upstream: Link, from_upstream: Link) {
        lock(&self.inner.settings).links = [to_upstream, from_upstream];
    }

    /// Removes all impairment (black hole excluded).
    pub fn clear_impairment(&self) {
        self.set_impairment(Impairment::NONE, Impairment::NONE);
    }

    /// Drops every datagram both ways while true (a network that vanished).
    pub fn set_blackhole(&self, on: bool) {
        self.inner.blackhole.store(on, Ordering::Relaxed);
    }

    /// NAT rebinding: from now on, datagrams of every existing flow go to
    /// upstream from a NEW local socket (new source port); replies to the old
    /// socket are dropped. Returns when done.
    pub async fn rebind(&self) {
        let flows: Vec<Arc<Flow>> = lock(&self.inner.flows).values().cloned().collect();
        for flow in flows {
            let sock = match bind_loopback() {
                Ok(sock) => Arc::new(sock),
                // Out of sockets: keep the old one rather than break the flow.
                Err(_) => continue,
            };
            let old = std::mem::replace(&mut *lock(&flow.sock), Arc::clone(&sock));
            let reader = self
                .inner
                .spawn(Arc::clone(&self.inner).upstream_loop(Arc::clone(&flow), sock));
            if let Some(old_reader) = lock(&flow.reader).replace(reader) {
                old_reader.abort();
            }
            // The old socket closes once its aborted reader lets go of it.
            drop(old);
        }
        self.inner.rebinds.fetch_add(1, Ordering::Relaxed);
    }

    /// Points the proxy at a new upstream address (e.g. a restarted server).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        lock(&self.inner.settings).upstream = upstream;
    }

    /// How long no datagram has come either way, on any flow (since the
    /// proxy started, if none has yet).
    pub fn quiet_for(&self) -> Duration {
        let last = lock(&self.inner.flows)
            .values()
            .map(|flow| flow.last_seen.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        Duration::from_millis(self.inner.now_ms().saturating_sub(last))
    }

    /// Waits until no datagram has come either way for `quiet`, within
    /// [`WAIT`](super::WAIT): looks again each time it could first be so.
    pub async fn until_quiet(&self, quiet: Duration) {
        let what = format!("{quiet:?} without a datagram through the proxy");
        super::within(super::WAIT, &what, async {
            loop {
                let so_far = self.quiet_for();
                if so_far >= quiet {
                    return;
                }
                tokio::time::sleep(quiet - so_far).await;
            }
        })
        .await;
    }

    /// Counters: datagrams forwarded/dropped/duplicated/reordered each way,
    /// and number of rebinds.
    pub fn stats(&self) -> Stats {
        Stats {
            to_upstream: self.inner.to_upstream.snapshot(),
            from_upstream: self.inner.from_upstream.snapshot(),
            rebinds: self.inner.rebinds.load(Ordering::Relaxed),
            queue_drops: self.inner.queue_drops.load(Ordering::Relaxed),
            flows: lock(&self.inner.flows).len(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.token.cancel();
        for flow in lock(&self.inner.flows).drain().map(|(_, flow)| flow) {
            flow.stop();
        }
    }
}

struct Settings {
    to_upstream: Impairment,
    from_upstream: Impairment,
    /// Indexed by [`Dir::index`].
    links: [Link; 2],
    upstream: SocketAddr,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    forwarded: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    send_errors: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> DirStats {
        DirStats {
            received: self.received.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            duplicated: self.duplicated.load(Ordering::Relaxed),
            reordered: self.reordered.load(Ordering::Relaxed),
            send_errors: self.send_errors.load(Ordering::Relaxed),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToUpstream,
    FromUpstream,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::ToUpstream => 0,
            Dir::FromUpstream => 1,
        }
    }
}

/// A datagram held back for reordering.
struct Held {
    generation: u64,
    data: Vec<u8>,
    copies: u8,
    jitter: Duration,
}

#[derive(Default)]
struct HoldSlot {
    held: Option<Held>,
    generation: u64,
}

struct Flow {
    peer: SocketAddr,
    /// Current upstream socket (replaced by rebind).
    sock: Mutex<Arc<UdpSocket>>,
    /// Task reading replies from `sock`.
    reader: Mutex<Option<AbortHandle>>,
    /// Milliseconds since the proxy's epoch of the last datagram either way.
    last_seen: AtomicU64,
    hold_to_upstream: Mutex<HoldSlot>,
    hold_from_upstream: Mutex<HoldSlot>,
}

impl Flow {
    fn stop(&self) {
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
    }

    fn hold(&self, dir: Dir) -> &Mutex<HoldSlot> {
        match dir {
            Dir::ToUpstream => &self.hold_to_upstream,
            Dir::FromUpstream => &self.hold_from_upstream,
        }
    }
}

struct Inner {
    listen: UdpSocket,
    addr: SocketAddr,
    settings: Mutex<Settings>,
    blackhole: AtomicBool,
    rng: Mutex<SmallRng>,
    flows: Mutex<HashMap<SocketAddr, Arc<Flow>>>,
    epoch: Instant,
    token: CancellationToken,
    to_upstream: Counters,
    from_upstream: Counters,
    rebinds: AtomicU64,
    /// Indexed by [`Dir::index`].
    shapers: [Mutex<Shaper>; 2],
    queue_drops: AtomicU64,
}

/// What happens to one datagram, decided up front.
struct Fate {
    drop: bool,
    copies: u8,
    reorder: bool,
    jitter: Duration,
}

impl Inner {
    /// Spawns `fut` so that it stops when the proxy is dropped.
    fn spawn<F>(&self, fut: F) -> AbortHandle
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        tokio::spawn(self.token.clone().run_until_cancelled_owned(fut)).abort_handle()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn counters(&self, dir: Dir) -> &Counters {
        match dir {
            Dir::ToUpstream => &self.to_upstream,
            Dir::FromUpstream => &self.from_upstream,
        }
    }

    /// Reads datagrams from peers and forwards them upstream.
    async fn listen_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let (n, peer) = match self.listen.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(_) => {
                    // E.g. ECONNREFUSED/ECONNRESET reported for an earlier
                    // send; never stop, but don't spin either.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            let Some(flow) = self.flow_for(peer) else {
                bump(&self.to_upstream.dropped);
                continue;
            };
            let data = buf[..n].to_vec();
            Arc::clone(&self).process(flow, Dir::ToUpstream, data).await;
        }
    }

    /// Reads replies from one flow's upstream socket and sends them to the peer.
    async fn upstream_loop(self: Arc<Self>, flow: Arc<Flow>, sock: Arc<UdpSocket>) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let n = match sock.recv_from(&mut buf).await {
                Ok((n, _from)) => n,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            let data = buf[..n].to_vec();
            Arc::clone(&self)
                .process(Arc::clone(&flow), Dir::FromUpstream, data)
                .await;
        }
    }

    /// Removes idle flows now and then.
    async fn janitor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = self.now_ms();
            let idle = FLOW_IDLE.as_millis() as u64;
            lock(&self.flows).retain(|_, flow| {
                let keep = now.saturating_sub(flow.last_seen.load(Ordering::Relaxed)) < idle;
                if !keep {
                    flow.stop();
                }
                keep
            });
        }
    }

    /// The flow of `peer`, created (with its upstream socket and reader) if new.
    fn flow_for(self: &Arc<Self>, peer: SocketAddr) -> Option<Arc<Flow>> {
        let mut flows = lock(&self.flows);
        if let Some(flow) = flows.get(&peer) {
            return Some(Arc::clone(flow));
        }
        if flows.len() >= MAX_FLOWS {
            let oldest = flows
                .iter()
                .min_by_key(|(_, flow)| flow.last_seen.load(Ordering::Relaxed))
                .map(|(addr, _)| *addr);
            if let Some(flow) = oldest.and_then(|addr| flows.remove(&addr)) {
                flow.stop();
            }
        }
        let sock = Arc::new(bind_loopback().ok()?);
        let flow = Arc::new(Flow {
            peer,
            sock: Mutex::new(Arc::clone(&sock)),
            reader: Mutex::new(None),
            last_seen: AtomicU64::new(self.now_ms()),
            hold_to_upstream: Mutex::default(),
            hold_from_upstream: Mutex::default(),
        });
        let reader = self.spawn(Arc::clone(self).upstream_loop(Arc::clone(&flow), sock));
        *lock(&flow.reader) = Some(reader);
        flows.insert(peer, Arc::clone(&flow));
        Some(flow)
    }

    /// Decides what happens to one datagram.
    fn fate(&self, dir: Dir) -> Fate {
        let imp = {
            let settings = lock(&self.settings);
            match dir {
                Dir::ToUpstream => settings.to_upstream,
                Dir::FromUpstream => settings.from_upstream,
            }
        };
        if self.blackhole.load(Ordering::Relaxed) {
            return Fate {
                drop: true,
                copies: 0,
                reorder: false,
                jitter: Duration::ZERO,
            };
        }
        let mut rng = lock(&self.rng);
        // random::<f64>() is in [0, 1): p = 0 never fires, p = 1 always does.
        let mut chance = |p: f64| rng.random::<f64>() < p;
        let drop = chance(imp.loss);
        let copies = if chance(imp.duplicate) { 2 } else { 1 };
        let reorder = chance(imp.reorder);
        Fate {
            drop,
            copies,
            reorder,
            jitter: imp.jitter,
        }
    }

    /// Applies the impairment of `dir` to `data` and sends what survives.
    async fn process(self: Arc<Self>, flow: Arc<Flow>, dir: Dir, data: Vec<u8>) {
        let counters = self.counters(dir);
        bump(&counters.received);
        flow.last_seen.store(self.now_ms(), Ordering::Relaxed);
        let fate = self.fate(dir);
        if fate.drop {
            bump(&counters.dropped);
            return;
        }
        let link = lock(&self.settings).links[dir.index()];
        if !link.is_none() {
            self.shape(flow, dir, link, data);
            return;
        }
        if fate.copies > 1 {
            bump(&counters.duplicated);
        }
        // Either release a datagram held earlier right after this one, or
        // hold this one back until the next.
        let release = {
            let mut slot = lock(flow.hold(dir));
            match slot.held.take() {
                Some(held) => Some(held),
                None if fate.reorder => {
                    slot.generation += 1;
                    let generation = slot.generation;
                    slot.held = Some(Held {
                        generation,
                        data,
                        copies: fate.copies,
                        jitter: fate.jitter,
                    });
                    bump(&counters.reordered);
                    drop(slot);
                    let inner = Arc::clone(&self);
                    self.spawn(async move {
                        tokio::time::sleep(REORDER_HOLD).await;
                        let held = {
                            let mut slot = lock(flow.hold(dir));
                            match &slot.held {
                                Some(h) if h.generation == generation => slot.held.take(),
                                _ => None,
                            }
                        };
                        if let Some(held) = held {
                            inner
                                .emit(&flow, dir, held.data, held.copies, held.jitter)
                                .await;
                        }
                    });
                    return;
                }
                None => None,
            }
        };
        self.emit(&flow, dir, data, fate.copies, fate.jitter).await;
        if let Some(held) = release {
            self.emit(&flow, dir, held.data, held.copies, held.jitter)
                .await;
        }
    }

    /// Puts `data` on `dir`'s link: into the bottleneck's queue, or dropped
    /// when the queue is full.
    fn shape(self: &Arc<Self>, flow: Arc<Flow>, dir: Dir, link: Link, data: Vec<u8>) {
        let now = Instant::now();
        let mut shaper = lock(&self.shapers[dir.index()]);
        let start = shaper.next_free.map_or(now, |free| free.max(now));
        if start - now > link.queue {
            bump(&self.queue_drops);
            return;
        }
        let bits = data.len() as u64 * 8 * 1_000_000_000;
        let sending = Duration::from_nanos(bits.checked_div(link.rate).unwrap_or(0));
        let sent = start + sending;
        shaper.next_free = Some(sent);
        let arrives = tokio::time::Instant::from_std(sent + link.delay);
        let wire = shaper.wire.get_or_insert_with(|| {
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Arc<Flow>, Vec<u8>)>(
                );
            let inner = Arc::clone(self);
            self.spawn(async move {
                // Arrival times only grow, so the wire stays in order.
                while let Some((at, flow, data)) = rx.recv().await {
                    tokio::time::sleep_until(at).await;
                    inner.send(&flow, dir, &data).await;
                }
            });
            tx
        });
        let _ = wire.send((arrives, flow, data));
    }

    /// Sends `copies` copies of `data`, each after its own random delay in
    /// `[0, jitter]` (inline when there is no jitter, keeping order).
    async fn emit(
        self: &Arc<Self>,
        flow: &Arc<Flow>,
        dir: Dir,
        data: Vec<u8>,
        copies: u8,
        jitter: Duration,
    ) {
        if jitter.is_zero() {
            for _ in 0..copies {
                self.send(flow, dir, &data).await;
            }
            return;
        }
        let data = Arc::new(data);
        for _ in 0..copies {
            let delay = {
                let mut rng = lock(&self.rng);
                jitter.mul_f64(rng.random::<f64>())
            };
            let inner = Arc::clone(self);
            let flow = Arc::clone(flow);
            let data = Arc::clone(&data);
            self.spawn(async move {
                tokio::time::sleep(delay).await;
                inner.send(&flow, dir, &data).await;
            });
        }
    }

    /// Sends one datagram copy, counting errors instead of failing.
    async fn send(&self, flow: &Flow, dir: Dir, data: &[u8]) {
        let result = match dir {
            Dir::ToUpstream => {
                let sock = Arc::clone(&*lock(&flow.sock));
                let upstream = lock(&self.settings).upstream;
                sock.send_to(data, upstream).await
            }
            Dir::FromUpstream => self.listen.send_to(data, flow.peer).await,
        };
        let counters = self.counters(dir);
        match result {
            Ok(_) => bump(&counters.forwarded),
            Err(_) => bump(&counters.send_errors),
        }
    }
}

/// A non-blocking UDP socket on 127.0.0.1:0 with large buffers, so bursts
/// are not lost in the proxy itself.
fn bind_loopback() -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.set_nonblocking(true)?;
    sock.bind(&SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))))?;
    UdpSocket::from_std(sock.into())
}

/// Locks `m`, ignoring poisoning (settings stay usable after a panic elsewhere).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
