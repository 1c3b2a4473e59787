//! Every thread of the interpreter, read from a thread of our own (`configure(oncpu=False)`). ⚠
//!
//! py-spy's design, in-process: the wall-clock sampler thread (`crate::wall`) never takes the
//! GIL and never signals anyone. Each tick it follows `interp->threads.head` / `tstate->next`
//! and walks each thread state with the same guarded reads and frame checks as the in-handler
//! walker ([`super::walk::walk_from`]). Those threads run meanwhile: a walk is kept only if a
//! second walk right after reads the same words (frames, lines, context key), the thread's leaf
//! frame, that frame's code, its Context, its identity and its thread tags are the same after
//! both walks as before, and no read in between faulted or found a non-code object; otherwise it is tried
//! again (3 times) and then dropped and counted, never guessed. (A thread that does not hold the
//! GIL cannot change its frames: idle threads always pass. The GIL holder's stack moves; a walk
//! torn by a thread that left and came back to the same leaf between two reads of each walk
//! could still pass: `test_a_stack_read_while_its_thread_moves_is_never_kept_torn` measures it.) A thread state freed while
//! we read the list (a thread ending) ends the list for this tick: its `interp` field must be the
//! interpreter's, its reads must not fault.

use std::sync::atomic::{AtomicU64, Ordering};

use pyroscope_core::fault::{self, Fault};
use pyroscope_core::{labels_of_thread, LabelSet};

use super::offsets::{Offsets, TSTATE_INTERP, TSTATE_NEXT};
use super::walk::{current_frame, walk_from};
use super::Runtime;

/// Most thread states visited per tick (a longer list is cut: a loop in a torn list ends here).
pub(crate) const MAX_THREADS: usize = 4096;
/// Walks of one thread per tick before its sample is dropped as torn.
const ATTEMPTS: usize = 16;

/// The wall sampler's counters (relaxed).
pub(crate) struct Counters {
    /// Ticks run.
    pub(crate) ticks: AtomicU64,
    /// Thread states visited.
    pub(crate) threads: AtomicU64,
    /// Samples kept (one per thread with Python frames per tick).
    pub(crate) samples: AtomicU64,
    /// Thread states with no Python frame (not started yet, or running no Python code).
    pub(crate) no_frames: AtomicU64,
    /// Walks retried because the thread moved while it was read.
    pub(crate) retries: AtomicU64,
    /// Samples dropped: the thread kept moving for every attempt.
    pub(crate) torn: AtomicU64,
    /// Thread lists cut short (a state freed under us, or more than [`MAX_THREADS`]).
    pub(crate) list_cut: AtomicU64,
    /// Sample periods the sampler ran late by (added to the weight of the next tick's samples).
    pub(crate) late_periods: AtomicU64,
    /// Nanoseconds spent sampling (walks, names, labels), all ticks.
    pub(crate) busy_ns: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    ticks: AtomicU64::new(0),
    threads: AtomicU64::new(0),
    samples: AtomicU64::new(0),
    no_frames: AtomicU64::new(0),
    retries: AtomicU64::new(0),
    torn: AtomicU64::new(0),
    list_cut: AtomicU64::new(0),
    late_periods: AtomicU64::new(0),
    busy_ns: AtomicU64::new(0),
};

/// Spins 0 to ~2 µs, chosen by a xorshift seeded from the clock and `salt`.
fn spin_random(salt: usize) {
    let mut x = std::time::Instant::now().elapsed().as_nanos() as u64 ^ COUNTERS.retries.load(Ordering::Relaxed);
    x ^= (salt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    for _ in 0..(x % 512) {
        std::hint::spin_loop();
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Calls `f(tstate)` for each thread state of interpreter `interp`, head first.
pub(crate) fn for_each_thread(interp: usize, o: &Offsets, mut f: impl FnMut(usize)) {
    let Ok(mut tstate) = fault::read_u64(interp + o.interp_threads_head).map(|v| v as usize) else {
        bump(&COUNTERS.list_cut);
        return;
    };
    let mut seen = 0;
    while tstate != 0 {
        let next = match (fault::read_u64(tstate + TSTATE_INTERP), fault::read_u64(tstate + TSTATE_NEXT)) {
            (Ok(owner), Ok(next)) if owner as usize == interp && seen < MAX_THREADS => next as usize,
            _ => {
                bump(&COUNTERS.list_cut);
                return;
            }
        };
        f(tstate);
        seen += 1;
        tstate = next;
    }
}

/// What [`walk_thread`] found.
pub(crate) enum Walk {
    /// The native thread id, the words written, and the thread's tags (read before and after
    /// both walks: unchanged meanwhile).
    Kept(i32, usize, LabelSet),
    /// No Python frame (or no thread id yet).
    NoFrames,
    /// The thread kept moving: every walk was dropped (counted in `torn`).
    Moving,
}

/// Walks another thread's state into `out` (the words of [`super::walk::walk`]).
pub(crate) fn walk_thread(rt: &Runtime, interp: usize, tstate: usize, out: &mut [u64]) -> Walk {
    bump(&COUNTERS.threads);
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            bump(&COUNTERS.retries);
        }
        match try_walk(rt, interp, tstate, out, attempt) {
            Ok(Some((tid, n, labels))) => {
                bump(&COUNTERS.samples);
                return Walk::Kept(tid, n, labels);
            }
            Ok(None) => {
                bump(&COUNTERS.no_frames);
                return Walk::NoFrames;
            }
            Err(Fault) => continue,
        }
    }
    bump(&COUNTERS.torn);
    Walk::Moving
}

fn try_walk(
    rt: &Runtime,
    interp: usize,
    tstate: usize,
    out: &mut [u64],
    attempt: usize,
) -> Result<Option<(i32, usize, LabelSet)>, Fault> {
    let o = rt.offsets;
    let word = |addr: usize| fault::read_u64(addr).map(|v| v as usize);
    let tid = word(tstate + o.tstate_native_thread_id)?;
    // The thread's tags around both walks: a thread that changed them meanwhile (it left the
    // function it was blocked in and removed a tag) is a moving one, its stack and tags would
    // not belong together.
    let labels = i32::try_from(tid).map_or_else(|_| LabelSet::default(), labels_of_thread);
    let context = word(tstate + o.tstate_context)?;
    let first = current_frame(rt, tstate)?;
    if first == 0 {
        return Ok(None);
    }
    let code = word(first + o.frame_code)?;
    let n = walk_from(rt, tstate, first, out, true)?;
    // Kept only if the thread did not move meanwhile (see the module doc): a second walk reads
    // the same words, and the leaf, its code, the Context and the identity are unchanged.
    if attempt > 0 {
        // A thread that moved: a random pause between the two walks, so that a loop cannot line
        // up with both of them (a torn walk read twice the same way).
        spin_random(attempt);
    }
    let mut again = [0u64; super::walk::HEADER + 2 * super::walk::MAX_FRAMES];
    let len = out.len().min(again.len());
    let m = walk_from(rt, tstate, first, &mut again[..len], true)?;
    let same = m == n
        && again[..m] == out[..n]
        && current_frame(rt, tstate)? == first
        && word(first + o.frame_code)? == code
        && word(tstate + o.tstate_context)? == context
        && word(tstate + o.tstate_native_thread_id)? == tid
        && word(tstate + TSTATE_INTERP)? == interp;
    if !same {
        return Err(Fault);
    }
    let tid = i32::try_from(tid).map_err(|_| Fault)?;
    if labels_of_thread(tid) != labels {
        return Err(Fault);
    }
    Ok((n > 0 && tid > 0).then_some((tid, n, labels)))
}
