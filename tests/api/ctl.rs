//! `tranche ctl` — the real binary against the real API: tables for people, the API's JSON with
//! `--json`, errors on stderr with the field named and a failing exit status.

use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, Auth, TestApp, spawn_app_with};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn ctl(app: &TestApp, env: &[(&str, &str)], args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tranche"))
        .arg("ctl")
        .args(args)
        .env_clear()
        .env("TRANCHE_URL", format!("http://{}", app.addr))
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test]
async fn ctl_lists_shows_pins_bills_and_reports_errors() {
    // Production mode: keys only.
    let app = spawn_app_with(|s| s.dev = false).await;
    let (_, key) = app.create_customer("acme").await;
    let auth = Auth::Key(key.clone());
    let service = app.create_service(&auth, "web").await;
    let domain = app
        .post(
            &format!("/v1/services/{service}/domains"),
            &auth,
            json!({ "name": "app.example.com", "primary_target": "edge-a.example.net",
                    "backup_target": "edge-b.example.net" }),
        )
        .await
        .expect(201)
        .body["id"]
        .as_i64()
        .unwrap();
    let env = [("TRANCHE_API_KEY", key.as_str())];
    let (s, d) = (service.to_string(), domain.to_string());

    let out = ctl(&app, &env, &["services"]).await;
    assert!(out.ok, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "NAME", "PRIMARY", "BACKUP"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [s.as_str(), "web", "cloudflare", "fastly"]
    );

    let out = ctl(&app, &env, &["domains"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout
            .lines()
            .nth(1)
            .unwrap()
            .contains("app.example.com"),
        "{}",
        out.stdout
    );

    // --json is the API's JSON.
    let out = ctl(&app, &env, &["--json", "domains", "--service", &s]).await;
    let domains: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(domains[0]["domain_id"], domain);
    assert_eq!(
        domains[0]["desired_weights"],
        json!({"primary": 100, "backup": 0})
    );

    let out = ctl(&app, &env, &["state", &s, &d]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("name: app.example.com"),
        "{}",
        out.stdout
    );

    // Pin, see it in the API, unpin.
    let out = ctl(
        &app,
        &env,
        &["pin", &s, &d, "0", "--reason", "maintenance at cdn-a"],
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("reason: maintenance at cdn-a"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("weights:\n  backup: 100\n  primary: 0\n"),
        "{}",
        out.stdout
    );
    let dns = app
        .get(&format!("/v1/services/{service}/dns"), &auth)
        .await
        .expect(200)
        .body;
    assert_eq!(dns["domains"][0]["pin"]["weights"]["primary"], 0, "{dns}");
    assert!(ctl(&app, &env, &["unpin", &s, &d]).await.ok);
    let dns = app
        .get(&format!("/v1/services/{service}/dns"), &auth)
        .await
        .expect(200)
        .body;
    assert_eq!(dns["domains"][0]["pin"], Value::Null, "{dns}");

    // A refused request: the status, the code, the field, the request id; exit status 1.
    let out = ctl(&app, &env, &["pin", &s, &d, "101", "--reason", "x"]).await;
    assert!(!out.ok);
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("422 validation_failed")
            && out.stderr.contains("field `primary_weight`")
            && out.stderr.contains("[request "),
        "{}",
        out.stderr
    );

    // A drill (no engine here: it stays pending), listed, cancelled; a maintenance window.
    let out = ctl(
        &app,
        &env,
        &[
            "--json", "drill", &s, &d, "--for", "10m", "--reason", "game day",
        ],
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    let drill: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(drill["status"], "pending");
    let out = ctl(&app, &env, &["drills", &s, &d]).await;
    assert!(
        out.stdout.lines().nth(1).unwrap().contains("pending"),
        "{}",
        out.stdout
    );
    let out = ctl(
        &app,
        &env,
        &["cancel-drill", &s, &d, drill["id"].as_str().unwrap()],
    )
    .await;
    assert!(
        out.ok && out.stdout.contains("outcome: cancelled"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = ctl(
        &app,
        &env,
        &["drill", &s, &d, "--for", "2d", "--reason", "x"],
    )
    .await;
    assert!(
        !out.ok && out.stderr.contains("field `duration_seconds`"),
        "{}",
        out.stderr
    );
    let out = ctl(
        &app,
        &env,
        &[
            "maintenance",
            &s,
            "--for",
            "2h",
            "--reason",
            "vendor upgrade",
        ],
    )
    .await;
    assert!(
        out.ok && out.stdout.contains("status: active"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    let out = ctl(&app, &env, &["--json", "bill"]).await;
    assert!(out.ok, "{}", out.stderr);
    let run: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(run["on_demand"], true);

    app.post(
        "/v1/usage-events",
        &auth,
        json!({ "id": "e1", "service_id": service, "metric": "requests", "quantity": 42 }),
    )
    .await
    .expect(200);
    let out = ctl(&app, &env, &["usage"]).await;
    assert!(
        out.ok && out.stdout.starts_with("period ") && out.stdout.contains("(UTC)"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let row = out.stdout.lines().find(|l| l.starts_with("requests"));
    assert_eq!(
        row.map(|l| l.split_whitespace().take(3).collect::<Vec<_>>()),
        Some(vec!["requests", "42", "1"]),
        "{}",
        out.stdout
    );

    let out = ctl(&app, &env, &["slos", "--date", "2026-11-05"]).await;
    assert_eq!(
        out.stdout, "business date 2026-11-05\n(none)\n",
        "{}",
        out.stderr
    );
    let out = ctl(&app, &env, &["slos", "--status", "sideways"]).await;
    assert!(!out.ok && out.stderr.contains("status"), "{}", out.stderr);

    let out = ctl(&app, &env, &["storms", "--active"]).await;
    assert_eq!(out.stdout, "(none)\n", "{}", out.stderr);
    let out = ctl(&app, &env, &["dns-changes"]).await;
    assert!(out.ok, "{}", out.stderr);

    // The cluster needs the admin token.
    let out = ctl(&app, &env, &["cluster"]).await;
    assert!(
        !out.ok && out.stderr.contains("TRANCHE_ADMIN_TOKEN"),
        "{}",
        out.stderr
    );
    let out = ctl(
        &app,
        &[("TRANCHE_ADMIN_TOKEN", ADMIN_TOKEN)],
        &["--json", "cluster"],
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(serde_json::from_str::<Value>(&out.stdout).unwrap()["nodes"].is_array());

    // No credentials at all: said plainly.
    let out = ctl(&app, &[], &["services"]).await;
    assert!(
        !out.ok && out.stderr.contains("TRANCHE_API_KEY"),
        "{}",
        out.stderr
    );
}
