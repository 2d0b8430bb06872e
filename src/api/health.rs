//! `/healthz` (the process is up) and `/readyz` (it can reach its database).

use std::sync::Arc;

use poem::web::Data;
use poem_openapi::payload::PlainText;
use poem_openapi::{ApiResponse, OpenApi};

use super::{ApiContext, ApiTags};

pub struct HealthApi;

#[derive(ApiResponse)]
enum Readiness {
    /// The database answers: `ready`, followed by `; warning: …` for each condition an operator
    /// should know of (e.g. a noop DNS provider outside dev mode).
    #[oai(status = 200)]
    Ready(PlainText<String>),
    /// The database does not answer; the reason is logged.
    #[oai(status = 503)]
    NotReady(PlainText<&'static str>),
}

#[OpenApi(tag = "ApiTags::Operations")]
impl HealthApi {
    /// Liveness: answers `ok` while the process runs.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> PlainText<&'static str> {
        PlainText("ok")
    }

    /// Readiness: answers `ready` when the database can be queried.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, ctx: Data<&Arc<ApiContext>>) -> Readiness {
        match sqlx::query("select 1").execute(&ctx.pool).await {
            Ok(_) => {
                let mut text = "ready".to_owned();
                for warning in &ctx.readiness_warnings {
                    text.push_str("; warning: ");
                    text.push_str(warning);
                }
                Readiness::Ready(PlainText(text))
            }
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                Readiness::NotReady(PlainText("database unavailable"))
            }
        }
    }

    /// Prometheus metrics of this node, in the text exposition format (admin token; or
    /// without one on `metrics_listen`): HTTP requests, probes, storms with detection and
    /// failover latencies, DNS provider calls and rate-limiter waits, webhook deliveries,
    /// billing runs, usage snapshots, and cluster-wide gauges (domains by state, pending DNS
    /// changes per zone, nodes and shards, the webhook outbox, certificate expiry, the
    /// database pool). Names and meanings: `docs/operations.md`.
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(
        &self,
        _admin: super::auth::Admin,
        ctx: Data<&Arc<ApiContext>>,
    ) -> super::error::ApiResult<PlainText<String>> {
        crate::metrics::refresh(&ctx.pool, ctx.metrics_per_domain).await?;
        Ok(PlainText(crate::metrics::METRICS.render()))
    }
}
