//! A bounded lock-free MPSC ring of fixed-size sample records. ⚠
//!
//! Writers are the CPU timer's signal handler and the allocation hook, on any thread; the
//! single reader is the collector thread. This is Dmitry Vyukov's bounded queue: every slot has
//! a sequence number that says whether it is free for the writer holding ticket `pos` or full
//! for the reader. A writer claims a ticket with one CAS, fills the slot and publishes it with
//! one release store. When the ring is full the record is dropped and counted, never waited for.
//!
//! The records live in an anonymous mapping that nothing writes at creation: a page becomes
//! resident when a writer first fills a record in it, so a process that exits at once, or
//! samples little, never pays for the ring (up to 8 MiB; one written in full at start was most
//! of the memory the preload library added to `sqlite3 :memory: 'select 1'`). The sequence
//! numbers are a small dense array of their own, so reading one never maps a record's page.
//!
//! A ring the reader finds empty is rewound: the writers' next ticket jumps to the start of the
//! next lap, so the records written next are the first ones of the mapping again. The pages that
//! stay resident are those of the largest backlog the reader has seen, not the whole ring (in a
//! long run, tickets that only went forward wrote every record of every lane: 8 MiB resident for
//! a few records a window).
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
pub const MAX_DEPTH: usize = 256;

/// What a record measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A CPU-time sample; `weight` is the number of timer periods it stands for.
    Cpu = 0,
    /// A sampled allocation; `weight` is its size in bytes, `aux` the hash of its stack.
    Alloc = 1,
    /// A wall-clock sample of a thread marked for it; `weight` is the number of periods.
    Wall = 2,
}

impl Kind {
    /// How many kinds there are (the length of per-kind tables).
    pub const COUNT: usize = 3;
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
    /// Words an interpreter's walker wrote after the native frames (`pcs[depth..depth + interp]`).
    pub interp: u16,
    pub weight: u64,
    /// Kind-specific: the stack hash for `Alloc`; for `Cpu` and `Wall`, the JIT code map's
    /// generation when the sample was taken ([`crate::jit`]).
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
            interp: 0,
            weight: 0,
            aux: 0,
            pcs: [0; MAX_DEPTH],
        }
    }

    pub fn stack(&self) -> &[u64] {
        &self.pcs[..(self.depth as usize).min(MAX_DEPTH)]
    }

    /// What an interpreter's walker wrote (see [`crate::interp`]).
    pub fn interp_words(&self) -> &[u64] {
        let start = (self.depth as usize).min(MAX_DEPTH);
        &self.pcs[start..(start + self.interp as usize).min(MAX_DEPTH)]
    }
}

/// The records of one ring: an anonymous private mapping whose pages the kernel gives as zeros
/// on first touch (or, when the mapping is refused, zeroed heap memory).
enum Slots {
    Mapped { base: std::ptr::NonNull<UnsafeCell<Record>>, len: usize },
    Heap(Box<[UnsafeCell<Record>]>),
}

impl Slots {
    fn new(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<Record>();
        // SAFETY: an anonymous private mapping with no address hint; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        match std::ptr::NonNull::new(p.cast::<UnsafeCell<Record>>()) {
            Some(base) if p != libc::MAP_FAILED => Slots::Mapped { base, len },
            _ => Slots::Heap((0..len).map(|_| UnsafeCell::new(Record::zeroed())).collect()),
        }
    }

    /// The mapping (start, bytes), when the slots have one of their own.
    fn mapping(&self) -> Option<(*mut libc::c_void, usize)> {
        match self {
            Slots::Mapped { base, len } => Some((base.as_ptr().cast(), len * std::mem::size_of::<Record>())),
            Slots::Heap(_) => None,
        }
    }
}

impl std::ops::Deref for Slots {
    type Target = [UnsafeCell<Record>];
    #[inline(always)]
    fn deref(&self) -> &[UnsafeCell<Record>] {
        match self {
            // SAFETY: the mapping holds `len` records, is page aligned (so aligned for `Record`),
            // is unmapped only when `self` is dropped, and all-zero bytes are a valid `Record`;
            // records are only accessed through the `UnsafeCell` protocol of the ring.
            Slots::Mapped { base, len } => unsafe { std::slice::from_raw_parts(base.as_ptr(), *len) },
            Slots::Heap(b) => b,
        }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        if let Some((p, bytes)) = self.mapping() {
            // SAFETY: our own mapping, unmapped once, and no reference into it outlives `self`.
            unsafe { libc::munmap(p, bytes) };
        }
    }
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

/// Allocation records may fill a lane up to all but one `CPU_RESERVE_DIV`th of it: the last
/// quarter is kept for CPU records.
const CPU_RESERVE_DIV: usize = 4;

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
            dropped: [const { AtomicU64::new(0) }; Kind::COUNT],
        }
    }

    /// Pushes a record of `kind` into the lane of `key` (any value that stays the same for a
    /// thread); when that lane is full, into the next one that is not, so that one thread's
    /// burst (a loop of sampled allocations outrunning the collector's wake-up) can use every
    /// lane before a record is dropped. A drop is counted under `kind`.
    ///
    /// # Signal safety
    /// As [`Ring::try_push`].
    ///
    /// Allocation records fill a lane only up to three quarters of it: the rest is kept for
    /// CPU records, so a storm of sampled allocations that outruns the collector never costs
    /// the CPU profile its samples.
    pub fn push(&self, key: usize, kind: Kind, fill: impl FnOnce(&mut Record)) -> Pushed {
        let mask = self.lanes.len() - 1;
        let mut fill = fill;
        for i in 0..self.lanes.len() {
            let lane = &self.lanes[key.wrapping_add(i) & mask];
            let room = match kind {
                Kind::Cpu | Kind::Wall => lane.capacity(),
                Kind::Alloc => lane.capacity() - lane.capacity() / CPU_RESERVE_DIV,
            };
            match lane.try_push(room, fill) {
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
    slots: Slots,
    /// Each slot's Vyukov sequence number: `pos` when the slot is free for ticket `pos`, `pos + 1`
    /// once that ticket's record is published.
    seqs: Box<[AtomicUsize]>,
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
// `enqueue`) and read only by the single reader after the writer's release store of its
// sequence number; the sequence protocol makes those accesses exclusive.
unsafe impl Sync for Ring {}
// SAFETY: the ring owns its slots (their mapping); moving it between threads moves plain memory.
unsafe impl Send for Ring {}

impl Ring {
    /// A ring of `capacity` records, rounded up to a power of two. No record is written here:
    /// see the module's doc for when their pages become resident.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        Ring {
            slots: Slots::new(capacity),
            seqs: (0..capacity).map(AtomicUsize::new).collect(),
            mask: capacity - 1,
            enqueue: CachePadded(AtomicUsize::new(0)),
            dequeue: CachePadded(AtomicUsize::new(0)),
            #[cfg(test)]
            dropped: AtomicU64::new(0),
        }
    }

    fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// [`Ring::try_push`], counting a drop when the ring is full (one ring on its own, in tests).
    #[cfg(test)]
    pub fn push(&self, fill: impl FnOnce(&mut Record)) -> Pushed {
        self.try_push(self.capacity(), fill).unwrap_or_else(|_| {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Pushed::Full
        })
    }

    /// Claims a slot, lets `fill` write the record, publishes it. Returns `Filling` now and
    /// then when the ring is more than half full; hands `fill` back when it is full.
    ///
    /// # Signal safety
    /// Atomics only; `fill` must be async-signal-safe too.
    fn try_push<F: FnOnce(&mut Record)>(&self, room: usize, fill: F) -> Result<Pushed, F> {
        let mut pos = self.enqueue.load(Ordering::Relaxed);
        // A writer limited to part of the ring looks at the reader's position first.
        if room < self.capacity() && pos.wrapping_sub(self.dequeue.load(Ordering::Acquire)) >= room {
            return Err(fill);
        }
        loop {
            let i = pos & self.mask;
            let diff = self.seqs[i].load(Ordering::Acquire) as isize - pos as isize;
            if diff == 0 {
                match self.enqueue.compare_exchange_weak(pos, pos + 1, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        // SAFETY: winning the CAS for ticket `pos` gives this writer exclusive
                        // access to the record until it stores `seq = pos + 1` below.
                        fill(unsafe { &mut *self.slots[i].get() });
                        self.seqs[i].store(pos + 1, Ordering::Release);
                        self.prefetch(pos + 1);
                        // Every 64th record looks at the reader's position (a line the
                        // collector writes, so not on every push).
                        let filling = pos % 64 == 0
                            && pos.wrapping_sub(self.dequeue.load(Ordering::Relaxed)) > self.capacity() / 2;
                        return Ok(if filling { Pushed::Filling } else { Pushed::Ok });
                    }
                    Err(now) => pos = now,
                }
            } else if diff < 0 {
                // Not yet freed by the reader: the ring is full (or, for an instant, being
                // rewound; see `rewind`).
                return Err(fill);
            } else {
                pos = self.enqueue.load(Ordering::Relaxed);
            }
        }
    }

    /// Hints the caches to fetch the start of the record for ticket `pos` for the next writer:
    /// the ring is larger than the caches, so an unhinted write takes a miss on each line.
    #[inline(always)]
    fn prefetch(&self, pos: usize) {
        let rec = self.slots[pos & self.mask].get() as *const u8;
        for line in 0..4 {
            crate::sys::prefetch(rec.wrapping_add(64 * line));
        }
    }

    /// Hands every published record to `f`, in order, and frees their slots; rewinds the ring
    /// when that leaves it empty. Only one thread may call this (the collector). Returns how
    /// many were read.
    pub fn drain(&self, mut f: impl FnMut(&Record)) -> usize {
        let mut n = 0;
        let mut end = self.enqueue.load(Ordering::Relaxed);
        loop {
            let pos = self.dequeue.load(Ordering::Relaxed);
            if pos == end {
                end = self.enqueue.load(Ordering::Relaxed);
                if pos == end {
                    self.rewind(pos);
                    return n;
                }
            }
            let i = pos & self.mask;
            if self.seqs[i].load(Ordering::Acquire) != pos + 1 {
                return n;
            }
            // SAFETY: `seq == pos + 1` means the writer published this slot and no writer will
            // touch it until we store `seq = pos + capacity` below; we are the only reader.
            f(unsafe { &*self.slots[i].get() });
            self.dequeue.store(pos + 1, Ordering::Relaxed);
            self.seqs[i].store(pos + self.capacity(), Ordering::Release);
            n += 1;
        }
    }

    /// Moves the writers' next ticket from `pos` (where the reader stands: the ring is empty)
    /// to the start of the next lap, so the next records go to the first slots again. The
    /// slots from `pos` to the end of this lap are given the sequence numbers of the next lap,
    /// as if written and read. A writer that took a next-lap ticket and reaches one of those
    /// slots before its store finds it taken, as in a full ring, and writes to another lane:
    /// possible only after it and others wrote every slot before `pos` in that instant.
    fn rewind(&self, pos: usize) {
        let first = pos & self.mask;
        if first == 0 {
            return;
        }
        let next_lap = pos - first + self.capacity();
        // A writer that took ticket `pos` meanwhile makes this fail: the ring is not empty.
        if self.enqueue.compare_exchange(pos, next_lap, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return;
        }
        self.dequeue.store(next_lap, Ordering::Relaxed);
        for (ticket, i) in (pos..next_lap).zip(first..) {
            self.seqs[i].store(ticket + self.capacity(), Ordering::Release);
        }
    }

    /// Records dropped because the ring was full, since creation (one ring on its own, in tests).
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Empties the ring. Only valid when no writer can be running: in a forked child, where a
    /// parent thread may have claimed a slot it will never publish. The child's copy of the
    /// records' mapping is given back to the kernel, so a child does not keep, nor write, the
    /// pages its parent had filled.
    pub fn reset_after_fork(&self) {
        if let Some((p, bytes)) = self.slots.mapping() {
            // SAFETY: our own private anonymous mapping; no writer runs (see above) and no
            // reference to a record is held across this call, so dropping its pages (they read
            // as zeros afterwards, a valid `Record`) changes nothing a reference could see.
            unsafe { libc::madvise(p, bytes, libc::MADV_DONTNEED) };
        }
        for (i, seq) in self.seqs.iter().enumerate() {
            seq.store(i, Ordering::SeqCst);
        }
        self.enqueue.store(0, Ordering::SeqCst);
        self.dequeue.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Resident pages of a ring's mapping, from `mincore`.
    fn resident_pages(ring: &Ring) -> usize {
        let (p, bytes) = ring.slots.mapping().expect("the ring has a mapping of its own");
        let pages = bytes.div_ceil(4096);
        let mut vec = vec![0u8; pages];
        // SAFETY: `p` is the page-aligned start of a live mapping of `bytes` bytes and `vec` has
        // one byte per page.
        let rc = unsafe { libc::mincore(p, bytes, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
        vec.iter().filter(|b| **b & 1 != 0).count()
    }

    /// A new ring is not resident (8 MiB for the agent's ring, paid by every process that
    /// loads the preload library, however briefly it runs): its pages come in as writers first
    /// fill them, and a drain does not touch the pages past the last record.
    #[test]
    fn a_ring_is_resident_only_where_written() {
        let lanes = Lanes::new(4, 1024);
        let total: usize = lanes.lanes.iter().map(|l| l.slots.mapping().map_or(0, |m| m.1.div_ceil(4096))).sum();
        assert!(total >= 1024, "{total} pages");
        let resident = || lanes.lanes.iter().map(resident_pages).sum::<usize>();
        assert_eq!(resident(), 0, "a new ring is resident");
        // 10 records of about 2 KiB each: 5 or 6 pages of one lane.
        for i in 0..10 {
            assert!(lanes.push(0, Kind::Cpu, |r| r.weight = i).written());
        }
        let mut seen = Vec::new();
        lanes.drain(|r| seen.push(r.weight));
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!(resident() <= 6, "{} pages resident after 10 records", resident());
        // A forked child's reset gives the pages back and leaves an empty ring that works.
        assert!(lanes.push(0, Kind::Cpu, |r| r.weight = 99).written());
        lanes.reset_after_fork();
        assert_eq!(resident(), 0, "the reset kept pages");
        assert_eq!(lanes.drain(|_| {}), 0, "the reset left records");
        for i in 0..2000 {
            assert!(lanes.push(1, Kind::Cpu, |r| r.weight = i).written());
        }
        seen.clear();
        lanes.drain(|r| seen.push(r.weight));
        seen.sort_unstable();
        assert_eq!(seen, (0..2000).collect::<Vec<_>>());
    }

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
    fn an_allocation_storm_leaves_a_quarter_of_every_lane_to_cpu_records() {
        let lanes = Lanes::new(4, 1 << 10);
        // Allocation records overflow from lane to lane, but fill none past three quarters.
        let written = (0..8 * 1024).filter(|&i| lanes.push(1, Kind::Alloc, |r| r.weight = i).written()).count();
        assert_eq!(written, 4 * 768);
        assert_eq!(lanes.dropped(Kind::Alloc), 8 * 1024 - 4 * 768);
        // CPU records still find the last quarter of every lane.
        for key in 0..4 {
            for i in 0..256 {
                assert!(lanes.push(key, Kind::Cpu, |r| r.weight = i).written(), "lane {key}, record {i}");
            }
        }
        assert_eq!(lanes.dropped(Kind::Cpu), 0);
        assert_eq!(lanes.push(0, Kind::Cpu, |_| {}), Pushed::Full);
        assert_eq!(lanes.drain(|_| {}), 1024);
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

    /// A reader that drains often keeps the same few records in use: in a long run, the ring
    /// stays as resident as its largest backlog, not as its capacity.
    #[test]
    fn a_reader_that_keeps_up_keeps_the_ring_small() {
        let ring = Ring::new(1024);
        let mut next = 0u64;
        for round in 0..20_000u64 / 7 {
            for _ in 0..7 {
                assert!(ring.push(|r| r.weight = next).written());
                next += 1;
            }
            let mut seen = Vec::new();
            assert_eq!(ring.drain(|r| seen.push(r.weight)), 7);
            assert_eq!(seen, (next - 7..next).collect::<Vec<_>>(), "round {round}");
        }
        // 7 records of about 2 KiB: 4 or 5 pages, however many laps the tickets made.
        assert!(resident_pages(&ring) <= 5, "{} pages resident", resident_pages(&ring));
        // A full lap's backlog after a rewind is kept whole and read back in order.
        for i in 0..1024 {
            assert!(ring.push(|r| r.weight = i).written(), "record {i}");
        }
        assert!(!ring.push(|_| {}).written());
        let mut seen = Vec::new();
        assert_eq!(ring.drain(|r| seen.push(r.weight)), 1024);
        assert_eq!(seen, (0..1024).collect::<Vec<_>>());
        assert_eq!(ring.dropped(), 1);
    }

    /// Writers racing each other and the reader's drains and rewinds (a small ring, so both
    /// happen thousands of times): every record arrives once, each writer's in its order.
    #[test]
    fn concurrent_writers_lose_nothing_that_fits() {
        const PER_WRITER: u64 = 5000;
        let ring = Arc::new(Ring::new(256));
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_WRITER {
                        let mut fill = |r: &mut Record| {
                            r.weight = t * 10_000 + i;
                            r.tid = t as i32;
                        };
                        // A full ring hands the record back: wait for the reader.
                        while let Err(back) = ring.try_push(ring.capacity(), fill) {
                            fill = back;
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        let mut last = [None::<u64>; 4];
        let mut count = 0;
        while count < 4 * PER_WRITER {
            count += ring.drain(|r| {
                let t = r.tid as usize;
                assert!(last[t].is_none_or(|l| r.weight == l + 1), "writer {t}: {:?} then {}", last[t], r.weight);
                last[t] = Some(r.weight);
            }) as u64;
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(ring.drain(|_| {}), 0);
        let expected: Vec<_> = (0..4).map(|t| Some(t * 10_000 + PER_WRITER - 1)).collect();
        assert_eq!(last.to_vec(), expected);
        assert_eq!(ring.dropped(), 0);
    }
}
