//! The compiled, index-based form of an [`Instance`] and the validation that builds it.
//!
//! Everything the solvers need is resolved here once: names become indexes, each model
//! gets the kinds it fits on and the sites that may host it, each demand entry the sites
//! it may be served from with their round trips. An instance whose rules cannot all hold
//! is refused with an [`InstanceError`] naming the culprit, so no solver ever starts on
//! input it would have to half-ignore.

use std::collections::{BTreeMap, HashMap, HashSet};

use meridian_proto::catalog::great_circle_km;

use super::instance::{Instance, Weights};

/// Fixed part of the format's RTT estimate, milliseconds. The catalog's
/// `estimated_rtt_ms` uses 2.0 here, so the solver keeps the format's own formula.
pub const RTT_BASE_MS: f64 = 1.0;
/// Milliseconds of round trip per great-circle kilometre: fiber covers 200 km per ms one
/// way, real paths run about 1.5x the great circle, and the trip is made twice.
pub const RTT_MS_PER_KM: f64 = 0.015;

/// The dense tables are (model x site x kind); past this the solver would need more
/// memory than a planning run should take.
const MAX_TABLE_CELLS: usize = 1 << 26;

/// The format's round-trip estimate between two points, milliseconds.
pub fn formula_rtt_ms(a_lat: f64, a_lon: f64, b_lat: f64, b_lon: f64) -> f64 {
    RTT_BASE_MS + RTT_MS_PER_KM * great_circle_km(a_lat, a_lon, b_lat, b_lon)
}

/// Why an instance was refused. Every variant names the input at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InstanceError {
    #[error("unsupported instance version {0}: this solver reads version 1")]
    Version(u32),
    #[error("duplicate {what} {id:?}")]
    Duplicate { what: &'static str, id: String },
    #[error("{owner}: {field} must be a finite number{range}, not {value}")]
    BadNumber {
        owner: String,
        field: &'static str,
        range: &'static str,
        value: f64,
    },
    #[error("{owner}: unknown GPU kind {kind:?}")]
    UnknownKind { owner: String, kind: String },
    #[error("{owner}: unknown model {model:?}")]
    UnknownModel { owner: String, model: String },
    #[error("{owner}: unknown site {site:?}")]
    UnknownSite { owner: String, site: String },
    #[error("model {model:?} can run on no GPU kind: {reason}")]
    ModelFitsNoKind { model: String, reason: String },
    #[error("pin of model {model:?} at site {site:?} cannot hold: {reason}")]
    Pin {
        model: String,
        site: String,
        reason: String,
    },
    #[error("site {site:?}: its pins need {needs} GPUs but it has {has}")]
    PinsOverflowSite { site: String, needs: u64, has: u64 },
    #[error(
        "model {model:?}: min_replicas {floor} is above the fleet's room for it ({room} replicas fit on the sites and kinds it may use)"
    )]
    FloorAboveRoom {
        model: String,
        floor: u64,
        room: u64,
    },
    #[error(
        "model {model:?}: min_sites {min_sites} is above the {sites} distinct sites that may hold it"
    )]
    SpreadAboveSites {
        model: String,
        min_sites: u32,
        sites: u32,
    },
    #[error("the instance is too large for the solver: {0}")]
    TooLarge(String),
    /// The rules hold one by one but the solver found no placement keeping all the
    /// floors and pins together.
    #[error("infeasible: {0}")]
    Infeasible(String),
}

/// A GPU kind.
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: String,
    pub mem_gib: f64,
    pub cost: f64,
}

/// A site with its GPU count per kind (indexed like `Problem::kinds`).
#[derive(Debug, Clone)]
pub struct Site {
    pub id: String,
    pub jurisdiction: String,
    pub lat: f64,
    pub lon: f64,
    pub gpus: Vec<u32>,
}

/// A model, resolved.
#[derive(Debug, Clone)]
pub struct Model {
    pub id: String,
    pub gpus_per_replica: u32,
    /// Requests per second of one replica per kind; 0 where the model cannot run.
    pub rps: Vec<f64>,
    /// Kinds the model fits on and has a throughput for, by index.
    pub fits: Vec<usize>,
    /// Per site: the model's residency and label rules allow it there.
    pub hosts: Vec<bool>,
    pub min_replicas: u32,
    /// Distinct sites the model's replicas must occupy (spread); 0 or 1: no rule.
    pub min_sites: u32,
}

/// A demand entry, resolved.
#[derive(Debug, Clone)]
pub struct Entry {
    pub region: usize,
    pub model: usize,
    pub rps: f64,
    pub slo_rtt_ms: f64,
    /// Sites this traffic may be served from (residency of the entry and the model,
    /// label rules, the round-trip limit, and at least one replica's worth of fitting
    /// GPUs), with their round trips, nearest first.
    pub eligible: Vec<(usize, f64)>,
    /// Another entry has the same (region, model): plan rows must say which entry.
    pub shared_key: bool,
}

/// A compiled instance: the solvers' and the checker's common view of the input.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kinds: Vec<Kind>,
    pub sites: Vec<Site>,
    pub models: Vec<Model>,
    pub entries: Vec<Entry>,
    /// (model, site, min replicas), one per pair (the largest when listed twice).
    pub pins: Vec<(usize, usize, u32)>,
    /// Today's replicas per (model, site, kind), see [`Problem::cell`].
    pub current: Vec<u32>,
    pub weights: Weights,
    pub max_moves: Option<u64>,
    pub site_index: HashMap<String, usize>,
    pub model_index: HashMap<String, usize>,
    pub kind_index: HashMap<String, usize>,
}

fn finite(
    owner: impl FnOnce() -> String,
    field: &'static str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<(), InstanceError> {
    if value.is_finite() && value >= min && value <= max {
        return Ok(());
    }
    let range = match (min == 0.0, max == MAX_QUANTITY) {
        (true, true) => " in [0, 1e12]",
        _ if field == "lat" => " in [-90, 90]",
        _ if field == "lon" => " in [-180, 180]",
        _ => "",
    };
    Err(InstanceError::BadNumber {
        owner: owner(),
        field,
        range,
        value,
    })
}

/// Rates, sizes, costs and round trips above this are input errors, not fleets: it
/// keeps every sum the solver forms finite.
const MAX_QUANTITY: f64 = 1e12;

fn non_negative(
    owner: impl FnOnce() -> String,
    field: &'static str,
    value: f64,
) -> Result<(), InstanceError> {
    finite(owner, field, value, 0.0, MAX_QUANTITY)
}

impl Problem {
    /// Index of the (model, site, kind) cell in the dense tables.
    pub fn cell(&self, model: usize, site: usize, kind: usize) -> usize {
        (model * self.sites.len() + site) * self.kinds.len() + kind
    }

    /// Whether one more replica of `model` may ever sit at `site` on `kind` (fit,
    /// residency, labels, and the site has a replica's worth of that kind).
    /// Only kinds with a positive throughput count: this is what demand can use.
    pub fn can_host(&self, model: usize, site: usize, kind: usize) -> bool {
        let m = &self.models[model];
        // `rps` is positive only on kinds the model fits on.
        m.hosts[site] && m.rps[kind] > 0.0 && self.sites[site].gpus[kind] >= m.gpus_per_replica
    }

    /// Whether a replica of `model` may sit at `site` on `kind` at all (what floors and
    /// pins may use, throughput or not).
    pub fn can_hold(&self, model: usize, site: usize, kind: usize) -> bool {
        let m = &self.models[model];
        m.hosts[site] && m.fits.contains(&kind) && self.sites[site].gpus[kind] >= m.gpus_per_replica
    }

    /// Validates `instance` and resolves it. Never panics.
    pub fn compile(instance: &Instance) -> Result<Problem, InstanceError> {
        if instance.version != 1 {
            return Err(InstanceError::Version(instance.version));
        }
        non_negative(|| "instance".into(), "slo_rtt_ms", instance.slo_rtt_ms)?;
        let w = &instance.weights;
        non_negative(|| "weights".into(), "unserved_rps", w.unserved_rps)?;
        non_negative(|| "weights".into(), "gpu", w.gpu)?;
        non_negative(|| "weights".into(), "move", w.moves)?;

        let mut kinds = Vec::new();
        let mut kind_index = HashMap::new();
        for k in &instance.gpu_kinds {
            let owner = || format!("GPU kind {:?}", k.name);
            non_negative(owner, "mem_gib", k.mem_gib)?;
            non_negative(owner, "cost", k.cost)?;
            if kind_index.insert(k.name.clone(), kinds.len()).is_some() {
                return Err(dup("GPU kind", &k.name));
            }
            kinds.push(Kind {
                name: k.name.clone(),
                mem_gib: k.mem_gib,
                cost: k.cost,
            });
        }

        let mut sites = Vec::new();
        let mut site_index = HashMap::new();
        for s in &instance.sites {
            let owner = || format!("site {:?}", s.id);
            finite(owner, "lat", s.lat, -90.0, 90.0)?;
            finite(owner, "lon", s.lon, -180.0, 180.0)?;
            if site_index.insert(s.id.clone(), sites.len()).is_some() {
                return Err(dup("site", &s.id));
            }
            let mut gpus = vec![0u32; kinds.len()];
            for (name, &n) in &s.gpus {
                let k = *kind_index
                    .get(name)
                    .ok_or_else(|| InstanceError::UnknownKind {
                        owner: format!("site {:?}", s.id),
                        kind: name.clone(),
                    })?;
                gpus[k] = n;
            }
            sites.push(Site {
                id: s.id.clone(),
                jurisdiction: s.jurisdiction.clone(),
                lat: s.lat,
                lon: s.lon,
                gpus,
            });
        }

        let cells = instance
            .models
            .len()
            .checked_mul(sites.len())
            .and_then(|n| n.checked_mul(kinds.len()))
            .filter(|&n| n <= MAX_TABLE_CELLS)
            .ok_or_else(|| {
                InstanceError::TooLarge(format!(
                    "{} models x {} sites x {} GPU kinds is over {MAX_TABLE_CELLS} cells",
                    instance.models.len(),
                    sites.len(),
                    kinds.len()
                ))
            })?;

        let mut models = Vec::new();
        let mut model_index = HashMap::new();
        for spec in &instance.models {
            let owner = || format!("model {:?}", spec.id);
            non_negative(owner, "mem_gib", spec.mem_gib)?;
            if spec.gpus_per_replica == 0 {
                return Err(InstanceError::BadNumber {
                    owner: owner(),
                    field: "gpus_per_replica",
                    range: " >= 1",
                    value: 0.0,
                });
            }
            if model_index.insert(spec.id.clone(), models.len()).is_some() {
                return Err(dup("model", &spec.id));
            }
            let per_gpu = spec.mem_gib / f64::from(spec.gpus_per_replica);
            let mut rps = vec![0.0; kinds.len()];
            let mut fits = Vec::new();
            for (name, &r) in &spec.rps_per_replica {
                non_negative(owner, "rps_per_replica", r)?;
                let k = *kind_index
                    .get(name)
                    .ok_or_else(|| InstanceError::UnknownKind {
                        owner: owner(),
                        kind: name.clone(),
                    })?;
                if per_gpu <= kinds[k].mem_gib {
                    rps[k] = r;
                    fits.push(k);
                }
            }
            if fits.is_empty() {
                return Err(InstanceError::ModelFitsNoKind {
                    model: spec.id.clone(),
                    reason: no_fit_reason(per_gpu, &kinds, &spec.rps_per_replica),
                });
            }
            fits.sort_unstable();
            // A kind with a zero throughput entry fits but serves nothing; it may still
            // hold floors and pins, so it stays in `fits` with rps 0 (`can_host` wants
            // rps > 0 for the demand-driven solver, floors use `fits`).
            let allowed: Option<HashSet<&str>> = spec
                .jurisdictions
                .as_ref()
                .map(|j| j.iter().map(String::as_str).collect());
            let hosts = instance
                .sites
                .iter()
                .map(|s| {
                    allowed
                        .as_ref()
                        .is_none_or(|a| a.contains(s.jurisdiction.as_str()))
                        && spec.constraints.iter().all(|c| c.admits(&s.labels))
                })
                .collect();
            models.push(Model {
                id: spec.id.clone(),
                gpus_per_replica: spec.gpus_per_replica,
                rps,
                fits,
                hosts,
                min_replicas: spec.min_replicas,
                min_sites: spec.min_sites,
            });
        }

        let mut problem = Problem {
            kinds,
            sites,
            models,
            entries: Vec::new(),
            pins: Vec::new(),
            current: vec![0; cells],
            weights: instance.weights,
            max_moves: instance.max_moves,
            site_index,
            model_index,
            kind_index,
        };
        problem.compile_current(instance)?;
        problem.compile_pins(instance)?;
        problem.check_floors()?;
        problem.compile_demand(instance)?;
        Ok(problem)
    }

    fn model_of(&self, owner: impl Fn() -> String, id: &str) -> Result<usize, InstanceError> {
        self.model_index
            .get(id)
            .copied()
            .ok_or_else(|| InstanceError::UnknownModel {
                owner: owner(),
                model: id.to_string(),
            })
    }

    fn site_of(&self, owner: impl Fn() -> String, id: &str) -> Result<usize, InstanceError> {
        self.site_index
            .get(id)
            .copied()
            .ok_or_else(|| InstanceError::UnknownSite {
                owner: owner(),
                site: id.to_string(),
            })
    }

    fn compile_current(&mut self, instance: &Instance) -> Result<(), InstanceError> {
        for (i, row) in instance.current.iter().enumerate() {
            let owner = || format!("current[{i}]");
            let m = self.model_of(owner, &row.model)?;
            let s = self.site_of(owner, &row.site)?;
            let k = *self
                .kind_index
                .get(&row.gpu)
                .ok_or_else(|| InstanceError::UnknownKind {
                    owner: owner(),
                    kind: row.gpu.clone(),
                })?;
            // A current row the fleet can no longer hold (the site shrank, a rule
            // changed) is not an error: the solver has to move it, and counts the moves.
            let c = self.cell(m, s, k);
            self.current[c] = self.current[c].saturating_add(row.replicas);
        }
        Ok(())
    }

    fn compile_pins(&mut self, instance: &Instance) -> Result<(), InstanceError> {
        let mut merged: BTreeMap<(usize, usize), u32> = BTreeMap::new();
        for (i, pin) in instance.pins.iter().enumerate() {
            let owner = || format!("pins[{i}]");
            let m = self.model_of(owner, &pin.model)?;
            let s = self.site_of(owner, &pin.site)?;
            let e = merged.entry((m, s)).or_default();
            *e = (*e).max(pin.min_replicas);
        }
        let mut per_site: BTreeMap<usize, u64> = BTreeMap::new();
        for (&(m, s), &min) in &merged {
            if min == 0 {
                continue;
            }
            let (model, site) = (&self.models[m], &self.sites[s]);
            let refuse = |reason: String| InstanceError::Pin {
                model: model.id.clone(),
                site: site.id.clone(),
                reason,
            };
            if !model.hosts[s] {
                return Err(refuse(format!(
                    "the model's residency or label rules exclude the site (jurisdiction {})",
                    site.jurisdiction
                )));
            }
            let g = model.gpus_per_replica;
            let room: u64 = model
                .fits
                .iter()
                .map(|&k| u64::from(site.gpus[k] / g))
                .sum();
            if room == 0 {
                return Err(refuse(format!(
                    "the site has no GPU kind the model fits on with {g} GPUs free"
                )));
            }
            if room < u64::from(min) {
                return Err(refuse(format!(
                    "{min} replicas need {} GPUs of a fitting kind; the site has room for {room} replicas",
                    u64::from(min) * u64::from(g)
                )));
            }
            *per_site.entry(s).or_default() += u64::from(min) * u64::from(g);
        }
        for (s, needs) in per_site {
            let has: u64 = self.sites[s].gpus.iter().map(|&n| u64::from(n)).sum();
            if needs > has {
                return Err(InstanceError::PinsOverflowSite {
                    site: self.sites[s].id.clone(),
                    needs,
                    has,
                });
            }
        }
        self.pins = merged
            .into_iter()
            .filter(|&(_, min)| min > 0)
            .map(|((m, s), min)| (m, s, min))
            .collect();
        Ok(())
    }

    /// Room for each model's floor on its own (the solver finds out whether all floors
    /// fit together).
    fn check_floors(&self) -> Result<(), InstanceError> {
        for (m, model) in self.models.iter().enumerate() {
            if model.min_sites > 1 {
                let sites = (0..self.sites.len())
                    .filter(|&s| (0..self.kinds.len()).any(|k| self.can_hold(m, s, k)))
                    .count() as u32;
                if model.min_sites > sites {
                    return Err(InstanceError::SpreadAboveSites {
                        model: model.id.clone(),
                        min_sites: model.min_sites,
                        sites,
                    });
                }
            }
            if model.min_replicas == 0 {
                continue;
            }
            let g = model.gpus_per_replica;
            let room: u64 = self
                .sites
                .iter()
                .enumerate()
                .filter(|&(s, _)| model.hosts[s])
                .flat_map(|(_, site)| model.fits.iter().map(|&k| u64::from(site.gpus[k] / g)))
                .sum();
            if u64::from(model.min_replicas) > room {
                return Err(InstanceError::FloorAboveRoom {
                    model: model.id.clone(),
                    floor: u64::from(model.min_replicas),
                    room,
                });
            }
        }
        Ok(())
    }

    fn compile_demand(&mut self, instance: &Instance) -> Result<(), InstanceError> {
        let mut measured: HashMap<(usize, usize), f64> = HashMap::new();
        for (i, sample) in instance.rtt_ms.iter().enumerate() {
            let owner = || format!("rtt_ms[{i}]");
            let from = self.site_of(owner, &sample.from)?;
            let to = self.site_of(owner, &sample.to)?;
            non_negative(owner, "ms", sample.ms)?;
            if measured.insert((from, to), sample.ms).is_some() {
                return Err(dup(
                    "rtt_ms pair",
                    &format!("{} -> {}", sample.from, sample.to),
                ));
            }
        }
        let regions: HashSet<&str> = instance.demand.iter().map(|d| d.region.as_str()).collect();
        if regions.len().saturating_mul(self.sites.len()) > MAX_TABLE_CELLS {
            return Err(InstanceError::TooLarge(format!(
                "{} demand regions x {} sites round trips",
                regions.len(),
                self.sites.len()
            )));
        }
        // Sites by round trip from each region that has demand, computed once per region.
        let mut by_region: HashMap<usize, Vec<(f64, usize)>> = HashMap::new();
        let mut keys: HashMap<(usize, usize), usize> = HashMap::new();
        let mut entries = Vec::with_capacity(instance.demand.len());
        for (i, d) in instance.demand.iter().enumerate() {
            let owner = || format!("demand[{i}] ({} {})", d.region, d.model);
            let model = self.model_of(owner, &d.model)?;
            let region = self.site_of(owner, &d.region)?;
            non_negative(owner, "rps", d.rps)?;
            let slo = match d.slo_rtt_ms {
                Some(v) => {
                    non_negative(owner, "slo_rtt_ms", v)?;
                    v
                }
                None => instance.slo_rtt_ms,
            };
            *keys.entry((region, model)).or_default() += 1;
            let sorted = by_region.entry(region).or_insert_with(|| {
                let r = &self.sites[region];
                let mut v: Vec<(f64, usize)> =
                    self.sites
                        .iter()
                        .enumerate()
                        .map(|(s, site)| {
                            let rtt = measured.get(&(region, s)).copied().unwrap_or_else(|| {
                                formula_rtt_ms(r.lat, r.lon, site.lat, site.lon)
                            });
                            (rtt, s)
                        })
                        .collect();
                v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                v
            });
            let allowed: Option<HashSet<&str>> = d
                .jurisdictions
                .as_ref()
                .map(|j| j.iter().map(String::as_str).collect());
            let m = &self.models[model];
            let eligible = sorted
                .iter()
                .take_while(|&&(rtt, _)| rtt <= slo)
                .filter(|&&(_, s)| {
                    let site = &self.sites[s];
                    m.hosts[s]
                        && allowed
                            .as_ref()
                            .is_none_or(|a| a.contains(site.jurisdiction.as_str()))
                        && m.fits
                            .iter()
                            .any(|&k| m.rps[k] > 0.0 && site.gpus[k] >= m.gpus_per_replica)
                })
                .map(|&(rtt, s)| (s, rtt))
                .collect();
            entries.push(Entry {
                region,
                model,
                rps: d.rps,
                slo_rtt_ms: slo,
                eligible,
                shared_key: false,
            });
        }
        for e in &mut entries {
            e.shared_key = keys.get(&(e.region, e.model)).is_some_and(|&n| n > 1);
        }
        self.entries = entries;
        Ok(())
    }
}

fn dup(what: &'static str, id: &str) -> InstanceError {
    InstanceError::Duplicate {
        what,
        id: id.to_string(),
    }
}

fn no_fit_reason(per_gpu: f64, kinds: &[Kind], rps: &BTreeMap<String, f64>) -> String {
    let largest = kinds.iter().max_by(|a, b| a.mem_gib.total_cmp(&b.mem_gib));
    match largest {
        None => "the instance has no GPU kinds".into(),
        Some(k) if per_gpu > k.mem_gib => format!(
            "it needs {per_gpu} GiB per GPU and the largest kind, {}, has {} GiB",
            k.name, k.mem_gib
        ),
        Some(_) if rps.is_empty() => "rps_per_replica is empty".into(),
        Some(_) => {
            let listed: Vec<&str> = rps.keys().map(String::as_str).collect();
            format!(
                "it needs {per_gpu} GiB per GPU, more than every kind with an rps_per_replica entry ({})",
                listed.join(", ")
            )
        }
    }
}
