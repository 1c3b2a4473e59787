//! CPU profiles written by the embedded default: functions, values, labels.

use std::time::Duration;

use pyroscope_core::{AgentBuilder, Error, LabelSet};

use crate::util::*;

#[inline(never)]
fn mutex_lock(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d))
}

#[inline(never)]
fn check_driver_availability(d: Duration) -> u64 {
    std::hint::black_box(mutex_lock(d)) + 1
}

#[inline(never)]
fn find_nearest_vehicle(vehicle: &str, d: Duration) -> u64 {
    pyroscope_core::tag_wrapper(&[("vehicle", vehicle)], || std::hint::black_box(check_driver_availability(d)) + 1)
}

#[inline(never)]
fn unlabelled_work(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d)) + 2
}

#[test]
fn cpu_profile_on_disk_has_functions_values_and_labels() {
    let _g = crate::agent_lock();
    let dir = temp_dir("cpu");
    let agent = AgentBuilder::new("rideshare-test")
        .export_dir(&dir)
        .tag("region", "eu-north")
        .sample_rate(100)
        .start()
        .unwrap();
    let workers: Vec<_> = ["car", "bike"]
        .into_iter()
        .map(|v| {
            std::thread::spawn(move || {
                let mut in_fnv = Clock::default();
                for _ in 0..10 {
                    let t = Clock::now();
                    find_nearest_vehicle(v, Duration::from_millis(60));
                    in_fnv = in_fnv + t.elapsed();
                    unlabelled_work(Duration::from_millis(20));
                }
                in_fnv
            })
        })
        .collect();
    let truth: Clock = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let stats = agent.stop();
    eprintln!("{stats:?}");

    // However many windows the run took on a busy machine.
    let profiles: Vec<_> = read_profiles(&dir).into_iter().filter(|(n, _)| n.contains(".process_cpu.")).collect();
    assert!(!profiles.is_empty(), "no CPU profile: {stats:?}");
    let mut flat = Vec::new();
    for (name, p) in &profiles {
        assert!(name.starts_with("rideshare-test.process_cpu.") && name.ends_with(".pb.gz"), "{name}");
        let s = |i: i64| p.string_table[i as usize].as_str();
        let types: Vec<_> = p.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
        assert_eq!(types, vec![("samples", "count"), ("cpu", "nanoseconds")]);
        assert_eq!(p.period, 10_000_000);
        assert!(p.duration_nanos > 0 && p.time_nanos > 0);
        flat.extend(flatten(p));
    }

    let mut in_fnv = 0;
    let mut chained = 0;
    let mut total = 0;
    for f in &flat {
        assert_eq!(f.values[1], f.values[0] * 10_000_000);
        assert_eq!(f.labels.get("region").map(String::as_str), Some("eu-north"), "static tag on every sample");
        total += f.values[0];
        if let Some(i) = find(&f.stack, "find_nearest_vehicle") {
            in_fnv += f.values[0];
            match f.labels.get("vehicle") {
                Some(v) => assert!(v == "car" || v == "bike"),
                // Only time inside the label call itself (before the label is set, or after it
                // is removed) may lack it.
                None => assert!(
                    f.stack.iter().any(|s| s.contains("pyroscope_core::labels") || s.contains("LabelGuard")),
                    "a sample inside find_nearest_vehicle without vehicle: {f:?}"
                ),
            }
            if let (Some(j), Some(k)) = (find(&f.stack, "check_driver_availability"), find(&f.stack, "mutex_lock")) {
                assert!(i < j && j < k, "root-first order: {:?}", f.stack);
                chained += f.values[0];
            }
        }
        if find(&f.stack, "unlabelled_work").is_some() {
            assert!(!f.labels.contains_key("vehicle"), "labels must not leak past tag_wrapper: {f:?}");
        }
    }
    // 2 threads x 10 x 60 ms = 1.2 s in find_nearest_vehicle, 0.4 s elsewhere: ~120 vs ~40 samples.
    eprintln!("samples in find_nearest_vehicle: {in_fnv} of {total}");
    check_cpu("find_nearest_vehicle", in_fnv * 10_000_000, truth, Duration::from_millis(10), 0.67, 1.1);
    assert!(chained as f64 >= 0.95 * in_fnv as f64, "complete chains: {chained} of {in_fnv}");
}

#[test]
fn labels_switch_without_losing_samples() {
    let _g = crate::agent_lock();
    let dir = temp_dir("switch");
    // At 1 kHz: each set's share rests on about 200 samples, not 20.
    let agent = AgentBuilder::new("switch").export_dir(&dir).sample_rate(1000).start().unwrap();
    let sets: Vec<LabelSet> = (0..4).map(|i| LabelSet::new(&[("endpoint", format!("e{i}"))]).unwrap()).collect();
    let clock = Clock::now();
    let start = cpu_time();
    let mut i = 0;
    while cpu_time() - start < Duration::from_millis(800) {
        let _guard = sets[i % 4].enter();
        spin_cpu(Duration::from_micros(100));
        i += 1;
    }
    let truth = clock.elapsed();
    agent.stop();
    let flat: Vec<Flat> = read_profiles(&dir).iter().flat_map(|(_, p)| flatten(p)).collect();
    let mut per = std::collections::BTreeMap::<String, i64>::new();
    for f in &flat {
        if let Some(e) = f.labels.get("endpoint") {
            *per.entry(e.clone()).or_default() += f.values[0];
        }
    }
    assert_eq!(per.len(), 4, "{per:?}");
    let total: i64 = per.values().sum();
    // 0.8 s at 1 kHz: about 800 samples, spread evenly over the four sets.
    eprintln!("{per:?}");
    check_cpu("labelled", total * 1_000_000, truth, Duration::from_millis(1), 0.75, 1.1);
    for v in per.values() {
        assert!(*v as f64 > total as f64 / 4.0 * 0.4, "{per:?}");
    }
}

#[test]
fn bad_settings_are_typed_errors() {
    let e = |b: AgentBuilder| b.build().unwrap_err();
    assert_eq!(e(AgentBuilder::new("")), Error::EmptyApplicationName);
    assert!(matches!(e(AgentBuilder::new("a").server_address("localhost:4040")), Error::InvalidServerAddress { .. }));
    assert!(matches!(e(AgentBuilder::new("a").sample_rate(0)), Error::InvalidSampleRate { .. }));
    assert!(matches!(e(AgentBuilder::new("a").tag("bad-name", "x")), Error::InvalidLabelName { .. }));
    assert!(matches!(e(AgentBuilder::new("a").tag("__name__", "x")), Error::ReservedLabelName { .. }));
    assert!(matches!(e(AgentBuilder::new("a").tag("k", "a,b")), Error::InvalidTagValue { .. }));
    assert!(matches!(e(AgentBuilder::new("a").upload_interval(Duration::ZERO)), Error::InvalidUploadInterval { .. }));
    assert!(matches!(e(AgentBuilder::new("a").header("Bad Header", "x")), Error::InvalidHeader { .. }));
    assert!(matches!(e(AgentBuilder::new("a").signal(libc_sigint())), Error::InvalidSignal { .. }));
}

fn libc_sigint() -> i32 {
    2
}

#[test]
fn only_one_agent_at_a_time() {
    let _g = crate::agent_lock();
    let dir = temp_dir("one");
    let a = AgentBuilder::new("one").export_dir(&dir).start().unwrap();
    assert_eq!(AgentBuilder::new("two").export_dir(&dir).start().unwrap_err(), Error::AlreadyRunning);
    drop(a);
    AgentBuilder::new("three").export_dir(&dir).start().unwrap().stop();
}

/// A builder from these variables only, as `from_env` reads the process environment (which
/// tests must not change: other tests' threads read it at the same time).
fn from_vars(vars: &[(&str, &str)]) -> AgentBuilder {
    let vars: std::collections::HashMap<String, String> =
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    AgentBuilder::from_vars(move |name| vars.get(name).cloned())
}

#[test]
fn settings_come_from_the_environment() {
    let mut vars = vec![
        ("PYROSCOPE_APPLICATION_NAME", "env-app"),
        ("PYROSCOPE_SERVER_ADDRESS", "http://127.0.0.1:4040"),
        ("PYROSCOPE_TAGS", "region=eu-north,az=b"),
        ("PYROSCOPE_SAMPLE_RATE", "250"),
        ("PYROSCOPE_UPLOAD_INTERVAL", "2.5"),
        ("PYROSCOPE_BASIC_AUTH_USER", "u"),
        ("PYROSCOPE_BASIC_AUTH_PASSWORD", "p"),
        ("PYROSCOPE_TENANT_ID", "t1"),
    ];
    let c = from_vars(&vars).build();
    vars[3].1 = "fast";
    let bad = from_vars(&vars).build();
    vars[3].1 = "250";
    vars[2].1 = "region";
    let bad_tags = from_vars(&vars).build();
    let c = c.unwrap();
    assert_eq!(c.application_name, "env-app");
    assert_eq!(c.sample_rate, 250);
    assert_eq!(c.upload_interval, Duration::from_millis(2500));
    assert_eq!(c.tags.get("region").map(String::as_str), Some("eu-north"));
    assert_eq!(c.tenant_id.as_deref(), Some("t1"));
    assert!(matches!(c.auth, pyroscope_core::Auth::Basic { .. }));
    assert!(!format!("{c:?}").contains("\"p\""), "password must not be printed: {c:?}");
    assert!(matches!(bad, Err(Error::InvalidEnv { var: "PYROSCOPE_SAMPLE_RATE", .. })));
    assert!(matches!(bad_tags, Err(Error::InvalidTagString { .. })));
    // Blank variables count as unset.
    let blank = from_vars(&[("PYROSCOPE_APPLICATION_NAME", "a"), ("PYROSCOPE_SAMPLE_RATE", " ")]).build().unwrap();
    assert_eq!(blank.sample_rate, 100);
}

#[test]
fn bindings_can_feed_their_own_frames() {
    let _g = crate::agent_lock();
    let dir = temp_dir("frames");
    let agent = AgentBuilder::new("py-app").export_dir(&dir).start().unwrap();
    let leaf = pyroscope_core::FrameId::new("mutex_lock", "rideshare/server.py", 21).unwrap();
    let root = pyroscope_core::FrameId::new("find_nearest_vehicle", "rideshare/server.py", 9).unwrap();
    let car = LabelSet::new(&[("vehicle", "car")]).unwrap();
    agent.add_cpu_sample(&[leaf, root], &car, 7);
    agent.stop();
    let flat: Vec<Flat> = read_profiles(&dir).iter().flat_map(|(_, p)| flatten(p)).collect();
    let f = flat.iter().find(|f| f.stack == ["find_nearest_vehicle", "mutex_lock"]).expect("fed sample");
    assert_eq!(f.values, vec![7, 70_000_000]);
    assert_eq!(f.labels.get("vehicle").map(String::as_str), Some("car"));
}

/// Up to this many runs of the accuracy test, when the kernel lost timer expirations under
/// overload (a third of runs, at worst, in docs/signals-and-stacks.md); a profiler that loses
/// samples itself fails them all.
const ACCURACY_ATTEMPTS: usize = 3;

#[test]
fn sampled_cpu_per_thread_matches_the_threads_cpu_clock() {
    let _g = crate::agent_lock();
    for attempt in 1..=ACCURACY_ATTEMPTS {
        let errors = accuracy_run(attempt);
        if errors.is_empty() {
            return;
        }
        let (overloaded, short): (Vec<_>, Vec<_>) = errors.into_iter().partition(|(clock, _)| clock.overloaded());
        assert!(short.is_empty(), "attempt {attempt}, not overloaded: {short:?}");
        assert!(attempt < ACCURACY_ATTEMPTS, "every attempt was short, the last one overloaded: {overloaded:?}");
        eprintln!("attempt {attempt}: short under overload, trying again: {overloaded:?}");
    }
}

/// Three threads with known CPU time (their own clocks), two labelled, competing for 2 cores;
/// returns the workers whose sampled CPU is more than 10% short of their clock.
fn accuracy_run(attempt: usize) -> Vec<(Clock, String)> {
    let dir = temp_dir(&format!("accuracy-{attempt}"));
    let agent = AgentBuilder::new("accuracy").export_dir(&dir).sample_rate(1000).memory(false).start().unwrap();
    let spin = |name: &'static str, ms: u64| {
        std::thread::spawn(move || {
            let start = Clock::now();
            pyroscope_core::tag_wrapper(&[("worker", name)], || spin_cpu(Duration::from_millis(ms)));
            start.elapsed()
        })
    };
    let (a, b, c) = (spin("a", 600), spin("b", 300), spin("c", 450));
    let truth: Vec<(&str, Clock)> = vec![("a", a.join().unwrap()), ("b", b.join().unwrap()), ("c", c.join().unwrap())];
    let stats = agent.stop();
    eprintln!("{stats:?}");
    let flat: Vec<Flat> = read_profiles(&dir).iter().flat_map(|(_, p)| flatten(p)).collect();
    let mut errors = Vec::new();
    for (name, clock) in truth {
        let sampled: i64 =
            flat.iter().filter(|f| f.labels.get("worker").map(String::as_str) == Some(name)).map(|f| f.values[1]).sum();
        if let Err(e) = cpu_within(&format!("worker {name}"), sampled, clock, Duration::from_millis(1), 0.9, 1.1) {
            errors.push((clock, e));
        }
    }
    errors
}

#[inline(never)]
fn exiting_worker(d: Duration) -> u64 {
    spin_cpu(d)
}

#[inline(never)]
fn replacing_worker(d: Duration) -> u64 {
    spin_cpu(d)
}

/// A thread that starts as a sampled one exits leaves the thread count as it was: the scan
/// must still list the threads (the exited thread's timer is dead), not wait for its backstop.
#[test]
fn a_thread_started_as_another_exits_is_sampled() {
    let _g = crate::agent_lock();
    for attempt in 1..=ACCURACY_ATTEMPTS {
        let dir = temp_dir(&format!("replacing-{attempt}"));
        let agent = AgentBuilder::new("replacing").export_dir(&dir).sample_rate(1000).memory(false).start().unwrap();
        // Neither thread registers itself (no labels): only a scan finds it.
        std::thread::spawn(|| exiting_worker(Duration::from_millis(300))).join().unwrap();
        let clock = std::thread::spawn(|| {
            let start = Clock::now();
            replacing_worker(Duration::from_millis(400));
            start.elapsed()
        })
        .join()
        .unwrap();
        agent.stop();
        let flat: Vec<Flat> = read_profiles(&dir).iter().flat_map(|(_, p)| flatten(p)).collect();
        let cpu_of = |name: &str| -> i64 {
            flat.iter().filter(|f| f.stack.iter().any(|s| s.contains(name))).map(|f| f.values[1]).sum()
        };
        assert!(cpu_of("exiting_worker") > 0, "the first thread was never sampled");
        // Found by the first scan after the first thread exits (every 100 ms); the backstop
        // would find it after a second, when it is done.
        match cpu_within("replacing thread", cpu_of("replacing_worker"), clock, Duration::from_millis(1), 0.5, 1.1) {
            Ok(()) => return,
            Err(e) if clock.overloaded() && attempt < ACCURACY_ATTEMPTS => eprintln!("overloaded, again: {e}"),
            Err(e) => panic!("attempt {attempt}: {e}"),
        }
    }
}
