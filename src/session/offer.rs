//! The client's offer to make a session resumable, and what the host's
//! answer to it makes of the session.

use crate::protocol::Resume;
use crate::session::resume::key::{self, Half, KeyError};
use crate::session::resume::Resumable;

/// A session offer not yet answered: what `open` carries, and the key half
/// kept for the answer.
pub struct Offer {
    /// What `open` carries.
    pub ask: Resume,
    id: String,
    half: Half,
    /// Most unacknowledged bytes the session will keep per direction.
    limit: usize,
}

/// Why the host's answer to a resume offer is no good.
#[derive(Debug, thiserror::Error)]
pub enum BadAnswer {
    /// The host's key does not make a session key.
    #[error("bad answer to the resume offer: {0}")]
    Key(KeyError),
    /// The host answered with something other than an acceptance.
    #[error("the host answered the resume offer with something else")]
    Other,
}

impl Offer {
    /// An offer under a new random id and key, for a session that will keep
    /// up to `limit` unacknowledged bytes per direction; an error if the
    /// system has no random numbers.
    pub fn new(limit: usize) -> Result<Offer, KeyError> {
        let id = key::new_id()?;
        let half = Half::new()?;
        let ask = Resume::Offer {
            id: id.clone(),
            key: half.public.clone(),
        };
        Ok(Offer {
            ask,
            id,
            half,
            limit,
        })
    }

    /// The session, from the host's answer to the offer; `None` if the host
    /// made it a plain session.
    pub fn accepted(self, answer: Option<&Resume>) -> Result<Option<Resumable>, BadAnswer> {
        match answer {
            None => Ok(None),
            Some(Resume::Accept { key }) => {
                let key = (self.half).agree(key, &self.id).map_err(BadAnswer::Key)?;
                Ok(Some(Resumable::new(self.id, key, self.limit)))
            }
            Some(_) => Err(BadAnswer::Other),
        }
    }
}

/// The session opened with `offer` (if one was made), from the host's
/// `answer`: resumable if the host accepted the offer, plain if no offer
/// was made or the host made it plain.
pub fn answered(
    offer: Option<Offer>,
    answer: Option<&Resume>,
) -> Result<Option<Resumable>, BadAnswer> {
    match offer {
        Some(offer) => offer.accepted(answer),
        None => Ok(None),
    }
}
