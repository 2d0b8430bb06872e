//! One timer for all of a node's probe ticks.
//!
//! Every domain actor always has its next probe tick pending. With ractor's `send_after` each
//! pending tick is a tokio task holding a timer entry (~500 bytes), a third of an idle actor's
//! memory (issue 17: ≤ 4 KB per idle actor). Ticks already fire on a shared grid
//! ([`crate::domain_actor::TICK_GRID`]), so they can share one timer: the wheel keeps, for each
//! grid instant, the actors to tick then (16 bytes each), and one task sleeps until the next
//! instant and sends the ticks. Like `send_after`, it schedules a message; nobody sleeps inside
//! a handler.
//!
//! The driver task ends when the wheel is dropped (with the engine's context). A tick for an
//! actor that has stopped is dropped, as `send_after`'s would be.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use ractor::ActorRef;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::domain_actor::DomainMsg;

type Due = Vec<(ActorRef<DomainMsg>, u64)>;

/// The node's probe-tick timer; see the module docs.
pub struct TickWheel {
    slots: Arc<Mutex<BTreeMap<Instant, Due>>>,
    wake: Arc<Notify>,
}

impl TickWheel {
    /// A wheel and its driver task (on the current tokio runtime).
    pub fn start() -> Self {
        let slots = Arc::new(Mutex::new(BTreeMap::new()));
        let wake = Arc::new(Notify::new());
        tokio::spawn(drive(Arc::downgrade(&slots), wake.clone()));
        Self { slots, wake }
    }

    /// Send `DomainMsg::Tick(generation)` to `actor` at `at` (at once when `at` has passed).
    pub fn schedule(&self, at: Instant, actor: ActorRef<DomainMsg>, generation: u64) {
        let earliest = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let earliest = slots.first_key_value().is_none_or(|(first, _)| at < *first);
            slots.entry(at).or_default().push((actor, generation));
            earliest
        };
        if earliest {
            // The driver may be sleeping towards a later instant.
            self.wake.notify_one();
        }
    }

    /// How many ticks are pending.
    #[cfg(test)]
    fn pending(&self) -> usize {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().map(Vec::len).sum()
    }
}

impl Drop for TickWheel {
    fn drop(&mut self) {
        // Wake the driver so that it sees the wheel is gone and ends.
        self.wake.notify_one();
    }
}

async fn drive(slots: Weak<Mutex<BTreeMap<Instant, Due>>>, wake: Arc<Notify>) {
    loop {
        let (due, next) = {
            let Some(slots) = slots.upgrade() else { return };
            let mut slots = slots.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let later = slots.split_off(&(now + std::time::Duration::from_nanos(1)));
            let due = std::mem::replace(&mut *slots, later);
            (due, slots.first_key_value().map(|(at, _)| *at))
        };
        for (actor, generation) in due.into_values().flatten() {
            // The actor may have stopped meanwhile; its tick goes with it.
            let _ = actor.cast(DomainMsg::Tick(generation));
        }
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ractor::{Actor, ActorProcessingErr};
    use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

    use super::*;

    /// Forwards each tick's generation, with the (paused) time it arrived.
    struct Recorder;

    impl Actor for Recorder {
        type Msg = DomainMsg;
        type State = UnboundedSender<(u64, Instant)>;
        type Arguments = UnboundedSender<(u64, Instant)>;

        async fn pre_start(
            &self,
            _: ActorRef<DomainMsg>,
            out: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(out)
        }

        async fn handle(
            &self,
            _: ActorRef<DomainMsg>,
            msg: DomainMsg,
            out: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let DomainMsg::Tick(generation) = msg {
                out.send((generation, Instant::now()))?;
            }
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_arrive_at_their_instants_in_order_and_an_earlier_one_is_not_delayed() {
        let (out, mut arrived) = unbounded_channel();
        let (actor, handle) = Actor::spawn(None, Recorder, out).await.unwrap();
        let wheel = TickWheel::start();
        let start = Instant::now();
        wheel.schedule(start + Duration::from_secs(60), actor.clone(), 3);
        wheel.schedule(start + Duration::from_secs(10), actor.clone(), 2);
        // Scheduled after the driver went to sleep towards 10 s: it must wake for 5 s.
        tokio::task::yield_now().await;
        wheel.schedule(start + Duration::from_secs(5), actor.clone(), 1);
        // Already due: sent at once.
        wheel.schedule(start, actor.clone(), 0);
        assert_eq!(wheel.pending(), 4);
        for (generation, after) in [(0, 0), (1, 5), (2, 10), (3, 60)] {
            let (got, at) = arrived.recv().await.unwrap();
            assert_eq!((got, at - start), (generation, Duration::from_secs(after)));
        }
        assert_eq!(wheel.pending(), 0);
        actor.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_ends_with_the_wheel_and_a_stopped_actor_s_tick_is_dropped() {
        let (out, _arrived) = unbounded_channel();
        let (actor, handle) = Actor::spawn(None, Recorder, out).await.unwrap();
        let alive = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = alive();
        let wheel = TickWheel::start();
        assert_eq!(alive(), before + 1);
        wheel.schedule(Instant::now() + Duration::from_secs(1), actor.clone(), 0);
        actor.stop(None);
        handle.await.unwrap();
        // The tick finds the actor gone; nothing fails.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(wheel.pending(), 0);
        let slots = Arc::downgrade(&wheel.slots);
        drop(wheel);
        // The driver held only a weak reference: the slots are gone with the wheel, and the
        // driver ends (the actor's task has ended too).
        assert!(slots.upgrade().is_none());
        for _ in 0..100 {
            if alive() == before - 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(alive(), before - 1);
    }
}
