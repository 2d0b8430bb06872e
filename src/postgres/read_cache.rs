//! Read caches kept exact by notification, for the API's hottest reads (API keys, a service's
//! detail).
//!
//! A [`NotifiedCache`] answers a read without a query. The triggers of the tables it is read from
//! announce every change on a channel, in the changing transaction; [`listen`] hears them over a
//! connection of its own and drops what they name. So a change made on any node is seen by every
//! other within PostgreSQL's notification latency (milliseconds); the node that makes a change
//! drops what it cached itself before answering, so there it takes effect from the next request.
//!
//! What keeps it exact:
//! * the cache is used only while its listener is connected and listening, and is emptied when
//!   the connection is made or lost: nothing announced while it was down survives;
//! * a read that began before an invalidation is answered but not cached (a generation counter),
//!   so a read racing a change cannot put back what the change dropped;
//! * an entry is trusted for a bounded time at most (the safety net for a connection that died
//!   unnoticed), and misses are never cached.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// Above this many entries, expired ones are swept on insert; above twice it, the cache is
/// emptied.
const SWEEP_ABOVE: usize = 100_000;

/// A map of reads, valid while its listener is connected (see the module documentation).
pub struct NotifiedCache<K, V> {
    ttl: Duration,
    inner: Mutex<Inner<K, V>>,
}

struct Inner<K, V> {
    listening: bool,
    /// Bumped by every invalidation: a read that began under an older generation may be stale.
    generation: u64,
    entries: HashMap<K, (V, Instant)>,
}

/// What a miss hands back to [`NotifiedCache::insert`]: the generation the read began under.
#[derive(Clone, Copy, Debug)]
pub struct Miss(u64);

impl<K: Eq + Hash, V: Clone> NotifiedCache<K, V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner {
                listening: false,
                generation: 0,
                entries: HashMap::new(),
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, or the [`Miss`] to insert the value read next under.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Result<V, Miss>
    where
        K: std::borrow::Borrow<Q>,
    {
        let inner = self.inner();
        match inner.entries.get(key) {
            Some((value, at)) if inner.listening && at.elapsed() < self.ttl => Ok(value.clone()),
            _ => Err(Miss(inner.generation)),
        }
    }

    /// Caches `value`, read after `miss`, unless something was invalidated meanwhile or the
    /// listener is not connected.
    pub fn insert(&self, miss: Miss, key: K, value: V) {
        let mut inner = self.inner();
        if !inner.listening || inner.generation != miss.0 {
            return;
        }
        if inner.entries.len() >= SWEEP_ABOVE {
            let ttl = self.ttl;
            inner.entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if inner.entries.len() >= 2 * SWEEP_ABOVE {
                inner.entries.clear();
            }
        }
        inner.entries.insert(key, (value, Instant::now()));
    }

    /// Changes a cached value in place (for bookkeeping the cache itself caused, never to make
    /// a value newer than the database).
    pub fn update<Q: Eq + Hash + ?Sized>(&self, key: &Q, change: impl FnOnce(&mut V))
    where
        K: std::borrow::Borrow<Q>,
    {
        if let Some((value, _)) = self.inner().entries.get_mut(key) {
            change(value);
        }
    }

    /// Drops the entries `forget` names.
    pub fn invalidate(&self, forget: impl Fn(&K, &V) -> bool) {
        let mut inner = self.inner();
        inner.generation += 1;
        inner.entries.retain(|k, (v, _)| !forget(k, v));
    }

    /// Empties the cache and says whether it may be used from now on.
    pub fn set_listening(&self, listening: bool) {
        let mut inner = self.inner();
        inner.listening = listening;
        inner.generation += 1;
        inner.entries.clear();
    }
}

/// The listener connection's `application_name`.
pub const LISTENER_NAME: &str = "tranche-read-cache";

/// Something [`listen`] keeps exact.
pub trait Notified: Send + Sync {
    /// The channels whose notifications concern it.
    fn channels(&self) -> &'static [&'static str];
    /// A notification on one of them.
    fn notified(&self, channel: &str, payload: &str);
    /// The listener connected (`true`: empty and use the cache) or lost its connection.
    fn set_listening(&self, listening: bool);
}

/// Keeps `caches` exact: listens on their channels over a connection of its own (named
/// `application_name`) until dropped, reconnecting after a second when the connection is lost.
/// The caches are off whenever this is not listening, including after it is dropped.
pub async fn listen(pool: PgPool, application_name: &str, caches: Vec<Arc<dyn Notified>>) {
    use sqlx::postgres::PgListener;
    struct OffWhenDropped<'a>(&'a [Arc<dyn Notified>]);
    impl Drop for OffWhenDropped<'_> {
        fn drop(&mut self) {
            self.0.iter().for_each(|c| c.set_listening(false));
        }
    }
    let _off = OffWhenDropped(&caches);
    let mut channels: Vec<&str> = caches.iter().flat_map(|c| c.channels()).copied().collect();
    channels.sort_unstable();
    channels.dedup();
    let pool = super::pool::listener_pool(&pool, application_name);
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                listener.eager_reconnect(false);
                match listener.listen_all(channels.iter().copied()).await {
                    Ok(()) => {
                        caches.iter().for_each(|c| c.set_listening(true));
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(n)) => {
                                    for cache in &caches {
                                        if cache.channels().contains(&n.channel()) {
                                            cache.notified(n.channel(), n.payload());
                                        }
                                    }
                                }
                                Ok(None) => {
                                    tracing::warn!(
                                        "read-cache listener lost its connection: caches off until it is back"
                                    );
                                    break;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "read-cache listener failed: caches off until it is back");
                                    break;
                                }
                            }
                        }
                        caches.iter().for_each(|c| c.set_listening(false));
                    }
                    Err(e) => tracing::warn!(error = %e, "could not LISTEN for read-cache changes"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not connect the read-cache listener"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_while_listening_and_never_from_a_read_older_than_an_invalidation() {
        let cache = NotifiedCache::<&str, u32>::new(Duration::from_secs(60));
        let miss = cache.get(&"a").unwrap_err();
        cache.insert(miss, "a", 1);
        assert!(cache.get(&"a").is_err(), "not listening: nothing cached");

        cache.set_listening(true);
        let miss = cache.get(&"a").unwrap_err();
        cache.insert(miss, "a", 1);
        assert_eq!(cache.get(&"a").ok(), Some(1));

        // A read that began before an invalidation is not cached.
        let miss = cache.get(&"b").unwrap_err();
        cache.invalidate(|k, _| *k == "a");
        cache.insert(miss, "b", 2);
        assert!(cache.get(&"b").is_err());
        assert!(cache.get(&"a").is_err());

        cache.update(&"a", |v| *v = 9);
        let miss = cache.get(&"a").unwrap_err();
        cache.insert(miss, "a", 3);
        cache.update(&"a", |v| *v += 1);
        assert_eq!(cache.get(&"a").ok(), Some(4));

        // Losing the listener empties and disables it.
        cache.set_listening(false);
        assert!(cache.get(&"a").is_err());
        cache.set_listening(true);
        assert!(cache.get(&"a").is_err());
    }

    #[test]
    fn entries_expire() {
        let cache = NotifiedCache::<u8, u8>::new(Duration::ZERO);
        cache.set_listening(true);
        let miss = cache.get(&1).unwrap_err();
        cache.insert(miss, 1, 1);
        assert!(cache.get(&1).is_err());
    }
}
