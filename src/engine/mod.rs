//! The engine's adapters: its ports implemented over PostgreSQL ([`store::PgEngineStore`],
//! [`leases::PgLeaseBackend`]), the configuration-change listener, and [`start`], which wires
//! them to the network prober and starts the actor tree (`tranche_actors::engine`).

pub mod leases;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tranche_actors::dns::planner::BatchLimits;
use tranche_actors::dns::provider::DnsProvider;
use tranche_actors::dns::rate::TokenBucket;
use tranche_actors::engine::{DnsSetup, Engine, EngineConfig, RootArgs};
use tranche_actors::probe::Prober;

/// The channel the configuration tables notify on (see the engine migration).
pub const CONFIG_CHANNEL: &str = "tranche_config";

/// A running engine plus its listener task.
pub struct RunningEngine {
    pub engine: Arc<Engine>,
    listener: tokio::task::JoinHandle<()>,
}

impl RunningEngine {
    /// Kills the node's actors as a crash would (for tests and chaos drills).
    pub fn crash(self) {
        self.listener.abort();
        self.engine.abort();
    }

    pub async fn shutdown(self) {
        self.listener.abort();
        let _ = self.listener.await;
        match Arc::try_unwrap(self.engine) {
            Ok(engine) => engine.shutdown().await,
            Err(_) => tracing::warn!("engine still referenced at shutdown"),
        }
    }
}

/// DNS steering settings for [`start`].
pub struct DnsOptions {
    pub provider: Arc<dyn DnsProvider>,
    /// Provider requests per second, node-wide (Route53 allows 5 per account).
    pub rate_per_sec: f64,
    /// Requests allowed at once above the rate.
    pub burst: u32,
}

/// Starts this node's actor tree over `pool`; `dns: None` leaves desired weights unapplied.
pub async fn start(
    config: EngineConfig,
    pool: PgPool,
    prober: Arc<dyn Prober>,
    dns: Option<DnsOptions>,
) -> anyhow::Result<RunningEngine> {
    let store = Arc::new(store::PgEngineStore::new(pool.clone()));
    let leases = Arc::new(leases::PgLeaseBackend::new(pool.clone()));
    let dns = dns.map(|d| DnsSetup {
        store: store.clone(),
        provider: d.provider,
        limiter: Arc::new(TokenBucket::new(d.rate_per_sec, d.burst)),
        limits: BatchLimits::ROUTE53,
    });
    let engine = Arc::new(
        Engine::start(RootArgs {
            config,
            store,
            leases,
            prober,
            dns,
        })
        .await
        .map_err(|e| anyhow::anyhow!("could not start the engine: {e}"))?,
    );
    let listener = tokio::spawn(listen_for_config(pool, engine.clone()));
    Ok(RunningEngine { engine, listener })
}

/// Forwards configuration notifications to the engine. Reconnects after errors; periodic
/// reconciliation covers anything missed meanwhile.
async fn listen_for_config(pool: PgPool, engine: Arc<Engine>) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(CONFIG_CHANNEL).await {
                    tracing::warn!(error = %e, "could not LISTEN for configuration changes");
                } else {
                    loop {
                        match listener.recv().await {
                            Ok(_) => engine.config_changed().await,
                            Err(e) => {
                                tracing::warn!(error = %e, "configuration listener lost its connection");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not connect the configuration listener"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The default node id: `<hostname>-<pid>`.
pub fn default_node_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}
