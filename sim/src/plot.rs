//! Charts of a run's [`Report`] as standalone SVG strings: latency over the day and a
//! utilisation "map" of the PoPs.
//!
//! Drawn with `plotters`' SVG backend into a `String`. No font is loaded: without the
//! `ttf` and `ab_glyph` features `plotters` only estimates text extents for its layout,
//! and the SVG backend writes plain `<text>` elements that the viewer renders with its
//! own `sans-serif` font. The output is deterministic: the same report gives the same
//! bytes. Writing the files is the caller's job.

use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::SimError;
use crate::report::{BucketRow, PopRow, Report};

/// Size of the latency chart, pixels.
const LATENCY_SIZE: (u32, u32) = (1000, 820);
/// Size of the utilisation map, pixels.
const MAP_SIZE: (u32, u32) = (1100, 440);
/// Font family of every label; the viewer picks the actual font.
const FONT: &str = "sans-serif";

/// The map's longitude range, degrees.
const LON: Range<f64> = -180.0..180.0;
/// The map's latitude range, degrees.
const LAT: Range<f64> = -60.0..75.0;

/// Line colours: TTFT in blues, TPOT in oranges; p99 darker than p50.
const TTFT_P50: RGBColor = RGBColor(100, 150, 220);
const TTFT_P99: RGBColor = RGBColor(20, 60, 150);
const TPOT_P50: RGBColor = RGBColor(245, 160, 60);
const TPOT_P99: RGBColor = RGBColor(190, 80, 0);
/// Arrival bars.
const ARRIVALS: RGBColor = RGBColor(120, 120, 120);
/// PoPs without replicas.
const IDLE_GREY: RGBColor = RGBColor(160, 160, 160);

/// Turns any `plotters` drawing error into the simulator's.
fn plot_err<E: std::fmt::Display>(e: E) -> SimError {
    SimError::Plot(e.to_string())
}

/// "Latency over the day": TTFT p50/p99 (log scale), TPOT p50/p99 (log scale) and the
/// arrivals per bucket, in three stacked panels sharing the hours-from-start axis.
///
/// Buckets that completed no request (`ttft_ms.count == 0`) leave a gap in the lines
/// instead of dropping to 0. An empty timeline gives a chart with a "no data" note.
pub fn latency_svg(report: &Report) -> Result<String, SimError> {
    let empty = report
        .timeline
        .is_empty()
        .then_some("no data: the timeline is empty");
    chart(
        LATENCY_SIZE,
        &format!("Latency over the day: {}", report.scenario),
        empty,
        |body| draw_latency(body, report),
    )
}

/// A world "map" of the PoPs: one circle per PoP at its longitude and latitude, its
/// radius growing with the square root of its GPUs and its colour showing its replicas'
/// load, the share of its replicas' full-batch capacity in use (green, yellow, red),
/// grey where it holds no replica.
///
/// PoPs with a non-finite latitude or longitude are left out; the others are clamped to
/// the map's range. No PoPs give a chart with a "no data" note.
pub fn utilisation_map_svg(report: &Report) -> Result<String, SimError> {
    let empty = report
        .pops
        .is_empty()
        .then_some("no data: the report has no PoPs");
    chart(
        MAP_SIZE,
        &format!("PoP load: {}", report.scenario),
        empty,
        |body| draw_map(body, report),
    )
}

/// An SVG of `size` with `title` over a body that `draw` fills, or that says `empty`
/// when there is nothing to draw.
fn chart(
    size: (u32, u32),
    title: &str,
    empty: Option<&str>,
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), SimError>,
) -> Result<String, SimError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let body = root
            .titled(title, (FONT, 24).into_font().color(&BLACK))
            .map_err(plot_err)?;
        match empty {
            Some(note) => no_data(&body, note)?,
            None => draw(&body)?,
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn no_data(area: &DrawingArea<SVGBackend<'_>, Shift>, note: &str) -> Result<(), SimError> {
    let (w, h) = area.dim_in_pixel();
    let style = (FONT, 20)
        .into_font()
        .color(&BLACK.mix(0.6))
        .pos(Pos::new(HPos::Center, VPos::Center));
    area.draw_text(note, &style, (w as i32 / 2, h as i32 / 2))
        .map_err(plot_err)
}

/// The three panels of [`latency_svg`] for a non-empty timeline.
fn draw_latency(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    report: &Report,
) -> Result<(), SimError> {
    let timeline = &report.timeline;
    let width = bucket_width(timeline, report.duration_h);
    let x = hours_range(timeline, width, report.duration_h);

    let h = area.dim_in_pixel().1;
    let (ttft_area, rest) = area.split_vertically(h * 40 / 100);
    let (tpot_area, arrivals_area) = rest.split_vertically(h * 35 / 100);

    latency_panel(
        &ttft_area,
        timeline,
        x.clone(),
        "TTFT (log scale)",
        |b| (b.ttft_ms.p50, b.ttft_ms.p99),
        [("TTFT p50", TTFT_P50), ("TTFT p99", TTFT_P99)],
    )?;
    latency_panel(
        &tpot_area,
        timeline,
        x.clone(),
        "TPOT (log scale)",
        |b| (b.tpot_ms.p50, b.tpot_ms.p99),
        [("TPOT p50", TPOT_P50), ("TPOT p99", TPOT_P99)],
    )?;
    arrivals_panel(&arrivals_area, timeline, x, width)
}

/// The width of a bucket, hours: the smallest step between bucket starts, else what is
/// left of the run after the only bucket, else one hour.
fn bucket_width(timeline: &[BucketRow], duration_h: f64) -> f64 {
    let step = timeline
        .windows(2)
        .map(|w| w[1].start_h - w[0].start_h)
        .filter(|d| d.is_finite() && *d > 0.0)
        .fold(f64::INFINITY, f64::min);
    if step.is_finite() {
        return step;
    }
    let left = timeline
        .first()
        .map_or(f64::NAN, |b| duration_h - b.start_h);
    if left.is_finite() && left > 0.0 {
        left
    } else {
        1.0
    }
}

/// The x range, hours: from 0 (or the first bucket, if earlier) to the end of the last
/// bucket or of the run, whichever is later.
fn hours_range(timeline: &[BucketRow], width: f64, duration_h: f64) -> Range<f64> {
    let starts = timeline.iter().map(|b| b.start_h).filter(|s| s.is_finite());
    let first = starts.clone().fold(0.0, f64::min);
    let last_end = starts.fold(f64::NEG_INFINITY, f64::max) + width;
    let mut end = if duration_h.is_finite() {
        last_end.max(duration_h)
    } else {
        last_end
    };
    if !(end.is_finite() && end > first) {
        end = first + 1.0;
    }
    first..end
}

/// Runs of consecutive buckets that completed requests, as (hour, value) points; a
/// bucket with no request or a value that cannot go on a log axis ends a run.
fn runs(timeline: &[BucketRow], value: impl Fn(&BucketRow) -> f64) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for b in timeline {
        let v = value(b);
        if b.ttft_ms.count > 0 && b.start_h.is_finite() && v.is_finite() && v > 0.0 {
            current.push((b.start_h, v));
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A log-scale y range holding every value, padded a little; 1..1000 when there is none.
fn log_range<'a>(values: impl Iterator<Item = &'a (f64, f64)>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| {
        (lo.min(v), hi.max(v))
    });
    if !(lo.is_finite() && hi.is_finite()) {
        return 1.0..1000.0;
    }
    let (lo, hi) = (lo / 1.5, hi * 1.5);
    // At least a decade tall, so that the axis has ticks to show.
    if hi / lo < 10.0 {
        let mid = (lo * hi).sqrt();
        mid / 10f64.sqrt()..mid * 10f64.sqrt()
    } else {
        lo..hi
    }
}

/// Tick values for a log axis over `range`: bold ticks (labelled) at 1, 2 and 5 times
/// the powers of ten when it spans up to three decades, else at the powers of ten (every
/// second, third... one past six decades); light grid lines at the other multiples.
fn log_ticks(range: &Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let (lo, hi) = (range.start, range.end);
    let (first, last) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let decades = last - first;
    let every = ((decades + 5) / 6).max(1);
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    for e in first..=last {
        let decade = 10f64.powi(e);
        for m in 1..10 {
            let v = decade * f64::from(m);
            if v < lo || v > hi {
                continue;
            }
            if (m == 1 && e.rem_euclid(every) == 0) || (decades <= 3 && (m == 2 || m == 5)) {
                bold.push(v);
            } else if m == 1 || decades <= 6 {
                light.push(v);
            }
        }
    }
    (bold, light)
}

/// A number as a tick label: at most two decimals, no trailing zeros.
fn num_label(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// Milliseconds as a short tick label with its unit: "20ms", "1.5s", "1e9ms".
fn ms_label(v: f64) -> String {
    if !(0.01..1e6).contains(&v) {
        format!("{v:.0e}ms")
    } else if v >= 1000.0 {
        format!("{}s", num_label(v / 1000.0))
    } else {
        format!("{}ms", num_label(v))
    }
}

/// One latency panel: p50 and p99 lines (with a dot per bucket) on a log y axis.
fn latency_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    timeline: &[BucketRow],
    x: Range<f64>,
    y_desc: &str,
    value: impl Fn(&BucketRow) -> (f64, f64),
    series: [(&str, RGBColor); 2],
) -> Result<(), SimError> {
    let p50 = runs(timeline, |b| value(b).0);
    let p99 = runs(timeline, |b| value(b).1);
    let y = log_range(p50.iter().chain(&p99).flatten());
    let (bold, light) = log_ticks(&y);

    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .margin_right(24)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(
            x,
            y.log_scale().with_key_points(bold).with_light_points(light),
        )
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .y_desc(y_desc)
        .y_label_formatter(&|v| ms_label(*v))
        .x_label_formatter(&|h| num_label(*h))
        .light_line_style(BLACK.mix(0.05))
        .bold_line_style(BLACK.mix(0.15))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(plot_err)?;

    let mut any = false;
    for ((label, colour), runs) in series.into_iter().zip([p50, p99]) {
        if runs.is_empty() {
            continue;
        }
        any = true;
        for run in &runs {
            chart
                .draw_series(LineSeries::new(run.iter().copied(), colour.stroke_width(2)))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(PointSeries::of_element(
                runs.into_iter().flatten(),
                2,
                colour.filled(),
                &|c, s, st| Circle::new(c, s, st),
            ))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
    }
    if any {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font((FONT, 13))
            .draw()
            .map_err(plot_err)?;
    } else {
        no_data(area, "no completed requests")?;
    }
    Ok(())
}

/// The faint bottom panel: requests arrived per bucket, as bars.
fn arrivals_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    timeline: &[BucketRow],
    x: Range<f64>,
    width: f64,
) -> Result<(), SimError> {
    let top = timeline.iter().map(|b| b.arrived).max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(area)
        .margin(8)
        .margin_right(24)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(x, 0.0..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("hours from start")
        .y_desc("arrivals / bucket")
        .x_label_formatter(&|h| num_label(*h))
        .y_label_formatter(&|v| num_label(*v))
        .y_labels(4)
        .light_line_style(BLACK.mix(0.05))
        .bold_line_style(BLACK.mix(0.15))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(
            timeline
                .iter()
                .filter(|b| b.start_h.is_finite() && b.arrived > 0)
                .map(|b| {
                    Rectangle::new(
                        [(b.start_h, 0.0), (b.start_h + width, b.arrived as f64)],
                        ARRIVALS.mix(0.3).filled(),
                    )
                }),
        )
        .map_err(plot_err)?;
    Ok(())
}

/// Utilisation (clamped to 0..1) as green, through yellow, to red.
fn heat(u: f64) -> RGBColor {
    const GREEN: (f64, f64, f64) = (40.0, 170.0, 60.0);
    const YELLOW: (f64, f64, f64) = (240.0, 200.0, 30.0);
    const RED: (f64, f64, f64) = (210.0, 30.0, 30.0);
    let u = if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (a, b, t) = if u < 0.5 {
        (GREEN, YELLOW, u * 2.0)
    } else {
        (YELLOW, RED, (u - 0.5) * 2.0)
    };
    let mix = |p: f64, q: f64| (p + (q - p) * t).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Degrees of longitude as a tick label.
fn lon_label(v: f64) -> String {
    match v {
        v if v > 0.0 => format!("{v:.0}°E"),
        v if v < 0.0 => format!("{:.0}°W", -v),
        _ => "0°".to_string(),
    }
}

/// Degrees of latitude as a tick label.
fn lat_label(v: f64) -> String {
    match v {
        v if v > 0.0 => format!("{v:.0}°N"),
        v if v < 0.0 => format!("{:.0}°S", -v),
        _ => "0°".to_string(),
    }
}

/// The map of [`utilisation_map_svg`] for a non-empty list of PoPs, with its legend on
/// the right.
fn draw_map(area: &DrawingArea<SVGBackend<'_>, Shift>, report: &Report) -> Result<(), SimError> {
    let w = area.dim_in_pixel().0;
    let (map_area, legend_area) = area.split_horizontally(w.saturating_sub(170));

    let mut chart = ChartBuilder::on(&map_area)
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(48)
        .build_cartesian_2d(LON, LAT)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_labels(13)
        .y_labels(10)
        .x_label_formatter(&|v| lon_label(*v))
        .y_label_formatter(&|v| lat_label(*v))
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12))
        .label_style((FONT, 12))
        .draw()
        .map_err(plot_err)?;

    let max_gpus = report.pops.iter().map(|p| p.gpus).max().unwrap_or(0).max(1) as f64;
    // Largest first, so that small PoPs stay visible on top of large neighbours.
    let mut pops: Vec<&PopRow> = report
        .pops
        .iter()
        .filter(|p| p.lat.is_finite() && p.lon.is_finite())
        .collect();
    pops.sort_by(|a, b| b.gpus.cmp(&a.gpus).then_with(|| a.pop.cmp(&b.pop)));

    // 3 px for a PoP without GPUs, 18 px for the largest.
    let radius = |p: &PopRow| (3.0 + 15.0 * (p.gpus as f64 / max_gpus).sqrt()).round() as i32;
    let name_style = (FONT, 10).into_font().color(&BLACK.mix(0.7));
    chart
        .draw_series(pops.iter().map(|p| {
            let colour = if p.replicas == 0 {
                IDLE_GREY
            } else {
                heat(p.load)
            };
            let at = (
                p.lon.clamp(LON.start, LON.end),
                p.lat.clamp(LAT.start, LAT.end),
            );
            Circle::new(at, radius(p), colour.mix(0.8).filled())
        }))
        .map_err(plot_err)?;
    // Names after every circle, so that no circle hides one; only PoPs with replicas
    // are named (hundreds of names would cover the map).
    chart
        .draw_series(pops.iter().filter(|p| p.replicas > 0).map(|p| {
            let at = (
                p.lon.clamp(LON.start, LON.end),
                p.lat.clamp(LAT.start, LAT.end),
            );
            EmptyElement::at(at) + Text::new(p.pop.clone(), (radius(p) + 2, -5), name_style.clone())
        }))
        .map_err(plot_err)?;

    draw_map_legend(&legend_area)
}

/// The map's legend: a utilisation colour bar, the grey of PoPs without replicas and a
/// note on the radius. Only rectangles and text, so the map holds one circle per PoP.
fn draw_map_legend(area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), SimError> {
    let text = (FONT, 13).into_font().color(&BLACK);
    let small = (FONT, 11).into_font().color(&BLACK.mix(0.75));
    let (x0, y0, bar_w, bar_h) = (10, 40, 22, 160);

    area.draw_text("load", &text, (x0, y0 - 24))
        .map_err(plot_err)?;
    let steps = 20;
    for i in 0..steps {
        // Top is 100%.
        let u = 1.0 - (f64::from(i) + 0.5) / f64::from(steps);
        let top = y0 + bar_h * i / steps;
        let bottom = y0 + bar_h * (i + 1) / steps;
        area.draw(&Rectangle::new(
            [(x0, top), (x0 + bar_w, bottom)],
            heat(u).filled(),
        ))
        .map_err(plot_err)?;
    }
    area.draw(&Rectangle::new(
        [(x0, y0), (x0 + bar_w, y0 + bar_h)],
        BLACK.mix(0.4),
    ))
    .map_err(plot_err)?;
    let tick = text.pos(Pos::new(HPos::Left, VPos::Center));
    for (label, frac) in [("100%", 0), ("50%", 1), ("0%", 2)] {
        area.draw_text(label, &tick, (x0 + bar_w + 6, y0 + bar_h * frac / 2))
            .map_err(plot_err)?;
    }

    let grey_y = y0 + bar_h + 24;
    area.draw(&Rectangle::new(
        [(x0, grey_y), (x0 + bar_w, grey_y + 14)],
        IDLE_GREY.mix(0.8).filled(),
    ))
    .map_err(plot_err)?;
    area.draw_text("no replicas", &tick, (x0 + bar_w + 6, grey_y + 7))
        .map_err(plot_err)?;

    for (i, line) in ["circle area grows", "with the PoP's GPUs"]
        .into_iter()
        .enumerate()
    {
        area.draw_text(line, &small, (x0, grey_y + 36 + 15 * i as i32))
            .map_err(plot_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{PlacementReport, SloReport, Totals};
    use crate::stats::Percentiles;

    fn pct(p50: f64, p99: f64, count: u64) -> Percentiles {
        Percentiles {
            count,
            mean: p50,
            p50,
            p90: (p50 + p99) / 2.0,
            p99,
            max: p99,
        }
    }

    fn pop(name: &str, lat: f64, lon: f64, gpus: u64, replicas: u64, util: f64) -> PopRow {
        PopRow {
            pop: name.to_string(),
            jurisdiction: "eu".to_string(),
            lat,
            lon,
            gpus,
            replicas,
            requests: 10,
            ttft_ms: pct(100.0, 400.0, 10),
            tpot_ms: pct(20.0, 40.0, 10),
            slo_attainment: 0.99,
            utilisation: util,
            load: util,
        }
    }

    fn bucket(start_h: f64, arrived: u64, completed: u64) -> BucketRow {
        let k = 1.0 + start_h / 10.0;
        BucketRow {
            start_h,
            arrived,
            completed,
            shed: 0,
            unservable: 0,
            ttft_ms: pct(120.0 * k, 900.0 * k, completed),
            tpot_ms: pct(18.0 * k, 35.0 * k, completed),
            utilisation: 0.5,
            replicas: 4,
        }
    }

    fn report(timeline: Vec<BucketRow>, pops: Vec<PopRow>) -> Report {
        Report {
            scenario: "smoke <day> & night".to_string(),
            seed: 7,
            duration_h: 4.0,
            totals: Totals::default(),
            ttft_ms: Percentiles::default(),
            tpot_ms: Percentiles::default(),
            e2e_ms: Percentiles::default(),
            slo: SloReport {
                ttft_ms: 1000.0,
                tpot_ms: 50.0,
                attainment: 1.0,
                p99_met: true,
            },
            utilisation: 0.5,
            load: 0.5,
            fleet_gpus: 64,
            peak_placed_gpus: 32,
            placement: PlacementReport::default(),
            placement_error: None,
            jurisdiction_violations: 0,
            events: 0,
            pops,
            regions: Vec::new(),
            timeline,
            requests: Vec::new(),
        }
    }

    fn is_svg(s: &str) -> bool {
        let s = s.trim_start();
        (s.starts_with("<svg") || s.starts_with("<?xml")) && s.trim_end().ends_with("</svg>")
    }

    #[test]
    fn charts_draw_the_report() -> Result<(), SimError> {
        let timeline = vec![
            bucket(0.0, 50, 48),
            bucket(1.0, 80, 80),
            bucket(2.0, 0, 0), // no request: a gap, not a 0
            bucket(3.0, 120, 110),
        ];
        let pops = vec![
            pop("fra1", 50.1, 8.7, 64, 4, 0.9),
            pop("iad1", 38.9, -77.0, 16, 2, 0.3),
            pop("nrt1", 35.7, 139.7, 8, 0, 0.0),
        ];
        let r = report(timeline, pops);

        let lat = latency_svg(&r)?;
        assert!(is_svg(&lat), "{lat}");
        // The title is escaped like any SVG text.
        assert!(lat.contains("Latency over the day: smoke &lt;day&gt; &amp; night"));
        for label in ["TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99"] {
            assert!(lat.contains(label), "legend {label}");
        }
        // 3 non-empty buckets x 4 series, plus nothing for the empty bucket.
        assert_eq!(lat.matches("<circle").count(), 12);
        assert_eq!(latency_svg(&r)?, lat, "deterministic");

        let map = utilisation_map_svg(&r)?;
        assert!(is_svg(&map), "{map}");
        assert!(map.contains("PoP load: smoke"));
        assert_eq!(map.matches("<circle").count(), r.pops.len());
        // PoPs with replicas are named, the others only drawn.
        assert!(map.contains("fra1") && !map.contains("nrt1"));
        assert_eq!(utilisation_map_svg(&r)?, map, "deterministic");
        Ok(())
    }

    #[test]
    fn empty_reports_give_a_no_data_chart() -> Result<(), SimError> {
        let r = report(Vec::new(), Vec::new());
        for svg in [latency_svg(&r)?, utilisation_map_svg(&r)?] {
            assert!(is_svg(&svg), "{svg}");
            assert!(svg.contains("no data"));
            assert_eq!(svg.matches("<circle").count(), 0);
        }
        // Buckets without a completed request: axes and a note, no points.
        let r = report(vec![bucket(0.0, 5, 0), bucket(1.0, 0, 0)], Vec::new());
        let svg = latency_svg(&r)?;
        assert!(is_svg(&svg));
        assert!(svg.contains("no completed requests"));
        assert_eq!(svg.matches("<circle").count(), 0);
        Ok(())
    }
}
