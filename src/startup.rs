//! [`Application`]: the HTTP server on its listener, ready to run.
//!
//! `Application::build` binds the socket (port 0 picks a free one, which is how tests run many
//! instances side by side) and `run_until_stopped` serves until the shutdown future completes,
//! then drains in-flight requests. The caller owns the pool and the embedded database, so it
//! decides the shutdown order: stop serving, close the pool, stop PostgreSQL.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::Server;
use poem::listener::TcpAcceptor;
use sqlx::PgPool;

use crate::api::guard::{
    ConnectionLimits, GuardedAcceptor, default_max_connections, raise_open_files_limit,
};
use crate::api::{self, ApiContext};
use crate::config::Settings;

/// How long in-flight requests may take to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Application {
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    ctx: Arc<ApiContext>,
    limits: ConnectionLimits,
    idle_timeout: Duration,
    /// `metrics_listen`: serves `GET /metrics` only, without a token.
    metrics_listener: Option<tokio::net::TcpListener>,
    /// The metering batcher, stopped (committing what it holds) once requests have drained.
    batcher: tokio::task::JoinHandle<()>,
}

/// Most usage events in one group commit.
const METERING_MAX_EVENTS: usize = 5000;
/// How long usage events are kept (deduplication promises at least 32 days).
const METERING_RETENTION_DAYS: i64 = 35;

impl Application {
    /// Binds `settings.listen` and prepares the API over `pool`.
    pub async fn build(settings: &Settings, pool: PgPool) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("could not listen on {}", settings.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("could not listen on {addr} (metrics_listen)"))?,
            ),
            None => None,
        };
        let node_id = settings
            .node_id
            .clone()
            .unwrap_or_else(crate::node::default_node_id);
        let (metering, batcher) = ractor::Actor::spawn(
            None,
            tranche_actors::metering_batcher::MeteringBatcher,
            tranche_actors::metering_batcher::BatcherArgs {
                store: Arc::new(crate::postgres::metering::PgMeteringStore::new(
                    pool.clone(),
                )),
                clock: tranche_actors::config::system_clock(),
                node_id: node_id.clone(),
                max_events: METERING_MAX_EVENTS,
                max_inflight: settings.metering_commits_in_flight.clamp(1, 16),
                retention: chrono::Duration::days(METERING_RETENTION_DAYS),
            },
        )
        .await
        .context("could not start the metering batcher")?;
        let ctx = Arc::new(ApiContext {
            key_lookups: crate::postgres::api_keys::KeyLookups::new(pool.clone()),
            service_reads: crate::postgres::services::ServiceReads::new(pool.clone()),
            pool,
            dev: settings.dev,
            admin_token: settings.admin_token.clone(),
            limiter: api::rate_limit::RateLimiter::new(
                settings.api_rate_per_second,
                settings.api_burst,
            ),
            auth_failures: api::rate_limit::RateLimiter::new(
                api::auth::FAILED_AUTH_PER_SECOND,
                api::auth::FAILED_AUTH_BURST,
            ),
            verifier: Arc::new(crate::resolver::HickoryTxt::new(
                &settings.verification_nameservers,
            )?),
            verify_policy: settings.verify_policy(),
            webhook_allow_private: settings.webhook_allow_private,
            probe_allow_private: settings.probe_allow_private,
            readiness_warnings: settings.readiness_warnings(),
            secrets: Arc::new(crate::secrets::SecretBox::new(
                &settings.webhook_secret_keys,
            )?),
            billing: if settings.billing {
                Some(settings.billing_settings()?)
            } else {
                None
            },
            node_id,
            metrics_per_domain: settings.metrics_per_domain,
            metering,
        });
        let open_files = raise_open_files_limit();
        let limits = ConnectionLimits {
            max_connections: settings
                .http_max_connections
                .unwrap_or_else(|| default_max_connections(open_files)),
            header_timeout: settings.http_header_timeout.0,
        };
        Ok(Self {
            listener,
            local_addr,
            ctx,
            limits,
            idle_timeout: settings.http_idle_timeout.0,
            metrics_listener,
            batcher,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Where `metrics_listen` serves, when set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let metrics = match self.metrics_listener {
            Some(listener) => {
                let acceptor = TcpAcceptor::from_tokio(listener)?;
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let app = api::metrics_app(self.ctx.clone());
                let server = tokio::spawn(
                    Server::new_with_acceptor(acceptor)
                        .idle_timeout(self.idle_timeout)
                        .run_with_graceful_shutdown(
                            app,
                            async move {
                                let _ = stopped.await;
                            },
                            Some(Duration::from_secs(1)),
                        ),
                );
                Some((stop, server))
            }
            None => None,
        };
        // Keeps the read caches exact while serving (they are off until it listens).
        let cache_listener = tokio::spawn(crate::postgres::read_cache::listen(
            self.ctx.pool.clone(),
            crate::postgres::read_cache::LISTENER_NAME,
            vec![self.ctx.key_lookups.clone(), self.ctx.service_reads.clone()],
        ));
        let acceptor = GuardedAcceptor::new(TcpAcceptor::from_tokio(self.listener)?, self.limits);
        let metering = self.ctx.metering.clone();
        let served = Server::new_with_acceptor(acceptor)
            .idle_timeout(self.idle_timeout)
            .run_with_graceful_shutdown(api::app(self.ctx), shutdown, Some(DRAIN_TIMEOUT))
            .await;
        cache_listener.abort();
        metering.stop(None);
        let _ = self.batcher.await;
        if let Some((stop, server)) = metrics {
            let _ = stop.send(());
            let _ = server.await;
        }
        served
    }
}
