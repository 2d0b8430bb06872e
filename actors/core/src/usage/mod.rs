//! Usage ingestion's pure core: what a CDN analytics source answers, which windows to poll, how
//! per-hostname bytes become per-service usage reports, and ([`revision`]) how a report becomes
//! stored snapshot revisions.
//!
//! A usage source (the engine's `UsageSource` port) speaks for one CDN (Cloudflare is the first implementation, in the
//! `tranche` crate). Its bytes for a hostname count as the *primary* bytes of services whose
//! primary CDN it is and as the *backup* bytes of services whose backup CDN it is, so each CDN's
//! traffic comes from that CDN's own analytics.

pub mod revision;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// Bytes served for one hostname in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUsage {
    pub hostname: String,
    pub window_start: DateTime<Utc>,
    pub bytes: i64,
}

/// One query to a source: these hostnames, windows of `window` in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceQuery {
    pub hostnames: Vec<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The source asked us to slow down (HTTP 429, a rate-limit error); retry after the hint
    /// or a backoff.
    #[error("rate limited")]
    RateLimited { retry_after: Option<Duration> },
    /// A failure worth retrying (5xx, network, a transient API error).
    #[error("transient: {0}")]
    Transient(String),
    /// A failure retrying will not fix (bad credentials, a rejected query).
    #[error("permanent: {0}")]
    Permanent(String),
}

/// A service whose usage is pulled from CDN analytics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageService {
    pub service_id: i64,
    pub customer_id: i64,
    /// CDN names as configured on the service (compared case-insensitively with a source's).
    pub primary_cdn: String,
    pub backup_cdn: String,
    /// Live hostnames of the service.
    pub hostnames: Vec<String>,
}

/// Usage of one service in one window, as a source reports it now (cumulative for the window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub service_id: i64,
    pub customer_id: i64,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub primary_bytes: i64,
    pub backup_bytes: i64,
    pub source: String,
}

/// How the ingestor polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSettings {
    /// How often sources are polled. Default 5 min.
    pub tick: Duration,
    /// Delay of the first poll after the node first owns shards. Default 10 s.
    pub first_poll: Duration,
    /// Window length of a snapshot. Default 1 h.
    pub window: Duration,
    /// How far back each poll re-reads (late analytics data). Default 6 h.
    pub lookback: Duration,
    /// Attempts per query before the tick gives up on it (the next tick retries).
    pub max_attempts: u32,
    /// First retry delay; doubled per attempt, with jitter.
    pub backoff_base: Duration,
    /// Hostnames per source query.
    pub hostnames_per_query: usize,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(300),
            first_poll: Duration::from_secs(10),
            window: Duration::from_secs(3600),
            lookback: Duration::from_secs(6 * 3600),
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            hostnames_per_query: 200,
        }
    }
}

/// The span a poll at `now` covers: whole windows from `now − lookback` (rounded down to a
/// window boundary) to the end of the window containing `now`.
/// Dogfooding (issue 16): what a successful ingestion pass over `[from, to)` reports into SLO
/// tracking for each customer it covered, as job `usage-ingestion` of the application
/// `tranche`, one run per UTC date (its run id is the date): `start` for every date the pass
/// reached, `succeed` for every date whose end it reached (the day's last window was pulled).
/// Replays are harmless: the adapter stores each (date, status) once.
pub fn ingestion_reports(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Vec<(chrono::NaiveDate, &'static str)> {
    let mut out = Vec::new();
    if to <= from {
        return out;
    }
    let last = (to - TimeDelta::nanoseconds(1)).date_naive();
    for date in from.date_naive().iter_days().take_while(|d| *d <= last) {
        out.push((date, "start"));
        let end = (date + TimeDelta::days(1))
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc());
        if end.is_some_and(|end| to >= end) {
            out.push((date, "succeed"));
        }
    }
    out
}

pub fn poll_span(
    now: DateTime<Utc>,
    window: Duration,
    lookback: Duration,
) -> (DateTime<Utc>, DateTime<Utc>) {
    let (current, _) = crate::billing::period_of(now, window);
    let back = TimeDelta::from_std(lookback).unwrap_or_default();
    let (from, _) = crate::billing::period_of(now - back, window);
    (
        from,
        current + TimeDelta::from_std(window).unwrap_or_default(),
    )
}

/// Turns a source's per-hostname rows into per-service reports: a service's bytes in a window
/// are the sum over its hostnames, as primary bytes if `cdn` is its primary CDN, backup bytes
/// if it is its backup. Rows for hostnames no service has are ignored.
pub fn attribute(
    services: &[UsageService],
    cdn: &str,
    window: Duration,
    rows: &[HostUsage],
) -> Vec<UsageReport> {
    let mut by_host: HashMap<&str, Vec<(&UsageService, bool)>> = HashMap::new();
    for s in services {
        let primary = s.primary_cdn.eq_ignore_ascii_case(cdn);
        if !primary && !s.backup_cdn.eq_ignore_ascii_case(cdn) {
            continue;
        }
        for h in &s.hostnames {
            by_host.entry(h.as_str()).or_default().push((s, primary));
        }
    }
    let len = TimeDelta::from_std(window).unwrap_or_default();
    // (service, window start) → (customer, primary bytes, backup bytes)
    let mut sums: BTreeMap<(i64, DateTime<Utc>), (i64, i64, i64)> = BTreeMap::new();
    for row in rows {
        let Some(owners) = by_host.get(row.hostname.to_ascii_lowercase().as_str()) else {
            continue;
        };
        for (service, primary) in owners {
            let e = sums
                .entry((service.service_id, row.window_start))
                .or_insert((service.customer_id, 0, 0));
            let slot = if *primary { &mut e.1 } else { &mut e.2 };
            *slot = slot.saturating_add(row.bytes.max(0));
        }
    }
    sums.into_iter()
        .map(
            |((service_id, start), (customer_id, primary, backup))| UsageReport {
                service_id,
                customer_id,
                window_start: start,
                window_end: start + len,
                primary_bytes: primary,
                backup_bytes: backup,
                source: cdn.to_ascii_lowercase(),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_ingestion_pass_starts_the_dates_it_reaches_and_ends_those_it_covers() {
        use super::ingestion_reports;
        let t = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        let d = |s: &str| s.parse::<chrono::NaiveDate>().unwrap();
        // 18:00 → 00:05: the 3rd is complete, the 4th begun.
        assert_eq!(
            ingestion_reports(t("2026-12-03T18:00:00Z"), t("2026-12-04T00:05:00Z")),
            vec![
                (d("2026-12-03"), "start"),
                (d("2026-12-03"), "succeed"),
                (d("2026-12-04"), "start")
            ]
        );
        // Up to midnight exactly: the day is complete, the next not begun.
        assert_eq!(
            ingestion_reports(t("2026-12-03T18:00:00Z"), t("2026-12-04T00:00:00Z")),
            vec![(d("2026-12-03"), "start"), (d("2026-12-03"), "succeed")]
        );
        assert!(ingestion_reports(t("2026-12-03T18:00:00Z"), t("2026-12-03T18:00:00Z")).is_empty());
    }

    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        format!("2026-11-23T{s}Z").parse().unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_poll_span_covers_the_lookback_in_whole_windows() {
        let (from, to) = poll_span(t("17:25:00"), HOUR, Duration::from_secs(6 * 3600));
        assert_eq!(from, t("11:00:00"));
        assert_eq!(to, t("18:00:00"));
    }

    fn service(id: i64, primary: &str, backup: &str, hosts: &[&str]) -> UsageService {
        UsageService {
            service_id: id,
            customer_id: 100 + id,
            primary_cdn: primary.into(),
            backup_cdn: backup.into(),
            hostnames: hosts.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn row(host: &str, at: &str, bytes: i64) -> HostUsage {
        HostUsage {
            hostname: host.into(),
            window_start: t(at),
            bytes,
        }
    }

    #[test]
    fn bytes_go_to_the_cdn_role_and_sum_over_hostnames() {
        let services = [
            service(
                1,
                "Cloudflare",
                "fastly",
                &["a.example.com", "b.example.com"],
            ),
            service(2, "fastly", "cloudflare", &["c.example.com"]),
            service(3, "akamai", "fastly", &["d.example.com"]),
        ];
        let rows = [
            row("a.example.com", "10:00:00", 100),
            row("B.example.com", "10:00:00", 50),
            row("a.example.com", "11:00:00", 7),
            row("c.example.com", "10:00:00", 30),
            row("d.example.com", "10:00:00", 999),
            row("unknown.example.com", "10:00:00", 1),
        ];
        let reports = attribute(&services, "cloudflare", HOUR, &rows);
        let summary: Vec<_> = reports
            .iter()
            .map(|r| {
                (
                    r.service_id,
                    r.window_start,
                    r.primary_bytes,
                    r.backup_bytes,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (1, t("10:00:00"), 150, 0),
                (1, t("11:00:00"), 7, 0),
                (2, t("10:00:00"), 0, 30),
            ]
        );
        assert!(reports.iter().all(|r| r.source == "cloudflare"));
        assert_eq!(reports[0].window_end, t("11:00:00"));
        assert_eq!(reports[2].customer_id, 102);
    }
}
