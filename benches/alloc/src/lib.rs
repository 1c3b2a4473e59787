//! The allocation-heavy workloads and the driver's measurements. Both binaries run exactly
//! these; only their global allocator differs.
//!
//! - `churn` (the default): `THREADS` threads each make `ALLOCS` allocations of 16 to 1,024
//!   bytes, keeping the last 1,024 of each thread alive (so frees interleave). Nothing but
//!   `malloc`, `memset` and `free`: the worst case for any allocation hook.
//! - `service` (`ALLOC_BENCH_WORKLOAD=service`): each thread handles requests that build a map
//!   of 8 formatted keys to vectors, render it into a string and sort its keys: small
//!   allocations mixed with the work that uses them, as in a request handler.

use std::time::Instant;

/// Threads allocating at once.
pub const THREADS: usize = 2;
/// Allocations per thread (about 5 s of CPU each on the reference machine, so that one-time
/// costs such as symbolizing the binary weigh as little as they would in a service);
/// `ALLOC_BENCH_ALLOCS` overrides it.
pub const ALLOCS: u64 = 200_000_000;

fn allocs() -> u64 {
    env_u64("ALLOC_BENCH_ALLOCS", ALLOCS)
}

/// Requests per thread in the `service` workload (about 5 s of CPU each on the reference
/// machine); `ALLOC_BENCH_REQUESTS` overrides it.
pub const REQUESTS: u64 = 3_000_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
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
    let service = std::env::var("ALLOC_BENCH_WORKLOAD").is_ok_and(|w| w == "service");
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let mut m = bench_workload::run(THREADS, 1, 0, |_, _| {
        let b = if service { serve(env_u64("ALLOC_BENCH_REQUESTS", REQUESTS)) } else { work() };
        bytes.fetch_add(b, std::sync::atomic::Ordering::Relaxed);
    });
    // The service workload's allocations are counted outside (see the bench driver).
    let (count, bytes) =
        if service { (-1, -1) } else { ((THREADS as u64 * allocs()) as i64, bytes.into_inner() as i64) };
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
    println!("{} {} {} {} {count} {bytes} {lost}", m.cpu, m.wall, m.max_rss_kib, m.stop);
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

/// One thread's share of the `service` workload; returns a checksum.
fn serve(requests: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..requests {
        let mut fields: std::collections::HashMap<String, Vec<u32>> = std::collections::HashMap::new();
        for k in 0..8u64 {
            let len = 16 + ((i * 7 + k * 13) % 48) as u32;
            fields.insert(format!("field-{k}-{}", i % 97), (0..len).map(|x| x ^ i as u32).collect());
        }
        let mut body = String::new();
        for (k, v) in &fields {
            body.push_str(k);
            body.push(':');
            body.push_str(&v.iter().map(|&x| x as u64).sum::<u64>().to_string());
            body.push(',');
        }
        let mut keys: Vec<&String> = fields.keys().collect();
        keys.sort();
        sum = sum.wrapping_add(body.len() as u64 + keys[0].len() as u64);
    }
    std::hint::black_box(sum)
}
