//! Who may connect: JWT access tokens ([`token`]) and the keys that sign
//! and check them ([`keys`]), the relay's revocation list ([`revoke`]),
//! and files only their owner may read, which hold the secrets
//! ([`private`]).

pub mod keys;
pub mod private;
pub mod revoke;
pub mod token;
