//! The PoP catalog: 365 real edge sites, one per row of `data/pops.csv`
//! (`iata,city,country,jurisdiction,lat,lon,tz`).
//!
//! Attribution: coordinates, country and time zone come from the `airportsdata` package
//! (MIT licence, version 20260905). `jurisdiction` is `EU` for the EU/EEA member states
//! and the ISO country code otherwise.
//!
//! Routers estimate round-trip times from it, the placement solver checks latency SLOs
//! with it, the simulator takes its geography from it, and `meridian up` picks its
//! default PoPs from it.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use crate::ProtoError;

/// The catalog shipped with Meridian.
pub const POPS_CSV: &str = include_str!("../data/pops.csv");

/// Mean Earth radius, kilometres.
const EARTH_RADIUS_KM: f64 = 6371.0;
/// One-way distance light covers in fiber per millisecond (about 2/3 of c).
const FIBER_KM_PER_MS: f64 = 200.0;
/// Real paths are longer than the great circle: routing detours, cable layout.
const PATH_STRETCH: f64 = 1.5;
/// Fixed round-trip overhead, milliseconds: last mile, switching, TCP/TLS processing.
const RTT_OVERHEAD_MS: f64 = 2.0;

/// One point of presence.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Site {
    /// IATA code, the site id everywhere in Meridian (`AMS`, `IAD`).
    #[serde(rename = "iata")]
    pub id: String,
    pub city: String,
    /// ISO 3166 country code.
    pub country: String,
    /// `EU` for EU/EEA member states, the ISO country code otherwise.
    pub jurisdiction: String,
    /// Degrees north.
    pub lat: f64,
    /// Degrees east.
    pub lon: f64,
    /// IANA time zone, e.g. `Europe/Amsterdam`.
    pub tz: String,
}

/// All sites, indexed by id.
#[derive(Debug, Clone)]
pub struct Catalog {
    sites: Vec<Site>,
    index: HashMap<String, usize>,
}

impl Catalog {
    /// Parses a catalog CSV with a header row. Errors name the line.
    pub fn parse(csv_text: &str) -> Result<Self, ProtoError> {
        let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
        let mut sites = Vec::new();
        let mut index = HashMap::new();
        for record in reader.deserialize::<Site>() {
            let site = record.map_err(|e| ProtoError::Catalog {
                line: e.position().map_or(0, |p| p.line()),
                message: e.to_string(),
            })?;
            let line = sites.len() as u64 + 2;
            if !(-90.0..=90.0).contains(&site.lat) || !(-180.0..=180.0).contains(&site.lon) {
                return Err(ProtoError::Catalog {
                    line,
                    message: format!("site {}: coordinates out of range", site.id),
                });
            }
            if site.id.is_empty() || site.jurisdiction.is_empty() {
                return Err(ProtoError::Catalog {
                    line,
                    message: "empty site id or jurisdiction".into(),
                });
            }
            if index.insert(site.id.clone(), sites.len()).is_some() {
                return Err(ProtoError::Catalog {
                    line,
                    message: format!("duplicate site id {}", site.id),
                });
            }
            sites.push(site);
        }
        Ok(Self { sites, index })
    }

    /// The catalog shipped with Meridian, parsed once.
    pub fn builtin() -> &'static Catalog {
        static CATALOG: OnceLock<Catalog> = OnceLock::new();
        CATALOG.get_or_init(|| {
            // The embedded file is checked by this crate's tests; a failure here is a
            // build defect, not bad input.
            #[allow(clippy::expect_used)]
            Catalog::parse(POPS_CSV).expect("the embedded pops.csv parses")
        })
    }

    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    pub fn get(&self, id: &str) -> Option<&Site> {
        self.index.get(id).map(|&i| &self.sites[i])
    }

    /// Position of site `id` in `sites()` (the column of per-site tables).
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }
}

/// Great-circle distance in kilometres (haversine).
pub fn great_circle_km(a_lat: f64, a_lon: f64, b_lat: f64, b_lon: f64) -> f64 {
    let (p1, p2) = (a_lat.to_radians(), b_lat.to_radians());
    let dp = p2 - p1;
    let dl = (b_lon - a_lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

/// Estimated network round trip between two points, milliseconds: the great circle
/// stretched by [`PATH_STRETCH`], at fiber speed both ways, plus a fixed overhead.
pub fn estimated_rtt_ms(a_lat: f64, a_lon: f64, b_lat: f64, b_lon: f64) -> f64 {
    let km = great_circle_km(a_lat, a_lon, b_lat, b_lon) * PATH_STRETCH;
    2.0 * km / FIBER_KM_PER_MS + RTT_OVERHEAD_MS
}

impl Site {
    /// Estimated round trip from this site to `other`, milliseconds.
    pub fn rtt_ms_to(&self, other: &Site) -> f64 {
        estimated_rtt_ms(self.lat, self.lon, other.lat, other.lon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_has_every_site() {
        let c = Catalog::builtin();
        assert_eq!(c.len(), 365);
        let ams = c.get("AMS").unwrap();
        assert_eq!(ams.city, "Amsterdam");
        assert_eq!(ams.jurisdiction, "EU");
        assert_eq!(ams.tz, "Europe/Amsterdam");
        // A quoted city name with a comma.
        assert_eq!(c.get("IST").unwrap().city, "Arnavutköy, Istanbul");
        assert_eq!(c.get("IAD").unwrap().jurisdiction, "US");
        assert_eq!(c.get("SIN").unwrap().jurisdiction, "SG");
        assert!(c.get("XXX").is_none());
    }

    #[test]
    fn distances_are_plausible() {
        let c = Catalog::builtin();
        let (ams, fra, sin) = (
            c.get("AMS").unwrap(),
            c.get("FRA").unwrap(),
            c.get("SIN").unwrap(),
        );
        let d = great_circle_km(ams.lat, ams.lon, fra.lat, fra.lon);
        assert!((350.0..380.0).contains(&d), "AMS-FRA {d} km");
        let d = great_circle_km(ams.lat, ams.lon, sin.lat, sin.lon);
        assert!((10_400.0..10_600.0).contains(&d), "AMS-SIN {d} km");
        assert!(ams.rtt_ms_to(fra) < ams.rtt_ms_to(sin));
        assert!((ams.rtt_ms_to(ams) - RTT_OVERHEAD_MS).abs() < 1e-9);
    }

    #[test]
    fn bad_rows_are_refused_with_their_line() {
        let header = "iata,city,country,jurisdiction,lat,lon,tz\n";
        let bad_lat = format!("{header}AMS,Amsterdam,NL,EU,152.3,4.7,Europe/Amsterdam\n");
        let err = Catalog::parse(&bad_lat).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("out of range"),
            "{err}"
        );
        let dup = format!("{header}AMS,A,NL,EU,1,1,x\nAMS,B,NL,EU,1,1,x\n");
        let err = Catalog::parse(&dup).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("duplicate"), "{err}");
        let not_a_number = format!("{header}AMS,A,NL,EU,north,1,x\n");
        let err = Catalog::parse(&not_a_number).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}
