//! Per-key rate limiting: a token bucket per API key (or per customer for dev-mode requests),
//! in this node's memory. Over the limit, a request gets 429 with `Retry-After`.
//!
//! Each node limits on its own, so behind a load balancer spreading a key's requests over N
//! nodes the effective limit is up to N times the configured one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whom a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    Key(i64),
    /// Dev mode: a customer id without a key.
    Customer(i64),
    /// The operator's admin token.
    Admin,
    /// Failed authentications from one client address.
    FailedAuth(std::net::IpAddr),
}

pub struct RateLimiter {
    rate_per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<Caller, (f64, Instant)>>,
}

/// Buckets kept before idle (full) ones are dropped.
const MAX_IDLE_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// `rate_per_sec` sustained per caller, up to `burst` at once.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self {
            rate_per_sec: rate_per_sec.max(0.001),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `caller`, or says how long until one is available.
    pub fn check(&self, caller: Caller) -> Result<(), Duration> {
        self.check_at(caller, Instant::now())
    }

    /// Whether `caller` has no token left, without taking one: how long until it has.
    pub fn exhausted(&self, caller: Caller) -> Option<Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = buckets.get(&caller)?;
        let tokens =
            (tokens + now.duration_since(*last).as_secs_f64() * self.rate_per_sec).min(self.burst);
        (tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - tokens) / self.rate_per_sec))
    }

    fn check_at(&self, caller: Caller, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > MAX_IDLE_BUCKETS {
            let (rate, burst) = (self.rate_per_sec, self.burst);
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * rate < burst
            });
        }
        let (tokens, last) = buckets.entry(caller).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.rate_per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate_per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_burst_then_the_rate_per_caller() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(Caller::Key(1), t0).is_ok());
        }
        let wait = limiter.check_at(Caller::Key(1), t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        // Another key has its own bucket.
        assert!(limiter.check_at(Caller::Key(2), t0).is_ok());
        assert!(limiter.check_at(Caller::Customer(1), t0).is_ok());
        // Half a second later, one more token.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check_at(Caller::Key(1), t1).is_ok());
        assert!(limiter.check_at(Caller::Key(1), t1).is_err());
    }
}
