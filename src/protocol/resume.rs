//! The `resume` field of `open` and `ready`: what makes a session
//! resumable, and what takes it up again (see [`crate::session::resume`]). The relay
//! passes it between client and host as it is.

use serde::{Deserialize, Serialize};

/// One step of making a session resumable or resuming it. Keys, ids and
/// proofs are lowercase hex; their lengths are checked by whoever uses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resume {
    /// Client, in a new session's `open`: make it resumable, under this
    /// random id, with a key agreed from this X25519 public key.
    Offer {
        /// The session's id for resuming, chosen by the client.
        id: String,
        /// The client's ephemeral X25519 public key.
        key: String,
    },
    /// Host, in `ready`: the session is resumable.
    Accept {
        /// The host's ephemeral X25519 public key.
        key: String,
    },
    /// Client, in `open`: take up session `id` again.
    Again {
        /// The id from the offer.
        id: String,
        /// Counts the client's resumes of this session, from 1; a host
        /// takes each number once.
        attempt: u64,
        /// Bytes the client has received from the host.
        received: u64,
        /// Whether the client has received the host's end of data.
        fin: bool,
        /// HMAC of the above under the session's key.
        proof: String,
    },
    /// Relay, in an `open` of its own to a host: the client token whose
    /// digest is the `open`'s `owner` was revoked or has expired, so none
    /// of its sessions can be resumed: end those that wait. The relay
    /// refuses it from a client.
    Ended {
        /// Why, in plain words.
        why: String,
    },
    /// Host, in `ready`: the session is taken up again.
    Resumed {
        /// The client's attempt this answers.
        attempt: u64,
        /// Bytes the host has received from the client.
        received: u64,
        /// Whether the host has received the client's end of data.
        fin: bool,
        /// HMAC of the above under the session's key.
        proof: String,
    },
}
