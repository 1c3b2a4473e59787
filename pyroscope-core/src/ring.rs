//! A bounded lock-free MPSC ring of fixed-size sample records. ⚠
//!
//! Writers are the CPU timer's signal handler and the allocation hook, on any thread; the
//! single reader is the collector thread. This is Dmitry Vyukov's bounded queue: every slot has a sequence number
//! that says whether it is free for the writer holding ticket `pos` or full for the reader.
//! A writer claims a ticket with one CAS, fills the slot and publishes it with one release
//! store. When the ring is full the record is dropped and counted, never waited for.
//!
//! # Signal safety
//! [`Lanes::push`] uses only atomics and plain memory writes to preallocated slots.

use crate::sync::Condvar;
use crate::sys::CachePadded;
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The rings every handler and hook writes to; created by the first agent and kept for the
/// process.
pub(crate) static RING_CELL: OnceLock<Lanes> = OnceLock::new();

/// Pushes a record of `kind` into the process's ring, in the lane of `key` (a value that stays the same for the
/// calling thread); `Full` before the first agent made the ring.
///
/// # Signal safety
/// One atomic load, then [`Lanes::push`].
pub(crate) fn push(key: usize, kind: Kind, fill: impl FnOnce(&mut Record)) -> Pushed {
    match RING_CELL.get() {
        Some(ring) => ring.push(key, kind, fill),
        None => Pushed::Full,
    }
}

/// Wakes the collector (the ring's reader) now: a hook found its lane filling. Not from a
/// signal handler. One wake-up per collector pass: a hook that finds one already asked for
/// returns at once (a notify is a system call, and a burst asks on every push once its lane
/// overflows).
pub(crate) fn wake_reader() {
    if !WAKE_ASKED.swap(true, Ordering::AcqRel) {
        COLLECTOR_WAKE.notify_all();
    }
}

/// A hook has woken the collector since its last pass began (see [`wake_reader`]).
pub(crate) static WAKE_ASKED: AtomicBool = AtomicBool::new(false);
/// Wakes the collector (only one runs at a time; it waits on this with its own mutex).
pub(crate) static COLLECTOR_WAKE: Condvar = Condvar::new();

/// Deepest stack a record holds; deeper stacks keep their leaf-most frames and are flagged.
pub const MAX_DEPTH: usize = 128;

/// What a record measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A CPU-time sample; `weight` is the number of timer periods it stands for.
    Cpu = 0,
    /// A sampled allocation; `weight` is its size in bytes, `aux` the hash of its stack.
    Alloc = 1,
}

impl Kind {
    /// How many kinds there are (the length of per-kind tables).
    pub const COUNT: usize = 2;
}

/// One sample as the handler saw it. `pcs[0]` is the leaf; every address is already the one
/// to look up (return addresses minus one).
#[repr(C)]
pub struct Record {
    pub kind: Kind,
    /// The stack was cut at [`MAX_DEPTH`] or the unwinder stopped early.
    pub truncated: bool,
    pub depth: u16,
    pub tid: i32,
    pub label_id: u32,
    pub weight: u64,
    /// Kind-specific: the stack hash for `Alloc`.
    pub aux: u64,
    pub pcs: [u64; MAX_DEPTH],
}

impl Record {
    pub const fn zeroed() -> Self {
        Record {
            kind: Kind::Cpu,
            truncated: false,
            depth: 0,
            tid: 0,
            label_id: 0,
            weight: 0,
            aux: 0,
            pcs: [0; MAX_DEPTH],
        }
    }

    pub fn stack(&self) -> &[u64] {
        &self.pcs[..(self.depth as usize).min(MAX_DEPTH)]
    }
}

struct Slot {
    seq: AtomicUsize,
    record: UnsafeCell<Record>,
}

/// What became of a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Ok,
    /// Written, and the ring is more than half full (or the writer's lane was full and the
    /// record went to another): the reader should come soon.
    Filling,
    /// Dropped: every lane was full.
    Full,
}

impl Pushed {
    pub fn written(self) -> bool {
        self != Pushed::Full
    }
}

/// Rings side by side, one per group of writer threads: a thread always writes to the same
/// lane, so writers on different lanes never contend for a ticket counter or a slot's cache
/// line, and the slot a thread prefetches after a push is the one it writes next. (With one
/// shared ring, the next slot was usually taken by another thread.)
pub struct Lanes {
    lanes: Box<[Ring]>,
    /// Records dropped because every lane was full, per [`Kind`]: a lost allocation sample is
    /// lost memory, not CPU time.
    dropped: [AtomicU64; Kind::COUNT],
}

impl Lanes {
    /// `lanes` rings of `capacity` records each (both rounded up to powers of two).
    pub fn new(lanes: usize, capacity: usize) -> Self {
        Lanes {
            lanes: (0..lanes.max(1).next_power_of_two()).map(|_| Ring::new(capacity)).collect(),
            dropped: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Pushes a record of `kind` into the lane of `key` (any value that stays the same for a
    /// thread); when that lane is full, into the next one that is not, so that one thread's
    /// burst (a loop of sampled allocations outrunning the collector's wake-up) can use every
    /// lane before a record is dropped. A drop is counted under `kind`.
    ///
    /// # Signal safety
    /// As [`Ring::try_push`].
    pub fn push(&self, key: usize, kind: Kind, fill: impl FnOnce(&mut Record)) -> Pushed {
        let mask = self.lanes.len() - 1;
        let mut fill = fill;
        for i in 0..self.lanes.len() {
            match self.lanes[key.wrapping_add(i) & mask].try_push(fill) {
                Ok(pushed) if i == 0 => return pushed,
                Ok(_) => return Pushed::Filling,
                Err(back) => fill = back,
            }
        }
        self.dropped[kind as usize].fetch_add(1, Ordering::Relaxed);
        Pushed::Full
    }

    /// Drains every lane (see [`Ring::drain`]); returns the most records read from one lane.
    pub fn drain(&self, mut f: impl FnMut(&Record)) -> usize {
        self.lanes.iter().map(|lane| lane.drain(&mut f)).max().unwrap_or(0)
    }

    /// Records of `kind` dropped because every lane was full, since creation.
    pub fn dropped(&self, kind: Kind) -> u64 {
        self.dropped[kind as usize].load(Ordering::Relaxed)
    }

    /// See [`Ring::reset_after_fork`].
    pub fn reset_after_fork(&self) {
        self.lanes.iter().for_each(Ring::reset_after_fork);
    }
}

/// The ring. Allocated once, never resized.
pub struct Ring {
    slots: Box<[Slot]>,
    mask: usize,
    /// Writers' ticket counter, on a cache line of its own: the collector's stores to
    /// `dequeue` must not steal it from the writers.
    enqueue: CachePadded<AtomicUsize>,
    dequeue: CachePadded<AtomicUsize>,
    /// Drops of a ring used on its own (tests); [`Lanes`] counts its own per kind.
    #[cfg(test)]
    dropped: AtomicU64,
}

// SAFETY: a slot's record is written only by the writer that won its ticket (CAS on
// `enqueue`) and read only by the single reader after the writer's release store of `seq`;
// the sequence protocol makes those accesses exclusive.
unsafe impl Sync for Ring {}
// SAFETY: the ring owns its slots; moving it between threads moves plain memory.
unsafe impl Send for Ring {}

impl Ring {
    /// A ring of `capacity` records, rounded up to a power of two. Every slot is written once
    /// here so that the pages are resident before a signal handler touches them.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        let slots: Box<[Slot]> = (0..capacity)
            .map(|i| Slot { seq: AtomicUsize::new(i), record: UnsafeCell::new(Record::zeroed()) })
            .collect();
        Ring {
            slots,
            mask: capacity - 1,
            enqueue: CachePadded(AtomicUsize::new(0)),
            dequeue: CachePadded(AtomicUsize::new(0)),
            #[cfg(test)]
            dropped: AtomicU64::new(0),
        }
    }

    /// [`Ring::try_push`], counting a drop when the ring is full (one ring on its own, in tests).
    #[cfg(test)]
    pub fn push(&self, fill: impl FnOnce(&mut Record)) -> Pushed {
        self.try_push(fill).unwrap_or_else(|_| {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Pushed::Full
        })
    }

    /// Claims a slot, lets `fill` write the record, publishes it. Returns `Filling` now and
    /// then when the ring is more than half full; hands `fill` back when it is full.
    ///
    /// # Signal safety
    /// Atomics only; `fill` must be async-signal-safe too.
    fn try_push<F: FnOnce(&mut Record)>(&self, fill: F) -> Result<Pushed, F> {
        let mut pos = self.enqueue.load(Ordering::Relaxed);
        loop {
            let slot = &self.slots[pos & self.mask];
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq as isize - pos as isize;
            if diff == 0 {
                match self.enqueue.compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for ticket `pos` gives this writer exclusive
                        // access to the slot until it stores `seq = pos + 1` below.
                        fill(unsafe { &mut *slot.record.get() });
                        slot.seq.store(pos + 1, Ordering::Release);
                        self.prefetch(pos + 1);
                        // Every 64th record looks at the reader's position (a line the
                        // collector writes, so not on every push).
                        let filling = pos % 64 == 0
                            && pos.wrapping_sub(self.dequeue.load(Ordering::Relaxed)) > self.slots.len() / 2;
                        return Ok(if filling { Pushed::Filling } else { Pushed::Ok });
                    }
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                return Err(fill);
            } else {
                pos = self.enqueue.load(Ordering::Relaxed);
            }
        }
    }

    /// Hints the caches to fetch the start of slot `pos` (its sequence word and the record's
    /// first lines) for the next writer: the ring is larger than the caches, so an unhinted
    /// write takes a miss on each.
    #[inline(always)]
    fn prefetch(&self, pos: usize) {
        let slot = &self.slots[pos & self.mask];
        let rec = slot.record.get() as *const u8;
        crate::sys::prefetch(slot.seq.as_ptr());
        for line in 0..4 {
            crate::sys::prefetch(rec.wrapping_add(64 * line));
        }
    }

    /// Hands every published record to `f`, in order, and frees their slots. Only one thread
    /// may call this (the collector). Returns how many were read.
    pub fn drain(&self, mut f: impl FnMut(&Record)) -> usize {
        let mut n = 0;
        loop {
            let pos = self.dequeue.load(Ordering::Relaxed);
            let slot = &self.slots[pos & self.mask];
            if slot.seq.load(Ordering::Acquire) != pos + 1 {
                return n;
            }
            // SAFETY: `seq == pos + 1` means the writer published this slot and no writer will
            // touch it until we store `seq = pos + capacity` below; we are the only reader.
            f(unsafe { &*slot.record.get() });
            self.dequeue.store(pos + 1, Ordering::Relaxed);
            slot.seq.store(pos + self.mask + 1, Ordering::Release);
            n += 1;
        }
    }

    /// Records dropped because the ring was full, since creation (one ring on its own, in tests).
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Empties the ring. Only valid when no writer can be running: in a forked child, where a
    /// parent thread may have claimed a slot it will never publish.
    pub fn reset_after_fork(&self) {
        for (i, slot) in self.slots.iter().enumerate() {
            slot.seq.store(i, Ordering::SeqCst);
        }
        self.enqueue.store(0, Ordering::SeqCst);
        self.dequeue.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn full_ring_drops_and_counts() {
        let ring = Ring::new(4);
        for i in 0..6 {
            ring.push(|r| r.weight = i);
        }
        assert_eq!(ring.dropped(), 2);
        let mut seen = Vec::new();
        ring.drain(|r| seen.push(r.weight));
        assert_eq!(seen, vec![0, 1, 2, 3]);
        assert!(ring.push(|r| r.weight = 9).written());
        ring.drain(|r| seen.push(r.weight));
        assert_eq!(seen.last(), Some(&9));
    }

    #[test]
    fn lanes_keep_each_writer_apart_and_drain_all() {
        let lanes = Arc::new(Lanes::new(4, 1 << 10));
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let lanes = lanes.clone();
                std::thread::spawn(move || {
                    for i in 0..700u64 {
                        assert!(lanes.push(t as usize, Kind::Cpu, |r| r.weight = t * 10_000 + i).written());
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let mut seen = Vec::new();
        // 700 per lane: more than half of 1,024, so the reader was asked to come.
        assert_eq!(lanes.drain(|r| seen.push(r.weight)), 700);
        seen.sort_unstable();
        let expected: Vec<u64> = (0..4u64).flat_map(|t| (0..700).map(move |i| t * 10_000 + i)).collect();
        assert_eq!(seen, expected);
        assert_eq!(lanes.dropped(Kind::Cpu) + lanes.dropped(Kind::Alloc), 0);
        let pushed: Vec<Pushed> = (0..1024).map(|i| lanes.push(1, Kind::Cpu, |r| r.weight = i)).collect();
        assert!(pushed.contains(&Pushed::Filling));
        assert_eq!(pushed.iter().filter(|p| !p.written()).count(), 0);
        // A full lane overflows into the others, asking for the reader, before anything drops.
        let overflow: Vec<Pushed> = (0..3 * 1024).map(|i| lanes.push(1, Kind::Cpu, |r| r.weight = 5000 + i)).collect();
        assert!(overflow.iter().all(|p| *p == Pushed::Filling), "{overflow:?}");
        assert_eq!(lanes.dropped(Kind::Cpu) + lanes.dropped(Kind::Alloc), 0);
        assert_eq!(lanes.push(1, Kind::Alloc, |_| {}), Pushed::Full);
        assert_eq!(lanes.push(2, Kind::Alloc, |_| {}), Pushed::Full);
        assert_eq!(lanes.push(1, Kind::Cpu, |_| {}), Pushed::Full);
        assert_eq!((lanes.dropped(Kind::Cpu), lanes.dropped(Kind::Alloc)), (1, 2), "drops are counted per kind");
        let mut all = Vec::new();
        lanes.drain(|r| all.push(r.weight));
        assert_eq!(all.len(), 4 * 1024, "every record that fitted is read back");
    }

    #[test]
    fn concurrent_writers_lose_nothing_that_fits() {
        let ring = Arc::new(Ring::new(1 << 12));
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u64 {
                        ring.push(|r| {
                            r.weight = t * 10_000 + i;
                            r.depth = 1;
                        });
                    }
                })
            })
            .collect();
        let mut total = 0u64;
        let mut count = 0;
        while writers.iter().any(|w| !w.is_finished()) || count + ring.dropped() < 4000 {
            count += ring.drain(|r| total += r.weight) as u64;
        }
        let expected: u64 = (0..4).map(|t| (0..1000).map(|i| t * 10_000 + i).sum::<u64>()).sum();
        assert_eq!(ring.dropped(), 0);
        assert_eq!(total, expected);
    }
}
