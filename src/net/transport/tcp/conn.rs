//! A TLS-over-TCP connection once its hello is answered: HTTP/2 carries
//! the session streams, and a control stream (the connection's first)
//! carries the reason when either side closes it, as QUIC's
//! CONNECTION_CLOSE does. HTTP/2's own GOAWAY cannot carry our words from
//! the client side, so it is not used for that.
//!
//! A connection exists before HTTP/2 is up on it (the relay registers a
//! host before it sends the welcome): streams opened or accepted then
//! wait until it is, or until it closes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::super::http2::{self, Accepter, Opener};
use super::super::{Closed, RecvStream, SendStream, Stream};
use super::Counted;
use crate::ops::defaults::REFUSE_LINGER;
use crate::protocol::{read_frame, write_frame, Frame, Reason, Refusal};

/// Which HTTP/2 role this side takes: the client opens streams, the
/// server accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Opens session streams (a client, or the relay towards a host).
    Opens,
    /// Accepts session streams (a host, or the relay from a client).
    Accepts,
}

/// How an HTTP/2 connection is run: stream window, cap on the streams the
/// peer may open, keep-alive and idle timeout.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Receive window of each stream.
    pub window: u32,
    /// Most streams the peer may have open at once (the accepting side).
    pub max_streams: u32,
    /// Interval of PINGs.
    pub keep_alive: Duration,
    /// How long a PING may go unanswered before the peer counts as gone.
    pub idle_timeout: Duration,
}

/// A TLS-over-TCP connection; clones share it, and it closes when the last
/// one goes.
#[derive(Debug, Clone)]
pub struct TcpConn(Arc<Inner>);

/// A [`TcpConn`] that does not keep the connection open.
#[derive(Debug, Clone)]
pub struct WeakTcpConn(std::sync::Weak<Inner>);

impl TcpConn {
    /// Whether `other` is this very connection.
    pub fn same(&self, other: &TcpConn) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl WeakTcpConn {
    /// The connection, if it is still open somewhere.
    pub fn upgrade(&self) -> Option<TcpConn> {
        self.0.upgrade().map(TcpConn)
    }
}

#[derive(Debug)]
struct Inner {
    remote: SocketAddr,
    /// Set once HTTP/2 is up.
    mux: watch::Sender<Option<Arc<Mux>>>,
    /// Set once, when the connection is closed, with why.
    closed: Arc<watch::Sender<Option<Closed>>>,
    /// Where this side's close reason goes.
    control: Mutex<Option<SendStream>>,
    /// Stops the connection's tasks, which drops the socket.
    cancel: CancellationToken,
    /// Cancelled when HTTP/2 has ended, whoever ended it.
    ended: CancellationToken,
    /// A close is under way: the reason is going out.
    closing: AtomicBool,
    /// The connection-level receive window HTTP/2 is to offer.
    window: watch::Sender<u32>,
    /// Bytes read from the peer, ever: anything heard proves it alive.
    heard: Arc<AtomicU64>,
    /// Sends a PING now rather than at the next keep-alive.
    poke: Arc<Notify>,
}

#[derive(Debug)]
enum Mux {
    Opens(Opener),
    Accepts(Accepter),
}

impl Drop for Inner {
    /// The last handle is gone: the connection closes as [`TcpConn::close`]
    /// with "done" would, so that what its streams queued last still goes
    /// out before the socket does.
    fn drop(&mut self) {
        let control = lock(&self.control).take();
        let runtime = tokio::runtime::Handle::try_current();
        match (control, runtime) {
            (Some(control), Ok(runtime)) if set_closed(&self.closed, Closed::Local) => {
                let (cancel, ended) = (self.cancel.clone(), self.ended.clone());
                runtime.spawn(say_done(
                    control,
                    Refusal::new(Reason::Done, ""),
                    ended,
                    cancel,
                ));
            }
            // A close is under way; it ends the connection after its linger.
            (None, _) if self.closing.load(Ordering::Relaxed) => {}
            _ => {
                set_closed(&self.closed, lost("closed"));
                self.cancel.cancel();
            }
        }
    }
}

/// Sends `refusal` on the control stream and lets the connection run until
/// the peer lets go of it (`ended`), within [`REFUSE_LINGER`]; then ends it.
async fn say_done(
    mut control: SendStream,
    refusal: Refusal,
    ended: CancellationToken,
    cancel: CancellationToken,
) {
    let said = async {
        if write_frame(&mut control, &refusal.frame()).await.is_ok() {
            let _ = control.finish();
        }
        ended.cancelled().await;
    };
    let _ = tokio::time::timeout(REFUSE_LINGER, said).await;
    cancel.cancel();
}

/// Sets the close reason unless one is set already; true if this set it.
fn set_closed(closed: &watch::Sender<Option<Closed>>, why: Closed) -> bool {
    closed.send_if_modified(|now| {
        if now.is_some() {
            return false;
        }
        *now = Some(why);
        true
    })
}

fn lost(message: impl Into<String>) -> Closed {
    Closed::Lost(Arc::new(std::io::Error::other(message.into())))
}

impl TcpConn {
    /// A connection to `remote` on which HTTP/2 has yet to start.
    pub fn pending(remote: SocketAddr) -> TcpConn {
        TcpConn(Arc::new(Inner {
            remote,
            mux: watch::Sender::new(None),
            closed: Arc::new(watch::Sender::new(None)),
            control: Mutex::new(None),
            cancel: CancellationToken::new(),
            ended: CancellationToken::new(),
            closing: AtomicBool::new(false),
            window: watch::Sender::new(http2::CONNECTION_WINDOW),
            heard: Arc::default(),
            poke: Arc::default(),
        }))
    }

    /// A handle that does not keep the connection open.
    pub fn downgrade(&self) -> WeakTcpConn {
        WeakTcpConn(Arc::downgrade(&self.0))
    }

    /// Bytes read from the peer, ever.
    pub fn heard(&self) -> u64 {
        self.0.heard.load(Ordering::Relaxed)
    }

    /// Sends a PING now, unless one is out already; its answer is heard
    /// like any byte.
    pub fn poke(&self) {
        self.0.poke.notify_one();
    }

    /// Starts HTTP/2 on `io` as `side` and sets up the control stream.
    /// The connection's tasks run until it closes.
    pub async fn start<T>(&self, io: T, side: Side, settings: Settings) -> Result<(), Closed>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &self.0;
        let io = Counted {
            io,
            heard: inner.heard.clone(),
        };
        let started = async {
            match side {
                Side::Opens => {
                    let window = Some(inner.window.subscribe());
                    let (opener, driver) = http2::client(io, settings.window, window).await?;
                    self.drive(driver, settings);
                    let control = opener.open().await.map_err(|e| lost(e.to_string()))?;
                    Ok::<_, Closed>((Mux::Opens(opener), control))
                }
                Side::Accepts => {
                    let window = Some(inner.window.subscribe());
                    let (accepter, driver) =
                        http2::server(io, settings.window, settings.max_streams, window).await?;
                    self.drive(driver, settings);
                    let control = accepter.accept().await.ok_or_else(|| lost("closed"))?;
                    Ok((Mux::Accepts(accepter), control))
                }
            }
        };
        let (mux, (send, recv)) = tokio::select! {
            biased;
            closed = self.closed() => return Err(closed),
            started = started => match started {
                Ok(started) => started,
                Err(err) => {
                    set_closed(&inner.closed, err.clone());
                    inner.cancel.cancel();
                    return Err(err);
                }
            },
        };
        *lock(&inner.control) = Some(SendStream::Http2(send));
        tokio::spawn(read_control(
            RecvStream::Http2(recv),
            inner.closed.clone(),
            inner.cancel.clone(),
        ));
        inner.mux.send_replace(Some(Arc::new(mux)));
        Ok(())
    }

    /// Runs the HTTP/2 connection and its keep-alive until it ends or is
    /// cancelled; then the connection counts as closed.
    fn drive(
        &self,
        driver: http2::Driver<impl Future<Output = ()> + Send + 'static>,
        settings: Settings,
    ) {
        let (closed, cancel, ended, poke) = (
            self.0.closed.clone(),
            self.0.cancel.clone(),
            self.0.ended.clone(),
            self.0.poke.clone(),
        );
        tokio::spawn(async move {
            let keep_alive = keep_alive(driver.ping, settings, poke);
            let why = tokio::select! {
                () = cancel.cancelled() => lost("closed"),
                () = driver.run => lost("connection closed by the relay or the network"),
                why = keep_alive => why,
            };
            set_closed(&closed, why);
            ended.cancel();
        });
    }

    async fn mux(&self) -> Result<Arc<Mux>, Closed> {
        let mut mux = self.0.mux.subscribe();
        tokio::select! {
            biased;
            closed = self.closed() => Err(closed),
            up = mux.wait_for(Option::is_some) => match up.ok().and_then(|m| m.clone()) {
                Some(mux) => Ok(mux),
                None => Err(lost("closed")),
            },
        }
    }

    /// Opens a session stream (this side must be the one that opens).
    pub async fn open(&self) -> Result<Stream, Closed> {
        match &*self.mux().await? {
            Mux::Opens(opener) => match opener.open().await {
                Ok((send, recv)) => Ok(Stream {
                    send: SendStream::Http2(send),
                    recv: RecvStream::Http2(recv),
                }),
                Err(err) => Err(self.close_reason().unwrap_or_else(|| lost(err.to_string()))),
            },
            Mux::Accepts(_) => Err(lost("this side of the connection does not open streams")),
        }
    }

    /// Accepts the next session stream the peer opens.
    pub async fn accept(&self) -> Result<Stream, Closed> {
        match &*self.mux().await? {
            Mux::Accepts(accepter) => match accepter.accept().await {
                Some((send, recv)) => Ok(Stream {
                    send: SendStream::Http2(send),
                    recv: RecvStream::Http2(recv),
                }),
                None => Err(self.closed().await),
            },
            // The peer opens none: wait for the end.
            Mux::Opens(_) => Err(self.closed().await),
        }
    }

    /// Closes the connection, telling the peer why on the control stream;
    /// the socket goes once the peer has closed its end, or after
    /// [`REFUSE_LINGER`].
    pub fn close(&self, reason: Reason, message: &str) {
        let inner = &self.0;
        if !set_closed(&inner.closed, Closed::Local) {
            return;
        }
        let Some(control) = lock(&inner.control).take() else {
            inner.cancel.cancel();
            return;
        };
        let refusal = Refusal::new(reason, message);
        inner.closing.store(true, Ordering::Relaxed);
        let (cancel, ended) = (inner.cancel.clone(), inner.ended.clone());
        tokio::spawn(say_done(control, refusal, ended, cancel));
    }

    /// Resolves once the socket is let go, by either side.
    pub async fn gone(&self) {
        self.0.ended.cancelled().await
    }

    /// Resolves when the connection is closed, with why.
    pub async fn closed(&self) -> Closed {
        self.watch_closed().await
    }

    /// [`TcpConn::closed`] without holding the connection: it still closes
    /// when its last handle goes.
    pub fn watch_closed(&self) -> impl Future<Output = Closed> + Send + 'static {
        let mut closed = self.0.closed.subscribe();
        async move {
            let why = match closed.wait_for(Option::is_some).await {
                Ok(why) => why.clone(),
                Err(_) => None,
            };
            why.unwrap_or(Closed::Local)
        }
    }

    /// Why the connection is closed, if it is.
    pub fn close_reason(&self) -> Option<Closed> {
        self.0.closed.borrow().clone()
    }

    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        self.0.remote
    }

    /// Caps what the peer may have sent that is not yet read, over all
    /// streams (HTTP/2's connection window), from now on; at most
    /// [`http2::CONNECTION_WINDOW`].
    pub fn set_receive_window(&self, bytes: u64) {
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.0
            .window
            .send_replace(bytes.min(http2::CONNECTION_WINDOW));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; a poisoned one is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl From<h2::Error> for Closed {
    fn from(err: h2::Error) -> Closed {
        Closed::Lost(Arc::new(err))
    }
}

/// Reads the peer's control stream: a refusal frame is the peer's reason
/// for closing. The connection stays up for what is already on its way
/// (the peer lets go of the socket within its linger, and this side once
/// its handles are dropped), so no session loses its last bytes to a close
/// frame that overtook them. Anything else there breaks the protocol. One
/// frame at a time is held.
async fn read_control(
    mut recv: RecvStream,
    closed: Arc<watch::Sender<Option<Closed>>>,
    cancel: CancellationToken,
) {
    let frame = tokio::select! {
        () = cancel.cancelled() => return,
        frame = read_frame(&mut recv) => frame,
    };
    match frame {
        // A peer's words, bound for logs and terminals.
        Ok(Frame::Refused { reason, message }) => {
            set_closed(
                &closed,
                Closed::Peer(Refusal { reason, message }.printable()),
            );
        }
        Ok(_) => {
            set_closed(
                &closed,
                lost("the peer broke the protocol on its control stream"),
            );
            cancel.cancel();
        }
        Err(_) => {}
    }
}

/// PINGs the peer every `keep_alive`, and when poked; resolves with why
/// when one goes unanswered for the idle timeout.
async fn keep_alive(ping: Option<h2::PingPong>, settings: Settings, poke: Arc<Notify>) -> Closed {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(settings.keep_alive) => {}
            () = poke.notified() => {}
        }
        let pong = tokio::time::timeout(settings.idle_timeout, ping.ping(h2::Ping::opaque()));
        match pong.await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => {
                let secs = settings.idle_timeout.as_secs();
                return lost(format!("timed out: no answer within {secs}s"));
            }
        }
    }
}
