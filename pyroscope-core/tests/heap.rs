//! A runtime's own heap profile handed to the agent (`Agent::set_heap_inuse`,
//! `Agent::add_heap_allocations`), as the Node binding hands V8's: one `memory` profile per
//! window, values as given.

use std::time::Duration;

use pyroscope_core::{AgentBuilder, FrameId, HeapSample};

use crate::util::{flatten, read_profiles, temp_dir, wait_until};

fn sample(frames: &[FrameId], objects: u64, bytes: u64) -> HeapSample {
    HeapSample { frames: frames.to_vec(), objects, bytes }
}

fn types(p: &pyroscope_core::proto::Profile) -> Vec<(String, String)> {
    let s = |i: i64| p.string_table[i as usize].clone();
    p.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect()
}

#[test]
fn heap_reports_make_the_windows_memory_profile() {
    let _g = crate::agent_lock();
    let dir = temp_dir("heap");
    let interval = Duration::from_secs(30);
    let agent = AgentBuilder::new("heap-app").export_dir(&dir).cpu(false).memory(false).upload_interval(interval);
    let agent = agent.start().unwrap();
    let left = agent.window_remaining();
    assert!(left > Duration::ZERO && left <= interval, "{left:?}");

    let main = FrameId::new("./app.js:main:1", "/srv/app.js", 1).unwrap();
    let retain = FrameId::new("./app.js:retain:10", "/srv/app.js", 10).unwrap();
    let churn = FrameId::new("./app.js:churn:20", "/srv/app.js", 20).unwrap();
    let work = FrameId::new("./worker.js:work:3", "/srv/worker.js", 3).unwrap();
    // The main isolate's state, given twice: the later one is the window's.
    agent.set_heap_inuse(1, 524_288, vec![sample(&[retain, main], 10, 10_240), sample(&[churn, main], 4, 4_096)]);
    agent.set_heap_inuse(1, 524_288, vec![sample(&[retain, main], 20, 20_480)]);
    // A worker's isolate: its own heap, added to the main one.
    agent.set_heap_inuse(2, 524_288, vec![sample(&[work], 5, 500)]);
    // Allocations add up.
    agent.add_heap_allocations(524_288, &[sample(&[churn, main], 100, 102_400), sample(&[retain, main], 20, 20_480)]);
    agent.add_heap_allocations(524_288, &[sample(&[churn, main], 100, 102_400)]);
    agent.stop();

    let profiles = read_profiles(&dir);
    let memory: Vec<_> = profiles.iter().filter(|(name, _)| name.contains("memory")).collect();
    assert_eq!(memory.len(), 1, "{:?}", profiles.iter().map(|p| &p.0).collect::<Vec<_>>());
    let p = &memory[0].1;
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(
        types(p),
        pairs(&[
            ("alloc_objects", "count"),
            ("alloc_space", "bytes"),
            ("inuse_objects", "count"),
            ("inuse_space", "bytes")
        ])
    );
    let period_type = p.period_type.as_ref().unwrap();
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!((s(period_type.r#type), s(period_type.unit), p.period), ("space", "bytes", 524_288));
    let mut flat: Vec<(Vec<String>, Vec<i64>)> = flatten(p).into_iter().map(|f| (f.stack, f.values)).collect();
    flat.sort();
    let stack = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        flat,
        vec![
            (stack(&["./app.js:main:1", "./app.js:churn:20"]), vec![200, 204_800, 0, 0]),
            (stack(&["./app.js:main:1", "./app.js:retain:10"]), vec![20, 20_480, 20, 20_480]),
            (stack(&["./worker.js:work:3"]), vec![0, 0, 5, 500]),
        ]
    );
    // Files and lines come with the frames.
    let retain_fn = p.function.iter().find(|f| s(f.name) == "./app.js:retain:10").unwrap();
    assert_eq!(s(retain_fn.filename), "/srv/app.js");
}

#[test]
fn an_inuse_state_stands_until_reported_again_or_ended() {
    let _g = crate::agent_lock();
    let dir = temp_dir("heap-carry");
    let agent = AgentBuilder::new("heap-carry").export_dir(&dir).cpu(false).memory(false).start().unwrap();
    let keep = FrameId::new("./app.js:keep:5", "/srv/app.js", 5).unwrap();
    let work = FrameId::new("./worker.js:work:3", "/srv/worker.js", 3).unwrap();
    let close_window = || {
        let before = agent.stats().windows;
        agent.flush();
        assert!(wait_until(Duration::from_secs(20), || agent.stats().windows > before), "{:?}", agent.stats());
    };
    // Window 1: heap 7's state. Window 2: no report, the same state (a thread too busy to
    // report before the window closed still shows).
    agent.set_heap_inuse(7, 4096, vec![sample(&[keep], 3, 3_000)]);
    close_window();
    close_window();
    // Window 3: heap 7 reports nothing in use, and heap 8 a state and then its end.
    agent.set_heap_inuse(7, 4096, Vec::new());
    agent.set_heap_inuse(8, 4096, vec![sample(&[work], 2, 200)]);
    agent.end_heap(8);
    close_window();
    // Window 4: heap 7 is still empty, heap 8 has ended: no heap profile.
    close_window();
    // Window 5: heap 8 ended, then reported again (its sampler restarted): it goes on.
    agent.end_heap(8);
    agent.set_heap_inuse(8, 4096, vec![sample(&[work], 1, 100)]);
    close_window();
    agent.stop();

    let mut memory: Vec<_> = read_profiles(&dir).into_iter().filter(|(name, _)| name.contains("memory")).collect();
    memory.sort_by_key(|(_, p)| p.time_nanos);
    let pairs: Vec<(String, String)> = [("inuse_objects", "count"), ("inuse_space", "bytes")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let got: Vec<Vec<(Vec<String>, Vec<i64>)>> = memory
        .iter()
        .map(|(_, p)| {
            assert_eq!(types(p), pairs, "only the types the runtime gave");
            assert_eq!(p.period, 4096);
            let mut flat: Vec<_> = flatten(p).into_iter().map(|f| (f.stack, f.values)).collect();
            flat.sort();
            flat
        })
        .collect();
    let keep = (vec!["./app.js:keep:5".to_string()], vec![3, 3_000]);
    let work = |o: i64, b: i64| (vec!["./worker.js:work:3".to_string()], vec![o, b]);
    // Windows 1, 2, 3, 5 and the one stop() closes, where heap 8's state stands.
    assert_eq!(got, vec![vec![keep.clone()], vec![keep], vec![work(2, 200)], vec![work(1, 100)], vec![work(1, 100)]]);
}
