//! Signal-safety stress test. At 1 kHz (tick-bound) per-thread CPU timers, for
//! `STRESS_SECONDS` (default 20): dozens of short-lived threads, allocation storms, lock storms,
//! dlopen/dlclose of a C library in a loop, and C code without frame pointers, all under the
//! sampling allocator with a small mean interval (16 KiB), so the allocation hook's sampled
//! path (unwinding, ring, live set) runs constantly between and under the timer signals.
//! Passes when nothing crashes or deadlocks (a watchdog aborts), the handler allocates nothing,
//! allocations are sampled and named, and stacks stay correct: samples in `c_leaf_spin` carry
//! `c_middle` and `c_outer` above them.

use std::ffi::CString;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pyroscope_core::{AgentBuilder, LabelSet};

extern "C" {
    fn c_outer(ns: u64) -> u64;
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Tripwire: counts every allocation made while the profiler's signal handler runs on the
/// allocating thread (the handler must make none), then hands it to the sampling allocator.
struct Tripwire;
static INNER: pyroscope_core::SamplingAllocator<std::alloc::System> =
    pyroscope_core::SamplingAllocator::new(std::alloc::System);
static IN_HANDLER_ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the sampling allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for Tripwire {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        if pyroscope_core::in_signal_handler() {
            IN_HANDLER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours, passed through.
        unsafe { INNER.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        if pyroscope_core::in_signal_handler() {
            IN_HANDLER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours, passed through.
        unsafe { INNER.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        if pyroscope_core::in_signal_handler() {
            IN_HANDLER_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours, passed through.
        unsafe { INNER.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Tripwire = Tripwire;

/// One allocation of the storm (named, so the memory profile can be checked).
#[inline(never)]
fn storm_alloc(n: usize) -> Vec<u8> {
    vec![n as u8; 16 + (n * 7919) % 4096]
}

fn main() {
    let secs: u64 = std::env::var("STRESS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let dir = std::env::temp_dir().join(format!("pyroscope-stress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Watchdog: a deadlock anywhere ends the run with a failure instead of hanging CI.
    let deadline = secs + 30;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(deadline));
        eprintln!("stress: watchdog fired after {deadline} s: deadlock?");
        std::process::abort();
    });
    let agent = AgentBuilder::new("stress")
        .export_dir(&dir)
        .sample_rate(1000)
        .alloc_sample_bytes(16 * 1024)
        .upload_interval(Duration::from_secs(5))
        .start()
        .expect("start agent");
    let labels: Vec<LabelSet> =
        (0..8).map(|i| LabelSet::new(&[("worker", format!("w{i}"))]).expect("labels")).collect();
    let threads_made = Arc::new(AtomicU64::new(0));
    let dl_cycles = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();

    // Thread churn: short-lived threads, each doing a little work with labels.
    for _ in 0..2 {
        let (made, labels) = (threads_made.clone(), labels.clone());
        handles.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !STOP.load(Ordering::Relaxed) {
                let batch: Vec<_> = (0..24)
                    .map(|k| {
                        let set = labels[(i + k) % labels.len()].clone();
                        std::thread::spawn(move || {
                            let _g = set.enter();
                            // SAFETY: plain C function, no preconditions.
                            unsafe { c_outer(300_000) }
                        })
                    })
                    .collect();
                for b in batch {
                    let _ = b.join();
                }
                made.fetch_add(24, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    // Allocation storm: the handler interrupts malloc/free constantly.
    for set in labels.iter().take(2) {
        let set = set.clone();
        handles.push(std::thread::spawn(move || {
            let _g = set.enter();
            let mut keep: Vec<Vec<u8>> = Vec::new();
            let mut n = 0usize;
            while !STOP.load(Ordering::Relaxed) {
                keep.push(storm_alloc(n));
                if keep.len() > 512 {
                    keep.drain(..256);
                }
                n += 1;
            }
            std::hint::black_box(keep.len());
        }));
    }
    // Lock storm: heavy contention on one mutex.
    let lock = Arc::new(Mutex::new(0u64));
    for _ in 0..3 {
        let lock = lock.clone();
        handles.push(std::thread::spawn(move || {
            while !STOP.load(Ordering::Relaxed) {
                let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
                *g = g.wrapping_add(1);
            }
        }));
    }
    // dlopen/dlclose loop calling into the library between.
    {
        let cycles = dl_cycles.clone();
        handles.push(std::thread::spawn(move || {
            let path = CString::new(env!("CWORK_SO")).expect("path");
            let sym = CString::new("d_outer").expect("sym");
            while !STOP.load(Ordering::Relaxed) {
                // SAFETY: loading our own test library; the symbol has the declared signature.
                unsafe {
                    let h = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
                    assert!(!h.is_null(), "dlopen failed");
                    let f = libc::dlsym(h, sym.as_ptr());
                    assert!(!f.is_null(), "dlsym failed");
                    let f: extern "C" fn(u64) -> u64 = std::mem::transmute(f);
                    std::hint::black_box(f(2_000_000));
                    libc::dlclose(h);
                }
                cycles.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Steady C workers for the stack-correctness check.
    for _ in 0..2 {
        handles.push(std::thread::spawn(move || {
            while !STOP.load(Ordering::Relaxed) {
                // SAFETY: plain C function, no preconditions.
                std::hint::black_box(unsafe { c_outer(5_000_000) });
            }
        }));
    }

    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        eprint!(
            "\rstress: {:>3}/{secs} s, {} threads made, {} dlopen cycles",
            start.elapsed().as_secs(),
            threads_made.load(Ordering::Relaxed),
            dl_cycles.load(Ordering::Relaxed)
        );
    }
    eprintln!();
    STOP.store(true, Ordering::SeqCst);
    for h in handles {
        let _ = h.join();
    }
    let stats = agent.stop();
    eprintln!("stress: {stats:?}");

    // Check the stacks.
    let (mut leaf, mut full, mut total) = (0i64, 0i64, 0i64);
    let (mut dl_leaf, mut dl_full) = (0i64, 0i64);
    let (mut storm_bytes, mut alloc_bytes) = (0i64, 0i64);
    for entry in std::fs::read_dir(&dir).expect("profiles dir") {
        let path = entry.expect("entry").path();
        let p = pyroscope_core::decode_pprof(&std::fs::read(&path).expect("read")).expect("decode our own profile");
        let memory = path.to_string_lossy().contains(".memory.");
        let name = |id: u64| {
            let f = p.function.iter().find(|f| f.id == id).expect("function");
            p.string_table[f.name as usize].clone()
        };
        for s in &p.sample {
            if memory {
                // alloc_space: the storm's allocations, named.
                alloc_bytes += s.value[1];
                let named = s.location_id.iter().any(|l| {
                    p.location.iter().find(|x| x.id == *l).expect("location").line.iter().any(|ln| {
                        let f = p.function.iter().find(|f| f.id == ln.function_id).expect("function");
                        p.string_table[f.name as usize].ends_with("storm_alloc")
                    })
                });
                if named {
                    storm_bytes += s.value[1];
                }
                continue;
            }
            total += s.value[0];
            let stack: Vec<String> = s
                .location_id
                .iter()
                .flat_map(|l| {
                    p.location.iter().find(|x| x.id == *l).expect("location").line.iter().map(|ln| name(ln.function_id))
                })
                .collect();
            if stack.first().is_some_and(|f| f == "d_leaf_spin") {
                dl_leaf += s.value[0];
                if stack.get(1).is_some_and(|f| f == "d_middle") && stack.get(2).is_some_and(|f| f == "d_outer") {
                    dl_full += s.value[0];
                }
            }
            if stack.first().is_some_and(|f| f == "c_leaf_spin") {
                leaf += s.value[0];
                if stack.get(1).is_some_and(|f| f == "c_middle") && stack.get(2).is_some_and(|f| f == "c_outer") {
                    full += s.value[0];
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let ratio = full as f64 / leaf.max(1) as f64;
    let bad_allocs = IN_HANDLER_ALLOCS.load(Ordering::Relaxed);
    eprintln!(
        "stress: {} handler runs, mean {:.2} µs of wall time (preemption included); {} allocations in all, {bad_allocs} inside the handler",
        stats.handler_runs,
        stats.handler_ns as f64 / stats.handler_runs.max(1) as f64 / 1e3,
        ALLOCS.load(Ordering::Relaxed)
    );
    eprintln!("stress: {total} samples, {leaf} in c_leaf_spin, {:.1}% with the full C chain", ratio * 100.0);
    // The dlopen'ed copy moves every cycle; samples taken before the collector notices a new
    // load (at most one 50 ms tick) are cut short, by design, never wrong.
    eprintln!(
        "stress: {dl_leaf} in the dlopen'ed d_leaf_spin, {:.1}% with the full chain",
        100.0 * dl_full as f64 / dl_leaf.max(1) as f64
    );
    let sampled = pyroscope_core::test_hooks::alloc_samples();
    eprintln!(
        "stress: {sampled} allocations sampled, {:.0} MiB allocated by the estimate, {:.1}% of it in storm_alloc; {} stale timer signals dropped",
        alloc_bytes as f64 / (1 << 20) as f64,
        100.0 * storm_bytes as f64 / alloc_bytes.max(1) as f64,
        pyroscope_core::test_hooks::stale_signals()
    );
    let ok = bad_allocs == 0
        && sampled > 10_000
        && storm_bytes > 0
        && total > 1000
        && leaf > 200
        && ratio >= 0.95
        && threads_made.load(Ordering::Relaxed) > 100
        && dl_cycles.load(Ordering::Relaxed) > 10;
    if ok {
        println!("1 passed, 0 failed");
    } else {
        println!("0 passed, 1 failed");
        std::process::exit(1);
    }
}
