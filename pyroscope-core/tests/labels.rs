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
    assert_eq!(stats.labels_rejected_name - before.labels_rejected_name, 1);
    assert_eq!(stats.labels_rejected_value - before.labels_rejected_value, 1);
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
