//! How Tranche says things to people (the status page, `tranche demo`): probe outcomes as an
//! operator says them ("503", "200 OK", "connection refused"), DNS change records, money.

use rust_decimal::Decimal;
use serde_json::Value;

/// A probe outcome (`outcome`, with the HTTP status when there was one) as a person says it.
pub fn outcome(outcome: &str, status: Option<u64>) -> String {
    match (outcome, status) {
        ("ok", Some(s)) => format!("{s} OK"),
        ("http_status", Some(s)) => s.to_string(),
        ("connect", _) => "connection refused".to_owned(),
        ("tls", _) => "TLS error".to_owned(),
        ("dns", _) => "DNS failure".to_owned(),
        (other, _) => other.to_owned(),
    }
}

/// The records of a DNS change (`dns_changes.changes`): `name → primary/backup (reason), …`.
pub fn change_records(changes: &Value) -> String {
    changes
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} → {}/{} ({})",
                r["name"].as_str().unwrap_or("?"),
                r["to"]["primary"],
                r["to"]["backup"],
                r["reason"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Cents as dollars, to the cent: `$12.35`.
pub fn dollars(cents: Decimal) -> String {
    format!("${:.2}", (cents / Decimal::ONE_HUNDRED).round_dp(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_records_and_money_read_as_people_say_them() {
        assert_eq!(outcome("http_status", Some(503)), "503");
        assert_eq!(outcome("ok", Some(200)), "200 OK");
        assert_eq!(outcome("connect", None), "connection refused");
        assert_eq!(outcome("timeout", None), "timeout");
        let changes = serde_json::json!([
            {"name": "a.example.com", "to": {"primary": 0, "backup": 100}, "reason": "failover"},
            {"name": "b.example.com", "to": {"primary": 25, "backup": 75}, "reason": "ramp"},
        ]);
        assert_eq!(
            change_records(&changes),
            "a.example.com → 0/100 (failover), b.example.com → 25/75 (ramp)"
        );
        assert_eq!(dollars(Decimal::new(123456, 2)), "$12.35");
        assert_eq!(dollars(Decimal::from(600)), "$6.00");
    }
}
