//! Wall-clock samples fed by a binding's own sampler (`Agent::add_wall_sample`): a `wall`
//! profile closed with the CPU window, the thread's labels under the interpreter's.

use std::sync::mpsc;
use std::time::Duration;

use pyroscope_core::{labels_of_thread, AgentBuilder, FrameId, LabelSet};

use crate::util::{flatten, read_profiles, temp_dir, Flat};

fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

#[test]
fn wall_samples_make_a_wall_profile_beside_the_cpu_one() {
    let _g = crate::agent_lock();
    let dir = temp_dir("wall");
    let agent = AgentBuilder::new("wall-app").export_dir(&dir).sample_rate(50).memory(false).start().unwrap();
    // An idle thread with labels of its own, blocked until the samples are in.
    let (tid_tx, tid_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let idle = std::thread::spawn(move || {
        let _labels = pyroscope_core::push_labels(&[("worker", "w1"), ("pool", "io")]);
        tid_tx.send(gettid()).unwrap();
        let _ = done_rx.recv();
    });
    let tid = tid_rx.recv().unwrap();
    let thread_labels = labels_of_thread(tid);
    assert_eq!(thread_labels.labels(), vec![("pool".into(), "io".into()), ("worker".into(), "w1".into())]);
    assert_eq!(labels_of_thread(-5), LabelSet::empty(), "a tid nobody has");

    let leaf = FrameId::new("sleep_in_select", "io.py", 7).unwrap();
    let root = FrameId::new("serve_forever", "io.py", 2).unwrap();
    // The interpreter's labels lie over the thread's, name by name.
    let task = LabelSet::new(&[("worker", "task-9"), ("task", "t9")]).unwrap();
    agent.add_wall_sample(&[leaf, root], &thread_labels, None, 3);
    agent.add_wall_sample(&[leaf, root], &thread_labels, Some(&task), 2);
    done_tx.send(()).unwrap();
    idle.join().unwrap();
    assert_eq!(labels_of_thread(tid), LabelSet::empty(), "an exited thread has no labels");
    let stats = agent.stop();
    assert_eq!((stats.wall_samples, stats.wall_samples_lost), (5, 0));

    let profiles = read_profiles(&dir);
    let wall: Vec<_> = profiles.iter().filter(|(name, _)| name.contains(".wall.")).collect();
    assert_eq!(wall.len(), 1, "{:?}", profiles.iter().map(|p| &p.0).collect::<Vec<_>>());
    let p = &wall[0].1;
    let s = |i: i64| p.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = p.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
    assert_eq!(types, [("samples", "count"), ("wall", "nanoseconds")]);
    let period_type = p.period_type.as_ref().unwrap();
    assert_eq!((s(period_type.r#type), s(period_type.unit), p.period), ("wall", "nanoseconds", 20_000_000));
    let flat = flatten(p);
    let find = |worker: &str| -> &Flat {
        flat.iter().find(|f| f.labels.get("worker").map(String::as_str) == Some(worker)).expect(worker)
    };
    let plain = find("w1");
    assert_eq!(plain.stack, ["serve_forever", "sleep_in_select"]);
    assert_eq!(plain.values, [3, 60_000_000]);
    assert_eq!(plain.labels.get("pool").map(String::as_str), Some("io"));
    assert_eq!(plain.labels.get("task"), None);
    let tasked = find("task-9");
    assert_eq!(tasked.values, [2, 40_000_000]);
    assert_eq!(tasked.labels.get("pool").map(String::as_str), Some("io"), "the thread's other labels stay");
    assert_eq!(tasked.labels.get("task").map(String::as_str), Some("t9"));
    assert_eq!(flat.len(), 2);
    // The CPU profile has none of it.
    for (name, p) in &profiles {
        if name.contains("process_cpu") {
            assert!(flatten(p).iter().all(|f| !f.stack.iter().any(|n| n == "sleep_in_select")), "{name}");
        }
    }
}

#[test]
fn no_wall_profile_without_wall_samples() {
    let _g = crate::agent_lock();
    let dir = temp_dir("no-wall");
    let agent = AgentBuilder::new("cpu-only").export_dir(&dir).memory(false).start().unwrap();
    crate::util::spin_cpu(Duration::from_millis(200));
    agent.stop();
    let profiles = read_profiles(&dir);
    assert!(profiles.iter().any(|(name, _)| name.contains("process_cpu")));
    assert!(profiles.iter().all(|(name, _)| !name.contains("wall")), "{profiles:?}");
}

#[inline(never)]
fn wait_on_channel(rx: &mpsc::Receiver<()>) {
    let _ = rx.recv();
}

#[inline(never)]
fn wait_unmarked(rx: &mpsc::Receiver<()>) {
    // Not the same body as `wait_on_channel`, so the two are never merged into one symbol.
    std::hint::black_box(rx.recv().is_ok());
}

#[inline(never)]
fn spin_in_marked_thread(d: Duration) {
    crate::util::spin_cpu(d);
}

#[test]
fn a_thread_marked_for_wall_time_is_sampled_idle_or_busy() {
    let _g = crate::agent_lock();
    let dir = temp_dir("wall-timer");
    let agent = AgentBuilder::new("wall-timer").export_dir(&dir).sample_rate(100).memory(false).start().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let marked = std::thread::spawn(move || {
        let _labels = pyroscope_core::push_labels(&[("loop", "main")]);
        pyroscope_core::sample_wall_time();
        spin_in_marked_thread(Duration::from_millis(300));
        ready_tx.send(std::time::Instant::now()).unwrap();
        wait_on_channel(&done_rx);
    });
    // An unmarked thread, idle as long: no wall samples.
    let (plain_done_tx, plain_done_rx) = mpsc::channel::<()>();
    let plain = std::thread::spawn(move || wait_unmarked(&plain_done_rx));
    let idle_from = ready_rx.recv().unwrap();
    // Idle for at least 600 ms of wall time (a bound, not a barrier: the check below reads
    // the measured time).
    while idle_from.elapsed() < Duration::from_millis(600) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let idle_ns = idle_from.elapsed().as_nanos() as i64;
    done_tx.send(()).unwrap();
    plain_done_tx.send(()).unwrap();
    marked.join().unwrap();
    plain.join().unwrap();
    let stats = agent.stop();
    assert!(stats.wall_samples > 0, "{stats:?}");

    let profiles = read_profiles(&dir);
    let flat: Vec<Flat> =
        profiles.iter().filter(|(name, _)| name.contains(".wall.")).flat_map(|(_, p)| flatten(p)).collect();
    let sum = |f: &dyn Fn(&Flat) -> bool| flat.iter().filter(|x| f(x)).map(|x| x.values[1]).sum::<i64>();
    let waiting = sum(&|x| x.stack.iter().any(|n| n.ends_with("wait_on_channel")) && x.labels.contains_key("loop"));
    let spinning = sum(&|x| x.stack.iter().any(|n| n.ends_with("spin_in_marked_thread")));
    // Wall time of the marked thread while blocked: within 25% of what elapsed (timer
    // expiries are exact; the bound covers samples queued while the machine is busy).
    assert!(
        waiting as f64 >= 0.75 * idle_ns as f64 && waiting as f64 <= 1.25 * idle_ns as f64,
        "{waiting} of {idle_ns}"
    );
    assert!(spinning >= 150_000_000, "busy 300 ms, wall samples {spinning} ns");
    // Only the marked thread has wall samples: the unmarked one never shows up, and the marked
    // one is unlabelled only in the instants between its label guard's drop and its exit.
    assert_eq!(sum(&|x| x.stack.iter().any(|n| n.ends_with("wait_unmarked"))), 0, "{flat:?}");
    let unlabelled = sum(&|x| !x.labels.contains_key("loop"));
    assert!(unlabelled <= 50_000_000, "{unlabelled} ns unlabelled: {flat:?}");
}
