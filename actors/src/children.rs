//! What the supervisors share: a bounded fan-out of tasks, and the bookkeeping of one child
//! actor per key (a zone, a customer) on the shards this node owns.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::ops::ControlFlow;

use ractor::{ActorId, ActorRef, Message};
use tokio::task::JoinError;

use super::ports::{Fence, OwnedShards};

/// Runs `work` on every item, at most `limit` at once, and folds the results in completion
/// order. `fold` may stop early with `ControlFlow::Break` (the tasks still running are aborted).
pub async fn bounded<I, T, Fut, A>(
    items: I,
    limit: usize,
    mut work: impl FnMut(I::Item) -> Fut,
    init: A,
    mut fold: impl FnMut(A, Result<T, JoinError>) -> ControlFlow<A, A>,
) -> A
where
    I: IntoIterator,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut items = items.into_iter();
    let mut running = tokio::task::JoinSet::new();
    let mut acc = init;
    loop {
        while running.len() < limit.max(1) {
            let Some(item) = items.next() else { break };
            running.spawn(work(item));
        }
        let Some(done) = running.join_next().await else {
            return acc;
        };
        acc = match fold(acc, done) {
            ControlFlow::Continue(acc) => acc,
            ControlFlow::Break(acc) => return acc,
        };
    }
}

/// The keys of `items` (each with its shard) on a shard this node owns, with their fences.
pub fn fenced<K: Eq + Hash>(owned: &OwnedShards, items: Vec<(K, u16)>) -> HashMap<K, Fence> {
    items
        .into_iter()
        .filter_map(|(key, shard)| {
            owned
                .get(&shard)
                .map(|&epoch| (key, Fence { shard, epoch }))
        })
        .collect()
}

/// One linked child actor per key, with the fence it runs under.
pub struct Children<K, M: Message> {
    running: HashMap<K, (ActorRef<M>, Fence)>,
    by_actor: HashMap<ActorId, K>,
}

impl<K: Eq + Hash + Clone, M: Message> Default for Children<K, M> {
    fn default() -> Self {
        Self {
            running: HashMap::new(),
            by_actor: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, M: Message> Children<K, M> {
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.running.keys()
    }

    pub fn actors(&self) -> impl Iterator<Item = &ActorRef<M>> {
        self.running.values().map(|(actor, _)| actor)
    }

    pub fn get(&self, key: &K) -> Option<&ActorRef<M>> {
        self.running.get(key).map(|(actor, _)| actor)
    }

    /// The key of a child that stopped or failed, forgotten (`None`: not one of ours).
    pub fn forget(&mut self, actor: ActorId) -> Option<K> {
        let key = self.by_actor.remove(&actor)?;
        self.running.remove(&key);
        Some(key)
    }

    pub fn stop_all(&mut self) {
        for (actor, _) in self.running.values() {
            actor.stop(None);
        }
        self.running.clear();
        self.by_actor.clear();
    }

    /// Brings the children to `wanted`: stops those no longer wanted, sends `refence(fence)` to
    /// those whose fence changed, and starts the missing ones with `start` (which logs its own
    /// failures and returns `None`; the next reconciliation retries).
    pub async fn reconcile<Fut>(
        &mut self,
        wanted: HashMap<K, Fence>,
        refence: impl Fn(Fence) -> M,
        mut start: impl FnMut(K, Fence) -> Fut,
    ) where
        Fut: Future<Output = Option<ActorRef<M>>>,
    {
        let gone: Vec<K> = self
            .running
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some((actor, _)) = self.running.remove(&key) {
                self.by_actor.remove(&actor.get_id());
                actor.stop(None);
            }
        }
        for (key, fence) in wanted {
            match self.running.get_mut(&key) {
                Some((actor, current)) if *current != fence => {
                    *current = fence;
                    let _ = actor.cast(refence(fence));
                }
                Some(_) => {}
                None => {
                    if let Some(actor) = start(key.clone(), fence).await {
                        self.by_actor.insert(actor.get_id(), key.clone());
                        self.running.insert(key, (actor, fence));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_runs_everything_and_stops_early_on_break() {
        let sum = bounded(
            1..=10u32,
            3,
            |i| async move { i },
            0,
            |acc, r| ControlFlow::Continue(acc + r.unwrap()),
        )
        .await;
        assert_eq!(sum, 55);
        let seen = bounded(
            1..=10u32,
            1,
            |i| async move { i },
            0,
            |acc, r| {
                if r.unwrap() == 3 {
                    ControlFlow::Break(acc + 1)
                } else {
                    ControlFlow::Continue(acc + 1)
                }
            },
        )
        .await;
        assert_eq!(seen, 3, "in order with one at a time; stopped at the third");
    }

    #[test]
    fn only_owned_shards_are_fenced() {
        let owned: OwnedShards = [(1, 7), (3, 9)].into();
        let wanted = fenced(&owned, vec![("a", 1), ("b", 2), ("c", 3)]);
        assert_eq!(wanted.len(), 2);
        assert_eq!(wanted["a"], Fence { shard: 1, epoch: 7 });
        assert_eq!(wanted["c"], Fence { shard: 3, epoch: 9 });
    }
}
