//! `shellrelay connect`: one session to a host over stdin and stdout, for
//! ssh's `ProxyCommand`. It opens the session as the client forwarder does
//! and reads nothing from stdin until the host side reports `ready`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context as TaskContext, Poll};

use tokio::io::{AsyncWrite, BufWriter};
use tracing::{debug, info, Instrument};

use crate::client::{ClientConfig, Forwarder, Opened};
use crate::net::transport;
use crate::ops::defaults::SHUTDOWN_GRACE;
use crate::ops::signals::{Signal, Signals};
use crate::protocol::Reason;
use crate::session::offer::{answered, Offer};
use crate::session::resume::{self, Outcome, Resumable, Side};
use crate::session::splice;

/// How long a resumable session may take to end after ssh hung up.
const HANGUP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes from the stream gathered into one write to stdout: stdout is
/// written on a blocking thread, one hand-off per write.
const STDOUT_BUFFER: usize = 256 * 1024;

/// Opens one session to the configured host and copies stdin to it and it
/// to stdout until both directions end. Stdout carries only the session's
/// bytes: every message goes to stderr through the caller.
///
/// SIGHUP (which ssh sends its `ProxyCommand` when it exits) ends the
/// session quietly; SIGINT and SIGTERM abort it and make an error.
pub async fn run(config: ClientConfig) -> anyhow::Result<()> {
    let mut signals = Signals::new(&[Signal::Hangup, Signal::Interrupt, Signal::Terminate])?;
    let forwarder = Forwarder::new(config);
    let offer = forwarder.offer();
    let started = tokio::select! {
        opened = forwarder.open_with(offer.as_ref().map(|o| &o.ask)) => Ok(opened),
        signal = signals.recv() => Err(signal),
    };
    let opened = match started {
        Ok(Ok(opened)) => opened,
        Ok(Err(err)) => {
            forwarder.close().await;
            return Err(err.into());
        }
        // ssh gave up before the session was ready: nothing to report.
        Err(Signal::Hangup) => {
            forwarder.close().await;
            return Ok(());
        }
        Err(signal) => {
            forwarder.close().await;
            anyhow::bail!("interrupted ({signal}) before the session was ready");
        }
    };
    let who = forwarder.who().unwrap_or_default();
    let span = tracing::info_span!(
        "session",
        session = opened.session,
        host = %opened.host,
        subject = who.subject,
        jti = who.jti.unwrap_or_default()
    );
    serve(&forwarder, opened, offer, &mut signals)
        .instrument(span)
        .await
}

/// Carries the session `opened` between stdin and stdout until it ends.
async fn serve(
    forwarder: &Forwarder,
    opened: Opened,
    offer: Option<Offer>,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    // Until the session ends, the relay's silence is watched for.
    let _under_way = forwarder.session_started();
    let (host, conn, direct) = (opened.host, opened.conn, opened.direct);
    let mut stream = opened.stream;
    let resumable = match answered(offer, opened.resume.as_ref()) {
        Ok(resumable) => resumable,
        Err(why) => {
            transport::abort(&mut stream, Reason::Protocol);
            forwarder.close().await;
            anyhow::bail!("session to host {host}: {why}");
        }
    };
    let path = if direct { "direct" } else { "relay" };
    info!(path, resumable = resumable.is_some(), "session started");
    if let Some(resumable) = resumable {
        let result = carry(forwarder, &resumable, (&mut stream, direct), signals).await;
        forwarder.close().await;
        return result.map_err(|why| anyhow::anyhow!("session to host {host} ended: {why}"));
    }
    // Only now, with `ready` in, is stdin read: ssh's first bytes wait in
    // the pipe until the host side can take them.
    let stdin = splice::Reader(tokio::io::stdin());
    let stdout = BufWriter::with_capacity(STDOUT_BUFFER, Stdout(tokio::io::stdout()));
    let interrupted = tokio::select! {
        t = splice::io(stdin, stdout, &mut stream) => {
            info!(to_host = t.sent, to_client = t.received, aborted = t.aborted, "session ended");
            if t.aborted {
                let why = conn
                    .refusal()
                    .map(|r| r.message)
                    .unwrap_or_else(|| "aborted".into());
                forwarder.close().await;
                anyhow::bail!("session to host {host} ended: {why}");
            }
            None
        }
        signal = signals.recv() => match signal {
            Signal::Hangup => {
                // ssh is done with the session: what it wrote has been sent.
                // Let the host side end too (sshd closes right after ssh's
                // disconnect), so that the session ends cleanly everywhere
                // rather than in an abort; what comes is for nobody.
                let _ = stream.send.finish();
                splice::drain(&mut stream.recv, SHUTDOWN_GRACE).await;
                None
            }
            signal => Some(signal),
        },
    };
    if let Some(signal) = interrupted {
        transport::abort(&mut stream, Reason::Aborted);
        forwarder.close().await;
        anyhow::bail!("interrupted ({signal})");
    }
    // Closing the connection drops stream data not yet delivered: wait for
    // the host side to have every byte, within the grace period.
    if tokio::time::timeout(SHUTDOWN_GRACE, stream.send.stopped())
        .await
        .is_err()
    {
        debug!("stream not acknowledged within the grace period");
    }
    forwarder.close().await;
    Ok(())
}

/// Carries a resumable session between stdin and stdout, resuming it when
/// its path breaks, until it ends or a signal comes (SIGHUP ends it
/// quietly); the error says why it did not end well.
async fn carry(
    forwarder: &Forwarder,
    session: &Resumable,
    (stream, direct): (&mut transport::Stream, bool),
    signals: &mut Signals,
) -> Result<(), String> {
    let mut stdin = splice::Reader(tokio::io::stdin());
    let mut stdout = BufWriter::with_capacity(STDOUT_BUFFER, Stdout(tokio::io::stdout()));
    let on = (&mut *stream, direct);
    let mut carried = Box::pin(forwarder.carry(session, on, &mut stdin, &mut stdout));
    let outcome = tokio::select! {
        outcome = &mut carried => outcome,
        signal = signals.recv() => {
            if signal != Signal::Hangup {
                drop(carried);
                session.abort(stream).await;
                return Err(format!("interrupted ({signal})"));
            }
            // ssh is done with the session and has closed stdin: the
            // session ends the usual way, both ends acknowledging each
            // other's end, if that takes a moment; otherwise quietly.
            match tokio::time::timeout(HANGUP_GRACE, &mut carried).await {
                Ok(outcome) => outcome,
                Err(_) => {
                    drop(carried);
                    session.end_data(stream).await;
                    return Ok(());
                }
            }
        }
    };
    drop(carried);
    let (sent, received) = session.moved();
    info!(
        to_host = sent,
        to_client = received,
        ?outcome,
        "session ended"
    );
    resume::end(session, &outcome, stream).await;
    match outcome {
        Outcome::Done => {
            // The host has every byte (it acknowledged them); the
            // stream's end goes out before the connection closes.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, stream.send.stopped()).await;
            Ok(())
        }
        Outcome::Aborted(Side::Peer) => Err("aborted by the host side".into()),
        Outcome::Aborted(Side::Local) => Err("aborted (stdin or stdout failed)".into()),
        Outcome::Failed(why) => Err(why.to_string()),
        Outcome::Broken(why) => Err(why.to_string()),
    }
}

/// Stdout whose shutdown also ends it for the reader (ssh sees end of
/// file) while stdin may still be read: fd 1 is pointed at `/dev/null`
/// rather than closed, so that no file opened later takes its number.
struct Stdout(tokio::io::Stdout);

impl AsyncWrite for Stdout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.0).poll_shutdown(cx))?;
        // Everything is written; failing to end stdout early only means the
        // reader sees the end when the process exits.
        if let Err(err) = end_stdout() {
            debug!(%err, "could not end stdout early");
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(not(unix))]
fn end_stdout() -> io::Result<()> {
    // Stdout ends when the process does.
    Ok(())
}

#[cfg(unix)]
fn end_stdout() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    // SAFETY: dup2 only takes two descriptor numbers; `null` is open, and
    // fd 1 is this process's stdout, which nothing else writes to.
    if unsafe { libc::dup2(null.as_raw_fd(), libc::STDOUT_FILENO) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
