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
