//! Allocation sampling: a `GlobalAlloc` wrapper (and the hooks the preload library calls). ⚠
//!
//! Poisson sampling: each thread counts down the bytes until its next sample, drawn from an
//! exponential distribution with mean `sample_bytes` (512 KiB by default), so the chance that
//! an allocation of `s` bytes is sampled is `1 - e^(-s/R)`; each sample is weighted by the
//! inverse of that chance, which makes the totals unbiased. The unsampled path is one
//! thread-local subtraction and compare.
//!
//! A sampled allocation unwinds its stack (framehop, from the hook's own registers), and
//! writes one record into the same ring as CPU samples. For in-use memory, its address goes
//! into a live map; frees test a small counting filter first (one relaxed load) and take the
//! map's lock only when the address may be a sampled one.
//!
//! A thread-local re-entrancy guard makes everything the profiler allocates while handling a
//! sample go straight to the inner allocator, never sampled and never recursing.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use framehop::{FrameAddress, Unwinder};
use parking_lot::Mutex;

use crate::sampler::ring::{Kind, MAX_DEPTH};
use crate::sampler::RING;
use crate::unwind::{self, memory, NativeRegs, SignalCache};

/// Default mean bytes between samples.
pub const DEFAULT_SAMPLE_BYTES: u64 = 512 * 1024;
/// Most sampled allocations tracked as live; beyond it new ones are counted, not tracked.
pub const MAX_LIVE: usize = 1 << 17;

/// Memory profiling on (an agent with memory enabled is running).
pub(crate) static ENABLED: AtomicBool = AtomicBool::new(false);
/// Mean bytes between samples.
pub(crate) static SAMPLE_BYTES: AtomicU64 = AtomicU64::new(DEFAULT_SAMPLE_BYTES);
/// Seed for the per-thread sampling RNGs (tests set it for determinism).
pub(crate) static SEED: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);
/// Some allocation went through a hook (a `SamplingAllocator` or the preload library).
pub(crate) static HOOKED: AtomicBool = AtomicBool::new(false);
/// Sampled allocations not tracked because the live map was full.
pub(crate) static LIVE_OVERFLOW: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Bytes left before this thread's next sample.
    static COUNTDOWN: Cell<i64> = const { Cell::new(0) };
    /// Inside the profiler's own allocation handling.
    static BUSY: Cell<bool> = const { Cell::new(false) };
    /// xorshift state (0 = not seeded yet).
    static RNG: Cell<u64> = const { Cell::new(0) };
    /// The unwinder's rule cache for allocation samples (not the signal handler's).
    static CACHE: Cell<*mut SignalCache> = const { Cell::new(std::ptr::null_mut()) };
}

/// A live sampled allocation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    pub stack_hash: u64,
    pub label_id: u32,
    pub size: u64,
}

static LIVE: Mutex<Option<HashMap<usize, Live>>> = Mutex::new(None);

/// First check on the free path: a counter per 1 KiB granule (address / 1024, modulo the size,
/// no hashing) of the live samples starting in it. A cache line of counters covers 64 KiB of
/// neighbouring addresses, so a busy heap's counters stay in L1 and this load is a hit; zero
/// proves the address is not a live sample, and only the few objects sharing a sample's
/// granule go on to the exact set.
const FILTER_SIZE: usize = 1 << 14;
static FILTER: [AtomicU8; FILTER_SIZE] = [const { AtomicU8::new(0) }; FILTER_SIZE];

fn filter_slot(addr: usize) -> usize {
    (addr >> 10) & (FILTER_SIZE - 1)
}

/// Second check, only for frees on a flagged page: the exact set of live sampled addresses,
/// open addressing with lock-free reads. Written only under the LIVE lock.
const SET_SIZE: usize = 1 << 18;
const SET_PROBES: usize = 32;
const TOMBSTONE: usize = 1;
static KEYS: [AtomicUsize; SET_SIZE] = [const { AtomicUsize::new(0) }; SET_SIZE];

fn set_start(addr: usize) -> usize {
    ((addr as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 46) as usize & (SET_SIZE - 1)
}

fn set_contains(addr: usize) -> bool {
    let start = set_start(addr);
    for i in 0..SET_PROBES {
        match KEYS[(start + i) & (SET_SIZE - 1)].load(Ordering::Acquire) {
            0 => return false,
            k if k == addr => return true,
            _ => {}
        }
    }
    false
}

/// Under the LIVE lock. False when no slot is free within the probe bound.
fn set_insert(addr: usize) -> bool {
    let start = set_start(addr);
    for i in 0..SET_PROBES {
        let slot = &KEYS[(start + i) & (SET_SIZE - 1)];
        let k = slot.load(Ordering::Relaxed);
        if k == 0 || k == TOMBSTONE || k == addr {
            slot.store(addr, Ordering::Release);
            return true;
        }
    }
    false
}

/// Under the LIVE lock.
fn set_remove(addr: usize) {
    let start = set_start(addr);
    for i in 0..SET_PROBES {
        let slot = &KEYS[(start + i) & (SET_SIZE - 1)];
        match slot.load(Ordering::Relaxed) {
            0 => return,
            k if k == addr => {
                slot.store(TOMBSTONE, Ordering::Release);
                return;
            }
            _ => {}
        }
    }
}

/// Runs `f` with the re-entrancy guard set; returns None if already inside (or during thread
/// teardown, when thread-locals are gone).
fn guarded<R>(f: impl FnOnce() -> R) -> Option<R> {
    let entered = BUSY.try_with(|b| !b.replace(true)).unwrap_or(false);
    if !entered {
        return None;
    }
    let r = f();
    let _ = BUSY.try_with(|b| b.set(false));
    Some(r)
}

/// Marks the calling thread as the profiler's own: its allocations are never sampled.
pub(crate) fn mark_own_thread() {
    let _ = BUSY.try_with(|b| b.set(true));
}

/// Runs `f` with the re-entrancy guard set (whatever it was), for profiler code outside the
/// hooks that takes the live map's lock: allocations inside must not re-enter.
fn busy<R>(f: impl FnOnce() -> R) -> R {
    let was = BUSY.try_with(|b| b.replace(true)).unwrap_or(true);
    let r = f();
    let _ = BUSY.try_with(|b| b.set(was));
    r
}

/// Called after every successful allocation of `size` bytes at `ptr`.
///
/// The fast path: one thread-local subtraction and compare. Allocators that can decide before
/// allocating should use [`alloc_is_sampled`] and [`record_alloc`] instead, which keep their
/// hot path a tail call.
#[inline(always)]
pub fn on_alloc(ptr: *mut u8, size: usize) {
    if alloc_is_sampled(size) {
        record_alloc(ptr, size);
    }
}

/// Counts `size` bytes against this thread's countdown; true when this allocation must go
/// through [`record_alloc`] (sampled, or the countdown needs a new draw).
#[inline(always)]
pub fn alloc_is_sampled(size: usize) -> bool {
    COUNTDOWN
        .try_with(|c| {
            let v = c.get() - size as i64;
            c.set(v);
            v <= 0
        })
        .unwrap_or(false)
}

/// The slow path of an allocation [`alloc_is_sampled`] chose.
#[cold]
#[inline(never)]
pub fn record_alloc(ptr: *mut u8, size: usize) {
    slow_alloc(ptr, size);
}

/// Called before every free of `ptr`.
#[inline(always)]
pub fn on_free(ptr: *mut u8) {
    if free_is_tracked(ptr) {
        record_free(ptr);
    }
}

/// One load from a small, hot table: false means `ptr` is certainly not a live sample.
#[inline(always)]
pub fn free_is_tracked(ptr: *mut u8) -> bool {
    FILTER[filter_slot(ptr as usize)].load(Ordering::Relaxed) != 0
}

/// The slow path of a free [`free_is_tracked`] flagged.
#[cold]
#[inline(never)]
pub fn record_free(ptr: *mut u8) {
    slow_free(ptr);
}

#[cold]
#[inline(never)]
fn slow_free(ptr: *mut u8) {
    if ptr.is_null() || !set_contains(ptr as usize) {
        return;
    }
    guarded(|| {
        let mut live = LIVE.lock();
        if let Some(map) = live.as_mut() {
            if map.remove(&(ptr as usize)).is_some() {
                set_remove(ptr as usize);
                let slot = &FILTER[filter_slot(ptr as usize)];
                // Saturated counters stay put (they only cost a lookup).
                let _ = slot
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c != 0 && c != u8::MAX).then(|| c - 1));
            }
        }
    });
}

fn next_interval() -> i64 {
    let mean = SAMPLE_BYTES.load(Ordering::Relaxed).max(1) as f64;
    let r = RNG
        .try_with(|s| {
            let mut x = s.get();
            if x == 0 {
                // Seed per thread: the global seed mixed with the thread's id.
                x = SEED.load(Ordering::Relaxed) ^ (crate::sys::gettid() as u64).wrapping_mul(0x2545_f491_4f6c_dd1d)
                    | 1;
            }
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        })
        .unwrap_or(0x1234_5678);
    // Uniform in (0, 1], then exponential with the given mean.
    let u = ((r >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    (-u.ln() * mean).max(1.0) as i64
}

#[cold]
#[inline(never)]
fn slow_alloc(ptr: *mut u8, size: usize) {
    HOOKED.store(true, Ordering::Relaxed);
    guarded(|| {
        // A thread's first trip here only draws its first interval: starting every thread's
        // countdown at zero would sample (and inflate) each thread's first allocation.
        let first = RNG.try_with(|r| r.get() == 0).unwrap_or(false);
        let next = next_interval();
        if first {
            let _ = COUNTDOWN.try_with(|c| c.set(next - size as i64));
            if next > size as i64 {
                return;
            }
        } else {
            let _ = COUNTDOWN.try_with(|c| c.set(next));
        }
        if !ENABLED.load(Ordering::Relaxed) || ptr.is_null() {
            return;
        }
        record(ptr, size);
    });
}

/// Unwinds the calling thread from here and records the allocation. Runs under the guard.
#[inline(never)]
fn record(ptr: *mut u8, size: usize) {
    let Some(cache) = thread_cache() else { return };
    let (pc, sp, bp) = current_regs();
    // Counted like a signal handler, so the snapshot and maps we read are not freed meanwhile.
    // (Never ask pthread for the stack here: pthread_getattr_np may hold a lock up-stack.)
    unwind::HANDLERS_ACTIVE.fetch_add(1, Ordering::SeqCst);
    let stack = unwind::stack_window(sp);
    let label_id = crate::labels::current_id_nonblocking();
    let snapshot = unwind::current();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let pushed = RING.push(|rec| {
        rec.kind = Kind::Alloc;
        rec.tid = 0;
        rec.label_id = label_id;
        rec.weight = size as u64;
        rec.truncated = false;
        let mut depth = 0;
        if let Some(snapshot) = snapshot {
            let mut read = |addr: u64| memory::read_word(addr, stack);
            let mut frames = snapshot.unwinder.iter_frames(pc, NativeRegs::new(pc, sp, bp), cache, &mut read);
            loop {
                match frames.next() {
                    Ok(Some(addr)) => {
                        if depth == MAX_DEPTH {
                            rec.truncated = true;
                            break;
                        }
                        let a = match addr {
                            FrameAddress::InstructionPointer(_) => addr.address(),
                            FrameAddress::ReturnAddress(_) => addr.address_for_lookup(),
                        };
                        rec.pcs[depth] = a;
                        depth += 1;
                    }
                    Ok(None) => break,
                    Err(_) => {
                        rec.truncated = true;
                        break;
                    }
                }
            }
        }
        rec.depth = depth as u16;
        for pc in &rec.pcs[..depth] {
            hash = (hash ^ pc).wrapping_mul(0x100_0000_01b3);
        }
        hash ^= rec.truncated as u64;
        rec.aux = hash;
    });
    unwind::HANDLERS_ACTIVE.fetch_sub(1, Ordering::SeqCst);
    if !pushed {
        return;
    }
    let mut live = LIVE.lock();
    let map = live.get_or_insert_with(HashMap::new);
    if map.len() >= MAX_LIVE || !set_insert(ptr as usize) {
        LIVE_OVERFLOW.fetch_add(1, Ordering::Relaxed);
        return;
    }
    map.insert(ptr as usize, Live { stack_hash: hash, label_id, size: size as u64 });
    let slot = &FILTER[filter_slot(ptr as usize)];
    let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c != u8::MAX).then(|| c + 1));
}

/// The registers of this function's frame, for the unwinder to start from.
#[inline(always)]
fn current_regs() -> (u64, u64, u64) {
    let (pc, sp, bp): (u64, u64, u64);
    // SAFETY: reads rip (via lea), rsp and rbp into registers; no memory is touched.
    unsafe {
        std::arch::asm!("lea {0}, [rip]", "mov {1}, rsp", "mov {2}, rbp", out(reg) pc, out(reg) sp, out(reg) bp, options(nomem, nostack, preserves_flags));
    }
    (pc, sp, bp)
}

fn thread_cache() -> Option<&'static mut SignalCache> {
    CACHE
        .try_with(|c| {
            if c.get().is_null() {
                // Leaked per thread that samples (33 KiB): thread-locals with destructors could
                // run after the allocator is gone; a sampling thread is rare enough.
                c.set(Box::into_raw(Box::new(SignalCache::new_in())));
            }
            c.get()
        })
        .ok()
        // SAFETY: the pointer is this thread's own, created above and never freed or shared;
        // only this thread, under the re-entrancy guard, uses it.
        .map(|p| unsafe { &mut *p })
}

/// The live sampled allocations, grouped by (stack hash, labels): (count, bytes).
pub(crate) fn live_snapshot() -> HashMap<(u64, u32), Vec<u64>> {
    let copy: Vec<Live> = busy(|| LIVE.lock().as_ref().map(|m| m.values().copied().collect()).unwrap_or_default());
    let mut out: HashMap<(u64, u32), Vec<u64>> = HashMap::new();
    for l in copy {
        out.entry((l.stack_hash, l.label_id)).or_default().push(l.size);
    }
    out
}

/// Forgets every live allocation (a new agent starts from zero).
pub(crate) fn reset_live() {
    busy(|| {
        if let Some(m) = LIVE.lock().as_mut() {
            m.clear();
        }
        for f in FILTER.iter() {
            f.store(0, Ordering::Relaxed);
        }
        for k in KEYS.iter() {
            if k.load(Ordering::Relaxed) != 0 {
                k.store(0, Ordering::Relaxed);
            }
        }
    });
}

pub(crate) fn prepare_fork() {
    std::mem::forget(LIVE.lock());
}

pub(crate) fn after_fork_parent() {
    // SAFETY: `prepare_fork` took the lock on this thread and forgot the guard.
    unsafe { LIVE.force_unlock() };
}

pub(crate) fn after_fork_child() {
    // SAFETY: as in the parent; the child's only thread is the one that took it.
    unsafe { LIVE.force_unlock() };
    ENABLED.store(false, Ordering::SeqCst);
}

/// A global allocator that samples allocations for memory profiles and forwards everything to
/// `A` (the system allocator, jemalloc, mimalloc...).
///
/// ```no_run
/// use std::alloc::System;
/// #[global_allocator]
/// static GLOBAL: pyroscope_core::SamplingAllocator<System> = pyroscope_core::SamplingAllocator::new(System);
/// ```
/// Nothing is recorded until an agent with memory profiling (the default) starts.
pub struct SamplingAllocator<A> {
    inner: A,
}

impl<A> SamplingAllocator<A> {
    /// Wraps `inner`.
    pub const fn new(inner: A) -> Self {
        SamplingAllocator { inner }
    }
}

// SAFETY: every method forwards to the inner allocator with the caller's arguments unchanged
// and returns its result; the hooks only observe pointers and sizes.
unsafe impl<A: GlobalAlloc> GlobalAlloc for SamplingAllocator<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if alloc_is_sampled(layout.size()) {
            // SAFETY: the caller's contract is passed through.
            return unsafe { self.alloc_slow(layout, false) };
        }
        // SAFETY: the caller's contract is passed through; a tail call on the hot path.
        unsafe { self.inner.alloc(layout) }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if alloc_is_sampled(layout.size()) {
            // SAFETY: the caller's contract is passed through.
            return unsafe { self.alloc_slow(layout, true) };
        }
        // SAFETY: the caller's contract is passed through.
        unsafe { self.inner.alloc_zeroed(layout) }
    }
    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if free_is_tracked(ptr) {
            // SAFETY: the caller's contract is passed through.
            return unsafe { self.dealloc_slow(ptr, layout) };
        }
        // SAFETY: the caller's contract is passed through; a tail call on the hot path.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_free(ptr);
        // SAFETY: the caller's contract is passed through.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        on_alloc(p, new_size);
        p
    }
}

impl<A: GlobalAlloc> SamplingAllocator<A> {
    /// The sampled path, out of line so the hot path stays a tail call.
    ///
    /// # Safety
    /// As `GlobalAlloc::alloc`.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_slow(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        // SAFETY: the caller's contract is passed through.
        let p = unsafe {
            if zeroed {
                self.inner.alloc_zeroed(layout)
            } else {
                self.inner.alloc(layout)
            }
        };
        record_alloc(p, layout.size());
        p
    }

    /// The free of a possibly sampled block, out of line like `alloc_slow`.
    ///
    /// # Safety
    /// As `GlobalAlloc::dealloc`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_slow(&self, ptr: *mut u8, layout: Layout) {
        record_free(ptr);
        // SAFETY: the caller's contract is passed through.
        unsafe { self.inner.dealloc(ptr, layout) }
    }
}
