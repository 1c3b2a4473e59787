//! Everything the profiler keeps per thread, in one place. ⚠
//!
//! A [`ThreadState`] per OS thread: the label id in force (the slot the signal handler reads),
//! its CPU timer's generation, the signal handler's unwind cache and stack. The thread reaches
//! its own through a thread-local slot, created by its first label call or `register_thread`
//! and destroyed at its exit, which frees the caches at once; the sampler reaches any thread's
//! through the registry, by tid. The profiler's own threads are marked here too.
//!
//! The sampler, the allocation hook and the labels depend on this module (and on the ring),
//! never on each other; the one call back, arming a new thread's timer, goes through the
//! function the sampler registers with [`on_new_thread`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::sync::Mutex;
use crate::sys;
use crate::unwind::SignalCache;

/// What the profiler knows about one OS thread. The signal handler reads it; the thread itself
/// writes `label_id`; the collector writes the stack bounds.
pub struct ThreadState {
    pub(crate) tid: i32,
    /// The id of the label set in force on this thread.
    pub(crate) label_id: AtomicU32,
    /// Where a binding keeps this thread's labels instead (0: nowhere), read through the
    /// registered [`LabelReadFn`]; see [`ThreadState::label_id_now`].
    pub(crate) label_source: AtomicUsize,
    /// The thread has exited (its thread-local slot was destroyed).
    pub(crate) exited: AtomicBool,
    /// The thread is sampled for wall-clock time too (see [`crate::sample_wall_time`]).
    pub(crate) wall: AtomicBool,
    /// The generation of this state's current timer (0: none); see
    /// [`crate::sampler::slot_of_sigval`].
    pub(crate) timer_gen: AtomicU32,
    /// The unwinder's rule cache for this thread's handler (null: none yet, or freed).
    cache: AtomicPtr<SignalCache>,
    /// A stack of our own for the handler's work, so that neither a small thread stack nor a
    /// small alternate signal stack (Go's are 32 KiB) limits the unwinder's stack use: the base
    /// of its mapping, guard page included (null: none yet, or freed).
    stack: AtomicPtr<u8>,
}

/// Size of the per-thread handler stack. The unwinder needs up to ~25 KiB on a rule-cache miss
/// (gimli's on-stack rule rows); pages never touched cost no memory.
pub(crate) const HANDLER_STACK_SIZE: usize = 64 * 1024;
/// The inaccessible page below each handler stack: an overflow faults there instead of
/// writing over whatever mapping lies below.
pub(crate) const GUARD_SIZE: usize = 4096;

/// A Valgrind client request (valgrind.h's `VALGRIND_DO_CLIENT_REQUEST_EXPR` for amd64): a
/// sequence of rotations that leaves every register as it was, which Valgrind recognizes and
/// answers; run natively it returns `default`. Hand-written: the crate for it builds against
/// Valgrind's headers, which users' build machines do not have, for two requests.
///
/// # Signal safety
/// Register moves only.
pub(crate) fn valgrind_request(default: usize, args: [usize; 6]) -> usize {
    let result;
    // SAFETY: the four rotations of rdi add up to 128 bits (rdi unchanged) and `xchg rbx, rbx`
    // changes nothing; only flags and the declared registers are touched. Valgrind reads the
    // six words at rax, which live until the end of this function.
    unsafe {
        std::arch::asm!(
            "rol rdi, 3",
            "rol rdi, 13",
            "rol rdi, 61",
            "rol rdi, 51",
            "xchg rbx, rbx",
            inout("rdx") default => result,
            in("rax") args.as_ptr(),
            inout("rdi") 0usize => _,
        );
    }
    result
}

/// Valgrind's `VG_USERREQ__STACK_REGISTER` and `VG_USERREQ__STACK_DEREGISTER`: under Valgrind,
/// the handler's switch to its own stack is a switch between known stacks, not a wild stack
/// pointer (every read there was reported as invalid or undefined).
const VG_STACK_REGISTER: usize = 0x1501;
const VG_STACK_DEREGISTER: usize = 0x1502;

/// Stack for building an unwind cache: the cache is built by value, and unoptimized (debug)
/// builds of framehop and gimli take about 100 KiB of stack for it.
const BUILD_STACK_SIZE: usize = 1 << 20;

/// A new unwind cache, built on a stack of its own: a thread with a small stack (Node's
/// inspector thread has 32 KiB) can register itself, whatever the build. Falls back to the
/// caller's stack when no mapping can be made.
fn new_cache() -> *mut SignalCache {
    extern "C" fn build(out: *mut libc::c_void) {
        // SAFETY: `out` is the `*mut SignalCache` slot `new_cache` passes, live for the call.
        unsafe { *(out as *mut *mut SignalCache) = Box::into_raw(Box::new(SignalCache::new_in())) };
    }
    let Some(base) = map_stack(BUILD_STACK_SIZE) else {
        return Box::into_raw(Box::new(SignalCache::new_in()));
    };
    let mut out: *mut SignalCache = std::ptr::null_mut();
    let top = base.wrapping_add(GUARD_SIZE + BUILD_STACK_SIZE);
    // Allocations made on this stack are not sampled: unwinding from a stack the profiler
    // does not know would read outside its guarded reads.
    crate::alloc::busy(|| {
        // SAFETY: `top` is the page-aligned end of a fresh mapping above its guard page that
        // only this call uses; `build` does not unwind (a panic in an extern "C" fn aborts) and
        // writes only `out`, which outlives the call. A signal handler that interrupts `build`
        // finds no unwind cache for this thread yet and returns without unwinding.
        unsafe { crate::sys::call_on_stack(top, build, (&mut out as *mut *mut SignalCache).cast()) }
    });
    // SAFETY: made above with this size; nothing runs on it any more.
    unsafe { unmap_stack(base, BUILD_STACK_SIZE) };
    out
}

/// Maps a handler stack with its guard page; returns the mapping's base (the guard page).
fn map_handler_stack() -> Option<*mut u8> {
    map_stack(HANDLER_STACK_SIZE)
}

/// Maps a stack of `size` bytes above a guard page, registered with Valgrind; returns the
/// mapping's base (the guard page). Pages never touched cost no memory.
fn map_stack(size: usize) -> Option<*mut u8> {
    // SAFETY: an anonymous private mapping with no address hint; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            GUARD_SIZE + size,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let base: *mut u8 = p.cast();
    // SAFETY: the range lies inside the mapping just made, page aligned.
    let rc = unsafe { libc::mprotect(base.add(GUARD_SIZE).cast(), size, libc::PROT_READ | libc::PROT_WRITE) };
    if rc != 0 {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(p, GUARD_SIZE + size) };
        return None;
    }
    let (low, high) = (base as usize + GUARD_SIZE, base as usize + GUARD_SIZE + size);
    let id = valgrind_request(0, [VG_STACK_REGISTER, low, high, 0, 0, 0]);
    // Kept in the stack's lowest word: a handler that reached it would fault on the guard page
    // a word later anyway.
    // SAFETY: `low` is the first writable word of the mapping just made.
    unsafe { (low as *mut usize).write(id) };
    Some(base)
}

/// Unmaps a handler stack made by [`map_handler_stack`].
///
/// # Safety
/// `base` came from `map_handler_stack`, is unmapped once, and no handler runs on it.
unsafe fn unmap_handler_stack(base: *mut u8) {
    // SAFETY: per the contract.
    unsafe { unmap_stack(base, HANDLER_STACK_SIZE) }
}

/// Unmaps a stack made by [`map_stack`] with `size`.
///
/// # Safety
/// `base` came from `map_stack(size)`, is unmapped once, and nothing runs on it.
unsafe fn unmap_stack(base: *mut u8, size: usize) {
    // SAFETY: per the contract, the stack's lowest word holds its Valgrind id.
    let id = unsafe { (base.add(GUARD_SIZE) as *const usize).read() };
    valgrind_request(0, [VG_STACK_DEREGISTER, id, 0, 0, 0, 0]);
    // SAFETY: per the contract.
    unsafe { libc::munmap(base.cast(), GUARD_SIZE + size) };
}

// SAFETY: all fields are atomics. The cache and the stack they point at are used only by the
// signal handler running on this state's own thread (the handler cannot nest: no SA_NODEFER
// and every signal blocked while it runs), and freed either by that thread at its exit
// ([`ThreadState::release_caches`]) or when the state is dropped, which the sampler does only
// once no handler can reach the state.
unsafe impl Sync for ThreadState {}
// SAFETY: as above; the cache and the stack are plain owned memory.
unsafe impl Send for ThreadState {}

impl ThreadState {
    pub(crate) fn new(tid: i32) -> Self {
        ThreadState {
            tid,
            label_id: AtomicU32::new(0),
            label_source: AtomicUsize::new(0),
            exited: AtomicBool::new(false),
            wall: AtomicBool::new(false),
            timer_gen: AtomicU32::new(0),
            cache: AtomicPtr::new(std::ptr::null_mut()),
            stack: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// The id of the label set in force on this thread now, as a sample records it: the
    /// binding's source's when it has one that names a set, else the slot's. Called on this
    /// state's own thread only (the source describes that thread's runtime).
    ///
    /// # Signal safety
    /// Atomic loads and the registered reader, async-signal-safe by its contract.
    #[inline]
    pub(crate) fn label_id_now(&self) -> u32 {
        let source = self.label_source.load(Ordering::Acquire);
        if source != 0 {
            if let Some(read) = label_reader() {
                // SAFETY: `source` was set on this thread through `LabelSlot::set_source`,
                // whose caller keeps it valid for the reader until it is replaced; the reader
                // is async-signal-safe by its contract, and this runs on the source's thread.
                let id = unsafe { read(source) };
                if id != NO_LABELS {
                    return id;
                }
            }
        }
        self.label_id.load(Ordering::Relaxed)
    }

    /// A state attached to no thread (used during thread teardown).
    pub(crate) fn detached() -> Self {
        Self::new(0)
    }

    /// Gives the state its unwind cache and handler stack, unless it has them.
    pub(crate) fn install_caches(&self) {
        if self.cache.load(Ordering::SeqCst).is_null() {
            let fresh = new_cache();
            if self.cache.compare_exchange(std::ptr::null_mut(), fresh, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                // SAFETY: `fresh` was never published.
                drop(unsafe { Box::from_raw(fresh) });
            }
        }
        if self.stack.load(Ordering::SeqCst).is_null() {
            if let Some(fresh) = map_handler_stack() {
                if self.stack.compare_exchange(std::ptr::null_mut(), fresh, Ordering::SeqCst, Ordering::SeqCst).is_err()
                {
                    // SAFETY: `fresh` was never published.
                    unsafe { unmap_handler_stack(fresh) };
                }
            }
        }
    }

    /// Frees the unwind cache and the handler stack now. Called by the state's own thread as
    /// it exits (its thread-local slot's destructor), after marking the state exited.
    ///
    /// Only the handler on this very thread uses them: a signal that arrives before a pointer
    /// is swapped out runs to completion before this code goes on (the handler interrupts this
    /// thread), and one that arrives after finds no cache (no sample) and no stack.
    pub(crate) fn release_caches(&self) {
        let cache = self.cache.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !cache.is_null() {
            // SAFETY: came from Box::into_raw in `install_caches`, swapped out once, unused (see
            // `release_caches` and the Sync impl).
            drop(unsafe { Box::from_raw(cache) });
        }
        let stack = self.stack.swap(std::ptr::null_mut(), Ordering::SeqCst);
        if !stack.is_null() {
            // SAFETY: our mapping from `map_handler_stack`, swapped out once, unused.
            unsafe { unmap_handler_stack(stack) };
        }
    }

    /// The unwinder's rule cache.
    ///
    /// # Signal safety
    /// One atomic load. Only the signal handler on this thread may call it.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn cache(&self) -> Option<&mut SignalCache> {
        // SAFETY: the only caller is the handler on the thread this state belongs to, which does
        // not nest, so the &mut is unique for its lifetime; the cache is freed only on this
        // thread outside the handler, or with the state (see the Sync impl).
        unsafe { self.cache.load(Ordering::SeqCst).as_mut() }
    }

    /// The 16-byte aligned top of the handler stack (stacks grow down).
    ///
    /// # Signal safety
    /// One atomic load. Only the signal handler on this thread may use the stack.
    pub(crate) fn handler_stack_top(&self) -> Option<*mut u8> {
        let base = self.stack.load(Ordering::SeqCst);
        // One past the end of the mapping, page aligned, so 16-byte aligned.
        (!base.is_null()).then(|| base.wrapping_add(GUARD_SIZE + HANDLER_STACK_SIZE))
    }
}

impl Drop for ThreadState {
    fn drop(&mut self) {
        self.release_caches();
    }
}

/// The id of the empty label set (the labels' interner gives it id 0).
const NO_LABELS: u32 = 0;

static REGISTRY: Mutex<Option<HashMap<i32, Arc<ThreadState>>>> = Mutex::new(None);
/// Threads the profiler itself runs; never sampled.
static OWN_THREADS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);
/// Called with each thread that registers itself (set by the sampler).
static ON_NEW_THREAD: OnceLock<fn(i32, &Arc<ThreadState>)> = OnceLock::new();

thread_local! {
    static SLOT: RefCell<Option<Slot>> = const { RefCell::new(None) };
    /// `SLOT` holds this thread's slot (set once it is stored, cleared as it is dropped). The
    /// allocation hook reads this destructor-less flag before it touches `SLOT`: a first touch
    /// of `SLOT` registers its destructor with `__cxa_thread_atexit_impl`, whose `calloc` can be
    /// sampled, and a hook that touched `SLOT` in that instant would register it a second time,
    /// so the slot would be dropped twice at thread exit and its `ThreadState` freed under the
    /// registry's and the timer's references.
    static SLOT_SET: Cell<bool> = const { Cell::new(false) };
    /// One of the profiler's own threads: its allocations are never sampled (its frees are
    /// still looked up, so blocks it frees leave the live set).
    static OWN: Cell<bool> = const { Cell::new(false) };
}

/// Sets what runs when a thread registers itself (the sampler arms its timer). Once per process.
pub(crate) fn on_new_thread(f: fn(i32, &Arc<ThreadState>)) {
    let _ = ON_NEW_THREAD.set(f);
}

/// The live state of thread `tid`, created if there is none (or only that of an exited thread
/// whose tid was reused).
pub(crate) fn state_for(tid: i32) -> Arc<ThreadState> {
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

/// Drops the registry's entry for `tid` if it is `state` (its thread exited).
pub(crate) fn forget(tid: i32, state: &Arc<ThreadState>) {
    if let Some(map) = REGISTRY.lock().as_mut() {
        if map.get(&tid).is_some_and(|s| Arc::ptr_eq(s, state)) {
            map.remove(&tid);
        }
    }
}

/// Keeps the registry entries `keep` accepts.
pub(crate) fn retain(keep: impl FnMut(&i32, &mut Arc<ThreadState>) -> bool) {
    if let Some(map) = REGISTRY.lock().as_mut() {
        map.retain(keep);
    }
}

/// Marks the calling thread as the profiler's own: it is never sampled, by the CPU timers or
/// the allocation hook. Its frees are handled as any thread's: a block sampled on an
/// application thread and freed by the profiler (the frames handed to `Agent::add_cpu_sample`)
/// leaves the live set. Bindings call it first thing in threads of their own (a wall-clock
/// sampler), whose CPU is then not in the CPU profile.
pub fn mark_own() {
    let _ = OWN.try_with(|o| o.set(true));
    OWN_THREADS.lock().get_or_insert_with(HashSet::new).insert(sys::gettid());
}

/// The calling thread is one of the profiler's own.
///
/// # Signal safety
/// One thread-local load (a const thread-local without destructor: no allocation).
pub(crate) fn is_current_own() -> bool {
    OWN.try_with(Cell::get).unwrap_or(false)
}

/// Thread `tid` is one of the profiler's own.
pub(crate) fn is_own(tid: i32) -> bool {
    OWN_THREADS.lock().as_ref().is_some_and(|own| own.contains(&tid))
}

/// The label id in force on registered, live thread `tid` (`None`: not registered, or exited).
pub(crate) fn label_id_of(tid: i32) -> Option<u32> {
    let reg = REGISTRY.lock();
    let state = reg.as_ref()?.get(&tid)?;
    (!state.exited.load(Ordering::Acquire)).then(|| state.label_id.load(Ordering::Acquire))
}

/// The profiler's own threads.
pub(crate) fn own_threads() -> HashSet<i32> {
    OWN_THREADS.lock().clone().unwrap_or_default()
}

/// Reads the id of the label set in force on the calling thread from where a binding's runtime
/// keeps it (a `source` the binding set with [`crate::LabelSlot::set_source`]): for runtimes
/// whose labels follow their own continuations (V8 carries a value across `await` by itself),
/// so that nothing needs to be stored at each switch. Returns 0 when no set is in force there;
/// the thread's slot is read then.
///
/// # Safety
/// Called from the CPU-timer signal handler and the allocation hook, on the thread whose
/// source it is given: it must be async-signal-safe (no allocation, no locks, no formatting,
/// no thread-locals that may allocate on first use), read memory that may be unmapped or
/// half-written only through fault-tolerant reads ([`crate::fault`]), and never unwind. An id
/// it returns needs no handle: an id of a reclaimed set reads as no labels.
pub type LabelReadFn = unsafe fn(source: usize) -> u32;

/// The registered reader as a function address; 0 for none.
static LABEL_READER: AtomicUsize = AtomicUsize::new(0);

/// Registers the process's [`LabelReadFn`], replacing an earlier one.
pub fn set_label_reader(read: LabelReadFn) {
    LABEL_READER.store(read as usize, Ordering::Release);
}

/// The registered reader.
///
/// # Signal safety
/// One atomic load.
#[inline(always)]
fn label_reader() -> Option<LabelReadFn> {
    match LABEL_READER.load(Ordering::Acquire) {
        0 => None,
        // SAFETY: a non-zero value was stored from a `LabelReadFn` by `set_label_reader`, and
        // function pointers round-trip through usize on every target we build for.
        f => Some(unsafe { std::mem::transmute::<usize, LabelReadFn>(f) }),
    }
}

/// The calling thread's slot: its state, destroyed (caches freed) when the thread exits.
struct Slot(Arc<ThreadState>);

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = SLOT_SET.try_with(|f| f.set(false));
        // A reused tid starts clean: its new thread gets a state of its own.
        self.0.label_id.store(NO_LABELS, Ordering::Release);
        self.0.label_source.store(0, Ordering::Release);
        self.0.exited.store(true, Ordering::SeqCst);
        self.0.release_caches();
    }
}

/// The calling thread's state, created (and the thread registered: sampled from now on) on
/// first use.
/// Tells the sampler again about a registered thread whose wishes changed (wall time).
pub(crate) fn announce(state: &Arc<ThreadState>) {
    if let Some(f) = ON_NEW_THREAD.get() {
        f(state.tid, state);
    }
}

pub(crate) fn current_slot() -> Arc<ThreadState> {
    SLOT.try_with(|s| {
        let mut s = s.borrow_mut();
        let state = s
            .get_or_insert_with(|| {
                let tid = sys::gettid();
                let state = state_for(tid);
                if let Some(f) = ON_NEW_THREAD.get() {
                    f(tid, &state);
                }
                Slot(state)
            })
            .0
            .clone();
        let _ = SLOT_SET.try_with(|f| f.set(true));
        state
    })
    // During thread teardown the TLS is gone: hand out a detached slot nobody samples.
    .unwrap_or_else(|_| Arc::new(ThreadState::detached()))
}

/// The label id in force on the calling thread, without creating its slot or blocking (for the
/// allocation hook, which may run inside the slot's own creation).
pub(crate) fn current_label_id() -> u32 {
    if !SLOT_SET.try_with(Cell::get).unwrap_or(false) {
        return NO_LABELS;
    }
    SLOT.try_with(|s| s.try_borrow().ok().and_then(|s| s.as_ref().map(|slot| slot.0.label_id_now())))
        .ok()
        .flatten()
        .unwrap_or(NO_LABELS)
}

pub(crate) fn prepare_fork() {
    REGISTRY.fork_hold();
    OWN_THREADS.fork_hold();
}

pub(crate) fn after_fork() {
    OWN_THREADS.fork_release();
    REGISTRY.fork_release();
}

/// In a forked child (after [`after_fork`]): only the calling thread is left.
pub(crate) fn after_fork_child() {
    *OWN_THREADS.lock() = None;
    let me = sys::gettid();
    retain(|tid, _| *tid == me);
}

thread_local! {
    // The allocation hook's per-thread state (`crate::alloc`): destructor-less cells only,
    // except the unwind cache, freed at thread exit.
    /// Bytes left before this thread's next sample.
    pub(crate) static COUNTDOWN: Cell<i64> = const { Cell::new(0) };
    /// Inside the profiler's own allocation handling.
    pub(crate) static BUSY: Cell<bool> = const { Cell::new(false) };

    /// xorshift state (0 = not seeded yet).
    pub(crate) static RNG: Cell<u64> = const { Cell::new(0) };
    /// The unwinder's rule cache for allocation samples (not the signal handler's).
    static CACHE: ThreadCache = const { ThreadCache(Cell::new(std::ptr::null_mut())) };
    /// This thread's key for the reader count's stripes and the ring's lanes (`usize::MAX`:
    /// not drawn yet).
    static READER_KEY: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Threads that sample get consecutive keys, so up to 16 of them count themselves on
/// separate cache lines, and write to separate ring lanes.
pub(crate) fn reader_key() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    READER_KEY
        .try_with(|k| {
            if k.get() == usize::MAX {
                k.set(NEXT.fetch_add(1, Ordering::Relaxed));
            }
            k.get()
        })
        .unwrap_or(0)
}

/// A thread's unwind cache for allocation samples (33 KiB), created by its first sample and
/// freed when the thread exits.
struct ThreadCache(Cell<*mut SignalCache>);

impl Drop for ThreadCache {
    fn drop(&mut self) {
        let p = self.0.replace(std::ptr::null_mut());
        if !p.is_null() {
            // SAFETY: `p` came from Box::into_raw in `thread_cache` and is freed only here, once:
            // the thread is exiting, its thread-local is being destroyed, and a sample taken
            // later on this thread finds the thread-local gone and takes no cache. The free goes
            // through the global allocator's hooks, whose free path uses only destructor-less
            // thread-locals (and the hooks first touch one with a destructor only under the guard).
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

pub(crate) fn thread_cache() -> Option<&'static mut SignalCache> {
    CACHE
        .try_with(|c| {
            if c.0.get().is_null() {
                c.0.set(Box::into_raw(Box::new(SignalCache::new_in())));
            }
            c.0.get()
        })
        .ok()
        // SAFETY: the pointer is this thread's own, created above and freed only by the
        // thread-local's destructor at thread exit (after which `try_with` fails); only this
        // thread, under the re-entrancy guard, uses it, and `record` drops the reference before
        // returning.
        .map(|p| unsafe { &mut *p })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The permissions of the mapping that holds `addr`, from /proc/self/maps.
    fn perms_at(addr: usize) -> Option<String> {
        std::fs::read_to_string("/proc/self/maps").unwrap().lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
            (start <= addr && addr < end).then(|| fields.next().unwrap_or("").to_owned())
        })
    }

    /// The handler stack sits on a guard page; the thread's exit frees it and the cache.
    #[test]
    fn handler_stacks_have_a_guard_page_and_go_at_thread_exit() {
        let state = ThreadState::new(sys::gettid());
        state.install_caches();
        let top = state.handler_stack_top().unwrap() as usize;
        let bottom = top - HANDLER_STACK_SIZE;
        assert_eq!(perms_at(bottom).as_deref(), Some("rw-p"), "the stack's lowest page");
        assert_eq!(perms_at(top - 1).as_deref(), Some("rw-p"), "the stack's highest page");
        assert_eq!(perms_at(bottom - 1).as_deref(), Some("---p"), "no guard page below the stack");
        assert!(state.cache().is_some());
        state.release_caches();
        assert!(state.handler_stack_top().is_none() && state.cache().is_none(), "caches kept after exit");
        assert_eq!(perms_at(bottom), None, "the stack was not unmapped");
    }
}
