//! Interpreter stacks: a binding's walker runs in the handler and the allocation hook of the
//! sampled thread, its resolver names the words on the collector thread, and the labels it
//! returns lie over the thread's.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

use pyroscope_core::{AgentBuilder, FrameId, LabelSet, Resolver};

use crate::util::*;

/// The one thread the test walker answers for; every other thread keeps its native stack.
static TARGET: AtomicI32 = AtomicI32::new(-1);
const CONTEXT_CAR: u64 = 7;

fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Two words: a context key and a frame code, as a Python walker would write them.
///
/// # Safety
/// Async-signal-safe: a raw syscall, an atomic load and two stores.
unsafe fn walk(out: &mut [u64]) -> usize {
    if gettid() != TARGET.load(Ordering::Relaxed) || out.len() < 2 {
        return 0;
    }
    out[0] = CONTEXT_CAR;
    out[1] = 0xf00;
    2
}

struct Names {
    car: LabelSet,
}

impl Resolver for Names {
    fn resolve(&mut self, words: &[u64], frames: &mut Vec<FrameId>) -> Option<LabelSet> {
        assert_eq!(words, [CONTEXT_CAR, 0xf00], "the resolver gets exactly what the walker wrote");
        frames.push(FrameId::new("py_leaf", "app.py", 3)?);
        frames.push(FrameId::new("py_root", "app.py", 1)?);
        (words[0] == CONTEXT_CAR).then(|| self.car.clone())
    }
}

#[inline(never)]
fn keep_allocating(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| std::hint::black_box(vec![i as u8; 16 * 1024])).collect()
}

#[test]
fn walker_frames_and_context_labels_reach_cpu_and_memory_profiles() {
    let _g = crate::agent_lock();
    let dir = temp_dir("interp");
    pyroscope_core::set_interpreter(walk, Box::new(Names { car: LabelSet::new(&[("vehicle", "car")]).unwrap() }));
    let agent = AgentBuilder::new("interp-app")
        .export_dir(&dir)
        .sample_rate(250)
        .alloc_sample_bytes(64 * 1024)
        .start()
        .unwrap();
    let kept = std::thread::spawn(|| {
        // The thread's own labels: the interpreter's are laid over them. (Set first: interning
        // them allocates, and every sample after TARGET must carry them.)
        let _thread = pyroscope_core::push_labels(&[("vehicle", "bike"), ("worker", "w1")]);
        TARGET.store(gettid(), Ordering::SeqCst);
        spin_cpu(Duration::from_millis(400));
        let kept = keep_allocating(2000);
        TARGET.store(-1, Ordering::SeqCst);
        kept
    })
    .join()
    .unwrap();
    // A thread the walker does not answer for keeps native frames.
    std::thread::spawn(|| spin_cpu(Duration::from_millis(200))).join().unwrap();
    let stats = agent.stop();
    let profiles = read_profiles(&dir);
    let flat = |kind: &str| -> Vec<Flat> {
        profiles.iter().filter(|(n, _)| n.contains(kind)).flat_map(|(_, p)| flatten(p)).collect()
    };
    let cpu = flat(".process_cpu.");
    let py: Vec<_> = cpu.iter().filter(|f| f.stack == ["py_root", "py_leaf"]).collect();
    let py_total: i64 = py.iter().map(|f| f.values[0]).sum();
    assert!(py_total > 20, "walker samples: {py_total}; {stats:?}");
    for f in &py {
        assert_eq!(f.labels.get("vehicle").map(String::as_str), Some("car"), "{f:?}");
        assert_eq!(f.labels.get("worker").map(String::as_str), Some("w1"), "{f:?}");
    }
    assert!(cpu.iter().any(|f| find(&f.stack, "spin_cpu").is_some()), "the other thread's native frames are kept");
    let mem = flat(".memory.");
    let inuse: i64 = mem.iter().filter(|f| f.stack == ["py_root", "py_leaf"]).map(|f| f.values[3]).sum();
    let truth = (2000 * 16 * 1024) as f64;
    assert!((inuse as f64 - truth).abs() / truth < 0.25, "inuse_space {inuse} vs {truth}");
    for f in mem.iter().filter(|f| f.stack == ["py_root", "py_leaf"]) {
        assert_eq!(f.labels.get("vehicle").map(String::as_str), Some("car"), "{f:?}");
        assert_eq!(f.labels.get("worker").map(String::as_str), Some("w1"), "{f:?}");
    }
    drop(kept);
}

/// The thread the faulting walker answers for, and the inaccessible page it reads.
static FAULT_TARGET: AtomicI32 = AtomicI32::new(-1);
static FAULT_PAGE: AtomicUsize = AtomicUsize::new(0);
/// Reads of the page that came back as errors, inside the CPU timer's handler.
static FAULTS_SEEN: AtomicUsize = AtomicUsize::new(0);

/// A walker whose every walk faults once, as a Python walk does on a torn frame chain.
///
/// # Safety
/// Async-signal-safe: a raw syscall, atomics, one guarded read and two stores.
unsafe fn faulting_walk(out: &mut [u64]) -> usize {
    if gettid() != FAULT_TARGET.load(Ordering::Relaxed) || out.len() < 2 {
        return 0;
    }
    if pyroscope_core::fault::read_u64(FAULT_PAGE.load(Ordering::Relaxed)).is_err() {
        FAULTS_SEEN.fetch_add(1, Ordering::Relaxed);
    }
    out[0] = 0;
    out[1] = 0xf00;
    2
}

struct Leaf;

impl Resolver for Leaf {
    fn resolve(&mut self, _words: &[u64], frames: &mut Vec<FrameId>) -> Option<LabelSet> {
        frames.extend(FrameId::new("py_leaf", "app.py", 3));
        None
    }
}

/// Regression (#11): the CPU timer's handler blocked every signal, SIGSEGV included, so the
/// first guarded read that faulted inside it killed the process (about one run in a hundred of
/// the Python benchmark) instead of coming back as an error.
#[test]
fn a_guarded_read_that_faults_in_the_cpu_handler_is_an_error() {
    let _g = crate::agent_lock();
    pyroscope_core::fault::install().unwrap();
    // SAFETY: an anonymous inaccessible page, kept for the life of the process (never reused,
    // so every read of it faults).
    let page = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    assert_ne!(page, libc::MAP_FAILED);
    FAULT_PAGE.store(page as usize, Ordering::SeqCst);
    let faults_before = pyroscope_core::fault::faults();
    let dir = temp_dir("interp-fault");
    pyroscope_core::set_interpreter(faulting_walk, Box::new(Leaf));
    let agent = AgentBuilder::new("interp-fault").export_dir(&dir).sample_rate(250).start().unwrap();
    std::thread::spawn(|| {
        FAULT_TARGET.store(gettid(), Ordering::SeqCst);
        spin_cpu(Duration::from_millis(400));
        FAULT_TARGET.store(-1, Ordering::SeqCst);
    })
    .join()
    .unwrap();
    let stats = agent.stop();
    let seen = FAULTS_SEEN.load(Ordering::SeqCst);
    assert!(seen > 10, "walks that faulted and went on: {seen}; {stats:?}");
    assert!(pyroscope_core::fault::faults() - faults_before >= seen as u64);
    let leaf: i64 = read_profiles(&dir)
        .iter()
        .filter(|(n, _)| n.contains(".process_cpu."))
        .flat_map(|(_, p)| flatten(p))
        .filter(|f| f.stack == ["py_leaf"])
        .map(|f| f.values[0])
        .sum();
    assert!(leaf > 10, "samples of the faulting walks: {leaf}");
}
