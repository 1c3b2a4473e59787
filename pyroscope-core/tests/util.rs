//! Helpers shared by the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pyroscope_core::proto::Profile;

/// A fresh empty folder under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pyroscope-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Burns CPU for `d` of this thread's CPU time.
#[inline(never)]
pub fn spin_cpu(d: Duration) -> u64 {
    let start = cpu_time();
    let mut x = 1u64;
    while cpu_time() - start < d {
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
    }
    x
}

/// The calling thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`), read by the thread itself.
pub fn cpu_time() -> Duration {
    let mut ts = libc_timespec();
    // SAFETY: valid pointer to a timespec.
    unsafe { clock_gettime(3, &mut ts) }; // CLOCK_THREAD_CPUTIME_ID
    Duration::new(ts.0 as u64, ts.1 as u32)
}

#[repr(C)]
pub struct Timespec(i64, i64);
fn libc_timespec() -> Timespec {
    Timespec(0, 0)
}
extern "C" {
    fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
}

/// What a thread's own clocks say about a stretch of its work, read by the thread itself: its
/// CPU time, and how long it was runnable but waiting for a CPU (the kernel's schedstat).
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    pub cpu: Duration,
    pub waited: Duration,
}

impl Clock {
    /// The calling thread's clocks now.
    pub fn now() -> Clock {
        Clock { cpu: cpu_time(), waited: run_queue_wait() }
    }

    /// The calling thread's clocks since `self` (taken on the same thread).
    pub fn elapsed(self) -> Clock {
        let now = Clock::now();
        Clock { cpu: now.cpu.saturating_sub(self.cpu), waited: now.waited.saturating_sub(self.waited) }
    }

    /// The threads waited for a CPU more than twice as long as they ran: about three times as
    /// many runnable threads as CPUs or more, where Linux loses CPU timer expirations
    /// (docs/signals-and-stacks.md). Three spinning threads on two idle CPUs wait half as long
    /// as they run.
    pub fn overloaded(self) -> bool {
        self.waited > self.cpu * 2
    }
}

impl std::ops::Add for Clock {
    type Output = Clock;
    fn add(self, o: Clock) -> Clock {
        Clock { cpu: self.cpu + o.cpu, waited: self.waited + o.waited }
    }
}

impl std::iter::Sum for Clock {
    fn sum<I: Iterator<Item = Clock>>(iter: I) -> Clock {
        iter.fold(Clock::default(), |a, b| a + b)
    }
}

/// Time the calling thread spent runnable on a run queue (second field of
/// `/proc/thread-self/schedstat`); zero where the kernel does not report it.
fn run_queue_wait() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(text.split_whitespace().nth(1).and_then(|w| w.parse().ok()).unwrap_or(0))
}

/// Compares CPU time found in a profile (`sampled`, nanoseconds) with the sampled threads' own
/// clocks (`truth`). Panics above `high` times the truth plus two periods (a profiler must
/// never invent CPU); below `low` times the truth minus two periods, returns why.
pub fn cpu_within(what: &str, sampled: i64, truth: Clock, period: Duration, low: f64, high: f64) -> Result<(), String> {
    let (s, t, p) = (sampled as f64, truth.cpu.as_nanos() as f64, period.as_nanos() as f64);
    eprintln!(
        "{what}: sampled {:.0} ms, threads' CPU clocks {:.0} ms ({:+.1}%), waited for a CPU {:.0} ms",
        s / 1e6,
        t / 1e6,
        (s - t) / t * 100.0,
        truth.waited.as_secs_f64() * 1e3
    );
    assert!(s <= t * high + 2.0 * p, "{what}: sampled {s} ns, more than {high} x the threads' {t} ns of CPU");
    if s >= t * low - 2.0 * p {
        Ok(())
    } else {
        Err(format!("{what}: sampled {s} ns, less than {low} x the threads' {t} ns of CPU"))
    }
}

/// [`cpu_within`] for tests whose point is not the amount: when the machine was overloaded,
/// where the kernel loses timer expirations, some samples are enough.
pub fn check_cpu(what: &str, sampled: i64, truth: Clock, period: Duration, low: f64, high: f64) {
    if let Err(e) = cpu_within(what, sampled, truth, period, low, high) {
        assert!(truth.overloaded() && sampled > 0, "{e}");
        eprintln!("{e}: the machine was overloaded, lost timer expirations allowed");
    }
}

/// Every profile file in `dir`, decoded.
pub fn read_profiles(dir: &Path) -> Vec<(String, Profile)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".pb.gz") {
            out.push((name, pyroscope_core::decode_pprof(&std::fs::read(&path).unwrap()).unwrap()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// A decoded sample: function names root-first, values, labels.
#[derive(Debug, Clone)]
pub struct Flat {
    pub stack: Vec<String>,
    pub values: Vec<i64>,
    pub labels: BTreeMap<String, String>,
}

pub fn flatten(p: &Profile) -> Vec<Flat> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let func = |id: u64| p.function.iter().find(|f| f.id == id).map(|f| s(f.name)).unwrap();
    p.sample
        .iter()
        .map(|smp| {
            let mut stack = Vec::new();
            for lid in &smp.location_id {
                let loc = p.location.iter().find(|l| l.id == *lid).unwrap();
                for line in &loc.line {
                    stack.push(func(line.function_id));
                }
            }
            stack.reverse();
            Flat { stack, values: smp.value.clone(), labels: smp.label.iter().map(|l| (s(l.key), s(l.str))).collect() }
        })
        .collect()
}

/// Waits until `f` holds, at most `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Index of the first frame whose name ends with `suffix`.
pub fn find(stack: &[String], suffix: &str) -> Option<usize> {
    stack.iter().position(|f| f.ends_with(suffix))
}
