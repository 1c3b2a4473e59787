//! Reading profiles: folders or files, gzipped or plain pprof, into flat samples.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pyroscope_pprof::proto::Profile;

/// One sample: frames root first, its labels, its value for the chosen type.
#[derive(Debug, Clone)]
pub struct Sample {
    pub stack: Vec<Arc<str>>,
    pub labels: BTreeMap<String, String>,
    pub value: i64,
}

/// The samples of one sample type across the selected profiles.
#[derive(Debug, Default)]
pub struct Samples {
    pub samples: Vec<Sample>,
    pub unit: String,
    /// Profiles that had the type.
    pub profiles: usize,
}

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub inputs: Vec<PathBuf>,
    pub sample_type: String,
    pub filters: Vec<(String, String)>,
    pub ignore: Vec<String>,
    /// Window start bounds, unix nanoseconds.
    pub from: Option<i64>,
    pub until: Option<i64>,
}

/// Every profile under `inputs`. Unreadable or foreign files are skipped with a warning on
/// stderr; no profile at all is an error.
pub fn load(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, Profile)>, String> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|e| format!("{}: {e}", input.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            found.sort();
            files.extend(found);
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(format!("{}: no such file or folder", input.display()));
        }
    }
    let mut out = Vec::new();
    for f in files {
        match read(&f) {
            Ok(p) => out.push((f, p)),
            Err(e) => eprintln!("warning: skipping {}: {e}", f.display()),
        }
    }
    if out.is_empty() {
        let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
        return Err(format!("no profiles found in {}", names.join(", ")));
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Profile, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    pyroscope_pprof::decode(&bytes).map_err(|e| e.to_string())
}

/// Sample types found in the profiles, in first-seen order.
pub fn sample_types(profiles: &[(PathBuf, Profile)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (_, p) in profiles {
        for t in &p.sample_type {
            let name = p.string_table.get(t.r#type as usize).cloned().unwrap_or_default();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

/// The samples of `sel.sample_type` that pass the filters.
pub fn extract(profiles: &[(PathBuf, Profile)], sel: &Selection) -> Result<Samples, String> {
    let mut out = Samples::default();
    for (_, p) in profiles {
        if sel.from.is_some_and(|f| p.time_nanos < f) || sel.until.is_some_and(|u| p.time_nanos >= u) {
            continue;
        }
        let s = |i: i64| p.string_table.get(i as usize).map(String::as_str).unwrap_or("");
        let Some(idx) = p.sample_type.iter().position(|t| s(t.r#type) == sel.sample_type) else { continue };
        out.unit = s(p.sample_type[idx].unit).to_owned();
        out.profiles += 1;
        let funcs: BTreeMap<u64, Arc<str>> = p.function.iter().map(|f| (f.id, Arc::from(s(f.name)))).collect();
        let unknown: Arc<str> = Arc::from("?");
        let locs: BTreeMap<u64, Vec<Arc<str>>> = p
            .location
            .iter()
            .map(|l| {
                (l.id, l.line.iter().map(|ln| funcs.get(&ln.function_id).cloned().unwrap_or(unknown.clone())).collect())
            })
            .collect();
        for smp in &p.sample {
            let labels: BTreeMap<String, String> =
                smp.label.iter().map(|l| (s(l.key).to_owned(), s(l.str).to_owned())).collect();
            if !sel.filters.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            let value = smp.value.get(idx).copied().unwrap_or(0);
            if value == 0 {
                continue;
            }
            // pprof lists the leaf first, and inlined frames innermost first: reverse both.
            let mut stack: Vec<Arc<str>> =
                smp.location_id.iter().flat_map(|id| locs.get(id).cloned().unwrap_or_default()).collect();
            stack.reverse();
            if stack.iter().any(|n| sel.ignore.iter().any(|i| n.contains(i.as_str()))) {
                continue;
            }
            out.samples.push(Sample { stack, labels, value });
        }
    }
    if out.profiles == 0 {
        let available = sample_types(profiles);
        return Err(format!("no profile has sample type {:?} (available: {})", sel.sample_type, available.join(", ")));
    }
    Ok(out)
}

/// Parses a time: unix seconds, unix milliseconds (13 digits), or `-90s`, `-15m`, `-1h`, `-2d`
/// relative to now. Returns unix nanoseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid time {s:?}: use unix seconds, unix milliseconds, or -15m / -1h / -2d");
    if let Some(rel) = s.strip_prefix('-') {
        let (num, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
        let n: i64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86400,
            _ => return Err(bad()),
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_nanos() as i64;
        return Ok(now - secs * 1_000_000_000);
    }
    let n: i64 = s.parse().map_err(|_| bad())?;
    Ok(if s.len() >= 13 { n * 1_000_000 } else { n * 1_000_000_000 })
}
