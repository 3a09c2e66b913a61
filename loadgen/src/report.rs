//! What a run measured and how it is written out: the per-worker [`Tally`], the final
//! [`Report`], its [`Summary`] (stdout and JSON) and the `.hgrm` percentile distribution.
//!
//! Definitions, for open and closed loop alike:
//! - a request is *measured* when its intended send time (closed loop: its send time) lies in
//!   the measured period; measured successes go into the latency histogram, measured failures
//!   are errors;
//! - latency runs from the intended send time to the end of the response body;
//! - throughput is the 2xx responses that *arrived* in the measured period, over its length,
//!   so a backlog still being served after the period does not inflate it.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::limits;

/// A latency histogram in microseconds with the run's bounds and precision.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, limits::latency_us_max, limits::latency_significant_digits)
        .expect("the latency bounds in `limits` are valid")
}

/// Counts kept by one worker, summed per lane and then for the run.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latencies of the measured requests that succeeded, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Measured requests that failed: a non-2xx status, a broken connection, a timeout.
    pub errors: u64,
    /// Measured open-loop requests whose connection was still busy at their intended time.
    pub waited: u64,
    /// 2xx responses that arrived in the measured period.
    pub successes_in_period: u64,
    /// Every finished request, warmup included: the live rate.
    pub finished: u64,
    /// The first failure seen, for the summary.
    pub error_sample: Option<String>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            latency_us: latency_histogram(),
            errors: 0,
            waited: 0,
            successes_in_period: 0,
            finished: 0,
            error_sample: None,
        }
    }
}

impl Tally {
    /// Adds `other` to this tally.
    pub fn merge(&mut self, other: &Tally) {
        self.latency_us.add(&other.latency_us).expect("tallies share the bounds of `latency_histogram`");
        self.errors += other.errors;
        self.waited += other.waited;
        self.successes_in_period += other.successes_in_period;
        self.finished += other.finished;
        if self.error_sample.is_none() {
            self.error_sample.clone_from(&other.error_sample);
        }
    }

    /// Moves this tally's counts into `total`, leaving it empty.
    pub fn move_into(&mut self, total: &mut Tally) {
        total.merge(self);
        self.latency_us.reset();
        self.errors = 0;
        self.waited = 0;
        self.successes_in_period = 0;
        self.finished = 0;
        self.error_sample = None;
    }

    /// Records a measured failure.
    pub fn record_error(&mut self, failure: impl fmt::Display) {
        self.errors += 1;
        if self.error_sample.is_none() {
            self.error_sample = Some(failure.to_string());
        }
    }
}

/// The outcome of a whole run.
#[derive(Debug, Clone)]
pub struct Report {
    pub tally: Tally,
    /// Measured open-loop requests never sent: the drain ended first. Counted as errors.
    pub abandoned: u64,
    /// The length of the measured period.
    pub measured: Duration,
}

impl Report {
    pub fn summary(&self) -> Summary {
        let latency = &self.tally.latency_us;
        let seconds = self.measured.as_secs_f64();
        let throughput_rps = if seconds > 0.0 { self.tally.successes_in_period as f64 / seconds } else { 0.0 };
        Summary {
            throughput_rps,
            p50_us: latency.value_at_quantile(0.5),
            p90_us: latency.value_at_quantile(0.9),
            p99_us: latency.value_at_quantile(0.99),
            p999_us: latency.value_at_quantile(0.999),
            max_us: latency.max(),
            completed: latency.len(),
            errors: self.tally.errors + self.abandoned,
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let summary = self.summary();
        let seconds = self.measured.as_secs_f64();
        writeln!(
            f,
            "throughput  {:.1} requests/s (2xx responses in the {seconds} s measured)",
            summary.throughput_rps
        )?;
        writeln!(
            f,
            "latency us  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            summary.p50_us, summary.p90_us, summary.p99_us, summary.p999_us, summary.max_us
        )?;
        writeln!(f, "completed   {}", summary.completed)?;
        write!(f, "errors      {}", summary.errors)?;
        if self.abandoned > 0 {
            write!(f, " ({} never sent: the drain ended first)", self.abandoned)?;
        }
        writeln!(f)?;
        if self.tally.waited > 0 {
            writeln!(
                f,
                "waited      {} (measured requests whose connection was busy at their intended time)",
                self.tally.waited
            )?;
        }
        if let Some(sample) = &self.tally.error_sample {
            writeln!(f, "first error {sample}")?;
        }
        Ok(())
    }
}

/// The figures of a run, as printed and as written by `--json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub throughput_rps: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Measured requests that succeeded.
    pub completed: u64,
    /// Measured requests that failed or were never sent.
    pub errors: u64,
}

impl Summary {
    /// One JSON object with exactly the summary's fields.
    pub fn to_json(&self) -> String {
        // Every field is a number, and a finite one: no escaping, no serde.
        let throughput_rps = if self.throughput_rps.is_finite() { self.throughput_rps } else { 0.0 };
        format!(
            "{{\"throughput_rps\": {throughput_rps:.3}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \
             \"p999_us\": {}, \"max_us\": {}, \"completed\": {}, \"errors\": {}}}\n",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us, self.completed, self.errors
        )
    }
}

/// Percentile steps per halving of the distance to 100 %, as HdrHistogram's tools print.
const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Writes `histogram` (microseconds) as HdrHistogram's percentile distribution text, the
/// `.hgrm` format of `outputPercentileDistribution` with a value scale of 1.
pub fn write_hgrm(histogram: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    let digits = usize::from(histogram.sigfig());
    writeln!(out, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    if !histogram.is_empty() {
        let mut total_count = 0_u64;
        for step in histogram.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
            total_count += step.count_since_last_iteration();
            let value = step.value_iterated_to() as f64;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                let inverse = 1.0 / (1.0 - quantile);
                writeln!(out, "{value:12.digits$} {quantile:2.12} {total_count:10} {inverse:14.2}")?;
            } else {
                writeln!(out, "{value:12.digits$} {quantile:2.12} {total_count:10}")?;
            }
        }
    }
    let (mean, deviation) = if histogram.is_empty() { (0.0, 0.0) } else { (histogram.mean(), histogram.stdev()) };
    writeln!(out, "#[Mean    = {mean:12.digits$}, StdDeviation   = {deviation:12.digits$}]")?;
    let max = histogram.max() as f64;
    writeln!(out, "#[Max     = {max:12.digits$}, Total count    = {:12}]", histogram.len())?;
    let buckets = usize::from(histogram.buckets());
    let sub_buckets = 2 * histogram.distinct_values() / (buckets + 1);
    writeln!(out, "#[Buckets = {buckets:12}, SubBuckets     = {sub_buckets:12}]")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Known histograms (1 to 1000 us) summarised and written out, then read back as text.

    use super::*;

    fn report(values: impl IntoIterator<Item = u64>) -> Report {
        let mut tally = Tally::default();
        for value in values {
            tally.latency_us.record(value).unwrap();
        }
        tally.successes_in_period = tally.latency_us.len();
        Report { tally, abandoned: 0, measured: Duration::from_secs(2) }
    }

    #[test]
    fn the_summary_reads_the_histogram_and_the_period() {
        let mut report = report(1..=1000);
        report.tally.errors = 3;
        report.abandoned = 2;
        let summary = report.summary();
        assert_eq!(summary.throughput_rps, 500.0);
        assert_eq!((summary.p50_us, summary.p90_us, summary.p99_us), (500, 900, 990));
        assert_eq!((summary.p999_us, summary.max_us), (999, 1000));
        assert_eq!((summary.completed, summary.errors), (1000, 5));

        let text = report.to_string();
        for expected in ["throughput  500.0", "p50 500", "p99 990", "completed   1000", "errors      5 (2 never sent"] {
            assert!(text.contains(expected), "{expected:?} in {text}");
        }
    }

    #[test]
    fn json_has_exactly_the_summary_fields() {
        let json = report(1..=1000).summary().to_json();
        assert!(json.starts_with('{') && json.trim_end().ends_with('}'), "{json}");
        let body = json.trim().trim_start_matches('{').trim_end_matches('}');
        let fields: Vec<(&str, &str)> =
            body.split(',').map(|field| field.split_once(':').unwrap()).map(|(k, v)| (k.trim(), v.trim())).collect();
        let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        let expected = ["throughput_rps", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "completed", "errors"];
        assert_eq!(names, expected.map(|name| format!("\"{name}\"")));
        assert_eq!(fields[0].1, "500.000");
        assert_eq!(fields[1].1, "500");
        for (name, value) in fields {
            assert!(value.parse::<f64>().is_ok(), "{name} = {value}");
        }

        let empty = Report { tally: Tally::default(), abandoned: 0, measured: Duration::ZERO }.summary().to_json();
        assert!(empty.contains("\"throughput_rps\": 0.000,") && empty.contains("\"max_us\": 0,"), "{empty}");
    }

    #[test]
    fn hgrm_has_the_standard_columns_and_footer() {
        let mut text = Vec::new();
        write_hgrm(&report(1..=1000).tally.latency_us, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "       Value     Percentile TotalCount 1/(1-Percentile)");
        assert_eq!(lines[1], "");
        assert_eq!(lines[2], "       1.000 0.000000000000          1           1.00");
        assert!(lines.contains(&"     500.000 0.500000000000        500           2.00"), "{text}");
        assert!(lines.contains(&"     751.000 0.750000000000        751           4.00"), "{text}");

        let footer = &lines[lines.len() - 3..];
        assert_eq!(footer[0], "#[Mean    =      500.500, StdDeviation   =      288.675]");
        assert_eq!(footer[1], "#[Max     =     1000.000, Total count    =         1000]");
        assert!(footer[2].starts_with("#[Buckets = ") && footer[2].ends_with("SubBuckets     =         2048]"));
        let last = lines[lines.len() - 4];
        assert_eq!(last, "    1000.000 1.000000000000       1000");

        // Percentiles and counts only grow, down the table.
        let rows: Vec<(f64, f64, u64)> = lines[2..lines.len() - 3]
            .iter()
            .map(|line| {
                let columns: Vec<&str> = line.split_whitespace().collect();
                (columns[0].parse().unwrap(), columns[1].parse().unwrap(), columns[2].parse().unwrap())
            })
            .collect();
        assert!(rows.windows(2).all(|pair| pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1 && pair[0].2 <= pair[1].2));
    }

    #[test]
    fn an_empty_hgrm_still_has_its_header_and_footer() {
        let mut text = Vec::new();
        write_hgrm(&latency_histogram(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.contains("Total count    =            0]"), "{text}");
    }

    #[test]
    fn tallies_merge_and_move() {
        let mut worker = Tally::default();
        worker.latency_us.record(100).unwrap();
        worker.record_error("first");
        worker.record_error("second");
        worker.waited = 1;
        worker.finished = 3;
        let mut total = Tally::default();
        total.latency_us.record(200).unwrap();
        worker.move_into(&mut total);
        assert_eq!((total.latency_us.len(), total.errors, total.waited, total.finished), (2, 2, 1, 3));
        assert_eq!(total.error_sample.as_deref(), Some("first"));
        assert_eq!((worker.latency_us.len(), worker.errors, worker.finished), (0, 0, 0));
        assert!(worker.error_sample.is_none());
    }
}
