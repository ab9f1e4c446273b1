//! Demand intake, sans-IO: routers report the requests and tokens they saw per (region,
//! model, allowed jurisdictions) in windows; each router's rates are smoothed over time
//! (an exponentially weighted moving average) and stored under its own key, and the
//! fleet's demand is the sum over routers whose record is fresh. The placement solver
//! plans from that sum.

use std::collections::BTreeMap;

use meridian_proto::catalog::Catalog;
use meridian_proto::control::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::fleet::Refusal;

/// Time constant of the smoothing, milliseconds: a step in demand shows at 63% after
/// this long, so placement follows trends, not bursts.
pub const SMOOTHING_MS: f64 = 60_000.0;
/// A router's record older than this no longer counts (the router is gone).
pub const STALE_MS: u64 = 5 * 60_000;
/// Rates below this (requests/second) are dropped from a record.
const NEGLIGIBLE_RPS: f64 = 1e-4;
/// Samples accepted in one report.
pub const MAX_SAMPLES: usize = 65_536;

/// What a demand rate is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DemandKey {
    /// Catalog id of the callers' region.
    pub region: String,
    pub model: String,
    /// Sorted; empty: any.
    pub jurisdictions: Vec<String>,
}

/// Smoothed rates of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    /// Requests per second, refused ones included.
    pub rps: f64,
    pub prompt_tokens_per_s: f64,
    pub completion_tokens_per_s: f64,
    /// Requests per second shed for lack of capacity.
    pub refused_rps: f64,
}

impl Rates {
    fn blend(&mut self, window: Rates, alpha: f64) {
        self.rps += alpha * (window.rps - self.rps);
        self.prompt_tokens_per_s += alpha * (window.prompt_tokens_per_s - self.prompt_tokens_per_s);
        self.completion_tokens_per_s +=
            alpha * (window.completion_tokens_per_s - self.completion_tokens_per_s);
        self.refused_rps += alpha * (window.refused_rps - self.refused_rps);
    }

    fn add(&mut self, other: Rates) {
        self.rps += other.rps;
        self.prompt_tokens_per_s += other.prompt_tokens_per_s;
        self.completion_tokens_per_s += other.completion_tokens_per_s;
        self.refused_rps += other.refused_rps;
    }
}

/// One router's smoothed demand, stored at `<prefix>/demand/<router_id>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RouterDemand {
    pub router_pop: String,
    /// End of the last window folded in (router clock); a report not after it is a
    /// duplicate.
    pub window_end_unix_ms: u64,
    /// When the record was last written (control-plane clock).
    pub updated_unix_ms: u64,
    pub rates: Vec<(DemandKey, Rates)>,
}

/// Checks a report; a refusal names the bad field.
pub fn check(catalog: &Catalog, report: &pb::DemandReport) -> Result<(), Refusal> {
    let invalid = |m: String| Err(Refusal::Invalid(m));
    if report.router_id.is_empty() || report.router_id.contains('/') {
        return invalid(format!(
            "router_id {:?} must be non-empty and without '/'",
            report.router_id
        ));
    }
    if report.window_ms == 0 {
        return invalid("window_ms must be positive".into());
    }
    if report.samples.len() > MAX_SAMPLES {
        return invalid(format!(
            "{} samples in one report; at most {MAX_SAMPLES}",
            report.samples.len()
        ));
    }
    for (i, s) in report.samples.iter().enumerate() {
        if catalog.get(&s.region).is_none() {
            return invalid(format!(
                "samples[{i}].region {:?} is not a catalog site",
                s.region
            ));
        }
        if s.model.is_empty() {
            return invalid(format!("samples[{i}].model is empty"));
        }
        if s.refused > s.requests {
            return invalid(format!(
                "samples[{i}]: refused {} is more than requests {}",
                s.refused, s.requests
            ));
        }
        if s.jurisdictions.iter().any(|j| j.is_empty()) {
            return invalid(format!("samples[{i}].jurisdictions has an empty entry"));
        }
    }
    Ok(())
}

/// Folds a checked report into the router's record (`None`: its first report). Returns
/// `None` when the report is a duplicate or older than what the record holds.
pub fn fold(
    record: Option<RouterDemand>,
    report: &pb::DemandReport,
    now_unix_ms: u64,
) -> Option<RouterDemand> {
    let first = record.is_none();
    let mut record = record.unwrap_or_default();
    if !first && report.window_end_unix_ms <= record.window_end_unix_ms {
        return None;
    }
    let secs = f64::from(report.window_ms) / 1000.0;
    let mut window: BTreeMap<DemandKey, Rates> = BTreeMap::new();
    for s in &report.samples {
        let mut jurisdictions = s.jurisdictions.clone();
        jurisdictions.sort();
        jurisdictions.dedup();
        let key = DemandKey {
            region: s.region.clone(),
            model: s.model.clone(),
            jurisdictions,
        };
        window.entry(key).or_default().add(Rates {
            rps: s.requests as f64 / secs,
            prompt_tokens_per_s: s.prompt_tokens as f64 / secs,
            completion_tokens_per_s: s.completion_tokens as f64 / secs,
            refused_rps: s.refused as f64 / secs,
        });
    }
    // A first report is taken as it is; later ones move the average by the share of
    // the time constant their window covers.
    let alpha = if first {
        1.0
    } else {
        1.0 - (-f64::from(report.window_ms) / SMOOTHING_MS).exp()
    };
    let mut rates: BTreeMap<DemandKey, Rates> = record.rates.drain(..).collect();
    for (key, r) in rates.iter_mut() {
        r.blend(window.get(key).copied().unwrap_or_default(), alpha);
    }
    for (key, w) in window {
        rates.entry(key).or_insert_with(|| {
            let mut r = Rates::default();
            r.blend(w, alpha);
            r
        });
    }
    record.rates = rates
        .into_iter()
        .filter(|(_, r)| r.rps >= NEGLIGIBLE_RPS)
        .collect();
    record.router_pop = report.router_pop.clone();
    record.window_end_unix_ms = report.window_end_unix_ms;
    record.updated_unix_ms = now_unix_ms;
    Some(record)
}

/// The fleet's demand: the fresh routers' rates summed per key, with how many routers
/// saw each key.
pub fn total<'a>(
    records: impl IntoIterator<Item = &'a RouterDemand>,
    now_unix_ms: u64,
) -> Vec<(DemandKey, Rates, u32)> {
    let mut sum: BTreeMap<DemandKey, (Rates, u32)> = BTreeMap::new();
    for record in records {
        if now_unix_ms.saturating_sub(record.updated_unix_ms) > STALE_MS {
            continue;
        }
        for (key, r) in &record.rates {
            let e = sum.entry(key.clone()).or_default();
            e.0.add(*r);
            e.1 += 1;
        }
    }
    sum.into_iter().map(|(k, (r, n))| (k, r, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(router: &str, end: u64, samples: Vec<pb::DemandSample>) -> pb::DemandReport {
        pb::DemandReport {
            router_id: router.into(),
            router_pop: "IAD".into(),
            window_ms: 10_000,
            samples,
            window_end_unix_ms: end,
        }
    }

    fn sample(region: &str, model: &str, requests: u64) -> pb::DemandSample {
        pb::DemandSample {
            region: region.into(),
            model: model.into(),
            requests,
            prompt_tokens: requests * 100,
            completion_tokens: requests * 10,
            refused: 0,
            jurisdictions: vec![],
        }
    }

    #[test]
    fn bad_reports_are_refused_by_field() {
        let catalog = Catalog::builtin();
        let mut r = report("r1", 1, vec![sample("ZZZ", "m", 1)]);
        assert!(
            check(catalog, &r)
                .unwrap_err()
                .to_string()
                .contains("samples[0].region")
        );
        r.samples[0].region = "FRA".into();
        r.samples[0].refused = 2;
        assert!(
            check(catalog, &r)
                .unwrap_err()
                .to_string()
                .contains("refused")
        );
        r.samples[0].refused = 0;
        check(catalog, &r).unwrap();
        r.window_ms = 0;
        assert!(
            check(catalog, &r)
                .unwrap_err()
                .to_string()
                .contains("window_ms")
        );
        r.window_ms = 1;
        r.router_id = "a/b".into();
        assert!(
            check(catalog, &r)
                .unwrap_err()
                .to_string()
                .contains("router_id")
        );
    }

    #[test]
    fn smooths_drops_duplicates_and_sums_fresh_routers() {
        // First report: 50 requests in 10 s, taken as is: 5 rps.
        let a = fold(None, &report("a", 10, vec![sample("FRA", "m", 50)]), 1_000).unwrap();
        assert_eq!(a.rates.len(), 1);
        assert!((a.rates[0].1.rps - 5.0).abs() < 1e-9);
        assert!((a.rates[0].1.prompt_tokens_per_s - 500.0).abs() < 1e-9);
        // The same window again is a duplicate.
        assert!(fold(Some(a.clone()), &report("a", 10, vec![]), 2_000).is_none());
        // An empty window decays the rate by exp(-10/60).
        let decayed = fold(Some(a.clone()), &report("a", 20, vec![]), 2_000).unwrap();
        let expect = 5.0 * (-10_000.0f64 / SMOOTHING_MS).exp();
        assert!((decayed.rates[0].1.rps - expect).abs() < 1e-9);
        // A second router's demand for the same key adds up; a stale one does not.
        let b = fold(None, &report("b", 10, vec![sample("FRA", "m", 10)]), 1_000).unwrap();
        let mut stale = b.clone();
        stale.updated_unix_ms = 0;
        let now = STALE_MS + 500;
        let t = total([&decayed, &b, &stale], now);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0.region, "FRA");
        assert!((t[0].1.rps - (expect + 1.0)).abs() < 1e-9);
        assert_eq!(t[0].2, 2);
    }
}
