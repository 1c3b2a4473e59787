//! CPU sampling: one CPU-time timer per thread, a signal handler that unwinds into a ring. ⚠
//!
//! Timers are `timer_create(CLOCK_THREAD_CPUTIME_ID of tid, SIGEV_THREAD_ID → tid)`, created by
//! the collector thread for every thread it finds in `/proc/self/task` (so no code has to run on
//! the target thread), with a random first expiry so short-lived threads are not missed
//! systematically, and each sample weighted by `1 + si_overrun`. See DESIGN-FACTS §1 for why
//! this beats `setitimer(ITIMER_PROF)`: exact per-thread attribution, above CONFIG_HZ too.
//!
//! The timer's `sigval` carries `MAGIC << 32 | slot`; the handler maps that to a ThreadState
//! through the static [`SLOTS`] table, so it never dereferences a pointer it did not publish.

pub(crate) mod handler;
pub(crate) mod ring;

use std::cell::UnsafeCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::sync::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::sys;
use crate::unwind::{SignalCache, HANDLERS_ACTIVE};
use ring::{Lanes, Pushed};

/// Most threads sampled at once; further threads are counted in `Stats::threads_unsampled`.
pub(crate) const MAX_THREADS: usize = 8192;
const SIGVAL_MAGIC: u64 = 0x5059_524f; // "PYRO"

/// Sampling on (between start and stop of an agent).
pub(crate) static ENABLED: AtomicBool = AtomicBool::new(false);
/// The sigaction that was installed before ours, leaked on install, chained to.
pub(crate) static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
/// The rings every handler and hook writes to; created by the first agent and kept for the
/// process.
pub(crate) static RING_CELL: OnceLock<Lanes> = OnceLock::new();
/// Slot -> thread state for live timers.
pub(crate) static SLOTS: [AtomicPtr<ThreadState>; MAX_THREADS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_THREADS];

/// Nanoseconds spent in the handler for our timer signals, and how many ran (for Stats).
pub(crate) static HANDLER_NS: AtomicU64 = AtomicU64::new(0);
pub(crate) static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);

#[cfg(feature = "test-hooks")]
thread_local! {
    /// Set while this thread runs our signal handler (test builds only: a tripwire allocator
    /// in the stress test reads it).
    pub(crate) static IN_HANDLER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is inside the profiler's signal handler right now. Only with
/// the `test-hooks` feature; for allocation tripwires in tests.
#[cfg(feature = "test-hooks")]
pub fn in_signal_handler() -> bool {
    IN_HANDLER.try_with(|f| f.get()).unwrap_or(false)
}

/// Stand-in so the handler can write `RING.push(..)`.
pub(crate) struct RingRef;
pub(crate) static RING: RingRef = RingRef;
impl RingRef {
    /// Pushes into the lane of `key` (a value that stays the same for the calling thread).
    ///
    /// # Signal safety
    /// One atomic load, then [`ring::Lanes::push`].
    pub(crate) fn push(&self, key: usize, fill: impl FnOnce(&mut ring::Record)) -> Pushed {
        match RING_CELL.get() {
            Some(ring) => ring.push(key, fill),
            None => Pushed::Full,
        }
    }
}

pub(crate) fn slot_of_sigval(value: u64) -> Option<usize> {
    let slot = (value & 0xffff_ffff) as usize;
    (value >> 32 == SIGVAL_MAGIC && slot < MAX_THREADS).then_some(slot)
}

/// What the profiler knows about one OS thread. The signal handler reads it; the thread itself
/// writes `label_id`; the collector writes the stack bounds.
pub struct ThreadState {
    pub(crate) tid: i32,
    /// The id of the label set in force on this thread.
    pub(crate) label_id: AtomicU32,
    /// The thread has exited (its thread-local slot was destroyed).
    pub(crate) exited: AtomicBool,
    cache: OnceLock<Box<UnsafeCell<SignalCache>>>,
    /// A stack of our own for the handler's work, so that neither a small thread stack nor a
    /// small alternate signal stack (Go's are 32 KiB) limits the unwinder's stack use.
    pub(crate) handler_stack: OnceLock<HandlerStack>,
}

/// Size of the per-thread handler stack. The unwinder needs up to ~25 KiB on a rule-cache miss
/// (gimli's on-stack rule rows); pages never touched cost no memory.
pub(crate) const HANDLER_STACK_SIZE: usize = 64 * 1024;

/// An anonymous mapping the handler switches its stack pointer to. Pages the handler never
/// reaches are never backed by memory.
pub(crate) struct HandlerStack {
    base: *mut u8,
}

// SAFETY: the mapping is plain memory owned by this value; only the owning thread's handler
// writes to it, and it is unmapped only when the thread state is freed.
unsafe impl Send for HandlerStack {}
// SAFETY: as above; shared references only hand out the top address.
unsafe impl Sync for HandlerStack {}

impl HandlerStack {
    fn new() -> Option<Self> {
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                HANDLER_STACK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED).then(|| HandlerStack { base: p.cast() })
    }

    /// The 16-byte aligned top (stacks grow down).
    pub(crate) fn top(&self) -> *mut u8 {
        // SAFETY: one past the end of our own mapping, page aligned, so 16-byte aligned.
        unsafe { self.base.add(HANDLER_STACK_SIZE) }
    }
}

impl Drop for HandlerStack {
    fn drop(&mut self) {
        // SAFETY: `base` is the start of our HANDLER_STACK_SIZE mapping, unmapped once.
        unsafe { libc::munmap(self.base.cast(), HANDLER_STACK_SIZE) };
    }
}

// SAFETY: all fields are atomics or set-once, except the unwind cache, which only the signal
// handler running on this very thread touches (and the handler cannot nest: no SA_NODEFER and
// every signal blocked while it runs).
unsafe impl Sync for ThreadState {}
// SAFETY: as above; the cache is plain owned memory.
unsafe impl Send for ThreadState {}

impl ThreadState {
    fn new(tid: i32) -> Self {
        ThreadState {
            tid,
            label_id: AtomicU32::new(0),
            exited: AtomicBool::new(false),
            cache: OnceLock::new(),
            handler_stack: OnceLock::new(),
        }
    }

    /// A state attached to no thread (used during thread teardown).
    pub(crate) fn detached() -> Self {
        Self::new(0)
    }

    /// The unwinder's rule cache.
    ///
    /// # Signal safety
    /// One atomic load. Only the signal handler on this thread may call it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn cache(&self) -> Option<&mut SignalCache> {
        // SAFETY: the only caller is the handler on the thread this state belongs to, which does
        // not nest, so the &mut is unique for its lifetime.
        self.cache.get().map(|c| unsafe { &mut *c.get() })
    }
}

static REGISTRY: Mutex<Option<HashMap<i32, Arc<ThreadState>>>> = Mutex::new(None);
/// Threads the profiler itself runs; never sampled.
static OWN_THREADS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// The state of the calling thread, created on first use.
pub(crate) fn register_current_thread() -> Arc<ThreadState> {
    let tid = sys::gettid();
    let state = state_for(tid);
    // A thread that uses labels is sampled from now on: it arms its own timer while an agent
    // runs, rather than waiting for the collector's next scan (a short request thread would
    // lose its first milliseconds, more on a loaded machine).
    let armed = ENABLED.load(Ordering::SeqCst) && ACTIVE.lock().as_mut().is_some_and(|t| t.arm_thread(tid, &state));
    if !armed {
        NEW_THREADS.store(true, Ordering::SeqCst);
        COLLECTOR_WAKE.notify_all();
    }
    state
}

/// Wakes the collector now (a hook found its ring lane filling). Not from a signal handler.
/// One wake-up per collector pass: a hook that finds one already asked for returns at once
/// (a notify is a system call, and a burst asks on every push once its lane overflows).
pub(crate) fn wake_collector() {
    if !WAKE_ASKED.swap(true, Ordering::AcqRel) {
        COLLECTOR_WAKE.notify_all();
    }
}

/// A hook has woken the collector since its last pass began (see [`wake_collector`]).
pub(crate) static WAKE_ASKED: AtomicBool = AtomicBool::new(false);

/// A thread registered itself: the collector should scan at once.
pub(crate) static NEW_THREADS: AtomicBool = AtomicBool::new(false);
/// Wakes the collector (only one runs at a time; it waits on this with its own mutex).
pub(crate) static COLLECTOR_WAKE: Condvar = Condvar::new();

/// Marks the calling thread as the profiler's own: it is never sampled.
pub(crate) fn mark_own_thread() {
    crate::alloc::mark_own_thread();
    OWN_THREADS.lock().get_or_insert_with(HashSet::new).insert(sys::gettid());
}

/// The live state of thread `tid`, created if there is none (or only that of an exited thread
/// whose tid was reused).
fn state_for(tid: i32) -> Arc<ThreadState> {
    let mut reg = REGISTRY.lock();
    let map = reg.get_or_insert_with(HashMap::new);
    match map.get(&tid) {
        Some(s) if !s.exited.load(Ordering::Relaxed) => s.clone(),
        _ => {
            let s = Arc::new(ThreadState::new(tid));
            map.insert(tid, s.clone());
            s
        }
    }
}

/// Calls `f` with the label id in force on every registered thread (for the label-set
/// reclaimer: a set in a slot is in use).
pub(crate) fn for_each_label_id(f: &mut dyn FnMut(u32)) {
    if let Some(map) = REGISTRY.lock().as_ref() {
        for state in map.values() {
            f(state.label_id.load(Ordering::Acquire));
        }
    }
}

/// Installs the handler for `signal` once per process, keeping the previous action to chain to.
static INSTALLED: Mutex<Option<(i32, bool)>> = Mutex::new(None);

fn install_handler(signal: i32, on_alt_stack: bool) -> Result<()> {
    let mut installed = INSTALLED.lock();
    if *installed == Some((signal, on_alt_stack)) {
        return Ok(());
    }
    // SAFETY: zeroed sigaction is a valid "empty" value; every field we rely on is set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler::on_signal as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | if on_alt_stack { libc::SA_ONSTACK } else { 0 };
    // Block every other signal while the handler runs: it moves off the alternate signal stack
    // onto its own, and a nested signal delivered meanwhile (Go's SIGURG preemption) would be put
    // at the top of the alternate stack, over our frame. Blocked signals wait a microsecond.
    // SAFETY: sa_mask is a valid sigset_t to initialise.
    unsafe { libc::sigfillset(&mut action.sa_mask) };
    // SAFETY: plain C struct; all-zero is a valid value for sigaction to overwrite.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; `signal` was validated by the config.
    if unsafe { libc::sigaction(signal, &action, &mut old) } != 0 {
        return Err(Error::os("sigaction"));
    }
    // Never restore SIG_DFL later: a timer signal still in flight would kill the process.
    if old.sa_sigaction != handler::on_signal as *const () as usize {
        PREVIOUS.store(Box::into_raw(Box::new(old)), Ordering::Release);
    }
    *installed = Some((signal, on_alt_stack));
    Ok(())
}

struct Timer {
    id: libc::timer_t,
    slot: usize,
    state: Arc<ThreadState>,
}

/// The timers of the running agent: scanned by its collector, and armed by a thread that
/// registers itself (see [`register_current_thread`]).
static ACTIVE: Mutex<Option<Timers>> = Mutex::new(None);

/// The running agent's handle on per-thread sampling; the collector thread drives it.
pub(crate) struct Sampler {
    _only_start: (),
}

impl Sampler {
    pub(crate) fn start(signal: i32, on_alt_stack: bool, hz: u32, lanes: usize, lane_capacity: usize) -> Result<Self> {
        RING_CELL.get_or_init(|| Lanes::new(lanes, lane_capacity));
        install_handler(signal, on_alt_stack)?;
        crate::unwind::refresh();
        crate::unwind::refresh_maps();
        ENABLED.store(true, Ordering::SeqCst);
        let seed =
            Instant::now().elapsed().as_nanos() as u64 ^ (sys::getpid() as u64).rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
        let mut timers = Timers {
            signal,
            period: Duration::from_nanos(1_000_000_000 / hz as u64),
            timers: HashMap::new(),
            free_slots: (0..MAX_THREADS).rev().collect(),
            rng: seed | 1,
            threads_unsampled: 0,
        };
        retire(timers.scan());
        *ACTIVE.lock() = Some(timers);
        Ok(Sampler { _only_start: () })
    }

    /// Finds new and exited threads, creates and deletes timers, refreshes the maps table.
    pub(crate) fn scan(&mut self) {
        let retired = ACTIVE.lock().as_mut().map(Timers::scan);
        // After the lock: a thread registering itself never waits for handlers to finish.
        retire(retired.unwrap_or_default());
    }

    /// (threads sampled, threads seen but not sampled).
    pub(crate) fn threads(&self) -> (usize, u64) {
        ACTIVE.lock().as_ref().map_or((0, 0), |t| (t.timers.len(), t.threads_unsampled))
    }

    /// Stops every timer; after this no handler can reach a state of this sampler.
    pub(crate) fn stop(&mut self) {
        ENABLED.store(false, Ordering::SeqCst);
        let taken = ACTIVE.lock().take();
        if let Some(mut t) = taken {
            t.stop();
        }
    }
}

struct Timers {
    signal: i32,
    period: Duration,
    timers: HashMap<i32, Timer>,
    free_slots: Vec<usize>,
    rng: u64,
    /// Threads seen but not sampled (table full or timer_create/settime refused).
    threads_unsampled: u64,
}

// SAFETY: `timer_t` values are plain process-wide ids usable from any thread.
unsafe impl Send for Timers {}

impl Timers {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: good enough to spread first expiries.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Returns the states of deleted timers, for [`retire`].
    fn scan(&mut self) -> Vec<Arc<ThreadState>> {
        // Exited threads: their CPU clock is gone, so the timer reads as disarmed.
        let dead: Vec<i32> = self
            .timers
            .iter()
            .filter(|(_, t)| {
                // SAFETY: zeroed itimerspec is valid; `t.id` is a live timer we created.
                let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                let rc = unsafe { libc::timer_gettime(t.id, &mut cur) };
                rc != 0 || (cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0)
            })
            .map(|(tid, _)| *tid)
            .collect();
        let mut retired = Vec::new();
        for tid in dead {
            if let Some(t) = self.timers.remove(&tid) {
                // A new thread reusing this tid must get a fresh state (stack, labels).
                if let Some(map) = REGISTRY.lock().as_mut() {
                    if map.get(&tid).is_some_and(|s| Arc::ptr_eq(s, &t.state)) {
                        map.remove(&tid);
                    }
                }
                retired.push(self.delete(t));
            }
        }
        let tids = sys::list_threads().unwrap_or_default();
        let own = OWN_THREADS.lock().clone().unwrap_or_default();
        // A profiler thread may have been armed before it marked itself as ours.
        for tid in own.iter() {
            if let Some(t) = self.timers.remove(tid) {
                retired.push(self.delete(t));
            }
        }
        for tid in tids {
            if own.contains(&tid) || self.timers.contains_key(&tid) {
                continue;
            }
            let state = state_for(tid);
            match self.arm(tid, state) {
                Ok(t) => {
                    self.timers.insert(tid, t);
                }
                Err(_) => self.threads_unsampled += 1,
            }
        }
        crate::unwind::refresh_maps();
        // Forget registry entries of threads that are gone.
        if let Some(map) = REGISTRY.lock().as_mut() {
            map.retain(|tid, s| {
                self.timers.contains_key(tid) || (!s.exited.load(Ordering::Relaxed) && Arc::strong_count(s) > 1)
            });
        }
        retired
    }

    /// Arms the calling thread `tid` unless it has a timer or is the profiler's own; true
    /// when it is sampled now.
    fn arm_thread(&mut self, tid: i32, state: &Arc<ThreadState>) -> bool {
        if self.timers.contains_key(&tid) {
            return true;
        }
        if OWN_THREADS.lock().as_ref().is_some_and(|own| own.contains(&tid)) {
            return false;
        }
        match self.arm(tid, state.clone()) {
            Ok(t) => {
                self.timers.insert(tid, t);
                true
            }
            Err(_) => false,
        }
    }

    fn arm(&mut self, tid: i32, state: Arc<ThreadState>) -> Result<Timer> {
        let slot = self.free_slots.pop().ok_or(Error::Os { what: "thread table", errno: "full".into() })?;
        state.cache.get_or_init(|| Box::new(UnsafeCell::new(SignalCache::new_in())));
        if state.handler_stack.get().is_none() {
            if let Some(stack) = HandlerStack::new() {
                let _ = state.handler_stack.set(stack);
            }
        }
        SLOTS[slot].store(Arc::as_ptr(&state) as *mut ThreadState, Ordering::SeqCst);
        // SAFETY: zeroed sigevent is valid; the fields the kernel reads are set below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = self.signal;
        sev.sigev_value = libc::sigval { sival_ptr: ((SIGVAL_MAGIC << 32) | slot as u64) as *mut libc::c_void };
        sev.sigev_notify_thread_id = tid;
        // The per-thread CPU clock of another thread: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED).
        let clock = ((!tid) << 3) | 6;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `sev` and `id` are valid for the call; the kernel checks the clock and tid.
        if unsafe { libc::timer_create(clock, &mut sev, &mut id) } != 0 {
            SLOTS[slot].store(std::ptr::null_mut(), Ordering::SeqCst);
            self.free_slots.push(slot);
            return Err(Error::os("timer_create"));
        }
        let period = self.period.as_nanos() as u64;
        let first = 1 + self.next_random() % period;
        let its = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: (period / 1_000_000_000) as _,
                tv_nsec: (period % 1_000_000_000) as _,
            },
            it_value: libc::timespec { tv_sec: (first / 1_000_000_000) as _, tv_nsec: (first % 1_000_000_000) as _ },
        };
        // SAFETY: `id` was just created; `its` is valid.
        if unsafe { libc::timer_settime(id, 0, &its, std::ptr::null_mut()) } != 0 {
            let t = Timer { id, slot, state };
            drop(self.delete(t));
            return Err(Error::os("timer_settime"));
        }
        Ok(Timer { id, slot, state })
    }

    /// Deletes the timer and clears its slot; the returned state must outlive running handlers.
    fn delete(&mut self, t: Timer) -> Arc<ThreadState> {
        // SAFETY: `t.id` is a timer we created and have not deleted.
        unsafe { libc::timer_delete(t.id) };
        SLOTS[t.slot].store(std::ptr::null_mut(), Ordering::SeqCst);
        self.free_slots.push(t.slot);
        t.state
    }

    fn stop(&mut self) {
        let timers: Vec<Timer> = self.timers.drain().map(|(_, t)| t).collect();
        let states: Vec<_> = timers.into_iter().map(|t| self.delete(t)).collect();
        retire(states);
    }
}

/// Frees the states of deleted timers once no handler can be using them.
fn retire(states: Vec<Arc<ThreadState>>) {
    if !states.is_empty() {
        wait_for_handlers();
        drop(states);
    }
}

/// Waits (bounded) until no handler is running, so states and snapshots unlinked before this
/// call can be freed.
fn wait_for_handlers() {
    let deadline = Instant::now() + Duration::from_millis(200);
    while !HANDLERS_ACTIVE.idle() && Instant::now() < deadline {
        std::thread::yield_now();
    }
}

pub(crate) fn prepare_fork() {
    ACTIVE.fork_hold();
    INSTALLED.fork_hold();
    REGISTRY.fork_hold();
    OWN_THREADS.fork_hold();
}

pub(crate) fn after_fork_parent() {
    release_locks();
}

fn release_locks() {
    OWN_THREADS.fork_release();
    REGISTRY.fork_release();
    INSTALLED.fork_release();
    ACTIVE.fork_release();
}

pub(crate) fn after_fork_child() {
    // The child has no timers and only this thread: stop sampling, forget the parent's threads.
    ENABLED.store(false, Ordering::SeqCst);
    release_locks();
    // The parent's timers do not exist in the child (POSIX timers are not inherited): forget
    // them, so that a registering thread does not arm against a table of dead ids.
    if let Some(parent) = ACTIVE.lock().take() {
        std::mem::forget(parent);
    }
    for slot in SLOTS.iter() {
        slot.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
    if let Some(ring) = RING_CELL.get() {
        ring.reset_after_fork();
    }
    *OWN_THREADS.lock() = None;
    let me = sys::gettid();
    if let Some(map) = REGISTRY.lock().as_mut() {
        map.retain(|tid, _| *tid == me);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_takes_labels_is_sampled_at_once() {
        let dir = std::env::temp_dir().join(format!("pyroscope-arm-{}", std::process::id()));
        let agent = crate::AgentBuilder::new("arm").export_dir(&dir).memory(false).start().unwrap();
        // No collector scan can run between the label call and the check: the thread armed
        // its own timer.
        let armed = std::thread::spawn(|| {
            crate::tag_wrapper(&[("k", "v")], || {
                ACTIVE.lock().as_ref().is_some_and(|t| t.timers.contains_key(&sys::gettid()))
            })
        })
        .join()
        .unwrap();
        agent.stop();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(armed, "a labelled thread waited for the collector's scan");
    }
}
