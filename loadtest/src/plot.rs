//! A latency percentile-spectrum chart as a small hand-written SVG: one line per system,
//! latency (ms, linear) against percentile on the log-scaled `1/(1-p)` axis that HdrHistogram's
//! plots use (0 %, 90 %, 99 %, 99.9 %, ... evenly spaced).
//!
//! Each line samples its histogram at 20 points per decade of `1/(1-p)` and stops at the
//! highest percentile its sample count resolves (`p ≤ 1 - 1/n`).
//!
//! What it does NOT do: PNG output, log-scaled latency axes, or interactive features.

use std::fmt::Write;

use hdrhistogram::Histogram;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// Decades of `1/(1-p)` on the x axis: up to 99.999 %.
const DECADES: u32 = 5;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// `(x = log10(1/(1-p)), latency µs)` points of one histogram.
fn spectrum(histogram: &Histogram<u64>) -> Vec<(f64, u64)> {
    let n = histogram.len();
    if n == 0 {
        return Vec::new();
    }
    let max_x = (n as f64).log10().min(f64::from(DECADES));
    let mut points = Vec::new();
    for step in 0..=(20 * DECADES) {
        let x = f64::from(step) / 20.0;
        if x > max_x + 1e-9 {
            break;
        }
        let p = 1.0 - 10f64.powf(-x);
        points.push((x, histogram.value_at_quantile(p)));
    }
    points
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SVG document for `series` (name, latency histogram in µs), titled `title`.
pub fn percentile_svg(title: &str, series: &[(String, &Histogram<u64>)]) -> String {
    let lines: Vec<(&str, Vec<(f64, u64)>)> = series
        .iter()
        .map(|(name, h)| (name.as_str(), spectrum(h)))
        .collect();
    let max_us = lines
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|(_, v)| *v))
        .max()
        .unwrap_or(1)
        .max(1);
    let y_max_ms = nice_ceiling(max_us as f64 / 1000.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / f64::from(DECADES) * plot_w;
    let sy = |ms: f64| TOP + plot_h - ms / y_max_ms * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and axes.
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"];
    for (decade, label) in labels.iter().enumerate().take(DECADES as usize + 1) {
        let x = sx(decade as f64);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    for tick in 0..=5 {
        let ms = y_max_ms * f64::from(tick) / 5.0;
        let y = sy(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            format_ms(ms)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1-p))</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // One polyline and legend entry per series.
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        if points.len() > 1 {
            let pts: Vec<String> = points
                .iter()
                .map(|(x, us)| format!("{:.1},{:.1}", sx(*x), sy(*us as f64 / 1000.0)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
        }
        let y = TOP + 10.0 + 20.0 * i as f64;
        let x = WIDTH - RIGHT + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            x + 20.0,
            x + 26.0,
            y + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The smallest 1/2/5 × 10^k at or above `v` (and above 0).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * magnitude {
            return m * magnitude;
        }
    }
    10.0 * magnitude
}

fn format_ms(ms: f64) -> String {
    if ms >= 10.0 || ms == 0.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_latency_histogram;

    #[test]
    fn spectrum_stops_where_the_samples_do() {
        let mut h = new_latency_histogram().expect("histogram");
        for v in 1..=1000u64 {
            h.record(v * 10).expect("record");
        }
        let points = spectrum(&h);
        // 1000 samples resolve up to 99.9 %: x = 3, 20 points per decade.
        assert_eq!(points.len(), 61);
        assert_eq!(points[0], (0.0, h.value_at_quantile(0.0)));
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1), "monotonic");
        assert!(spectrum(&new_latency_histogram().expect("h")).is_empty());
    }

    #[test]
    fn the_svg_has_one_line_per_series_and_escapes_names() {
        let mut a = new_latency_histogram().expect("histogram");
        let mut b = new_latency_histogram().expect("histogram");
        for v in 1..=500u64 {
            a.record(v).expect("record");
            b.record(v * 3).expect("record");
        }
        let svg = percentile_svg("t <1>", &[("a&b".into(), &a), ("c".into(), &b)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&amp;b") && svg.contains("t &lt;1&gt;"));
        assert!(svg.contains("99.9%"));
    }

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(42.0), 50.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
