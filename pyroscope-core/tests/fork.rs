//! Fork: the child neither deadlocks nor sends the parent's samples, and can profile itself.

use std::time::Duration;

use pyroscope_core::AgentBuilder;

use crate::util::*;

#[inline(never)]
fn parent_work(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d))
}

#[inline(never)]
fn child_work(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d))
}

#[test]
fn forked_child_is_silent_then_can_profile_itself() {
    let _g = crate::agent_lock();
    let parent_dir = temp_dir("fork-parent");
    let child_dir = temp_dir("fork-child");
    let agent = AgentBuilder::new("forker").export_dir(&parent_dir).start().unwrap();
    // Keep label and sampler locks busy on other threads while we fork: fork once all three
    // are inside their loops.
    let running = std::sync::Arc::new(std::sync::Barrier::new(4));
    let busy: Vec<_> = (0..3)
        .map(|i| {
            let running = running.clone();
            std::thread::spawn(move || {
                for j in 0..200 {
                    if j == 1 {
                        running.wait();
                    }
                    let v = format!("v{}", (i * 1000 + j) % 50);
                    pyroscope_core::tag_wrapper(&[("k", v.as_str())], || parent_work(Duration::from_millis(1)));
                }
            })
        })
        .collect();
    running.wait();
    // SAFETY: the child only calls our API and then _exit; the test checks it does not hang.
    let pid = unsafe { libc_fork() };
    if pid == 0 {
        // Child: samples handed to the parent's agent are counted as lost, never queued (its
        // lock may have been held by a parent thread at the fork).
        let frame = pyroscope_core::FrameId::new("child_external", "child.py", 1).unwrap();
        let none = pyroscope_core::LabelSet::new::<&str, &str>(&[]).unwrap();
        let lost = agent.stats().samples_lost;
        agent.add_cpu_sample(&[frame], &none, 5);
        if agent.stats().samples_lost != lost + 5 {
            // SAFETY: _exit is always safe to call.
            unsafe { libc_exit(4) };
        }
        // The parent's agent must not flush here.
        drop(agent);
        let ok = pyroscope_core::tag_wrapper(&[("in", "child")], || {
            let a = AgentBuilder::new("forked-child").export_dir(&child_dir).start().unwrap();
            child_work(Duration::from_millis(300));
            a.stop().samples
        });
        // SAFETY: _exit is always safe to call.
        // Sampled at all (what is in its profile is checked below): 300 ms make about 30
        // samples, of which a busy machine can lose many.
        unsafe { libc_exit(if ok > 0 { 0 } else { 3 }) };
    }
    let mut status = 0;
    let exited = wait_until(Duration::from_secs(20), || {
        // SAFETY: valid pid and status pointer; WNOHANG never blocks.
        unsafe { libc_waitpid(pid, &mut status, 1) == pid }
    });
    for b in busy {
        b.join().unwrap();
    }
    agent.stop();
    if !exited {
        // SAFETY: killing our own child.
        unsafe { libc_kill(pid, 9) };
        panic!("forked child hung");
    }
    assert_eq!(status, 0, "child failed: status {status:#x}");
    let child: Vec<_> = read_profiles(&child_dir).iter().flat_map(|(_, p)| flatten(p)).collect();
    assert!(child.iter().any(|f| find(&f.stack, "child_work").is_some()), "child profiled itself");
    assert!(child.iter().all(|f| find(&f.stack, "parent_work").is_none()), "child sent parent samples");
    let names: Vec<String> = read_profiles(&child_dir).into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().all(|n| n.starts_with("forked-child.")), "{names:?}");
    let parent: Vec<_> = read_profiles(&parent_dir).iter().flat_map(|(_, p)| flatten(p)).collect();
    assert!(parent.iter().any(|f| find(&f.stack, "parent_work").is_some()));
}

extern "C" {
    #[link_name = "fork"]
    fn libc_fork() -> i32;
    #[link_name = "_exit"]
    fn libc_exit(code: i32) -> !;
    #[link_name = "waitpid"]
    fn libc_waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A fork while one thread of the parent is inside the signal handler and another inside the
/// allocation hook: in the child those threads never count themselves out as readers. The
/// child resets the count, so an agent it starts frees its retired maps tables and snapshots
/// instead of keeping one more on every scan.
#[test]
fn fork_with_threads_inside_the_handler_and_the_hook() {
    use pyroscope_core::test_hooks;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};

    let _g = crate::agent_lock();
    let parent_dir = temp_dir("fork-held-parent");
    let child_dir = temp_dir("fork-held-child");
    let agent =
        AgentBuilder::new("held").export_dir(&parent_dir).sample_rate(1000).alloc_sample_bytes(1024).start().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let spinner = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            pyroscope_core::register_thread();
            tx.send(test_hooks::gettid()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                parent_work(Duration::from_millis(1));
            }
        })
    };
    let (hook_tx, hook_rx) = mpsc::channel();
    let allocator = {
        let (stop, tx) = (stop.clone(), hook_tx);
        std::thread::spawn(move || {
            tx.send(test_hooks::gettid()).unwrap();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += std::hint::black_box(vec![1u8; 4096]).len();
            }
            n
        })
    };
    test_hooks::hold_in_handler(rx.recv().unwrap());
    test_hooks::hold_in_hook(hook_rx.recv().unwrap());
    let held = wait_until(Duration::from_secs(20), || test_hooks::held() == 2);
    if !held {
        test_hooks::release();
        panic!("threads not held in the handler and the hook: {} held", test_hooks::held());
    }
    // SAFETY: the child calls our API and then _exit; the parent checks it does not hang.
    let pid = unsafe { libc_fork() };
    if pid == 0 {
        test_hooks::release();
        std::mem::forget(agent);
        let a = AgentBuilder::new("held-child").export_dir(&child_dir).sample_rate(250).start().unwrap();
        // Some fifteen scans of the thread list, each publishing a new maps table.
        child_work(Duration::from_millis(1500));
        let retained = test_hooks::retained_tables();
        let samples = a.stop().samples;
        let code = if retained > 2 {
            4
        } else if samples < 10 {
            3
        } else {
            0
        };
        if code != 0 {
            eprintln!("child: {retained} retired tables kept, {samples} samples");
        }
        // SAFETY: _exit is always safe to call.
        unsafe { libc_exit(code) };
    }
    test_hooks::release();
    stop.store(true, Ordering::Relaxed);
    spinner.join().unwrap();
    allocator.join().unwrap();
    let mut status = 0;
    let exited = wait_until(Duration::from_secs(30), || {
        // SAFETY: valid pid and status pointer; WNOHANG never blocks.
        unsafe { libc_waitpid(pid, &mut status, 1) == pid }
    });
    agent.stop();
    if !exited {
        // SAFETY: killing our own child.
        unsafe { libc_kill(pid, 9) };
        panic!("forked child hung");
    }
    assert_ne!(status, 4 << 8, "the child kept a maps table per scan: reader counts survived the fork");
    assert_eq!(status, 0, "child failed: status {status:#x}");
    let child: Vec<_> = read_profiles(&child_dir).iter().flat_map(|(_, p)| flatten(p)).collect();
    assert!(child.iter().any(|f| find(&f.stack, "child_work").is_some()), "child profiled itself");
}
