//! The forwarder with several relays, or a fleet: which relays to ask,
//! a new session that does not wait on a relay that stopped answering, and
//! QUIC tried again on a connection that fell back to TCP.

use super::*;
use crate::net::transport::dial::Turn;
use crate::ops::defaults::SESSION_FALLBACK_MAX;

impl Forwarder {
    /// Records how long a session took to get `ready`.
    pub(super) fn ready_after(&self, took: std::time::Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.last_ready
            .store(micros, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long a new session waits on the relay in use alone:
    /// [`SESSION_FALLBACK`], or on a long path three times the last
    /// session's wait for `ready`, up to [`SESSION_FALLBACK_MAX`].
    fn fallback_after(&self) -> std::time::Duration {
        let last = self.last_ready.load(std::sync::atomic::Ordering::Relaxed);
        let paced = std::time::Duration::from_micros(last.saturating_mul(3));
        paced.clamp(SESSION_FALLBACK, SESSION_FALLBACK_MAX)
    }

    /// The relays to ask: `relays`, or the fleet's relays for the host.
    pub(super) async fn candidates(&self) -> Result<Vec<RelayAddr>, ConnectError> {
        let (Some(fleet), [name]) = (self.config.fleet, self.config.relays.as_slice()) else {
            return Ok(self.config.relays.clone());
        };
        let host = match &self.config.host {
            Some(host) => host.clone(),
            None => {
                let token = self.config.token.load().map_err(ConnectError::setup)?;
                let claims =
                    crate::access::token::peek_claims(&token).map_err(ConnectError::setup)?;
                claims.only_host().map(str::to_owned).ok_or_else(|| {
                    ConnectError::setup(anyhow::anyhow!(
                        "the token covers several hosts: name one with --host, which picks the \
                         fleet's relays"
                    ))
                })?
            }
        };
        crate::net::fleet::relays_for(name, &host, fleet.k)
            .await
            .map_err(ConnectError::setup)
    }

    /// Opens a session stream and waits for `ready`. With several relays,
    /// one that has not answered within [`SESSION_FALLBACK`] is not waited
    /// for alone: the others are asked too, and the first `ready` wins. A
    /// relay that crashed leaves its connections looking alive until
    /// their idle timeout, and this is how new sessions get past it.
    pub async fn open(&self) -> Result<Opened, OpenError> {
        self.open_with(None).await
    }

    /// [`Forwarder::open`], asking the host for `ask`: to make the session
    /// resumable, or to take one up again.
    pub async fn open_with(&self, ask: Option<&Resume>) -> Result<Opened, OpenError> {
        if let Some(opened) = self.open_direct(ask).await? {
            return Ok(opened);
        }
        let current = self.open_current(ask);
        if self.config.relays.len() < 2 && self.config.fleet.is_none_or(|f| f.k < 2) {
            return current.await;
        }
        let fallback = self.fallback_after();
        tokio::pin!(current);
        tokio::select! {
            opened = &mut current => return match opened {
                // The host may be registered with another relay but not
                // this one, or this relay may be going away.
                Err(OpenError::Refused(r))
                    if matches!(r.reason, Reason::HostOffline | Reason::ShuttingDown) =>
                {
                    let why = format!("refused the session ({})", r.message);
                    self.open_elsewhere(&why, ask).await.map_err(|_| OpenError::Refused(r))
                }
                opened => opened,
            },
            () = tokio::time::sleep(fallback) => {}
        }
        let why = format!("did not answer within {fallback:?}");
        let elsewhere = self.open_elsewhere(&why, ask);
        tokio::pin!(elsewhere);
        tokio::select! {
            opened = &mut current => match opened {
                Ok(opened) => Ok(opened),
                // Every relay was tried already.
                Err(err @ OpenError::Connect(_)) => Err(err),
                Err(err) => elsewhere.await.map_err(|_| err),
            },
            opened = &mut elsewhere => match opened {
                Ok(opened) => Ok(opened),
                Err(_) => current.await,
            },
        }
    }

    /// A session through another relay than the current one's (which
    /// `why` says what is wrong with); on success, that relay's connection
    /// becomes the current one. One session at a time looks for another
    /// relay: the others wait, then use the connection it made.
    pub(super) async fn open_elsewhere(
        &self,
        why: &str,
        ask: Option<&Resume>,
    ) -> Result<Opened, OpenError> {
        let skip = self.link.lock().await.relay.clone();
        let _one_at_a_time = self.switching.lock().await;
        let now = self.link.lock().await.relay.clone();
        if let (Some(now), Some(skip)) = (&now, &skip) {
            if !now.same(skip) {
                // Another session moved while this one waited.
                return self.open_current(ask).await;
            }
        }
        let others: Vec<RelayAddr> = (self.candidates().await?.into_iter())
            .filter(|r| skip.as_ref().is_none_or(|s| !s.same(r)))
            .collect();
        let (which, link) = dial::connect_any(
            &others,
            &self.config.token,
            Role::Client,
            self.config.host.as_deref(),
            &|err| self.is_final(err),
        )
        .await?;
        let relay = others[which].clone();
        let ready = open_on(&link.conn, ask, None).await?;
        let was = skip.as_ref().map(RelayAddr::name).unwrap_or_default();
        warn!(relay = %was, "the relay in use {why}; moved to {}", relay.name());
        let opened = Opened {
            session: ready.session,
            host: link.host.clone(),
            conn: link.conn.clone(),
            stream: ready.stream,
            resume: ready.resume,
            direct: false,
        };
        let mut state = self.link.lock().await;
        if let Some(old) = state.current.take() {
            // Dead, or slow: sessions on it carry on while it lives.
            drop(old);
        }
        self.install(&mut state, link, relay);
        Ok(opened)
    }
}

/// While the forwarder is on TCP, tries QUIC every
/// [`crate::net::transport::TransportOptions::quic_retry`]
/// ([`dial::back_to_quic`]); once it answers, new sessions go over QUIC,
/// and the TCP connection goes once its sessions (which hold it) have
/// ended.
pub(super) async fn retry_quic(
    link: Arc<tokio::sync::Mutex<LinkState>>,
    config: ClientConfig,
    relay: RelayAddr,
    tasks: Tasks,
) {
    let on_tcp = |state: &LinkState| {
        state.relay.as_ref().is_some_and(|r| r.same(&relay))
            && state
                .current
                .as_ref()
                .is_some_and(|l| matches!(l.conn, Conn::Tcp(_)) && l.conn.close_reason().is_none())
    };
    let turn = || async {
        match on_tcp(&*link.lock().await) {
            true => Turn::Try,
            false => Turn::Stop,
        }
    };
    let host = config.host.as_deref();
    let Some(new) = dial::back_to_quic(&relay, &config.token, Role::Client, host, None, turn).await
    else {
        return;
    };
    let mut state = link.lock().await;
    if on_tcp(&state) {
        info!("QUIC answers again; new sessions go over QUIC");
        install(&mut state, new, relay.clone(), &tasks);
    }
}
