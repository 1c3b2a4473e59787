//! Code a JIT compiler generated at run time (V8's JavaScript functions): a map from address
//! ranges to frames, fed by a binding from the compiler's code events, read by the collector.
//!
//! JIT code lives in anonymous memory: the symbolizer cannot name it, and the unwinder walks
//! through it by frame pointers (framehop's rule for addresses in no known module). The
//! collector names a sample's JIT addresses when it drains the ring, within a tick of the
//! sample, so code freed and replaced later does not rename older samples.
//!
//! The compiler does not say when code is freed: a new range replaces every range it
//! overlaps (the newest code at an address wins), and moved code is re-keyed. Code events
//! can still come between a sample and its drain (a compacting collection moves code and puts
//! other code where it was): every change of the map takes a new generation, each sample
//! records the generation it saw (`generation()`, in its record's `aux`), and the ranges a
//! change replaced stay, retired, until no sample can need them (two drains later). A sample
//! is named by the code that was at its address in its generation.
//! A sample taken while a compacting collection runs on its thread, after code moved and
//! before the collector updated the stack's return addresses, can still be misnamed.
//!
//! A binding that asks its compiler for the code that existed before it watched only once a
//! thread has run a while (V8 walks its heap for it) checks when on the collector thread:
//! [`set_poll`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::aggregate::FrameId;
use crate::sync::{Mutex, MutexGuard};

/// Code in the map since generation `born`.
#[derive(Clone, Copy)]
struct Live {
    end: u64,
    frame: FrameId,
    born: u64,
}

/// Code that was at its address from generation `born` until `died`.
#[derive(Clone, Copy)]
struct Retired {
    end: u64,
    frame: FrameId,
    born: u64,
}

/// At most this many retired ranges are kept (about half a MiB). Past it (code events with no
/// collector draining, as between a binding's stop and start, or a collection moving more code
/// than this between two drains) they are all forgotten, and samples are named by the code at
/// their address now, as without generations.
const RETIRED_LIMIT: usize = 1 << 13;

/// The code map: live ranges by start, retired ones by (start, generation of their end).
pub struct Code {
    live: BTreeMap<u64, Live>,
    retired: BTreeMap<(u64, u64), Retired>,
    /// The longest retired range: how far below an address a retired range covering it may start.
    retired_span: u64,
    /// The generation at the previous drain's start.
    horizon: u64,
}

static CODE: Mutex<Code> =
    Mutex::new(Code { live: BTreeMap::new(), retired: BTreeMap::new(), retired_span: 0, horizon: 0 });
/// The map's generation: changes with each change of the map.
static GENERATION: AtomicU64 = AtomicU64::new(0);
/// Whether any code was ever added: the collector skips lookups for programs without a JIT.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The map's generation now: what a sample records to be named by the code of its instant.
///
/// # Signal safety
/// One atomic load: callable from a signal handler.
#[inline]
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::SeqCst)
}

impl Code {
    /// Starts a change of the map: its generation.
    fn next_generation(&self) -> u64 {
        GENERATION.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Moves the live ranges overlapping `[start, end)` to the retired ones, dead at `died`.
    fn retire_range(&mut self, start: u64, end: u64, died: u64) {
        let overlapping: Vec<u64> =
            self.live.range(..end).rev().take_while(|(_, c)| c.end > start).map(|(s, _)| *s).collect();
        for s in overlapping {
            if let Some(c) = self.live.remove(&s) {
                self.retire(s, c, died);
            }
        }
    }

    fn retire(&mut self, start: u64, c: Live, died: u64) {
        if self.retired.len() >= RETIRED_LIMIT {
            self.retired.clear();
            self.retired_span = 0;
        }
        self.retired_span = self.retired_span.max(c.end - start);
        self.retired.insert((start, died), Retired { end: c.end, frame: c.frame, born: c.born });
    }

    fn add(&mut self, start: u64, end: u64, frame: FrameId) {
        let generation = self.next_generation();
        self.retire_range(start, end, generation);
        self.live.insert(start, Live { end, frame, born: generation });
    }

    fn moved(&mut self, from: u64, to: u64) {
        let generation = self.next_generation();
        if let Some(c) = self.live.remove(&from) {
            let len = c.end - from;
            self.retire(from, c, generation);
            let end = to.saturating_add(len);
            self.retire_range(to, end, generation);
            self.live.insert(to, Live { end, frame: c.frame, born: generation });
        }
    }

    /// The frame of the code that held `pc` in generation `seen`: the live range if it was
    /// there then, else the retired one that was, else the live range (code reported after
    /// the sample, such as code that existed before the binding watched).
    pub(crate) fn lookup(&self, pc: u64, seen: u64) -> Option<FrameId> {
        let live = self.live.range(..=pc).next_back().filter(|(_, c)| pc < c.end).map(|(_, c)| c);
        if let Some(c) = live.filter(|c| c.born <= seen) {
            return Some(c.frame);
        }
        if !self.retired.is_empty() {
            let lowest = (pc.saturating_sub(self.retired_span), 0);
            let then = self
                .retired
                .range(lowest..=(pc, u64::MAX))
                .find(|((_, died), r)| pc < r.end && r.born <= seen && seen < *died)
                .map(|(_, r)| r.frame);
            if then.is_some() {
                return then;
            }
        }
        live.map(|c| c.frame)
    }

    /// A drain of the ring starts: the ranges retired before the previous drain started can
    /// name no sample still to come.
    fn drain_started(&mut self) {
        let horizon = self.horizon;
        self.retired.retain(|(_, died), _| *died > horizon);
        if self.retired.is_empty() {
            self.retired_span = 0;
        }
        self.horizon = generation();
    }
}

/// Records that `[start, start + len)` now holds code for `frame`. Cheap enough for every code
/// event of a JIT (a lock and a map insert); never from a signal handler.
pub fn code_added(start: u64, len: u64, frame: FrameId) {
    if len == 0 {
        return;
    }
    CODE.lock().add(start, start.saturating_add(len), frame);
    ACTIVE.store(true, Ordering::Release);
}

/// Records that the code at `from` moved to `to` (a compacting collector moved it).
pub fn code_moved(from: u64, to: u64) {
    CODE.lock().moved(from, to);
}

/// A binding's check, run on the collector thread after each drain of the ring (every 50 ms,
/// more often while the ring is busy), while an agent runs.
static POLL: OnceLock<fn()> = OnceLock::new();

/// Runs `poll` on the collector thread after each drain of the ring from now on. Once per
/// process: a second call is ignored. `poll` must be quick and never panic; it runs outside
/// the code map's lock, so it may add code.
pub fn set_poll(poll: fn()) {
    let _ = POLL.set(poll);
}

/// Runs the binding's check, if any (the collector).
pub(crate) fn poll() {
    if let Some(poll) = POLL.get() {
        poll();
    }
}

/// Forgets every range (tests; a binding whose JIT went away).
pub fn clear() {
    let mut code = CODE.lock();
    code.live.clear();
    code.retired.clear();
    code.retired_span = 0;
}

/// The number of ranges known (live ones: the code at its address now).
pub fn len() -> usize {
    CODE.lock().live.len()
}

/// Whether any JIT code was recorded in this process.
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// A drain of the ring starts (the collector): ranges retired before the previous one are
/// forgotten.
pub(crate) fn drain_started() {
    CODE.lock().drain_started();
}

/// The map, locked for a few lookups.
pub(crate) fn lock() -> MutexGuard<'static, Code> {
    CODE.lock()
}

pub(crate) fn prepare_fork() {
    CODE.fork_hold();
}

pub(crate) fn after_fork() {
    CODE.fork_release();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str) -> FrameId {
        FrameId::new(name, "jit-test.js", 1).unwrap()
    }

    fn empty() -> Code {
        Code { live: BTreeMap::new(), retired: BTreeMap::new(), retired_span: 0, horizon: 0 }
    }

    #[test]
    fn newest_code_wins_and_moves_are_followed() {
        let mut code = empty();
        let (a, b, c) = (frame("a"), frame("b"), frame("c"));
        code.add(0x1000, 0x1100, a);
        code.add(0x1100, 0x1200, b);
        let now = generation();
        assert_eq!(code.lookup(0x1000, now), Some(a));
        assert_eq!(code.lookup(0x10ff, now), Some(a));
        assert_eq!(code.lookup(0x1100, now), Some(b));
        assert_eq!(code.lookup(0x1200, now), None);
        assert_eq!(code.lookup(0xfff, now), None);
        // New code over the end of a and the start of b replaces both.
        code.add(0x10f0, 0x1110, c);
        let now = generation();
        assert_eq!(code.lookup(0x1000, now), None);
        assert_eq!(code.lookup(0x1105, now), Some(c));
        assert_eq!(code.lookup(0x1150, now), None);
    }

    #[test]
    fn a_sample_is_named_by_the_code_of_its_generation() {
        let mut code = empty();
        let (x, y, z) = (frame("x"), frame("y"), frame("z"));
        code.add(0x2000, 0x2100, x);
        code.add(0x3000, 0x3080, y);
        let sampled = generation();
        // A compaction moves x away and y into x's place; new code z lands over y's old place.
        code.moved(0x2000, 0x5000);
        code.moved(0x3000, 0x2000);
        code.add(0x3000, 0x3100, z);
        let now = generation();
        assert_eq!(code.lookup(0x2010, sampled), Some(x), "x was there when sampled");
        assert_eq!(code.lookup(0x3010, sampled), Some(y));
        assert_eq!(code.lookup(0x2010, now), Some(y));
        assert_eq!(code.lookup(0x5010, now), Some(x));
        assert_eq!(code.lookup(0x3010, now), Some(z));
        // Code reported after the sample (say, enumerated late) names it when nothing was there.
        code.add(0x9000, 0x9100, z);
        assert_eq!(code.lookup(0x9010, sampled), Some(z));
        // Two drains later the retired ranges are gone; the live map names what is there now.
        code.drain_started();
        assert!(!code.retired.is_empty());
        code.drain_started();
        assert!(code.retired.is_empty());
        assert_eq!(code.lookup(0x2010, sampled), Some(y));
    }

    #[test]
    fn retired_ranges_are_bounded() {
        let mut code = empty();
        let f = frame("f");
        for i in 0..(RETIRED_LIMIT as u64 + 10) {
            code.add(0x10_0000, 0x10_0040, f);
            assert!(code.retired.len() <= RETIRED_LIMIT, "at {i}");
        }
        assert_eq!(code.live.len(), 1);
    }

    #[test]
    fn the_public_calls_keep_one_range_per_address() {
        let base = 0x7f00_dead_0000;
        let (f, g) = (frame("f"), frame("g"));
        code_added(base, 0x40, f);
        code_added(base + 0x40, 0x40, g);
        code_moved(base, base + 0x1000);
        let now = generation();
        let code = lock();
        assert_eq!(code.lookup(base + 0x10, now), None, "moved away");
        assert_eq!(code.lookup(base + 0x1010, now), Some(f));
        assert_eq!(code.lookup(base + 0x50, now), Some(g));
        drop(code);
        code_added(base + 0x1000, 0x80, g);
        assert_eq!(lock().lookup(base + 0x1010, generation()), Some(g));
        assert!(active());
    }
}
