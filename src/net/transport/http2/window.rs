//! The connection-level receive window of an h2 connection, following
//! a target that its owner sets (the relay sizes it to a connection's
//! sessions).

use std::future::Future;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::CONNECTION_WINDOW;

/// Follows `target`, if given, with the connection's receive window
/// while `conn` runs; resolves when `conn` does.
pub(super) async fn run_with_window<C>(mut conn: C, target: Option<watch::Receiver<u32>>)
where
    C: Future + Unpin + WindowTarget,
{
    let Some(mut target) = target else {
        let _ = conn.await;
        return;
    };
    let mut following = true;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            changed = target.changed(), if following => match changed {
                Ok(()) => {
                    let size = *target.borrow_and_update();
                    conn.set_target(size);
                }
                Err(_) => following = false,
            },
        }
    }
}

/// The connection window to start with: what `target` says now, else
/// [`CONNECTION_WINDOW`]. Credit once given cannot be taken back, so a
/// small target must hold from the first SETTINGS on.
pub(super) fn first_window(target: &Option<watch::Receiver<u32>>) -> u32 {
    target.as_ref().map_or(CONNECTION_WINDOW, |t| *t.borrow())
}

/// An h2 connection whose connection-level receive window can be set.
pub(super) trait WindowTarget {
    fn set_target(&mut self, size: u32);
}

impl<T: AsyncRead + AsyncWrite + Unpin> WindowTarget for h2::client::Connection<T, Bytes> {
    fn set_target(&mut self, size: u32) {
        self.set_target_window_size(size);
    }
}
