//! CPU sampling: one CPU-time timer per thread, a signal handler that unwinds into a ring. ⚠
//!
//! Timers are `timer_create(CLOCK_THREAD_CPUTIME_ID of tid, SIGEV_THREAD_ID → tid)`, created by
//! the collector thread for every thread it finds in `/proc/self/task` (so no code has to run on
//! the target thread), with a random first expiry so short-lived threads are not missed
//! systematically, and each sample weighted by `1 + si_overrun`. See DESIGN-FACTS §1 for why
//! this beats `setitimer(ITIMER_PROF)`: exact per-thread attribution, above CONFIG_HZ too.
//!
//! The timer's `sigval` carries `MAGIC << 48 | generation << 16 | slot`; the handler maps the
//! slot to a ThreadState through the static [`SLOTS`] table, so it never dereferences a pointer
//! it did not publish, and uses that state only if the state's timer generation is the one in
//! the signal. A signal queued before its timer was deleted (kernels before 6.13 still deliver
//! it, to the thread the old timer targeted) therefore never runs with the state of the thread
//! that took the slot over: it is counted in [`STALE_SIGNALS`] and dropped.

pub(crate) mod handler;

use crate::ring::{COLLECTOR_WAKE, RING_CELL};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::Mutex;

use crate::error::{Error, Result};
use crate::ring::Lanes;
use crate::sys;
use crate::thread::{self, ThreadState};
use crate::unwind::HANDLERS_ACTIVE;

/// Most threads sampled at once; further threads are counted in `Stats::threads_unsampled`.
pub(crate) const MAX_THREADS: usize = 8192;
const SIGVAL_MAGIC: u64 = 0x5059; // "PY"

/// Sampling on (between start and stop of an agent).
pub(crate) static ENABLED: AtomicBool = AtomicBool::new(false);
/// The sigaction that was installed before ours, leaked on install, chained to.
pub(crate) static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
/// Slot -> thread state for live timers.
pub(crate) static SLOTS: [AtomicPtr<ThreadState>; MAX_THREADS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_THREADS];

/// Nanoseconds spent in the handler for our timer signals, and how many ran (for Stats).
pub(crate) static HANDLER_NS: AtomicU64 = AtomicU64::new(0);
pub(crate) static HANDLER_RUNS: AtomicU64 = AtomicU64::new(0);
/// Timer signals dropped because their timer was deleted, or its slot now belongs to another
/// timer, before they were delivered.
pub(crate) static STALE_SIGNALS: AtomicU64 = AtomicU64::new(0);

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

/// Hooks for tests that need a thread held inside the handler or the allocation hook (a fork
/// at that instant). Only with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub mod test_hooks {
    use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

    static IN_HANDLER_TID: AtomicI32 = AtomicI32::new(0);
    static IN_HOOK_TID: AtomicI32 = AtomicI32::new(0);
    static HELD: AtomicUsize = AtomicUsize::new(0);

    /// The kernel id of the calling thread.
    pub fn gettid() -> i32 {
        crate::sys::gettid()
    }

    /// Holds thread `tid` the next times it runs the profiler's signal handler (after counting
    /// itself in as a reader), until [`release`].
    pub fn hold_in_handler(tid: i32) {
        IN_HANDLER_TID.store(tid, Ordering::SeqCst);
    }

    /// As [`hold_in_handler`], inside the allocation hook's sampled path.
    pub fn hold_in_hook(tid: i32) {
        IN_HOOK_TID.store(tid, Ordering::SeqCst);
    }

    /// Threads being held now.
    pub fn held() -> usize {
        HELD.load(Ordering::SeqCst)
    }

    /// Lets every held thread go on.
    pub fn release() {
        IN_HANDLER_TID.store(0, Ordering::SeqCst);
        IN_HOOK_TID.store(0, Ordering::SeqCst);
    }

    /// Allocations sampled since the process started.
    pub fn alloc_samples() -> u64 {
        crate::alloc::SAMPLED.load(Ordering::Relaxed)
    }

    /// Allocation records the ring dropped (every lane full) since the process started.
    pub fn alloc_records_dropped() -> u64 {
        crate::ring::RING_CELL.get().map_or(0, |r| r.dropped(crate::ring::Kind::Alloc))
    }

    /// Timer signals dropped as stale (their timer deleted or replaced before delivery).
    pub fn stale_signals() -> u64 {
        super::STALE_SIGNALS.load(Ordering::Relaxed)
    }

    /// Unwind snapshots, maps tables and thread states retired but not freed yet.
    pub fn retained_tables() -> usize {
        crate::unwind::retained() + super::RETIRED.lock().len()
    }

    static HOLD_COLLECTOR: AtomicBool = AtomicBool::new(false);
    static COLLECTOR_HELD: AtomicBool = AtomicBool::new(false);

    /// Holds the collector thread the next times it has built a window's profile, before it
    /// queues it, until [`release_collector`].
    pub fn hold_collector() {
        HOLD_COLLECTOR.store(true, Ordering::SeqCst);
    }

    /// The collector is being held now.
    pub fn collector_held() -> bool {
        COLLECTOR_HELD.load(Ordering::SeqCst)
    }

    /// Lets the collector go on.
    pub fn release_collector() {
        HOLD_COLLECTOR.store(false, Ordering::SeqCst);
    }

    /// See [`hold_collector`].
    pub(crate) fn hold_collector_here() {
        if HOLD_COLLECTOR.load(Ordering::SeqCst) {
            COLLECTOR_HELD.store(true, Ordering::SeqCst);
            while HOLD_COLLECTOR.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            COLLECTOR_HELD.store(false, Ordering::SeqCst);
        }
    }

    /// # Signal safety
    /// Atomics, `gettid` and `sched_yield` (raw syscalls).
    pub(crate) fn hold_in_handler_here() {
        hold(&IN_HANDLER_TID);
    }

    /// See [`hold_in_handler_here`].
    pub(crate) fn hold_in_hook_here() {
        hold(&IN_HOOK_TID);
    }

    fn hold(which: &AtomicI32) {
        let tid = which.load(Ordering::SeqCst);
        if tid == 0 || tid != crate::sys::gettid() {
            return;
        }
        HELD.fetch_add(1, Ordering::SeqCst);
        while which.load(Ordering::SeqCst) == tid {
            // SAFETY: sched_yield takes no arguments and cannot fail.
            unsafe { libc::sched_yield() };
        }
        HELD.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The bit of a `sigval` that marks a wall-clock timer (slots take the 13 bits below it).
const WALL_BIT: u64 = 1 << 15;

/// The `sigval` of the timer in `slot` armed with `generation` (its wall-clock timer's when
/// `wall`).
fn sigval_of(slot: usize, generation: u32, wall: bool) -> u64 {
    (SIGVAL_MAGIC << 48) | (generation as u64) << 16 | if wall { WALL_BIT } else { 0 } | slot as u64
}

/// (slot, generation, wall) of one of our timers' `sigval`, or None when the value is not ours.
///
/// # Signal safety
/// Arithmetic only.
pub(crate) fn slot_of_sigval(value: u64) -> Option<(usize, u32, bool)> {
    let slot = (value & 0x7fff) as usize;
    (value >> 48 == SIGVAL_MAGIC && slot < MAX_THREADS).then_some((slot, (value >> 16) as u32, value & WALL_BIT != 0))
}

/// Arms the timer of a thread that registered itself (its first label call or
/// `register_thread`) while an agent runs, rather than waiting for the collector's next scan (a
/// short request thread would lose its first milliseconds, more on a loaded machine). Without a
/// running agent, asks the collector of the next one to scan.
fn arm_new_thread(tid: i32, state: &Arc<ThreadState>) {
    let armed = ENABLED.load(Ordering::SeqCst) && ACTIVE.lock().as_mut().is_some_and(|t| t.arm_thread(tid, state));
    if !armed {
        NEW_THREADS.store(true, Ordering::SeqCst);
        COLLECTOR_WAKE.notify_all();
    }
}

/// A thread registered itself: the collector should scan at once.
pub(crate) static NEW_THREADS: AtomicBool = AtomicBool::new(false);

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
    if !on_alt_stack {
        // ...except SIGSEGV and SIGBUS when the handler's frame is on the interrupted stack: an
        // interpreter's walker reads through `crate::fault`, whose handler turns a fault into an
        // error, and a fault while those signals are blocked kills the process instead (the
        // kernel resets a blocked synchronous signal to its default action). The nested frame
        // lands on the stack in use or at the top of an alternate stack, not over ours (which is
        // on the interrupted thread's stack, unless the signal came while that thread ran
        // another handler on its alternate stack).
        // SAFETY: sa_mask was initialised above; both are valid signal numbers.
        unsafe {
            libc::sigdelset(&mut action.sa_mask, libc::SIGSEGV);
            libc::sigdelset(&mut action.sa_mask, libc::SIGBUS);
        }
    }
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
    /// The wall-clock timer of a thread marked for it (see [`crate::sample_wall_time`]).
    wall: Option<libc::timer_t>,
    slot: usize,
    generation: u32,
    state: Arc<ThreadState>,
}

/// The generation of the last timer armed, process-wide (an agent started later must not reuse
/// the generations of an earlier agent's timers, whose late signals may still come).
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// A generation no live timer has. Zero means "no timer" and is skipped when the count wraps
/// (after 4 billion timers, long after any late signal of the first was delivered).
fn next_generation() -> u32 {
    loop {
        let g = GENERATION.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if g != 0 {
            return g;
        }
    }
}

/// The timers of the running agent: scanned by its collector, and armed by a thread that
/// registers itself (see [`arm_new_thread`]).
static ACTIVE: Mutex<Option<Timers>> = Mutex::new(None);

/// The running agent's handle on per-thread sampling; the collector thread drives it.
/// Dropping it stops every timer it armed (a start that fails after it, a collector that
/// panics).
pub(crate) struct Sampler {
    stopped: bool,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Sampler {
    /// Installs the handler and arms a timer for every thread found now. The unwind tables
    /// are not copied here, on the caller's thread (under the preload library, before the
    /// program's `main`): the collector publishes them when it starts (see
    /// [`crate::unwind::refresh`]), and the few samples taken before that are recorded as
    /// truncated, as for code in a module loaded since the last refresh. The maps table is
    /// read by the first scan below.
    /// With `cpu` false only the ring is made (allocation samples use it): no handler, no timer.
    pub(crate) fn start(
        cpu: bool,
        signal: i32,
        on_alt_stack: bool,
        hz: u32,
        lanes: usize,
        lane_capacity: usize,
    ) -> Result<Self> {
        RING_CELL.get_or_init(|| Lanes::new(lanes, lane_capacity));
        if !cpu {
            return Ok(Sampler { stopped: false });
        }
        thread::on_new_thread(arm_new_thread);
        install_handler(signal, on_alt_stack)?;
        ENABLED.store(true, Ordering::SeqCst);
        let seed =
            Instant::now().elapsed().as_nanos() as u64 ^ (sys::getpid() as u64).rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
        let mut timers = Timers::new(signal, hz, seed);
        retire(timers.scan());
        *ACTIVE.lock() = Some(timers);
        Ok(Sampler { stopped: false })
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
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
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
    /// When the maps table was last read, and the loader's generation and
    /// [`crate::unwind::STACKS_UNKNOWN`] then.
    maps_read: Option<(Instant, (u64, u64), u64)>,
    /// A thread was armed since the maps table was read: its stack may be missing from it.
    maps_stale: bool,
    /// When to read the maps table again for the mappings a thread armed lately made once it
    /// ran a while (a Node worker's isolate maps its own copy of V8's builtins, which the
    /// symbolizer must remember should the worker end before its window does).
    maps_recheck: Option<Instant>,
    /// What the last listing of `/proc/self/task` found (see [`Listing`]).
    listing: Option<Listing>,
}

/// What a scan's listing of `/proc/self/task` found. The next scan lists the threads again
/// only when they may have changed: the task directory's link count moved (a thread started or
/// exited), a sampled thread exited, the profiler's own threads changed, a listed thread could
/// not be sampled, or the listing is [`LISTING_MAX_AGE`] old. A thread that exits and another
/// that starts between two scans leave the count as it was, but the exited thread's timer
/// reads as dead.
struct Listing {
    /// [`sys::task_links`] before the listing (read first: a thread started during the
    /// listing moves the count the next scan compares).
    links: u64,
    /// How many of the profiler's own threads there were.
    own: usize,
    /// Every thread listed was sampled or is the profiler's own.
    complete: bool,
    at: Instant,
}

/// The longest a scan trusts the last listing of `/proc/self/task` (a backstop: the checks of
/// [`Listing`] catch every change first).
const LISTING_MAX_AGE: Duration = Duration::from_secs(1);

/// The longest a scan leaves the maps table unread when no thread was armed, no library
/// loaded or unloaded and no handler met a stack outside the table since it was read: other
/// file mappings the symbolizer should remember (see [`Timers::maps_recheck`]) are seen
/// within this. (Reading /proc/self/maps at every scan was most of an idle profiler's own
/// work, and once a second a tenth of a busy one's.)
const MAPS_MAX_AGE: Duration = Duration::from_secs(10);
/// A table read for stacks outside it is at least this old (a program that keeps making new
/// stacks, coroutines for one, would otherwise have it read at every scan).
const MAPS_MIN_AGE: Duration = Duration::from_secs(1);

// SAFETY: `timer_t` values are plain process-wide ids usable from any thread.
unsafe impl Send for Timers {}

impl Timers {
    fn new(signal: i32, hz: u32, seed: u64) -> Self {
        Timers {
            signal,
            period: Duration::from_nanos(1_000_000_000 / hz as u64),
            timers: HashMap::new(),
            free_slots: (0..MAX_THREADS).rev().collect(),
            rng: seed | 1,
            threads_unsampled: 0,
            maps_read: None,
            maps_stale: true,
            maps_recheck: None,
            listing: None,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: good enough to spread first expiries.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Returns the states of deleted timers, for [`retire`].
    fn scan(&mut self) -> Vec<Arc<ThreadState>> {
        // A timer reads as disarmed when its thread exited (its CPU clock is gone), and, on
        // kernels before 6.13, also while its last signal waits for delivery (a periodic CPU
        // timer was re-armed only when its signal was delivered: a thread that blocks the
        // signal keeps it pending). Re-arming tells them apart: it fails (ESRCH) once the
        // thread is gone. Deleting a live thread's timer instead would give the thread a new
        // state, without its labels.
        let disarmed: Vec<(i32, libc::timer_t)> = self
            .timers
            .iter()
            .filter(|(_, t)| {
                // SAFETY: zeroed itimerspec is valid; `t.id` is a live timer we created.
                let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                let rc = unsafe { libc::timer_gettime(t.id, &mut cur) };
                rc != 0 || (cur.it_value.tv_sec == 0 && cur.it_value.tv_nsec == 0)
            })
            .map(|(tid, t)| (*tid, t.id))
            .collect();
        let dead: Vec<i32> =
            disarmed.into_iter().filter(|&(_, id)| self.set_time(id).is_err()).map(|(tid, _)| tid).collect();
        let mut retired = Vec::new();
        let someone_exited = !dead.is_empty();
        for tid in dead {
            if let Some(t) = self.timers.remove(&tid) {
                // A new thread reusing this tid must get a fresh state (stack, labels).
                thread::forget(tid, &t.state);
                retired.push(self.delete(t));
            }
        }
        let own = thread::own_threads();
        // A profiler thread may have been armed before it marked itself as ours.
        for tid in own.iter() {
            if let Some(t) = self.timers.remove(tid) {
                retired.push(self.delete(t));
            }
        }
        let links = sys::task_links();
        let unchanged = !someone_exited
            && self.listing.as_ref().is_some_and(|l| {
                l.complete && Some(l.links) == links && l.own == own.len() && l.at.elapsed() < LISTING_MAX_AGE
            });
        if !unchanged {
            let tids = sys::list_threads().unwrap_or_default();
            for &tid in &tids {
                if own.contains(&tid) || self.timers.contains_key(&tid) {
                    continue;
                }
                let state = thread::state_for(tid);
                match self.arm(tid, state) {
                    Ok(t) => {
                        self.timers.insert(tid, t);
                    }
                    Err(_) => self.threads_unsampled += 1,
                }
            }
            let complete = !tids.is_empty() && tids.iter().all(|t| own.contains(t) || self.timers.contains_key(t));
            self.listing = links.map(|links| Listing { links, own: own.len(), complete, at: Instant::now() });
        }
        self.refresh_maps();
        // Forget registry entries of threads that are gone.
        thread::retain(|tid, s| {
            self.timers.contains_key(tid) || (!s.exited.load(Ordering::Relaxed) && Arc::strong_count(s) > 1)
        });
        retired
    }

    /// Re-reads the maps table when a thread was armed since it was read (a new thread's stack
    /// must be in it for its handler to read that stack with plain loads; until then, reads go
    /// through the kernel) and again [`MAPS_MIN_AGE`] later, when a handler met a stack outside
    /// it (a stack that grew or moved; at most once per [`MAPS_MIN_AGE`]), when libraries were
    /// loaded or unloaded, or when it is [`MAPS_MAX_AGE`] old.
    fn refresh_maps(&mut self) {
        let generation = crate::unwind::loader_generation();
        let unknown = crate::unwind::STACKS_UNKNOWN.load(Ordering::Relaxed);
        let fresh = self.maps_read.is_some_and(|(at, g, u)| {
            let age = at.elapsed();
            g == generation && age < MAPS_MAX_AGE && (u == unknown || age < MAPS_MIN_AGE)
        });
        let now = Instant::now();
        let recheck = self.maps_recheck.is_some_and(|at| now >= at);
        if self.maps_stale || recheck || !fresh {
            crate::unwind::refresh_maps();
            self.maps_read = Some((now, generation, unknown));
            self.maps_stale = false;
            if recheck {
                self.maps_recheck = None;
            }
        }
    }

    /// Arms the calling thread `tid` unless it has a timer or is the profiler's own; true
    /// when it is sampled now.
    fn arm_thread(&mut self, tid: i32, state: &Arc<ThreadState>) -> bool {
        if let Some(t) = self.timers.get(&tid) {
            if t.wall.is_none() && state.wall.load(Ordering::SeqCst) {
                let (slot, generation) = (t.slot, t.generation);
                let wall = self.create(tid, libc::CLOCK_MONOTONIC, sigval_of(slot, generation, true)).ok();
                let wall = wall.filter(|&id| self.set_time(id).is_ok());
                if let Some(t) = self.timers.get_mut(&tid) {
                    t.wall = wall;
                }
            }
            return true;
        }
        if thread::is_own(tid) {
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
        state.install_caches();
        self.maps_stale = true;
        self.maps_recheck = Some(Instant::now() + MAPS_MIN_AGE);
        let generation = next_generation();
        state.timer_gen.store(generation, Ordering::SeqCst);
        SLOTS[slot].store(Arc::as_ptr(&state) as *mut ThreadState, Ordering::SeqCst);
        // The per-thread CPU clock of another thread: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED).
        let clock = ((!tid) << 3) | 6;
        let id = match self.create(tid, clock, sigval_of(slot, generation, false)) {
            Ok(id) => id,
            Err(e) => {
                SLOTS[slot].store(std::ptr::null_mut(), Ordering::SeqCst);
                let _ = state.timer_gen.compare_exchange(generation, 0, Ordering::SeqCst, Ordering::SeqCst);
                self.free_slots.push(slot);
                return Err(e);
            }
        };
        let mut t = Timer { id, wall: None, slot, generation, state };
        if let Err(e) = self.set_time(id) {
            drop(self.delete(t));
            return Err(e);
        }
        if t.state.wall.load(Ordering::SeqCst) {
            // Without it the thread keeps its CPU samples: a failure here is not the thread's.
            t.wall = self.create(tid, libc::CLOCK_MONOTONIC, sigval_of(slot, generation, true)).ok();
            if let Some(w) = t.wall.filter(|&w| self.set_time(w).is_err()) {
                // SAFETY: `w` is a timer we just created.
                unsafe { libc::timer_delete(w) };
                t.wall = None;
            }
        }
        Ok(t)
    }

    /// A timer on `clock` that signals thread `tid` with `value`.
    fn create(&self, tid: i32, clock: libc::clockid_t, value: u64) -> Result<libc::timer_t> {
        // SAFETY: zeroed sigevent is valid; the fields the kernel reads are set below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = self.signal;
        sev.sigev_value = libc::sigval { sival_ptr: value as *mut libc::c_void };
        sev.sigev_notify_thread_id = tid;
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: `sev` and `id` are valid for the call; the kernel checks the clock and tid.
        if unsafe { libc::timer_create(clock, &mut sev, &mut id) } != 0 {
            return Err(Error::os("timer_create"));
        }
        Ok(id)
    }

    /// Arms timer `id` with the sampling period and a random first expiry. Fails when the
    /// timer's thread has exited.
    fn set_time(&mut self, id: libc::timer_t) -> Result<()> {
        let period = self.period.as_nanos() as u64;
        let first = 1 + self.next_random() % period;
        let its = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: (period / 1_000_000_000) as _,
                tv_nsec: (period % 1_000_000_000) as _,
            },
            it_value: libc::timespec { tv_sec: (first / 1_000_000_000) as _, tv_nsec: (first % 1_000_000_000) as _ },
        };
        // SAFETY: `id` is a timer we created and have not deleted; `its` is valid.
        if unsafe { libc::timer_settime(id, 0, &its, std::ptr::null_mut()) } != 0 {
            return Err(Error::os("timer_settime"));
        }
        Ok(())
    }

    /// Deletes the timer and clears its slot; the returned state must outlive running handlers.
    fn delete(&mut self, t: Timer) -> Arc<ThreadState> {
        // SAFETY: `t.id` (and `t.wall`) are timers we created and have not deleted.
        unsafe { libc::timer_delete(t.id) };
        if let Some(w) = t.wall {
            // SAFETY: as above.
            unsafe { libc::timer_delete(w) };
        }
        SLOTS[t.slot].store(std::ptr::null_mut(), Ordering::SeqCst);
        let _ = t.state.timer_gen.compare_exchange(t.generation, 0, Ordering::SeqCst, Ordering::SeqCst);
        self.free_slots.push(t.slot);
        t.state
    }

    fn stop(&mut self) {
        let timers: Vec<Timer> = self.timers.drain().map(|(_, t)| t).collect();
        let states: Vec<_> = timers.into_iter().map(|t| self.delete(t)).collect();
        retire(states);
    }
}

/// States of deleted timers not freed yet: a handler was running (or a reader stripe was
/// busy) every time the sampler looked.
static RETIRED: Mutex<Vec<Arc<ThreadState>>> = Mutex::new(Vec::new());
/// Times [`retire`] gave up waiting for the handlers and kept the states for a later call.
pub(crate) static RETIRE_DEFERRED: AtomicU64 = AtomicU64::new(0);

/// Frees the states of deleted timers, and those kept from earlier calls, once no handler can
/// be using them: only after [`HANDLERS_ACTIVE`] was seen idle. When it is not seen idle within
/// the wait, nothing is freed: the states stay in [`RETIRED`] for the next call (counted in
/// [`RETIRE_DEFERRED`]). Their slots were cleared before, so no handler that starts from now on
/// can reach them.
fn retire(states: Vec<Arc<ThreadState>>) {
    let mut batch = std::mem::take(&mut *RETIRED.lock());
    batch.extend(states);
    if batch.is_empty() {
        return;
    }
    // Not under the lock: a fork (whose prepare handler takes it) never waits for this.
    if wait_for_handlers() {
        drop(batch);
    } else {
        RETIRE_DEFERRED.fetch_add(1, Ordering::Relaxed);
        RETIRED.lock().extend(batch);
    }
}

/// Waits (at most 200 ms) until no handler is running; false when it never saw that.
fn wait_for_handlers() -> bool {
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        if HANDLERS_ACTIVE.idle() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::yield_now();
    }
}

pub(crate) fn prepare_fork() {
    ACTIVE.fork_hold();
    INSTALLED.fork_hold();
    thread::prepare_fork();
    RETIRED.fork_hold();
}

pub(crate) fn after_fork_parent() {
    release_locks();
}

fn release_locks() {
    RETIRED.fork_release();
    thread::after_fork();
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
    HANDLERS_ACTIVE.reset_after_fork();
    thread::after_fork_child();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests that arm timers or start an agent run one at a time.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_blocked(signal: i32, blocked: bool) {
        // SAFETY: a valid sigset for the calls; changes only this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            let how = if blocked { libc::SIG_BLOCK } else { libc::SIG_UNBLOCK };
            libc::pthread_sigmask(how, &set, std::ptr::null_mut());
        }
    }

    fn is_pending(signal: i32) -> bool {
        // SAFETY: a valid sigset to fill.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut set);
            libc::sigismember(&set, signal) == 1
        }
    }

    /// Sends the calling thread the signal a POSIX timer with `value` would send.
    fn queue_timer_signal(signal: i32, value: u64) {
        // SAFETY: all-zero is a valid siginfo_t; the fields are written through the layout of a
        // timer signal, which lies within its 128 bytes. The kernel lets a process send itself
        // any si_code.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let t = &mut *(&mut info as *mut libc::siginfo_t as *mut handler::TimerInfo);
            t.signo = signal;
            t.code = -2; // SI_TIMER
            t.value = value as *mut libc::c_void;
            let rc = libc::syscall(libc::SYS_rt_tgsigqueueinfo, sys::getpid(), sys::gettid(), signal, &info);
            assert_eq!(rc, 0, "rt_tgsigqueueinfo");
        }
    }

    /// A timer signal queued while blocked, then its timer deleted and its slot armed for
    /// another thread: when it is finally delivered (kernels before 6.13 do; later ones drop
    /// it, and the test then sends the very signal such a kernel delivers), the handler must
    /// drop it rather than record a sample with the other thread's state.
    #[test]
    fn a_late_signal_never_runs_with_the_next_threads_state() {
        let _g = lock();
        let signal = libc::SIGPROF;
        install_handler(signal, false).unwrap();
        let ring = RING_CELL.get_or_init(|| Lanes::new(4, 1024));
        ENABLED.store(true, Ordering::SeqCst);
        let mut timers = Timers::new(signal, 1000, 0x1234);

        // Thread A: its timer's signal stays pending while A blocks it.
        let (to_a, a_rx) = std::sync::mpsc::channel::<u64>();
        let (a_tx, from_a) = std::sync::mpsc::channel::<(i32, bool)>();
        let a = std::thread::spawn(move || {
            set_blocked(signal, true);
            a_tx.send((sys::gettid(), false)).unwrap();
            a_rx.recv().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut x = 0u64;
            while !is_pending(signal) && Instant::now() < deadline {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            a_tx.send((0, is_pending(signal))).unwrap();
            let late = a_rx.recv().unwrap();
            set_blocked(signal, false);
            // Delivered on unblocking (before 6.13); otherwise the same signal, sent now.
            if late != 0 && STALE_SIGNALS.load(Ordering::SeqCst) == a_rx.recv().unwrap() {
                queue_timer_signal(signal, late);
            }
            a_tx.send((0, true)).unwrap();
        });
        // Thread B: parked, takes the slot over.
        let (to_b, b_rx) = std::sync::mpsc::channel::<()>();
        let (b_tx, from_b) = std::sync::mpsc::channel::<i32>();
        let b = std::thread::spawn(move || {
            b_tx.send(sys::gettid()).unwrap();
            b_rx.recv().unwrap();
        });
        let (tid_a, _) = from_a.recv().unwrap();
        let tid_b = from_b.recv().unwrap();

        let state_a = Arc::new(ThreadState::new(tid_a));
        let timer_a = timers.arm(tid_a, state_a.clone()).unwrap();
        let (slot, late) = (timer_a.slot, sigval_of(timer_a.slot, timer_a.generation, false));
        to_a.send(0).unwrap();
        let (_, pending) = from_a.recv().unwrap();
        assert!(pending, "thread A's timer never fired");
        drop(timers.delete(timer_a));

        let state_b = Arc::new(ThreadState::new(tid_b));
        state_b.label_id.store(0xb0b, Ordering::SeqCst);
        let timer_b = timers.arm(tid_b, state_b.clone()).unwrap();
        assert_eq!(timer_b.slot, slot, "the slot was not reused");
        // B's own timer never fires during the test.
        // SAFETY: a live timer of ours and a valid (all-zero: disarm) itimerspec.
        unsafe { libc::timer_settime(timer_b.id, 0, &std::mem::zeroed(), std::ptr::null_mut()) };

        ring.drain(|_| {});
        let stale = STALE_SIGNALS.load(Ordering::SeqCst);
        to_a.send(late).unwrap();
        to_a.send(stale).unwrap();
        from_a.recv().unwrap();
        let mut recorded = Vec::new();
        ring.drain(|r| recorded.push((r.tid, r.label_id)));
        ENABLED.store(false, Ordering::SeqCst);
        drop(timers.delete(timer_b));
        to_b.send(()).unwrap();
        a.join().unwrap();
        b.join().unwrap();
        assert!(
            recorded.iter().all(|&(tid, label)| tid != tid_b && label != 0xb0b),
            "a late signal on thread A was recorded as thread B's: {recorded:?}"
        );
        assert!(STALE_SIGNALS.load(Ordering::SeqCst) > stale, "the late signal was not seen as stale");
    }

    /// A live thread whose timer reads as disarmed (before 6.13, while its signal waits for
    /// delivery) keeps its timer and state through a scan; an exited thread's is retired.
    #[test]
    fn a_scan_tells_a_disarmed_timer_from_an_exited_thread() {
        let _g = lock();
        install_handler(libc::SIGPROF, false).unwrap();
        let mut timers = Timers::new(libc::SIGPROF, 1000, 0x5678);
        let parked = || {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let (tid_tx, tid_rx) = std::sync::mpsc::channel::<i32>();
            let t = std::thread::spawn(move || {
                tid_tx.send(sys::gettid()).unwrap();
                let _ = rx.recv();
            });
            (tid_rx.recv().unwrap(), tx, t)
        };
        let (live, live_tx, live_thread) = parked();
        let (gone, gone_tx, gone_thread) = parked();
        for tid in [live, gone] {
            let t = timers.arm(tid, thread::state_for(tid)).unwrap();
            timers.timers.insert(tid, t);
        }
        let (id, generation) = (timers.timers[&live].id, timers.timers[&live].generation);
        // SAFETY: a live timer of ours and a valid (all-zero: disarm) itimerspec.
        unsafe { libc::timer_settime(id, 0, &std::mem::zeroed(), std::ptr::null_mut()) };
        drop(gone_tx);
        gone_thread.join().unwrap();
        let retired = timers.scan();
        let kept = timers.timers.get(&live).map(|t| t.generation);
        let gone_kept = timers.timers.contains_key(&gone);
        // SAFETY: zeroed itimerspec is valid; the kept timer is live.
        let rearmed = unsafe {
            let mut cur: libc::itimerspec = std::mem::zeroed();
            libc::timer_gettime(id, &mut cur);
            cur.it_value.tv_sec != 0 || cur.it_value.tv_nsec != 0
        };
        timers.stop();
        drop(live_tx);
        live_thread.join().unwrap();
        assert_eq!(kept, Some(generation), "a live thread's timer was replaced");
        assert!(rearmed, "the disarmed timer of a live thread was not re-armed");
        assert!(!retired.iter().any(|s| s.tid == live), "a live thread's state was retired");
        assert!(!gone_kept && retired.iter().any(|s| s.tid == gone), "an exited thread's timer was kept");
    }

    #[test]
    fn dropping_the_sampler_disarms_every_timer() {
        let _g = lock();
        let sampler = Sampler::start(true, libc::SIGPROF, false, 100, 4, 1024).unwrap();
        let ids: Vec<usize> = ACTIVE.lock().as_ref().unwrap().timers.values().map(|t| t.id as usize).collect();
        assert!(!ids.is_empty(), "the scan armed no timer");
        assert!(ENABLED.load(Ordering::SeqCst));
        // As when the agent's start fails after the sampler's, or the collector unwinds.
        drop(sampler);
        assert!(!ENABLED.load(Ordering::SeqCst));
        assert!(ACTIVE.lock().is_none());
        assert!(SLOTS.iter().all(|s| s.load(Ordering::SeqCst).is_null()), "a slot still points at a state");
        for id in ids {
            // SAFETY: zeroed itimerspec is valid; a deleted timer's id is refused with EINVAL.
            let rc = unsafe {
                let mut cur: libc::itimerspec = std::mem::zeroed();
                libc::timer_gettime(id as libc::timer_t, &mut cur)
            };
            assert_eq!(rc, -1, "timer {id:#x} still exists");
        }
    }

    /// A state is freed only once no handler can hold it, however long that takes.
    #[test]
    fn retired_states_outlive_a_slow_handler() {
        let _g = lock();
        let state = Arc::new(ThreadState::new(0));
        let weak = Arc::downgrade(&state);
        // A handler that does not finish within the sampler's wait.
        let stripe = HANDLERS_ACTIVE.enter(0);
        let deferred = RETIRE_DEFERRED.load(Ordering::SeqCst);
        retire(vec![state]);
        let alive = weak.upgrade().is_some();
        HANDLERS_ACTIVE.exit(stripe);
        assert!(alive, "a state was freed while a handler could still read it");
        assert_eq!(RETIRE_DEFERRED.load(Ordering::SeqCst), deferred + 1);
        // The next retirement, with no handler running, frees it.
        retire(Vec::new());
        assert!(weak.upgrade().is_none(), "a retired state was never freed");
    }

    #[test]
    fn a_thread_that_takes_labels_is_sampled_at_once() {
        let _g = lock();
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
