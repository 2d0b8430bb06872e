//! The live status page: server-rendered HTML at `/status/{token}` for a read-only link
//! (`POST /v1/status-links`), or after signing in with an API key at `/status`. It shows each
//! service's domains (state, per-CDN availability and last probe, desired vs applied DNS
//! weights, certificate expiry, drills and maintenance), active storms with their trigger, the
//! last DNS changes and — for customer-wide links — this period's invoice. It updates itself
//! through Server-Sent Events: `/status/{token}/events` re-renders the live part every two
//! seconds and sends it when it changed. No JavaScript build step: one small static script.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::http::StatusCode;
use poem::web::sse::{Event, SSE};
use poem::web::{Data, Form, Html, Path, Redirect};
use poem::{IntoResponse, Request, Response, Route, get, handler};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use crate::api::ApiContext;
use crate::postgres::dns::{self, ChangeFilter, DnsChangeRow, DnsDomainRow};
use crate::postgres::invoices::{self, InvoiceFilter, InvoiceRow};
use crate::postgres::services::{self, ServiceRow};
use crate::postgres::status::{self, LinkRow, NewLink};
use crate::postgres::storms::{self, DomainStateRow, StormFilter, StormRow};
use crate::wording::{self, dollars};

/// How often an open page is re-rendered (and sent when it changed).
const REFRESH: Duration = Duration::from_secs(2);
/// How long a sign-in with an API key lasts.
const SESSION_HOURS: i64 = 12;

const SCRIPT: &str = include_str!("status/app.js");
const STYLE: &str = include_str!("status/app.css");

/// The `/status` routes (mounted outside the OpenAPI document).
pub fn routes() -> Route {
    Route::new()
        .at("/", get(sign_in_form).post(sign_in))
        .at("/assets/app.js", get(script))
        .at("/assets/app.css", get(style))
        .at("/:token", get(page))
        .at("/:token/events", get(events))
}

/// Everything the live part of a page shows.
struct PageData {
    link: LinkRow,
    services: Vec<ServiceView>,
    invoice: Option<InvoiceRow>,
}

struct ServiceView {
    service: ServiceRow,
    domains: Vec<DomainStateRow>,
    dns: Vec<DnsDomainRow>,
    storms: Vec<StormRow>,
    changes: Vec<DnsChangeRow>,
}

/// Loads what a link shows (`None`: the link is unknown, revoked or expired).
async fn load(pool: &sqlx::PgPool, token: &str) -> sqlx::Result<Option<PageData>> {
    let Some(link) = status::resolve(pool, token).await? else {
        return Ok(None);
    };
    let customer = link.customer_id;
    let mut rows = services::list(pool, customer).await?;
    if let Some(only) = link.service_id {
        rows.retain(|s| s.id == only);
    }
    let mut views = Vec::with_capacity(rows.len());
    for service in rows {
        let domains = storms::service_state(pool, customer, service.id)
            .await?
            .unwrap_or_default();
        let dns = dns::service_dns(pool, customer, service.id)
            .await?
            .unwrap_or_default();
        let storms = storms::list(
            pool,
            customer,
            &StormFilter {
                service_id: Some(service.id),
                active: Some(true),
                since: None,
                until: None,
                limit: 50,
            },
        )
        .await?;
        let changes = dns::changes(
            pool,
            customer,
            &ChangeFilter {
                service_id: Some(service.id),
                limit: 5,
                ..ChangeFilter::default()
            },
        )
        .await?;
        views.push(ServiceView {
            service,
            domains,
            dns,
            storms,
            changes,
        });
    }
    let invoice = if link.service_id.is_none() {
        invoices::list(
            pool,
            customer,
            &InvoiceFilter {
                status: Some("draft".into()),
                before: None,
                limit: 1,
            },
        )
        .await?
        .into_iter()
        .next()
    } else {
        None
    };
    Ok(Some(PageData {
        link,
        services: views,
        invoice,
    }))
}

/// Security headers of every status response: no caching, no referrer (the URL is the
/// credential), only this origin's script and style.
fn harden(resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    let h = resp.headers_mut();
    for (name, value) in [
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        (
            "content-security-policy",
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    ] {
        if let Ok(v) = poem::http::HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    }
    resp
}

#[handler]
fn script() -> Response {
    harden(
        Response::builder()
            .content_type("text/javascript; charset=utf-8")
            .body(SCRIPT),
    )
}

#[handler]
fn style() -> Response {
    harden(
        Response::builder()
            .content_type("text/css; charset=utf-8")
            .body(STYLE),
    )
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/status/assets/app.css\"></head>\
         <body>{body}</body></html>\n",
        esc(title)
    )
}

fn sign_in_page(message: Option<&str>) -> String {
    let note = message
        .map(|m| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(m)))
        .unwrap_or_default();
    document(
        "Tranche status — sign in",
        &format!(
            "<header><h1>Tranche status</h1></header><main class=\"narrow\">{note}\
             <form method=\"post\" action=\"/status\">\
             <label for=\"key\">API key</label>\
             <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"off\" required>\
             <button type=\"submit\">Sign in</button></form>\
             <p class=\"hint\">Any key of your account with the <code>read</code> scope. You get a \
             page of every service for {SESSION_HOURS} hours; for a link to share, use \
             <code>POST /v1/status-links</code>.</p></main>"
        ),
    )
}

#[handler]
fn sign_in_form() -> Response {
    harden(Html(sign_in_page(None)))
}

#[derive(Deserialize)]
struct SignIn {
    key: String,
}

#[handler]
async fn sign_in(req: &Request, ctx: Data<&Arc<ApiContext>>, form: Form<SignIn>) -> Response {
    let refused = |status: StatusCode, message: &str| {
        harden(Html(sign_in_page(Some(message))).with_status(status))
    };
    let tenant = match crate::api::auth::key_tenant(req, &ctx, form.key.trim(), None).await {
        Ok(t) => t,
        Err(e) if e.status() == StatusCode::TOO_MANY_REQUESTS => {
            return refused(
                e.status(),
                "Too many attempts; wait a little and try again.",
            );
        }
        Err(e) if e.status().is_server_error() => {
            return refused(
                e.status(),
                "The database is unavailable; try again shortly.",
            );
        }
        Err(_) => return refused(StatusCode::UNAUTHORIZED, "That API key is not valid."),
    };
    if !tenant.has("read") {
        return refused(StatusCode::FORBIDDEN, "That key lacks the read scope.");
    }
    let created_by = crate::api::dns::actor(&tenant);
    let created = status::create(
        &ctx.pool,
        tenant.customer_id,
        NewLink {
            service_id: None,
            label: "signed in",
            session: true,
            created_by: &created_by,
            expires_at: Some(Utc::now() + chrono::TimeDelta::hours(SESSION_HOURS)),
        },
    )
    .await;
    match created {
        Ok(Some((_, token))) => harden(Redirect::see_other(format!("/status/{token}"))),
        Ok(None) | Err(_) => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "The database is unavailable; try again shortly.",
        ),
    }
}

fn not_found() -> Response {
    harden(
        Html(document(
            "Tranche status — not found",
            "<header><h1>Tranche status</h1></header><main class=\"narrow\">\
             <p>This status link is unknown, revoked or expired.</p>\
             <p><a href=\"/status\">Sign in with an API key</a></p></main>",
        ))
        .with_status(StatusCode::NOT_FOUND),
    )
}

fn unavailable() -> Response {
    harden(
        Html(document(
            "Tranche status",
            "<main class=\"narrow\"><p>The database is unavailable; this page will work again shortly.</p></main>",
        ))
        .with_status(StatusCode::SERVICE_UNAVAILABLE),
    )
}

#[handler]
async fn page(ctx: Data<&Arc<ApiContext>>, Path(token): Path<String>) -> Response {
    let data = match load(&ctx.pool, &token).await {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(),
        Err(e) => {
            tracing::warn!(error = %e, "status page unavailable");
            return unavailable();
        }
    };
    let scope = if data.link.service_id.is_some() {
        "service"
    } else {
        "account"
    };
    let body = format!(
        "<header><h1>Tranche status</h1><span id=\"conn\" class=\"conn\">connecting…</span></header>\
         <main id=\"live\" data-events=\"/status/{}/events\">{}</main>\
         <footer>Read-only {scope} link “{}” · updated <time id=\"updated\">{}</time></footer>\
         <script src=\"/status/assets/app.js\"></script>",
        esc(&token),
        render_live(&data, Utc::now()),
        esc(&data.link.label),
        Utc::now().format("%H:%M:%S UTC"),
    );
    harden(Html(document("Tranche status", &body)))
}

#[handler]
async fn events(ctx: Data<&Arc<ApiContext>>, Path(token): Path<String>) -> Response {
    match status::resolve(&ctx.pool, &token).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(),
        Err(_) => return unavailable(),
    }
    struct Feed {
        pool: sqlx::PgPool,
        token: String,
        last: Option<String>,
        first: bool,
        gone: bool,
    }
    let feed = Feed {
        pool: ctx.pool.clone(),
        token,
        last: None,
        first: true,
        gone: false,
    };
    let stream = futures::stream::unfold(feed, |mut f| async move {
        if f.gone {
            return None;
        }
        loop {
            if !f.first {
                tokio::time::sleep(REFRESH).await;
            }
            f.first = false;
            match load(&f.pool, &f.token).await {
                Ok(Some(data)) => {
                    let html = render_live(&data, Utc::now());
                    if f.last.as_deref() != Some(html.as_str()) {
                        f.last = Some(html.clone());
                        return Some((Event::message(html).event_type("update"), f));
                    }
                }
                Ok(None) => {
                    f.gone = true;
                    return Some((Event::message("gone").event_type("gone"), f));
                }
                Err(e) => tracing::warn!(error = %e, "status page update failed; retrying"),
            }
        }
    });
    harden(SSE::new(stream).keep_alive(Duration::from_secs(15)))
}

/// HTML-escapes text.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `0.9876` → `98.8 %`.
fn percent(ratio: Option<&str>) -> String {
    ratio
        .and_then(|r| r.parse::<Decimal>().ok())
        .map(|r| format!("{} %", (r * Decimal::ONE_HUNDRED).round_dp(1).normalize()))
        .unwrap_or_else(|| "—".to_owned())
}

/// A last probe as a person reads it: `200 · 12 ms`, `503`, `timeout`.
fn probe(last: Option<&Value>) -> String {
    let Some(last) = last else {
        return "not probed yet".to_owned();
    };
    let status = last["status"].as_u64();
    match (
        last["outcome"].as_str(),
        status,
        last["latency_ms"].as_u64(),
    ) {
        (Some("ok"), Some(s), Some(ms)) => format!("{s} · {ms} ms"),
        (Some(o), _, _) => wording::outcome(o, status),
        (None, _, _) => "—".to_owned(),
    }
}

fn cert_days(last: Option<&Value>, now: DateTime<Utc>) -> String {
    last.and_then(|l| l["cert_expires_at"].as_str())
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .map(|t| format!("{} d", (t - now).num_days()))
        .unwrap_or_else(|| "—".to_owned())
}

fn weights(primary: Option<i16>) -> String {
    primary.map_or_else(|| "—".to_owned(), |p| format!("{p}/{}", 100 - p))
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn since(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds().max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d", s / 86_400),
    }
}

/// The live part of a page (what the events replace).
fn render_live(data: &PageData, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    if data.services.is_empty() {
        out.push_str("<p>No services yet.</p>");
    }
    for view in &data.services {
        render_service(&mut out, view, now);
    }
    if let Some(inv) = &data.invoice {
        out.push_str(&format!(
            "<section class=\"invoice\"><h2>This period’s invoice</h2>\
             <p>{} – {} · draft · {} lines</p>\
             <table><tr><th>Usage</th><td>{}</td></tr><tr><th>Storm discount</th><td>−{}</td></tr>\
             <tr class=\"total\"><th>Total so far</th><td>{}</td></tr></table></section>",
            inv.period_start.format("%Y-%m-%d %H:%M"),
            inv.period_end.format("%Y-%m-%d %H:%M UTC"),
            inv.line_count,
            dollars(inv.subtotal_cents),
            dollars(inv.discount_cents),
            dollars(inv.total_cents),
        ));
    }
    out
}

fn render_service(out: &mut String, view: &ServiceView, now: DateTime<Utc>) {
    let s = &view.service;
    let storming = view.storms.len();
    let headline = if storming > 0 {
        format!(
            "<span class=\"badge storm\">{storming} in a storm: traffic on {}</span>",
            esc(&s.backup_cdn)
        )
    } else {
        format!(
            "<span class=\"badge healthy\">traffic on {}</span>",
            esc(&s.primary_cdn)
        )
    };
    out.push_str(&format!(
        "<section class=\"service\" id=\"service-{}\"><h2>{} {headline}</h2>\
         <p class=\"cdns\">primary <b>{}</b> · backup <b>{}</b></p>",
        s.id,
        esc(&s.name),
        esc(&s.primary_cdn),
        esc(&s.backup_cdn),
    ));
    out.push_str(
        "<table class=\"domains\"><thead><tr><th>Domain</th><th>State</th>\
         <th>Primary</th><th>Backup</th><th>Weights (desired → applied)</th>\
         <th>Certificate</th><th>Note</th></tr></thead><tbody>",
    );
    for d in &view.domains {
        let applied = view
            .dns
            .iter()
            .find(|r| r.domain_id == d.domain_id)
            .and_then(|r| r.applied_primary);
        let mut note = Vec::new();
        if let Some(drill) = &d.drill {
            note.push(format!(
                "drill until {}",
                drill["ends_at"]
                    .as_str()
                    .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                    .map(|t| t.format("%H:%M UTC").to_string())
                    .unwrap_or_default()
            ));
        }
        if d.maintenance.is_some() {
            note.push("maintenance".to_owned());
        }
        if let Some(reason) = &d.state_reason {
            note.push(reason.clone());
        }
        let state_since = d
            .state_since
            .map(|t| format!(" <small>for {}</small>", since(t, now)))
            .unwrap_or_default();
        out.push_str(&format!(
            "<tr class=\"domain\" data-state=\"{state}\"><td>{name}</td>\
             <td><span class=\"badge {state}\">{state_text}</span>{state_since}</td>\
             <td>{pa}<br><small>{pl}</small></td><td>{ba}<br><small>{bl}</small></td>\
             <td>{dw} → {aw}</td><td>{pc} / {bc}</td><td>{note}</td></tr>",
            state = esc(&d.state),
            state_text = esc(&d.state.replace('_', " ")),
            name = esc(&d.hostname),
            pa = percent(d.primary_avail.as_deref()),
            pl = esc(&probe(d.primary_last.as_ref())),
            ba = percent(d.backup_avail.as_deref()),
            bl = esc(&probe(d.backup_last.as_ref())),
            dw = weights(Some(d.desired_primary_weight)),
            aw = weights(applied),
            pc = cert_days(d.primary_last.as_ref(), now),
            bc = cert_days(d.backup_last.as_ref(), now),
            note = esc(&note.join(" · ")),
        ));
    }
    if view.domains.is_empty() {
        out.push_str("<tr><td colspan=\"7\">No domains yet.</td></tr>");
    }
    out.push_str("</tbody></table>");

    if !view.storms.is_empty() {
        out.push_str(
            "<h3>Active storms</h3><table class=\"storms\"><thead><tr><th>Domain</th>\
             <th>Since</th><th>Trigger</th></tr></thead><tbody>",
        );
        for storm in &view.storms {
            let t = &storm.trigger;
            let trigger = format!(
                "primary at {} (policy {}), {} failures in a row",
                percent(t["primary_availability"].as_str()),
                percent(t["threshold_avail"].as_str()),
                t["primary_consecutive_failures"]
                    .as_i64()
                    .map_or_else(|| "?".to_owned(), |n| n.to_string()),
            );
            out.push_str(&format!(
                "<tr class=\"storm\"><td>{}</td><td>{} ({})</td><td>{}</td></tr>",
                esc(storm.hostname.as_deref().unwrap_or("—")),
                time(storm.started_at),
                since(storm.started_at, now),
                esc(&trigger),
            ));
        }
        out.push_str("</tbody></table>");
    }

    if !view.changes.is_empty() {
        out.push_str(
            "<h3>Last DNS changes</h3><table class=\"changes\"><thead><tr><th>Submitted</th>\
             <th>Zone</th><th>Records</th><th>Status</th></tr></thead><tbody>",
        );
        for c in &view.changes {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                time(c.submitted_at),
                esc(&c.zone),
                esc(&wording::change_records(&c.changes)),
                esc(&c.status),
            ));
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_numbers_read_as_people_read_them() {
        assert_eq!(
            esc("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
        assert_eq!(percent(Some("0.9876")), "98.8 %");
        assert_eq!(percent(Some("1")), "100 %");
        assert_eq!(percent(None), "—");
        assert_eq!(
            probe(Some(
                &serde_json::json!({"outcome": "http_status", "status": 503})
            )),
            "503"
        );
        assert_eq!(
            probe(Some(
                &serde_json::json!({"outcome": "ok", "status": 200, "latency_ms": 12})
            )),
            "200 · 12 ms"
        );
        assert_eq!(weights(Some(25)), "25/75");
    }
}
