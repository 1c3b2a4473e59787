//! The allocation-heavy workload: `THREADS` threads each make `ALLOCS` allocations of 16 to
//! 1,024 bytes, keeping the last 1,024 of each thread alive (so frees interleave), and the
//! driver's measurements. Both binaries run exactly this; only their global allocator differs.

use std::time::Instant;

/// Threads allocating at once.
pub const THREADS: usize = 2;
/// Allocations per thread (about 5 s of CPU each on the reference machine, so that one-time
/// costs such as symbolizing the binary weigh as little as they would in a service);
/// `ALLOC_BENCH_ALLOCS` overrides it.
pub const ALLOCS: u64 = 200_000_000;

fn allocs() -> u64 {
    std::env::var("ALLOC_BENCH_ALLOCS").ok().and_then(|v| v.parse().ok()).unwrap_or(ALLOCS)
}

/// Runs the workload; prints `cpu_s wall_s max_rss_kib stop_s allocations bytes lost` on stdout,
/// `lost` being the samples the agent dropped (-1 without an agent in this binary).
pub fn main_with(profile: bool) {
    let agent = profile.then(|| {
        let dir = std::env::temp_dir().join(format!("alloc-bench-{}", std::process::id()));
        pyroscope_core::AgentBuilder::from_env()
            .application_name("alloc-bench")
            .export_dir(&dir)
            .start()
            .expect("start agent")
    });
    bench_workload::settle();
    // One slice per thread: `work` runs as the per-slice hook, the slice itself is empty.
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let mut m = bench_workload::run(THREADS, 1, 0, |_, _| {
        bytes.fetch_add(work(), std::sync::atomic::Ordering::Relaxed);
    });
    let t = Instant::now();
    let mut lost = -1;
    if let Some(a) = agent {
        let stats = a.stop();
        lost = stats.samples_lost as i64;
        if std::env::var_os("ALLOC_BENCH_STATS").is_some() {
            eprintln!("{stats:?}");
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("alloc-bench-{}", std::process::id())));
    }
    m.stop = t.elapsed().as_secs_f64();
    println!(
        "{} {} {} {} {} {} {lost}",
        m.cpu,
        m.wall,
        m.max_rss_kib,
        m.stop,
        THREADS as u64 * allocs(),
        bytes.into_inner()
    );
}

/// One thread's share; returns the bytes it allocated.
fn work() -> u64 {
    let mut ring: Vec<Vec<u8>> = Vec::with_capacity(1024);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = 0;
    for i in 0..allocs() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = 16 + (x % 1009) as usize;
        bytes += len as u64;
        let v = vec![i as u8; len];
        if ring.len() < 1024 {
            ring.push(v);
        } else {
            ring[(i % 1024) as usize] = v;
        }
    }
    std::hint::black_box(ring.len());
    bytes
}
