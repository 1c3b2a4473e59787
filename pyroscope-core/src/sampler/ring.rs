//! A bounded lock-free MPSC ring of fixed-size sample records. ⚠
//!
//! Writers are signal handlers (and allocation hooks) on any thread; the single reader is the
//! collector thread. This is Dmitry Vyukov's bounded queue: every slot has a sequence number
//! that says whether it is free for the writer holding ticket `pos` or full for the reader.
//! A writer claims a ticket with one CAS, fills the slot and publishes it with one release
//! store. When the ring is full the record is dropped and counted, never waited for.
//!
//! # Signal safety
//! [`Ring::push`] uses only atomics and plain memory writes to preallocated slots.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

/// The ring. Allocated once, never resized.
pub struct Ring {
    slots: Box<[Slot]>,
    mask: usize,
    enqueue: AtomicUsize,
    dequeue: AtomicUsize,
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
            enqueue: AtomicUsize::new(0),
            dequeue: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Claims a slot, lets `fill` write the record, publishes it. Returns false (and counts a
    /// drop) when the ring is full.
    ///
    /// # Signal safety
    /// Atomics only; `fill` must be async-signal-safe too.
    pub fn push(&self, fill: impl FnOnce(&mut Record)) -> bool {
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
                        return true;
                    }
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
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
        let rec = slot.record.get() as *const i8;
        for p in
            [slot.seq.as_ptr() as *const i8, rec, rec.wrapping_add(64), rec.wrapping_add(128), rec.wrapping_add(192)]
        {
            // SAFETY: prefetching has no architectural effect and never faults.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p) };
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

    /// Records dropped because the ring was full, since creation.
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
        assert!(ring.push(|r| r.weight = 9));
        ring.drain(|r| seen.push(r.weight));
        assert_eq!(seen.last(), Some(&9));
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
