//! The `tranche` command line: `serve`, `migrate`, `openapi`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::db::{self, Database};
use crate::startup::Application;
use crate::store::customers;
use crate::{api, telemetry};

#[derive(Debug, Parser)]
#[command(name = "tranche", version, about = "Multi-CDN storm insurance")]
struct Cli {
    /// Configuration file (default: ./tranche.toml when it exists).
    #[arg(long, global = true, env = "TRANCHE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API (applies migrations first). With no DATABASE_URL, starts a private
    /// PostgreSQL under the data directory.
    Serve {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// INSECURE development mode: trust X-Customer-ID without an API key and make sure
        /// customer 1 ("demo") exists.
        #[arg(long)]
        dev: bool,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        use std::io::Write;
        // A closed pipe (`tranche openapi | head`) is not an error worth a panic.
        let _ = std::io::stdout().write_all(api::spec_json().as_bytes());
        return ExitCode::SUCCESS;
    }
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tranche: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Serve { listen, dev } = &cli.command {
        if let Some(listen) = listen {
            settings.listen = *listen;
        }
        settings.dev |= dev;
    }
    telemetry::init(settings.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tranche: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => serve(settings).await,
            Command::Migrate => migrate(settings).await,
            Command::Openapi => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tranche: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let database = Database::open(&settings).await?;
    let result = db::migrate(&database.pool).await;
    database.close().await;
    result?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let database = Database::open(&settings).await?;
    let result = serve_on(&settings, &database).await;
    database.close().await;
    result
}

async fn serve_on(settings: &Settings, database: &Database) -> anyhow::Result<()> {
    db::migrate(&database.pool).await?;
    if settings.dev {
        customers::ensure_demo(&database.pool).await?;
        tracing::warn!(
            "DEV MODE IS INSECURE: requests are trusted with only an X-Customer-ID header \
             (no API key). Never expose this instance to a network you do not control."
        );
    }
    if settings.admin_token.is_none() {
        tracing::info!("admin API disabled (set TRANCHE_ADMIN_TOKEN to enable /v1/admin)");
    }
    let app = Application::build(settings, database.pool.clone()).await?;
    tracing::info!(
        listen = %app.local_addr(),
        docs = %format!("http://{}/docs", app.local_addr()),
        embedded_db = database.embedded.is_some(),
        "tranche is serving"
    );
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("stopped serving; shutting down");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let ctrl_c = tokio::signal::ctrl_c();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
