//! Where requests come from, when, and how long they are, sans-IO.
//!
//! Each region (a catalog site, the centre of its users) sends a Poisson stream whose
//! rate follows the day in its time zone, times any burst in force, drawn by thinning
//! against the region's highest rate. The time zone is the site's longitude in whole
//! hours (`round(lon / 15)`): no time-zone database, and a diurnal curve does not need
//! the exact civil offset. Request lengths come from a table of real conversations'
//! prompt and output token counts (ShareGPT, loaded by the caller) or a uniform range;
//! or every arrival comes from a trace file.

use std::f64::consts::PI;

use rand::Rng;

use crate::SimError;
use crate::scenario::{Lengths, Traffic};

/// Prompt and output token counts to draw from.
#[derive(Debug, Clone, PartialEq)]
pub struct LengthTable {
    pairs: Vec<(u32, u32)>,
}

impl LengthTable {
    pub fn new(pairs: Vec<(u32, u32)>) -> Result<Self, SimError> {
        if pairs.is_empty() || pairs.iter().any(|&(p, o)| p == 0 || o == 0) {
            return Err(SimError::Lengths(
                "need at least one (prompt, output) pair, both non-zero".into(),
            ));
        }
        Ok(Self { pairs })
    }

    /// Parses `prompt_tokens,output_tokens` lines after a header.
    pub fn parse_csv(text: &str) -> Result<Self, SimError> {
        let mut pairs = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let mut f = line.split(',').map(str::trim);
            let (Some(p), Some(o), None) = (f.next(), f.next(), f.next()) else {
                return Err(SimError::Lengths(format!("line {}: want 2 fields", i + 1)));
            };
            let num = |v: &str| {
                v.parse::<u32>()
                    .map_err(|_| SimError::Lengths(format!("line {}: {v:?} is not a count", i + 1)))
            };
            pairs.push((num(p)?, num(o)?));
        }
        Self::new(pairs)
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn sample(&self, rng: &mut impl Rng) -> (u32, u32) {
        self.pairs[rng.random_range(0..self.pairs.len())]
    }

    /// Mean prompt and output tokens.
    pub fn mean(&self) -> (f64, f64) {
        let n = self.pairs.len() as f64;
        let (p, o) = self.pairs.iter().fold((0.0, 0.0), |(p, o), &(a, b)| {
            (p + f64::from(a), o + f64::from(b))
        });
        (p / n, o / n)
    }

    /// The table a scenario's `traffic.lengths` asks for; `sharegpt` is the caller's.
    pub fn for_scenario(
        lengths: &Lengths,
        sharegpt: Option<&LengthTable>,
    ) -> Result<Self, SimError> {
        match lengths {
            Lengths::Sharegpt => sharegpt.cloned().ok_or_else(|| {
                SimError::Lengths("the scenario draws lengths from ShareGPT; none given".into())
            }),
            Lengths::Uniform { prompt, output } => {
                // A grid over both ranges: uniform draws from a table like any other.
                let steps = 64u32;
                let span = |(lo, hi): (u32, u32), i: u32| {
                    lo + (f64::from(hi - lo) * f64::from(i) / f64::from(steps - 1)).round() as u32
                };
                let mut pairs = Vec::with_capacity((steps * steps) as usize);
                for i in 0..steps {
                    for j in 0..steps {
                        pairs.push((span(*prompt, i), span(*output, j)));
                    }
                }
                Self::new(pairs)
            }
        }
    }
}

/// The local hour of a site at `utc_h` (hours, any range).
pub fn local_hour(lon: f64, utc_h: f64) -> f64 {
    (utc_h + (lon / 15.0).round()).rem_euclid(24.0)
}

/// The diurnal factor at local hour `h`: mean 1 over a day.
pub fn diurnal(traffic: &Traffic, h: f64) -> f64 {
    1.0 + traffic.diurnal_amplitude * (2.0 * PI * (h - traffic.peak_local_hour) / 24.0).cos()
}

/// One request of a trace file.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceRow {
    /// Milliseconds from the start of the run.
    pub t_ms: f64,
    /// Catalog site id of the caller's region.
    pub region: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub output_tokens: u32,
    /// Allowed jurisdictions; empty: any.
    pub jurisdictions: Vec<String>,
}

/// The trace file's header; a `tokens` column after it (the prompt's token ids, for
/// replaying against a real engine) is allowed and ignored here.
pub const TRACE_HEADER: &str = "t_ms,region,model,prompt_tokens,output_tokens,jurisdictions";

/// Parses a trace (CSV with [`TRACE_HEADER`]; jurisdictions separated by `|`), sorted
/// by time.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRow>, SimError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim().starts_with(TRACE_HEADER) => {}
        _ => {
            return Err(SimError::Trace(format!(
                "line 1: the header must start with {TRACE_HEADER}"
            )));
        }
    }
    let mut rows = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 6 {
            return Err(SimError::Trace(format!("line {}: want 6 fields", i + 1)));
        }
        let err = |what: &str| SimError::Trace(format!("line {}: bad {what}", i + 1));
        let row = TraceRow {
            t_ms: f[0].parse().map_err(|_| err("t_ms"))?,
            region: f[1].to_string(),
            model: f[2].to_string(),
            prompt_tokens: f[3].parse().map_err(|_| err("prompt_tokens"))?,
            output_tokens: f[4].parse().map_err(|_| err("output_tokens"))?,
            jurisdictions: f[5]
                .split('|')
                .filter(|j| !j.is_empty())
                .map(String::from)
                .collect(),
        };
        if !(row.t_ms.is_finite() && row.t_ms >= 0.0)
            || row.prompt_tokens == 0
            || row.output_tokens == 0
        {
            return Err(err("values (t_ms >= 0, token counts >= 1)"));
        }
        rows.push(row);
    }
    rows.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_day_peaks_at_the_local_peak_hour_and_averages_one() {
        let t: Traffic = toml::from_str("mean_rps = 1\nmix = { m = 1 }\n").unwrap();
        let mean: f64 = (0..24 * 60)
            .map(|m| diurnal(&t, f64::from(m) / 60.0))
            .sum::<f64>()
            / (24.0 * 60.0);
        assert!((mean - 1.0).abs() < 1e-9);
        assert!((diurnal(&t, 20.0) - 1.6).abs() < 1e-9);
        // Tokyo (139.8 E) is 9 hours ahead: 11:00 UTC is 20:00 there.
        assert_eq!(local_hour(139.8, 11.0), 20.0);
        assert_eq!(local_hour(-74.0, 3.0), 22.0);
    }

    #[test]
    fn traces_parse_sorted_and_bad_lines_are_named() {
        let t = parse_trace(&format!(
            "{TRACE_HEADER},tokens\n20,AMS,m,10,5,EU|CH,1 2 3\n10,NRT,m,3,1,,\n"
        ))
        .unwrap();
        assert_eq!(t[0].region, "NRT");
        assert_eq!(t[1].jurisdictions, vec!["EU", "CH"]);
        let e = parse_trace(&format!("{TRACE_HEADER}\n1,AMS,m,0,5,\n")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse_trace("t,region\n").is_err());
    }

    #[test]
    fn length_tables_parse_and_refuse_zeros() {
        let t = LengthTable::parse_csv("prompt_tokens,output_tokens\n10,20\n30,40\n").unwrap();
        assert_eq!(t.mean(), (20.0, 30.0));
        assert!(LengthTable::parse_csv("p,o\n0,3\n").is_err());
        assert!(LengthTable::parse_csv("p,o\n1,x\n").is_err());
        let u = LengthTable::for_scenario(
            &Lengths::Uniform {
                prompt: (10, 20),
                output: (1, 1),
            },
            None,
        )
        .unwrap();
        assert_eq!(u.mean(), (15.0, 1.0));
        assert!(LengthTable::for_scenario(&Lengths::Sharegpt, None).is_err());
    }
}
