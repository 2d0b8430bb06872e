//! Vantage summaries between nodes, over PostgreSQL `LISTEN`/`NOTIFY`.
//!
//! Observers' window summaries travel as notifications on one channel: a flush of the vantage
//! publisher is **one statement** (`select pg_notify(…) from unnest(…)`) carrying as many
//! payloads of up to [`MAX_PAYLOAD`] bytes as it needs (about 150 summaries each). Notifications
//! write no table and no WAL; PostgreSQL delivers each to every listening session when the
//! statement commits. Every node listens on its configuration listener's connection
//! (`node.rs`) and keeps the summaries of the domains it decides. Nothing here is durable, and nothing needs to be: a summary lost
//! to a reconnect leaves its vantage unknown for an interval, and unknown never counts as down.
//!
//! Payload (JSON): `{"n": node_id, "v": vantage, "r": [[domain_id, primary…, backup…], …]}`
//! where each CDN is five integers: known (0/1), successes, attempts, successes in a row,
//! failures in a row.

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tranche_actors::ports::{StoreError, VantageBus, VantageReport};
use tranche_core::storm::{Availability, CdnHealth, Streak};

use super::port_error;

/// The notification channel.
pub const CHANNEL: &str = "tranche_vantages";
/// Largest payload sent (PostgreSQL's limit is 8,000 bytes).
pub const MAX_PAYLOAD: usize = 7_500;

type Cdn5 = [u32; 5];

#[derive(Serialize, Deserialize)]
struct Payload {
    n: String,
    v: String,
    r: Vec<(i64, Cdn5, Cdn5)>,
}

fn encode_cdn(h: &CdnHealth) -> Cdn5 {
    let (known, successes, attempts) = match h.availability {
        Availability::Known {
            successes,
            attempts,
        } => (1, successes, attempts),
        Availability::Unknown { attempts } => (0, 0, attempts),
    };
    [
        known,
        successes,
        attempts,
        h.streak.successes(),
        h.streak.failures(),
    ]
}

fn decode_cdn([known, successes, attempts, ok_run, fail_run]: Cdn5) -> Option<CdnHealth> {
    if successes > attempts || (ok_run > 0 && fail_run > 0) {
        return None;
    }
    let availability = if known == 1 {
        Availability::Known {
            successes,
            attempts,
        }
    } else {
        Availability::Unknown { attempts }
    };
    let streak = if ok_run > 0 {
        Streak::succeeding(ok_run)
    } else {
        Streak::failing(fail_run)
    };
    Some(CdnHealth::new(availability, streak))
}

/// Splits `reports` (all from one node and vantage) into payloads of at most [`MAX_PAYLOAD`]
/// bytes.
pub fn encode(reports: &[VantageReport]) -> Vec<String> {
    let mut payloads = Vec::new();
    let Some(first) = reports.first() else {
        return payloads;
    };
    let header = Payload {
        n: first.node_id.clone(),
        v: first.vantage.clone(),
        r: Vec::new(),
    };
    let base = serde_json::to_string(&header).map_or(0, |s| s.len());
    let mut current = Payload {
        r: Vec::new(),
        ..header
    };
    let mut size = base;
    for r in reports {
        let entry = (r.domain_id, encode_cdn(&r.primary), encode_cdn(&r.backup));
        let len = serde_json::to_string(&entry).map_or(0, |s| s.len()) + 1;
        if size + len > MAX_PAYLOAD && !current.r.is_empty() {
            payloads.extend(serde_json::to_string(&current).ok());
            current.r.clear();
            size = base;
        }
        current.r.push(entry);
        size += len;
    }
    if !current.r.is_empty() {
        payloads.extend(serde_json::to_string(&current).ok());
    }
    payloads
}

/// The reports in one payload (malformed entries are skipped; a malformed payload is empty).
pub fn decode(payload: &str) -> Vec<VantageReport> {
    let Ok(p) = serde_json::from_str::<Payload>(payload) else {
        return Vec::new();
    };
    p.r.into_iter()
        .filter_map(|(domain_id, primary, backup)| {
            Some(VantageReport {
                domain_id,
                vantage: p.v.clone(),
                node_id: p.n.clone(),
                primary: decode_cdn(primary)?,
                backup: decode_cdn(backup)?,
            })
        })
        .collect()
}

pub struct PgVantageBus {
    pool: PgPool,
}

impl PgVantageBus {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait::async_trait]
impl VantageBus for PgVantageBus {
    async fn publish(&self, reports: &[VantageReport]) -> Result<(), StoreError> {
        let payloads = encode(reports);
        if payloads.is_empty() {
            return Ok(());
        }
        sqlx::query("select pg_notify($1, p) from unnest($2::text[]) as p")
            .bind(CHANNEL)
            .bind(&payloads)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(port_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: i64) -> VantageReport {
        VantageReport {
            domain_id: id,
            vantage: "eu-west".into(),
            node_id: "node-a".into(),
            primary: CdnHealth::new(
                Availability::Known {
                    successes: 7,
                    attempts: 10,
                },
                Streak::failing(3),
            ),
            backup: CdnHealth::new(Availability::Unknown { attempts: 2 }, Streak::succeeding(2)),
        }
    }

    #[test]
    fn summaries_round_trip_in_payloads_under_the_limit() {
        let reports: Vec<VantageReport> = (0..2_000).map(|i| report(1_000_000 + i)).collect();
        let payloads = encode(&reports);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let back: Vec<VantageReport> = payloads.iter().flat_map(|p| decode(p)).collect();
        assert_eq!(back, reports);
        assert!(decode("not json").is_empty());
        assert!(decode(r#"{"n":"a","v":"b","r":[[1,[1,9,3,0,0],[0,0,0,1,1]]]}"#).is_empty());
    }
}
