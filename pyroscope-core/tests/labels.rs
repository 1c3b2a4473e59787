//! Labels: user code always runs, values are free text, and label sets are reclaimed so that a
//! million distinct values keep memory bounded and every sample's labels right.

use std::time::Duration;

use pyroscope_core::{AgentBuilder, LabelSet};

use crate::util::*;

#[inline(never)]
fn spin_held(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d))
}

#[inline(never)]
fn spin_churned(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d))
}

/// Memory kept for the whole test, allocated under its own label set.
#[inline(never)]
fn keep_blocks() -> Vec<Vec<u8>> {
    (0..64).map(|i| vec![i as u8; 1 << 20]).collect()
}

/// The value of the `check` label that goes with `user=u{i}`.
fn check_of(i: u32) -> String {
    format!("c{}", i.wrapping_mul(2_654_435_761) % 100_003)
}

#[test]
fn a_million_label_values_over_many_windows_stay_bounded_and_correct() {
    let _g = crate::agent_lock();
    let dir = temp_dir("label-churn");
    let agent = AgentBuilder::new("churn").export_dir(&dir).start().unwrap();
    let held = LabelSet::new(&[("user", "held")]).unwrap();
    // Live sampled allocations keep their set in use long after its last handle and slot.
    let kept = pyroscope_core::tag_wrapper(&[("job", "kept")], keep_blocks);
    let before = agent.stats();
    const PER_WINDOW: u32 = 12_000;
    const WINDOWS: u32 = 84;
    let mut peak_live = 0;
    for w in 0..WINDOWS {
        for j in 0..PER_WINDOW {
            let i = w * PER_WINDOW + j;
            let value = format!("u{i}");
            let check = check_of(i);
            if j + 1 == PER_WINDOW {
                // Samples under the newest set of this window.
                pyroscope_core::tag_wrapper(&[("user", value.as_str()), ("check", &check)], || {
                    spin_churned(Duration::from_millis(10))
                });
            } else {
                pyroscope_core::tag_wrapper(&[("user", value.as_str()), ("check", &check)], || i);
            }
        }
        {
            let _guard = held.enter();
            spin_held(Duration::from_millis(10));
        }
        let windows = agent.stats().windows;
        agent.flush();
        let closed = wait_until(Duration::from_secs(30), || agent.stats().windows > windows);
        assert!(closed, "window {w} did not close within 30 s");
        peak_live = peak_live.max(agent.stats().label_sets_live);
    }
    let stats = agent.stop();
    let interned = u64::from(WINDOWS * PER_WINDOW);
    eprintln!("{interned} values: peak live sets {peak_live}, {:?}", stats);
    // A set lives until two passes after its last use: at most about three windows' worth.
    assert!(peak_live <= 4 * u64::from(PER_WINDOW), "live label sets grew to {peak_live}");
    assert!(stats.label_sets_reclaimed - before.label_sets_reclaimed >= interned - 4 * u64::from(PER_WINDOW));
    assert_eq!(stats.label_sets_overflowed, before.label_sets_overflowed, "no set hit the live cap");
    assert_eq!(held.labels(), vec![("user".to_string(), "held".to_string())]);

    let profiles = read_profiles(&dir);
    let (_, last_memory) = profiles.iter().rev().find(|(name, _)| name.contains(".memory.")).expect("a memory profile");
    let inuse_kept: i64 = flatten(last_memory)
        .iter()
        .filter(|f| f.labels.get("job").map(String::as_str) == Some("kept"))
        .map(|f| f.values[3])
        .sum();
    assert!(
        inuse_kept > 32 << 20,
        "the last window's in-use memory lost its labels: {inuse_kept} bytes under job=kept"
    );
    drop(kept);
    let flat: Vec<Flat> = profiles.iter().flat_map(|(_, p)| flatten(p)).collect();
    let churned: Vec<&Flat> = flat.iter().filter(|f| find(&f.stack, "spin_churned").is_some()).collect();
    let held_samples: Vec<&Flat> = flat.iter().filter(|f| find(&f.stack, "spin_held").is_some()).collect();
    assert!(churned.len() >= 10 && held_samples.len() >= 10, "{} and {} samples", churned.len(), held_samples.len());
    for f in churned {
        let user = f.labels.get("user").expect("a churned sample carries its user");
        let i: u32 = user.strip_prefix('u').and_then(|n| n.parse().ok()).expect("user=u<i>");
        assert_eq!(i % PER_WINDOW, PER_WINDOW - 1, "a sample carries another window's set: {f:?}");
        assert_eq!(f.labels.get("check"), Some(&check_of(i)), "labels of two sets mixed: {f:?}");
        assert_eq!(f.labels.len(), 2, "{f:?}");
    }
    for f in held_samples {
        assert_eq!(f.labels.get("user").map(String::as_str), Some("held"), "{f:?}");
        assert_eq!(f.labels.len(), 1, "{f:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn free_text_values_reach_the_profile_and_bad_labels_never_stop_the_code() {
    let _g = crate::agent_lock();
    let dir = temp_dir("label-text");
    let agent = AgentBuilder::new("text").export_dir(&dir).tag("region", "eu-north").start().unwrap();
    let before = agent.stats();
    let query = "SELECT a, b FROM t WHERE {x} = 1";
    let ran = pyroscope_core::tag_wrapper(&[("query", query), ("bad name", "x"), ("empty", "")], || {
        spin_churned(Duration::from_millis(200))
    });
    assert!(ran > 0);
    let stats = agent.stop();
    // Process-wide counters: other tests running meanwhile may add to them.
    assert!(stats.labels_rejected_name > before.labels_rejected_name, "{stats:?}");
    assert!(stats.labels_rejected_value > before.labels_rejected_value, "{stats:?}");
    let flat: Vec<Flat> = read_profiles(&dir).iter().flat_map(|(_, p)| flatten(p)).collect();
    let f = flat.iter().find(|f| find(&f.stack, "spin_churned").is_some()).expect("samples of the labelled code");
    assert_eq!(f.labels.get("query").map(String::as_str), Some(query));
    assert_eq!(f.labels.get("region").map(String::as_str), Some("eu-north"));
    assert!(!f.labels.contains_key("empty") && !f.labels.contains_key("bad name"), "{f:?}");
    // Static tags stay strict: `/ingest` names cannot carry these.
    for bad in ["a,b", "a{b", "a}b", "a=b"] {
        let e = AgentBuilder::new("x").tag("region", bad).build().unwrap_err();
        assert!(matches!(e, pyroscope_core::Error::InvalidTagValue { .. }), "{bad}: {e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// In a forked child, whose label table is its own: fills the table with held sets, then
/// checks that new sets are the overflow set and the code runs, and that dropping the held
/// sets makes room again.
fn live_cap_in_child() -> Result<(), String> {
    let mut held = Vec::new();
    let refused = loop {
        if held.len() > 70_000 {
            return Err("no cap after 70,000 live sets".into());
        }
        match LabelSet::new(&[("cap", format!("held-{}", held.len()))]) {
            Ok(set) => held.push(set),
            Err(e) => break e,
        }
    };
    if !matches!(refused, pyroscope_core::Error::LabelSetLimit { .. }) {
        return Err(format!("LabelSet::new at the cap: {refused}"));
    }
    let overflow = vec![("pyroscope_overflow".to_string(), "true".to_string())];
    let seen = pyroscope_core::tag_wrapper(&[("cap", "new")], || pyroscope_core::current_labels().labels());
    if seen != overflow {
        return Err(format!("a new set at the cap: {seen:?}"));
    }
    // Held sets keep their labels at the cap.
    let old = pyroscope_core::tag_wrapper(&[("cap", "held-7")], || pyroscope_core::current_labels().labels());
    if old != vec![("cap".to_string(), "held-7".to_string())] {
        return Err(format!("a held set at the cap: {old:?}"));
    }
    drop(held);
    // No agent runs: a new set frees the unused ones itself (a pass that freed nothing waits
    // a second before the next).
    let want = vec![("cap".to_string(), "fresh".to_string())];
    let mut fresh = Vec::new();
    let room = wait_until(Duration::from_secs(10), || {
        fresh = pyroscope_core::tag_wrapper(&[("cap", "fresh")], || pyroscope_core::current_labels().labels());
        fresh == want
    });
    if !room {
        return Err(format!("after the held sets were dropped: {fresh:?}"));
    }
    let stats = AgentBuilder::new("cap-child")
        .export_dir(temp_dir("label-cap-child"))
        .start()
        .map_err(|e| e.to_string())?
        .stop();
    if stats.label_sets_overflowed < 2 || stats.label_sets_live > 100 {
        return Err(format!("counters: {stats:?}"));
    }
    Ok(())
}

#[test]
fn at_the_live_cap_new_sets_are_the_overflow_set_and_the_code_runs() {
    let _g = crate::agent_lock();
    // The fork handlers, which make the child's locks usable, come with the first agent.
    let dir = temp_dir("label-cap");
    AgentBuilder::new("cap").export_dir(&dir).memory(false).start().unwrap().stop();
    // SAFETY: the child only calls our API and the allocator, then _exit.
    let pid = unsafe { fork() };
    if pid == 0 {
        let code = match std::panic::catch_unwind(live_cap_in_child) {
            Ok(Ok(())) => 0,
            Ok(Err(why)) => {
                eprintln!("live cap: {why}");
                3
            }
            Err(_) => 4,
        };
        // SAFETY: _exit is always safe to call.
        unsafe { _exit(code) };
    }
    let mut status = 0;
    // SAFETY: valid pid and status pointer; WNOHANG never blocks.
    let exited = wait_until(Duration::from_secs(60), || unsafe { waitpid(pid, &mut status, 1) == pid });
    if !exited {
        // SAFETY: killing our own child.
        unsafe { kill(pid, 9) };
        panic!("the child filling the label table hung");
    }
    assert_eq!(status, 0, "child failed: status {status:#x}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[inline(never)]
fn spin_sourced(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d))
}

#[inline(never)]
fn spin_slotted(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d))
}

/// What the test's label source points at: the id a runtime would keep for the thread.
static SOURCED_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A label reader as a binding registers one: reads the id where the source says it is.
unsafe fn read_test_source(source: usize) -> u32 {
    // SAFETY: the only source set in this test is SOURCED_ID's address, a static.
    unsafe { (*(source as *const std::sync::atomic::AtomicU32)).load(std::sync::atomic::Ordering::Relaxed) }
}

#[test]
fn a_label_source_names_the_samples_while_it_holds_a_set_and_the_slot_does_otherwise() {
    use std::sync::atomic::Ordering;
    let _g = crate::agent_lock();
    let dir = temp_dir("label-source");
    let agent = AgentBuilder::new("source").export_dir(&dir).memory(false).sample_rate(250).start().unwrap();
    pyroscope_core::set_label_reader(read_test_source);
    let sourced = LabelSet::new(&[("from", "source")]).unwrap();
    let slotted = LabelSet::new(&[("from", "slot")]).unwrap();
    std::thread::spawn(move || {
        let slot = pyroscope_core::LabelSlot::current();
        // SAFETY: this thread's slot; the source is a static, valid for the whole process.
        unsafe { slot.set_source(&SOURCED_ID as *const _ as usize) };
        let _in_slot = slotted.enter();
        SOURCED_ID.store(sourced.id(), Ordering::Relaxed);
        assert_eq!(pyroscope_core::current_labels(), sourced, "current() does not read the source");
        spin_sourced(Duration::from_millis(400));
        SOURCED_ID.store(0, Ordering::Relaxed);
        assert_eq!(pyroscope_core::current_labels(), slotted);
        spin_slotted(Duration::from_millis(400));
        // SAFETY: as above.
        unsafe { slot.set_source(0) };
    })
    .join()
    .unwrap();
    agent.stop();
    let mut by_function: std::collections::BTreeMap<(&str, String), i64> = Default::default();
    let profiles = read_profiles(&dir);
    for (_, p) in profiles.iter().filter(|(name, _)| name.contains(".process_cpu.")) {
        for f in flatten(p) {
            for name in ["spin_sourced", "spin_slotted"] {
                if f.stack.iter().any(|s| s.ends_with(name)) {
                    let from = f.labels.get("from").cloned().unwrap_or_default();
                    *by_function.entry((name, from)).or_default() += f.values[0];
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let total = |name: &str| by_function.iter().filter(|((n, _), _)| *n == name).map(|(_, v)| v).sum::<i64>();
    let share = |name: &str, from: &str| by_function.get(&(name, from.to_string())).copied().unwrap_or(0);
    assert!(total("spin_sourced") > 0 && total("spin_slotted") > 0, "no samples: {by_function:?}");
    assert_eq!(share("spin_sourced", "source"), total("spin_sourced"), "{by_function:?}");
    assert_eq!(share("spin_slotted", "slot"), total("spin_slotted"), "{by_function:?}");
}

extern "C" {
    fn fork() -> i32;
    fn _exit(code: i32) -> !;
    fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    fn kill(pid: i32, sig: i32) -> i32;
}

mod properties {
    use proptest::prelude::*;
    use pyroscope_core::LabelSet;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever the labels, the code runs once, with exactly the labels LabelSet::new
        /// would accept in force.
        #[test]
        fn tag_wrapper_runs_the_code_whatever_the_labels(
            labels in prop::collection::vec(("\\PC{0,12}|[a-z_]{1,8}", "\\PC{0,16}|[ -~]{0,8}"), 0..5),
        ) {
            let mut runs = 0;
            let seen = pyroscope_core::tag_wrapper(&labels, || {
                runs += 1;
                pyroscope_core::current_labels().labels()
            });
            prop_assert_eq!(runs, 1);
            for (k, v) in &seen {
                prop_assert!(pyroscope_core::validate_label(k, v).is_ok(), "{:?}={:?} applied", k, v);
                let last = labels
                    .iter()
                    .rev()
                    .find(|(n, v)| n == k && pyroscope_core::validate_label(n, v).is_ok())
                    .map(|(_, v)| v);
                prop_assert_eq!(Some(v), last);
            }
            let valid: std::collections::BTreeSet<&String> =
                labels.iter().filter(|(k, v)| pyroscope_core::validate_label(k, v).is_ok()).map(|(k, _)| k).collect();
            prop_assert_eq!(seen.len(), valid.len(), "{:?} -> {:?}", labels, seen);
        }

        /// Sample label values are free text: anything printable, commas and braces included.
        #[test]
        fn printable_values_make_a_set(v in "[^\\p{Cc}]{1,64}") {
            let set = LabelSet::new(&[("text", v.as_str())]).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(set.labels(), vec![("text".to_string(), v)]);
        }
    }
}
