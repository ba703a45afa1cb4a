//! Latency by percentile as a standalone SVG: x is "nines" on a log scale
//! (0%, 90%, 99%, 99.9%, ...), y is latency. Written by hand; the plot is
//! one polyline and a few labels, no plotting crate needed.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 450.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// One point of the curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Quantile, 0..=1.
    pub quantile: f64,
    /// Latency, nanoseconds.
    pub ns: f64,
}

/// The curve's points from a histogram (nanoseconds), ending at the maximum.
pub fn points(hist: &Histogram<u64>) -> Vec<Point> {
    hist.iter_quantiles(5)
        .map(|v| Point {
            quantile: v.quantile_iterated_to(),
            ns: v.value_iterated_to() as f64,
        })
        .collect()
}

/// `1/(1-q)` in decades: 0 for 0%, 1 for 90%, 2 for 99%...
pub fn nines(quantile: f64) -> f64 {
    let q = quantile.clamp(0.0, 1.0 - 1e-12);
    -(1.0 - q).log10()
}

/// The label of an integer number of nines: 0 -> "0%", 3 -> "99.9%".
pub fn nines_label(n: u32) -> String {
    match n {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        n => format!("99.{}%", "9".repeat(n as usize - 2)),
    }
}

/// A "nice" axis maximum and step (1, 2 or 5 times a power of ten) giving
/// about `ticks` divisions up to at least `max`.
pub fn nice_axis(max: f64, ticks: u32) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.2);
    }
    let raw = max / f64::from(ticks.max(1));
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

/// Renders the plot. `count` is how many samples the histogram holds: the
/// x axis stops at the nines the sample count can support.
pub fn latency_plot(points: &[Point], count: u64, title: &str) -> String {
    let max_ns = points.iter().map(|p| p.ns).fold(0.0, f64::max);
    let (unit, per_unit) = if max_ns >= 1e7 {
        ("ms", 1e6)
    } else {
        ("µs", 1e3)
    };
    let (y_max, y_step) = nice_axis(max_ns / per_unit, 5);
    // 1,000 samples support 99.9% (3 nines); at least one decade is drawn.
    let x_max = (count.max(10) as f64).log10().ceil().clamp(1.0, 7.0);

    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |q: f64| LEFT + nines(q).min(x_max) / x_max * plot_w;
    let y_of = |ns: f64| TOP + plot_h - (ns / per_unit / y_max).min(1.0) * plot_h;

    let mut svg = String::new();
    // `write!` into a String cannot fail.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="25" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Grid and y labels.
    let mut y = 0.0;
    while y <= y_max + y_step / 2.0 {
        let py = y_of(y * per_unit);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            py + 4.0,
            trim_number(y)
        );
        y += y_step;
    }
    // Grid and x labels at whole nines.
    for n in 0..=x_max as u32 {
        let px = LEFT + f64::from(n) / x_max * plot_w;
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            nines_label(n)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">latency ({unit})</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );

    // The curve: straight segments between the percentile ticks.
    let mut path = String::new();
    for p in points {
        let _ = write!(path, "{:.1},{:.1} ", x_of(p.quantile), y_of(p.ns));
    }
    if let Some(last) = points.last() {
        // The maximum is reached at the last sample: draw it to the right edge.
        let _ = write!(path, "{:.1},{:.1}", LEFT + plot_w, y_of(last.ns));
    }
    let _ = writeln!(
        svg,
        r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
        path.trim_end()
    );
    let _ = writeln!(svg, "</svg>");
    svg
}

/// 0.5 -> "0.5", 2.0 -> "2".
fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn nines_map_to_decades() {
        assert!((nines(0.0) - 0.0).abs() < 1e-9);
        assert!((nines(0.9) - 1.0).abs() < 1e-9);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert!((nines(0.999) - 3.0).abs() < 1e-6);
        assert!(nines(1.0).is_finite());
    }

    #[test]
    fn labels() {
        assert_eq!(nines_label(0), "0%");
        assert_eq!(nines_label(2), "99%");
        assert_eq!(nines_label(4), "99.99%");
    }

    #[test]
    fn nice_axis_rounds_up() {
        assert_eq!(nice_axis(9.3, 5), (10.0, 2.0));
        assert_eq!(nice_axis(430.0, 5), (500.0, 100.0));
        let (max, step) = nice_axis(0.037, 5);
        assert!(max >= 0.037 && step > 0.0);
        assert_eq!(nice_axis(0.0, 5), (1.0, 0.2));
    }

    #[test]
    fn plot_is_svg_with_curve_and_labels() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 100).unwrap();
        }
        let svg = latency_plot(&points(&h), h.len(), "rr <64 B> & co");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("rr &lt;64 B&gt; &amp; co"));
        assert!(svg.contains(">99.99%<"));
        assert!(!svg.contains(">99.999%<"), "10k samples support 4 nines");
        assert!(svg.contains("latency (µs)"));
        assert!(svg.contains("<polyline points=\""));
        // Every coordinate lies inside the canvas.
        let line = svg.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let coords = line.split('"').nth(1).unwrap();
        for pair in coords.split(' ') {
            let (x, y) = pair.split_once(',').unwrap();
            let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
            assert!(
                (0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y),
                "{pair}"
            );
        }
    }

    #[test]
    fn large_latencies_switch_to_ms() {
        let mut h = new_histogram();
        h.record(50_000_000).unwrap();
        let svg = latency_plot(&points(&h), h.len(), "t");
        assert!(svg.contains("latency (ms)"));
    }
}
