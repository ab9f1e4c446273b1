//! What a run found: totals, latency percentiles per PoP, per region and over time, SLO
//! attainment, utilisation, placement moves; as JSON, CSV and plain text. Writing the
//! files is the caller's job; this module makes the strings.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Percentiles;

/// The whole report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_h: f64,
    pub totals: Totals,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub slo: SloReport,
    /// Busy share of the placed replicas' time, over the run (an engine that is
    /// continuously batching is busy at any load).
    pub utilisation: f64,
    /// Requests completed over what the replicas could have completed at their
    /// full-batch rate: the share of capacity in use.
    pub load: f64,
    /// GPUs in the fleet at the start, and the most placed at once.
    pub fleet_gpus: u64,
    pub peak_placed_gpus: u64,
    pub placement: PlacementReport,
    /// The first error of a placement round that failed (the fleet kept its replicas).
    pub placement_error: Option<String>,
    /// Requests served outside their allowed jurisdictions: always 0, or the run fails.
    pub jurisdiction_violations: u64,
    /// Simulator work: events handled.
    pub events: u64,
    pub pops: Vec<PopRow>,
    pub regions: Vec<RegionRow>,
    pub timeline: Vec<BucketRow>,
    /// One row per completed request, in completion order, when asked for.
    #[serde(skip)]
    pub requests: Vec<RequestRow>,
}

/// One completed request.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RequestRow {
    pub arrival_ms: f64,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    pub ttft_ms: f64,
    /// 0 for a one-token answer.
    pub tpot_ms: f64,
    pub e2e_ms: f64,
}

/// The header of [`Report::requests_csv`], shared with `meridian sim replay`'s output so
/// simulated and measured runs compare column for column.
pub const REQUESTS_HEADER: &str = "arrival_ms,prompt_tokens,output_tokens,ttft_ms,tpot_ms,e2e_ms";

/// What happened to the requests.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Totals {
    pub arrived: u64,
    pub completed: u64,
    /// 429: every allowed worker's queue was full.
    pub shed: u64,
    /// 503: no allowed worker had the model, or none could be reached.
    pub unservable: u64,
    /// Lost after their first token, when a worker failed mid-stream.
    pub failed: u64,
    /// 400: longer than the engine's KV cache can hold.
    pub rejected: u64,
    /// Sent again after a worker failed before their first token.
    pub retried: u64,
    /// Still running when the run ended.
    pub in_flight: u64,
    pub output_tokens: u64,
    /// Completed requests per second of simulated time.
    pub throughput_rps: f64,
    /// Generated tokens per second of simulated time.
    pub throughput_tps: f64,
}

/// SLO attainment.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct SloReport {
    pub ttft_ms: f64,
    pub tpot_ms: f64,
    /// Share of decided requests (completed, refused or failed) completed within both.
    pub attainment: f64,
    /// Whether the run's p99 TTFT and p99 TPOT meet the objectives.
    pub p99_met: bool,
}

/// Placement over the run.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct PlacementReport {
    /// Plans applied, the first included.
    pub rounds: u64,
    /// Replicas added or removed after the first plan.
    pub moves: u64,
    /// Replicas placed by the first plan.
    pub initial_replicas: u64,
    /// Replicas lost to faults.
    pub lost_replicas: u64,
    /// Rounds the solver refused (the fleet kept what it had).
    pub failed_rounds: u64,
}

/// One PoP.
#[derive(Debug, Clone, Serialize)]
pub struct PopRow {
    pub pop: String,
    pub jurisdiction: String,
    pub lat: f64,
    pub lon: f64,
    pub gpus: u64,
    /// Replicas placed at the end of the run.
    pub replicas: u64,
    /// Requests it served (routed to it).
    pub requests: u64,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub slo_attainment: f64,
    /// Busy share of its replicas' time.
    pub utilisation: f64,
    /// Requests completed over its replicas' full-batch capacity.
    pub load: f64,
}

/// One user region.
#[derive(Debug, Clone, Serialize)]
pub struct RegionRow {
    pub region: String,
    pub jurisdiction: String,
    pub requests: u64,
    pub shed: u64,
    pub unservable: u64,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub slo_attainment: f64,
}

/// One time bucket, by arrival time.
#[derive(Debug, Clone, Serialize)]
pub struct BucketRow {
    /// Start, hours from the start of the run.
    pub start_h: f64,
    pub arrived: u64,
    pub completed: u64,
    pub shed: u64,
    pub unservable: u64,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    /// Busy share of the replicas serving during the bucket.
    pub utilisation: f64,
    /// Replicas serving at the end of the bucket.
    pub replicas: u64,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn pops_csv(&self) -> String {
        let mut s = String::from(
            "pop,jurisdiction,lat,lon,gpus,replicas,requests,ttft_p50_ms,ttft_p90_ms,\
             ttft_p99_ms,tpot_p50_ms,tpot_p99_ms,slo_attainment,utilisation,load\n",
        );
        for r in &self.pops {
            let _ = writeln!(
                s,
                "{},{},{:.4},{:.4},{},{},{},{:.1},{:.1},{:.1},{:.2},{:.2},{:.4},{:.4},{:.4}",
                r.pop,
                r.jurisdiction,
                r.lat,
                r.lon,
                r.gpus,
                r.replicas,
                r.requests,
                r.ttft_ms.p50,
                r.ttft_ms.p90,
                r.ttft_ms.p99,
                r.tpot_ms.p50,
                r.tpot_ms.p99,
                r.slo_attainment,
                r.utilisation,
                r.load
            );
        }
        s
    }

    pub fn regions_csv(&self) -> String {
        let mut s = String::from(
            "region,jurisdiction,requests,shed,unservable,ttft_p50_ms,ttft_p90_ms,ttft_p99_ms,\
             tpot_p50_ms,tpot_p99_ms,slo_attainment\n",
        );
        for r in &self.regions {
            let _ = writeln!(
                s,
                "{},{},{},{},{},{:.1},{:.1},{:.1},{:.2},{:.2},{:.4}",
                r.region,
                r.jurisdiction,
                r.requests,
                r.shed,
                r.unservable,
                r.ttft_ms.p50,
                r.ttft_ms.p90,
                r.ttft_ms.p99,
                r.tpot_ms.p50,
                r.tpot_ms.p99,
                r.slo_attainment
            );
        }
        s
    }

    pub fn timeline_csv(&self) -> String {
        let mut s = String::from(
            "start_h,arrived,completed,shed,unservable,ttft_p50_ms,ttft_p99_ms,tpot_p50_ms,\
             tpot_p99_ms,utilisation,replicas\n",
        );
        for b in &self.timeline {
            let _ = writeln!(
                s,
                "{:.3},{},{},{},{},{:.1},{:.1},{:.2},{:.2},{:.4},{}",
                b.start_h,
                b.arrived,
                b.completed,
                b.shed,
                b.unservable,
                b.ttft_ms.p50,
                b.ttft_ms.p99,
                b.tpot_ms.p50,
                b.tpot_ms.p99,
                b.utilisation,
                b.replicas
            );
        }
        s
    }

    pub fn requests_csv(&self) -> String {
        let mut s = format!("{REQUESTS_HEADER}\n");
        for r in &self.requests {
            let _ = writeln!(
                s,
                "{:.3},{},{},{:.3},{:.3},{:.3}",
                r.arrival_ms, r.prompt_tokens, r.output_tokens, r.ttft_ms, r.tpot_ms, r.e2e_ms
            );
        }
        s
    }

    /// The summary a terminal shows.
    pub fn summary_text(&self) -> String {
        let t = &self.totals;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {} (seed {}), {:.1} h simulated",
            self.scenario, self.seed, self.duration_h
        );
        let _ = writeln!(
            s,
            "requests: {} arrived, {} completed, {} shed, {} unservable, {} failed, {} \
             rejected, {} retried, {} in flight at the end",
            t.arrived,
            t.completed,
            t.shed,
            t.unservable,
            t.failed,
            t.rejected,
            t.retried,
            t.in_flight
        );
        let _ = writeln!(
            s,
            "throughput: {:.1} req/s, {:.0} tok/s",
            t.throughput_rps, t.throughput_tps
        );
        let p = |name: &str, x: &Percentiles| {
            format!(
                "{name}: mean {:.1}, p50 {:.1}, p90 {:.1}, p99 {:.1} ms",
                x.mean, x.p50, x.p90, x.p99
            )
        };
        let _ = writeln!(s, "{}", p("TTFT", &self.ttft_ms));
        let _ = writeln!(s, "{}", p("TPOT", &self.tpot_ms));
        let _ = writeln!(
            s,
            "SLO (TTFT {} ms, TPOT {} ms): {:.2}% of requests, p99 {}",
            self.slo.ttft_ms,
            self.slo.tpot_ms,
            100.0 * self.slo.attainment,
            if self.slo.p99_met { "met" } else { "missed" }
        );
        let _ = writeln!(
            s,
            "GPUs: {} in the fleet, at most {} placed; replicas busy {:.1}% of the time, \
             load {:.1}% of their full-batch capacity",
            self.fleet_gpus,
            self.peak_placed_gpus,
            100.0 * self.utilisation,
            100.0 * self.load
        );
        let _ = writeln!(
            s,
            "placement: {} rounds, {} replicas at first, {} moves after, {} lost to faults",
            self.placement.rounds,
            self.placement.initial_replicas,
            self.placement.moves,
            self.placement.lost_replicas
        );
        if let Some(e) = &self.placement_error {
            let _ = writeln!(
                s,
                "placement: {} rounds failed, the first with: {e}",
                self.placement.failed_rounds
            );
        }
        let _ = writeln!(
            s,
            "jurisdiction violations: {}",
            self.jurisdiction_violations
        );
        s
    }
}
