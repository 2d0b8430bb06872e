//! Test harness: one throwaway PostgreSQL cluster per test binary, a fresh database per test
//! (cloned from a migrated template), and the real application booted on port 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::OnceCell;
use tranche::config::{Secret, Settings};
use tranche::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tranche::startup::Application;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const TEMPLATE_DB: &str = "tranche_template";

/// Connection options to the cluster's server (database chosen per use).
static CLUSTER: OnceLock<PgConnectOptions> = OnceLock::new();
/// Set once the template database is migrated.
static TEMPLATE: OnceCell<()> = OnceCell::const_new();

/// Starts the cluster on a thread that lives as long as the test process. The server gets a
/// parent-death signal tied to that thread, so it stops when the test binary exits, however it
/// exits.
fn cluster() -> &'static PgConnectOptions {
    CLUSTER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("test-postgres".into())
            .spawn(move || {
                remove_stale_clusters();
                let root = cluster_root(std::process::id());
                let _ = std::fs::remove_dir_all(&root);
                match EmbeddedPostgres::start(&EmbeddedOptions::throwaway(&root)) {
                    Ok(server) => {
                        tx.send(Ok(server.connect_options("postgres"))).unwrap();
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(e) => tx.send(Err(format!("{e:#}"))).unwrap(),
                }
            })
            .unwrap();
        rx.recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("test PostgreSQL failed to start: {e}"))
    })
}

fn cluster_root(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("tranche-test-{pid}"))
}

/// Clusters of test runs that are gone (their server removed `postmaster.pid` on the way out).
fn remove_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("tranche-test-")) else {
            continue;
        };
        let alive = PathBuf::from(format!("/proc/{pid}")).exists();
        if !alive && !entry.path().join("pg/postmaster.pid").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

async fn admin_connection() -> PgConnection {
    PgConnection::connect_with(cluster())
        .await
        .expect("connect to test cluster")
}

/// A fresh database with every migration applied.
pub async fn fresh_database() -> PgPool {
    TEMPLATE
        .get_or_init(|| async {
            let mut conn = admin_connection().await;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "create database {TEMPLATE_DB}"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
            let pool = tranche::postgres::pool::pool(cluster().clone().database(TEMPLATE_DB), 2)
                .await
                .unwrap();
            tranche::postgres::pool::migrate(&pool).await.unwrap();
            pool.close().await;
        })
        .await;
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = admin_connection().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "create database {name} template {TEMPLATE_DB}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    tranche::postgres::pool::pool(cluster().clone().database(&name), 5)
        .await
        .unwrap()
}

/// How a request authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// `X-Customer-ID` only (dev mode).
    Header(i64),
    /// `?customer_id=` only (dev mode).
    Query(i64),
    /// `Authorization: Bearer <key>`.
    Key(String),
    /// A key plus an `X-Customer-ID` header.
    KeyAndHeader(String, i64),
    /// The admin token.
    Admin,
    /// A raw `Authorization` header value.
    Raw(String),
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub pool: PgPool,
    pub client: reqwest::Client,
    /// Where `metrics_listen` serves, when the test set it.
    pub metrics_addr: Option<SocketAddr>,
    /// The actor engine, when the test started one.
    pub engine: Option<tranche::node::RunningEngine>,
}

/// With `TEST_LOG` set (an `EnvFilter`, e.g. `info` or `tranche_core=debug`), the
/// application's logs go to the test's captured output (shown for failing tests).
fn init_test_logs() {
    use tracing_subscriber::{EnvFilter, fmt};
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = fmt()
            .with_env_filter(EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Engine settings for tests: fast leases, reconciliation and flushes.
pub fn test_engine_config(node: &str) -> tranche_actors::EngineConfig {
    let mut config = tranche_actors::EngineConfig::new(node);
    config.lease_interval = std::time::Duration::from_millis(200);
    config.reconcile_interval = std::time::Duration::from_millis(500);
    config.flush_interval = std::time::Duration::from_millis(200);
    config
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Checks the events of the `expected` types in the database against the documented event
/// schema (the OpenAPI `Event` union, unknown fields refused), and that there is at least one
/// of each. Called by the tests that drive the real engine, so what the triggers and the
/// engine write is what the document says.
pub async fn assert_events_conform(pool: &PgPool, expected: &[&str]) {
    let rows: Vec<(
        uuid::Uuid,
        String,
        chrono::DateTime<chrono::Utc>,
        i64,
        Value,
    )> = sqlx::query_as(
        "select id, type, occurred_at, customer_id, payload from events
              where type = any($1)",
    )
    .bind(expected)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (id, ty, at, customer, payload) in rows {
        let body = tranche::webhook::envelope(id, &ty, at, customer, payload);
        if let Err(e) = tranche::api::events::conforms(&body) {
            panic!("event does not match its documented schema: {e}\n{body:#}");
        }
        seen.insert(ty);
    }
    for ty in expected {
        assert!(seen.contains(*ty), "no {ty} event among {seen:?}");
    }
}

pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Response {
    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn expect(self, status: u16) -> Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts an error response with `code` (and `field`, if given).
    #[track_caller]
    pub fn expect_error(self, status: u16, code: &str, field: Option<&str>) -> Self {
        let resp = self.expect(status);
        assert_eq!(resp.body["code"], code, "body: {}", resp.text);
        assert!(
            resp.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "body: {}",
            resp.text
        );
        assert_eq!(resp.body["field"].as_str(), field, "body: {}", resp.text);
        resp
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Boots the real application (dev mode on, admin token set unless `configure` changes them).
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    init_test_logs();
    spawn_app_on(fresh_database().await, configure).await
}

/// Boots the real application on `pool` (a migrated database), as [`spawn_app_with`] does.
pub async fn spawn_app_on(pool: PgPool, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        dev: true,
        admin_token: Some(Secret::new(ADMIN_TOKEN)),
        // The test edges listen on loopback.
        probe_allow_private: true,
        // Tests fire requests far faster than a client should; the rate-limit test sets its own.
        api_rate_per_second: 1e6,
        api_burst: 1_000_000,
        ..Settings::default()
    };
    configure(&mut settings);
    if settings.dev {
        tranche::postgres::customers::ensure_demo(&pool)
            .await
            .unwrap();
    }
    let app = Application::build(&settings, pool.clone()).await.unwrap();
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    TestApp {
        addr,
        pool,
        client,
        metrics_addr,
        engine: None,
    }
}

impl TestApp {
    /// Every domain of `service` as `GET /v1/services/{id}/state` shows it (dev customer).
    pub async fn domain_states(&self, service: i64) -> Vec<Value> {
        let body = self
            .get(&format!("/v1/services/{service}/state"), &Auth::Header(1))
            .await
            .expect(200)
            .body;
        body["domains"].as_array().cloned().unwrap_or_default()
    }

    /// Starts an engine node on this app's database, probing with `prober`.
    pub async fn start_engine(
        &mut self,
        prober: std::sync::Arc<dyn tranche_actors::ports::Prober>,
    ) {
        self.start_engine_with_dns(prober, None).await;
    }

    /// Starts an engine node that also steers DNS through `provider`.
    pub async fn start_engine_with_dns(
        &mut self,
        prober: std::sync::Arc<dyn tranche_actors::ports::Prober>,
        provider: Option<std::sync::Arc<dyn tranche_actors::ports::DnsProvider>>,
    ) {
        let node = format!(
            "test-node-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let dns = provider.map(|provider| tranche::node::DnsOptions {
            provider,
            rate_per_sec: 50.0,
            burst: 50,
        });
        let engine =
            tranche::node::start(test_engine_config(&node), self.pool.clone(), prober, dns)
                .await
                .unwrap();
        self.engine = Some(engine);
    }

    /// Starts an engine node (no probing targets needed) with the optional parts in `options`.
    pub async fn start_engine_with(&mut self, options: tranche::node::EngineOptions) {
        self.engine = Some(start_node(&self.pool, options).await);
    }

    /// The running engine (panics if none was started).
    pub fn engine(&self) -> &tranche_actors::Engine {
        &self.engine.as_ref().expect("no engine started").engine
    }
}

/// Starts one engine node on `pool` with a probe-everything network prober.
pub async fn start_node(
    pool: &PgPool,
    options: tranche::node::EngineOptions,
) -> tranche::node::RunningEngine {
    let node = format!(
        "test-node-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let prober = std::sync::Arc::new(tranche::prober::NetworkProber::new(&[], true).unwrap());
    tranche::node::start_with(test_engine_config(&node), pool.clone(), prober, options)
        .await
        .unwrap()
}

/// Billing for tests: runs only when asked (`bill_now`; the tick is an hour), bills windows as
/// soon as they end, never finalizes on its own (a year's grace).
pub fn test_billing() -> tranche_core::billing::BillingSettings {
    tranche_core::billing::BillingSettings {
        tick: std::time::Duration::from_secs(3600),
        settle: std::time::Duration::ZERO,
        grace: std::time::Duration::from_secs(365 * 86_400),
        ..Default::default()
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        auth: &Auth,
        body: Option<&str>,
    ) -> Response {
        let mut url = self.url(path);
        if let Auth::Query(id) = auth {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("customer_id={id}"));
        }
        let mut req = self.client.request(method, url);
        req = match auth {
            Auth::None | Auth::Query(_) => req,
            Auth::Header(id) => req.header("X-Customer-ID", id.to_string()),
            Auth::Key(key) => req.bearer_auth(key),
            Auth::KeyAndHeader(key, id) => {
                req.bearer_auth(key).header("X-Customer-ID", id.to_string())
            }
            Auth::Admin => req.bearer_auth(ADMIN_TOKEN),
            Auth::Raw(value) => req.header("Authorization", value),
        };
        if let Some(body) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        let resp = req.send().await.expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Response {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str, auth: &Auth) -> Response {
        self.request(Method::GET, path, auth, None).await
    }

    pub async fn post(&self, path: &str, auth: &Auth, body: Value) -> Response {
        self.request(Method::POST, path, auth, Some(&body.to_string()))
            .await
    }

    pub async fn patch(&self, path: &str, auth: &Auth, body: Value) -> Response {
        self.request(Method::PATCH, path, auth, Some(&body.to_string()))
            .await
    }

    pub async fn delete(&self, path: &str, auth: &Auth) -> Response {
        self.request(Method::DELETE, path, auth, None).await
    }

    /// Creates an API key with `auth` (`body`: name, scopes, …); the created key and its
    /// credentials.
    pub async fn create_key(&self, auth: &Auth, body: Value) -> (Value, Auth) {
        let created = self.post("/v1/api-keys", auth, body).await.expect(201).body;
        let secret = created["secret"].as_str().unwrap().to_owned();
        (created, Auth::Key(secret))
    }

    /// Provisions a customer through the admin API; returns its id and API key.
    pub async fn create_customer(&self, name: &str) -> (i64, String) {
        let resp = self
            .post(
                "/v1/admin/customers",
                &Auth::Admin,
                serde_json::json!({ "name": name }),
            )
            .await
            .expect(201);
        let id = resp.body["customer"]["id"].as_i64().unwrap();
        let key = resp.body["api_key"]["secret"].as_str().unwrap().to_owned();
        (id, key)
    }

    /// Creates a service for `auth`; returns its id.
    pub async fn create_service(&self, auth: &Auth, name: &str) -> i64 {
        self.create(
            "/v1/services",
            auth,
            serde_json::json!({ "name": name, "primary_cdn": "cloudflare", "backup_cdn": "fastly" }),
        )
        .await
    }

    /// POSTs `body` to `path`, expects 201 and returns the created resource's id.
    pub async fn create(&self, path: &str, auth: &Auth, body: Value) -> i64 {
        self.post(path, auth, body).await.expect(201).body["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no id from POST {path}"))
    }
}

/// What the local DNS server answers for a name.
#[derive(Debug, Clone)]
pub enum DnsAnswer {
    A(std::net::Ipv4Addr),
    /// One TXT record with these character-strings.
    Txt(Vec<String>),
}

/// A minimal authoritative DNS server on loopback (UDP), speaking the real wire format: answers
/// from a table that tests change while it runs, NXDOMAIN for unknown names, an empty answer
/// for other types, and an optional delay before every answer (a slow server).
pub struct LocalDns {
    pub addr: SocketAddr,
    table: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<DnsAnswer>>>>,
    delay: std::sync::Arc<std::sync::Mutex<std::time::Duration>>,
}

impl LocalDns {
    pub async fn start() -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let table: std::sync::Arc<
            std::sync::Mutex<std::collections::HashMap<String, Vec<DnsAnswer>>>,
        > = Default::default();
        let delay: std::sync::Arc<std::sync::Mutex<std::time::Duration>> = Default::default();
        let socket = std::sync::Arc::new(socket);
        let (t, d) = (table.clone(), delay.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let query = buf[..len].to_vec();
                let (socket, table, delay) = (socket.clone(), t.clone(), d.clone());
                tokio::spawn(async move {
                    let wait = *delay.lock().unwrap();
                    tokio::time::sleep(wait).await;
                    let resp = answer(&query, &table.lock().unwrap());
                    if let Some(resp) = resp {
                        let _ = socket.send_to(&resp, peer).await;
                    }
                });
            }
        });
        Self { addr, table, delay }
    }

    /// Sets (replaces) the answers for `name`; an empty list removes it (NXDOMAIN).
    pub fn set(&self, name: &str, answers: Vec<DnsAnswer>) {
        let mut table = self.table.lock().unwrap();
        if answers.is_empty() {
            table.remove(&name.to_ascii_lowercase());
        } else {
            table.insert(name.to_ascii_lowercase(), answers);
        }
    }

    /// Delays every answer from now on.
    pub fn slow_down(&self, by: std::time::Duration) {
        *self.delay.lock().unwrap() = by;
    }
}

fn answer(
    query: &[u8],
    table: &std::collections::HashMap<String, Vec<DnsAnswer>>,
) -> Option<Vec<u8>> {
    let len = query.len();
    if len < 12 {
        return None;
    }
    // Question: labels from byte 12, then QTYPE and QCLASS.
    let mut pos = 12;
    let mut labels = Vec::new();
    while pos < len && query[pos] != 0 {
        let l = query[pos] as usize;
        labels.push(String::from_utf8_lossy(query.get(pos + 1..pos + 1 + l)?).to_ascii_lowercase());
        pos += 1 + l;
    }
    let question_end = pos + 5;
    let qtype = u16::from_be_bytes([*query.get(pos + 1)?, *query.get(pos + 2)?]);
    let name = labels.join(".");
    let found = table.get(&name);
    let records: Vec<Vec<u8>> = found
        .map(|answers| {
            answers
                .iter()
                .filter_map(|a| match (a, qtype) {
                    (DnsAnswer::A(ip), 1) => Some((1u16, ip.octets().to_vec())),
                    (DnsAnswer::Txt(strings), 16) => Some((
                        16u16,
                        strings
                            .iter()
                            .flat_map(|s| {
                                let mut b = vec![s.len() as u8];
                                b.extend_from_slice(s.as_bytes());
                                b
                            })
                            .collect(),
                    )),
                    _ => None,
                })
                .map(|(rtype, rdata)| {
                    let mut r = vec![0xc0, 0x0c];
                    r.extend_from_slice(&rtype.to_be_bytes());
                    // Class IN, TTL 1 s: resolvers re-ask at once when a test changes an answer.
                    r.extend_from_slice(&[0, 1, 0, 0, 0, 1]);
                    r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
                    r.extend_from_slice(&rdata);
                    r
                })
                .collect()
        })
        .unwrap_or_default();
    let mut resp = Vec::with_capacity(128);
    resp.extend_from_slice(&query[..2]); // id
    let rcode = if found.is_some() { 0 } else { 3 };
    resp.extend_from_slice(&[0x84, 0x80 | rcode]); // QR, AA, RA, rcode
    resp.extend_from_slice(&[0, 1]);
    resp.extend_from_slice(&(records.len() as u16).to_be_bytes());
    resp.extend_from_slice(&[0, 0, 0, 0]);
    resp.extend_from_slice(&query[12..question_end]);
    for r in records {
        resp.extend_from_slice(&r);
    }
    Some(resp)
}

/// A service of the dev customer whose storms come and go within seconds: probes every second,
/// a 3 s window of at least 2, a 2 s cooldown, 2 failures (successes) in a row. Returns its id.
pub async fn fast_service(app: &TestApp) -> i64 {
    let demo = Auth::Header(1);
    let service = app.create_service(&demo, "web").await;
    app.post(
        &format!("/v1/services/{service}/storm-policies"),
        &demo,
        serde_json::json!({ "probe_interval_seconds": 1, "window_seconds": 3, "min_samples": 2,
                "cooldown_seconds": 2, "consecutive_failures": 2, "consecutive_successes": 2 }),
    )
    .await
    .expect(201);
    service
}

/// Adds `n` domains `d{i}.{zone}` in DNS zone `zone` to `service`, probed over HTTP through the
/// `primary` and `backup` edges; returns their names.
pub async fn add_zone_domains(
    app: &TestApp,
    service: i64,
    zone: &str,
    n: usize,
    (primary, backup): (SocketAddr, SocketAddr),
) -> Vec<String> {
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("d{i}.{zone}");
        app.post(
            &format!("/v1/services/{service}/domains"),
            &Auth::Header(1),
            serde_json::json!({ "name": name, "dns_zone": zone,
                    "primary_target": primary.to_string(),
                    "backup_target": backup.to_string(),
                    "probe_scheme": "http", "probe_timeout_ms": 500 }),
        )
        .await
        .expect(201);
        names.push(name);
    }
    names
}
