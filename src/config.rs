//! Configuration: built-in defaults, then a TOML file, then the environment, then command-line
//! flags (each layer overrides the one before).
//!
//! | Setting              | Environment                                   | Default            |
//! |----------------------|-----------------------------------------------|--------------------|
//! | `listen`             | `TRANCHE_LISTEN`                              | `127.0.0.1:8080`   |
//! | `database_url`       | `DATABASE_URL`, `PG_DSN`, `TRANCHE_DATABASE_URL` | none: embedded  |
//! | `data_dir`           | `TRANCHE_DATA_DIR`                            | `./.tranche`       |
//! | `admin_token`        | `TRANCHE_ADMIN_TOKEN`                         | none: admin API off|
//! | `dev`                | `TRANCHE_DEV`                                 | `false`            |
//! | `log_format`         | `TRANCHE_LOG_FORMAT` (`text`/`json`)          | `text`             |
//! | `metrics_listen`     | `TRANCHE_METRICS_LISTEN`                      | none: `/metrics` on `listen`, admin token |
//! | `metrics_per_domain` | `TRANCHE_METRICS_PER_DOMAIN`                  | `false`            |
//! | `db_max_connections` | `TRANCHE_DB_MAX_CONNECTIONS`                  | `16`               |
//! | `metering_commits_in_flight` | `TRANCHE_METERING_COMMITS_IN_FLIGHT`  | `2`                |
//! | `node_id`            | `TRANCHE_NODE_ID`, `--node-id`                | `<hostname>-<pid>` |
//! | `region`             | `TRANCHE_REGION`, `--region`                  | `default`          |
//! | `vantages_per_domain`| `TRANCHE_VANTAGES_PER_DOMAIN`                 | `3`                |
//! | `engine`             | `TRANCHE_ENGINE`                              | `true`             |
//! | `probe_allow_private`| `TRANCHE_PROBE_ALLOW_PRIVATE`                 | `false`            |
//! | `probe_ca_file`      | `TRANCHE_PROBE_CA_FILE`                       | none               |
//! | `probe_nameservers`  | `TRANCHE_PROBE_NAMESERVERS` (`[ip:port,…]`)   | the system's       |
//! | `probe_tls_reuse_key_share` | `TRANCHE_PROBE_TLS_REUSE_KEY_SHARE`    | `true`             |
//! | `dns_provider`       | `TRANCHE_DNS_PROVIDER` (`auto`/`noop`/`route53`) | `auto`          |
//! | `route53_endpoint_url` | `TRANCHE_ROUTE53_ENDPOINT_URL`              | AWS's              |
//! | `dns_ttl_seconds`    | `TRANCHE_DNS_TTL_SECONDS`                     | `60`               |
//! | `dns_rate_per_second`| `TRANCHE_DNS_RATE_PER_SECOND`                 | `4`                |
//! | `dns_burst`          | `TRANCHE_DNS_BURST`                           | `8`                |
//! | `api_rate_per_second`| `TRANCHE_API_RATE_PER_SECOND`                 | `50`               |
//! | `api_burst`          | `TRANCHE_API_BURST`                           | `100`              |
//! | `webhook_secret_keys`  | `TRANCHE_WEBHOOK_SECRET_KEYS` (`[id:hex, …]`) | none: stored plain |
//! | `http_max_connections` | `TRANCHE_HTTP_MAX_CONNECTIONS`              | half the open-file limit, ≤ 10,000 |
//! | `http_header_timeout`  | `TRANCHE_HTTP_HEADER_TIMEOUT`               | `10s`              |
//! | `http_idle_timeout`    | `TRANCHE_HTTP_IDLE_TIMEOUT`                 | `60s`              |
//! | `verification_nameservers` | `TRANCHE_VERIFICATION_NAMESERVERS`      | the system's       |
//! | `verification_deadline` | `TRANCHE_VERIFICATION_DEADLINE`            | `72h`              |
//! | `verification_recheck`  | `TRANCHE_VERIFICATION_RECHECK`             | `6h`               |
//! | `webhook_allow_private` | `TRANCHE_WEBHOOK_ALLOW_PRIVATE`            | `false`            |
//! | `event_retention`    | `TRANCHE_EVENT_RETENTION`                     | `30d`              |
//! | `billing`            | `TRANCHE_BILLING`                             | `true`             |
//! | `billing_tick`       | `BILLING_TICK`, `TRANCHE_BILLING_TICK`        | `1m`               |
//! | `billing_period`     | `BILLING_PERIOD`, `TRANCHE_BILLING_PERIOD`    | `24h`              |
//! | `billing_settle`     | `TRANCHE_BILLING_SETTLE`                      | `15m`              |
//! | `billing_grace`      | `TRANCHE_BILLING_GRACE`                       | `6h`               |
//! | `billing_rate_cents_per_gb` | `BILLING_RATE_CENTS_PER_GB`, `TRANCHE_…` | `12`              |
//! | `billing_discount_rate` | `BILLING_DISCOUNT_RATE`, `TRANCHE_…`       | `0.5`              |
//! | `usage_tick`         | `USAGE_TICK`, `TRANCHE_USAGE_TICK`            | `5m`               |
//! | `usage_window`       | `USAGE_WINDOW`, `TRANCHE_USAGE_WINDOW`        | `1h`               |
//! | `usage_lookback`     | `USAGE_LOOKBACK`, `TRANCHE_USAGE_LOOKBACK`    | `6h`               |
//! | `cloudflare_account_id` | `CLOUDFLARE_ACCOUNT_ID`, `TRANCHE_…`       | none: no ingestion |
//! | `cloudflare_api_token`  | `CLOUDFLARE_API_TOKEN`, `TRANCHE_…`        | none               |
//! | `cloudflare_base_url`   | `CLOUDFLARE_BASE_URL`, `TRANCHE_…`         | Cloudflare's       |
//!
//! Durations are written `90s`, `5m`, `1h30m`, `24h`, `1d` (or a number of seconds). Money
//! settings are exact decimals (`"0.5"` or `0.5`).
//!
//! The file is `tranche.toml` in the working directory, or the one named by `--config` /
//! `TRANCHE_CONFIG`. Secrets (`admin_token`, passwords inside `database_url`) are never printed:
//! [`Secret`] redacts itself in `Debug` and `Display`.

pub use crate::secrets::Secret;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tranche_core::billing::{BillingSettings, Rates};
use tranche_core::usage::UsageSettings;

/// Everything `tranche` reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// PostgreSQL URL. `None` starts the embedded PostgreSQL under `data_dir`.
    pub database_url: Option<Secret>,
    /// Where the embedded PostgreSQL keeps its data (`<data_dir>/pg`) and socket.
    pub data_dir: PathBuf,
    /// Bearer token for `/v1/admin/*`. `None` disables the admin API.
    pub admin_token: Option<Secret>,
    /// Insecure development mode: trust `X-Customer-ID` without a key; ensure customer 1.
    pub dev: bool,
    /// Log output format.
    pub log_format: LogFormat,
    /// A second address serving only `GET /metrics`, without a token (for a scraper on a
    /// private network). `/metrics` on `listen` always needs the admin token.
    #[serde(deserialize_with = "optional_listen_address")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also export per-domain series (availability and certificate expiry per domain and
    /// CDN). Off by default: one series per domain is a lot for a large installation.
    pub metrics_per_domain: bool,
    /// Size of the Postgres connection pool.
    pub db_max_connections: u32,
    /// Group commits of usage events in flight at once on this node (1–16; each holds a
    /// connection while it runs).
    pub metering_commits_in_flight: usize,
    /// This node's name in the cluster (default `<hostname>-<pid>`); nodes sharing a database
    /// must have distinct ids.
    pub node_id: Option<String>,
    /// This node's vantage: the region its probes see the CDNs from (`eu-west`, `us-east`, …).
    /// A domain is probed from up to `vantages_per_domain` distinct regions and decided by the
    /// policy's quorum of them; nodes in one region count as one vantage.
    pub region: String,
    /// How many distinct regions probe each domain when that many exist (1 turns multi-vantage
    /// probing off). Every node of a cluster must use the same value.
    pub vantages_per_domain: usize,
    /// Run the actor engine (probing, storms). `false` makes an API-only node.
    pub engine: bool,
    /// Let probes reach loopback/private addresses (tests, demos, internal edges).
    pub probe_allow_private: bool,
    /// PEM file of extra CA certificates probes trust (e.g. a private CA in front of edges).
    pub probe_ca_file: Option<PathBuf>,
    /// DNS servers that resolve edge hostnames; empty uses the system's resolver configuration.
    pub probe_nameservers: Vec<SocketAddr>,
    /// HTTPS probes reuse their X25519 key share for 10 seconds rather than making one per
    /// handshake: the key exchange was the largest share of a probe's CPU. It weakens forward
    /// secrecy for probes within that window (they carry nothing secret); `false` restores a
    /// fresh key share per handshake (`prober::key_share`).
    pub probe_tls_reuse_key_share: bool,
    /// Where weighted records are written: `route53`, `noop` (log only), or `auto` (Route53
    /// when AWS credentials are configured in the environment, else noop).
    pub dns_provider: DnsProviderKind,
    /// Route53 endpoint override (e.g. a local `moto_server`).
    pub route53_endpoint_url: Option<String>,
    /// TTL of the weighted records.
    pub dns_ttl_seconds: u64,
    /// Provider requests per second, node-wide (Route53 allows 5 per account).
    pub dns_rate_per_second: f64,
    /// Provider requests allowed at once above the rate.
    pub dns_burst: u32,
    /// Requests per second each API key may make (per node), sustained.
    pub api_rate_per_second: f64,
    /// Requests each API key may make at once above the rate.
    pub api_burst: u32,
    /// Open HTTP connections at most; `None`: half the open-file limit, at most 10,000.
    pub http_max_connections: Option<usize>,
    /// A request head must arrive within this, from when a connection starts waiting for one.
    pub http_header_timeout: HumanDuration,
    /// A connection with no byte in either direction for this long is closed.
    pub http_idle_timeout: HumanDuration,
    /// DNS servers the TXT ownership challenges are looked up with; empty uses the system's.
    pub verification_nameservers: Vec<SocketAddr>,
    /// A pending domain fails verification this long after it was added.
    pub verification_deadline: HumanDuration,
    /// How often verified domains' challenges are re-checked.
    pub verification_recheck: HumanDuration,
    /// Let webhook endpoints point at private/loopback addresses (refused by default).
    pub webhook_allow_private: bool,
    /// Keys webhook signing secrets are sealed with at rest (`<id>:<64 hex digits>`); the first
    /// seals, all open (rotation). Empty: secrets are stored as they are.
    pub webhook_secret_keys: Vec<Secret>,
    /// How long events and their webhook delivery logs are kept (pending deliveries always).
    pub event_retention: HumanDuration,
    /// Run invoicing (CustomerBillingActors) on this node.
    pub billing: bool,
    /// How often each customer's billing runs.
    pub billing_tick: HumanDuration,
    /// Invoice period length, aligned to the Unix epoch (24h: UTC days).
    pub billing_period: HumanDuration,
    /// A snapshot is billed once its window ended this long ago.
    pub billing_settle: HumanDuration,
    /// A draft invoice is finalized this long after its period ends.
    pub billing_grace: HumanDuration,
    /// US cents per GB (2^30 bytes) through either CDN.
    #[serde(with = "exact_decimal")]
    pub billing_rate_cents_per_gb: Decimal,
    /// Share of the backup charge discounted at storm coverage 1.
    #[serde(with = "exact_decimal")]
    pub billing_discount_rate: Decimal,
    /// How often CDN usage analytics are polled.
    pub usage_tick: HumanDuration,
    /// Window length of a usage snapshot.
    pub usage_window: HumanDuration,
    /// How far back each poll re-reads.
    pub usage_lookback: HumanDuration,
    /// Cloudflare account whose analytics are ingested; `None` disables Cloudflare ingestion.
    pub cloudflare_account_id: Option<String>,
    /// API token with Account Analytics read.
    pub cloudflare_api_token: Option<Secret>,
    /// Cloudflare API base override (e.g. a local fake); default `https://api.cloudflare.com/client/v4`.
    pub cloudflare_base_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsProviderKind {
    Auto,
    Noop,
    Route53,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            data_dir: PathBuf::from(".tranche"),
            admin_token: None,
            dev: false,
            log_format: LogFormat::Text,
            metrics_listen: None,
            metrics_per_domain: false,
            metering_commits_in_flight: 2,
            db_max_connections: 16,
            node_id: None,
            region: tranche_actors::config::DEFAULT_VANTAGE.to_owned(),
            vantages_per_domain: 3,
            engine: true,
            probe_allow_private: false,
            probe_ca_file: None,
            probe_nameservers: Vec::new(),
            probe_tls_reuse_key_share: true,
            dns_provider: DnsProviderKind::Auto,
            route53_endpoint_url: None,
            dns_ttl_seconds: 60,
            dns_rate_per_second: 4.0,
            dns_burst: 8,
            api_rate_per_second: 50.0,
            api_burst: 100,
            http_max_connections: None,
            http_header_timeout: HumanDuration::secs(10),
            http_idle_timeout: HumanDuration::secs(60),
            verification_nameservers: Vec::new(),
            verification_deadline: HumanDuration::secs(72 * 3600),
            verification_recheck: HumanDuration::secs(6 * 3600),
            webhook_allow_private: false,
            webhook_secret_keys: Vec::new(),
            event_retention: HumanDuration::secs(30 * 86_400),
            billing: true,
            billing_tick: HumanDuration::secs(60),
            billing_period: HumanDuration::secs(86_400),
            billing_settle: HumanDuration::secs(15 * 60),
            billing_grace: HumanDuration::secs(6 * 3600),
            billing_rate_cents_per_gb: Decimal::from(12),
            billing_discount_rate: Decimal::new(5, 1),
            usage_tick: HumanDuration::secs(300),
            usage_window: HumanDuration::secs(3600),
            usage_lookback: HumanDuration::secs(6 * 3600),
            cloudflare_account_id: None,
            cloudflare_api_token: None,
            cloudflare_base_url: None,
        }
    }
}

/// A listen address: `ip:port`, or `host:port` resolved once at start (IPv4 first), so
/// `localhost:8080` works.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?} is not an address to listen on (host:port): {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn listen_address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen(&text).map_err(serde::de::Error::custom)
}

fn optional_listen_address<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(text) if text.is_empty() => Ok(None),
        Some(text) => parse_listen(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Whether the standard AWS credential sources are configured in the environment.
pub fn aws_credentials_configured() -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
}

/// For an "unknown field" configuration error, the known setting closest to the misspelt one.
pub fn did_you_mean(error: &str) -> Option<String> {
    let found = error.split("found `").nth(1)?.split('`').next()?;
    let expected = error.split("expected `one of ").nth(1)?;
    let candidates: Vec<&str> = expected
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect();
    candidates
        .into_iter()
        .map(|c| (tranche_core::domain::edit_distance(found, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min()
        .map(|(_, c)| c.to_owned())
}

impl Settings {
    /// Refuses settings that would silently mean something else: a rate of zero or less
    /// (which used to become one request every 1,000 s), an empty burst, timeouts too short to
    /// be meant.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, rate) in [
            ("dns_rate_per_second", self.dns_rate_per_second),
            ("api_rate_per_second", self.api_rate_per_second),
        ] {
            if !rate.is_finite() || rate <= 0.0 {
                anyhow::bail!("{name} must be a positive number (got {rate})");
            }
        }
        for (name, burst) in [("dns_burst", self.dns_burst), ("api_burst", self.api_burst)] {
            if burst == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        let region_ok = (1..=64).contains(&self.region.len())
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !region_ok {
            anyhow::bail!(
                "region must be 1–64 letters, digits, '-', '_' or '.' (got {:?})",
                self.region
            );
        }
        if !(1..=16).contains(&self.vantages_per_domain) {
            anyhow::bail!(
                "vantages_per_domain must be between 1 and 16 (got {})",
                self.vantages_per_domain
            );
        }
        if self.http_max_connections == Some(0) {
            anyhow::bail!("http_max_connections must be at least 1");
        }
        if self.http_header_timeout.0 < Duration::from_millis(100) {
            anyhow::bail!("http_header_timeout must be at least 100ms");
        }
        if self.http_idle_timeout.0 < Duration::from_secs(1) {
            anyhow::bail!("http_idle_timeout must be at least 1s");
        }
        Ok(())
    }

    /// Conditions `/readyz` reports (and `serve` logs) without failing: a production node whose
    /// storm decisions would not reach DNS.
    pub fn readiness_warnings(&self) -> Vec<String> {
        let noop = match self.dns_provider {
            DnsProviderKind::Noop => true,
            DnsProviderKind::Auto => !aws_credentials_configured(),
            DnsProviderKind::Route53 => false,
        };
        let mut warnings = Vec::new();
        if self.engine && noop && !self.dev {
            warnings.push(
                "the DNS provider is noop: storm decisions are logged but no DNS record is changed (set TRANCHE_DNS_PROVIDER=route53 and AWS credentials)"
                    .to_owned(),
            );
        }
        if self.webhook_secret_keys.is_empty() && !self.dev {
            warnings.push(
                "webhook signing secrets are stored unencrypted (set webhook_secret_keys)"
                    .to_owned(),
            );
        }
        warnings
    }

    /// Domain verification timing.
    pub fn verify_policy(&self) -> tranche_core::verify::Policy {
        tranche_core::verify::Policy {
            deadline: self.verification_deadline.0,
            recheck: self.verification_recheck.0,
            ..Default::default()
        }
    }

    /// Invoicing settings, checked: positive durations, rates within the exact range.
    pub fn billing_settings(&self) -> anyhow::Result<BillingSettings> {
        let rates = Rates {
            cents_per_gb: self.billing_rate_cents_per_gb,
            discount_rate: self.billing_discount_rate,
        };
        rates.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        for (name, d) in [
            ("billing_tick", self.billing_tick),
            ("billing_period", self.billing_period),
        ] {
            if d.0 < Duration::from_secs(1) {
                anyhow::bail!("{name} must be at least 1s");
            }
        }
        Ok(BillingSettings {
            tick: self.billing_tick.0,
            period: self.billing_period.0,
            settle: self.billing_settle.0,
            grace: self.billing_grace.0,
            rates,
            ..BillingSettings::default()
        })
    }

    /// Usage ingestion settings, checked.
    pub fn usage_settings(&self) -> anyhow::Result<UsageSettings> {
        if self.usage_tick.0 < Duration::from_secs(1) {
            anyhow::bail!("usage_tick must be at least 1s");
        }
        crate::cloudflare::dimension(self.usage_window.0).map_err(anyhow::Error::msg)?;
        Ok(UsageSettings {
            tick: self.usage_tick.0,
            window: self.usage_window.0,
            lookback: self.usage_lookback.0,
            ..UsageSettings::default()
        })
    }
}

/// A duration written for humans: `90s`, `5m`, `1h30m`, `24h`, `2d`, `500ms`, or a number of
/// seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Self::secs(secs));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        if rest.is_empty() {
            return Err("empty duration".into());
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}: expected e.g. 90s, 5m, 1h30m"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = match &rest[..unit_len] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                "d" => Duration::from_secs(n * 86_400),
                u => return Err(format!("invalid duration {text:?}: unknown unit {u:?}")),
            };
            total += unit;
            rest = &rest[unit_len..];
        }
        Ok(Self(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if secs >= len {
                write!(f, "{}{unit}", secs / len)?;
                secs %= len;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Self::secs(s)),
            Raw::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Decimals in configuration: a string (`"0.5"`) or a number, taken as the decimal it was
/// written as (never through binary floating point's approximation).
mod exact_decimal {
    use std::str::FromStr;

    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(i) => return Ok(Decimal::from(i)),
            // The shortest representation that round-trips: the number as written.
            Raw::Float(f) => f.to_string(),
            Raw::Text(t) => t,
        };
        Decimal::from_str(text.trim())
            .map_err(|e| serde::de::Error::custom(format!("invalid decimal {text:?}: {e}")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads defaults ← `config_file` (or `./tranche.toml` when present) ← environment.
    pub fn load(config_file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        Self::figment(config_file).extract().map_err(Box::new)
    }

    fn figment(config_file: Option<&Path>) -> Figment {
        let file = config_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("tranche.toml"));
        let file_provider = if config_file.is_some() {
            Toml::file_exact(file)
        } else {
            Toml::file(file)
        };
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(file_provider)
            // The seed's variable, then the conventional one; TRANCHE_* below wins over both.
            .merge(Env::raw().only(&["PG_DSN"]).map(|_| "database_url".into()))
            .merge(Env::raw().only(&["DATABASE_URL"]))
            // The seed's unprefixed billing, usage and Cloudflare variables.
            .merge(
                Env::raw()
                    .only(&[
                        "BILLING_TICK",
                        "BILLING_PERIOD",
                        "BILLING_RATE_CENTS_PER_GB",
                        "BILLING_DISCOUNT_RATE",
                        "USAGE_TICK",
                        "USAGE_WINDOW",
                        "USAGE_LOOKBACK",
                        "CLOUDFLARE_ACCOUNT_ID",
                        "CLOUDFLARE_API_TOKEN",
                        "CLOUDFLARE_BASE_URL",
                    ])
                    .map(|k| k.as_str().to_ascii_lowercase().into()),
            )
            .merge(Env::prefixed("TRANCHE_").ignore(&["CONFIG"]))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {

    #[test]
    fn listen_accepts_host_names() {
        assert_eq!(
            parse_listen("localhost:8080").unwrap(),
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:9").unwrap(),
            "[::1]:9".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_listen("not-an-address").is_err());
    }

    #[test]
    fn misspelt_settings_get_a_suggestion() {
        let error = "unknown field: found `dns_rate_per_seconds`, expected `one of `listen`, `dns_rate_per_second`, `dns_burst`` for key";
        assert_eq!(did_you_mean(error).as_deref(), Some("dns_rate_per_second"));
        let error = "unknown field: found `zzzzzz`, expected `one of `listen`, `dev``";
        assert_eq!(did_you_mean(error), None);
    }

    #[test]
    fn rates_and_timeouts_that_mean_nothing_are_refused() {
        let ok = Settings::default();
        assert!(ok.validate().is_ok());
        for bad in [
            Settings {
                dns_rate_per_second: 0.0,
                ..Settings::default()
            },
            Settings {
                dns_rate_per_second: -1.0,
                ..Settings::default()
            },
            Settings {
                api_rate_per_second: f64::NAN,
                ..Settings::default()
            },
            Settings {
                dns_burst: 0,
                ..Settings::default()
            },
            Settings {
                http_max_connections: Some(0),
                ..Settings::default()
            },
            Settings {
                http_header_timeout: HumanDuration(Duration::ZERO),
                ..Settings::default()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }

    #[test]
    fn a_noop_dns_provider_in_production_is_a_readiness_warning() {
        let prod = Settings {
            dns_provider: DnsProviderKind::Noop,
            webhook_secret_keys: vec![Secret::new(format!("k1:{}", "00".repeat(32)))],
            ..Settings::default()
        };
        assert_eq!(prod.readiness_warnings().len(), 1);
        // Webhook secrets without a key to seal them are a warning too.
        let unsealed = Settings {
            webhook_secret_keys: Vec::new(),
            ..prod.clone()
        };
        assert_eq!(unsealed.readiness_warnings().len(), 2);
        let dev = Settings {
            dev: true,
            ..prod.clone()
        };
        assert!(dev.readiness_warnings().is_empty());
        let api_only = Settings {
            engine: false,
            ..prod
        };
        assert!(api_only.readiness_warnings().is_empty());
    }
    use super::*;

    #[test]
    fn defaults_then_file_then_environment() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "tranche.toml",
                "listen = \"127.0.0.1:9000\"\ndev = true\ndb_max_connections = 4\n",
            )?;
            jail.set_env("PG_DSN", "postgres://seed@localhost/tranche");
            jail.set_env("TRANCHE_DB_MAX_CONNECTIONS", "8");
            let s = Settings::load(None).map_err(|e| *e)?;
            assert_eq!(s.listen.port(), 9000);
            assert!(s.dev);
            assert_eq!(s.db_max_connections, 8);
            assert_eq!(
                s.database_url.as_ref().map(Secret::expose),
                Some("postgres://seed@localhost/tranche")
            );
            jail.set_env("DATABASE_URL", "postgres://conventional@localhost/tranche");
            let s = Settings::load(None).map_err(|e| *e)?;
            assert_eq!(
                s.database_url.as_ref().map(Secret::expose),
                Some("postgres://conventional@localhost/tranche")
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("tranche.toml", "listn = \"127.0.0.1:9000\"\n")?;
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("listn"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_region_and_vantage_count_are_checked() {
        figment::Jail::expect_with(|jail| {
            let s = Settings::load(None).map_err(|e| *e)?;
            assert_eq!((s.region.as_str(), s.vantages_per_domain), ("default", 3));
            jail.set_env("TRANCHE_REGION", "eu-west");
            jail.set_env("TRANCHE_VANTAGES_PER_DOMAIN", "2");
            let s = Settings::load(None).map_err(|e| *e)?;
            assert_eq!((s.region.as_str(), s.vantages_per_domain), ("eu-west", 2));
            s.validate().unwrap();
            for (region, count) in [
                ("eu west", "3"),
                ("", "3"),
                ("eu-west", "0"),
                ("eu-west", "17"),
            ] {
                jail.set_env("TRANCHE_REGION", region);
                jail.set_env("TRANCHE_VANTAGES_PER_DOMAIN", count);
                let s = Settings::load(None).map_err(|e| *e)?;
                assert!(s.validate().is_err(), "{region:?} {count}");
            }
            Ok(())
        });
    }

    #[test]
    fn billing_settings_take_the_seed_variables_and_stay_exact() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BILLING_PERIOD", "1h");
            jail.set_env("BILLING_RATE_CENTS_PER_GB", "12.5");
            jail.set_env("BILLING_DISCOUNT_RATE", "0.1");
            jail.set_env("USAGE_LOOKBACK", "1h30m");
            jail.set_env("CLOUDFLARE_ACCOUNT_ID", "acc");
            let s = Settings::load(None).map_err(|e| *e)?;
            let b = s.billing_settings().unwrap();
            assert_eq!(b.period, Duration::from_secs(3600));
            assert_eq!(b.rates.cents_per_gb.to_string(), "12.5");
            assert_eq!(b.rates.discount_rate.to_string(), "0.1");
            assert_eq!(
                s.usage_settings().unwrap().lookback,
                Duration::from_secs(5400)
            );
            assert_eq!(s.cloudflare_account_id.as_deref(), Some("acc"));
            jail.set_env("BILLING_DISCOUNT_RATE", "1.5");
            let s = Settings::load(None).map_err(|e| *e)?;
            assert!(s.billing_settings().is_err());
            jail.set_env("USAGE_WINDOW", "2h");
            let s = Settings::load(None).map_err(|e| *e)?;
            assert!(s.usage_settings().is_err());
            jail.set_env("BILLING_TICK", "soon");
            assert!(Settings::load(None).is_err());
            Ok(())
        });
    }

    #[test]
    fn durations_parse_and_print() {
        for (text, secs) in [
            ("90s", 90),
            ("5m", 300),
            ("1h30m", 5400),
            ("24h", 86_400),
            ("2d", 172_800),
            ("45", 45),
        ] {
            assert_eq!(
                HumanDuration::parse(text).unwrap().0,
                Duration::from_secs(secs)
            );
        }
        assert_eq!(
            HumanDuration::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(HumanDuration::secs(5400).to_string(), "1h30m");
        assert_eq!(HumanDuration::secs(86_400).to_string(), "1d");
        assert!(HumanDuration::parse("5 minutes").is_err());
        assert!(HumanDuration::parse("").is_err());
    }

    #[test]
    fn secrets_are_redacted() {
        let s = Settings {
            admin_token: Some(Secret::new("hunter2")),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
