//! The process signals the roles act on, and the only Unix-only signal code:
//! SIGINT and SIGTERM stop a role, SIGHUP ends `connect` quietly (ssh sends
//! it to its `ProxyCommand`) and makes the relay re-read its revocation
//! file. Elsewhere Ctrl-C stands in for SIGINT, and SIGHUP and SIGTERM
//! never come.

use std::fmt;
use std::io;

/// A signal a role acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP.
    Hangup,
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: asked to stop.
    Terminate,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Hangup => "SIGHUP",
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        })
    }
}

/// Handlers for some [`Signal`]s, in place from creation on: a signal that
/// arrives before the first [`Signals::recv`] is kept, not acted on by
/// the default action.
pub struct Signals {
    #[cfg(unix)]
    handlers: Vec<(Signal, tokio::signal::unix::Signal)>,
    #[cfg(not(unix))]
    interrupt: bool,
}

impl Signals {
    /// Handles `wanted`. Must be called inside the runtime.
    pub fn new(wanted: &[Signal]) -> io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut handlers = Vec::with_capacity(wanted.len());
            for &which in wanted {
                let kind = match which {
                    Signal::Hangup => SignalKind::hangup(),
                    Signal::Interrupt => SignalKind::interrupt(),
                    Signal::Terminate => SignalKind::terminate(),
                };
                handlers.push((which, signal(kind)?));
            }
            Ok(Signals { handlers })
        }
        #[cfg(not(unix))]
        Ok(Signals {
            interrupt: wanted.contains(&Signal::Interrupt),
        })
    }

    /// The next signal. Never resolves when none of them can come (none
    /// handled, or not on this system), so it can sit in a `select!`.
    pub async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        {
            if self.handlers.is_empty() {
                return std::future::pending().await;
            }
            let next = self.handlers.iter_mut().map(|(which, handler)| {
                Box::pin(async move {
                    match handler.recv().await {
                        Some(()) => *which,
                        None => std::future::pending().await,
                    }
                })
            });
            futures_util::future::select_all(next).await.0
        }
        #[cfg(not(unix))]
        {
            if self.interrupt && tokio::signal::ctrl_c().await.is_ok() {
                return Signal::Interrupt;
            }
            std::future::pending().await
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_is_named_by_what_arrives() {
        let mut signals = Signals::new(&[Signal::Hangup, Signal::Terminate]).unwrap();
        // SAFETY: raise only sends this process a signal it now handles.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        assert_eq!(signals.recv().await, Signal::Hangup);
        let mut none = Signals::new(&[]).unwrap();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(10), none.recv());
        assert!(waited.await.is_err(), "no handler, no signal");
    }
}
