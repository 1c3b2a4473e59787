//! `make bench`. With no arguments: the driver, which runs each configuration as alternating
//! child processes (`--child MODE SWITCH_US`), several runs each, and prints medians as
//! Markdown. Modes: `none` (no profiler), `ours` (pyroscope-core at 100 Hz, file export), and
//! `pyroscope-rs` (the `pyroscope` crate 2.x with its pprof-rs backend, a separate binary given
//! by `$PYROSCOPE_RS_BENCH`, run when present).

use std::process::Command;
use std::time::Instant;

use bench_workload::{calibrate, median, run, run_child, settle, Measured};
use pyroscope_core::{AgentBuilder, LabelSet, ProfileBuilder};

const THREADS: usize = 2;
const SECONDS: f64 = 5.0;

fn child(mode: &str, switch_us: u64, iters_per_us: f64) -> Measured {
    let iters = (switch_us as f64 * iters_per_us) as u64;
    let switches = (SECONDS * 1e6 / switch_us as f64) as u64;
    let sets: Vec<LabelSet> =
        (0..4).map(|i| LabelSet::new(&[("endpoint", format!("/e{i}"))]).expect("labels")).collect();
    match mode {
        "none" => run(THREADS, switches, iters, |_, i| sets[(i % 4) as usize].id()),
        "ours" => {
            let dir = std::env::temp_dir().join(format!("pyroscope-bench-{}", std::process::id()));
            let agent = AgentBuilder::new("bench").export_dir(&dir).start().expect("start");
            settle();
            let mut m = run(THREADS, switches, iters, |_, i| sets[(i % 4) as usize].enter());
            let t = Instant::now();
            agent.stop();
            m.stop = t.elapsed().as_secs_f64();
            let _ = std::fs::remove_dir_all(&dir);
            m
        }
        // The line-tables workload (one thread, see `bench_workload::varied`; `switch_us` is
        // its number of rounds), run from the binary built with `--profile bench-lines`.
        // Prints the collector thread's CPU seconds per window in the `stop` column.
        "lines-none" | "lines-ours" => {
            let dir = std::env::temp_dir().join(format!("pyroscope-bench-lines-{}", std::process::id()));
            let agent = (mode == "lines-ours").then(|| {
                AgentBuilder::new("bench")
                    .export_dir(&dir)
                    .upload_interval(std::time::Duration::from_secs(1))
                    .start()
                    .expect("start")
            });
            let mut m = run(1, 1, 0, |_, _| ());
            let (cpu0, t) = (bench_workload::process_cpu_seconds(), Instant::now());
            std::hint::black_box(bench_workload::varied(switch_us));
            m.cpu = bench_workload::process_cpu_seconds() - cpu0;
            m.wall = t.elapsed().as_secs_f64();
            if let Some(agent) = agent {
                let collector = bench_workload::thread_cpu_seconds("pyroscope-colle");
                let stats = agent.stop();
                m.stop = collector / stats.windows.saturating_sub(1).max(1) as f64;
            }
            let _ = std::fs::remove_dir_all(&dir);
            m
        }
        other => panic!("unknown mode {other}"),
    }
}

/// CPU cost per sample: the same work at 1000 Hz requested (tick-bound) vs no profiler, in
/// one process each, alternating; (extra CPU) / samples. Includes the collector's share.
fn per_sample_us(ipu: f64, runs: usize) -> (f64, f64, f64) {
    let iters = (5000.0 * ipu) as u64;
    let switches = (SECONDS * 1e6 / 5000.0) as u64;
    let (mut none, mut ours, mut samples, mut handler) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        none.push(run(THREADS, switches, iters, |_, _| ()).cpu);
        let dir = std::env::temp_dir().join(format!("pyroscope-bench-ps-{}", std::process::id()));
        let agent = AgentBuilder::new("bench").export_dir(&dir).sample_rate(1000).start().expect("start");
        let m = run(THREADS, switches, iters, |_, _| ());
        let stats = agent.stop();
        let _ = std::fs::remove_dir_all(&dir);
        ours.push(m.cpu);
        samples.push(stats.samples as f64);
        handler.push(stats.handler_ns as f64 / stats.handler_runs.max(1) as f64 / 1e3);
    }
    let (n, o, k) = (median(none), median(ours), median(samples));
    ((o - n) / k * 1e6, k / (SECONDS * THREADS as f64), median(handler))
}

/// Runs `argv` through `$PYROSCOPE_BENCH_SPAWN` (benches/symbols/spawn.c): what it printed
/// but the last line, and its wall time in ms and peak RSS in KiB from that last line.
fn spawn_measured(argv: &[&str]) -> Option<(String, f64, i64)> {
    let launcher = std::env::var("PYROSCOPE_BENCH_SPAWN").ok()?;
    let out = run_child(Command::new(launcher).args(argv))?;
    let (body, last) = out.stdout.trim_end().rsplit_once('\n').unwrap_or(("", out.stdout.trim_end()));
    let v: Vec<f64> = last.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if !out.success || v.len() != 3 || v[2] != 0.0 {
        eprintln!("  {argv:?}: failed: {}", out.stderr);
        return None;
    }
    Some((body.to_string(), v[0], v[1] as i64))
}

/// A `--child` run through the small launcher, so its peak RSS is its own.
fn spawn_small(bin: &str, mode: &str, switch_us: u64, ipu: f64) -> Option<Measured> {
    let (body, _, rss) = spawn_measured(&[bin, "--child", mode, &switch_us.to_string(), &ipu.to_string()])?;
    let v: Vec<f64> = body.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    (v.len() == 4).then(|| Measured { cpu: v[0], wall: v[1], max_rss_kib: rss, stop: v[3] })
}

fn spawn(bin: &str, mode: &str, switch_us: u64, ipu: f64) -> Option<Measured> {
    let out = run_child(Command::new(bin).args(["--child", mode, &switch_us.to_string(), &ipu.to_string()]))?;
    if !out.success {
        eprintln!("  {mode}: failed: {}", out.stderr);
        return None;
    }
    let v: Vec<f64> = out.stdout.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Peak RSS over the child's whole life, its agent's stop included.
    (v.len() == 4).then(|| Measured { cpu: v[0], wall: v[1], max_rss_kib: out.peak_rss_kib, stop: v[3] })
}

/// The memory the profiler may add to a program built with line tables, whatever the
/// binary carries (README, docs/symbolization.md).
const RSS_BUDGET_MIB: f64 = 10.0;

/// The line-tables workload: `$PYROSCOPE_BENCH_LINES` (this benchmark built with
/// `--profile bench-lines`: `debug = 1` for every package) without and with the agent, and a
/// copy stripped of its debug info with the agent (the agent's floor); one thread, peak RSS
/// over each child's whole life, alternating runs, medians.
fn lines_section(runs: usize, ipu: f64) {
    let (Ok(lines), Ok(stripped)) =
        (std::env::var("PYROSCOPE_BENCH_LINES"), std::env::var("PYROSCOPE_BENCH_LINES_NODEBUG"))
    else {
        eprintln!("PYROSCOPE_BENCH_LINES unset: skipping the line-tables workload");
        return;
    };
    let size = |p: &str| std::fs::metadata(p).map_or(0.0, |m| m.len() as f64 / 1e6);
    // About 5 s of work, from the time of 200 rounds here (after 50 to warm up).
    std::hint::black_box(bench_workload::varied(50));
    let t = Instant::now();
    std::hint::black_box(bench_workload::varied(200));
    let rounds = ((SECONDS / t.elapsed().as_secs_f64() * 200.0) as u64).max(200);
    let _ = ipu;
    println!(
        "\n## Memory with line tables (one thread, {SECONDS} s of varied work, 1 s windows; the binary built with `debug = 1` for every package, {:.0} MB, {:.0} MB without its debug info; medians of {runs} alternating runs)\n",
        size(&lines),
        size(&stripped)
    );
    println!("| binary | profiler | CPU s | peak RSS MiB | added MiB | collector CPU per window ms |");
    println!("|---|---|---|---|---|---|");
    let modes = [
        ("line tables", "lines-none", &lines),
        ("line tables", "lines-ours", &lines),
        ("no debug info", "lines-ours", &stripped),
    ];
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); modes.len()];
    for r in 0..runs {
        for (i, (_, mode, bin)) in modes.iter().enumerate() {
            eprintln!("run {}/{runs}, line tables, {mode} {bin}", r + 1);
            if let Some(m) = spawn_small(bin, mode, rounds, ipu) {
                results[i].push(m);
            }
        }
    }
    if results.iter().any(Vec::is_empty) {
        return;
    }
    let rss = |i: usize| median(results[i].iter().map(|m| m.max_rss_kib as f64).collect()) / 1024.0;
    for (i, (binary, mode, _)) in modes.iter().enumerate() {
        let cpu = median(results[i].iter().map(|m| m.cpu).collect());
        let per_window = median(results[i].iter().map(|m| m.stop).collect()) * 1e3;
        let (profiler, window) =
            if *mode == "lines-none" { ("none", "-".to_string()) } else { ("ours", format!("{per_window:.1}")) };
        println!("| {binary} | {profiler} | {cpu:.3} | {:.1} | {:.1} | {window} |", rss(i), rss(i) - rss(0));
    }
    let added = rss(1) - rss(0);
    println!(
        "\nAdded by the profiler with line tables: {added:.1} MiB against a budget of {RSS_BUDGET_MIB:.0} MiB ({}); the symbolizer's share (line tables vs no debug info, both profiled): {:.1} MiB.",
        if added <= RSS_BUDGET_MIB { "within" } else { "OVER BUDGET" },
        rss(1) - rss(2)
    );
}

/// Budget for a process that exits at once under the preload library.
const SHORT_LIVED_BUDGET: (f64, f64) = (10.0, 10.0);

/// Short-lived programs under the preload library: `python3 -c pass` (`$PYROSCOPE_BENCH_PYTHON`,
/// its libpython carries DWARF) and `sqlite3 :memory: 'select 1'`, plain and preloaded,
/// launched by `$PYROSCOPE_BENCH_SPAWN` (benches/symbols/spawn.c); 21 alternating runs,
/// medians of wall time and peak RSS.
fn short_lived_section() {
    if std::env::var_os("PYROSCOPE_BENCH_SPAWN").is_none() {
        eprintln!("PYROSCOPE_BENCH_SPAWN unset: skipping short-lived processes");
        return;
    }
    let dir = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_path_buf())).unwrap_or_default();
    let preload = dir.join("libpyroscope_preload.so");
    let out_dir = std::env::temp_dir().join(format!("pyroscope-bench-short-{}", std::process::id()));
    let python = std::env::var("PYROSCOPE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let programs: [(&str, Vec<&str>); 2] = [
        ("`python3 -c pass`", vec![&python, "-c", "pass"]),
        ("`sqlite3 :memory: 'select 1'`", vec!["sqlite3", ":memory:", "select 1"]),
    ];
    const RUNS: usize = 21;
    println!("\n## Short-lived processes under the preload library (medians of {RUNS} alternating runs; budget: at most {:.0} ms and {:.0} MiB added)\n", SHORT_LIVED_BUDGET.0, SHORT_LIVED_BUDGET.1);
    println!("| program | plain ms | preloaded ms | added ms | plain peak RSS MiB | preloaded peak RSS MiB | added MiB | within budget |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, argv) in &programs {
        let mut runs: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
        for _ in 0..RUNS {
            for (i, preloaded) in [false, true].into_iter().enumerate() {
                let (lib, export) = (
                    format!("LD_PRELOAD={}", preload.display()),
                    format!("PYROSCOPE_EXPORT_DIR={}", out_dir.display()),
                );
                let mut args = vec!["env"];
                if preloaded {
                    args.extend([lib.as_str(), export.as_str()]);
                }
                args.extend(argv.iter().copied());
                if let Some((_, ms, kib)) = spawn_measured(&args) {
                    runs[i].push((ms, kib as f64 / 1024.0));
                }
            }
        }
        if runs.iter().any(Vec::is_empty) {
            eprintln!("  {name}: did not run");
            continue;
        }
        let ms = |i: usize| median(runs[i].iter().map(|r| r.0).collect());
        let mib = |i: usize| median(runs[i].iter().map(|r| r.1).collect());
        let (dms, dmib) = (ms(1) - ms(0), mib(1) - mib(0));
        let ok = dms <= SHORT_LIVED_BUDGET.0 && dmib <= SHORT_LIVED_BUDGET.1;
        println!(
            "| {name} | {:.1} | {:.1} | {dms:.1} | {:.1} | {:.1} | {dmib:.1} | {} |",
            ms(0),
            ms(1),
            mib(0),
            mib(1),
            if ok { "yes" } else { "no" }
        );
    }
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// An allocation-heavy workload of `alloc-bench` (see its crate doc).
struct AllocWorkload {
    /// `ALLOC_BENCH_WORKLOAD`.
    name: &'static str,
    /// The section's title, before the measured figures.
    title: &'static str,
}

const ALLOC_WORKLOADS: [AllocWorkload; 2] = [
    AllocWorkload {
        name: "churn",
        title: "Allocation-heavy workload, worst case: nothing but malloc, memset and free (2 threads, 16-1,024 B, 1,024 live per thread",
    },
    AllocWorkload {
        name: "service",
        title: "Allocation-heavy workload, request handling: formatted keys, vectors, a map, a rendered string per request (2 threads",
    },
];

/// One allocation workload: plain system allocator vs `SamplingAllocator` with an agent vs the
/// plain binary under the preload library (and under a no-op interposer, the floor of any
/// preload library); alternating runs, medians.
fn alloc_section(runs: usize, workload: &AllocWorkload) {
    let dir = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.to_path_buf())).unwrap_or_default();
    let (plain, sampled, preload, nop, count) = (
        dir.join("alloc-bench-plain"),
        dir.join("alloc-bench-sampled"),
        dir.join("libpyroscope_preload.so"),
        dir.join("libnop-interposer.so"),
        dir.join("libcount-interposer.so"),
    );
    if !plain.exists() || !sampled.exists() || !preload.exists() {
        eprintln!("alloc benchmark binaries missing in {}; skipping", dir.display());
        return;
    }
    let tmp = std::env::temp_dir().join(format!("alloc-bench-preload-{}", std::process::id()));
    // (name, binary, library to preload, extra environment)
    type Mode<'a> = (&'a str, &'a std::path::Path, Option<&'a std::path::Path>, &'a [(&'a str, &'a str)]);
    let mut modes: Vec<Mode> = vec![
        ("system allocator, no profiler", &plain, None, &[]),
        ("SamplingAllocator + agent, memory off (fast path only)", &sampled, None, &[("PYROSCOPE_MEMORY", "false")]),
        ("SamplingAllocator + agent", &sampled, None, &[]),
        (
            "SamplingAllocator + agent, mean 64 KiB (8 times the samples)",
            &sampled,
            None,
            &[(pyroscope_core::env::ALLOC_SAMPLE_BYTES, "65536")],
        ),
        ("LD_PRELOAD library, no agent (fast path only)", &plain, Some(&preload), &[("PYROSCOPE_PRELOAD_START", "0")]),
        ("LD_PRELOAD library", &plain, Some(&preload), &[]),
    ];
    if nop.exists() {
        modes.push(("LD_PRELOAD no-op interposer (the floor of any preload library)", &plain, Some(&nop), &[]));
    }
    let run = |bin: &std::path::Path, lib: Option<&std::path::Path>, env: &[(&str, &str)]| {
        let mut cmd = Command::new(bin);
        cmd.env("ALLOC_BENCH_WORKLOAD", workload.name).envs(env.iter().copied());
        if let Some(lib) = lib {
            cmd.env("LD_PRELOAD", lib)
                .env("PYROSCOPE_APPLICATION_NAME", "alloc-bench")
                .env("PYROSCOPE_EXPORT_DIR", &tmp);
        }
        run_child(&mut cmd)
    };
    let mut results: Vec<Vec<[f64; 7]>> = vec![Vec::new(); modes.len()];
    for r in 0..runs {
        for (i, (name, bin, lib, env)) in modes.iter().enumerate() {
            eprintln!("alloc run {}/{runs}, {}: {name}", r + 1, workload.name);
            let Some(out) = run(bin, *lib, env) else { continue };
            let v: Vec<f64> = out.stdout.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            // Peak RSS over the child's whole life: the preload library's agent stops at exit.
            if let [cpu, wall, _, stop, allocs, bytes, lost] = v[..] {
                results[i].push([cpu, wall, out.peak_rss_kib as f64, stop, allocs, bytes, lost]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if results.iter().any(|r| r.len() != runs) {
        eprintln!("some allocation benchmark runs failed; skipping the table");
        return;
    }
    let (mut allocs, mut bytes) = (results[0][0][4], results[0][0][5]);
    if allocs < 0.0 {
        // The workload does not count its allocations: a run under the counting interposer does.
        let counted = run(&plain, Some(&count), &[]).map(|o| o.stderr);
        let field = |text: &str, key: &str| {
            text.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse::<f64>().ok())
        };
        match counted.as_deref().and_then(|t| Some((field(t, "allocations=")?, field(t, "bytes=")?))) {
            Some((a, b)) => (allocs, bytes) = (a, b),
            None => {
                eprintln!("the counting interposer gave no figures; skipping the {} table", workload.name);
                return;
            }
        }
    }
    let med = |i: usize, k: usize| median(results[i].iter().map(|m| m[k]).collect());
    // Each run against the plain run of the same round: slow drifts of the machine cancel.
    let run_ratio = |i: usize| median((0..runs).map(|r| results[i][r][0] / results[0][r][0]).collect());
    println!(
        "\n## {}, {:.0} M allocations, {:.0} GB in all; medians of {runs} alternating runs)\n",
        workload.title,
        allocs / 1e6,
        bytes / 1e9
    );
    println!("| mode | CPU s | wall s | CPU ratio | median per-run CPU ratio | wall ratio | CPU ns per allocation | peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, (name, ..)) in modes.iter().enumerate() {
        println!(
            "| {name} | {:.3} | {:.3} | {:.4} | {:.4} | {:.4} | {:.2} | {:.1} |",
            med(i, 0),
            med(i, 1),
            med(i, 0) / med(0, 0),
            run_ratio(i),
            med(i, 1) / med(0, 1),
            med(i, 0) / allocs * 1e9,
            med(i, 2) / 1024.0
        );
    }
    let samples = bytes / pyroscope_core::DEFAULT_SAMPLE_BYTES as f64;
    // Each run against the memory-off run of the same round, in CPU seconds.
    let extra = |i: usize| median((0..runs).map(|r| results[i][r][0] - results[1][r][0]).collect());
    let per_sample_ns = extra(3) / (samples * 8.0) * 1e9;
    println!(
        "\nUnsampled fast path (SamplingAllocator, memory off vs no profiler): {:.2} ns per allocation and free.\n\n\
         Sampling, collector included: {:.0} ns of CPU per sample at the default mean of 512 KiB (about {:.0} k \
         samples), {per_sample_ns:.0} ns at 64 KiB, where sampling dominates and the figure is steadier. \
         At {per_sample_ns:.0} ns, the default rate costs this workload {:.2}% of its CPU time.\n\n\
         Samples lost (ring full), most in one run: {} at the default mean, {} at 64 KiB.",
        (med(1, 0) - med(0, 0)) / allocs * 1e9,
        extra(2) / samples * 1e9,
        samples / 1e3,
        per_sample_ns * 1e-9 * samples / med(0, 0) * 100.0,
        results[2].iter().map(|m| m[6]).fold(0.0, f64::max),
        results[3].iter().map(|m| m[6]).fold(0.0, f64::max),
    );
}

/// `pyroscope top` over one hour of 10 s windows for one app (360 files), as written by the
/// agent: each window 400 distinct stacks of 25 frames from 600 functions, two tags.
fn top_360_files_ms(runs: usize) -> Option<f64> {
    let cli = std::env::current_exe().ok()?.parent()?.join("pyroscope");
    if !cli.exists() {
        eprintln!("{} missing; skipping the top benchmark", cli.display());
        return None;
    }
    let dir = std::env::temp_dir().join(format!("pyroscope-bench-top-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let names: Vec<String> = (0..600).map(|i| format!("rideshare::module_{}::function_{i}", i % 17)).collect();
    let regions = ["us-east", "eu-north", "ap-south"];
    for w in 0..360u64 {
        let mut b =
            ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), 10_000_000);
        for s in 0..400u64 {
            let locs: Vec<u64> = (0..25u64)
                .map(|d| {
                    let f = ((s * 7 + d * 131 + w) % 600) as usize;
                    b.location(f as u64 + 1, f as u64 + 1, || vec![(names[f].as_str(), "src/main.rs", d as u32)])
                })
                .collect();
            let region = regions[(s % 3) as usize];
            b.sample(
                locs,
                vec![3, 30_000_000],
                &[("region", region), ("vehicle", ["car", "bike", "scooter"][(s % 7 % 3) as usize])],
            );
        }
        b.time((1_795_600_000 + w as i64 * 10) * 1_000_000_000, 10_000_000_000);
        let name = format!("rideshare.process_cpu.{}.0000000000000001.pb.gz", 1_795_600_000_000u64 + w * 10_000);
        let _ = std::fs::write(dir.join(name), pyroscope_core::encode_gzip(&b.build()));
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let ok = Command::new(&cli)
            .args(["top"])
            .arg(&dir)
            .args(["--where", "region=eu-north"])
            .output()
            .ok()?
            .status
            .success();
        if ok {
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    (!times.is_empty()).then(|| median(times))
}

fn label_switch_ns() -> (f64, f64) {
    let set = LabelSet::new(&[("vehicle", "car")]).expect("labels");
    let n = 5_000_000u32;
    let t = Instant::now();
    for _ in 0..n {
        let g = set.enter();
        std::hint::black_box(&g);
    }
    let enter = t.elapsed().as_nanos() as f64 / n as f64;
    let t = Instant::now();
    for _ in 0..n / 10 {
        pyroscope_core::tag_wrapper(&[("vehicle", "car")], || std::hint::black_box(1));
    }
    let wrapper = t.elapsed().as_nanos() as f64 / (n / 10) as f64;
    (enter, wrapper)
}

fn encode_ms() -> f64 {
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut b =
            ProfileBuilder::new(&[("samples", "count"), ("cpu", "nanoseconds")], ("cpu", "nanoseconds"), 10_000_000);
        let names: Vec<String> = (0..2000).map(|i| format!("crate::module::function_{i}")).collect();
        for s in 0..10_000u64 {
            let locs: Vec<u64> = (0..20u64)
                .map(|d| {
                    let f = ((s * 31 + d * 977) % 2000) as usize;
                    // Stacks are distinct, frames are shared: 2,000 code addresses in all.
                    let key = 0x1000 + f as u64;
                    b.location(key, key, || vec![(names[f].as_str(), "src/lib.rs", f as u32)])
                })
                .collect();
            b.sample(locs, vec![1, 10_000_000], &[("endpoint", "/e1")]);
        }
        let bytes = pyroscope_core::encode_gzip(&b.build());
        std::hint::black_box(bytes.len());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    median(times)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let m = child(&args[2], args[3].parse().expect("switch"), args[4].parse().expect("ipu"));
        println!("{} {} {} {}", m.cpu, m.wall, m.max_rss_kib, m.stop);
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let me = args[0].clone();
    let other = std::env::var("PYROSCOPE_RS_BENCH").ok().filter(|p| std::path::Path::new(p).exists());
    let ipu = calibrate();
    // `BENCH_ONLY=symbols`: the symbolizer's sections alone.
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "symbols") {
        lines_section(runs, ipu);
        short_lived_section();
        return;
    }
    println!("## Overhead (2 threads x {SECONDS} s of fixed CPU work, labels switched every slice; medians of {runs} runs)\n");
    println!(
        "| label switch every | profiler | CPU s | wall s | CPU ratio | wall ratio | peak RSS MiB | stop blocks s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let only_micro = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "micro");
    for switch_us in [5000u64, 100].into_iter().filter(|_| !only_micro) {
        let mut modes = vec![("none", me.clone()), ("ours", me.clone())];
        if let Some(o) = &other {
            modes.push(("pyroscope-rs", o.clone()));
        }
        let mut results: Vec<Vec<Measured>> = vec![Vec::new(); modes.len()];
        for r in 0..runs {
            for (i, (mode, bin)) in modes.iter().enumerate() {
                eprintln!("run {}/{runs}, switch {switch_us} µs, {mode}", r + 1);
                if let Some(m) = spawn(bin, mode, switch_us, ipu) {
                    results[i].push(m);
                }
            }
        }
        let base_cpu = median(results[0].iter().map(|m| m.cpu).collect());
        let base_wall = median(results[0].iter().map(|m| m.wall).collect());
        for (i, (mode, _)) in modes.iter().enumerate() {
            if results[i].is_empty() {
                continue;
            }
            let cpu = median(results[i].iter().map(|m| m.cpu).collect());
            let wall = median(results[i].iter().map(|m| m.wall).collect());
            let rss = median(results[i].iter().map(|m| m.max_rss_kib as f64).collect()) / 1024.0;
            let stop = median(results[i].iter().map(|m| m.stop).collect());
            let label = if switch_us >= 1000 { format!("{} ms", switch_us / 1000) } else { format!("{switch_us} µs") };
            println!(
                "| {label} | {mode} | {cpu:.3} | {wall:.3} | {:.4} | {:.4} | {rss:.1} | {stop:.3} |",
                cpu / base_cpu,
                wall / base_wall
            );
        }
    }
    for workload in &ALLOC_WORKLOADS {
        alloc_section(runs, workload);
    }
    lines_section(runs, ipu);
    short_lived_section();
    let (enter, wrapper) = label_switch_ns();
    println!("\n## Micro-benchmarks (medians)\n");
    println!("| what | figure |\n|---|---|");
    println!("| label switch, pre-built `LabelSet::enter` + guard drop | {enter:.1} ns |");
    println!("| `tag_wrapper(&[(k, v)], f)` (validate + intern lookup + switch) | {wrapper:.1} ns |");
    println!("| pprof build + gzip, 10,000 distinct stacks x 20 frames | {:.2} ms |", encode_ms());
    if let Some(ms) = top_360_files_ms(runs) {
        println!("| `pyroscope top` over 360 window files (one hour of 10 s windows), `--where region=eu-north` | {ms:.0} ms |");
    }
    let (us, hz, handler_us) = per_sample_us(ipu, runs);
    println!(
        "| time inside the signal handler per run (timed in the handler, unwind included), mean | {handler_us:.2} µs |"
    );
    println!("| CPU per sample (signal + unwind + ring + collector), 1 kHz requested, {hz:.0} Hz delivered per thread | {us:.2} µs |");
}
