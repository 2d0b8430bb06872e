//! The operator files shipped in `deploy/`: the Prometheus alert rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), and every metric the rules and the
//! Grafana dashboard query is one `/metrics` exposes (or will, once it has a sample: families
//! with no sample yet are left out of the exposition).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::helpers::{ADMIN_TOKEN, spawn_app};

const RULES: &str = "deploy/prometheus/tranche-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/tranche-alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/tranche-dashboard.json";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .expect("promtool is not installed: apt-get install prometheus (.ci/run does this)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", RULE_TESTS]);
}

/// Every `tranche_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tranche_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The series names an exposition declares: counters as `_total`, histograms as `_bucket`,
/// `_sum` and `_count`, gauges as themselves.
fn exposed_series(exposition: &str) -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for line in exposition.lines() {
        let Some(decl) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = decl.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                series.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    series.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                series.insert(name.to_owned());
            }
        }
    }
    series
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_use_is_exposed() {
    let app = spawn_app().await;
    let exposition = app
        .client
        .get(format!("http://{}/metrics", app.addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Families without a sample yet are not in the exposition, so the names come from the
    // registry behind it; whatever the exposition shows must be among them.
    let exposed: BTreeSet<String> = tranche::metrics::METRICS.series().iter().cloned().collect();
    let shown = exposed_series(&exposition);
    assert!(
        shown.contains("tranche_storms_opened_total"),
        "{exposition}"
    );
    let undeclared: Vec<&String> = shown.difference(&exposed).collect();
    assert!(undeclared.is_empty(), "{undeclared:?}");

    let rules = std::fs::read_to_string(root().join(RULES)).unwrap();
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(DASHBOARD)).unwrap())
            .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().expect("a PromQL expr").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["query"]["query"].as_str() {
            queries.push(q.to_owned());
        }
    }
    assert!(queries.len() >= 20, "{} queries", queries.len());

    let used_by_rules = metric_names(&rules);
    let used_by_dashboard = metric_names(&queries.join("\n"));
    assert!(used_by_rules.len() >= 10, "{used_by_rules:?}");
    for (file, used) in [(RULES, &used_by_rules), (DASHBOARD, &used_by_dashboard)] {
        let unknown: Vec<&String> = used.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics /metrics does not expose: {unknown:?}\nexposed: {exposed:?}"
        );
    }
}
