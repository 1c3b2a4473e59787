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
                    pyroscope_core::tag_wrapper(&[("k", v.as_str())], || parent_work(Duration::from_millis(1)))
                        .unwrap();
                }
            })
        })
        .collect();
    running.wait();
    // SAFETY: the child only calls our API and then _exit; the test checks it does not hang.
    let pid = unsafe { libc_fork() };
    if pid == 0 {
        // Child: the parent's agent must not flush here.
        drop(agent);
        let ok = pyroscope_core::tag_wrapper(&[("in", "child")], || {
            let a = AgentBuilder::new("forked-child").export_dir(&child_dir).start().unwrap();
            child_work(Duration::from_millis(300));
            a.stop().samples
        });
        // SAFETY: _exit is always safe to call.
        unsafe { libc_exit(if matches!(ok, Ok(n) if n > 10) { 0 } else { 3 }) };
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
