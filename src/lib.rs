//! Shellrelay relays ssh to a machine behind NAT over QUIC: a relay on a
//! UDP-reachable server, a host agent next to sshd that dials out to it, and
//! a client forwarder that ssh connects to. One QUIC stream per ssh session.
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod client;
pub mod demo;
pub mod host;
pub mod peer;
pub mod protocol;
pub mod relay;
pub mod splice;
pub mod tls;
pub mod token;
