//! Memory profiles: the four types, unbiased estimates within 10% of the truth, labels.

use pyroscope_core::AgentBuilder;

use crate::util::*;

const BIG: usize = 64 * 1024;
const SMALL: usize = 1024;

#[inline(never)]
fn alloc_big(n: usize) -> Vec<Vec<u8>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        v.push(std::hint::black_box(vec![i as u8; BIG]));
    }
    v
}

#[inline(never)]
fn alloc_small_temporary(n: usize) -> usize {
    let mut total = 0;
    for i in 0..n {
        let v = std::hint::black_box(vec![i as u8; SMALL]);
        total += v.len();
    }
    total
}

/// Sums the four values of every sample whose stack contains `function`.
fn sums(flat: &[Flat], function: &str) -> [f64; 4] {
    let mut out = [0.0; 4];
    for f in flat.iter().filter(|f| find(&f.stack, function).is_some()) {
        for (o, v) in out.iter_mut().zip(&f.values) {
            *o += *v as f64;
        }
    }
    out
}

fn within(estimate: f64, truth: f64, what: &str) {
    let err = (estimate - truth).abs() / truth;
    eprintln!("{what}: estimate {estimate:.0}, truth {truth:.0}, {:+.2}%", (estimate - truth) / truth * 100.0);
    assert!(err <= 0.10, "{what}: estimate {estimate:.0} vs truth {truth:.0} ({:.1}% off)", err * 100.0);
}

#[test]
fn memory_estimates_are_within_ten_percent() {
    let _g = crate::agent_lock();
    let dir = temp_dir("memory");
    let agent = AgentBuilder::new("mem-app")
        .export_dir(&dir)
        .alloc_sample_bytes(64 * 1024)
        .alloc_seed(42)
        .tag("region", "us-east")
        .start()
        .unwrap();
    // Sizes that put 10% at over five standard deviations of the sampling error (the per-thread
    // seed mixes in the thread id, so every run draws differently).
    let (n_big, n_small) = (3200, 204_800);
    let kept = std::thread::spawn(move || {
        pyroscope_core::tag_wrapper(&[("job", "leak")], || {
            let kept = alloc_big(n_big);
            alloc_small_temporary(n_small);
            kept
        })
    })
    .join()
    .unwrap();
    // Freed on another thread than the one that allocated it: half of the big blocks.
    let (kept, freed): (Vec<_>, Vec<_>) = kept.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    std::thread::spawn(move || drop(freed)).join().unwrap();
    let stats = agent.stop();
    let profiles = read_profiles(&dir);
    let mem: Vec<_> = profiles.iter().filter(|(n, _)| n.contains(".memory.")).collect();
    assert!(!mem.is_empty(), "{:?} {stats:?}", profiles.iter().map(|p| &p.0).collect::<Vec<_>>());
    for (_, p) in &mem {
        let s = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<_> = p.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
        assert_eq!(
            types,
            vec![
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes")
            ]
        );
        assert_eq!((s(p.period_type.unwrap().r#type), p.period), ("space", 64 * 1024));
    }
    // alloc_* are per window, inuse_* the live set at the end of each window: sum the first over
    // however many windows the run took, read the second from the last one (names sort by time).
    let flat: Vec<Flat> = mem.iter().flat_map(|(_, p)| flatten(p)).collect();
    let last = flatten(&mem[mem.len() - 1].1);
    let (big, big_live) = (sums(&flat, "alloc_big"), sums(&last, "alloc_big"));
    within(big[0], n_big as f64, "alloc_objects in alloc_big");
    within(big[1], (n_big * BIG) as f64, "alloc_space in alloc_big");
    within(big_live[2], (n_big / 2) as f64, "inuse_objects in alloc_big");
    within(big_live[3], (n_big / 2 * BIG) as f64, "inuse_space in alloc_big");
    let (small, small_live) = (sums(&flat, "alloc_small_temporary"), sums(&last, "alloc_small_temporary"));
    within(small[0], n_small as f64, "alloc_objects in alloc_small_temporary");
    within(small[1], (n_small * SMALL) as f64, "alloc_space in alloc_small_temporary");
    assert!(small_live[3] < 0.02 * (n_small * SMALL) as f64, "freed memory counted as in use: {small_live:?}");
    for f in flat.iter().filter(|f| find(&f.stack, "alloc_big").is_some()) {
        assert_eq!(f.labels.get("job").map(String::as_str), Some("leak"), "{f:?}");
        assert_eq!(f.labels.get("region").map(String::as_str), Some("us-east"));
        let leaf = f.stack.last().unwrap();
        assert!(
            !leaf.contains("pyroscope_core::alloc") && !leaf.contains("record") && !leaf.contains("__rust_alloc"),
            "plumbing frames left: {:?}",
            f.stack
        );
    }
    drop(kept);
}

#[test]
fn memory_can_be_turned_off() {
    let _g = crate::agent_lock();
    let dir = temp_dir("memory-off");
    let agent = AgentBuilder::new("mem-off").export_dir(&dir).memory(false).start().unwrap();
    std::hint::black_box(alloc_big(64));
    agent.stop();
    assert!(read_profiles(&dir).iter().all(|(n, _)| !n.contains(".memory.")));
}

#[inline(never)]
fn hand_frames_to_profiler(agent: &pyroscope_core::Agent, frames: &[pyroscope_core::FrameId], n: usize) {
    for _ in 0..n {
        agent.add_cpu_sample(frames, &pyroscope_core::LabelSet::empty(), 1);
    }
}

/// Blocks an application thread allocates and a profiler thread frees (the frames handed to
/// `add_cpu_sample`, dropped by the collector) are not in use any more.
#[test]
fn blocks_freed_by_the_profiler_leave_in_use_memory() {
    let _g = crate::agent_lock();
    let dir = temp_dir("memory-own-free");
    let agent = AgentBuilder::new("own-free").export_dir(&dir).alloc_sample_bytes(512).alloc_seed(7).start().unwrap();
    let frames: Vec<_> =
        (0..64).map(|i| pyroscope_core::FrameId::new(&format!("frame{i}"), "frames.rs", i).unwrap()).collect();
    // From a thread started now: its first sampling interval is drawn at this agent's 512 bytes
    // (this thread drew its own at an earlier agent's mean, hundreds of KiB, which can outlast
    // all that is handed over).
    let agent = std::thread::spawn(move || {
        hand_frames_to_profiler(&agent, &frames, 4000);
        agent
    })
    .join()
    .unwrap();
    let stats = agent.stop();
    let memory: Vec<_> = read_profiles(&dir).into_iter().filter(|(n, _)| n.contains(".memory.")).collect();
    let allocated: f64 = memory.iter().map(|(_, p)| sums(&flatten(p), "hand_frames_to_profiler")[1]).sum();
    // About 2 MB handed over, sampled every 512 bytes. What the test needs is that sampling
    // happened, for the in-use check below.
    assert!(allocated > 1e5, "the handed frames were not sampled: {allocated} bytes, {stats:?}");
    // In use at the end of the last window: everything the collector dropped is gone.
    let (name, last) = memory.last().unwrap();
    let in_use = sums(&flatten(last), "hand_frames_to_profiler");
    assert_eq!(in_use[3], 0.0, "{name}: blocks freed by the profiler still in use: {in_use:?}");
}

/// Resident memory of this process, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

#[inline(never)]
fn short_thread_work() -> usize {
    // The first allocation only draws the thread's first sampling interval; a 16 KiB block is
    // then sampled with a 4 KiB mean interval 98% of the time (left untouched: only the
    // profiler's work is measured).
    std::hint::black_box(Vec::<u8>::with_capacity(16)).capacity()
        + std::hint::black_box(Vec::<u8>::with_capacity(16 << 10)).capacity()
}

/// Starts and joins `n` threads, eight at a time. Of every four, one is sampled by a CPU timer
/// from its start (thread state, unwind cache, handler stack), one takes an allocation sample
/// (the allocation hook's unwind cache), and two only start and stop (a mix that keeps 100,000
/// threads within 30 s on a busy 2-core machine in a debug build).
fn churn(n: usize) {
    for _ in 0..n / 8 {
        let batch: Vec<_> = (0..8)
            .map(|i| {
                std::thread::Builder::new()
                    .stack_size(512 << 10)
                    .spawn(move || match i % 4 {
                        0 => {
                            pyroscope_core::register_thread();
                            0
                        }
                        1 => short_thread_work(),
                        _ => 0,
                    })
                    .unwrap()
            })
            .collect();
        for t in batch {
            t.join().unwrap();
        }
    }
}

/// 100,000 short threads: what the profiler keeps per thread (unwind caches, handler stack,
/// thread state) is freed when the thread exits, so resident memory stays bounded.
#[test]
fn short_lived_threads_leave_no_memory_behind() {
    let _g = crate::agent_lock();
    let dir = temp_dir("memory-churn");
    let agent = AgentBuilder::new("churn")
        .export_dir(&dir)
        .alloc_sample_bytes(4 << 10)
        // No window closes during the test: the symbolizer's memory is not what is measured.
        .upload_interval(std::time::Duration::from_secs(3600))
        .start()
        .unwrap();
    let start = std::time::Instant::now();
    let before = rss_bytes();
    // Warm-up: allocator arenas, the thread stack cache, the profiler's tables.
    churn(5_000);
    let base = rss_bytes();
    let mut peak = base;
    const LIMIT: u64 = 32 << 20;
    for _ in 0..95 {
        churn(1_000);
        peak = peak.max(rss_bytes());
        if peak > base + LIMIT {
            break;
        }
    }
    let end = rss_bytes();
    let stats = agent.stop();
    eprintln!(
        "100k threads in {:.1} s: RSS {} MiB before, {} MiB after warm-up, peak {} MiB, end {} MiB; {stats:?}",
        start.elapsed().as_secs_f64(),
        before >> 20,
        base >> 20,
        peak >> 20,
        end >> 20
    );
    assert!(peak - base < LIMIT, "RSS grew by {} MiB over 95,000 threads", (peak - base) >> 20);
    // Threads that exited since the collector's last scan: their caches are gone already.
    let above = peak.saturating_sub(before);
    assert!(above < 12 << 20, "RSS peaked {} MiB above its start", above >> 20);
}

#[test]
fn memory_only_sends_no_cpu_and_arms_no_timer() {
    let _g = crate::agent_lock();
    let dir = temp_dir("memory-only");
    let agent =
        AgentBuilder::new("mem-only").export_dir(&dir).cpu(false).alloc_sample_bytes(16 * 1024).start().unwrap();
    let kept = std::thread::spawn(|| {
        spin_cpu(std::time::Duration::from_millis(200));
        alloc_big(256)
    })
    .join()
    .unwrap();
    let stats = agent.stop();
    assert_eq!((stats.samples, stats.threads_sampled), (0, 0), "no CPU sampled: {stats:?}");
    let profiles = read_profiles(&dir);
    assert!(
        profiles.iter().all(|(n, _)| !n.contains(".process_cpu.")),
        "{:?}",
        profiles.iter().map(|p| &p.0).collect::<Vec<_>>()
    );
    let inuse: i64 = profiles
        .iter()
        .filter(|(n, _)| n.contains(".memory."))
        .flat_map(|(_, p)| flatten(p))
        .filter(|f| find(&f.stack, "alloc_big").is_some())
        .map(|f| f.values[3])
        .sum();
    assert!(inuse > 0, "memory profiles still come: {stats:?}");
    drop(kept);
}
