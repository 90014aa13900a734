//! Medians, percentiles, and the result table.

use std::fmt::Write as _;

/// The median of `values` (mean of the two middle ones for an even count); 0 when empty.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The smallest and largest of `values`.
pub(crate) fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(x), hi.max(x))
        })
}

/// The `p`-th percentile (0..=100, nearest rank) of already sorted values.
pub(crate) fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How a figure is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// Requests or lines per second.
    PerSec,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Kibibytes.
    KiB,
    /// Mebibytes.
    MiB,
    /// Percent of one core.
    PctCore,
    /// A count.
    Count,
}

impl Unit {
    pub(crate) fn fmt(self, v: f64) -> String {
        if !v.is_finite() {
            return "n/a".to_owned();
        }
        match self {
            Unit::PerSec => format!("{} /s", group(v.round() as i64)),
            Unit::Ms => {
                if v < 10.0 {
                    format!("{v:.2} ms")
                } else {
                    format!("{v:.1} ms")
                }
            }
            Unit::Us => {
                if v < 10.0 {
                    format!("{v:.2} µs")
                } else {
                    format!("{v:.0} µs")
                }
            }
            Unit::KiB => format!("{v:.2} KiB"),
            Unit::MiB => format!("{v:.1} MiB"),
            Unit::PctCore => format!("{v:.2} %"),
            Unit::Count => group(v.round() as i64),
        }
    }
}

/// `1234567` → `1,234,567`.
fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// What a row must reach.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Target {
    /// Information only.
    None,
    /// The median of the per-run ratios is at least this.
    RatioAtLeast(f64),
    /// The median of the per-run ratios is at most this.
    RatioAtMost(f64),
    /// The median value is at most this.
    AtMost(f64),
    /// Every run's value equals this (a correctness check).
    Every(f64),
}

/// One line of the table: one measure of one scenario, with a value per run.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) measure: String,
    pub(crate) unit: Unit,
    pub(crate) values: Vec<f64>,
    /// The same-run baseline: its name and its value per run.
    pub(crate) baseline: Option<(String, Vec<f64>)>,
    pub(crate) target: Target,
}

impl Row {
    pub(crate) fn new(scenario: &'static str, measure: impl Into<String>, unit: Unit) -> Self {
        Self {
            scenario,
            measure: measure.into(),
            unit,
            values: Vec::new(),
            baseline: None,
            target: Target::None,
        }
    }

    pub(crate) fn baseline(mut self, name: impl Into<String>) -> Self {
        self.baseline = Some((name.into(), Vec::new()));
        self
    }

    pub(crate) fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Records one run's value (and its baseline's, when the row has one).
    pub(crate) fn push(&mut self, value: f64, baseline: Option<f64>) {
        self.values.push(value);
        if let (Some((_, b)), Some(v)) = (&mut self.baseline, baseline) {
            b.push(v);
        }
    }

    fn ratios(&self) -> Vec<f64> {
        match &self.baseline {
            Some((_, b)) => self
                .values
                .iter()
                .zip(b)
                .map(|(v, b)| if *b != 0.0 { v / b } else { f64::NAN })
                .collect(),
            None => Vec::new(),
        }
    }

    /// `Some(true)` met, `Some(false)` missed, `None` no target.
    pub(crate) fn met(&self) -> Option<bool> {
        if self.values.is_empty() {
            return match self.target {
                Target::None => None,
                _ => Some(false),
            };
        }
        let ratio = median(&self.ratios());
        match self.target {
            Target::None => None,
            Target::RatioAtLeast(x) => Some(ratio >= x),
            Target::RatioAtMost(x) => Some(ratio <= x),
            Target::AtMost(x) => Some(median(&self.values) <= x),
            Target::Every(x) => Some(self.values.iter().all(|v| (*v - x).abs() < 1e-9)),
        }
    }

    fn cells(&self) -> [String; 8] {
        let (lo, hi) = min_max(&self.values);
        let median_cell = if self.values.is_empty() {
            "(no run)".to_owned()
        } else {
            self.unit.fmt(median(&self.values))
        };
        let range = if self.values.is_empty() {
            String::new()
        } else {
            format!("{} – {}", self.unit.fmt(lo), self.unit.fmt(hi))
        };
        let (baseline, ratio) = match &self.baseline {
            Some((name, b)) if !b.is_empty() => (
                format!("{name} {}", self.unit.fmt(median(b))),
                format!("{:.2}×", median(&self.ratios())),
            ),
            Some((name, _)) => (format!("{name} (none)"), "—".to_owned()),
            None => ("—".to_owned(), "—".to_owned()),
        };
        let target = match self.target {
            Target::None => "—".to_owned(),
            Target::RatioAtLeast(x) => format!("≥ {x}×"),
            Target::RatioAtMost(x) => format!("≤ {x}×"),
            Target::AtMost(x) => format!("≤ {}", self.unit.fmt(x)),
            Target::Every(x) => format!("all runs {}", self.unit.fmt(x)),
        };
        let met = match self.met() {
            None => "—".to_owned(),
            Some(true) => "yes".to_owned(),
            Some(false) => "MISSED".to_owned(),
        };
        [
            self.scenario.to_owned(),
            self.measure.clone(),
            median_cell,
            range,
            baseline,
            ratio,
            target,
            met,
        ]
    }
}

/// The table, columns aligned, as Markdown-style pipes.
pub(crate) fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "measure",
        "median",
        "min–max",
        "same-run baseline",
        "ratio",
        "target",
        "met?",
    ]
    .map(str::to_owned);
    let body: Vec<[String; 8]> = rows.iter().map(Row::cells).collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for r in &body {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String; 8]| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(widths) {
            let pad = w - c.chars().count();
            let _ = write!(s, " {c}{} |", " ".repeat(pad));
        }
        s
    };
    let mut out = line(&header);
    out.push('\n');
    out.push('|');
    for w in widths {
        out.push_str(&"-".repeat(w + 2));
        out.push('|');
    }
    out.push('\n');
    for r in &body {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_groups() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(group(1_234_567), "1,234,567");
        assert_eq!(group(999), "999");
        assert_eq!(percentile_sorted(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile_sorted(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
    }
}
