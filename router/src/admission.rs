//! Admission, sans-IO: per-API-key rate limits as a generic cell rate algorithm (GCRA,
//! the token bucket expressed as one "theoretical arrival time"), lock-free with one
//! atomic per key. Time comes in from the caller.

use std::sync::atomic::{AtomicU64, Ordering};

/// A rate limit of `rate` requests per second with bursts of `burst` requests.
#[derive(Debug)]
pub struct RateLimit {
    /// Nanoseconds between requests at the sustained rate.
    interval_ns: u64,
    /// How far ahead of now the theoretical arrival time may run: the burst.
    tolerance_ns: u64,
    /// Theoretical arrival time of the next request, ns on the caller's clock.
    tat_ns: AtomicU64,
}

impl RateLimit {
    /// `rate` requests per second (must be positive), bursts of `burst` (at least 1).
    pub fn new(rate: f64, burst: u32) -> Self {
        let interval_ns = (1e9 / rate.max(1e-9)).min(u64::MAX as f64 / 4.0) as u64;
        Self {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1)) - 1),
            tat_ns: AtomicU64::new(0),
        }
    }

    /// Admits a request at `now_ns`, or says how long to wait, in nanoseconds.
    pub fn check(&self, now_ns: u64) -> Result<(), u64> {
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now_ns);
            if start - now_ns > self.tolerance_ns {
                return Err(start - now_ns - self.tolerance_ns);
            }
            let next = start.saturating_add(self.interval_ns);
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

/// Whole seconds for a `Retry-After` header (at least 1).
pub fn retry_after_secs(wait_ns: u64) -> u64 {
    wait_ns.div_ceil(1_000_000_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn bursts_then_the_sustained_rate() {
        let l = RateLimit::new(2.0, 3);
        let t0 = 10 * S;
        for _ in 0..3 {
            assert!(l.check(t0).is_ok());
        }
        let wait = l.check(t0).unwrap_err();
        assert_eq!(wait, S / 2, "one request every 500 ms after the burst");
        assert!(l.check(t0 + S / 2).is_ok());
        assert!(l.check(t0 + S / 2).is_err());
        // Idle time refills the burst, but no further.
        assert!(l.check(t0 + 100 * S).is_ok());
        assert!(l.check(t0 + 100 * S).is_ok());
        assert!(l.check(t0 + 100 * S).is_ok());
        assert!(l.check(t0 + 100 * S).is_err());
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(S + 1), 2);
    }

    #[test]
    fn concurrent_callers_never_exceed_the_burst() {
        let l = std::sync::Arc::new(RateLimit::new(1.0, 50));
        let admitted = std::sync::Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (l, admitted) = (l.clone(), admitted.clone());
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        if l.check(5 * S).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(admitted.load(Ordering::Relaxed), 50);
    }
}
