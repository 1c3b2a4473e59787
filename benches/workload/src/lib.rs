//! The benchmark workload: `threads` threads each run `switches` slices of `iters` hash
//! iterations, switching labels (through the caller's `switch` hook) before every slice.
//! Fixed work, so CPU time with and without a profiler compares like for like.

use std::time::{Duration, Instant};

/// One run's measurements.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// Process CPU time (user + system, all threads), seconds.
    pub cpu: f64,
    /// Wall time, seconds.
    pub wall: f64,
    /// Peak RSS, KiB.
    pub max_rss_kib: i64,
    /// Time the profiler's stop/shutdown blocked, seconds (0 without a profiler).
    pub stop: f64,
}

#[inline(never)]
pub fn slice(iters: u64, seed: u64) -> u64 {
    let mut x = seed | 1;
    for i in 0..iters {
        x = std::hint::black_box(x.rotate_left(7) ^ i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    x
}

/// Iterations of [`slice`] per microsecond on this machine.
pub fn calibrate() -> f64 {
    slice(1_000_000, 1);
    let t = Instant::now();
    let n = 20_000_000;
    slice(n, 2);
    n as f64 / t.elapsed().as_secs_f64() / 1e6
}

fn cpu_seconds() -> (f64, i64) {
    // SAFETY: zeroed rusage is valid for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime) + tv(ru.ru_stime), ru.ru_maxrss)
}

/// Runs the workload; `switch(thread, i)` is called before slice `i` of each thread and
/// returns a guard dropped after the slice.
pub fn run<G>(threads: usize, switches: u64, iters: u64, switch: impl Fn(usize, u64) -> G + Sync) -> Measured {
    let (cpu0, _) = cpu_seconds();
    let t = Instant::now();
    std::thread::scope(|s| {
        for th in 0..threads {
            let switch = &switch;
            s.spawn(move || {
                let mut acc = 0u64;
                for i in 0..switches {
                    let _g = switch(th, i);
                    acc ^= slice(iters, i);
                }
                std::hint::black_box(acc);
            });
        }
    });
    let wall = t.elapsed().as_secs_f64();
    let (cpu1, rss) = cpu_seconds();
    Measured { cpu: cpu1 - cpu0, wall, max_rss_kib: rss, stop: 0.0 }
}

/// Median of a list.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Keeps a process alive a moment so a profiler's background threads settle.
pub fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

/// What a child process printed, and its peak resident memory over its whole life in KiB
/// (from `wait4`): unlike a figure the child prints itself, this covers its exit, where an
/// agent stops and symbolizes its last window (the symbolizer's debug info is the largest
/// thing a profiler adds once it has uploaded a window), and `atexit` handlers such as the
/// preload library's.
pub struct ChildRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    pub peak_rss_kib: i64,
}

/// Runs `cmd` to completion (see [`ChildRun`]).
pub fn run_child(cmd: &mut std::process::Command) -> Option<ChildRun> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().ok()?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let mut status = 0;
    // SAFETY: zeroed rusage is valid for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child (std does not reap it unless asked); valid pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    if pid <= 0 {
        return None;
    }
    Some(ChildRun {
        success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        peak_rss_kib: ru.ru_maxrss,
    })
}

/// A single-thread workload whose CPU time spreads over many functions (formatting, parsing,
/// sorting, maps, string search), so that a profiler names many distinct addresses across
/// the binary and its libraries: the symbolizer's worst case for memory. Returns a checksum.
pub fn varied(rounds: u64) -> u64 {
    use std::collections::{BTreeMap, HashMap};
    use std::fmt::Write;
    let mut acc = 0u64;
    for r in 0..rounds {
        let mut text = String::new();
        let mut map: HashMap<String, u64> = HashMap::new();
        let mut tree: BTreeMap<u64, String> = BTreeMap::new();
        for i in 0..200u64 {
            let key = format!("key-{r}-{i:08x}-{:.3}", i as f64 / 7.0);
            let _ = write!(text, "{key}={};", slice(50, i));
            *map.entry(key.clone()).or_default() += i;
            tree.insert(i.wrapping_mul(0x9e37_79b9), key);
        }
        let mut words: Vec<&str> = text.split(';').collect();
        words.sort_unstable();
        words.dedup();
        let parsed: u64 =
            words.iter().filter_map(|w| w.rsplit('=').next()?.parse::<u64>().ok()).fold(0, u64::wrapping_add);
        let found = text.matches("-0000").count() as u64 + text.find("key-").unwrap_or(0) as u64;
        let upper = text.to_uppercase();
        acc = acc
            .wrapping_add(parsed)
            .wrapping_add(found)
            .wrapping_add(map.len() as u64)
            .wrapping_add(tree.values().map(|v| v.len() as u64).sum::<u64>())
            .wrapping_add(upper.len() as u64)
            .wrapping_add(slice(20_000, r));
    }
    acc
}

/// CPU seconds of this process so far (all threads).
pub fn process_cpu_seconds() -> f64 {
    cpu_seconds().0
}

/// CPU seconds of this process's threads named `name` (as /proc shows it: 15 bytes at most),
/// from the scheduler's nanosecond count.
pub fn thread_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += schedstat.split_whitespace().next().and_then(|ns| ns.parse::<f64>().ok()).unwrap_or(0.0) / 1e9;
    }
    total
}
