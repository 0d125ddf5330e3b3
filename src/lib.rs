//! Shellrelay relays ssh to a machine behind NAT over QUIC: a relay on a
//! UDP-reachable server, a host agent next to sshd that dials out to it, and
//! a client forwarder that ssh connects to (or `connect`, ssh's
//! `ProxyCommand`). One QUIC stream per ssh session.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod connect;
pub mod defaults;
pub mod demo;
pub mod fleet;
pub mod host;
pub mod id;
pub mod invite;
pub mod keys;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod private;
pub mod protocol;
pub mod relay;
pub mod resume;
pub mod revoke;
pub mod session;
pub mod signals;
pub mod splice;
pub mod status;
pub mod tasks;
pub mod tls;
pub mod token;
pub mod transport;

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
