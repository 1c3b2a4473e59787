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
//! into a sharded live map; frees test a 2 KiB bitmap first (one relaxed load), then a finer
//! table of counters and an exact lock-free set, and take a shard's lock only for a real
//! sample. `docs/memory.md` has the figures behind each choice.
//!
//! A thread-local re-entrancy guard makes everything the profiler allocates while handling a
//! sample go straight to the inner allocator, never sampled and never recursing.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use framehop::{FrameAddress, Unwinder};

use crate::ring::{self, Kind, Pushed, MAX_DEPTH};
use crate::sync::Mutex;
use crate::sys::{prefetch, CachePadded};
use crate::thread::{reader_key, thread_cache, BUSY, COUNTDOWN, RNG};
use crate::unwind::{self, memory, NativeRegs};

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
/// Allocations sampled (records written), since the process started.
pub(crate) static SAMPLED: AtomicU64 = AtomicU64::new(0);

/// A live sampled allocation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Live {
    pub stack_hash: u64,
    pub label_id: u32,
    pub size: u64,
}

/// First check on the free path: one bit per 1 KiB granule (address / 1024, modulo the number
/// of granules, no hashing), set while some live sample starts in it. The whole filter is
/// 2 KiB and one cache line covers 512 KiB of neighbouring addresses, so even a free after a
/// burst of `memset`s finds it in L1: a clear bit (one load, one shift) proves the address is
/// not a live sample. A 16 KiB table of byte counters here cost 1.5-2 ns per free, mostly L1
/// misses. Bits are set and cleared under the lock of the granule's shard (below).
const GRANULES: usize = 1 << 14;
/// Cache-line aligned, so no other variable's writes evict the filter from readers' caches.
static FILTER: CachePadded<[AtomicU64; GRANULES / 64]> = CachePadded([const { AtomicU64::new(0) }; GRANULES / 64]);
/// Live samples per granule (saturating: a full counter stays full and only costs lookups).
/// Off the fast path.
static GRANULE_COUNT: [AtomicU8; GRANULES] = [const { AtomicU8::new(0) }; GRANULES];

/// Second check, for frees in a flagged granule: live-sample counters at 16-byte resolution
/// (every heap block starts 16-aligned). The 64 counters of a flagged granule share one cache
/// line, which every free in that granule reads, so it stays cached; without this level, each
/// of the objects that share a sample's granule paid a cache miss in the exact set.
const FINE_SIZE: usize = 1 << 20;
static FINE: [AtomicU8; FINE_SIZE] = [const { AtomicU8::new(0) }; FINE_SIZE];

/// The filter index of `addr`'s 1 KiB granule: the granule number, XORed with a value drawn
/// from the 64 MiB region that holds it. glibc gives each thread's arena its own 64 MiB-aligned
/// region, so without the XOR the heaps of two threads fall on the same filter bits and
/// counters: each thread's frees then take the slow path for the other's samples, and the
/// lines bounce between cores (a 2-thread benchmark ran 4-10% slower, depending on the run).
/// Within a region the XOR keeps neighbouring granules on neighbouring bits.
#[inline(always)]
fn granule(addr: usize) -> usize {
    let region_mix = ((addr >> 26) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 50;
    ((addr >> 10) ^ region_mix as usize) & (GRANULES - 1)
}

/// The fine counter of `addr`: its granule's 64 counters, one per 16 bytes. Derived from the
/// granule index, so addresses that share a counter share a granule (and a shard).
fn fine_slot(addr: usize) -> usize {
    granule(addr) << 6 | (addr >> 4) & 63
}

// Every address of a granule belongs to the same shard of the exact set (the shard is chosen
// by granule), and so does every address that shares a `FINE` counter (same granule index).
// So a shard's lock serializes all the updates of a given counter, and a granule's count and
// its bit always agree; only the 64-bit filter words are shared between shards, and change by
// atomic OR and AND.

fn bump(slot: &AtomicU8, up: bool) {
    let c = slot.load(Ordering::Relaxed);
    // Saturated counters stay put (they only cost lookups).
    if c != u8::MAX && (up || c != 0) {
        slot.store(if up { c + 1 } else { c - 1 }, Ordering::Relaxed);
    }
}

/// Under the lock of `addr`'s shard: counts a new live sample at `addr` in both filters.
fn filters_add(addr: usize) {
    let g = granule(addr);
    bump(&GRANULE_COUNT[g], true);
    let word = &FILTER[g / 64];
    if word.load(Ordering::Relaxed) & (1 << (g % 64)) == 0 {
        word.fetch_or(1 << (g % 64), Ordering::Relaxed);
    }
    bump(&FINE[fine_slot(addr)], true);
}

/// Under the lock of `addr`'s shard: the sample at `addr` is gone. Its granule's bit is
/// cleared at once: left set until a later sweep, stale bits sent a quarter of all frees of an
/// allocation-heavy program to the second level, a cache miss each.
fn filters_remove(addr: usize) {
    let g = granule(addr);
    bump(&GRANULE_COUNT[g], false);
    if GRANULE_COUNT[g].load(Ordering::Relaxed) == 0 {
        FILTER[g / 64].fetch_and(!(1 << (g % 64)), Ordering::Relaxed);
    }
    bump(&FINE[fine_slot(addr)], false);
}

/// Hints the cache lines a sample will update, so their misses overlap the unwind.
#[inline(always)]
fn prefetch_tables(addr: usize) {
    let (shard, slot) = set_start(addr);
    prefetch(SHARDS[shard].keys[slot].as_ptr());
    prefetch(FINE[fine_slot(addr)].as_ptr());
    prefetch(GRANULE_COUNT[granule(addr)].as_ptr());
}

/// Third check, for the rare free that passes both filters: the exact set of live sampled
/// addresses, linear probing with lock-free reads, split in shards by granule. Each shard
/// holds the map of its live samples and its part of the set under its own lock, so threads
/// that sample at the same time rarely wait for each other (one global lock made a busy
/// program's threads park on it). Removal shifts later entries back instead of leaving
/// tombstones, so a miss ends at the first empty slot (almost always the first or second
/// probe) however many samples came and went before.
const SHARD_COUNT: usize = 64;
const SHARD_KEYS: usize = 1 << 12;
const SHARD_MASK: usize = SHARD_KEYS - 1;
const SET_PROBES: usize = 32;

#[repr(align(64))]
struct Shard {
    /// The live samples whose granule maps here (`None` until the first).
    map: Mutex<Option<LiveMap>>,
    /// Odd while a removal moves entries (a seqlock): a reader that missed during one looks
    /// again.
    gen: AtomicUsize,
    keys: [AtomicUsize; SHARD_KEYS],
}

static SHARDS: [Shard; SHARD_COUNT] = [const {
    Shard { map: Mutex::new(None), gen: AtomicUsize::new(0), keys: [const { AtomicUsize::new(0) }; SHARD_KEYS] }
}; SHARD_COUNT];

/// The shard of `addr` (chosen by its granule, see the filters) and its home slot there.
fn set_start(addr: usize) -> (usize, usize) {
    let shard = (granule(addr) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58;
    let h = (addr as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (shard as usize, (h >> 40) as usize & SHARD_MASK)
}

fn shard_of(addr: usize) -> &'static Shard {
    &SHARDS[set_start(addr).0]
}

/// Whether `addr` is in the set. An entry moved by a concurrent removal could be passed over,
/// so a miss counts only if no removal ran meanwhile; after a few tries it says maybe (true).
fn set_contains(addr: usize) -> bool {
    let (shard, start) = set_start(addr);
    let shard = &SHARDS[shard];
    for _ in 0..4 {
        let gen = shard.gen.load(Ordering::Acquire);
        if gen & 1 == 0 {
            for i in 0..SET_PROBES {
                match shard.keys[(start + i) & SHARD_MASK].load(Ordering::Relaxed) {
                    0 => break,
                    k if k == addr => return true,
                    _ => {}
                }
            }
            std::sync::atomic::fence(Ordering::Acquire);
            if shard.gen.load(Ordering::Relaxed) == gen {
                return false;
            }
        }
        std::hint::spin_loop();
    }
    // Removals keep racing: decide under the lock (callers lock next anyway).
    true
}

/// Under the shard's lock. False when no slot is free within the probe bound.
fn set_insert(addr: usize) -> bool {
    let (shard, start) = set_start(addr);
    for i in 0..SET_PROBES {
        let slot = &SHARDS[shard].keys[(start + i) & SHARD_MASK];
        let k = slot.load(Ordering::Relaxed);
        if k == 0 || k == addr {
            slot.store(addr, Ordering::Release);
            return true;
        }
    }
    false
}

/// Under the shard's lock: removes `addr`, then moves back each later entry of the run that
/// may sit in the hole (its home is not between the hole and itself), so no probe chain breaks.
fn set_remove(addr: usize) {
    let (shard, start) = set_start(addr);
    let shard = &SHARDS[shard];
    let mut hole = None;
    for i in 0..SET_PROBES {
        let j = (start + i) & SHARD_MASK;
        match shard.keys[j].load(Ordering::Relaxed) {
            0 => return,
            k if k == addr => {
                hole = Some(j);
                break;
            }
            _ => {}
        }
    }
    let Some(mut hole) = hole else { return };
    let gen = shard.gen.load(Ordering::Relaxed);
    shard.gen.store(gen + 1, Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::Release);
    let mut j = hole;
    loop {
        j = (j + 1) & SHARD_MASK;
        let k = shard.keys[j].load(Ordering::Relaxed);
        if k == 0 {
            break;
        }
        let home = set_start(k).1;
        if hole.wrapping_sub(home) & SHARD_MASK < j.wrapping_sub(home) & SHARD_MASK {
            shard.keys[hole].store(k, Ordering::Relaxed);
            hole = j;
        }
    }
    shard.keys[hole].store(0, Ordering::Relaxed);
    shard.gen.store(gen + 2, Ordering::Release);
}

/// Keyed by address: FxHash (SipHash was the live map's largest cost after the lock).
type LiveMap = rustc_hash::FxHashMap<usize, Live>;

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

/// Runs `f` with the re-entrancy guard set (whatever it was), for profiler code outside the
/// hooks that takes the live map's lock: allocations inside must not re-enter.
pub(crate) fn busy<R>(f: impl FnOnce() -> R) -> R {
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
    let g = granule(ptr as usize);
    FILTER[g / 64].load(Ordering::Relaxed) & (1 << (g % 64)) != 0
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
    if ptr.is_null() || FINE[fine_slot(ptr as usize)].load(Ordering::Relaxed) == 0 || !set_contains(ptr as usize) {
        return;
    }
    guarded(|| {
        let mut live = shard_of(ptr as usize).map.lock();
        if let Some(map) = live.as_mut() {
            if map.remove(&(ptr as usize)).is_some() {
                set_remove(ptr as usize);
                filters_remove(ptr as usize);
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
    let Ok(left) = COUNTDOWN.try_with(Cell::get) else { return };
    let next = countdown_expired(ptr, size, left);
    let _ = COUNTDOWN.try_with(|c| c.set(next));
}

/// For hooks that keep their own per-thread countdown (the preload library keeps it in
/// initial-exec TLS, cheaper from a shared library than a Rust thread-local): an allocation
/// of `size` bytes at `ptr` took the countdown to `left` (zero or below). Records the
/// allocation if it is sampled and returns the countdown to store.
#[cold]
#[inline(never)]
pub fn countdown_expired(ptr: *mut u8, size: usize, left: i64) -> i64 {
    if crate::thread::is_current_own() {
        // Never sampled: the countdown never runs out again.
        return i64::MAX;
    }
    if !HOOKED.load(Ordering::Relaxed) {
        HOOKED.store(true, Ordering::Relaxed);
    }
    guarded(|| {
        // A thread's first trip here only draws its first interval: starting every thread's
        // countdown at zero would sample (and inflate) each thread's first allocation.
        let first = RNG.try_with(|r| r.get() == 0).unwrap_or(false);
        let next = next_interval();
        if first && next > size as i64 {
            return next - size as i64;
        }
        if ENABLED.load(Ordering::Relaxed) && !ptr.is_null() {
            record(ptr, size);
        }
        next
    })
    // Re-entered (the profiler's own allocation) or thread teardown: unchanged, not sampled.
    .unwrap_or(left)
}

/// Unwinds the calling thread from here and records the allocation. Runs under the guard.
#[inline(never)]
fn record(ptr: *mut u8, size: usize) {
    prefetch_tables(ptr as usize);
    let Some(cache) = thread_cache() else { return };
    let (pc, sp, bp) = current_regs();
    // Counted like a signal handler, so the snapshot and maps we read are not freed meanwhile.
    // (Never ask pthread for the stack here: pthread_getattr_np may hold a lock up-stack.)
    let key = reader_key();
    let stripe = unwind::HANDLERS_ACTIVE.enter(key);
    #[cfg(feature = "test-hooks")]
    crate::sampler::test_hooks::hold_in_hook_here();
    let stack = unwind::stack_window(sp);
    let label_id = crate::thread::current_label_id();
    let snapshot = unwind::current();
    let walker = crate::interp::walker();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let pushed = ring::push(key, Kind::Alloc, |rec| {
        rec.kind = Kind::Alloc;
        rec.tid = 0;
        rec.label_id = label_id;
        rec.weight = size as u64;
        rec.truncated = false;
        rec.interp = 0;
        let mut depth = 0;
        // SAFETY: a registered walker is async-signal-safe by its contract (`WalkFn`), so it
        // is safe here too, on the allocating thread as it expects.
        let words = walker.map_or(0, |walk| unsafe { walk(&mut rec.pcs[..]) }.min(MAX_DEPTH));
        if words > 0 {
            rec.interp = words as u16;
        } else if let Some(snapshot) = snapshot {
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
        for pc in &rec.pcs[..depth + words] {
            hash = (hash ^ pc).wrapping_mul(0x100_0000_01b3);
        }
        hash ^= rec.truncated as u64;
        rec.aux = hash;
    });
    unwind::HANDLERS_ACTIVE.exit(stripe);
    if pushed == Pushed::Filling {
        ring::wake_reader();
    }
    if !pushed.written() {
        return;
    }
    SAMPLED.fetch_add(1, Ordering::Relaxed);
    let mut live = shard_of(ptr as usize).map.lock();
    let map = live.get_or_insert_with(|| {
        TABLES_USED.store(true, Ordering::Relaxed);
        LiveMap::default()
    });
    if map.len() >= MAX_LIVE / SHARD_COUNT || !set_insert(ptr as usize) {
        LIVE_OVERFLOW.fetch_add(1, Ordering::Relaxed);
        return;
    }
    map.insert(ptr as usize, Live { stack_hash: hash, label_id, size: size as u64 });
    filters_add(ptr as usize);
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

/// The live sampled allocations, grouped by (stack hash, labels): (count, bytes).
pub(crate) fn live_snapshot() -> HashMap<(u64, u32), Vec<u64>> {
    // One shard at a time: a thread that samples waits for at most one shard's copy.
    let mut out: HashMap<(u64, u32), Vec<u64>> = HashMap::new();
    for shard in &SHARDS {
        let copy: Vec<Live> =
            busy(|| shard.map.lock().as_ref().map(|m| m.values().copied().collect()).unwrap_or_default());
        for l in copy {
            out.entry((l.stack_hash, l.label_id)).or_default().push(l.size);
        }
    }
    out
}

/// Some hook has inserted a live sample since the process started (the tables hold data).
static TABLES_USED: AtomicBool = AtomicBool::new(false);
/// [`make_resident`] ran.
static RESIDENT: AtomicBool = AtomicBool::new(false);

/// Forgets every live allocation (a new agent starts from zero). Tables never written are not
/// read either (see [`make_resident`]).
pub(crate) fn reset_live() {
    busy(|| {
        // All shards at once: the filters are shared between them.
        let mut guards: Vec<_> = SHARDS.iter().map(|shard| shard.map.lock()).collect();
        for live in &mut guards {
            if let Some(m) = live.as_mut() {
                m.clear();
            }
        }
        if !TABLES_USED.load(Ordering::Relaxed) {
            return;
        }
        for shard in &SHARDS {
            shard.gen.fetch_add(1, Ordering::Relaxed);
            for k in shard.keys.iter() {
                k.store(0, Ordering::Relaxed);
            }
            shard.gen.fetch_add(1, Ordering::Release);
        }
        for f in FILTER.iter() {
            f.store(0, Ordering::Relaxed);
        }
        for f in GRANULE_COUNT.iter().chain(FINE.iter()) {
            f.store(0, Ordering::Relaxed);
        }
    });
}

/// Allocations sampled before [`make_resident`] writes the tables: 16 MiB allocated at the
/// default mean.
const RESIDENT_AFTER_SAMPLES: u64 = 32;

/// Writes every page of the exact set and of the filters once, without changing a value.
/// The collector calls it at every pass while hooked allocations are sampled; it acts once,
/// after [`RESIDENT_AFTER_SAMPLES`] samples (so a program without a sampling allocator, or one
/// that exits after a few samples, such as a short command under the preload library, never
/// pays the 3 MiB). A page that a hook first reads is mapped to the shared zero page, and the
/// first write to it then costs a copy-on-write fault with a TLB shootdown on every CPU:
/// hundreds of those in the first seconds of sampling cost a busy program more than everything
/// else the sampler did; the first samples cause a few of them at most.
pub(crate) fn make_resident() {
    // The collector asks at every pass: plain loads answer all but one time.
    if RESIDENT.load(Ordering::Relaxed)
        || SAMPLED.load(Ordering::Relaxed) < RESIDENT_AFTER_SAMPLES
        || RESIDENT.swap(true, Ordering::Relaxed)
    {
        return;
    }
    // Every half page, so that every page is reached whatever the arrays' alignment.
    const PAGE: usize = 4096;
    for shard in &SHARDS {
        for k in shard.keys.iter().step_by(PAGE / 2 / std::mem::size_of::<AtomicUsize>()) {
            k.fetch_or(0, Ordering::Relaxed);
        }
    }
    for f in GRANULE_COUNT.iter().chain(FINE.iter()).step_by(PAGE / 2) {
        f.fetch_or(0, Ordering::Relaxed);
    }
}

pub(crate) fn prepare_fork() {
    for shard in &SHARDS {
        shard.map.fork_hold();
    }
}

pub(crate) fn after_fork_parent() {
    release_all();
}

pub(crate) fn after_fork_child() {
    release_all();
    ENABLED.store(false, Ordering::SeqCst);
}

/// Gives back the shard locks `prepare_fork` took (in the child, this thread is the only one).
fn release_all() {
    for shard in &SHARDS {
        shard.map.fork_release();
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact set against a model, with runs of colliding addresses: removals from the
    /// middle of probe chains must leave every other member findable.
    #[test]
    fn exact_set_removals_keep_chains_whole() {
        // Addresses far from any heap whose home slots all fall in a window of 8 in shard 0
        // (and one run across the shard's end), so chains are long and overlap.
        let base = 0x5a5a_0000_0000usize;
        let near = |a: usize, s: usize| {
            let (shard, slot) = set_start(a);
            shard == 0 && slot.wrapping_sub(s) & SHARD_MASK < 8
        };
        let addrs: Vec<usize> = (0..1usize << 26)
            .map(|k| base + k * 16)
            .filter(|&a| near(a, 1000) || near(a, SHARD_KEYS - 4))
            .take(120)
            .collect();
        assert_eq!(addrs.len(), 120);
        let _live = SHARDS[0].map.lock();
        let mut model = std::collections::HashSet::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for round in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let a = addrs[(x % addrs.len() as u64) as usize];
            if model.contains(&a) {
                set_remove(a);
                model.remove(&a);
            } else if set_insert(a) {
                model.insert(a);
            }
            if round % 997 == 0 {
                for &b in &addrs {
                    assert_eq!(set_contains(b), model.contains(&b), "round {round}, address {b:#x}");
                }
            }
        }
        for &a in &model {
            set_remove(a);
        }
        assert!(addrs.iter().all(|&a| !set_contains(a)));
        assert!(SHARDS[0].keys.iter().all(|k| k.load(Ordering::Relaxed) == 0), "removal left entries behind");
    }
}
