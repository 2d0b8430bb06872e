//! PostgreSQL: where the database is, the connection pool, and the schema migrations.
//!
//! Postgres is Tranche's source of truth and its coordination point; nothing that matters lives
//! only in memory. [`Database::open`] resolves the configured URL or, when there is none, starts
//! the [`embedded`] server; either way the caller gets a pool and, for the embedded server, a
//! handle that stops it on shutdown.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::embedded::{EmbeddedOptions, EmbeddedPostgres};
use crate::config::Settings;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Name of the database Tranche uses inside the embedded server.
pub const EMBEDDED_DATABASE: &str = "tranche";

/// An open database: the pool, plus the embedded server when Tranche started one.
pub struct Database {
    pub pool: PgPool,
    /// `Some` when the database is Tranche's private embedded server; stop it after the pool.
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Connects to `settings.database_url`, or starts the embedded server under
    /// `settings.data_dir` when no URL is configured.
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        match &settings.database_url {
            Some(url) => {
                let options = PgConnectOptions::from_str(url.expose())
                    .context("DATABASE_URL (or PG_DSN) is not a valid PostgreSQL URL")?;
                let pool = pool(options, settings.db_max_connections).await?;
                Ok(Self {
                    pool,
                    embedded: None,
                })
            }
            None => {
                let server =
                    EmbeddedPostgres::start(&EmbeddedOptions::durable(&settings.data_dir))?;
                server.ensure_database(EMBEDDED_DATABASE).await?;
                let pool = pool(
                    server.connect_options(EMBEDDED_DATABASE),
                    settings.db_max_connections,
                )
                .await?;
                Ok(Self {
                    pool,
                    embedded: Some(server),
                })
            }
        }
    }

    /// Closes the pool, then stops the embedded server (if any) cleanly.
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(server) = self.embedded {
            server.stop().await;
        }
    }
}

/// A pool over `options`; fails fast, naming the server and the cause, when the database
/// cannot be reached.
pub async fn pool(options: PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    // One direct connection first: its error says why (refused, unknown host, authentication),
    // where a pool would only report that it timed out.
    let target = describe(&options);
    match tokio::time::timeout(
        Duration::from_secs(5),
        <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
        }
        Ok(Err(e)) => anyhow::bail!("could not connect to PostgreSQL at {target}: {e}"),
        Err(_) => {
            anyhow::bail!("could not connect to PostgreSQL at {target}: no answer within 5 s")
        }
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .with_context(|| format!("could not connect to PostgreSQL at {target}"))
}

/// `host:port/database` (or the socket directory) of a connection, for messages.
fn describe(options: &PgConnectOptions) -> String {
    let place = match options.get_socket() {
        Some(dir) => format!("socket {}", dir.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    format!(
        "{place}, database {}",
        options.get_database().unwrap_or("(default)")
    )
}

/// Applies every pending migration.
/// A lazily connected one-connection pool over `pool`'s settings, for a `LISTEN`ing
/// connection named `application_name` (reconnections keep the name).
pub fn listener_pool(pool: &PgPool, application_name: &str) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .application_name(application_name);
    PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options)
}

pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations failed")
}
