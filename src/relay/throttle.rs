//! Summarised warnings: a peer can trigger some warnings as often as it
//! likes (silent connections, junk tokens), so each kind is logged at most
//! once per window, with the number of its kind left out since.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time between two lines of one kind.
pub(super) const WINDOW: Duration = Duration::from_secs(10);

/// One kind of warning.
#[derive(Debug, Default)]
pub(super) struct Throttle(Mutex<Option<Window>>);

#[derive(Debug)]
struct Window {
    /// When the last line was written.
    logged: Instant,
    /// Occurrences left out since.
    left_out: u64,
}

impl Throttle {
    /// Whether an occurrence at `now` is logged; if so, how many were left
    /// out since the last line.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut window = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match window.as_mut() {
            Some(w) if now.saturating_duration_since(w.logged) < WINDOW => {
                w.left_out += 1;
                None
            }
            Some(w) => {
                let left_out = std::mem::take(&mut w.left_out);
                w.logged = now;
                Some(left_out)
            }
            None => {
                *window = Some(Window {
                    logged: now,
                    left_out: 0,
                });
                Some(0)
            }
        }
    }
}

/// ` (N more like it since the last such line)`, or nothing for none.
pub(super) fn left_out(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} more like it in the last {}s)", WINDOW.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_window_with_the_count_left_out() {
        let t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=500 {
            assert_eq!(t.allow(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.allow(t0 + WINDOW), Some(500));
        assert_eq!(t.allow(t0 + WINDOW + Duration::from_secs(1)), None);
        assert_eq!(t.allow(t0 + WINDOW * 3), Some(1));
        assert_eq!(left_out(0), "");
        assert_eq!(left_out(3), " (3 more like it in the last 10s)");
    }
}
