//! Exponential backoff with jitter, for whatever tries again: a host
//! agent's registrations, a client's resumes.

use std::time::Duration;

use rand::Rng;

use crate::ops::defaults::INITIAL_BACKOFF;

/// Exponential backoff with jitter, capped.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Backoff from [`INITIAL_BACKOFF`] up to `max`.
    pub fn new(max: Duration) -> Backoff {
        Backoff {
            next: INITIAL_BACKOFF.min(max),
            max,
        }
    }

    /// The delay before the next attempt: the current step with up to half
    /// of it taken off at random, so that many agents do not reconnect in step.
    pub fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let jitter = rand::rng().random_range(0.0..=0.5);
        step.mul_f64(1.0 - jitter)
    }

    /// Starts again from the first step.
    pub fn reset(&mut self) {
        self.next = INITIAL_BACKOFF.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let max = Duration::from_secs(4);
        let mut b = Backoff::new(max);
        let mut prev_step = Duration::ZERO;
        for _ in 0..20 {
            let step = b.next;
            let d = b.delay();
            assert!(
                d <= step && d >= step / 2,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
            assert!(step >= prev_step && step <= max);
            prev_step = step;
        }
        assert_eq!(b.next, max);
        b.reset();
        assert_eq!(b.next, INITIAL_BACKOFF);
    }
}
