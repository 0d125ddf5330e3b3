//! Running the roles: every default and timeout ([`defaults`]), limits
//! and fair shares ([`limits`]), metrics ([`metrics`]) and the HTTP status
//! endpoint ([`status`]), process signals ([`signals`]), owned tasks
//! ([`tasks`]), memory given back ([`memory`]) and wall-clock time
//! ([`clock`]).

pub mod clock;
pub mod defaults;
pub mod limits;
pub mod memory;
pub mod metrics;
pub mod signals;
pub mod status;
pub mod tasks;
