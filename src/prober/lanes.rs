//! Probe lanes: the probes' network I/O on dedicated single-threaded runtimes.
//!
//! A probe is a handful of readiness events (connect, TLS records, the response head) and a
//! timer. On the node's multi-threaded runtime each of them may wake a parked worker to steal
//! the task, and on a virtual machine those thread wake-ups cost more than the probe itself:
//! with `perf`, a third of the prober's CPU went to the scheduler (`finish_task_switch`, IRQ
//! restore on wake-up), and the same load ran at 1.66× the probes per CPU-second on one worker
//! thread. A lane is one OS thread with a current-thread runtime: a probe sent to it runs to
//! completion there, its events never leave that thread, and only the request and the result
//! cross threads.
//!
//! Requests are spread over the lanes round-robin. A lane that is gone (its thread died) is
//! never a CDN failure: the probe then runs on the caller's runtime instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};
use tranche_actors::ports::Prober;
use tranche_core::probe::{ProbeRequest, ProbeResult};

type Job = (ProbeRequest, oneshot::Sender<ProbeResult>);

/// A [`Prober`] that runs another prober's probes on `lanes` dedicated threads.
pub struct LanedProber {
    inner: Arc<dyn Prober>,
    lanes: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl LanedProber {
    /// Starts `lanes` threads (`probe-lane-N`); at least one. They end when this is dropped.
    pub fn new(inner: Arc<dyn Prober>, lanes: usize) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(lanes.max(1));
        for i in 0..lanes.max(1) {
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let prober = inner.clone();
            std::thread::Builder::new()
                .name(format!("probe-lane-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        while let Some((request, reply)) = rx.recv().await {
                            let prober = prober.clone();
                            tokio::spawn(async move {
                                let _ = reply.send(prober.probe(&request).await);
                            });
                        }
                    })
                })?;
            senders.push(tx);
        }
        Ok(Self {
            inner,
            lanes: senders,
            next: AtomicUsize::new(0),
        })
    }

    /// One lane per CPU the process may use.
    pub fn per_cpu(inner: Arc<dyn Prober>) -> std::io::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(inner, cpus)
    }
}

#[async_trait::async_trait]
impl Prober for LanedProber {
    async fn probe(&self, request: &ProbeRequest) -> ProbeResult {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let (tx, rx) = oneshot::channel();
        if self.lanes[lane].send((request.clone(), tx)).is_ok()
            && let Ok(result) = rx.await
        {
            return result;
        }
        tracing::warn!(lane, "probe lane gone; probing on the caller's runtime");
        self.inner.probe(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use tranche_core::domain::{ExpectedStatuses, ProbePath, ProbeScheme, ProbeTarget};
    use tranche_core::probe::Outcome;

    /// Answers with the name of the thread it ran on.
    struct WhereAmI;

    #[async_trait::async_trait]
    impl Prober for WhereAmI {
        async fn probe(&self, _: &ProbeRequest) -> ProbeResult {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            ProbeResult {
                at: Utc::now(),
                outcome: Outcome::Ok,
                latency_ms: 5,
                status: Some(200),
                cert_expires_at: None,
                error: std::thread::current().name().map(str::to_owned),
            }
        }
    }

    #[tokio::test]
    async fn probes_run_on_the_lanes_in_turn() {
        let laned = LanedProber::new(Arc::new(WhereAmI), 2).unwrap();
        let request = ProbeRequest {
            cdn: tranche_core::probe::Cdn::Primary,
            hostname: "app.example.test".into(),
            target: ProbeTarget::parse("127.0.0.1:9").unwrap(),
            scheme: ProbeScheme::Http,
            path: ProbePath::parse("/").unwrap(),
            expected: ExpectedStatuses::default(),
            timeout: std::time::Duration::from_millis(500),
        };
        let mut threads = Vec::new();
        for _ in 0..4 {
            threads.push(laned.probe(&request).await.error.unwrap());
        }
        assert_eq!(
            threads,
            [
                "probe-lane-0",
                "probe-lane-1",
                "probe-lane-0",
                "probe-lane-1"
            ]
        );
    }
}
