//! A token bucket shared by every zone actor of a node: the provider's account-wide rate limit
//! (Route53 allows 5 requests per second per account).
//!
//! Callers never wait inside it. [`TokenBucket::reserve`] takes a token now and answers how
//! long the caller must wait before using it; tokens may be borrowed from the future, so
//! reservations are served in the order they were made (first come, first served across the
//! zones) and an actor schedules its provider call with `send_after` instead of sleeping.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct TokenBucket {
    rate_per_sec: f64,
    burst: f64,
    /// Tokens available at `.1` (negative: reserved ahead of time).
    state: Mutex<(f64, Instant)>,
    /// Told every reservation's wait (metrics).
    observer: Option<Box<dyn Fn(Duration) + Send + Sync>>,
}

impl TokenBucket {
    /// `rate_per_sec` sustained, up to `burst` at once.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate_per_sec: rate_per_sec.max(0.001),
            burst,
            state: Mutex::new((burst, Instant::now())),
            observer: None,
        }
    }

    /// Calls `observer` with the wait of every reservation (e.g. to record a histogram).
    pub fn with_observer(mut self, observer: impl Fn(Duration) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Reserves one token; returns how long until it may be used (zero: now).
    pub fn reserve(&self) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.rate_per_sec).min(self.burst);
        *last = now;
        *tokens -= 1.0;
        let wait = if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate_per_sec)
        };
        drop(state);
        if let Some(observe) = &self.observer {
            observe(wait);
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_the_burst_then_the_rate_in_reservation_order() {
        let bucket = TokenBucket::new(5.0, 10);
        for _ in 0..10 {
            assert_eq!(bucket.reserve(), Duration::ZERO, "burst is immediate");
        }
        // The next five are 200 ms apart, in the order they were reserved.
        let waits: Vec<Duration> = (0..5).map(|_| bucket.reserve()).collect();
        for (k, wait) in waits.iter().enumerate() {
            let expected = Duration::from_millis(200 * (k as u64 + 1));
            assert!(
                wait.abs_diff(expected) < Duration::from_millis(2),
                "{k}: {wait:?}"
            );
        }
        // Time passing pays the debt back.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(bucket.reserve(), Duration::ZERO);
    }
}
