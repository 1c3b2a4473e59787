//! Code a JIT compiler generated at run time (V8's JavaScript functions): a map from address
//! ranges to frames, fed by a binding from the compiler's code events, read by the collector.
//!
//! JIT code lives in anonymous memory: the symbolizer cannot name it, and the unwinder walks
//! through it by frame pointers (framehop's rule for addresses in no known module). The
//! collector names a sample's JIT addresses when it drains the ring, within a tick of the
//! sample, so code freed and replaced later does not rename older samples.
//!
//! The compiler does not say when code is freed: a new range replaces every range it
//! overlaps (the newest code at an address wins), and moved code is re-keyed.
//!
//! A binding that asks its compiler for the code that existed before it watched only once a
//! thread has run a while (V8 walks its heap for it) checks when on the collector thread:
//! [`set_poll`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use crate::aggregate::FrameId;
use crate::sync::{Mutex, MutexGuard};

/// Ranges by start address: (end, frame).
type Ranges = BTreeMap<u64, (u64, FrameId)>;

static CODE: Mutex<Ranges> = Mutex::new(BTreeMap::new());
/// Whether any code was ever added: the collector skips lookups for programs without a JIT.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Removes the ranges that overlap `[start, end)`.
fn clear_range(code: &mut Ranges, start: u64, end: u64) {
    let overlapping: Vec<u64> = code.range(..end).rev().take_while(|(_, (e, _))| *e > start).map(|(s, _)| *s).collect();
    for s in overlapping {
        code.remove(&s);
    }
}

/// Records that `[start, start + len)` now holds code for `frame`. Cheap enough for every code
/// event of a JIT (a lock and a map insert); never from a signal handler.
pub fn code_added(start: u64, len: u64, frame: FrameId) {
    if len == 0 {
        return;
    }
    let end = start.saturating_add(len);
    let mut code = CODE.lock();
    clear_range(&mut code, start, end);
    code.insert(start, (end, frame));
    ACTIVE.store(true, Ordering::Release);
}

/// Records that the code at `from` moved to `to` (a compacting collector moved it).
pub fn code_moved(from: u64, to: u64) {
    let mut code = CODE.lock();
    if let Some((end, frame)) = code.remove(&from) {
        let len = end - from;
        clear_range(&mut code, to, to.saturating_add(len));
        code.insert(to, (to.saturating_add(len), frame));
    }
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
    CODE.lock().clear();
}

/// The number of ranges known.
pub fn len() -> usize {
    CODE.lock().len()
}

/// Whether any JIT code was recorded in this process.
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Acquire)
}

/// The map, locked for a few lookups.
pub(crate) fn lock() -> MutexGuard<'static, Ranges> {
    CODE.lock()
}

/// The frame of the code holding `pc`.
pub(crate) fn lookup(code: &Ranges, pc: u64) -> Option<FrameId> {
    code.range(..=pc).next_back().filter(|(_, (end, _))| pc < *end).map(|(_, (_, f))| *f)
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

    #[test]
    fn newest_code_wins_and_moves_are_followed() {
        let mut code = Ranges::new();
        let (a, b, c) = (frame("a"), frame("b"), frame("c"));
        code.insert(0x1000, (0x1100, a));
        code.insert(0x1100, (0x1200, b));
        assert_eq!(lookup(&code, 0x1000), Some(a));
        assert_eq!(lookup(&code, 0x10ff), Some(a));
        assert_eq!(lookup(&code, 0x1100), Some(b));
        assert_eq!(lookup(&code, 0x1200), None);
        assert_eq!(lookup(&code, 0xfff), None);
        // New code over the end of a and the start of b replaces both.
        clear_range(&mut code, 0x10f0, 0x1110);
        code.insert(0x10f0, (0x1110, c));
        assert_eq!(lookup(&code, 0x1000), None);
        assert_eq!(lookup(&code, 0x1105), Some(c));
        assert_eq!(lookup(&code, 0x1150), None);
    }

    #[test]
    fn the_public_calls_keep_one_range_per_address() {
        let base = 0x7f00_dead_0000;
        let (f, g) = (frame("f"), frame("g"));
        code_added(base, 0x40, f);
        code_added(base + 0x40, 0x40, g);
        code_moved(base, base + 0x1000);
        let code = lock();
        assert_eq!(lookup(&code, base + 0x10), None, "moved away");
        assert_eq!(lookup(&code, base + 0x1010), Some(f));
        assert_eq!(lookup(&code, base + 0x50), Some(g));
        drop(code);
        code_added(base + 0x1000, 0x80, g);
        assert_eq!(lookup(&lock(), base + 0x1010), Some(g));
        assert!(active());
    }
}
