//! Where the relay's answer to a hello goes, and how: over QUIC on the
//! peer's control stream; over TCP as a raw frame on the TLS stream, after
//! which HTTP/2 starts on it (a welcome) or it closes (a refusal).

use super::State;
use crate::defaults::REFUSE_LINGER;
use crate::protocol::{write_frame, Frame, Reason, Refusal};
use crate::transport::tcp::{self, Side};
use crate::transport::{Conn, RecvStream, SendStream};

/// A TLS stream the relay accepted over TCP.
pub(super) type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Where a hello's answer goes: the QUIC control stream, or the TLS
/// stream before HTTP/2 starts on it.
pub(super) enum Answer {
    /// The control stream, both halves.
    Quic(SendStream, RecvStream),
    /// Taken when HTTP/2 starts.
    Tcp(Option<Box<Tls>>),
}

impl Answer {
    /// After a good hello: nothing follows it on a peer's control stream in
    /// this version, and stopping the stream keeps a peer from parking data
    /// there. (Over TCP nothing more is read before HTTP/2 starts.)
    pub(super) fn hello_taken(&mut self) {
        if let Answer::Quic(_, recv) = self {
            recv.stop(Reason::Done);
        }
    }

    /// Sends a refusal, lets the peer read it, and closes the connection
    /// with the refusal's code and words.
    pub(super) async fn refuse(&mut self, state: &State, conn: &Conn, refusal: Refusal) {
        state.metrics.refused(refusal.reason);
        match self {
            Answer::Quic(send, _) => {
                // The close below carries the same words, whatever credit
                // the peer grants.
                send.refuse(&refusal);
                let _ = tokio::time::timeout(REFUSE_LINGER, conn.closed()).await;
            }
            Answer::Tcp(tls) => {
                if let Some(mut tls) = tls.take() {
                    say_last(&mut tls, &refusal).await;
                }
            }
        }
        conn.close(refusal.reason, &refusal.message);
    }

    /// Sends `welcome` within `timeout`: a peer that withholds flow-control
    /// credit must not stay admitted without expiry or revocation being
    /// enforced. Over TCP, HTTP/2 then starts on `conn` with `settings`.
    pub(super) async fn welcome(
        &mut self,
        conn: &Conn,
        welcome: &Frame,
        timeout: std::time::Duration,
        side: Side,
        settings: tcp::Settings,
    ) -> bool {
        let sent = tokio::time::timeout(timeout, async {
            match (self, conn) {
                (Answer::Quic(send, _), _) => write_frame(send, welcome).await.is_ok(),
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
pub(super) async fn say_last(tls: &mut Tls, refusal: &Refusal) {
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
