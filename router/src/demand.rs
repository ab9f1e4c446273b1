//! Demand as data, sans-IO: the requests and tokens this router saw per (region, model,
//! allowed jurisdictions), counted per window and turned into a `DemandReport` for the
//! control plane, whose placement solver plans from it.

use std::collections::HashMap;
use std::sync::Mutex;

use meridian_proto::catalog::Catalog;
use meridian_proto::control::v1 as cpb;

/// What a demand sample is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DemandKey {
    /// Catalog index of the callers' region.
    pub region: u32,
    pub model: String,
    /// The request's allowed jurisdictions, sorted; empty: any.
    pub jurisdictions: Vec<String>,
}

impl DemandKey {
    pub fn new(region: usize, model: &str, jurisdictions: &[String]) -> Self {
        let mut jurisdictions = jurisdictions.to_vec();
        jurisdictions.sort();
        jurisdictions.dedup();
        Self {
            region: region as u32,
            model: model.to_string(),
            jurisdictions,
        }
    }
}

/// Counts of one key in one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests received, refused ones included.
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Requests shed for lack of capacity (429).
    pub refused: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.refused += other.refused;
    }
}

/// The current window's counts. One short critical section per update; the reporter
/// swaps the whole map out at the end of a window.
#[derive(Debug, Default)]
pub struct DemandCounter {
    window: Mutex<HashMap<DemandKey, Counts>>,
}

impl DemandCounter {
    pub fn add(&self, key: &DemandKey, delta: Counts) {
        if let Ok(mut window) = self.window.lock() {
            match window.get_mut(key) {
                Some(c) => c.add(delta),
                None => {
                    window.insert(key.clone(), delta);
                }
            }
        }
    }

    /// Ends the window: its counts, leaving an empty one.
    pub fn take(&self) -> HashMap<DemandKey, Counts> {
        self.window
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default()
    }

    /// Puts back counts that could not be reported, so none are lost.
    pub fn restore(&self, counts: HashMap<DemandKey, Counts>) {
        for (key, c) in counts {
            self.add(&key, c);
        }
    }
}

/// A window's counts as the control plane's `DemandReport`, samples in a stable order.
pub fn report(
    catalog: &Catalog,
    router_id: &str,
    router_pop: &str,
    window_ms: u32,
    window_end_unix_ms: u64,
    counts: &HashMap<DemandKey, Counts>,
) -> cpb::DemandReport {
    let mut samples: Vec<cpb::DemandSample> = counts
        .iter()
        .filter_map(|(key, c)| {
            let region = catalog.sites().get(key.region as usize)?;
            Some(cpb::DemandSample {
                region: region.id.clone(),
                model: key.model.clone(),
                requests: c.requests,
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
                refused: c.refused,
                jurisdictions: key.jurisdictions.clone(),
            })
        })
        .collect();
    samples.sort_by(|a, b| {
        (&a.region, &a.model, &a.jurisdictions).cmp(&(&b.region, &b.model, &b.jurisdictions))
    });
    cpb::DemandReport {
        router_id: router_id.to_string(),
        router_pop: router_pop.to_string(),
        window_ms,
        samples,
        window_end_unix_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_windows_do_not_lose_counts() {
        let catalog = Catalog::builtin();
        let fra = catalog.index_of("FRA").unwrap();
        let nrt = catalog.index_of("NRT").unwrap();
        let counter = DemandCounter::default();
        let eu = DemandKey::new(fra, "m", &["EU".into(), "EU".into()]);
        let any = DemandKey::new(nrt, "m", &[]);
        let one = Counts {
            requests: 1,
            ..Default::default()
        };
        counter.add(&eu, one);
        counter.add(&eu, one);
        counter.add(
            &eu,
            Counts {
                prompt_tokens: 30,
                completion_tokens: 7,
                ..Default::default()
            },
        );
        counter.add(
            &any,
            Counts {
                requests: 1,
                refused: 1,
                ..Default::default()
            },
        );
        let window = counter.take();
        assert!(counter.take().is_empty(), "take starts a new window");
        let r = report(catalog, "r1", "IAD", 10_000, 42, &window);
        assert_eq!(r.samples.len(), 2);
        assert_eq!(r.samples[0].region, "FRA");
        assert_eq!(r.samples[0].jurisdictions, vec!["EU".to_string()]);
        assert_eq!((r.samples[0].requests, r.samples[0].prompt_tokens), (2, 30));
        assert_eq!(r.samples[0].completion_tokens, 7);
        assert_eq!(
            (r.samples[1].region.as_str(), r.samples[1].refused),
            ("NRT", 1)
        );
        // A failed send puts the window back, merged with what came since.
        counter.add(&eu, one);
        counter.restore(window);
        assert_eq!(counter.take()[&eu].requests, 3);
    }
}
