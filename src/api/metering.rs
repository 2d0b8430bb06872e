//! Event metering: `POST /v1/usage-events` (JSON and CloudEvents, one event or a batch),
//! `GET /v1/usage`, `GET /v1/usage/timeseries` and `GET/PUT /v1/quotas`.
//!
//! The API checks each event's form here (field by field, so a batch's bad events are named
//! and its good ones still land) and hands the good ones to this node's
//! [`MeteringBatcher`](tranche_actors::metering_batcher), which answers once they are
//! committed. Deduplication, the open period, declared metrics, live services and quotas are
//! decided there, in the transaction, by the core's rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use poem::web::Data;
use poem::{Request, RequestBody};
use poem_openapi::param::Query;
use poem_openapi::payload::{Json, ParsePayload, Payload};
use poem_openapi::registry::{MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiRequest, Object, OpenApi, Union};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;
use tranche_actors::metering_batcher::BatcherMsg;
use tranche_core::metering::batch::{Incoming, Outcome, Refusal};
use tranche_core::metering::event::{
    EventContent, EventKey, MAX_FUTURE, Metric, Quantity, TimeRefused, check_identifier,
};
use tranche_core::metering::period::BillingCycle;
use tranche_core::metering::quota::{OverQuota, percent_used};

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult, ErrorBody, QuotaExceeded};
use super::json::{JsonBody, read_limited};
use super::{ApiContext, ApiTags};
use crate::postgres::metering as store;

/// Most events one request may carry.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;
/// Largest request body of `POST /v1/usage-events`.
const MAX_BODY: usize = 1 << 20;
/// How long a request waits for its group commit.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Most buckets one time series answers.
const MAX_BUCKETS: i64 = 10_000;

// ---------------------------------------------------------------------------------------------
// Request bodies: documented schemas (parsed by hand, event by event).

/// An exact quantity: a JSON integer, or a decimal string such as `"12.5"` (at most 9
/// decimals, below 10^19). `primary_bytes`, `backup_bytes` and `requests` take whole numbers.
/// (Documented as `oneOf` integer/string; the body is parsed by hand.)
#[derive(Debug, Clone)]
pub struct QuantityInput(pub Value);

impl Type for QuantityInput {
    const IS_REQUIRED: bool = true;
    type RawValueType = Self;
    type RawElementValueType = Self;

    fn name() -> std::borrow::Cow<'static, str> {
        "QuantityInput".into()
    }

    fn schema_ref() -> MetaSchemaRef {
        MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
            description: Some(
                "An integer ≥ 0, or an exact decimal string such as \"12.5\" (at most 9 \
                 decimals, below 10^19; whole numbers for the built-in metrics).",
            ),
            one_of: vec![
                MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
                    minimum: Some(0.0),
                    ..poem_openapi::registry::MetaSchema::new_with_format("integer", "int64")
                })),
                MetaSchemaRef::Inline(Box::new(poem_openapi::registry::MetaSchema {
                    pattern: Some("^[0-9]+(\\.[0-9]+)?$".into()),
                    ..poem_openapi::registry::MetaSchema::new("string")
                })),
            ],
            ..poem_openapi::registry::MetaSchema::ANY
        }))
    }

    fn as_raw_value(&self) -> Option<&Self::RawValueType> {
        Some(self)
    }

    fn raw_element_iter<'a>(
        &'a self,
    ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl poem_openapi::types::ParseFromJSON for QuantityInput {
    fn parse_from_json(value: Option<Value>) -> poem_openapi::types::ParseResult<Self> {
        Ok(Self(value.unwrap_or_default()))
    }
}

impl poem_openapi::types::ToJSON for QuantityInput {
    fn to_json(&self) -> Option<Value> {
        Some(self.0.clone())
    }
}

/// A usage event (Tranche's JSON form).
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct UsageEventInput {
    /// The client's event id (1–256 characters): with the source, the idempotency key, kept at
    /// least 32 days.
    pub id: String,
    /// Who sends it (1–256 characters; default `api`).
    #[oai(nullable)]
    pub source: Option<String>,
    /// The service the usage belongs to.
    pub service_id: i64,
    /// `primary_bytes`, `backup_bytes`, `requests`, or a metric declared in `PUT /v1/quotas`.
    pub metric: String,
    pub quantity: QuantityInput,
    /// When it happened (RFC 3339; default: now). At most 5 minutes ahead, not before the open
    /// metering period.
    #[oai(nullable)]
    pub time: Option<DateTime<Utc>>,
}

/// Up to 1,000 usage events in one request.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct UsageEventBatch {
    pub events: Vec<UsageEventInput>,
}

/// `application/json`: one event, or `{"events": [...]}`.
#[derive(Debug, Clone, Union)]
pub enum UsageEventsJson {
    One(UsageEventInput),
    Batch(UsageEventBatch),
}

/// `data` of a usage CloudEvent.
#[derive(Debug, Clone, Object)]
pub struct CloudEventData {
    pub quantity: QuantityInput,
}

/// A usage event as a CloudEvent (structured mode, spec version 1.0). Extension attributes
/// are ignored.
#[derive(Debug, Clone, Object)]
pub struct UsageCloudEvent {
    /// `1.0`.
    pub specversion: String,
    /// The client's event id: with `source`, the idempotency key.
    pub id: String,
    pub source: String,
    /// The metric.
    #[oai(rename = "type")]
    pub ty: String,
    /// The service id, as a string (`"12"`).
    pub subject: String,
    /// Default: now.
    #[oai(nullable)]
    pub time: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub datacontenttype: Option<String>,
    pub data: CloudEventData,
}

/// Declares a payload type whose content type is exactly `$ct` and whose body is the bytes,
/// documented as `$schema`.
macro_rules! events_payload {
    ($name:ident, $ct:literal, $schema:ty) => {
        pub struct $name(Vec<u8>);

        impl Payload for $name {
            const CONTENT_TYPE: &'static str = $ct;

            fn check_content_type(content_type: &str) -> bool {
                content_type
                    .parse::<mime::Mime>()
                    .is_ok_and(|m| m.essence_str() == $ct)
            }

            fn schema_ref() -> MetaSchemaRef {
                <$schema>::schema_ref()
            }

            fn register(registry: &mut Registry) {
                <$schema>::register(registry);
            }
        }

        impl ParsePayload for $name {
            const IS_REQUIRED: bool = true;

            async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
                Ok(Self(read_limited(request, body, MAX_BODY).await?))
            }
        }
    };
}

events_payload!(NativeBody, "application/json", UsageEventsJson);
events_payload!(
    CloudEventBody,
    "application/cloudevents+json",
    UsageCloudEvent
);
events_payload!(
    CloudEventBatchBody,
    "application/cloudevents-batch+json",
    Vec<UsageCloudEvent>
);

/// The body of `POST /v1/usage-events`.
#[derive(ApiRequest)]
pub enum UsageEventsRequest {
    Json(NativeBody),
    CloudEvent(CloudEventBody),
    CloudEventBatch(CloudEventBatchBody),
}

// ---------------------------------------------------------------------------------------------
// Parsing, event by event.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Native,
    CloudEvents,
}

impl Format {
    /// The name of `field` (a native field name) in this format.
    fn field(self, field: &str) -> &str {
        match (self, field) {
            (Self::CloudEvents, "metric") => "type",
            (Self::CloudEvents, "service_id") => "subject",
            (Self::CloudEvents, "quantity") => "data.quantity",
            (_, f) => f,
        }
    }
}

/// Why one event was refused before it reached the batcher.
struct Bad {
    field: String,
    message: String,
}

fn bad(field: &str, message: impl Into<String>) -> Bad {
    Bad {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn string<'a>(obj: &'a serde_json::Map<String, Value>, field: &str) -> Result<&'a str, Bad> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(bad(field, "is required")),
        Some(_) => Err(bad(field, "must be a string")),
    }
}

fn identifier(obj: &serde_json::Map<String, Value>, field: &str) -> Result<String, Bad> {
    let s = string(obj, field)?;
    check_identifier(s)
        .map(str::to_owned)
        .map_err(|e| bad(field, e.0))
}

fn quantity(value: Option<&Value>, field: &str) -> Result<Quantity, Bad> {
    match value {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(i) => Quantity::from_integer(i).map_err(|e| bad(field, e.0)),
            None => Err(bad(
                field,
                "must be an integer or a decimal string such as \"12.5\" (never a binary float)",
            )),
        },
        Some(Value::String(s)) => Quantity::parse(s).map_err(|e| bad(field, e.0)),
        None | Some(Value::Null) => Err(bad(field, "is required")),
        Some(_) => Err(bad(field, "must be an integer or a decimal string")),
    }
}

fn time(value: Option<&Value>, now: DateTime<Utc>) -> Result<DateTime<Utc>, Bad> {
    let t = match value {
        None | Some(Value::Null) => return Ok(now),
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                bad(
                    "time",
                    "must be an RFC 3339 time such as 2026-12-03T10:00:00Z",
                )
            })?,
        Some(_) => return Err(bad("time", "must be an RFC 3339 string")),
    };
    if t < super::input::earliest_fact_time() {
        return Err(bad("time", "must be after 2000-01-01"));
    }
    if t > now + MAX_FUTURE {
        return Err(bad("time", "is more than 5 minutes in the future"));
    }
    // Stored to the microsecond: a replay must compare equal.
    Ok(t - TimeDelta::nanoseconds(i64::from(t.timestamp_subsec_nanos() % 1000)))
}

fn metric_and_quantity(metric: &str, q: Quantity, format: Format) -> Result<Metric, Bad> {
    let m = Metric::parse(metric).map_err(|e| bad(format.field("metric"), e.0))?;
    if !matches!(m, Metric::Custom(_)) && !q.value().fract().is_zero() {
        return Err(bad(
            format.field("quantity"),
            format!("must be a whole number for {}", m.as_str()),
        ));
    }
    Ok(m)
}

/// The event once its fields are read: its time (given, or now) completes it.
fn event(
    obj: &serde_json::Map<String, Value>,
    key: EventKey,
    service_id: i64,
    metric: Metric,
    quantity: Quantity,
    now: DateTime<Utc>,
) -> Result<Incoming, Bad> {
    Ok(Incoming {
        timed: !matches!(obj.get("time"), None | Some(Value::Null)),
        content: EventContent {
            service_id,
            metric,
            quantity,
            time: time(obj.get("time"), now)?,
        },
        key,
    })
}

const NATIVE_FIELDS: [&str; 6] = ["id", "source", "service_id", "metric", "quantity", "time"];

fn native(v: &Value, customer_id: i64, now: DateTime<Utc>) -> Result<Incoming, Bad> {
    let Value::Object(obj) = v else {
        return Err(bad("", "must be an object"));
    };
    if let Some(unknown) = obj.keys().find(|k| !NATIVE_FIELDS.contains(&k.as_str())) {
        return Err(bad(unknown, "is not a known field"));
    }
    let id = identifier(obj, "id")?;
    let source = match obj.get("source") {
        None | Some(Value::Null) => "api".to_owned(),
        Some(_) => identifier(obj, "source")?,
    };
    let service_id = match obj.get("service_id") {
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("service_id", "must be a positive integer"))?,
        None | Some(Value::Null) => return Err(bad("service_id", "is required")),
        Some(_) => return Err(bad("service_id", "must be an integer")),
    };
    let q = quantity(obj.get("quantity"), "quantity")?;
    let metric = metric_and_quantity(string(obj, "metric")?, q, Format::Native)?;
    event(
        obj,
        EventKey {
            customer_id,
            source,
            id,
        },
        service_id,
        metric,
        q,
        now,
    )
}

fn cloud_event(v: &Value, customer_id: i64, now: DateTime<Utc>) -> Result<Incoming, Bad> {
    let Value::Object(obj) = v else {
        return Err(bad("", "must be an object"));
    };
    if string(obj, "specversion")? != "1.0" {
        return Err(bad("specversion", "must be \"1.0\""));
    }
    let id = identifier(obj, "id")?;
    let source = identifier(obj, "source")?;
    if let Some(ct) = obj.get("datacontenttype").and_then(Value::as_str)
        && !ct.starts_with("application/json")
    {
        return Err(bad("datacontenttype", "must be application/json"));
    }
    let service_id = string(obj, "subject")?
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| bad("subject", "must be the service id, e.g. \"12\""))?;
    let data = match obj.get("data") {
        Some(Value::Object(d)) => d,
        None | Some(Value::Null) => return Err(bad("data", "is required")),
        Some(_) => return Err(bad("data", "must be an object with `quantity`")),
    };
    let q = quantity(data.get("quantity"), "data.quantity")?;
    let metric = metric_and_quantity(string(obj, "type")?, q, Format::CloudEvents)?;
    event(
        obj,
        EventKey {
            customer_id,
            source,
            id,
        },
        service_id,
        metric,
        q,
        now,
    )
}

/// A request's events as read: each with its id (when readable), parsed or refused.
struct Body {
    events: Vec<(Option<String>, Result<Incoming, Bad>)>,
    /// One event, not a batch: its refusal is the request's error.
    single: bool,
    format: Format,
}

/// The body's events.
fn events(body: UsageEventsRequest, customer_id: i64, now: DateTime<Utc>) -> ApiResult<Body> {
    let (bytes, format) = match &body {
        UsageEventsRequest::Json(b) => (&b.0, Format::Native),
        UsageEventsRequest::CloudEvent(b) => (&b.0, Format::CloudEvents),
        UsageEventsRequest::CloudEventBatch(b) => (&b.0, Format::CloudEvents),
    };
    let value: Value = super::json::parse(bytes).or_else(|e| {
        // An array is refused by `parse` (objects only elsewhere); a CloudEvents batch is one.
        serde_json::from_slice::<Value>(bytes)
            .ok()
            .filter(Value::is_array)
            .ok_or(e)
    })?;
    let (items, single): (Vec<Value>, bool) = match (&body, value) {
        (UsageEventsRequest::CloudEventBatch(_), Value::Array(items)) => (items, false),
        (UsageEventsRequest::CloudEventBatch(_), _) => {
            return Err(ApiError::invalid(
                "body",
                "a CloudEvents batch must be a JSON array of events",
            ));
        }
        (UsageEventsRequest::CloudEvent(_), v @ Value::Object(_)) => (vec![v], true),
        (UsageEventsRequest::Json(_), Value::Object(mut obj)) if obj.contains_key("events") => {
            if obj.len() > 1 {
                let other = obj
                    .keys()
                    .find(|k| *k != "events")
                    .cloned()
                    .unwrap_or_default();
                return Err(ApiError::invalid(
                    &other,
                    format!("{other} is not a known field (a batch has only `events`)"),
                ));
            }
            match obj.remove("events") {
                Some(Value::Array(items)) => (items, false),
                _ => return Err(ApiError::invalid("events", "events must be an array")),
            }
        }
        (UsageEventsRequest::Json(_), v @ Value::Object(_)) => (vec![v], true),
        _ => {
            return Err(ApiError::invalid(
                "body",
                "the body must be one event (a JSON object) or a batch",
            ));
        }
    };
    let n = items.len();
    if n == 0 || n > MAX_EVENTS_PER_REQUEST {
        let field = if format == Format::Native {
            "events"
        } else {
            "body"
        };
        return Err(ApiError::invalid(
            field,
            format!("a batch holds 1 to {MAX_EVENTS_PER_REQUEST} events, not {n}"),
        ));
    }
    let parsed = items
        .iter()
        .map(|v| {
            let id = v.get("id").and_then(Value::as_str).map(str::to_owned);
            let event = match format {
                Format::Native => native(v, customer_id, now),
                Format::CloudEvents => cloud_event(v, customer_id, now),
            };
            (id, event)
        })
        .collect();
    Ok(Body {
        events: parsed,
        single,
        format,
    })
}

// ---------------------------------------------------------------------------------------------
// Responses.

/// What happened to one event.
#[derive(Debug, Clone, Object)]
pub struct UsageEventResult {
    /// Its position in the request.
    pub index: i64,
    /// Its id, when it had a readable one.
    #[oai(nullable)]
    pub id: Option<String>,
    /// `accepted` (committed now), `duplicate` (committed before with the same content:
    /// nothing changed) or `refused`.
    pub status: String,
    /// Why it was refused: `validation_failed`, `conflict` (the id was used with different
    /// content), `unknown_service`, `unknown_metric`, `outside_period` or `over_quota`.
    #[oai(nullable)]
    pub code: Option<String>,
    /// The field at fault (`events[3].time`).
    #[oai(nullable)]
    pub field: Option<String>,
    #[oai(nullable)]
    pub message: Option<String>,
    /// With `over_quota`: the quota that refused it.
    #[oai(nullable)]
    pub quota: Option<QuotaExceeded>,
}

/// The answer of `POST /v1/usage-events`: every accepted and duplicate event is durable.
#[derive(Debug, Clone, Object)]
pub struct UsageEventsReceipt {
    pub accepted: i64,
    pub duplicates: i64,
    pub refused: i64,
    /// One per event, in request order.
    pub results: Vec<UsageEventResult>,
}

fn refused(
    index: usize,
    id: Option<String>,
    code: &str,
    field: String,
    message: String,
) -> UsageEventResult {
    UsageEventResult {
        index: index as i64,
        id,
        status: "refused".into(),
        code: Some(code.into()),
        field: Some(field),
        message: Some(message),
        quota: None,
    }
}

fn describe(refusal: &Refusal, metric: &str) -> (&'static str, String, Option<QuotaExceeded>) {
    match refusal {
        Refusal::Conflict => (
            "conflict",
            "was already used for an event with different content (same source)".into(),
            None,
        ),
        Refusal::UnknownMetric => (
            "unknown_metric",
            format!("{metric} is not declared; declare custom metrics with PUT /v1/quotas"),
            None,
        ),
        Refusal::UnknownService => (
            "unknown_service",
            "names no service of this customer".into(),
            None,
        ),
        Refusal::Time(TimeRefused::Future) => (
            "validation_failed",
            "is more than 5 minutes in the future".into(),
            None,
        ),
        Refusal::Time(TimeRefused::BeforeOpenPeriod(start)) => (
            "outside_period",
            format!("is before the open metering period, which began at {start}"),
            None,
        ),
        Refusal::OverQuota {
            quota,
            used,
            period_start,
            period_end,
        } => (
            "over_quota",
            format!("would exceed the {metric} quota of {quota} (used {used}) until {period_end}"),
            Some(QuotaExceeded {
                metric: metric.to_owned(),
                quota: quota.normalize().to_string(),
                used: used.normalize().to_string(),
                period_start: *period_start,
                period_end: *period_end,
            }),
        ),
    }
}

/// A single event's refusal as the request's error.
fn as_error(result: &UsageEventResult) -> ApiError {
    let code = result.code.clone().unwrap_or_default();
    let field = result.field.clone();
    let message = match (&field, &result.message) {
        (Some(f), Some(m)) => format!("{f} {m}"),
        (None, Some(m)) => m.clone(),
        _ => "refused".into(),
    };
    let body = |code: String| {
        Json(ErrorBody {
            code,
            message: message.clone(),
            field: field.clone(),
            quota: result.quota.clone().map(Box::new),
        })
    };
    match code.as_str() {
        "conflict" => ApiError::Conflict(body(code)),
        "over_quota" => {
            let retry = result
                .quota
                .as_ref()
                .map(|q| (q.period_end - Utc::now()).num_seconds().max(1) as u64)
                .unwrap_or(60);
            ApiError::TooManyRequests(body(code), retry)
        }
        _ => ApiError::Unprocessable(body(code)),
    }
}

// ---------------------------------------------------------------------------------------------
// Usage and quotas.

/// One service's share of a metric.
#[derive(Debug, Clone, Object)]
pub struct ServiceUsage {
    pub service_id: i64,
    /// Exact decimal string.
    pub total: String,
    pub events: i64,
}

/// A metric's usage in the period, against its quota.
#[derive(Debug, Clone, Object)]
pub struct MetricUsage {
    pub metric: String,
    /// The period's total over all services (exact decimal string).
    pub total: String,
    pub events: i64,
    /// The monthly quota (null: none).
    #[oai(nullable)]
    pub quota: Option<String>,
    /// `total` as a percentage of `quota`, two decimals (null without a quota).
    #[oai(nullable)]
    pub percent_used: Option<String>,
    /// `notify` or `reject`.
    pub over_quota: String,
    /// Thresholds (80, 100) announced this period.
    pub thresholds_crossed: Vec<i32>,
    pub services: Vec<ServiceUsage>,
}

/// `GET /v1/usage`: a metering period's totals.
#[derive(Debug, Clone, Object)]
pub struct UsageSummary {
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub billing_day: i32,
    pub time_zone: String,
    pub metrics: Vec<MetricUsage>,
}

/// One bucket of a time series.
#[derive(Debug, Clone, Object)]
pub struct UsagePoint {
    pub start: DateTime<Utc>,
    /// Exact decimal string.
    pub quantity: String,
    pub events: i64,
}

/// `GET /v1/usage/timeseries`.
#[derive(Debug, Clone, Object)]
pub struct UsageTimeseries {
    pub metric: String,
    #[oai(nullable)]
    pub service_id: Option<i64>,
    /// `minute`, `hour` or `day` (of local time in `time_zone`).
    pub bucket: String,
    pub time_zone: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Buckets with events, oldest first (buckets without any are left out).
    pub points: Vec<UsagePoint>,
}

/// A metric's quota.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct QuotaEntry {
    /// `primary_bytes`, `backup_bytes`, `requests`, or a custom metric (declared by being
    /// listed here).
    pub metric: String,
    /// Monthly quota as an exact decimal string (`"1000000"`); null: no limit.
    #[oai(nullable)]
    #[serde(default)]
    pub quota: Option<String>,
    /// `notify` (default: accept and announce) or `reject` (refuse events over the quota with
    /// 429).
    #[oai(nullable)]
    #[serde(default)]
    pub over_quota: Option<String>,
}

/// A customer's metering cycle and quotas.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// Day of the month (1–28) periods start on, at local midnight. Default 1.
    #[oai(nullable)]
    #[serde(default)]
    pub billing_day: Option<i32>,
    /// IANA time zone of the cycle (`Europe/Paris`). Default `UTC`.
    #[oai(nullable)]
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Every quota and declared metric (the list replaces the previous one).
    pub quotas: Vec<QuotaEntry>,
}

/// `GET /v1/quotas`.
#[derive(Debug, Clone, Object)]
pub struct Quotas {
    pub billing_day: i32,
    pub time_zone: String,
    /// The open period under this cycle.
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub quotas: Vec<QuotaEntry>,
}

fn decimal_string(field: &str, text: &str) -> ApiResult<Decimal> {
    Quantity::parse(text)
        .map(Quantity::value)
        .map_err(|e| ApiError::invalid(field, format!("{field} {}", e.0)))
}

async fn quotas_view(ctx: &ApiContext, customer_id: i64) -> ApiResult<Quotas> {
    let cycle = store::cycle(&ctx.pool, customer_id).await?;
    let rows = store::quotas(&ctx.pool, customer_id).await?;
    let (period_start, period_end) = cycle.period_containing(Utc::now());
    Ok(Quotas {
        billing_day: cycle.day() as i32,
        time_zone: cycle.time_zone().to_owned(),
        period_start,
        period_end,
        quotas: rows
            .into_iter()
            .map(|r| QuotaEntry {
                metric: r.metric,
                quota: r.quota.map(|q| q.normalize().to_string()),
                over_quota: Some(r.over_quota),
            })
            .collect(),
    })
}

pub struct MeteringApi;

#[OpenApi(tag = "ApiTags::Metering")]
impl MeteringApi {
    /// Record usage events, exactly once. One event, or up to 1,000: as Tranche's JSON
    /// (`application/json`: an event, or `{"events": [...]}`) or as CloudEvents
    /// (`application/cloudevents+json`, `application/cloudevents-batch+json`; `type` is the
    /// metric, `subject` the service id, `data.quantity` the amount).
    ///
    /// The answer comes once the accepted events are committed (grouped with concurrent
    /// requests into one transaction). An event's identity is (customer, source, id), kept at
    /// least 32 days: a replay answers `duplicate`, the same id with other content is refused
    /// (`conflict`). A batch answers 200 with one result per event — the good ones land, the
    /// bad ones are named. A single event answers with its own status: 200, 409 (conflict),
    /// 422 (invalid, naming the field), or 429 with the quota when a quota that rejects would
    /// be exceeded.
    #[oai(
        path = "/v1/usage-events",
        method = "post",
        operation_id = "record_usage_events"
    )]
    async fn record(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        body: UsageEventsRequest,
    ) -> ApiResult<Json<UsageEventsReceipt>> {
        let now = Utc::now();
        let Body {
            events: parsed,
            single,
            format,
        } = events(body, tenant.customer_id, now)?;
        let prefix = |i: usize, field: &str| {
            let field = format.field(field);
            match (single, field.is_empty()) {
                (true, true) => "body".to_owned(),
                (true, false) => field.to_owned(),
                (false, true) if format == Format::Native => format!("events[{i}]"),
                (false, true) => format!("[{i}]"),
                (false, false) if format == Format::Native => format!("events[{i}].{field}"),
                (false, false) => format!("[{i}].{field}"),
            }
        };
        let mut results: Vec<Option<UsageEventResult>> = Vec::with_capacity(parsed.len());
        let mut good: Vec<(usize, Option<String>, Incoming)> = Vec::new();
        for (i, (id, event)) in parsed.into_iter().enumerate() {
            match event {
                Ok(e) => {
                    good.push((i, id, e));
                    results.push(None);
                }
                Err(b) => results.push(Some(refused(
                    i,
                    id,
                    "validation_failed",
                    prefix(i, &b.field),
                    b.message,
                ))),
            }
        }
        if !good.is_empty() {
            let submitted: Vec<Incoming> = good.iter().map(|g| g.2.clone()).collect();
            let answer = ctx
                .metering
                .call(
                    |reply| BatcherMsg::Submit(submitted, reply),
                    Some(COMMIT_TIMEOUT),
                )
                .await;
            let outcomes = match answer {
                Ok(ractor::rpc::CallResult::Success(Ok(outcomes))) => outcomes,
                Ok(ractor::rpc::CallResult::Success(Err(e))) => {
                    tracing::warn!(error = %e, "usage events not committed");
                    return Err(ApiError::unavailable(
                        "the usage events could not be committed; nothing was recorded, retry",
                    ));
                }
                _ => {
                    return Err(ApiError::unavailable(
                        "the usage events were not confirmed in time; retry (replays are \
                         deduplicated)",
                    ));
                }
            };
            for ((i, id, event), outcome) in good.into_iter().zip(outcomes) {
                results[i] = Some(match outcome {
                    Outcome::Accepted | Outcome::Duplicate => UsageEventResult {
                        index: i as i64,
                        id,
                        status: if outcome == Outcome::Accepted {
                            "accepted"
                        } else {
                            "duplicate"
                        }
                        .into(),
                        code: None,
                        field: None,
                        message: None,
                        quota: None,
                    },
                    Outcome::Refused(r) => {
                        let (code, message, quota) = describe(&r, event.content.metric.as_str());
                        UsageEventResult {
                            quota,
                            ..refused(i, id, code, prefix(i, r.field()), message)
                        }
                    }
                });
            }
        }
        let results: Vec<UsageEventResult> = results.into_iter().flatten().collect();
        let count = |s: &str| results.iter().filter(|r| r.status == s).count() as i64;
        let receipt = UsageEventsReceipt {
            accepted: count("accepted"),
            duplicates: count("duplicate"),
            refused: count("refused"),
            results,
        };
        let m = &crate::metrics::METRICS;
        for (result, n) in [
            ("accepted", receipt.accepted),
            ("duplicate", receipt.duplicates),
            ("refused", receipt.refused),
        ] {
            if n > 0 {
                m.usage_events
                    .get_or_create(&crate::metrics::ResultLabels { result })
                    .inc_by(n as u64);
            }
        }
        if single && receipt.refused == 1 {
            return Err(as_error(&receipt.results[0]));
        }
        Ok(Json(receipt))
    }

    /// This metering period's usage per metric (and per service), against the quotas.
    #[oai(path = "/v1/usage", method = "get", operation_id = "get_usage")]
    async fn usage(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// Only this metric.
        metric: Query<Option<String>>,
        /// Only this service.
        service_id: Query<Option<i64>>,
        /// A time inside the period to report (RFC 3339; default: now, the open period).
        at: Query<Option<DateTime<Utc>>>,
    ) -> ApiResult<Json<UsageSummary>> {
        if let Some(at) = at.0 {
            super::input::check_time("at", at, super::input::earliest_fact_time())?;
        }
        let cycle = store::cycle(&ctx.pool, tenant.customer_id).await?;
        let (start, end) = cycle.period_containing(at.0.unwrap_or_else(Utc::now));
        let rows = store::usage_between(
            &ctx.pool,
            tenant.customer_id,
            start,
            end,
            metric.0.as_deref(),
            service_id.0,
        )
        .await?;
        let rules = store::quotas(&ctx.pool, tenant.customer_id).await?;
        let crossed = store::thresholds_crossed(&ctx.pool, tenant.customer_id, start).await?;
        let mut metrics: BTreeMap<String, MetricUsage> = BTreeMap::new();
        let blank = |metric: &str| MetricUsage {
            metric: metric.to_owned(),
            total: "0".into(),
            events: 0,
            quota: None,
            percent_used: None,
            over_quota: OverQuota::Notify.as_str().into(),
            thresholds_crossed: Vec::new(),
            services: Vec::new(),
        };
        let mut totals: BTreeMap<String, Decimal> = BTreeMap::new();
        for r in rows {
            let m = metrics
                .entry(r.metric.clone())
                .or_insert_with(|| blank(&r.metric));
            m.events += r.events;
            *totals.entry(r.metric.clone()).or_default() += r.quantity;
            m.services.push(ServiceUsage {
                service_id: r.service_id,
                total: r.quantity.normalize().to_string(),
                events: r.events,
            });
        }
        for rule in &rules {
            if metric.0.as_ref().is_some_and(|m| *m != rule.metric) {
                continue;
            }
            let m = metrics
                .entry(rule.metric.clone())
                .or_insert_with(|| blank(&rule.metric));
            m.quota = rule.quota.map(|q| q.normalize().to_string());
            m.over_quota = rule.over_quota.clone();
            let total = totals.get(&rule.metric).copied().unwrap_or_default();
            m.percent_used = percent_used(total, rule.quota).map(|p| p.to_string());
        }
        for (name, m) in metrics.iter_mut() {
            m.total = totals
                .get(name)
                .copied()
                .unwrap_or_default()
                .normalize()
                .to_string();
            m.thresholds_crossed = crossed
                .iter()
                .filter(|(metric, _)| metric == name)
                .map(|(_, t)| *t)
                .collect();
        }
        Ok(Json(UsageSummary {
            period_start: start,
            period_end: end,
            billing_day: cycle.day() as i32,
            time_zone: cycle.time_zone().to_owned(),
            metrics: metrics.into_values().collect(),
        }))
    }

    /// A metric's usage over time, in minute, hour or day buckets (days and hours of the
    /// metering cycle's time zone). At most 10,000 buckets per request.
    #[oai(
        path = "/v1/usage/timeseries",
        method = "get",
        operation_id = "get_usage_timeseries"
    )]
    #[allow(clippy::too_many_arguments)] // one argument per documented query parameter
    async fn timeseries(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        /// The metric.
        metric: Query<String>,
        /// Only this service.
        service_id: Query<Option<i64>>,
        /// `minute`, `hour` (default) or `day`.
        bucket: Query<Option<String>>,
        /// From this time (RFC 3339; default: the open period's start).
        from: Query<Option<DateTime<Utc>>>,
        /// Until this time, excluded (default: now).
        to: Query<Option<DateTime<Utc>>>,
    ) -> ApiResult<Json<UsageTimeseries>> {
        let unit = bucket.0.unwrap_or_else(|| "hour".into());
        let width = match unit.as_str() {
            "minute" => TimeDelta::minutes(1),
            "hour" => TimeDelta::hours(1),
            "day" => TimeDelta::days(1),
            _ => {
                return Err(ApiError::invalid(
                    "bucket",
                    "bucket must be minute, hour or day",
                ));
            }
        };
        Metric::parse(&metric.0)
            .map_err(|e| ApiError::invalid("metric", format!("metric {}", e.0)))?;
        let cycle = store::cycle(&ctx.pool, tenant.customer_id).await?;
        let now = Utc::now();
        let from = from.0.unwrap_or_else(|| cycle.period_containing(now).0);
        let to = to.0.unwrap_or(now);
        let earliest = super::input::earliest_fact_time();
        super::input::check_time("from", from, earliest)?;
        super::input::check_time("to", to, earliest)?;
        if to <= from {
            return Err(ApiError::invalid("to", "to must be after from"));
        }
        if (to - from).num_seconds() / width.num_seconds() > MAX_BUCKETS {
            return Err(ApiError::invalid(
                "to",
                format!("the range holds more than {MAX_BUCKETS} {unit} buckets; narrow it"),
            ));
        }
        let points = store::timeseries(
            &ctx.pool,
            tenant.customer_id,
            &metric.0,
            service_id.0,
            from,
            to,
            &unit,
            cycle.time_zone(),
        )
        .await?;
        Ok(Json(UsageTimeseries {
            metric: metric.0,
            service_id: service_id.0,
            bucket: unit,
            time_zone: cycle.time_zone().to_owned(),
            from,
            to,
            points: points
                .into_iter()
                .map(|b| UsagePoint {
                    start: b.start,
                    quantity: b.quantity.normalize().to_string(),
                    events: b.events,
                })
                .collect(),
        }))
    }

    /// The metering cycle and the monthly quotas (and declared custom metrics).
    #[oai(path = "/v1/quotas", method = "get", operation_id = "get_quotas")]
    async fn get_quotas(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Quotas>> {
        Ok(Json(quotas_view(&ctx, tenant.customer_id).await?))
    }

    /// Replace the metering cycle and the quotas. A metric listed without a quota is declared
    /// (custom metrics must be) but unlimited; a custom metric left out is no longer accepted.
    /// Crossing 80 % and 100 % of a quota sends `quota.threshold_crossed` once per threshold
    /// and period. Changing the cycle recounts the open period's totals.
    #[oai(path = "/v1/quotas", method = "put", operation_id = "put_quotas")]
    async fn put_quotas(
        &self,
        #[oai(scope = "Scope::Admin")] tenant: Scoped<needs::Admin>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<QuotaSettings>,
    ) -> ApiResult<Json<Quotas>> {
        let body = body.0;
        let day = body.billing_day.unwrap_or(1);
        if !(1..=28).contains(&day) {
            return Err(ApiError::invalid(
                "billing_day",
                "billing_day must be between 1 and 28",
            ));
        }
        let tz = body.time_zone.as_deref().unwrap_or("UTC");
        let cycle = BillingCycle::new(day, tz).map_err(|e| ApiError::invalid("time_zone", e.0))?;
        if body.quotas.len() > 100 {
            return Err(ApiError::invalid("quotas", "at most 100 quotas"));
        }
        let mut rows: Vec<store::QuotaRow> = Vec::with_capacity(body.quotas.len());
        for (i, q) in body.quotas.iter().enumerate() {
            let field = |f: &str| format!("quotas[{i}].{f}");
            let metric = Metric::parse(&q.metric).map_err(|e| {
                ApiError::invalid(&field("metric"), format!("{} {}", field("metric"), e.0))
            })?;
            if rows.iter().any(|r| r.metric == metric.as_str()) {
                return Err(ApiError::invalid(
                    &field("metric"),
                    format!("{} lists {} twice", field("metric"), metric.as_str()),
                ));
            }
            let quota = q
                .quota
                .as_deref()
                .map(|t| decimal_string(&field("quota"), t))
                .transpose()?;
            let over_quota = match q.over_quota.as_deref() {
                None => OverQuota::Notify,
                Some(text) => OverQuota::parse(text).ok_or_else(|| {
                    ApiError::invalid(
                        &field("over_quota"),
                        format!("{} must be notify or reject", field("over_quota")),
                    )
                })?,
            };
            rows.push(store::QuotaRow {
                metric: metric.as_str().to_owned(),
                quota,
                over_quota: over_quota.as_str().to_owned(),
            });
        }
        store::put_quotas(&ctx.pool, tenant.customer_id, cycle, &rows, Utc::now()).await?;
        Ok(Json(quotas_view(&ctx, tenant.customer_id).await?))
    }
}
