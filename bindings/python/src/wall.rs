//! `configure(oncpu=False)`: wall-clock samples of every Python thread, idle ones included.
//!
//! A thread of our own (`pyroscope-wall`, a Rust thread marked as the profiler's: never
//! sampled, never holding the GIL) wakes every 1/sample_rate s and reads every thread state of
//! the interpreter ([`crate::cpython::wall`]); no thread is signalled, so no system call of the
//! program is interrupted. Each thread with Python frames gives one sample, named by a
//! [`PyResolver`] of its own, labelled with the thread's tags (read around its walks) under its
//! Context's `tag_wrapper` labels, and handed to the agent's `wall` profile. A tick that starts
//! late weighs the periods it missed, and a thread whose walks were all dropped (it kept moving:
//! the GIL holder in a tight loop) hands its periods to its next kept sample (at most 100), so
//! a thread's wall time stays its elapsed time; no stack is ever guessed, but a fast-moving
//! thread's time leans toward the stacks that could be read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pyroscope_core::{FrameId, LabelSet, Resolver};

use crate::cpython::{self, wall as cwall, PyResolver};

struct Running {
    thread: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    pid: u32,
}

static WALL: Mutex<Option<Running>> = Mutex::new(None);

/// One sample for the agent: frames, the thread's labels, the Context's, weight.
pub(crate) type Sample = (Vec<FrameId>, LabelSet, Option<LabelSet>, u64);

/// Starts the sampler thread at `rate` Hz (none if it runs already in this process).
///
/// # Errors
/// Why wall-clock samples cannot be taken (the walker or its thread-list check failed at init,
/// or the thread could not be spawned).
pub fn start(rate: u32) -> Result<(), String> {
    let rt = cpython::runtime().ok_or("wall-clock sampling is disabled: Python stacks are not available")?;
    let interp = rt.wall_interp()?;
    let mut slot = WALL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(running) = slot.take() {
        if running.pid == std::process::id() {
            *slot = Some(running);
            return Ok(());
        }
        // A forked child: the parent's thread does not exist here.
        std::mem::forget(running);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let period = Duration::from_nanos(1_000_000_000 / u64::from(rate.max(1)));
    let thread = std::thread::Builder::new()
        .name("pyroscope-wall".into())
        .spawn(move || {
            pyroscope_core::mark_own_thread();
            run(rt, interp, period, &flag);
        })
        .map_err(|e| format!("wall-clock sampling is disabled: its thread could not start ({e})"))?;
    *slot = Some(Running { thread, stop, pid: std::process::id() });
    Ok(())
}

/// Stops the sampler thread and waits for it (its last tick's samples are in the agent); call
/// without the GIL, before stopping the agent.
pub fn stop() {
    let running = WALL.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(r) = running {
        if r.pid != std::process::id() {
            std::mem::forget(r);
            return;
        }
        r.stop.store(true, Ordering::Release);
        r.thread.thread().unpark();
        let _ = r.thread.join();
    }
}

/// The sampler runs in this process.
pub fn running() -> bool {
    WALL.lock().unwrap_or_else(|e| e.into_inner()).as_ref().is_some_and(|r| r.pid == std::process::id())
}

/// Ticks a thread's named stack is reused while its walk gives the same words (an idle thread's
/// do, tick after tick) before it is named again from the interpreter's memory.
const REUSE_TICKS: u32 = 100;

/// Most periods a thread's dropped walks may hand on to its next kept one.
const MAX_OWED: u64 = 100;

/// A thread's last walk and what it was named.
struct Last {
    words: Vec<u64>,
    frames: Vec<FrameId>,
    context: Option<LabelSet>,
    age: u32,
    tick: u64,
}

fn run(rt: &'static cpython::Runtime, interp: usize, period: Duration, stop: &AtomicBool) {
    let mut resolver = PyResolver::new(crate::labels::lookup);
    // By thread state address; entries of states not seen in a tick are dropped.
    let mut last: HashMap<usize, Last> = HashMap::new();
    let mut tick = 0u64;
    // Periods of threads whose walks were all dropped (they kept moving), by thread state: added
    // to the thread's next kept sample, so its wall time stays its elapsed time.
    let mut owed: HashMap<usize, (u64, u64)> = HashMap::new();
    let mut words = vec![0u64; cpython::walk_words()];
    let mut frames: Vec<FrameId> = Vec::new();
    let mut states: Vec<usize> = Vec::new();
    let mut batch: Vec<Sample> = Vec::new();
    let mut next = Instant::now() + period;
    loop {
        let now = loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            if now >= next {
                break now;
            }
            std::thread::park_timeout(next - now);
        };
        // Periods missed (the machine was busy): this tick's samples stand for them too.
        let late = (now.duration_since(next).as_nanos() / period.as_nanos().max(1)) as u64;
        let weight = 1 + late;
        next += period * u32::try_from(weight).unwrap_or(u32::MAX);
        cwall::COUNTERS.ticks.fetch_add(1, Ordering::Relaxed);
        cwall::COUNTERS.late_periods.fetch_add(late, Ordering::Relaxed);
        // The list first, then each state: a thread's walk may take a while.
        states.clear();
        cwall::for_each_thread(interp, rt.offsets(), |t| states.push(t));
        for &tstate in &states {
            let (n, labels) = match cwall::walk_thread(rt, interp, tstate, &mut words) {
                cwall::Walk::Kept(_tid, n, labels) => (n, labels),
                cwall::Walk::Moving => {
                    let o = owed.entry(tstate).or_insert((0, tick));
                    *o = ((o.0 + weight).min(MAX_OWED), tick);
                    continue;
                }
                cwall::Walk::NoFrames => continue,
            };
            let weight = weight + owed.remove(&tstate).map_or(0, |o| o.0);
            let seen = match last.get_mut(&tstate) {
                Some(l) if l.words == words[..n] && l.age < REUSE_TICKS => {
                    l.age += 1;
                    l.tick = tick;
                    l
                }
                _ => {
                    frames.clear();
                    let context = resolver.resolve(&words[..n], &mut frames);
                    let fresh = Last { words: words[..n].to_vec(), frames: frames.clone(), context, age: 0, tick };
                    last.insert(tstate, fresh);
                    match last.get_mut(&tstate) {
                        Some(l) => l,
                        None => continue,
                    }
                }
            };
            if seen.frames.is_empty() {
                continue;
            }
            batch.push((seen.frames.clone(), labels, seen.context.clone(), weight));
        }
        last.retain(|_, l| l.tick == tick);
        owed.retain(|_, o| o.1 == tick);
        tick += 1;
        crate::agent::add_wall(&mut batch);
        cwall::COUNTERS.busy_ns.fetch_add(now.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}
