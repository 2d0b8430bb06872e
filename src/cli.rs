//! The `tranche` command line: `serve`, `migrate`, `openapi`, `demo`, `ctl`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::sync::Arc;

use anyhow::Context;
use tranche_actors::EngineConfig;

use tranche_actors::ports::{DnsProvider, NoopProvider};

use crate::config::{DnsProviderKind, HumanDuration, Settings};
use crate::node;
use crate::postgres::customers;
use crate::postgres::pool::{self, Database};
use crate::prober::{NetworkProber, TlsOptions};
use crate::startup::Application;
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
        /// Address to listen on (default 127.0.0.1:8080); a host name (`localhost:8080`) is
        /// resolved.
        #[arg(long, value_parser = crate::config::parse_listen)]
        listen: Option<std::net::SocketAddr>,
        /// INSECURE development mode: trust X-Customer-ID without an API key and make sure
        /// customer 1 ("demo") exists.
        #[arg(long)]
        dev: bool,
        /// This node's id in the cluster (default: hostname-pid). Several nodes may share one
        /// database; each needs its own id.
        #[arg(long)]
        node_id: Option<String>,
        /// This node's vantage (region), e.g. `eu-west`: domains are probed from several
        /// regions and decided by a quorum of them.
        #[arg(long)]
        region: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI document.
    Openapi,
    /// Watch a storm happen: local fake CDNs, a throwaway database, about 30 seconds.
    Demo,
    /// Operate a running Tranche over its API: services, domains, storms, pins, DNS changes,
    /// billing, the cluster (`tranche ctl --help`).
    Ctl(crate::ctl::Ctl),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Ctl(ctl) = cli.command {
        return crate::ctl::run(ctl);
    }
    if let Command::Openapi = cli.command {
        use std::io::Write;
        // A closed pipe (`tranche openapi | head`) is not an error worth a panic.
        let _ = std::io::stdout().write_all(api::spec_json().as_bytes());
        return ExitCode::SUCCESS;
    }
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let hint = crate::config::did_you_mean(&e.to_string())
                .map(|s| format!(" (did you mean `{s}`?)"))
                .unwrap_or_default();
            eprintln!("tranche: invalid configuration: {e}{hint}");
            return ExitCode::from(2);
        }
    };
    if let Command::Serve {
        listen,
        dev,
        node_id,
        region,
    } = &cli.command
    {
        if let Some(listen) = listen {
            settings.listen = *listen;
        }
        settings.dev |= dev;
        if node_id.is_some() {
            settings.node_id = node_id.clone();
        }
        if let Some(region) = region {
            settings.region.clone_from(region);
        }
    }
    if let Err(e) = settings.validate() {
        eprintln!("tranche: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    if matches!(cli.command, Command::Demo) {
        // The demo narrates on stdout; keep the logs to warnings unless asked.
        if std::env::var_os("RUST_LOG").is_none() {
            // SAFETY: single-threaded here, before the runtime and any other thread start.
            unsafe { std::env::set_var("RUST_LOG", "warn") };
        }
    }
    // Named once, before anything starts: logs, traces, the engine and the API agree on it.
    if settings.node_id.is_none() {
        settings.node_id = Some(node::default_node_id());
    }
    telemetry::init(
        settings.log_format,
        settings.node_id.as_deref().unwrap_or_default(),
    );
    let settings_format = settings.log_format;
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
            Command::Demo => crate::demo::run().await,
            Command::Openapi | Command::Ctl(_) => unreachable!("handled above"),
        }
    });
    drop(runtime);
    telemetry::shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Said once: on stderr for a person, as a log line where logs are collected (JSON).
            match settings_format {
                crate::config::LogFormat::Json => tracing::error!("{e:#}"),
                crate::config::LogFormat::Text => eprintln!("tranche: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let database = Database::open(&settings).await?;
    let result = pool::migrate(&database.pool).await;
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
    pool::migrate(&database.pool).await?;
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
    // Webhook secrets stored plain, or under a key no longer first, are sealed anew.
    let secrets = crate::secrets::SecretBox::new(&settings.webhook_secret_keys)?;
    let resealed = crate::secrets::reseal_webhook_secrets(&database.pool, &secrets).await?;
    if resealed > 0 {
        tracing::info!(resealed, "webhook secrets sealed under the current key");
    }
    for warning in settings.readiness_warnings() {
        tracing::warn!("{warning}");
    }
    let app = Application::build(settings, database.pool.clone()).await?;
    let engine = if settings.engine {
        Some(start_engine(settings, &database.pool).await?)
    } else {
        tracing::info!("engine disabled (TRANCHE_ENGINE=false): serving the API only");
        None
    };
    tracing::info!(
        listen = %app.local_addr(),
        docs = %format!("http://{}/docs", app.local_addr()),
        embedded_db = database.embedded.is_some(),
        "tranche is serving"
    );
    let served = app.run_until_stopped(shutdown_signal()).await;
    tracing::info!("stopped serving; shutting down");
    if let Some(engine) = engine {
        engine.shutdown().await;
    }
    served?;
    Ok(())
}

async fn start_engine(
    settings: &Settings,
    pool: &sqlx::PgPool,
) -> anyhow::Result<node::RunningEngine> {
    let secrets = Arc::new(crate::secrets::SecretBox::new(
        &settings.webhook_secret_keys,
    )?);
    let roots = match &settings.probe_ca_file {
        Some(path) => crate::prober::roots_from_pem_file(path)
            .with_context(|| format!("probe_ca_file {}", path.display()))?,
        None => Vec::new(),
    };
    if settings.probe_allow_private {
        tracing::warn!("probes may reach private and loopback addresses (probe_allow_private)");
    }
    let prober = Arc::new(
        NetworkProber::with_tls(
            &roots,
            settings.probe_allow_private,
            TlsOptions {
                resumption: true,
                reuse_key_share: settings.probe_tls_reuse_key_share,
            },
        )?
        .with_nameservers(&settings.probe_nameservers)?,
    );
    let node_id = settings
        .node_id
        .clone()
        .unwrap_or_else(node::default_node_id);
    tracing::info!(node = %node_id, region = %settings.region, vantages_per_domain = settings.vantages_per_domain, "starting the engine");
    crate::metrics::METRICS.set_node(&node_id, &settings.region);
    let provider: Arc<dyn DnsProvider> = match settings.dns_provider {
        DnsProviderKind::Route53 => route53(settings).await,
        DnsProviderKind::Auto if crate::config::aws_credentials_configured() => {
            route53(settings).await
        }
        DnsProviderKind::Noop | DnsProviderKind::Auto => {
            tracing::info!(
                "DNS provider: noop (logs intended weight changes; set TRANCHE_DNS_PROVIDER=route53 and AWS credentials to steer Route53)"
            );
            Arc::new(NoopProvider)
        }
    };
    let dns = node::DnsOptions {
        provider,
        rate_per_sec: settings.dns_rate_per_second,
        burst: settings.dns_burst,
    };
    let billing = if settings.billing {
        let b = settings.billing_settings()?;
        tracing::info!(
            tick = %HumanDuration(b.tick),
            period = %HumanDuration(b.period),
            rate_cents_per_gb = %b.rates.cents_per_gb,
            discount_rate = %b.rates.discount_rate,
            "invoicing on"
        );
        Some(b)
    } else {
        tracing::info!("invoicing disabled on this node (TRANCHE_BILLING=false)");
        None
    };
    let usage = usage_options(settings)?;
    let mut config = EngineConfig::new(node_id);
    config.vantage.clone_from(&settings.region);
    config.vantages_per_domain = settings.vantages_per_domain;
    node::start_with(
        config,
        pool.clone(),
        prober,
        node::EngineOptions {
            dns: Some(dns),
            billing,
            usage,
            verify: Some(node::VerifyOptions {
                lookup: Arc::new(crate::resolver::HickoryTxt::new(
                    &settings.verification_nameservers,
                )?),
                policy: settings.verify_policy(),
                tick: std::time::Duration::from_secs(5),
            }),
            webhooks: Some(node::WebhookOptions {
                secrets: secrets.clone(),
                allow_private: settings.webhook_allow_private,
                idle: std::time::Duration::from_millis(500),
                retention: settings.event_retention.0,
            }),
            slos: true,
        },
    )
    .await
}

/// Usage ingestion, when a Cloudflare account and token are configured.
fn usage_options(settings: &Settings) -> anyhow::Result<Option<node::UsageOptions>> {
    let (Some(account), Some(token)) = (
        &settings.cloudflare_account_id,
        &settings.cloudflare_api_token,
    ) else {
        if settings.cloudflare_account_id.is_some() != settings.cloudflare_api_token.is_some() {
            anyhow::bail!(
                "Cloudflare usage ingestion needs both CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN"
            );
        }
        tracing::info!(
            "usage ingestion off (set CLOUDFLARE_ACCOUNT_ID and CLOUDFLARE_API_TOKEN to pull Cloudflare analytics)"
        );
        return Ok(None);
    };
    let usage = settings.usage_settings()?;
    let source = crate::cloudflare::CloudflareSource::new(
        settings.cloudflare_base_url.as_deref(),
        account.clone(),
        token.clone(),
    )?;
    tracing::info!(
        tick = %HumanDuration(usage.tick),
        window = %HumanDuration(usage.window),
        lookback = %HumanDuration(usage.lookback),
        "usage ingestion from Cloudflare on"
    );
    Ok(Some(node::UsageOptions {
        settings: usage,
        sources: vec![Arc::new(source)],
    }))
}

async fn route53(settings: &Settings) -> Arc<dyn DnsProvider> {
    tracing::info!(endpoint = ?settings.route53_endpoint_url, "DNS provider: route53");
    Arc::new(
        crate::route53::Route53Provider::from_environment(
            settings.route53_endpoint_url.as_deref(),
            std::time::Duration::from_secs(settings.dns_ttl_seconds),
        )
        .await,
    )
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
