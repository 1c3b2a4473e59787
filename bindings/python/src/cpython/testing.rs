//! Private functions on `pyroscope._native` for the walker's tests and measurements. ⚠
//!
//! `_walker_init(var)`, `_walk_here()`, `_walk_in_signal()`, `_sig_start(us)`/`_sig_stop()`
//! (SIGPROF from `setitimer(ITIMER_PROF)`, walking inside the handler), `_context_key()`,
//! `_bench_walk(n)`, `_bench_resolve(n)`, `_walker_stats()`. Not part of the package's API.

use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyroscope_core::fault;

use super::resolve::{Named, PyResolver, DROPPED, NAMED};
use super::walk::{self, COUNTERS};

/// A record's words, as the core's.
const WORDS: usize = 256;
const SLOTS: usize = 2048;

/// Samples the SIGPROF handler stored: words, and their count (0 = not written yet).
static RING: [[AtomicU64; WORDS]; SLOTS] = [const { [const { AtomicU64::new(0) }; WORDS] }; SLOTS];
static RING_LEN: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static RING_NEXT: AtomicUsize = AtomicUsize::new(0);
/// The one-shot walk `_walk_in_signal` asks for: the thread it asked on, and the result.
static SYNC_TID: AtomicI32 = AtomicI32::new(0);
static SYNC: [AtomicU64; WORDS] = [const { AtomicU64::new(0) }; WORDS];
static SYNC_LEN: AtomicUsize = AtomicUsize::new(0);
/// Handler runs, runs that found no Python stack, nanoseconds spent in walk, stacks not stored.
static RUNS: AtomicU64 = AtomicU64::new(0);
static EMPTY: AtomicU64 = AtomicU64::new(0);
static WALK_NS: AtomicU64 = AtomicU64::new(0);
static UNSTORED: AtomicU64 = AtomicU64::new(0);
static HANDLER_INSTALLED: std::sync::Once = std::sync::Once::new();

/// Registers the private test functions on the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_walker_init, m)?)?;
    m.add_function(wrap_pyfunction!(_walk_here, m)?)?;
    m.add_function(wrap_pyfunction!(_walk_in_signal, m)?)?;
    m.add_function(wrap_pyfunction!(_walk_words_here, m)?)?;
    m.add_function(wrap_pyfunction!(_resolve_words, m)?)?;
    m.add_function(wrap_pyfunction!(_sig_start, m)?)?;
    m.add_function(wrap_pyfunction!(_sig_stop, m)?)?;
    m.add_function(wrap_pyfunction!(context_key_here, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_walk, m)?)?;
    m.add_function(wrap_pyfunction!(_bench_resolve, m)?)?;
    m.add_function(wrap_pyfunction!(_walker_stats, m)?)?;
    m.add_function(wrap_pyfunction!(_wall_stats, m)?)?;
    Ok(())
}

/// `cpython::init` for tests: raises RuntimeError with its message.
#[pyfunction]
fn _walker_init(py: Python<'_>, label_var: &Bound<'_, PyAny>) -> PyResult<()> {
    super::init(py, label_var).map_err(PyRuntimeError::new_err)
}

type Sample = (u64, u64, Vec<(String, String, u32)>);

fn named(words: &[u64], resolver: &mut PyResolver) -> Sample {
    let mut frames = Vec::new();
    resolver.names(words, &mut frames);
    let frames =
        frames.into_iter().map(|Named { function, file, line }| (function.to_string(), file.to_string(), line));
    (words[0], walk::thread_ident(words[1]), frames.collect())
}

/// Walks the calling thread now (normal context): `(context key, thread ident, [(qualname,
/// filename, line), ...] leaf first)`, or None when the walk found nothing.
#[pyfunction]
fn _walk_here() -> Option<Sample> {
    let mut words = [0u64; WORDS];
    // SAFETY: walk has no preconditions; all its reads are guarded.
    let n = unsafe { walk::walk(&mut words) };
    (n > 0).then(|| named(&words[..n], &mut PyResolver::new(|_, _| None)))
}

/// The raw words of a walk of the calling thread (empty when it found nothing).
#[pyfunction]
fn _walk_words_here() -> Vec<u64> {
    let mut words = [0u64; WORDS];
    // SAFETY: walk has no preconditions; all its reads are guarded.
    let n = unsafe { walk::walk(&mut words) };
    words[..n].to_vec()
}

/// Resolves raw words (from `_walk_words_here`) now, with empty caches.
#[pyfunction]
fn _resolve_words(words: Vec<u64>) -> Option<Sample> {
    (words.len() >= walk::HEADER).then(|| named(&words, &mut PyResolver::new(|_, _| None)))
}

/// The label key the walker reads for the calling thread's current Context (0 when unset).
#[pyfunction]
#[pyo3(name = "_context_key")]
pub(crate) fn context_key_here() -> u64 {
    let Some(rt) = super::runtime() else {
        return 0;
    };
    // SAFETY: dlsym'd `PyGILState_GetThisThreadState`, no arguments.
    let tstate = unsafe { (rt.get_tstate)() } as usize;
    if tstate == 0 {
        return 0;
    }
    walk::context_key(rt, tstate)
}

/// The SIGPROF handler: walks the interrupted thread into the ring (or the one-shot buffer).
///
/// # Signal safety
/// `walk`, `clock_gettime`, `gettid`, atomics; errno saved and restored.
extern "C" fn on_prof(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    let errno = unsafe { *libc::__errno_location() };
    RUNS.fetch_add(1, Ordering::Relaxed);
    let mut words = [0u64; WORDS];
    let start = now_ns();
    // SAFETY: walk has no preconditions; all its reads are guarded.
    let n = unsafe { walk::walk(&mut words) };
    WALK_NS.fetch_add(now_ns().saturating_sub(start), Ordering::Relaxed);
    // SAFETY: raw gettid cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    if SYNC_TID.load(Ordering::Acquire) == tid {
        for (cell, w) in SYNC.iter().zip(&words[..n]) {
            cell.store(*w, Ordering::Relaxed);
        }
        SYNC_LEN.store(n, Ordering::Release);
        SYNC_TID.store(0, Ordering::Release);
    } else if n == 0 {
        EMPTY.fetch_add(1, Ordering::Relaxed);
    } else {
        let slot = RING_NEXT.fetch_add(1, Ordering::Relaxed);
        if slot < SLOTS {
            for (cell, w) in RING[slot].iter().zip(&words[..n]) {
                cell.store(*w, Ordering::Relaxed);
            }
            RING_LEN[slot].store(n, Ordering::Release);
        } else {
            UNSTORED.fetch_add(1, Ordering::Relaxed);
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// # Signal safety
/// `clock_gettime` (vDSO; async-signal-safe by POSIX).
fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Installs `on_prof` for SIGPROF once (SA_SIGINFO | SA_RESTART | SA_ONSTACK; SIGSEGV and SIGBUS
/// stay unblocked so guarded reads work inside it). Never restored: a late SIGPROF must not
/// kill the process.
fn install_prof() -> PyResult<()> {
    let mut result = Ok(());
    HANDLER_INSTALLED.call_once(|| {
        // SAFETY: all-zero sigaction, then the fields we use.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_prof as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        // SAFETY: valid sigset and pointers.
        if unsafe { libc::sigemptyset(&mut action.sa_mask) } != 0
            // SAFETY: as above.
            || unsafe { libc::sigaction(libc::SIGPROF, &action, std::ptr::null_mut()) } != 0
        {
            result = Err(PyRuntimeError::new_err("sigaction(SIGPROF) failed"));
        }
    });
    result
}

/// Sends SIGPROF to the calling thread, whose handler walks it: the resolved sample, as
/// `_walk_here` returns it, taken inside a signal handler.
#[pyfunction]
fn _walk_in_signal() -> PyResult<Option<Sample>> {
    install_prof()?;
    // SAFETY: raw syscalls with integer arguments.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    SYNC_LEN.store(0, Ordering::Relaxed);
    SYNC_TID.store(tid, Ordering::Release);
    // SAFETY: sends SIGPROF to this thread; it is delivered before tgkill returns (unblocked).
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, libc::SIGPROF) };
    if SYNC_TID.load(Ordering::Acquire) != 0 {
        SYNC_TID.store(0, Ordering::Release);
        return Err(PyRuntimeError::new_err("SIGPROF was not handled synchronously"));
    }
    let n = SYNC_LEN.load(Ordering::Acquire);
    let words: Vec<u64> = SYNC[..n].iter().map(|w| w.load(Ordering::Relaxed)).collect();
    Ok((n > 0).then(|| named(&words, &mut PyResolver::new(|_, _| None))))
}

static HAMMER_STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static HAMMER: std::sync::Mutex<Option<std::thread::JoinHandle<u64>>> = std::sync::Mutex::new(None);

/// Starts `setitimer(ITIMER_PROF)` every `interval_us` with the walking handler; with
/// `hammer_us > 0` a native thread also sends SIGPROF to the calling thread every `hammer_us`
/// (walks at arbitrary instructions, faster than the kernel tick lets ITIMER_PROF fire).
#[pyfunction]
#[pyo3(signature = (interval_us, hammer_us = 0))]
fn _sig_start(interval_us: i64, hammer_us: u64) -> PyResult<()> {
    install_prof()?;
    for len in &RING_LEN {
        len.store(0, Ordering::Relaxed);
    }
    RING_NEXT.store(0, Ordering::Release);
    for c in [&RUNS, &EMPTY, &WALK_NS, &UNSTORED] {
        c.store(0, Ordering::Relaxed);
    }
    if hammer_us > 0 {
        // SAFETY: raw syscalls with no arguments.
        let (pid, tid) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as i32) };
        HAMMER_STOP.store(false, Ordering::Release);
        let handle = std::thread::spawn(move || {
            let mut sent = 0u64;
            while !HAMMER_STOP.load(Ordering::Acquire) {
                // SAFETY: sends SIGPROF (our handler is installed) to the test's thread.
                unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGPROF) };
                sent += 1;
                std::thread::sleep(std::time::Duration::from_micros(hammer_us));
            }
            sent
        });
        *HAMMER.lock().map_err(|_| PyRuntimeError::new_err("poisoned"))? = Some(handle);
    }
    set_timer(interval_us)
}

fn set_timer(us: i64) -> PyResult<()> {
    let tv = libc::timeval { tv_sec: us / 1_000_000, tv_usec: us % 1_000_000 };
    let timer = libc::itimerval { it_interval: tv, it_value: tv };
    // SAFETY: valid pointer; ITIMER_PROF.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut()) } != 0 {
        return Err(PyRuntimeError::new_err("setitimer failed"));
    }
    Ok(())
}

/// Stops the timer; returns `(samples, figures)`: the stored samples resolved (up to 2048),
/// and a dict with `runs`, `empty`, `stored`, `unstored`, `walk_ns_mean`.
#[pyfunction]
fn _sig_stop(py: Python<'_>) -> PyResult<(Vec<Sample>, Bound<'_, PyDict>)> {
    set_timer(0)?;
    HAMMER_STOP.store(true, Ordering::Release);
    let hammer = HAMMER.lock().map_err(|_| PyRuntimeError::new_err("poisoned"))?.take();
    let sent = match hammer {
        Some(h) => py.detach(|| h.join()).unwrap_or(0),
        None => 0,
    };
    let stored = RING_NEXT.load(Ordering::Acquire).min(SLOTS);
    let mut resolver = PyResolver::new(|_, _| None);
    let mut samples = Vec::new();
    for slot in 0..stored {
        let n = RING_LEN[slot].load(Ordering::Acquire);
        if n >= walk::HEADER {
            let words: Vec<u64> = RING[slot][..n].iter().map(|w| w.load(Ordering::Relaxed)).collect();
            samples.push(named(&words, &mut resolver));
        }
    }
    let figures = PyDict::new(py);
    let runs = RUNS.load(Ordering::Relaxed);
    figures.set_item("runs", runs)?;
    figures.set_item("hammer_signals", sent)?;
    figures.set_item("empty", EMPTY.load(Ordering::Relaxed))?;
    figures.set_item("stored", stored)?;
    figures.set_item("unstored", UNSTORED.load(Ordering::Relaxed))?;
    figures.set_item("walk_ns_mean", WALK_NS.load(Ordering::Relaxed) / runs.max(1))?;
    Ok((samples, figures))
}

/// Mean ns of `n` walks of the calling thread, and the frames each found.
#[pyfunction]
fn _bench_walk(n: u32) -> (f64, usize) {
    let mut words = [0u64; WORDS];
    let mut frames = 0;
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: walk has no preconditions.
        frames = (unsafe { walk::walk(&mut words) }.saturating_sub(walk::HEADER)) / 2;
    }
    (start.elapsed().as_nanos() as f64 / f64::from(n.max(1)), frames)
}

/// Resolve cost for the calling thread's stack: (ns with empty caches, mean ns with warm
/// caches over `n` resolves, frames) through the core's `Resolver` entry point.
#[pyfunction]
fn _bench_resolve(n: u32) -> (f64, f64, usize) {
    use super::resolve::Resolver;
    let mut words = [0u64; WORDS];
    // SAFETY: walk has no preconditions.
    let len = unsafe { walk::walk(&mut words) };
    let mut resolver = PyResolver::new(|_, _| None);
    let mut frames = Vec::new();
    let start = Instant::now();
    resolver.resolve(&words[..len], &mut frames);
    let cold = start.elapsed().as_nanos() as f64;
    let start = Instant::now();
    for _ in 0..n {
        frames.clear();
        resolver.resolve(&words[..len], &mut frames);
    }
    (cold, start.elapsed().as_nanos() as f64 / f64::from(n.max(1)), frames.len())
}

/// The walker's counters.
#[pyfunction]
fn _walker_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let c = &COUNTERS;
    for (k, v) in [
        ("stacks", &c.stacks),
        ("not_python", &c.not_python),
        ("disarmed", &c.disarmed),
        ("wrong_thread", &c.wrong_thread),
        ("truncated", &c.truncated),
        ("torn", &c.torn),
        ("bad_label", &c.bad_label),
        ("frames_dropped", &DROPPED),
        ("frames_named", &NAMED),
    ] {
        d.set_item(k, v.load(Ordering::Relaxed))?;
    }
    d.set_item("faults", fault::faults())?;
    d.set_item("armed", fault::armed())?;
    d.set_item("initialised", super::runtime().is_some())?;
    d.set_item("collision_node_known", super::runtime().is_some_and(|rt| rt.collision_type != 0))?;
    Ok(d)
}

/// The wall-clock sampler's counters, and why it is unavailable (`error`, None when it is).
#[pyfunction]
fn _wall_stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let c = &super::wall::COUNTERS;
    for (k, v) in [
        ("ticks", &c.ticks),
        ("threads", &c.threads),
        ("samples", &c.samples),
        ("no_frames", &c.no_frames),
        ("retries", &c.retries),
        ("torn", &c.torn),
        ("list_cut", &c.list_cut),
        ("late_periods", &c.late_periods),
        ("busy_ns", &c.busy_ns),
    ] {
        d.set_item(k, v.load(Ordering::Relaxed))?;
    }
    d.set_item("error", super::runtime().and_then(|rt| rt.wall_interp().err().map(str::to_owned)))?;
    Ok(d)
}
