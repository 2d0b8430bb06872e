//! Prometheus metrics: one registry for the process, recorded where things happen (the HTTP
//! middleware and the adapters: prober, DNS provider, webhook sender, decisions), plus gauges read
//! from PostgreSQL and the engine when `/metrics` is scraped. Labels are low-cardinality: route
//! (the operation id), method, status, CDN, scheme, outcome, provider, result, state — never a
//! domain or a customer.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

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
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub state: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_buckets() -> Histogram {
    // 1 ms … ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_seconds: Histograms<RouteLabels>,
    pub probes: Family<ProbeLabels, Counter>,
    pub probe_seconds: Histograms<ProbeKindLabels>,
    pub storms_opened: Counter,
    pub storms_closed: Counter,
    pub dns_calls: Family<CallLabels, Counter>,
    pub dns_seconds: Histograms<ProviderLabels>,
    pub webhook_deliveries: Family<ResultLabels, Counter>,
    // Read at scrape time.
    pub domains: Family<StateLabels, Gauge>,
    pub outbox_pending: Gauge,
    pub outbox_oldest_seconds: Gauge,
    pub db_connections: Family<PoolLabels, Gauge>,
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
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests by method, route and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP request latency by route",
            Unit::Seconds,
            m.http_seconds.clone(),
        );
        r.register(
            "probes",
            "Probes by CDN, scheme and outcome",
            m.probes.clone(),
        );
        r.register_with_unit(
            "probe_duration",
            "Probe latency by CDN and scheme",
            Unit::Seconds,
            m.probe_seconds.clone(),
        );
        r.register(
            "storms_opened",
            "Storms opened by this node",
            m.storms_opened.clone(),
        );
        r.register(
            "storms_closed",
            "Storms closed by this node",
            m.storms_closed.clone(),
        );
        r.register(
            "dns_calls",
            "Calls to the DNS provider by provider and result",
            m.dns_calls.clone(),
        );
        r.register_with_unit(
            "dns_call_duration",
            "DNS provider call latency",
            Unit::Seconds,
            m.dns_seconds.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook delivery attempts by result",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "domains",
            "Domains by storm state (cluster-wide)",
            m.domains.clone(),
        );
        r.register(
            "outbox_pending",
            "Webhook deliveries waiting to be sent (cluster-wide)",
            m.outbox_pending.clone(),
        );
        r.register_with_unit(
            "outbox_oldest_age",
            "Age of the oldest pending webhook delivery",
            Unit::Seconds,
            m.outbox_oldest_seconds.clone(),
        );
        r.register(
            "db_connections",
            "PostgreSQL pool connections by state",
            m.db_connections.clone(),
        );
        Self { registry, ..m }
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

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Refreshes the scrape-time gauges from PostgreSQL (cluster-wide facts) and the pool.
pub async fn refresh(pool: &sqlx::PgPool) -> sqlx::Result<()> {
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
    Ok(())
}
