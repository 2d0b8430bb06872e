//! Logging and tracing setup. Structured `tracing` logs: human-readable text on a terminal, one
//! JSON object per line in production (`TRANCHE_LOG_FORMAT=json`). Verbosity follows `RUST_LOG`
//! (default `info`, with sqlx's per-statement logs kept at `warn`).
//!
//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set (e.g. `http://collector:4318`), spans are also exported
//! as OpenTelemetry traces over OTLP/HTTP (protobuf), batched, with `service.name` `tranche`
//! (`OTEL_SERVICE_NAME` overrides it) and this node's id. The spans: every API request
//! (`request`, with its `request_id`), every storm decision (`storm.decision`, with the domain
//! and the states), and every DNS change (`dns.change`, with its zone and records, linked to the
//! decisions that caused it) with the provider's call inside it.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::LogFormat;

static TRACER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The OTLP exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Built before the async runtime
/// starts (its blocking HTTP client must not be created inside one).
fn otlp(node: &str) -> Option<SdkTracerProvider> {
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok()?;
    if endpoint.trim().is_empty() {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tranche: OTLP export disabled: {e}");
            return None;
        }
    };
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "tranche".to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            node.to_owned(),
        ))
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}

/// Installs the global subscriber (`node`: this node's id, for traces). Safe to call more than
/// once (later calls are no-ops), which lets tests share it.
pub fn init(format: LogFormat, node: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,poem=warn"));
    let traces = otlp(node).map(|provider| {
        let tracer = provider.tracer("tranche");
        let _ = TRACER.set(provider);
        // Only Tranche's own spans (and the provider SDK's, inside a DNS change) are exported.
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(EnvFilter::new("info,sqlx=off,hyper=off,h2=off,poem=off"))
    });
    let registry = tracing_subscriber::registry().with(traces);
    let result = match format {
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_filter(filter))
            .try_init(),
        // Colour codes only on a terminal: not in files, journald or a log collector.
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                    .with_filter(filter),
            )
            .try_init(),
    };
    // An error only means a subscriber is already installed.
    let _ = result;
}

/// Sends the spans still buffered (at exit).
pub fn shutdown() {
    if let Some(provider) = TRACER.get()
        && let Err(e) = provider.shutdown()
    {
        eprintln!("tranche: flushing traces failed: {e}");
    }
}
