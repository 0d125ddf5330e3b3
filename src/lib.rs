//! Shellrelay relays ssh to a machine behind NAT: a **relay** on a
//! UDP-reachable server, a **host agent** next to sshd that keeps one
//! connection out to the relay (so the host needs no open port), and a
//! **client forwarder** that ssh connects to (or `connect`, ssh's
//! `ProxyCommand`). Each ssh connection is one bidirectional stream over
//! QUIC, or over TLS and HTTP/2 on TCP where UDP is blocked.
//!
//! # The folders
//! The three roles stand side by side and never import one another; what
//! they share lies below them, and the command line above them starts
//! them.
//!
//! - [`cli`]: flags, settings files, the commands (`demo` among them),
//!   join strings and the peers' config files.
//! - The roles: [`client`] (the forwarder and `connect`), [`host`] (the
//!   host agent), [`relay`].
//! - [`session`]: what the client and host sides do with a session's
//!   bytes: [`session::splice`], resumable sessions
//!   ([`session::resume`]) and the loop that carries one across resumes.
//! - [`net`]: networking. [`net::transport`] owns a connection from its
//!   socket to its close (QUIC with its congestion control, TLS over
//!   TCP with HTTP/2, dialling and accepting); [`net::tls`] holds
//!   certificates, pins and the verifier; [`net::fleet`] finds a fleet's
//!   relays in DNS.
//! - [`protocol`]: the wire protocol: frames, reasons, ids.
//! - [`access`]: who may connect: tokens and their keys, revocation,
//!   secret files.
//! - [`ops`]: running it: defaults, limits, metrics and the status page,
//!   signals, tasks, memory.
//!
//! Why these floors: each folder needs only what lies below it, so a
//! change to the wire protocol or the transport is made in one place and
//! the roles above take it as it is; and a newcomer reads the roles
//! without the transport's insides, or the transport without the roles.
//!
//! # One ssh session, from `ssh` to `sshd`
//! 1. The host agent ([`host::run`]) has dialled the relay
//!    ([`net::transport::dial`]) and said hello with its host token; the
//!    relay ([`relay::Relay`]) accepted it ([`net::transport::listen`]),
//!    checked the token ([`access::token`]) and registered the connection
//!    under the host id.
//! 2. `ssh -p2222 user@localhost` connects to the client forwarder
//!    ([`client::run`]), which dials the relay the same way with a client
//!    token (once; later sessions reuse the connection) and opens a
//!    stream with an `open` frame ([`protocol::Frame`]). It reads nothing
//!    from ssh yet.
//! 3. The relay takes the stream up within the client's fair share
//!    ([`ops::limits`]), opens a stream on the host's connection and
//!    passes `open` on with a session id.
//! 4. The host agent reads `open`, dials its one target (sshd) and
//!    answers `ready`; the relay passes `ready` back to the client.
//! 5. Now the bytes flow: the client forwarder and the host agent each
//!    splice their TCP connection to the stream ([`session::splice`]),
//!    and the relay splices the two streams. A resumable session
//!    ([`session::resume`]) frames its bytes so that it survives its
//!    path breaking: the client opens a new stream through any relay,
//!    and both ends send again what the other lacks.
//! 6. When ssh or sshd closes, the end of data travels the same way and
//!    every hop lets go of the session.
//! 7. Where the NATs allow, the relay has introduced client and host on
//!    the way ([`protocol::Direct`]): the client dials the host from the
//!    socket it reaches the relay with ([`net::transport::direct`]), and
//!    the next sessions skip steps 3 and 4's relay, while a live
//!    resumable one moves over as a resume would.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod access;
pub mod cli;
pub mod client;
pub mod host;
pub mod net;
pub mod ops;
pub mod protocol;
pub mod relay;
pub mod session;

/// Raises this process's soft limit on open files to its hard limit: every
/// session holds sockets, and the common soft default of 1024 would cap a
/// forwarder or host agent at a few hundred concurrent sessions.
pub fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}
