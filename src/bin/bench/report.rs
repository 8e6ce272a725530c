//! The one table the benchmark prints, and the same figures as JSON.

use std::fmt::Write as _;

/// One measured figure.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figure {
    /// What was measured against ("store, 1000000 live", "gRPC 16x32", ...).
    pub(crate) scope: String,
    /// The operation.
    pub(crate) what: String,
    /// Threads (store) or requests in flight (network).
    pub(crate) parallelism: usize,
    /// Operations per second, all threads together.
    pub(crate) ops_per_sec: f64,
    /// Latency percentiles in microseconds, where measured per call.
    pub(crate) p50_us: Option<f64>,
    /// See `p50_us`.
    pub(crate) p99_us: Option<f64>,
}

impl Figure {
    /// Wall nanoseconds per operation, all threads together.
    pub(crate) fn ns_per_op(&self) -> f64 {
        1e9 / self.ops_per_sec
    }
}

/// A target of the issue checked against figures of the same run.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// The target, in words.
    pub(crate) target: String,
    /// What was measured, in words.
    pub(crate) measured: String,
    /// Whether the target holds in this run.
    pub(crate) met: bool,
}

/// Everything one run measured.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Throughput and latency figures.
    pub(crate) figures: Vec<Figure>,
    /// (live credentials, resident bytes per credential beyond its id strings).
    pub(crate) memory: Vec<(usize, f64)>,
    /// Targets checked in this run.
    pub(crate) checks: Vec<Check>,
    /// Facts about the machine and the run.
    pub(crate) machine: String,
}

impl Report {
    /// The figure for `what` in `scope` with `parallelism`, if measured.
    pub(crate) fn find(&self, scope: &str, what: &str, parallelism: usize) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.scope == scope && f.what == what && f.parallelism == parallelism)
    }

    /// Records a target check.
    pub(crate) fn check(&mut self, target: impl Into<String>, measured: String, met: bool) {
        self.checks.push(Check {
            target: target.into(),
            measured,
            met,
        });
    }

    /// The whole report as Markdown tables.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Machine: {}\n", self.machine);
        out.push_str("| scope | what | threads / in flight | ops/s | ns/op | p50 µs | p99 µs |\n");
        out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
        let micros = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.0} | {} | {} |",
                f.scope,
                f.what,
                f.parallelism,
                human(f.ops_per_sec),
                f.ns_per_op(),
                micros(f.p50_us),
                micros(f.p99_us),
            );
        }
        if !self.memory.is_empty() {
            out.push_str(
                "\n| live credentials | resident bytes per credential beyond its id strings |\n",
            );
            out.push_str("|---:|---:|\n");
            for (size, bytes) in &self.memory {
                let _ = writeln!(out, "| {size} | {bytes:.0} |");
            }
        }
        if !self.checks.is_empty() {
            out.push_str("\n| target | measured in this run | met |\n|---|---|---|\n");
            for c in &self.checks {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} |",
                    c.target,
                    c.measured,
                    if c.met { "yes" } else { "**no**" }
                );
            }
        }
        out
    }

    /// The whole report as JSON.
    pub(crate) fn json(&self) -> String {
        let text = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let opt = |v: Option<f64>| v.map_or_else(|| "null".to_owned(), |v| format!("{v:.2}"));
        let mut json = format!("{{\"machine\":\"{}\",\"figures\":[", text(&self.machine));
        for (i, f) in self.figures.iter().enumerate() {
            let _ = write!(
                json,
                "{}{{\"scope\":\"{}\",\"what\":\"{}\",\"parallelism\":{},\"ops_per_sec\":{:.1},\"ns_per_op\":{:.1},\"p50_us\":{},\"p99_us\":{}}}",
                if i == 0 { "" } else { "," },
                text(&f.scope),
                text(&f.what),
                f.parallelism,
                f.ops_per_sec,
                f.ns_per_op(),
                opt(f.p50_us),
                opt(f.p99_us),
            );
        }
        json.push_str("],\"memory\":[");
        for (i, (size, bytes)) in self.memory.iter().enumerate() {
            let _ = write!(
                json,
                "{}{{\"size\":{size},\"bytes_per_credential\":{bytes:.1}}}",
                if i == 0 { "" } else { "," }
            );
        }
        json.push_str("],\"checks\":[");
        for (i, c) in self.checks.iter().enumerate() {
            let _ = write!(
                json,
                "{}{{\"target\":\"{}\",\"measured\":\"{}\",\"met\":{}}}",
                if i == 0 { "" } else { "," },
                text(&c.target),
                text(&c.measured),
                c.met
            );
        }
        json.push_str("]}\n");
        json
    }
}

/// Operations per second with a unit prefix.
fn human(ops: f64) -> String {
    if ops >= 1e6 {
        format!("{:.2} M", ops / 1e6)
    } else if ops >= 1e3 {
        format!("{:.1} k", ops / 1e3)
    } else {
        format!("{ops:.1}")
    }
}

/// The `p`-th percentile (0..=100) of unsorted samples.
pub(crate) fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// The median of `rounds` measurements.
pub(crate) fn median(rounds: usize, mut measure: impl FnMut() -> f64) -> f64 {
    let mut samples: Vec<f64> = (0..rounds.max(1)).map(|_| measure()).collect();
    percentile(&mut samples, 50.0)
}
