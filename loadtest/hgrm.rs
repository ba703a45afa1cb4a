//! The HdrHistogram percentile distribution text format (`.hgrm`), as
//! HdrHistogram's `outputPercentileDistribution` writes it, so the file
//! loads in the usual plotters (which assume milliseconds).

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Nanoseconds per output unit: values are written in milliseconds.
pub const NS_PER_MS: f64 = 1e6;
/// Percentile ticks per half distance, HdrHistogram's customary 5.
const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Writes the percentile distribution of `hist` (values in nanoseconds)
/// in milliseconds.
pub fn percentile_distribution(hist: &Histogram<u64>) -> String {
    let scale = NS_PER_MS;
    let digits = usize::from(hist.sigfig());
    let mut out = String::new();
    // `write!` into a String cannot fail.
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !hist.is_empty() {
        let mut total = 0u64;
        for v in hist.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.digits$} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.digits$} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.digits$}, StdDeviation   = {:12.digits$}]",
        hist.mean() / scale,
        hist.stdev() / scale
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.digits$}, Total count    = {:12}]",
        hist.max() as f64 / scale,
        hist.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        hist.buckets(),
        sub_bucket_count(hist.sigfig())
    );
    out
}

/// HdrHistogram's sub-bucket count for `sigfig` significant digits: the
/// power of two covering 2 * 10^sigfig.
fn sub_bucket_count(sigfig: u8) -> u64 {
    let largest_single_unit = 2 * 10u64.pow(u32::from(sigfig));
    largest_single_unit.next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn format_matches_hdrhistogram_layout() {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let text = percentile_distribution(&h);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines.next().unwrap(), "");
        let first = lines.next().unwrap();
        // 1 µs = 0.001 ms, first percentile 0.
        assert!(
            first.starts_with("       0.001 0.000000000000          1"),
            "{first}"
        );
        let rows: Vec<&str> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        let last = rows.last().unwrap();
        // The 100th percentile row has no 1/(1-p) column.
        assert_eq!(last.split_whitespace().count(), 3, "{last}");
        assert!(last.contains("1.000000000000"), "{last}");
        assert!(last.trim_end().ends_with("1000"), "{last}");
        assert!(text.contains("#[Max     =        1.000, Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
        // Totals never decrease down the table.
        let totals: Vec<u64> = rows
            .iter()
            .map(|r| r.split_whitespace().nth(2).unwrap().parse().unwrap())
            .collect();
        assert!(totals.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn empty_histogram_still_has_footer() {
        let text = percentile_distribution(&new_histogram());
        assert!(text.contains("Total count    =            0"));
    }

    #[test]
    fn sub_buckets_for_three_digits() {
        assert_eq!(sub_bucket_count(3), 2048);
        assert_eq!(sub_bucket_count(2), 256);
    }
}
