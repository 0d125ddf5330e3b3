//! A connection attempt from its first packet to its hello's answer:
//! before the handshake ([`Incoming`]), after it ([`Handshaken`]), and
//! with its hello read ([`Pending`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::Via;
use crate::net::transport::liveness::Prober;
use crate::net::transport::options::TransportOptions;
use crate::net::transport::tcp::{self, Side, TcpConn};
use crate::net::transport::{Closed, Conn, RecvStream, SendStream, Stream};
use crate::ops::defaults::REFUSE_LINGER;
use crate::protocol::{read_frame, write_frame, Frame, FrameError, Reason, Refusal, Role};

/// A connection attempt before its handshake.
pub enum Incoming {
    /// A QUIC Initial (boxed: quinn's is large).
    Quic(Box<quinn::Incoming>),
    /// A TCP connection, TLS still to come.
    Tcp {
        /// The connection.
        stream: TcpStream,
        /// Its peer.
        remote: SocketAddr,
        /// The TLS configuration it is served with.
        acceptor: TlsAcceptor,
    },
}

/// Why a connection ended before its hello was read.
#[derive(Debug, thiserror::Error)]
pub enum NoHello {
    /// The handshake failed, or the peer went before its hello.
    #[error("{0}")]
    Ended(String),
    /// No hello within the time allowed; the peer has been told so, in
    /// these words.
    #[error("{0}")]
    TimedOut(String),
}

impl Incoming {
    /// The peer's address.
    pub fn remote(&self) -> SocketAddr {
        match self {
            Incoming::Quic(incoming) => incoming.remote_address(),
            Incoming::Tcp { remote, .. } => *remote,
        }
    }

    /// The transport it came over.
    pub fn via(&self) -> Via {
        match self {
            Incoming::Quic(_) => Via::Quic,
            Incoming::Tcp { .. } => Via::Tcp,
        }
    }

    /// Whether the peer has shown that it receives at its address (a TCP
    /// handshake, or a QUIC retry answered): a spoofed source cannot.
    pub fn validated(&self) -> bool {
        match self {
            Incoming::Quic(incoming) => incoming.remote_address_validated(),
            Incoming::Tcp { .. } => true,
        }
    }

    /// Asks the peer to prove its address with a stateless retry (QUIC, one
    /// round trip, no state kept); an attempt that cannot be retried is
    /// dropped unanswered.
    pub fn retry(self) {
        if let Incoming::Quic(incoming) = self {
            if let Err(err) = (*incoming).retry() {
                // Only an address that is already validated cannot be retried.
                err.into_incoming().ignore();
            }
        }
    }

    /// Drops the attempt unanswered: the peer waits out its own timeout
    /// rather than trying again at once.
    pub fn ignore(self) {
        if let Incoming::Quic(incoming) = self {
            (*incoming).ignore();
        }
    }

    /// Refuses the attempt: over QUIC the peer hears at once that the
    /// relay is busy; a TCP connection is closed.
    pub fn refuse(self) {
        if let Incoming::Quic(incoming) = self {
            (*incoming).refuse();
        }
    }

    /// Completes the transport's handshake (TLS, within QUIC or over TCP).
    /// A TCP peer that asks for another protocol fails here, before any of
    /// ours is read.
    pub async fn handshake(self) -> Result<Handshaken, NoHello> {
        let ended =
            |err: &dyn std::fmt::Display| NoHello::Ended(format!("handshake failed: {err}"));
        match self {
            Incoming::Quic(incoming) => {
                let conn = async { (*incoming).accept()?.await }.await;
                conn.map(|c| Handshaken::Quic(Conn::Quic(c)))
                    .map_err(|e| ended(&e))
            }
            Incoming::Tcp {
                stream,
                remote,
                acceptor,
            } => match tcp::accept(stream, &acceptor).await {
                Ok(tls) => Ok(Handshaken::Tcp(Box::new(tls), remote)),
                Err(err) => Err(ended(&err)),
            },
        }
    }
}

/// A TLS stream the relay accepted over TCP.
type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// A connection whose handshake is done, its hello still to read.
pub enum Handshaken {
    /// A QUIC connection; the hello comes on its first stream.
    Quic(Conn),
    /// A TLS stream over TCP, and its peer; the hello comes as a raw frame.
    Tcp(Box<Tls>, SocketAddr),
}

impl Handshaken {
    /// Reads the hello, within `timeout`. A peer that sends none in time
    /// is told so and closed.
    pub async fn hello(self, timeout: Duration) -> Result<Pending, NoHello> {
        let late = || format!("no hello within {timeout:?}");
        match self {
            Handshaken::Quic(conn) => {
                let hello = tokio::time::timeout(timeout, async {
                    let Stream { send, mut recv } = conn.accept().await?;
                    let frame = read_frame(&mut recv).await;
                    Ok::<_, Closed>((send, recv, frame))
                })
                .await;
                match hello {
                    Ok(Ok((send, recv, hello))) => Ok(Pending {
                        conn,
                        answer: Answer::Quic(Arc::new(tokio::sync::Mutex::new(send)), Some(recv)),
                        hello: Some(hello),
                    }),
                    Ok(Err(err)) => Err(NoHello::Ended(format!(
                        "connection ended before its hello: {err}"
                    ))),
                    Err(_) => {
                        conn.close(Reason::Protocol, &late());
                        Err(NoHello::TimedOut(late()))
                    }
                }
            }
            Handshaken::Tcp(mut tls, remote) => {
                match tokio::time::timeout(timeout, read_frame(&mut tls)).await {
                    Ok(Err(FrameError::Io(err))) => Err(NoHello::Ended(format!(
                        "connection ended before its hello: {err}"
                    ))),
                    Ok(hello) => Ok(Pending {
                        conn: Conn::Tcp(TcpConn::pending(remote)),
                        answer: Answer::Tcp(Some(tls)),
                        hello: Some(hello),
                    }),
                    Err(_) => {
                        let refusal = Refusal::new(Reason::Protocol, late());
                        say_last(&mut tls, &refusal).await;
                        Err(NoHello::TimedOut(late()))
                    }
                }
            }
        }
    }
}

/// A connection with its hello read, waiting for admission's answer. Its
/// [`Conn`] exists already (a host is registered before its welcome is
/// out); over TCP, HTTP/2 starts on it with the welcome.
pub struct Pending {
    conn: Conn,
    answer: Answer,
    hello: Option<Result<Frame, FrameError>>,
}

/// Where a hello's answer goes: the QUIC control stream, or the TLS
/// stream before HTTP/2 starts on it.
enum Answer {
    /// The control stream: its sending half (shared with the connection's
    /// [`Prober`]), and its receiving half until the hello is taken.
    Quic(Arc<tokio::sync::Mutex<SendStream>>, Option<RecvStream>),
    /// Taken when HTTP/2 starts.
    Tcp(Option<Box<Tls>>),
}

impl Pending {
    /// The connection.
    pub fn conn(&self) -> &Conn {
        &self.conn
    }

    /// What asks the peer whether it is still there, once its hello is
    /// answered.
    pub fn prober(&self) -> Prober {
        let control = match &self.answer {
            Answer::Quic(send, _) => Some(send.clone()),
            Answer::Tcp(_) => None,
        };
        Prober::new(&self.conn, control)
    }

    /// The hello, the first time it is asked for.
    pub fn take_hello(&mut self) -> Option<Result<Frame, FrameError>> {
        self.hello.take()
    }

    /// After a good hello: only probes follow it on a peer's control
    /// stream; they are read and dropped from now on, at a bounded rate
    /// ([`crate::net::transport::liveness::absorb_probes`]). (Over TCP
    /// nothing more is read before HTTP/2 starts; HTTP/2 answers PINGs.)
    pub fn hello_taken(&mut self) {
        if let Answer::Quic(_, control) = &mut self.answer {
            if let Some(recv) = control.take() {
                tokio::spawn(crate::net::transport::liveness::absorb_probes(recv));
            }
        }
    }

    /// Sends a refusal, lets the peer read it, and closes the connection
    /// with the refusal's code and words.
    pub async fn refuse(&mut self, refusal: Refusal) {
        match &mut self.answer {
            Answer::Quic(send, _) => {
                // The close below carries the same words, whatever credit
                // the peer grants.
                if let Ok(mut send) = send.try_lock() {
                    send.refuse(&refusal);
                }
                let _ = tokio::time::timeout(REFUSE_LINGER, self.conn.closed()).await;
            }
            Answer::Tcp(tls) => {
                if let Some(mut tls) = tls.take() {
                    say_last(&mut tls, &refusal).await;
                }
            }
        }
        self.conn.close(refusal.reason, &refusal.message);
    }

    /// Sends `welcome` within `timeout`: a peer that withholds flow-control
    /// credit must not stay admitted without expiry or revocation being
    /// enforced. Over TCP, HTTP/2 then starts, with the relay opening
    /// streams towards a host and accepting a client's, at most `streams`
    /// of them. False if the welcome did not go out.
    pub async fn welcome(
        &mut self,
        welcome: &Frame,
        timeout: Duration,
        options: &TransportOptions,
        streams: u32,
    ) -> bool {
        let side = match welcome {
            Frame::Welcome {
                role: Role::Host, ..
            } => Side::Opens,
            _ => Side::Accepts,
        };
        let settings = tcp::Settings {
            window: options.window(),
            max_streams: streams,
            keep_alive: options.keep_alive,
            idle_timeout: options.idle_timeout,
        };
        let sent = tokio::time::timeout(timeout, async {
            match (&mut self.answer, &self.conn) {
                (Answer::Quic(send, _), _) => {
                    write_frame(&mut *send.lock().await, welcome).await.is_ok()
                }
                (Answer::Tcp(tls), Conn::Tcp(conn)) => {
                    let Some(mut tls) = tls.take() else {
                        return false;
                    };
                    if write_frame(&mut tls, welcome).await.is_err() {
                        return false;
                    }
                    conn.start(*tls, side, settings).await.is_ok()
                }
                (Answer::Tcp(_), Conn::Quic(_)) => false,
            }
        });
        matches!(sent.await, Ok(true))
    }
}

/// Writes `refusal` as the last frame on a TLS stream, ends it, and waits
/// within [`REFUSE_LINGER`] for the peer to close its end, so that the
/// frame is read rather than lost to a reset.
async fn say_last(tls: &mut Tls, refusal: &Refusal) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let said = async {
        write_frame(&mut *tls, &refusal.frame())
            .await
            .map_err(std::io::Error::other)?;
        tls.shutdown().await?;
        // Whatever the peer still sends is read and dropped, a buffer at
        // a time, until its end.
        let mut sink = [0u8; 4096];
        while tls.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSE_LINGER, said).await;
}
