//! The `tranche` binary itself: the one-command start with the embedded database, clean
//! shutdown, and data surviving a restart.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(data_dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_tranche"))
            .args(["serve", "--dev", "--listen", &format!("127.0.0.1:{port}")])
            .env("TRANCHE_DATA_DIR", data_dir)
            .env_remove("DATABASE_URL")
            .env_remove("PG_DSN")
            .env_remove("TRANCHE_DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Self { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Polls `/readyz` until it answers, with a deadline.
    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(resp) = client.get(self.url("/readyz")).send().await
                && resp.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("tranche serve exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "tranche serve did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits (with a deadline) for a successful exit.
    fn terminate(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "tranche serve exited with {status}");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "tranche serve did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[tokio::test]
async fn serve_runs_on_an_embedded_database_that_survives_restarts() {
    let dir = tempfile::Builder::new()
        .prefix("tranche-cli-")
        .tempdir_in("/tmp")
        .unwrap();
    let data_dir = dir.path().join("data");
    let client = reqwest::Client::builder().no_proxy().build().unwrap();

    let mut serve = Serve::start(&data_dir);
    serve.wait_ready(&client).await;
    let resp = client
        .post(serve.url("/v1/services"))
        .header("X-Customer-ID", "1")
        .json(&serde_json::json!({ "name": "marketing", "primary_cdn": "cloudflare", "backup_cdn": "fastly" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    serve.terminate();
    // The embedded server was stopped cleanly (it removes its pid file on a clean shutdown).
    assert!(
        !data_dir.join("pg/postmaster.pid").exists(),
        "embedded PostgreSQL still running"
    );

    let mut serve = Serve::start(&data_dir);
    serve.wait_ready(&client).await;
    let list: serde_json::Value = client
        .get(serve.url("/v1/services"))
        .header("X-Customer-ID", "1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list[0]["name"], "marketing",
        "data survived the restart: {list}"
    );
    serve.terminate();
}

#[test]
fn openapi_subcommand_prints_the_document() {
    let out = Command::new(env!("CARGO_BIN_EXE_tranche"))
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(spec["info"]["title"], "Tranche");
}

#[test]
fn invalid_configuration_is_reported_not_panicked() {
    let out = Command::new(env!("CARGO_BIN_EXE_tranche"))
        .arg("migrate")
        .env("TRANCHE_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid configuration") && stderr.to_lowercase().contains("listen"),
        "{stderr}"
    );
}

#[test]
fn configuration_traps_are_refused_or_explained() {
    let run = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tranche"));
        cmd.arg("migrate");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        (out.status.code(), text)
    };
    // A rate of zero used to become one request every 1,000 s.
    let (code, stderr) = run(&[("TRANCHE_DNS_RATE_PER_SECOND", "0")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("dns_rate_per_second must be a positive number"),
        "{stderr}"
    );
    let (code, stderr) = run(&[("TRANCHE_API_RATE_PER_SECOND", "-5")]);
    assert_eq!(code, Some(2), "{stderr}");
    // A misspelt setting gets a suggestion.
    let (code, stderr) = run(&[("TRANCHE_DNS_RATE_PER_SECONDS", "4")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("did you mean `dns_rate_per_second`?"),
        "{stderr}"
    );
    // Logs written to a pipe carry no colour codes.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (code, output) = run(&[
        ("TRANCHE_DATA_DIR", data_dir.to_str().unwrap()),
        ("RUST_LOG", "info"),
    ]);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("INFO"), "{output:?}");
    assert!(!output.contains('\u{1b}'), "{output:?}");
}

#[test]
fn unreachable_database_url_fails_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_tranche"))
        .arg("migrate")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Once, naming where and why.
    assert!(
        stderr.contains("could not connect to PostgreSQL at 127.0.0.1:1, database none")
            && stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    let all = format!("{stderr}{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(all.matches("could not connect").count(), 1, "{all}");
}

#[test]
fn demo_shows_a_storm_and_the_recovery_then_exits_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_tranche"))
        .arg("demo")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "breaking the primary CDN edge",
        "state storm, DNS weights primary/backup = 0/100",
        "storm declared for every domain",
        "state recovering, DNS weights primary/backup = 25/75",
        "state healthy, DNS weights primary/backup = 100/0",
        "recorded in storm_events",
        // The backup is probed too, outcomes are said as people say them.
        "the backup answers 200 OK",
        "the primary answers 503,",
        // The DNS audit log, through the no-op provider.
        "DNS change in zone demo.test, one batch, insync: ",
        "→ 0/100 (failover)",
        "→ 25/75 (ramp)",
        // The silence during the cooldown is explained.
        "waits out the 5s cooldown",
        // And the bill, with the storm discount.
        "storm discount −$",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(!stdout.contains("http_status"), "{stdout}");
}
