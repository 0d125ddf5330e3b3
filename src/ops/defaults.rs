//! Every default and timeout of every role in one place, each with its
//! reason. Flags name these as their defaults; the code takes its waits
//! from here. Sizes that belong to one mechanism (stream windows, read
//! buffers, frame and request caps) stay beside it.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use crate::protocol::DEFAULT_PORT;

// ---------------------------------------------------------------- relay

/// UDP address the relay listens on: every interface, IPv6 and IPv4, on
/// [`DEFAULT_PORT`].
pub const RELAY_LISTEN: SocketAddr =
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, DEFAULT_PORT, 0, 0));

/// Longest a QUIC handshake may take before the attempt is dropped: a
/// handshake is a few round trips, and a peer that stalls it holds a
/// per-address handshake slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a connected peer may take to open its control stream and send
/// its hello; a peer that says nothing is dropped rather than held.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections in their handshake or hello, over every address, above
/// which a new one must first prove its address with a stateless retry
/// (one more round trip, no state at the relay): a flood of Initials from
/// spoofed addresses then costs nothing, while a quiet relay adds no round
/// trip to anyone's connect.
pub const RETRY_ABOVE_HANDSHAKES: usize = 64;

/// How long a refused peer gets to read its refusal frame before the
/// connection is closed (the close carries the same words).
pub const REFUSE_LINGER: Duration = Duration::from_secs(1);

/// How often the relay hands memory freed by ended sessions back to the
/// system. Bulk sessions buffer megabytes each; glibc's allocator keeps
/// freed memory for reuse, so without this the relay would stay at its
/// high-water mark long after the sessions are gone.
pub const MEMORY_TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// How often the relay looks for a changed revocation file: a revoked
/// token stops working within about a second without a signal.
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// Concurrent sessions of one client token, over all its connections: far
/// more than a person opens, and a token cannot buy more by opening more
/// connections.
pub const SESSIONS_PER_CLIENT: usize = 1024;

/// Connections of one client token at once: a forwarder needs one, a
/// person a few; each costs the relay its connection state even without
/// sessions.
pub const CONNECTIONS_PER_CLIENT: usize = 64;

/// Concurrent sessions to one host.
pub const SESSIONS_PER_HOST: usize = 4096;

/// Fewest sessions a client token may always hold while the relay has
/// room, however many other tokens share it
/// ([`crate::ops::limits::Counts::acquire_share`]): enough for a person's
/// terminals.
pub const FAIR_SHARE_FLOOR: usize = 8;

/// New sessions per second one client token may start on average
/// (`--session-rate-per-client`): far above what people or scripts
/// open (a thousand sessions at once start within 8 s), far below the
/// tens of thousands a second a flood of opened and reset streams
/// reaches. Streams beyond it wait to be taken up.
pub const SESSION_RATE_PER_CLIENT: u32 = 100;

/// New sessions one client token may start at once: a forwarder that
/// starts a hundred (or two hundred) sessions together starts them
/// without delay.
pub const SESSION_BURST_PER_CLIENT: u32 = 256;

/// New sessions per second the relay opens towards one host on average
/// (`--session-rate-per-host`), each of which makes the host agent dial
/// its target: two users' full rates together, and no more.
pub const SESSION_RATE_PER_HOST: u32 = 200;

/// New sessions the relay opens towards one host at once.
pub const SESSION_BURST_PER_HOST: u32 = 512;

/// Longest a new session waits for its host's rate
/// ([`SESSION_RATE_PER_HOST`]) before it is refused: well within the
/// client's wait for `ready`.
pub const HOST_RATE_WAIT: Duration = Duration::from_secs(5);

/// Session streams one client token may abandon (end or reset before its
/// session has started) per second on average, and at once: a person
/// pressing Ctrl-C on a hanging ssh does a few; a rapid-reset flood
/// passes this within a second and is cut off.
pub const ABANDONED_PER_CLIENT: (u32, u32) = (4, 64);

/// How long a client token that abandoned streams too fast is refused
/// (its connections closed, its hellos and sessions refused).
pub const ABANDON_PENALTY: Duration = Duration::from_secs(60);

/// Places before the hello kept for networks a peer was admitted from in
/// the last day ([`crate::ops::limits::Known`]), over each transport's
/// [`MAX_HANDSHAKES`]: a host agent re-registering or a known client
/// gets in while unknown networks fill the common places.
pub const KNOWN_RESERVE: usize = 256;

/// Handshakes a second from a network that sent too many bad tokens
/// (`--max-failures-per-addr`): the rest of its connection attempts are
/// dropped unanswered, before any TLS work, for the rest of its penalty.
pub const PENALISED_HANDSHAKES: (u32, u32) = (1, 2);

/// Connections that have not finished their hello, over each transport
/// (QUIC and TCP have a pool each): past this, a connection attempt is
/// refused before any TLS work. A network takes at most
/// [`HANDSHAKES_PER_ADDR`] of them, and fewer as the pool fills
/// ([`crate::ops::limits::PerAddr::acquire_fair`]), so that filling one takes
/// well over a hundred networks; [`KNOWN_RESERVE`] more are kept for
/// networks admitted before. Each such connection holds at most a
/// pre-authentication window ([`crate::net::transport::options::PRE_AUTH_WINDOW`]).
pub const MAX_HANDSHAKES: usize = 1024;

/// Connection attempts quinn holds before the relay has looked at them.
pub const MAX_INCOMING: usize = 4096;

/// Datagrams quinn holds for one connection attempt before the relay has
/// accepted it: room for a client's first flight, which is a few Initials.
pub const INCOMING_BUFFER: u64 = 16 * 1024;

/// Datagrams quinn holds for all connection attempts not yet accepted.
pub const INCOMING_BUFFER_TOTAL: u64 = 8 * 1024 * 1024;

/// Payload the relay may hold buffered, all sessions and connections
/// together (`--max-buffered`): the relay admits no more sessions than
/// fit ([`crate::relay::budget::max_sessions`]). Sized for a small server.
pub const MAX_BUFFERED: u64 = 1024 * 1024 * 1024;

/// Connections from one IP address that have not finished their hello
/// (handshake or token check under way).
pub const HANDSHAKES_PER_ADDR: usize = 16;

/// Hosts registered at once.
pub const MAX_HOSTS: usize = 10_000;

/// Refused tokens from one IP address per [`FAILURE_WINDOW`] before its
/// hellos are refused unread.
pub const FAILURES_PER_ADDR: u32 = 10;

/// The window over which refused tokens are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

// ------------------------------------------------------------- sessions

/// Longest a session stream may take to deliver its `open` frame.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the host agent waits for its target to accept a TCP connection.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the relay waits for the host's `ready`: the host's dial timeout
/// plus a margin for the round trip.
pub const HOST_SETUP_TIMEOUT: Duration = Duration::from_secs(DIAL_TIMEOUT.as_secs() + 5);

/// Longest the client waits for `ready` or a refusal: the relay's own wait
/// plus a margin.
pub const CLIENT_SETUP_TIMEOUT: Duration = Duration::from_secs(HOST_SETUP_TIMEOUT.as_secs() + 5);

/// How long a stopping role waits for its peers to acknowledge the close
/// and its sessions to wind down, before it aborts what is left.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------- peers

/// Keep-alive interval: well under the common 30 s UDP NAT mapping
/// timeout, and short enough that a host agent whose relay crashed and
/// came back (answering with a stateless reset) reconnects within 5 s.
/// One small packet every 4 s per idle connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(4);

/// Silence after which a peer is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// While sessions are live on a connection, how often the peers look for
/// a sign of life from the relay and, when none came since the last look,
/// ask for one (a probe the relay's QUIC stack or HTTP/2 answers).
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// While sessions are live on a connection, silence from the relay after
/// which it counts as gone (or four round trips, on a longer path): its
/// sessions resume through another relay. Six probes go unanswered first,
/// so loss on the path does not set it off (README, "Failover").
pub const SILENT_AFTER: Duration = Duration::from_millis(1500);

/// How long the connection that holds a host id has to answer a probe
/// when a newcomer for that id would otherwise wait for it to leave; one
/// that does not answer (its agent killed, its network gone) is closed
/// and the newcomer takes the id at once.
pub const HOLDER_ANSWERS_WITHIN: Duration = Duration::from_secs(1);

/// How often a host agent whose id another connection holds asks the
/// relay again, while it waits for that connection to leave.
pub const DISPLACED_RETRY: Duration = Duration::from_secs(1);

/// Longest wait for the transport handshake and the relay's answer to a
/// hello.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// With `--transport auto`, how long QUIC has to answer before TLS over
/// TCP is tried too: a QUIC handshake takes one round trip, so only a
/// path above this round trip (or one that drops UDP) starts both.
pub const TCP_AFTER: Duration = Duration::from_millis(300);

/// With several relays, how long the client side waits for one to answer
/// before asking the next as well (as happy eyeballs does with addresses,
/// RFC 8305); one that fails outright is followed at once.
pub const RELAY_STAGGER: Duration = Duration::from_millis(250);

/// How often a host agent in a fleet resolves the fleet's name again
/// (`--fleet-refresh`): with the DNS records' TTL, the longest a relay that
/// left the fleet keeps a host's place.
pub const FLEET_REFRESH: Duration = Duration::from_secs(30);

/// With several relays, how long a new session waits for `ready` through
/// the relay in use before it is asked of the others too: a crashed relay
/// leaves its connections looking alive until their idle timeout.
pub const SESSION_FALLBACK: Duration = Duration::from_millis(350);

/// The longest [`SESSION_FALLBACK`] grows to on a path where `ready` is
/// slow to come (three times the last session's wait).
pub const SESSION_FALLBACK_MAX: Duration = Duration::from_secs(3);

/// While on TCP with `--transport auto`, how often QUIC is tried again.
pub const QUIC_RETRY: Duration = Duration::from_secs(180);

/// When the control stream fails before the relay's answer, how long to
/// wait for the connection's close, which carries the refusal's reason.
pub const CLOSE_REASON_WAIT: Duration = Duration::from_secs(1);

/// What the host agent connects every session to: the local sshd.
pub const TARGET: &str = "127.0.0.1:22";

/// First reconnect delay after the relay goes away.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(250);

/// Cap on the host agent's reconnect delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A connection that lasted this long was healthy: the next reconnect
/// starts again from [`INITIAL_BACKOFF`] instead of where the last outage
/// left off.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Local address the client forwarder listens on for ssh.
pub const CLIENT_LISTEN: &str = "127.0.0.1:2222";

/// After a failed connect, ssh connections within this long get the same
/// error at once instead of each queueing behind a fresh attempt (a relay
/// that is down takes up to [`CONNECT_TIMEOUT`] to fail).
pub const RECONNECT_HOLDOFF: Duration = Duration::from_secs(1);

/// Pause after a failed accept (out of file descriptors, say), so that an
/// accept loop does not spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Longest the demo waits for its host agent to register.
pub const DEMO_REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

// ------------------------------------------------------ metrics endpoint

/// Address of the relay's metrics endpoint that `shellrelay status` asks
/// by default (the relay serves none unless told where).
pub const METRICS: &str = "127.0.0.1:9100";

/// Longest a metrics connection may take to send its request head,
/// counted from its accept and not reset by each byte: a scraper sends the
/// head in one write right after connecting, so a peer that trickles or
/// says nothing gives its slot up this soon.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a metrics connection may be held in all, from its accept to its
/// close: sending the request, reading the answer and the linger after
/// it; a slow or silent peer is dropped rather than held.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a metrics connection is read from after its answer, so that
/// closing with unread bytes does not reset it before the peer has read.
pub const REQUEST_LINGER: Duration = Duration::from_secs(1);

/// Longest `shellrelay status` waits to connect and read the answer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

// --------------------------------------------------- tokens and certificates

/// Default `aud` claim: the relay's audience.
pub const AUDIENCE: &str = "shellrelay";

/// Default lifetime of a minted token: long enough to start work, short
/// enough that a leaked token is soon useless.
pub const TOKEN_TTL: Duration = Duration::from_secs(60 * 60);

/// How long the token in an invite is valid by default (`invite --ttl`):
/// it is the joined machine's credential from then on, so it outlives a
/// `token`'s hour; revoke it by its `jti` to end it sooner.
pub const INVITE_TTL: &str = "30d";

/// Where `certs` writes the relay's certificate and key, and `relay` looks
/// for them, by default.
pub const CERT_DIR: &str = "certs";

/// The relay's certificate by default: [`crate::net::tls::CERT_FILE`] in [`CERT_DIR`].
pub const CERT: &str = "certs/relay.crt";

/// The relay's private key by default: [`crate::net::tls::KEY_FILE`] in [`CERT_DIR`].
pub const KEY: &str = "certs/relay.key";

/// Introductions for a direct path one client token may get per second on
/// average, and at once ([`crate::protocol::Direct`]). A client asks for
/// one when it has no direct path to its host and is not backing off
/// from a failed one: a few a minute.
pub const INTRODUCTIONS_PER_CLIENT: (u32, u32) = (1, 8);
