//! The `pyroscope` command on a small hand-made fixture whose numbers are computed by hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use pyroscope_pprof::ProfileBuilder;

/// Four samples (cpu nanoseconds), root first:
///   main;a;b   30  region=eu
///   main;a     20  region=eu
///   main;c     50  region=ap
///   main;a;a   10  region=ap   (recursion: `a` counts once in its total)
/// By hand: sum 110; self b=30, a=30, c=50, main=0; total main=110, a=60, c=50, b=30.
fn fixture(dir: &Path) {
    let mut b = ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), 10);
    let loc =
        |b: &mut ProfileBuilder, key: u64, name: &'static str| b.location(key, key, || vec![(name, "fixture.rs", 1)]);
    let (main, a, bb, c) = (loc(&mut b, 1, "main"), loc(&mut b, 2, "a"), loc(&mut b, 3, "b"), loc(&mut b, 4, "c"));
    b.sample(vec![bb, a, main], vec![3, 30], &[("region", "eu")]);
    b.sample(vec![a, main], vec![2, 20], &[("region", "eu")]);
    b.sample(vec![c, main], vec![5, 50], &[("region", "ap")]);
    b.sample(vec![a, a, main], vec![1, 10], &[("region", "ap")]);
    b.time(1_700_000_000_000_000_000, 10_000_000_000);
    let p = b.build();
    std::fs::create_dir_all(dir).unwrap();
    // One gzipped file, as the agent writes them, and a corrupt neighbour that must be
    // skipped with a warning.
    std::fs::write(dir.join("app.process_cpu.1700000000000.0.pb.gz"), pyroscope_pprof::encode_gzip(&p)).unwrap();
    std::fs::write(dir.join("corrupt.pb.gz"), b"\x1f\x8bnot really gzip").unwrap();
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pyroscope-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    fixture(&d);
    d
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pyroscope")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn tsv(out: &str) -> Vec<Vec<String>> {
    out.lines().map(|l| l.split('\t').map(str::to_owned).collect()).collect()
}

#[test]
fn top_self_and_total_match_the_hand_computed_values() {
    let d = dir("top");
    let (ok, out, err) = run(&["top", d.to_str().unwrap(), "--tsv", "--sort", "total"]);
    assert!(ok, "{err}");
    assert!(err.contains("warning: skipping") && err.contains("corrupt.pb.gz"), "{err}");
    let rows = tsv(&out);
    assert_eq!(rows[0], ["#total", "110", "nanoseconds", "1"]);
    let body: Vec<(String, i64, i64)> =
        rows[1..].iter().map(|r| (r[0].clone(), r[1].parse().unwrap(), r[2].parse().unwrap())).collect();
    assert_eq!(body, vec![("main".into(), 0, 110), ("a".into(), 30, 60), ("c".into(), 50, 50), ("b".into(), 30, 30)]);
    let (_, out, _) = run(&["top", d.to_str().unwrap(), "--tsv", "--where", "region=eu"]);
    let rows = tsv(&out);
    assert_eq!(rows[0][1], "50");
    assert_eq!(rows[1], ["b", "30", "30"], "self order: b (30) before a (20)");
    assert_eq!(rows[2], ["a", "20", "50"]);
    let (_, out, _) = run(&["top", d.to_str().unwrap(), "--tsv", "--type", "samples"]);
    assert_eq!(tsv(&out)[0], ["#total", "11", "count", "1"]);
    let (_, out, _) = run(&["top", d.to_str().unwrap(), "--tsv", "--ignore", "b"]);
    assert_eq!(tsv(&out)[0][1], "80", "the sample through b is left out");
    let (ok, out, _) = run(&["top", d.to_str().unwrap(), "--limit", "2"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("1 profiles, ") && lines[0].ends_with(" cpu in all"), "{out}");
    assert_eq!(lines.len(), 4, "header, column names and two rows: {out}");
    assert!(lines[2].ends_with("  c") && lines[2].contains("45.45%"), "c has the most self time: {out}");
}

#[test]
fn diff_orders_by_change_in_share() {
    let d = dir("diff");
    let (ok, out, err) = run(&["diff", d.to_str().unwrap(), "--left", "region=eu", "--right", "region=ap", "--tsv"]);
    assert!(ok, "{err}");
    let rows = tsv(&out);
    assert_eq!(rows[0], ["#total", "50", "60", "nanoseconds"]);
    let got: Vec<(&str, &str, &str, f64)> =
        rows[1..].iter().map(|r| (r[0].as_str(), r[1].as_str(), r[2].as_str(), r[3].parse().unwrap())).collect();
    // a: 50/50 vs 10/60 -> +83.33; c: 0 vs 50/60 -> -83.33; b: 30/50 vs 0 -> +60; main: 0.
    let expect =
        [("a", "50", "10", 83.3333), ("c", "0", "50", -83.3333), ("b", "30", "0", 60.0), ("main", "50", "60", 0.0)];
    assert_eq!(got.len(), expect.len());
    for (g, e) in got.iter().zip(expect) {
        assert_eq!((g.0, g.1, g.2), (e.0, e.1, e.2));
        assert!((g.3 - e.3).abs() < 0.001, "{g:?} vs {e:?}");
    }
}

#[test]
fn report_and_flamegraph_files() {
    let d = dir("report");
    let html = d.join("out/report.html");
    let (ok, out, err) = run(&["report", d.to_str().unwrap(), "--out", html.to_str().unwrap(), "--by", "region"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), html.to_str().unwrap());
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.starts_with("<!doctype html>"));
    assert!(!text.contains("http://") || text.contains("http://www.w3.org"), "no external resources");
    assert_eq!(text.matches("<iframe class=\"flame\"").count(), 2, "the cpu flame graph and the differential one");
    assert!(text.contains("Differential flame graph: ap compared with eu"), "bigger side first");
    assert!(text.contains("<td class=\"fn\">main</td>"));
    assert!(text.contains("region=ap") && text.contains("region=eu"));
    // The flame graph data: the folded stacks' frames as inferno's <title> entries.
    assert!(text.contains("main (110 nanoseconds, 100.00%)") || text.contains("main (110"), "flame graph totals");
    let svg = d.join("f.svg");
    let (ok, _, err) =
        run(&["flamegraph", d.to_str().unwrap(), "--out", svg.to_str().unwrap(), "--where", "region=eu"]);
    assert!(ok, "{err}");
    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.contains("<svg") && s.contains(">b (30 nanoseconds, 60.00%)<"), "{}", &s[..s.len().min(400)]);
}

#[test]
fn bad_inputs_get_clear_messages() {
    let d = dir("bad");
    let cases: [(&[&str], &str); 7] = [
        (&["top", "/no/such/folder"], "no such file or folder"),
        (&["top", d.to_str().unwrap(), "--type", "wall"], "available: samples, cpu"),
        (&["top", d.to_str().unwrap(), "--where", "region=mars"], "no samples match"),
        (&["top", d.to_str().unwrap(), "--limit", "x"], "--limit takes a whole number"),
        (&["diff", d.to_str().unwrap(), "--left", "region=eu"], "needs --left and --right"),
        (&["report", d.to_str().unwrap()], "--out FILE is required"),
        (&["frobnicate"], "unknown command"),
    ];
    for (args, msg) in cases {
        let (ok, _, err) = run(args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(msg), "{args:?}: {err}");
    }
    let empty = std::env::temp_dir().join(format!("pyroscope-cli-{}-empty", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (ok, _, err) = run(&["top", empty.to_str().unwrap()]);
    assert!(!ok && err.contains("no profiles found"), "{err}");
}
