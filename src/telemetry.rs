//! Logging setup. Structured `tracing` logs: human-readable text on a terminal, one JSON object
//! per line in production (`TRANCHE_LOG_FORMAT=json`). Verbosity follows `RUST_LOG`
//! (default `info`, with sqlx's per-statement logs kept at `warn`).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (later calls are no-ops), which
/// lets tests share it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,poem=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true))
            .try_init(),
        // Colour codes only on a terminal: not in files, journald or a log collector.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .try_init(),
    };
    // An error only means a subscriber is already installed.
    let _ = result;
}
