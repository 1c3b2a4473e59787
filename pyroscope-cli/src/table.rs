//! The self/total table and the two-selection comparison.

use std::collections::{HashMap, HashSet};

use crate::data::Samples;

/// Self and total per function.
#[derive(Debug, Default, Clone)]
pub struct Table {
    /// (function, self, total), biggest first by the chosen order.
    pub rows: Vec<(String, i64, i64)>,
    pub sum: i64,
    pub unit: String,
}

impl Table {
    pub fn new(samples: &Samples, sort_total: bool) -> Table {
        let mut self_: HashMap<&str, i64> = HashMap::new();
        let mut total: HashMap<&str, i64> = HashMap::new();
        let mut sum = 0;
        for s in &samples.samples {
            if let Some(leaf) = s.stack.last() {
                *self_.entry(leaf).or_default() += s.value;
            }
            // A recursive function counts once per sample in its total.
            let mut seen = HashSet::new();
            for f in &s.stack {
                if seen.insert(&**f) {
                    *total.entry(f).or_default() += s.value;
                }
            }
            sum += s.value;
        }
        let mut rows: Vec<(String, i64, i64)> =
            total.iter().map(|(n, t)| ((*n).to_owned(), self_.get(n).copied().unwrap_or(0), *t)).collect();
        rows.sort_by(|a, b| {
            let key = |r: &(String, i64, i64)| if sort_total { (r.2, r.1) } else { (r.1, r.2) };
            key(b).cmp(&key(a)).then(a.0.cmp(&b.0))
        });
        Table { rows, sum, unit: samples.unit.clone() }
    }

    pub fn get(&self, function: &str) -> (i64, i64) {
        self.rows.iter().find(|r| r.0 == function).map_or((0, 0), |r| (r.1, r.2))
    }
}

/// Human units: ms/s for nanoseconds, KiB/MiB/GiB for bytes.
pub fn human(v: i64, unit: &str) -> String {
    let f = v as f64;
    let a = f.abs();
    match unit {
        "nanoseconds" if a >= 1e9 => format!("{:.2} s", f / 1e9),
        "nanoseconds" => format!("{:.0} ms", f / 1e6),
        "bytes" if a >= 1073741824.0 => format!("{:.2} GiB", f / 1073741824.0),
        "bytes" if a >= 1048576.0 => format!("{:.1} MiB", f / 1048576.0),
        "bytes" => format!("{:.1} KiB", f / 1024.0),
        _ => format!("{v}"),
    }
}

pub fn pct(v: i64, of: i64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * v as f64 / of as f64
    }
}

/// One function in a comparison: totals on each side and their shares of each side's sum.
#[derive(Debug, Clone)]
pub struct DiffRow {
    pub function: String,
    pub left: i64,
    pub right: i64,
    /// Share of the left sum minus share of the right sum, in percentage points.
    pub delta_points: f64,
}

/// Compares total time per function of two selections. Ordered by the absolute change in
/// share (percentage points), biggest first, so that selections of different size compare.
pub fn diff(left: &Table, right: &Table) -> Vec<DiffRow> {
    let mut names: Vec<&str> = left.rows.iter().chain(&right.rows).map(|r| r.0.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let mut rows: Vec<DiffRow> = names
        .into_iter()
        .map(|n| {
            let (l, r) = (left.get(n).1, right.get(n).1);
            DiffRow { function: n.to_owned(), left: l, right: r, delta_points: pct(l, left.sum) - pct(r, right.sum) }
        })
        .collect();
    rows.sort_by(|a, b| b.delta_points.abs().total_cmp(&a.delta_points.abs()).then(a.function.cmp(&b.function)));
    rows
}
