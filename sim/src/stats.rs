//! Latency histograms with bounded relative error, and the per-PoP, per-region and
//! per-time-bucket tallies of a run.

use serde::Serialize;

/// Buckets grow by this factor: a percentile is off by at most 1%.
const GROWTH: f64 = 1.02;
/// Smallest value told apart, milliseconds.
const MIN_MS: f64 = 0.01;
/// Buckets: `MIN_MS * GROWTH^i`, up to about 11 days.
const BUCKETS: usize = 1400;

/// A histogram of milliseconds, log-bucketed (2% wide), plus an exact sum for the mean.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u32>,
    n: u64,
    sum: f64,
    max: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: Vec::new(),
            n: 0,
            sum: 0.0,
            max: 0.0,
        }
    }
}

fn bucket(ms: f64) -> usize {
    if ms <= MIN_MS {
        return 0;
    }
    (((ms / MIN_MS).ln() / GROWTH.ln()) as usize + 1).min(BUCKETS - 1)
}

/// The value a bucket stands for: the middle of its range.
fn value(b: usize) -> f64 {
    if b == 0 {
        return MIN_MS;
    }
    MIN_MS * GROWTH.powf(b as f64 - 0.5)
}

impl Histogram {
    pub fn record(&mut self, ms: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
        self.counts[bucket(ms)] += 1;
        self.n += 1;
        self.sum += ms;
        self.max = self.max.max(ms);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    pub fn max(&self) -> f64 {
        self.max
    }

    /// The `q`-quantile (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.n as f64).ceil() as u64).max(1);
        if rank >= self.n {
            return self.max;
        }
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return value(b).min(self.max);
            }
        }
        self.max
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.n == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.n += other.n;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
    }

    pub fn summary(&self) -> Percentiles {
        Percentiles {
            count: self.n,
            mean: self.mean(),
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            max: self.max,
        }
    }
}

/// A histogram's usual figures, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// What happened to the requests of one PoP, region or time bucket.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub arrived: u64,
    pub completed: u64,
    /// Refused because every allowed worker's queue was full (429).
    pub shed: u64,
    /// Refused because no allowed worker had the model (503).
    pub unservable: u64,
    /// Lost after their first token (a worker failed mid-stream).
    pub failed: u64,
    /// Completed within both SLOs.
    pub met_slo: u64,
    pub ttft: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
    pub output_tokens: u64,
}

impl Tally {
    pub fn slo_attainment(&self) -> f64 {
        let decided = self.completed + self.shed + self.unservable + self.failed;
        if decided == 0 {
            1.0
        } else {
            self.met_slo as f64 / decided as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let mut h = Histogram::default();
        for i in 1..=10_000 {
            h.record(f64::from(i) * 0.1);
        }
        for (q, exact) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = h.quantile(q);
            assert!((got / exact - 1.0).abs() < 0.011, "q{q}: {got} vs {exact}");
        }
        assert!((h.mean() - 500.05).abs() < 1e-6);
        assert_eq!(h.quantile(1.0), 1000.0);
        assert_eq!(Histogram::default().quantile(0.5), 0.0);
    }

    #[test]
    fn merging_is_recording_both() {
        let (mut a, mut b, mut both) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        for i in 0..100 {
            let v = f64::from(i * 7 % 97) + 0.5;
            if i % 3 == 0 { &mut a } else { &mut b }.record(v);
            both.record(v);
        }
        a.merge(&b);
        assert_eq!(a.summary(), both.summary());
    }
}
