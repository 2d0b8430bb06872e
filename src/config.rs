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
//! | `db_max_connections` | `TRANCHE_DB_MAX_CONNECTIONS`                  | `16`               |
//! | `node_id`            | `TRANCHE_NODE_ID`, `--node-id`                | `<hostname>-<pid>` |
//! | `engine`             | `TRANCHE_ENGINE`                              | `true`             |
//! | `probe_allow_private`| `TRANCHE_PROBE_ALLOW_PRIVATE`                 | `false`            |
//! | `probe_ca_file`      | `TRANCHE_PROBE_CA_FILE`                       | none               |
//! | `probe_nameservers`  | `TRANCHE_PROBE_NAMESERVERS` (`[ip:port,…]`)   | the system's       |
//! | `dns_provider`       | `TRANCHE_DNS_PROVIDER` (`auto`/`noop`/`route53`) | `auto`          |
//! | `route53_endpoint_url` | `TRANCHE_ROUTE53_ENDPOINT_URL`              | AWS's              |
//! | `dns_ttl_seconds`    | `TRANCHE_DNS_TTL_SECONDS`                     | `60`               |
//! | `dns_rate_per_second`| `TRANCHE_DNS_RATE_PER_SECOND`                 | `4`                |
//! | `dns_burst`          | `TRANCHE_DNS_BURST`                           | `8`                |
//!
//! The file is `tranche.toml` in the working directory, or the one named by `--config` /
//! `TRANCHE_CONFIG`. Secrets (`admin_token`, passwords inside `database_url`) are never printed:
//! [`Secret`] redacts itself in `Debug` and `Display`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `tranche` reads at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address the HTTP API listens on.
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
    /// Size of the Postgres connection pool.
    pub db_max_connections: u32,
    /// This node's name in the cluster (default `<hostname>-<pid>`); nodes sharing a database
    /// must have distinct ids.
    pub node_id: Option<String>,
    /// Run the actor engine (probing, storms). `false` makes an API-only node.
    pub engine: bool,
    /// Let probes reach loopback/private addresses (tests, demos, internal edges).
    pub probe_allow_private: bool,
    /// PEM file of extra CA certificates probes trust (e.g. a private CA in front of edges).
    pub probe_ca_file: Option<PathBuf>,
    /// DNS servers that resolve edge hostnames; empty uses the system's resolver configuration.
    pub probe_nameservers: Vec<SocketAddr>,
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
            db_max_connections: 16,
            node_id: None,
            engine: true,
            probe_allow_private: false,
            probe_ca_file: None,
            probe_nameservers: Vec::new(),
            dns_provider: DnsProviderKind::Auto,
            route53_endpoint_url: None,
            dns_ttl_seconds: 60,
            dns_rate_per_second: 4.0,
            dns_burst: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A string that must never reach a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
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
            .merge(Env::prefixed("TRANCHE_").ignore(&["CONFIG"]))
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
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
    fn secrets_are_redacted() {
        let s = Settings {
            admin_token: Some(Secret::new("hunter2")),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
