//! SLO tracking's first resources (issue 16): business calendars (`/v1/calendars`) and the
//! applications that own jobs and SLOs (`/v1/applications`).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use tranche_core::slo::calendar::{Calendar as BusinessCalendar, CalendarKind};

use super::auth::{Scope, Scoped, needs};
use super::error::{ApiError, ApiResult};
use super::json::JsonBody;
use super::resource::Deleted;
use super::{ApiContext, ApiTags};
use crate::postgres::slo::{self, ApplicationRow, CalendarFields, CalendarRow};

/// Most holidays one calendar lists.
const MAX_HOLIDAYS: usize = 1000;
/// Longest range of `GET /v1/calendars/{id}/business-dates`.
const MAX_RANGE_DAYS: i64 = 366;

/// A holiday of a calendar.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct Holiday {
    pub date: NaiveDate,
    /// What it is (1–200 characters).
    #[oai(nullable)]
    #[serde(default)]
    pub name: Option<String>,
}

/// A business calendar.
#[derive(Debug, Clone, Object)]
pub struct Calendar {
    pub id: i64,
    pub name: String,
    /// `standard` (Mon–Fri minus holidays), `every_day`, `weekends_included` (every day minus
    /// holidays) or `holidays_included` (Mon–Fri, holidays included).
    pub kind: String,
    /// IANA time zone: business dates and expected times are local to it.
    pub time_zone: String,
    /// In date order.
    pub holidays: Vec<Holiday>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<CalendarRow> for Calendar {
    fn from(r: CalendarRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            kind: r.kind,
            time_zone: r.time_zone,
            holidays: r
                .holidays
                .into_iter()
                .map(|(date, name)| Holiday { date, name })
                .collect(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of `POST /v1/calendars` and `PUT /v1/calendars/{id}`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CalendarInput {
    /// 1–100 of `A-Z a-z 0-9 . _ -`, unique per customer.
    pub name: String,
    /// `standard`, `every_day`, `weekends_included` or `holidays_included`.
    pub kind: String,
    /// An IANA time zone (`Europe/Paris`).
    pub time_zone: String,
    /// Up to 1,000 dates (1900–9999), each once (default none).
    #[oai(nullable)]
    #[serde(default)]
    pub holidays: Option<Vec<Holiday>>,
}

/// `GET /v1/calendars/{id}/business-dates`.
#[derive(Debug, Clone, Object)]
pub struct BusinessDates {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// The business dates in `[from, to]`, in order.
    pub dates: Vec<NaiveDate>,
}

/// An application: owns jobs and SLOs; its name is what schedulers report in `/v1/job-status`.
#[derive(Debug, Clone, Object)]
pub struct Application {
    pub id: i64,
    pub name: String,
    #[oai(nullable)]
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<ApplicationRow> for Application {
    fn from(r: ApplicationRow) -> Self {
        Self {
            id: r.id,
            name: r.name,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Body of `POST /v1/applications`.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ApplicationInput {
    /// 1–100 of `A-Z a-z 0-9 . _ -`, unique per customer (as in `/v1/job-status`).
    pub name: String,
    /// Up to 1,000 characters.
    #[oai(nullable)]
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(ApiResponse)]
pub enum CreatedCalendar {
    #[oai(status = 201)]
    Created(Json<Calendar>),
}

#[derive(ApiResponse)]
pub enum CreatedApplication {
    #[oai(status = 201)]
    Created(Json<Application>),
}

/// A calendar, application or SLO name: the rule of application names in job reports.
pub(crate) fn valid_name(name: &str) -> ApiResult<()> {
    if super::keys::valid_application(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            "name must be 1-100 characters of A-Z, a-z, 0-9, '.', '_' or '-'",
        ))
    }
}

/// Checks a calendar body; returns its holidays.
fn checked(body: &CalendarInput) -> ApiResult<Vec<(NaiveDate, Option<String>)>> {
    valid_name(&body.name)?;
    let kind = CalendarKind::parse(&body.kind)
        .map_err(|e| ApiError::invalid("kind", format!("kind {}", e.0)))?;
    BusinessCalendar::new(kind, &body.time_zone, [])
        .map_err(|e| ApiError::invalid("time_zone", format!("time_zone {}", e.0)))?;
    let holidays = body.holidays.clone().unwrap_or_default();
    if holidays.len() > MAX_HOLIDAYS {
        return Err(ApiError::invalid(
            "holidays",
            format!("holidays lists at most {MAX_HOLIDAYS} dates"),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(holidays.len());
    for (i, h) in holidays.into_iter().enumerate() {
        if !(1900..=9999).contains(&h.date.year()) {
            let f = format!("holidays[{i}].date");
            return Err(ApiError::invalid(
                &f,
                format!("{f} must be between 1900 and 9999"),
            ));
        }
        if !seen.insert(h.date) {
            let f = format!("holidays[{i}].date");
            return Err(ApiError::invalid(&f, format!("{f} is listed twice")));
        }
        if let Some(name) = &h.name
            && (name.trim().is_empty() || name.chars().count() > 200)
        {
            let f = format!("holidays[{i}].name");
            return Err(ApiError::invalid(
                &f,
                format!("{f} must be 1 to 200 characters"),
            ));
        }
        out.push((h.date, h.name));
    }
    Ok(out)
}

/// A business date in a query: from 2000 (as job reports) to 9999.
pub(crate) fn check_date(field: &str, date: NaiveDate) -> ApiResult<()> {
    super::input::check_date(field, date, super::input::earliest_fact_time())
}

fn calendar_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("calendar {id} not found"))
}

fn application_not_found(id: i64) -> ApiError {
    ApiError::not_found(format!("application {id} not found"))
}

pub struct CalendarsApi;

#[OpenApi(tag = "ApiTags::Slo")]
impl CalendarsApi {
    /// Creates a business calendar with its holidays.
    #[oai(
        path = "/v1/calendars",
        method = "post",
        operation_id = "create_calendar"
    )]
    async fn create(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<CalendarInput>,
    ) -> ApiResult<CreatedCalendar> {
        let holidays = checked(&body.0)?;
        let row = slo::create_calendar(
            &ctx.pool,
            tenant.customer_id,
            &CalendarFields {
                name: &body.0.name,
                kind: &body.0.kind,
                time_zone: &body.0.time_zone,
                holidays: &holidays,
            },
        )
        .await?;
        Ok(CreatedCalendar::Created(Json(row.into())))
    }

    /// Your calendars, by name.
    #[oai(
        path = "/v1/calendars",
        method = "get",
        operation_id = "list_calendars"
    )]
    async fn list(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Vec<Calendar>>> {
        let rows = slo::calendars(&ctx.pool, tenant.customer_id).await?;
        Ok(Json(rows.into_iter().map(Calendar::from).collect()))
    }

    /// One calendar.
    #[oai(
        path = "/v1/calendars/:id",
        method = "get",
        operation_id = "get_calendar"
    )]
    async fn get(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<Calendar>> {
        let row = slo::calendar(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| calendar_not_found(id.0))?;
        Ok(Json(row.into()))
    }

    /// Replaces a calendar: its name, kind, time zone and the whole list of holidays.
    #[oai(
        path = "/v1/calendars/:id",
        method = "put",
        operation_id = "replace_calendar"
    )]
    async fn replace(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        body: JsonBody<CalendarInput>,
    ) -> ApiResult<Json<Calendar>> {
        let holidays = checked(&body.0)?;
        let row = slo::replace_calendar(
            &ctx.pool,
            tenant.customer_id,
            id.0,
            &CalendarFields {
                name: &body.0.name,
                kind: &body.0.kind,
                time_zone: &body.0.time_zone,
                holidays: &holidays,
            },
        )
        .await?
        .ok_or_else(|| calendar_not_found(id.0))?;
        Ok(Json(row.into()))
    }

    /// Deletes a calendar.
    #[oai(
        path = "/v1/calendars/:id",
        method = "delete",
        operation_id = "delete_calendar"
    )]
    async fn delete(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Deleted> {
        if slo::delete(&ctx.pool, slo::Owned::Calendar, tenant.customer_id, id.0).await? {
            Ok(Deleted::NoContent)
        } else {
            Err(calendar_not_found(id.0))
        }
    }

    /// The calendar's business dates between `from` and `to` (inclusive, at most 366 days).
    #[oai(
        path = "/v1/calendars/:id/business-dates",
        method = "get",
        operation_id = "list_business_dates"
    )]
    async fn business_dates(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
        /// First date (`YYYY-MM-DD`).
        from: Query<NaiveDate>,
        /// Last date, included.
        to: Query<NaiveDate>,
    ) -> ApiResult<Json<BusinessDates>> {
        check_date("from", from.0)?;
        check_date("to", to.0)?;
        if to.0 < from.0 {
            return Err(ApiError::invalid("to", "to must not be before from"));
        }
        if (to.0 - from.0).num_days() >= MAX_RANGE_DAYS {
            return Err(ApiError::invalid(
                "to",
                format!("the range holds at most {MAX_RANGE_DAYS} days"),
            ));
        }
        let row = slo::calendar(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| calendar_not_found(id.0))?;
        let kind = CalendarKind::parse(&row.kind).map_err(|_| ApiError::internal())?;
        let cal = BusinessCalendar::new(kind, &row.time_zone, row.holidays.iter().map(|h| h.0))
            .map_err(|_| ApiError::internal())?;
        let dates = cal.business_dates(from.0, to.0);
        Ok(Json(BusinessDates {
            from: from.0,
            to: to.0,
            dates,
        }))
    }

    /// Creates an application.
    #[oai(
        path = "/v1/applications",
        method = "post",
        operation_id = "create_application"
    )]
    async fn create_application(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        body: JsonBody<ApplicationInput>,
    ) -> ApiResult<CreatedApplication> {
        valid_name(&body.0.name)?;
        if let Some(d) = &body.0.description
            && d.chars().count() > 1000
        {
            return Err(ApiError::invalid(
                "description",
                "description must be at most 1000 characters",
            ));
        }
        let row = slo::create_application(
            &ctx.pool,
            tenant.customer_id,
            &body.0.name,
            body.0.description.as_deref(),
        )
        .await?;
        Ok(CreatedApplication::Created(Json(row.into())))
    }

    /// Your applications, by name.
    #[oai(
        path = "/v1/applications",
        method = "get",
        operation_id = "list_applications"
    )]
    async fn applications(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
    ) -> ApiResult<Json<Vec<Application>>> {
        let rows = slo::applications(&ctx.pool, tenant.customer_id).await?;
        Ok(Json(rows.into_iter().map(Application::from).collect()))
    }

    /// One application.
    #[oai(
        path = "/v1/applications/:id",
        method = "get",
        operation_id = "get_application"
    )]
    async fn application(
        &self,
        #[oai(scope = "Scope::Read")] tenant: Scoped<needs::Read>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Json<Application>> {
        let row = slo::application(&ctx.pool, tenant.customer_id, id.0)
            .await?
            .ok_or_else(|| application_not_found(id.0))?;
        Ok(Json(row.into()))
    }

    /// Deletes an application (its job reports stay).
    #[oai(
        path = "/v1/applications/:id",
        method = "delete",
        operation_id = "delete_application"
    )]
    async fn delete_application(
        &self,
        #[oai(scope = "Scope::Write")] tenant: Scoped<needs::Write>,
        ctx: Data<&Arc<ApiContext>>,
        id: Path<i64>,
    ) -> ApiResult<Deleted> {
        if slo::delete(&ctx.pool, slo::Owned::Application, tenant.customer_id, id.0).await? {
            Ok(Deleted::NoContent)
        } else {
            Err(application_not_found(id.0))
        }
    }
}
