//! The engine's adapters: its ports implemented over PostgreSQL ([`crate::postgres::engine_store::PgEngineStore`],
//! [`crate::postgres::leases::PgLeaseBackend`], [`crate::postgres::billing::PgBillingStore`], [`crate::postgres::billing::PgUsageStore`]), the configuration-change listener, and [`start`], which wires
//! them to the network prober and starts the actor tree (`tranche_actors`).

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tranche_actors::ports::DnsProvider;
use tranche_actors::ports::Prober;
use tranche_actors::ports::TxtLookup;
use tranche_actors::ports::UsageSource;
use tranche_actors::rate::TokenBucket;
use tranche_actors::slo_tracker::SloChange;
use tranche_actors::{
    BillingSetup, DnsSetup, Engine, EngineConfig, RootArgs, SloSetup, UsageSetup, VantageSetup,
    VerifySetup, WebhookSetup,
};
use tranche_core::billing::BillingSettings;
use tranche_core::dns::planner::BatchLimits;
use tranche_core::usage::UsageSettings;
use tranche_core::verify::Policy;

/// The channel the configuration tables notify on (see the engine migration).
pub const CONFIG_CHANNEL: &str = "tranche_config";

/// A running engine plus its listener task.
pub struct RunningEngine {
    pub engine: Arc<Engine>,
    /// The billing store, when this node bills (its fault injection is for tests and drills).
    pub billing: Option<Arc<crate::postgres::billing::PgBillingStore>>,
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

/// Usage ingestion settings for [`start_with`].
pub struct UsageOptions {
    pub settings: UsageSettings,
    pub sources: Vec<Arc<dyn UsageSource>>,
}

/// The optional parts of a node: each `None` leaves that work to other nodes (or undone).
#[derive(Default)]
pub struct EngineOptions {
    /// DNS steering; `None` leaves desired weights unapplied.
    pub dns: Option<DnsOptions>,
    /// Invoicing.
    pub billing: Option<BillingSettings>,
    /// Usage ingestion from CDN analytics.
    pub usage: Option<UsageOptions>,
    /// Domain ownership verification.
    pub verify: Option<VerifyOptions>,
    /// Webhook delivery (`allow_private`: let deliveries reach private addresses).
    pub webhooks: Option<WebhookOptions>,
    /// Live SLO tracking of batch jobs (one tracker per SLO on the owned shards).
    pub slos: bool,
}

/// Webhook delivery settings for [`start_with`].
pub struct WebhookOptions {
    /// Opens the endpoints' sealed signing secrets.
    pub secrets: Arc<crate::secrets::SecretBox>,
    pub allow_private: bool,
    /// Pause between delivery passes when idle.
    pub idle: Duration,
    /// How long events and their delivery logs are kept.
    pub retention: Duration,
}

/// Events are kept 30 days by default.
pub const EVENT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// Domain verification settings for [`start_with`].
pub struct VerifyOptions {
    pub lookup: Arc<dyn TxtLookup>,
    pub policy: Policy,
    /// How often due checks are looked for.
    pub tick: Duration,
}

/// Starts this node's actor tree over `pool` (probing and storms, plus DNS steering when `dns`
/// is given).
pub async fn start(
    config: EngineConfig,
    pool: PgPool,
    prober: Arc<dyn Prober>,
    dns: Option<DnsOptions>,
) -> anyhow::Result<RunningEngine> {
    start_with(
        config,
        pool,
        prober,
        EngineOptions {
            dns,
            ..EngineOptions::default()
        },
    )
    .await
}

/// Starts this node's actor tree over `pool` with the optional parts in `options`.
pub async fn start_with(
    config: EngineConfig,
    pool: PgPool,
    prober: Arc<dyn Prober>,
    options: EngineOptions,
) -> anyhow::Result<RunningEngine> {
    let EngineOptions {
        dns,
        billing,
        usage,
        verify,
        webhooks,
        slos,
    } = options;
    let slos = slos.then(|| SloSetup {
        store: Arc::new(crate::postgres::slo::PgSloStore::new(pool.clone())),
    });
    let webhooks = match webhooks {
        Some(w) => Some(WebhookSetup {
            store: Arc::new(crate::postgres::outbox::PgWebhookStore::new(
                pool.clone(),
                w.secrets.clone(),
            )),
            sender: Arc::new(crate::webhook::HttpSender::new(w.allow_private)?),
            idle: w.idle,
            retention: w.retention,
        }),
        None => None,
    };
    let verify = verify.map(|v| VerifySetup {
        store: Arc::new(crate::postgres::verification::PgVerificationStore::new(
            pool.clone(),
        )),
        lookup: v.lookup,
        policy: v.policy,
        tick: v.tick,
    });
    let store = Arc::new(crate::postgres::engine_store::PgEngineStore::new(
        pool.clone(),
    ));
    let billing_store = billing
        .as_ref()
        .map(|_| Arc::new(crate::postgres::billing::PgBillingStore::new(pool.clone())));
    let billing = billing
        .zip(billing_store.clone())
        .map(|(settings, store)| BillingSetup { store, settings });
    let usage = usage.map(|u| UsageSetup {
        store: Arc::new(crate::postgres::billing::PgUsageStore::new(pool.clone())),
        settings: u.settings,
        sources: u.sources,
    });
    let leases = Arc::new(crate::postgres::leases::PgLeaseBackend::new(
        pool.clone(),
        config.vantage.clone(),
    ));
    // Several vantages only matter when there may be other regions to hear from.
    let vantages = (config.vantages_per_domain > 1).then(|| VantageSetup {
        bus: Arc::new(crate::postgres::vantages::PgVantageBus::new(pool.clone())),
    });
    let node_id = config.node_id.clone();
    let dns = dns.map(|d| DnsSetup {
        store: store.clone(),
        provider: d.provider,
        limiter: Arc::new(
            TokenBucket::new(d.rate_per_sec, d.burst).with_observer(|wait| {
                crate::metrics::METRICS
                    .dns_limiter_wait
                    .observe(wait.as_secs_f64())
            }),
        ),
        limits: BatchLimits::ROUTE53,
    });
    let engine = Arc::new(
        Engine::start(RootArgs {
            config,
            store,
            leases,
            prober,
            dns,
            billing,
            usage,
            verify,
            webhooks,
            vantages,
            slos,
        })
        .await
        .map_err(|e| anyhow::anyhow!("could not start the engine: {e}"))?,
    );
    let listener = tokio::spawn(listen_for_config(pool, engine.clone(), node_id));
    Ok(RunningEngine {
        engine,
        billing: billing_store,
        listener,
    })
}

/// Job reports wake the SLO trackers (payload: the report as JSON).
pub const JOB_STATUS_CHANNEL: &str = "tranche_job_status";
/// SLO and calendar changes reload their trackers (payload `slo:<id>` or `calendar:<id>`).
pub const SLOS_CHANNEL: &str = "tranche_slos";

/// A `tranche_job_status` payload (`None`: not one; logged).
fn job_report(payload: &str) -> Option<tranche_actors::slo_tracker::JobReported> {
    #[derive(serde::Deserialize)]
    struct Payload {
        customer_id: i64,
        business_date: chrono::NaiveDate,
        application: String,
        job: String,
        run_id: String,
        status: String,
        status_time: chrono::DateTime<chrono::Utc>,
    }
    let p: Payload = serde_json::from_str(payload)
        .inspect_err(|e| tracing::warn!(error = %e, "unreadable job-status notification"))
        .ok()?;
    Some(tranche_actors::slo_tracker::JobReported {
        customer_id: p.customer_id,
        date: p.business_date,
        application: p.application,
        report: tranche_core::slo::performance::Report {
            job: p.job,
            run_id: p.run_id,
            kind: tranche_core::slo::performance::ReportKind::parse(&p.status)?,
            at: p.status_time,
        },
    })
}

/// Forwards configuration notifications, and other nodes' vantage summaries, to the engine.
/// Reconnects after errors; periodic reconciliation covers configuration missed meanwhile, and a
/// summary missed leaves its vantage unknown until the next one.
async fn listen_for_config(pool: PgPool, engine: Arc<Engine>, node_id: String) {
    use crate::postgres::vantages;
    // Its own connection, named so that survivors can end it when they depose this node
    // (`leases::listener_application_name`).
    let pool = crate::postgres::pool::listener_pool(
        &pool,
        &crate::postgres::leases::listener_application_name(&node_id),
    );
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener
                    .listen_all([
                        CONFIG_CHANNEL,
                        vantages::CHANNEL,
                        JOB_STATUS_CHANNEL,
                        SLOS_CHANNEL,
                    ])
                    .await
                {
                    tracing::warn!(error = %e, "could not LISTEN for configuration changes");
                } else {
                    loop {
                        match listener.recv().await {
                            Ok(n) if n.channel() == vantages::CHANNEL => {
                                let mut reports = vantages::decode(n.payload());
                                reports.retain(|r| r.node_id != node_id);
                                if !reports.is_empty() {
                                    engine.vantage_reports(reports).await;
                                }
                            }
                            Ok(n) if n.channel() == JOB_STATUS_CHANNEL => {
                                if let Some(report) = job_report(n.payload()) {
                                    engine.job_reported(report).await;
                                }
                            }
                            Ok(n) if n.channel() == SLOS_CHANNEL => {
                                if let Some(change) = SloChange::parse(n.payload()) {
                                    engine.slos_changed(change).await;
                                }
                            }
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
