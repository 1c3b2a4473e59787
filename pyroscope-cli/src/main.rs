//! `pyroscope`: reads profiles written by the embedded default (or any pprof files) and
//! prints the self/total table.
//!
//! ```text
//! pyroscope top DIR|FILE... [--type cpu|samples|alloc_space|...] [--where k=v]... [--limit N] [--sort self|total]
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;

use pyroscope_core::proto::Profile;

const USAGE: &str =
    "usage: pyroscope top DIR|FILE... [--type TYPE] [--where key=value]... [--limit N] [--sort self|total] [--ignore SUBSTRING]... [--tsv]";

struct Args {
    inputs: Vec<PathBuf>,
    sample_type: String,
    filters: Vec<(String, String)>,
    limit: usize,
    sort_total: bool,
    tsv: bool,
    /// Samples with a frame whose name contains one of these are left out.
    ignore: Vec<String>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        inputs: Vec::new(),
        sample_type: "cpu".into(),
        filters: Vec::new(),
        limit: 20,
        sort_total: false,
        tsv: false,
        ignore: Vec::new(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--type" => a.sample_type = value("--type")?,
            "--where" => {
                let v = value("--where")?;
                let (k, val) = v.split_once('=').ok_or_else(|| format!("--where takes key=value, got {v:?}"))?;
                a.filters.push((k.to_owned(), val.to_owned()));
            }
            "--limit" => a.limit = value("--limit")?.parse().map_err(|_| "--limit takes a whole number".to_string())?,
            "--sort" => {
                a.sort_total = match value("--sort")?.as_str() {
                    "self" => false,
                    "total" => true,
                    other => return Err(format!("--sort takes self or total, got {other:?}")),
                }
            }
            "--tsv" => a.tsv = true,
            "--ignore" => a.ignore.push(value("--ignore")?),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            s => a.inputs.push(PathBuf::from(s)),
        }
    }
    if a.inputs.is_empty() {
        return Err(USAGE.into());
    }
    Ok(a)
}

/// Every profile under the inputs; unreadable or foreign files are skipped with a warning.
fn load(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, Profile)>, String> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let entries = std::fs::read_dir(input).map_err(|e| format!("{}: {e}", input.display()))?;
            let mut found: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
            found.sort();
            files.extend(
                found.into_iter().filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.'))),
            );
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(format!("{}: no such file or folder", input.display()));
        }
    }
    let mut out = Vec::new();
    for f in files {
        match std::fs::read(&f)
            .map_err(|e| e.to_string())
            .and_then(|b| pyroscope_core::decode_pprof(&b).map_err(|e| e.to_string()))
        {
            Ok(p) => out.push((f, p)),
            Err(e) => eprintln!("warning: skipping {}: {e}", f.display()),
        }
    }
    if out.is_empty() {
        return Err(format!(
            "no profiles found in {}",
            inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(out)
}

#[derive(Default)]
struct Table {
    self_: HashMap<String, i64>,
    total: HashMap<String, i64>,
    sum: i64,
    unit: String,
}

fn accumulate(
    table: &mut Table,
    p: &Profile,
    sample_type: &str,
    filters: &[(String, String)],
    ignore: &[String],
) -> bool {
    let s = |i: i64| p.string_table.get(i as usize).map(String::as_str).unwrap_or("");
    let Some(idx) = p.sample_type.iter().position(|t| s(t.r#type) == sample_type) else {
        return false;
    };
    table.unit = s(p.sample_type[idx].unit).to_owned();
    let funcs: HashMap<u64, &str> = p.function.iter().map(|f| (f.id, s(f.name))).collect();
    let locs: HashMap<u64, Vec<&str>> = p
        .location
        .iter()
        .map(|l| (l.id, l.line.iter().map(|ln| funcs.get(&ln.function_id).copied().unwrap_or("?")).collect()))
        .collect();
    for smp in &p.sample {
        let labels: BTreeMap<&str, &str> = smp.label.iter().map(|l| (s(l.key), s(l.str))).collect();
        if !filters.iter().all(|(k, v)| labels.get(k.as_str()) == Some(&v.as_str())) {
            continue;
        }
        let v = smp.value[idx];
        let names: Vec<&str> =
            smp.location_id.iter().flat_map(|id| locs.get(id).cloned().unwrap_or_default()).collect();
        if names.iter().any(|n| ignore.iter().any(|i| n.contains(i.as_str()))) {
            continue;
        }
        if let Some(leaf) = names.first() {
            *table.self_.entry((*leaf).to_owned()).or_default() += v;
        }
        let mut seen = HashSet::new();
        for n in names {
            if seen.insert(n) {
                *table.total.entry(n.to_owned()).or_default() += v;
            }
        }
        table.sum += v;
    }
    true
}

fn human(v: i64, unit: &str) -> String {
    let f = v as f64;
    match unit {
        "nanoseconds" if f >= 1e9 => format!("{:.2} s", f / 1e9),
        "nanoseconds" => format!("{:.0} ms", f / 1e6),
        "bytes" if f >= 1048576.0 => format!("{:.1} MiB", f / 1048576.0),
        "bytes" => format!("{:.1} KiB", f / 1024.0),
        _ => format!("{v}"),
    }
}

fn top(args: &Args) -> Result<(), String> {
    let profiles = load(&args.inputs)?;
    let mut table = Table::default();
    let mut matched = 0;
    for (_, p) in &profiles {
        if accumulate(&mut table, p, &args.sample_type, &args.filters, &args.ignore) {
            matched += 1;
        }
    }
    if matched == 0 {
        return Err(format!("no profile has sample type {:?}", args.sample_type));
    }
    if table.sum == 0 {
        return Err("no samples match the selection".into());
    }
    let mut rows: Vec<(&String, i64, i64)> =
        table.total.iter().map(|(n, t)| (n, table.self_.get(n).copied().unwrap_or(0), *t)).collect();
    rows.sort_by(|a, b| {
        if args.sort_total { b.2.cmp(&a.2) } else { b.1.cmp(&a.1) }.then(b.2.cmp(&a.2)).then(a.0.cmp(b.0))
    });
    let pct = |v: i64| 100.0 * v as f64 / table.sum as f64;
    if args.tsv {
        // Machine-readable: base units, every function.
        println!("#total\t{}\t{}\t{}", table.sum, table.unit, matched);
        for (name, s, t) in rows {
            println!("{name}\t{s}\t{t}");
        }
        return Ok(());
    }
    println!(
        "{} profiles, {} {} in all{}",
        matched,
        human(table.sum, &table.unit),
        args.sample_type,
        where_text(&args.filters)
    );
    println!("{:>12} {:>7} {:>12} {:>7}  function", "self", "self%", "total", "total%");
    for (name, s, t) in rows.into_iter().take(args.limit) {
        println!(
            "{:>12} {:>6.2}% {:>12} {:>6.2}%  {}",
            human(s, &table.unit),
            pct(s),
            human(t, &table.unit),
            pct(t),
            name
        );
    }
    Ok(())
}

fn where_text(f: &[(String, String)]) -> String {
    if f.is_empty() {
        String::new()
    } else {
        format!(" where {}", f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match argv.first().map(String::as_str) {
        Some("top") => parse(&argv[1..]).and_then(|a| top(&a)),
        Some("-h" | "--help") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown command {other:?}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pyroscope: {e}");
            ExitCode::FAILURE
        }
    }
}
