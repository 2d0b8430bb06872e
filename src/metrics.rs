//! Prometheus metrics: one registry for the process, recorded where things happen (the HTTP
//! middleware and the adapters: prober, DNS provider and its rate limiter, webhook sender,
//! decisions, billing, usage), plus gauges read from PostgreSQL when `/metrics` is scraped.
//!
//! Labels are low-cardinality: route (the operation id), method, status, CDN, scheme, outcome,
//! provider, result, state, DNS zone, node — never a customer, and a domain only when
//! `metrics_per_domain` is on. Gauges marked *cluster-wide* are the same on every node (read
//! from the shared database): aggregate them with `max`, not `sum`.
//!
//! `deploy/` holds the Grafana dashboard and the Prometheus alert rules built on these names;
//! a test checks that every metric they use is exposed here.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The OpenAPI operation id (`get_service`, …), `docs`, or `unmatched`.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub cdn: &'static str,
    pub scheme: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeKindLabels {
    pub cdn: &'static str,
    pub scheme: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub provider: &'static str,
    pub result: CallResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CallResult {
    Ok,
    Error,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `cache` or `database`.
    pub source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// `not_started`, `late` or `breached`.
    pub alert: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UsageLabels {
    /// `api` (`POST …/usage-snapshots`) or `ingest` (a CDN's analytics API).
    pub via: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub node: String,
    pub region: String,
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CdnLabels {
    pub cdn: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainCdnLabels {
    pub domain: String,
    pub cdn: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_buckets() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn slow_buckets() -> Histogram {
    // 1 s … ~34 min: detection and failover latencies.
    Histogram::new(exponential_buckets(1.0, 2.0, 12))
}

/// Registers metrics under the `tranche_` prefix and notes the series names each exposes.
struct Registrar<'a> {
    registry: &'a mut Registry,
    series: Vec<String>,
}

impl Registrar<'_> {
    fn add<M: Metric + EncodeMetric + Clone>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        metric: &M,
    ) {
        let base = match &unit {
            Some(u) => format!("tranche_{name}_{}", u.as_str()),
            None => format!("tranche_{name}"),
        };
        let suffixes: &[&str] = match metric.metric_type() {
            MetricType::Counter => &["_total"],
            MetricType::Histogram => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        self.series
            .extend(suffixes.iter().map(|suffix| format!("{base}{suffix}")));
        match unit {
            Some(unit) => self
                .registry
                .register_with_unit(name, help, unit, metric.clone()),
            None => self.registry.register(name, help, metric.clone()),
        }
    }
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Every series name `/metrics` can show (see [`Metrics::series`]).
    series: Vec<String>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: Histograms<RouteLabels>,
    pub probes: Family<ProbeLabels, Counter>,
    pub probe_seconds: Histograms<ProbeKindLabels>,
    pub storms_opened: Counter,
    pub storms_closed: Counter,
    pub dns_calls: Family<CallLabels, Counter>,
    pub dns_seconds: Histograms<ProviderLabels>,
    pub webhook_deliveries: Family<ResultLabels, Counter>,
    pub storm_detection_seconds: Histogram,
    pub failover_seconds: Histogram,
    pub dns_limiter_wait: Histogram,
    pub billing_runs: Family<ResultLabels, Counter>,
    pub billing_lines: Counter,
    pub billing_seconds: Histogram,
    pub usage_snapshots: Family<UsageLabels, Counter>,
    pub usage_events: Family<ResultLabels, Counter>,
    pub metering_commit_seconds: Histogram,
    pub metering_batch_events: Histogram,
    pub slo_alerts: Family<AlertLabels, Counter>,
    pub api_key_lookups: Family<SourceLabels, Counter>,
    pub info: Family<InfoLabels, Gauge>,
    // Read at scrape time.
    pub domains: Family<StateLabels, Gauge>,
    pub outbox_pending: Gauge,
    pub outbox_oldest_seconds: Gauge,
    pub db_connections: Family<PoolLabels, Gauge>,
    pub dns_pending: Family<ZoneLabels, Gauge>,
    pub node_heartbeat_age: Family<NodeLabels, Gauge>,
    pub node_shards: Family<NodeLabels, Gauge>,
    pub lease_acquisitions: Gauge,
    pub cert_earliest_expiry: Family<CdnLabels, Gauge>,
    pub domain_availability: Family<DomainCdnLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub domain_cert_expiry: Family<DomainCdnLabels, Gauge>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("tranche");
        let m = Self {
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(seconds_buckets),
            probes: Family::default(),
            probe_seconds: Family::new_with_constructor(seconds_buckets),
            storms_opened: Counter::default(),
            storms_closed: Counter::default(),
            dns_calls: Family::default(),
            dns_seconds: Family::new_with_constructor(seconds_buckets),
            webhook_deliveries: Family::default(),
            domains: Family::default(),
            outbox_pending: Gauge::default(),
            outbox_oldest_seconds: Gauge::default(),
            db_connections: Family::default(),
            storm_detection_seconds: slow_buckets(),
            failover_seconds: slow_buckets(),
            dns_limiter_wait: seconds_buckets(),
            billing_runs: Family::default(),
            billing_lines: Counter::default(),
            billing_seconds: seconds_buckets(),
            usage_snapshots: Family::default(),
            usage_events: Family::default(),
            metering_commit_seconds: seconds_buckets(),
            metering_batch_events: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            slo_alerts: Family::default(),
            api_key_lookups: Family::default(),
            info: Family::default(),
            dns_pending: Family::default(),
            node_heartbeat_age: Family::default(),
            node_shards: Family::default(),
            lease_acquisitions: Gauge::default(),
            cert_earliest_expiry: Family::default(),
            domain_availability: Family::default(),
            domain_cert_expiry: Family::default(),
            registry: Registry::default(),
            series: Vec::new(),
        };
        let mut r = Registrar {
            registry: &mut registry,
            series: Vec::new(),
        };
        r.add(
            "http_requests",
            "HTTP requests by method, route and status",
            None,
            &m.http_requests,
        );
        r.add(
            "http_request_duration",
            "HTTP request latency by route",
            Some(Unit::Seconds),
            &m.http_seconds,
        );
        r.add(
            "probes",
            "Probes by CDN, scheme and outcome",
            None,
            &m.probes,
        );
        r.add(
            "probe_duration",
            "Probe latency by CDN and scheme",
            Some(Unit::Seconds),
            &m.probe_seconds,
        );
        r.add(
            "storms_opened",
            "Storms opened by this node",
            None,
            &m.storms_opened,
        );
        r.add(
            "storms_closed",
            "Storms closed by this node",
            None,
            &m.storms_closed,
        );
        r.add(
            "dns_calls",
            "Calls to the DNS provider by provider and result",
            None,
            &m.dns_calls,
        );
        r.add(
            "dns_call_duration",
            "DNS provider call latency",
            Some(Unit::Seconds),
            &m.dns_seconds,
        );
        r.add(
            "webhook_deliveries",
            "Webhook delivery attempts by result",
            None,
            &m.webhook_deliveries,
        );
        r.add(
            "domains",
            "Domains by storm state (cluster-wide)",
            None,
            &m.domains,
        );
        r.add(
            "outbox_pending",
            "Webhook deliveries waiting to be sent (cluster-wide)",
            None,
            &m.outbox_pending,
        );
        r.add(
            "outbox_oldest_age",
            "Age of the oldest pending webhook delivery",
            Some(Unit::Seconds),
            &m.outbox_oldest_seconds,
        );
        r.add(
            "db_connections",
            "PostgreSQL pool connections by state",
            None,
            &m.db_connections,
        );
        r.add(
            "storm_detection",
            "From the earliest failed primary probe in the window to the storm decision",
            Some(Unit::Seconds),
            &m.storm_detection_seconds,
        );
        r.add(
            "failover",
            "From a storm's start to the provider confirming traffic moved off the primary",
            Some(Unit::Seconds),
            &m.failover_seconds,
        );
        r.add(
            "dns_limiter_wait",
            "How long DNS provider calls waited for the provider rate limiter",
            Some(Unit::Seconds),
            &m.dns_limiter_wait,
        );
        r.add(
            "billing_runs",
            "Billing runs by result (ok, error, fenced)",
            None,
            &m.billing_runs,
        );
        r.add(
            "billing_lines",
            "Invoice lines written (usage snapshots billed)",
            None,
            &m.billing_lines,
        );
        r.add(
            "billing_run_duration",
            "Billing run duration",
            Some(Unit::Seconds),
            &m.billing_seconds,
        );
        r.add(
            "usage_snapshots",
            "Usage snapshots received by path and outcome",
            None,
            &m.usage_snapshots,
        );
        r.add(
            "usage_events",
            "Usage events received, by result (accepted, duplicate, refused)",
            None,
            &m.usage_events,
        );
        r.add(
            "slo_alerts",
            "SLO alerts raised (each once per SLO, business date and occurrence), by alert",
            None,
            &m.slo_alerts,
        );
        r.add(
            "api_key_lookups",
            "API-key authentications, by where the key was found (cache, database)",
            None,
            &m.api_key_lookups,
        );
        r.add(
            "metering_commit_duration",
            "Metering group commits: one transaction's duration",
            Some(Unit::Seconds),
            &m.metering_commit_seconds,
        );
        r.add(
            "metering_batch_events",
            "Metering group commits: events per transaction",
            None,
            &m.metering_batch_events,
        );
        r.add(
            "node_info",
            "This node: id, region and version (always 1)",
            None,
            &m.info,
        );
        r.add(
            "dns_pending_changes",
            "Domains whose desired DNS weights differ from those applied, by zone (cluster-wide)",
            None,
            &m.dns_pending,
        );
        r.add(
            "node_heartbeat_age",
            "Time since each node's last heartbeat (cluster-wide; nodes seen in the last hour)",
            Some(Unit::Seconds),
            &m.node_heartbeat_age,
        );
        r.add(
            "node_shards",
            "Shards each node held at its last heartbeat (cluster-wide)",
            None,
            &m.node_shards,
        );
        r.add("lease_acquisitions", "Shard lease acquisitions ever (the sum of the fencing epochs; its rate is lease churn)", None, &m.lease_acquisitions);
        r.add(
            "cert_earliest_expiry_timestamp",
            "Earliest edge certificate expiry seen by the probes, per CDN (cluster-wide)",
            Some(Unit::Seconds),
            &m.cert_earliest_expiry,
        );
        r.add(
            "domain_availability_ratio",
            "Per domain and CDN: availability over the policy window (metrics_per_domain only)",
            None,
            &m.domain_availability,
        );
        r.add(
            "domain_cert_expiry_timestamp",
            "Per domain and CDN: the edge certificate's expiry (metrics_per_domain only)",
            Some(Unit::Seconds),
            &m.domain_cert_expiry,
        );
        let series = r.series;
        Self {
            registry,
            series,
            ..m
        }
    }

    /// Every series name `/metrics` shows once the metric has a sample (counters with
    /// `_total`, histograms with `_bucket`, `_sum` and `_count`): what dashboards may query.
    pub fn series(&self) -> &[String] {
        &self.series
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records one probe.
    pub fn probe(
        &self,
        cdn: &'static str,
        scheme: &'static str,
        outcome: &'static str,
        took: Duration,
    ) {
        self.probes
            .get_or_create(&ProbeLabels {
                cdn,
                scheme,
                outcome,
            })
            .inc();
        self.probe_seconds
            .get_or_create(&ProbeKindLabels { cdn, scheme })
            .observe(took.as_secs_f64());
    }

    /// Records one HTTP request (`route`: the operation id).
    pub fn http(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.http_seconds
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records one DNS provider call.
    pub fn dns_call(&self, provider: &'static str, ok: bool, took: Duration) {
        let result = if ok {
            CallResult::Ok
        } else {
            CallResult::Error
        };
        self.dns_calls
            .get_or_create(&CallLabels { provider, result })
            .inc();
        self.dns_seconds
            .get_or_create(&ProviderLabels { provider })
            .observe(took.as_secs_f64());
    }
}

impl Metrics {
    /// Records one billing run (`Err` of a fenced run counts as `fenced`).
    pub fn billing_run(
        &self,
        result: Result<
            &tranche_actors::ports::BillingRunSummary,
            &tranche_actors::ports::StoreError,
        >,
        started: chrono::DateTime<chrono::Utc>,
    ) {
        use tranche_actors::ports::StoreError;
        let result_label = match result {
            Ok(summary) => {
                self.billing_lines
                    .inc_by(u64::from(summary.snapshots_billed));
                "ok"
            }
            Err(StoreError::Fenced { .. }) => "fenced",
            Err(_) => "error",
        };
        self.billing_runs
            .get_or_create(&ResultLabels {
                result: result_label,
            })
            .inc();
        let took = (chrono::Utc::now() - started).to_std().unwrap_or_default();
        self.billing_seconds.observe(took.as_secs_f64());
    }

    /// Records usage snapshots received (`via`: `api` or `ingest`).
    pub fn usage_ingested(
        &self,
        outcomes: impl Iterator<Item = tranche_core::usage::revision::Outcome>,
        via: &'static str,
    ) {
        for outcome in outcomes {
            self.usage_snapshots
                .get_or_create(&UsageLabels {
                    via,
                    outcome: outcome.as_str(),
                })
                .inc();
        }
    }

    /// Announces this node (`tranche_node_info`).
    pub fn set_node(&self, node: &str, region: &str) {
        self.info
            .get_or_create(&InfoLabels {
                node: node.to_owned(),
                region: region.to_owned(),
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Refreshes the scrape-time gauges from PostgreSQL (cluster-wide facts) and the pool;
/// `per_domain`: also the per-domain series.
pub async fn refresh(pool: &sqlx::PgPool, per_domain: bool) -> sqlx::Result<()> {
    let m = &*METRICS;
    let states: Vec<(String, i64)> = sqlx::query_as(
        "select coalesce(st.state, 'healthy'), count(*) from service_domains d
           left join domain_states st on st.domain_id = d.id
          where d.deleted_at is null group by 1",
    )
    .fetch_all(pool)
    .await?;
    m.domains.clear();
    for (state, n) in states {
        m.domains.get_or_create(&StateLabels { state }).set(n);
    }
    let (pending, oldest): (i64, Option<f64>) = sqlx::query_as(
        "select count(*), extract(epoch from now() - min(created_at))::float8
           from webhook_deliveries where status = 'pending'",
    )
    .fetch_one(pool)
    .await?;
    m.outbox_pending.set(pending);
    m.outbox_oldest_seconds.set(oldest.unwrap_or(0.0) as i64);
    let size = i64::from(pool.size());
    let idle = pool.num_idle() as i64;
    m.db_connections
        .get_or_create(&PoolLabels { state: "idle" })
        .set(idle);
    m.db_connections
        .get_or_create(&PoolLabels { state: "busy" })
        .set(size - idle);

    let pending: Vec<(String, i64)> = sqlx::query_as(
        "select d.dns_zone, count(*) filter (
                  where coalesce(p.primary_weight, st.desired_primary_weight, 100)
                     <> coalesce(r.applied_primary_weight, 100))
           from service_domains d
           left join domain_states st on st.domain_id = d.id
           left join dns_pins p on p.domain_id = d.id
           left join dns_records r on r.domain_id = d.id
          where d.deleted_at is null and d.steering_enabled
            and d.verification_status = 'verified' and d.dns_zone is not null
          group by 1",
    )
    .fetch_all(pool)
    .await?;
    m.dns_pending.clear();
    for (zone, n) in pending {
        m.dns_pending.get_or_create(&ZoneLabels { zone }).set(n);
    }

    let nodes: Vec<(String, f64, i32)> = sqlx::query_as(
        "select node_id, extract(epoch from now() - heartbeat_at)::float8, cardinality(shards)
           from cluster_nodes",
    )
    .fetch_all(pool)
    .await?;
    m.node_heartbeat_age.clear();
    m.node_shards.clear();
    for (node, age, shards) in nodes {
        let labels = NodeLabels { node };
        m.node_heartbeat_age.get_or_create(&labels).set(age as i64);
        m.node_shards.get_or_create(&labels).set(i64::from(shards));
    }
    let acquisitions: Option<i64> = sqlx::query_scalar("select sum(epoch)::int8 from shard_leases")
        .fetch_one(pool)
        .await?;
    m.lease_acquisitions.set(acquisitions.unwrap_or(0));

    let certs: Vec<(String, String, Option<f64>, Option<f64>)> = sqlx::query_as(
        "select d.hostname, c.cdn,
                extract(epoch from c.expires)::float8, c.availability::float8
           from service_domains d
           join domain_observations o on o.domain_id = d.id
          cross join lateral (values
                ('primary', (o.primary_last ->> 'cert_expires_at')::timestamptz, o.primary_avail),
                ('backup', (o.backup_last ->> 'cert_expires_at')::timestamptz, o.backup_avail)
          ) c(cdn, expires, availability)
          where d.deleted_at is null",
    )
    .fetch_all(pool)
    .await?;
    m.cert_earliest_expiry.clear();
    m.domain_availability.clear();
    m.domain_cert_expiry.clear();
    let mut earliest: std::collections::BTreeMap<String, f64> = Default::default();
    for (domain, cdn, expires, availability) in certs {
        if let Some(expires) = expires {
            let e = earliest.entry(cdn.clone()).or_insert(expires);
            *e = e.min(expires);
        }
        if per_domain {
            let labels = DomainCdnLabels { domain, cdn };
            if let Some(expires) = expires {
                m.domain_cert_expiry
                    .get_or_create(&labels)
                    .set(expires as i64);
            }
            if let Some(a) = availability {
                m.domain_availability.get_or_create(&labels).set(a);
            }
        }
    }
    for (cdn, expires) in earliest {
        m.cert_earliest_expiry
            .get_or_create(&CdnLabels { cdn })
            .set(expires as i64);
    }
    Ok(())
}
