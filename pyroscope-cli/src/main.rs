//! `pyroscope`: answers from profiles on disk (the embedded default's folder, or any pprof).
//!
//! ```text
//! pyroscope top DIR|FILE... [--type T] [--where k=v]... [--from T] [--until T] [--limit N] [--sort self|total] [--ignore S]... [--tsv]
//! pyroscope diff DIR|FILE... --left k=v[,k=v] --right k=v[,k=v] [--type T] [--limit N]
//! pyroscope flamegraph DIR|FILE... --out FILE.svg [--type T] [--where k=v]...
//! pyroscope report DIR|FILE... --out FILE.html [--type T]... [--by TAG] [--where k=v]...
//! ```

mod data;
mod flame;
mod report;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use data::Selection;
use table::{human, pct, Table};

const USAGE: &str = "usage:
  pyroscope top DIR|FILE... [--type TYPE] [--where key=value]... [--from T] [--until T]
                [--limit N] [--sort self|total] [--ignore SUBSTRING]... [--tsv]
  pyroscope diff DIR|FILE... --left k=v[,k=v] --right k=v[,k=v] [--type TYPE] [--limit N] [--tsv]
  pyroscope flamegraph DIR|FILE... --out FILE.svg [--type TYPE] [--where key=value]...
  pyroscope report DIR|FILE... --out FILE.html [--type TYPE]... [--by TAG] [--where key=value]...

TYPE: cpu (default), alloc_space, alloc_objects, inuse_space, inuse_objects, or any sample
type in the files. T: unix seconds, unix milliseconds, or -15m / -1h / -2d from now.";

#[derive(Default)]
struct Args {
    sel: Selection,
    types: Vec<String>,
    limit: usize,
    sort_total: bool,
    tsv: bool,
    out: Option<PathBuf>,
    left: Vec<(String, String)>,
    right: Vec<(String, String)>,
    by: Option<String>,
}

/// `key=value[,key=value]...`. Label values are free text: a comma followed by text with no `=`
/// before the next comma belongs to the value (`query=a,b` is one pair).
fn pairs(s: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for part in s.split(',') {
        match part.split_once('=') {
            Some((k, v)) => out.push((k.trim().to_owned(), v.trim().to_owned())),
            None if part.trim().is_empty() => {}
            None => match out.last_mut() {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(part.trim_end());
                }
                None => return Err(format!("{what} takes key=value[,key=value], got {s:?}")),
            },
        }
    }
    Ok(out)
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args { limit: 20, ..Default::default() };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value\n{USAGE}"));
        match arg.as_str() {
            "--type" => a.types.push(value("--type")?),
            "--where" => a.sel.filters.extend(pairs(&value("--where")?, "--where")?),
            "--left" => a.left = pairs(&value("--left")?, "--left")?,
            "--right" => a.right = pairs(&value("--right")?, "--right")?,
            "--by" => a.by = Some(value("--by")?),
            "--out" => a.out = Some(PathBuf::from(value("--out")?)),
            "--from" => a.sel.from = Some(data::parse_time(&value("--from")?)?),
            "--until" => a.sel.until = Some(data::parse_time(&value("--until")?)?),
            "--limit" => a.limit = value("--limit")?.parse().map_err(|_| "--limit takes a whole number".to_string())?,
            "--ignore" => a.sel.ignore.push(value("--ignore")?),
            "--tsv" => a.tsv = true,
            "--sort" => {
                a.sort_total = match value("--sort")?.as_str() {
                    "self" => false,
                    "total" => true,
                    other => return Err(format!("--sort takes self or total, got {other:?}")),
                }
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            s => a.sel.inputs.push(PathBuf::from(s)),
        }
    }
    if a.sel.inputs.is_empty() {
        return Err(format!("no folder or file given\n{USAGE}"));
    }
    a.sel.sample_type = a.types.first().cloned().unwrap_or_else(|| "cpu".into());
    Ok(a)
}

fn where_text(f: &[(String, String)]) -> String {
    f.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn top(a: &Args) -> Result<(), String> {
    let profiles = data::load(&a.sel.inputs)?;
    let samples = data::extract(&profiles, &a.sel)?;
    let t = Table::new(&samples, a.sort_total);
    if t.sum == 0 {
        return Err("no samples match the selection".into());
    }
    if a.tsv {
        println!("#total\t{}\t{}\t{}", t.sum, t.unit, samples.profiles);
        for (name, s, tot) in &t.rows {
            println!("{name}\t{s}\t{tot}");
        }
        return Ok(());
    }
    let w = if a.sel.filters.is_empty() { String::new() } else { format!(" where {}", where_text(&a.sel.filters)) };
    println!("{} profiles, {} {} in all{w}", samples.profiles, human(t.sum, &t.unit), a.sel.sample_type);
    println!("{:>12} {:>7} {:>12} {:>7}  function", "self", "self%", "total", "total%");
    for (name, s, tot) in t.rows.iter().take(a.limit) {
        println!(
            "{:>12} {:>6.2}% {:>12} {:>6.2}%  {}",
            human(*s, &t.unit),
            pct(*s, t.sum),
            human(*tot, &t.unit),
            pct(*tot, t.sum),
            name
        );
    }
    Ok(())
}

fn diff(a: &Args) -> Result<(), String> {
    if a.left.is_empty() || a.right.is_empty() {
        return Err(format!("diff needs --left and --right\n{USAGE}"));
    }
    let profiles = data::load(&a.sel.inputs)?;
    let side = |f: &[(String, String)]| -> Result<Table, String> {
        let mut s = a.sel.clone();
        s.filters.extend(f.iter().cloned());
        let t = Table::new(&data::extract(&profiles, &s)?, true);
        if t.sum == 0 {
            return Err(format!("no samples match {}", where_text(f)));
        }
        Ok(t)
    };
    let (l, r) = (side(&a.left)?, side(&a.right)?);
    let rows = table::diff(&l, &r);
    let (ln, rn) = (where_text(&a.left), where_text(&a.right));
    if a.tsv {
        println!("#total\t{}\t{}\t{}", l.sum, r.sum, l.unit);
        for d in &rows {
            println!("{}\t{}\t{}\t{:.4}", d.function, d.left, d.right, d.delta_points);
        }
        return Ok(());
    }
    println!(
        "{} ({}) vs {} ({}), total per function, by change in share",
        ln,
        human(l.sum, &l.unit),
        rn,
        human(r.sum, &r.unit)
    );
    println!("{:>12} {:>7} {:>12} {:>7} {:>8}  function", "left", "left%", "right", "right%", "Δ pts");
    for d in rows.iter().take(a.limit) {
        println!(
            "{:>12} {:>6.2}% {:>12} {:>6.2}% {:>+8.2}  {}",
            human(d.left, &l.unit),
            pct(d.left, l.sum),
            human(d.right, &r.unit),
            pct(d.right, r.sum),
            d.delta_points,
            d.function
        );
    }
    Ok(())
}

fn write_out(a: &Args, content: &str) -> Result<(), String> {
    let out = a.out.as_ref().ok_or_else(|| format!("--out FILE is required\n{USAGE}"))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(out, content).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

fn flamegraph(a: &Args) -> Result<(), String> {
    let profiles = data::load(&a.sel.inputs)?;
    let samples = data::extract(&profiles, &a.sel)?;
    let title = format!("{} {}", a.sel.sample_type, where_text(&a.sel.filters));
    write_out(a, &flame::svg(&samples, title.trim())?)
}

fn report(a: &Args) -> Result<(), String> {
    let profiles = data::load(&a.sel.inputs)?;
    let types = if a.types.is_empty() {
        let present = data::sample_types(&profiles);
        let mut t: Vec<String> = report::ordered_types(&present);
        t.retain(|x| x != "samples" || present.len() == 1);
        t
    } else {
        a.types.clone()
    };
    write_out(a, &report::html(&profiles, &a.sel, &types, a.by.as_deref(), a.limit)?)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let run = |f: fn(&Args) -> Result<(), String>| parse(&argv[1..]).and_then(|a| f(&a));
    let result = match argv.first().map(String::as_str) {
        Some("top") => run(top),
        Some("diff") => run(diff),
        Some("flamegraph") => run(flamegraph),
        Some("report") => run(report),
        Some("-h" | "--help" | "help") | None => {
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

#[cfg(test)]
mod tests {
    use super::pairs;

    #[test]
    fn where_values_may_hold_commas_and_equals() {
        let p = |s: &str| pairs(s, "--where").unwrap();
        assert_eq!(p("region=eu,vehicle=car"), [("region".into(), "eu".into()), ("vehicle".into(), "car".into())]);
        assert_eq!(p("query=a,b"), [("query".to_string(), "a,b".to_string())]);
        assert_eq!(p("expr=x=1"), [("expr".to_string(), "x=1".to_string())]);
        assert!(pairs("novalue", "--where").is_err());
    }
}
