//! PostgreSQL restarts under a running engine: on a private server of its own (the shared test
//! cluster must stay up for the other tests), stopped and started again while domains are in
//! the middle of their ramp back. Every domain restored from the database finishes the ramp
//! and closes its storm.

use std::sync::Arc;
use std::time::Duration;

use tranche::demo::edge::{Behaviour, FakeEdge};
use tranche::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use tranche::prober::NetworkProber;
use tranche_actors::ports::NoopProvider;

use crate::helpers::{add_zone_domains, eventually, fast_service, spawn_app_on};

const DOMAINS: i64 = 10;

/// A private PostgreSQL server on a thread of its own: the server's parent-death signal is
/// tied to the thread that started it, so it must outlive the test's use of the server (a
/// blocking-pool thread would exit when idle, and take the server with it).
struct PrivatePostgres {
    options: sqlx::postgres::PgConnectOptions,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

async fn start_postgres(root: std::path::PathBuf) -> PrivatePostgres {
    let (ready, started) = tokio::sync::oneshot::channel();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let server = EmbeddedPostgres::start(&EmbeddedOptions::throwaway(&root)).unwrap();
        let _ = ready.send(server.connect_options("postgres"));
        let _ = stopped.recv();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(server.stop());
    });
    PrivatePostgres {
        options: started.await.unwrap(),
        stop,
        thread,
    }
}

impl PrivatePostgres {
    /// A fast shutdown, waited for.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::task::spawn_blocking(move || self.thread.join().unwrap())
            .await
            .unwrap();
    }
}

async fn count(pool: &sqlx::PgPool, sql: &'static str) -> Option<i64> {
    sqlx::query_scalar(sql).fetch_one(pool).await.ok()
}

#[tokio::test]
async fn domains_restored_mid_ramp_after_a_postgres_restart_finish_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pg");
    let server = start_postgres(root.clone()).await;
    let options = server.options.clone();
    let pool = tranche::postgres::pool::pool(options.clone(), 10)
        .await
        .unwrap();
    tranche::postgres::pool::migrate(&pool).await.unwrap();
    tranche::postgres::customers::ensure_demo(&pool)
        .await
        .unwrap();
    let mut app = spawn_app_on(pool.clone(), |s| s.dev = true).await;

    let primary = FakeEdge::http().await.unwrap();
    let backup = FakeEdge::http().await.unwrap();
    let service = fast_service(&app).await;
    add_zone_domains(
        &app,
        service,
        "restart.test",
        DOMAINS as usize,
        (primary.addr(), backup.addr()),
    )
    .await;
    app.start_engine_with_dns(
        Arc::new(NetworkProber::new(&[], true).unwrap()),
        Some(Arc::new(NoopProvider)),
    )
    .await;

    primary.set(Behaviour::Status(503));
    eventually("storms open", Duration::from_secs(30), || async {
        (count(
            &pool,
            "select count(*) from storm_events where ended_at is null",
        )
        .await
            == Some(DOMAINS))
        .then_some(())
    })
    .await;
    primary.set(Behaviour::Healthy);
    eventually("the ramp under way", Duration::from_secs(30), || async {
        (count(
            &pool,
            "select count(*) from domain_states where state = 'recovering' and desired_primary_weight = 25",
        )
        .await
            > Some(0))
        .then_some(())
    })
    .await;

    // PostgreSQL goes away mid-ramp and comes back.
    server.stop().await;
    let server = start_postgres(root).await;
    let restored: i64 = eventually("database back", Duration::from_secs(30), || async {
        count(
            &pool,
            "select count(*) from domain_states where state = 'recovering'",
        )
        .await
    })
    .await;

    eventually(
        "every storm closed and every domain back at 100/0",
        Duration::from_secs(60),
        || async {
            let open = count(&pool, "select count(*) from storm_events where ended_at is null").await?;
            let normal = count(
                &pool,
                "select count(*) from domain_states where state = 'healthy' and desired_primary_weight = 100",
            )
            .await?;
            let applied = count(
                &pool,
                "select count(*) from dns_records where applied_primary_weight = 100",
            )
            .await?;
            (open == 0 && normal == DOMAINS && applied == DOMAINS).then_some(())
        },
    )
    .await;
    eprintln!("{restored} domains were recovering when PostgreSQL came back");
    if let Some(engine) = app.engine.take() {
        engine.shutdown().await;
    }
    pool.close().await;
    server.stop().await;
}
