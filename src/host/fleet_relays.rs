//! A host agent on a fleet of relays named by DNS: the `k` relays chosen
//! for its host id, looked up again from time to time, each with a
//! registration of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::instances::Instances;
use super::session::Sessions;
use super::{keep_registered, HostConfig};
use crate::access::token::TokenSource;
use crate::net::fleet::{self, Fleet};
use crate::net::transport::dial::RelayAddr;
use crate::ops::memory::Trim;
use crate::ops::tasks::Tasks;

/// Keeps a registration with each of the `k` relays of the fleet `name`
/// chosen for this host, looking at DNS again every `refresh`: a relay that
/// leaves the choice is let go (its resumable sessions resume through the
/// others; the rest end with it), and one that
/// enters it is registered with. A relay that is down but still in DNS
/// stays chosen, and its registration keeps trying; clients reach the host
/// through the others meanwhile.
pub(super) async fn follow_fleet(
    name: &RelayAddr,
    fleet: Fleet,
    config: &HostConfig,
    tasks: &Tasks,
    trim: &Trim,
    shared: &(Instances, Arc<Sessions>),
    shutdown: &CancellationToken,
) {
    let mut registered: HashMap<SocketAddr, CancellationToken> = HashMap::new();
    loop {
        match chosen(name, fleet.k, &config.token).await {
            Ok(relays) => {
                let wanted: Vec<SocketAddr> = relays.iter().filter_map(|r| r.at).collect();
                registered.retain(|at, stop| {
                    let keep = wanted.contains(at);
                    if !keep {
                        info!(fleet = %name.addr, relay = %at, "relay no longer chosen for this host; leaving it");
                        stop.cancel();
                    }
                    keep
                });
                for relay in relays {
                    let Some(at) = relay.at else { continue };
                    if registered.contains_key(&at) {
                        continue;
                    }
                    info!(fleet = %name.addr, relay = %at, "relay chosen for this host");
                    let stop = shutdown.child_token();
                    registered.insert(at, stop.clone());
                    let (config, session_tasks, trim) =
                        (config.clone(), tasks.clone(), trim.clone());
                    let shared = shared.clone();
                    tasks.spawn(async move {
                        let _ =
                            keep_registered(&relay, &config, &session_tasks, &trim, &shared, &stop)
                                .await;
                    });
                }
            }
            Err(err) => warn!(fleet = %name.addr, "{err:#}; keeping the relays chosen before"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(fleet.refresh) => {}
        }
    }
}

/// The fleet's relays for the host id in this agent's token.
async fn chosen(name: &RelayAddr, k: usize, token: &TokenSource) -> anyhow::Result<Vec<RelayAddr>> {
    let claims = crate::access::token::peek_claims(&token.load()?)?;
    fleet::relays_for(name, &claims.sub, k).await
}
