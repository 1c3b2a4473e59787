//! Async tasks keep their labels across `.await`, whichever tokio worker polls them.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyroscope_core::{AgentBuilder, LabelSet};

use crate::util::*;

macro_rules! task_work {
    ($($name:ident),*) => {$(
        #[inline(never)]
        fn $name(d: Duration) -> u64 {
            std::hint::black_box(spin_cpu(d))
        }
    )*};
}
task_work!(task_work_0, task_work_1, task_work_2, task_work_3);

/// Runs task `i`'s work; returns the worker thread's clocks over it.
fn work(i: usize) -> Clock {
    let d = Duration::from_millis(4);
    let t = Clock::now();
    std::hint::black_box(match i {
        0 => task_work_0(d),
        1 => task_work_1(d),
        2 => task_work_2(d),
        _ => task_work_3(d),
    });
    t.elapsed()
}

#[test]
fn tokio_tasks_keep_labels_across_await_and_threads() {
    let _g = crate::agent_lock();
    let dir = temp_dir("tokio");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().unwrap();
    let agent = AgentBuilder::new("tokio-app").export_dir(&dir).start().unwrap();
    let threads: Arc<Mutex<BTreeMap<usize, HashSet<std::thread::ThreadId>>>> = Arc::default();
    let truth: Arc<Mutex<Clock>> = Arc::default();
    rt.block_on(async {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let set = LabelSet::new(&[("task", i.to_string())]).unwrap();
                let (threads, truth) = (threads.clone(), truth.clone());
                tokio::spawn(set.wrap(async move {
                    for _ in 0..50 {
                        threads.lock().unwrap().entry(i).or_default().insert(std::thread::current().id());
                        let spent = work(i);
                        {
                            let mut truth = truth.lock().unwrap();
                            *truth = *truth + spent;
                        }
                        tokio::task::yield_now().await;
                    }
                }))
            })
            .collect();
        for h in handles {
            h.await.unwrap();
        }
    });
    agent.stop();
    drop(rt);
    assert!(threads.lock().unwrap().values().any(|t| t.len() > 1), "no task moved between workers: {threads:?}");
    let flat: Vec<Flat> = read_profiles(&dir).iter().flat_map(|(_, p)| flatten(p)).collect();
    let mut checked = 0;
    for f in &flat {
        for n in 0..4 {
            if find(&f.stack, &format!("task_work_{n}")).is_some() {
                assert_eq!(f.labels.get("task"), Some(&n.to_string()), "{f:?}");
                checked += f.values[1];
            }
        }
        if f.stack.iter().any(|s| s.contains("task_work")) {
            assert!(f.labels.contains_key("task"), "unlabelled task sample: {f:?}");
        }
    }
    let names: HashSet<&String> = flat.iter().flat_map(|f| f.stack.iter()).filter(|s| s.contains("task")).collect();
    // 4 tasks x 50 x 4 ms = 0.8 s of CPU: about 80 samples.
    eprintln!("{names:?}");
    let truth = *truth.lock().unwrap();
    check_cpu("task_work", checked, truth, Duration::from_millis(10), 0.625, 1.1);
}
