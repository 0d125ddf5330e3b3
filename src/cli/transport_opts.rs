//! The transport flags every role takes: keep-alive, idle timeout, stream
//! window, congestion control, and for peers the transport and how often
//! QUIC is tried again.

use anyhow::{bail, Context};
use bytesize::ByteSize;
use clap::Args;

use super::HumanDuration;
use crate::net::transport::options::{MAX_STREAM_WINDOW, MIN_STREAM_WINDOW, STREAM_WINDOW};
use crate::net::transport::quic::congestion::CONGESTION;
use crate::net::transport::{Congestion, TransportOptions};

/// Keep-alive and idle timeout.
#[derive(Debug, Clone, Args)]
pub struct TransportOpt {
    /// Interval of keep-alive packets; keeps NAT mappings open.
    #[arg(long, env = "SHELLRELAY_KEEP_ALIVE", default_value_t = HumanDuration(crate::ops::defaults::KEEP_ALIVE), value_name = "DURATION")]
    pub(super) keep_alive: HumanDuration,
    /// Silence after which the peer is considered gone.
    #[arg(long, env = "SHELLRELAY_IDLE_TIMEOUT", default_value_t = HumanDuration(crate::ops::defaults::IDLE_TIMEOUT), value_name = "DURATION")]
    pub(super) idle_timeout: HumanDuration,
    /// Receive window of each session stream: a session moves at most this much per round trip, and a stalled one holds at most this much here. Raise it for long fat paths (64KiB to 64MiB).
    #[arg(long, env = "SHELLRELAY_STREAM_WINDOW", default_value_t = ByteSize::b(STREAM_WINDOW.into()), value_name = "BYTES")]
    pub(super) stream_window: ByteSize,
    /// Congestion controller [default: bbr].
    #[arg(
        long,
        env = "SHELLRELAY_CONGESTION",
        value_enum,
        value_name = "ALGORITHM"
    )]
    pub(super) congestion: Option<Congestion>,
}

impl TransportOpt {
    pub(super) fn options(&self) -> anyhow::Result<TransportOptions> {
        self.options_or(None)
    }

    /// [`TransportOpt::options`], with `congestion` from a config file
    /// where no flag or variable set it.
    pub(super) fn options_or(
        &self,
        congestion: Option<Congestion>,
    ) -> anyhow::Result<TransportOptions> {
        if self.keep_alive >= self.idle_timeout {
            bail!("--keep-alive must be shorter than --idle-timeout");
        }
        let (min, max) = (MIN_STREAM_WINDOW, MAX_STREAM_WINDOW);
        let stream_window = u32::try_from(self.stream_window.as_u64())
            .ok()
            .filter(|w| (min..=max).contains(w))
            .with_context(|| {
                format!(
                    "--stream-window must be between {} and {}, not {}",
                    ByteSize::b(min.into()).display().iec(),
                    ByteSize::b(max.into()).display().iec(),
                    self.stream_window.display().iec()
                )
            })?;
        Ok(TransportOptions {
            keep_alive: self.keep_alive.0,
            idle_timeout: self.idle_timeout.0,
            stream_window,
            congestion: self.congestion.or(congestion).unwrap_or(CONGESTION),
            via: crate::net::transport::Transport::default(),
            quic_retry: crate::ops::defaults::QUIC_RETRY,
        })
    }
}
