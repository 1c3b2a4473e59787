//! Interpreter stacks: a binding (Python) registers a walker that reads its interpreter's
//! frames on the sampled thread, and a resolver that names them on the collector thread.
//!
//! The walker runs inside the CPU-timer signal handler (on the handler's own 64 KiB stack) and
//! inside the allocation hook, in place of the native unwinder. It writes opaque words into the
//! sample record (up to [`crate::ring::MAX_DEPTH`]); the collector hands those words to the
//! resolver, which turns them into [`FrameId`]s and may add labels it read from the
//! interpreter (a context variable's labels, which follow asyncio tasks). A thread for which
//! the walker writes nothing (a thread that never ran interpreter code) keeps its native stack.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::aggregate::FrameId;
use crate::labels::LabelSet;
use crate::sync::{Mutex, MutexGuard};

/// Reads the calling thread's interpreter frames into `out` and returns how many words it
/// wrote; 0 when the thread has no interpreter frames (its native stack is recorded instead).
///
/// # Safety
/// The walker is called from a signal handler on the sampled thread: it must be
/// async-signal-safe (no allocation, no locks, no formatting, no thread-locals that may
/// allocate on first use) and must read memory that may be unmapped or half-written only
/// through fault-tolerant reads. It must never unwind.
pub type WalkFn = unsafe fn(out: &mut [u64]) -> usize;

/// Names what a [`WalkFn`] recorded; runs on the collector thread.
pub trait Resolver: Send + 'static {
    /// Pushes the frames that `words` (one record's walker output) stand for onto `frames`,
    /// leaf first, and returns labels the interpreter had in force for the sample (they
    /// override the thread's labels name by name), or `None`.
    fn resolve(&mut self, words: &[u64], frames: &mut Vec<FrameId>) -> Option<LabelSet>;

    /// As [`Resolver::resolve`], also telling where each interpreter entry ends, for merging
    /// with native frames (see [`set_native_frames`]): `ends` gets, for each run of frames one
    /// call of the interpreter's eval function executes, the index in `frames` just past its
    /// root-most frame, leaf first. The default reports one run.
    fn resolve_runs(&mut self, words: &[u64], frames: &mut Vec<FrameId>, ends: &mut Vec<usize>) -> Option<LabelSet> {
        let labels = self.resolve(words, frames);
        ends.push(frames.len());
        labels
    }

    /// Called in the forking thread just before `fork()`, with the resolver locked (no drain
    /// runs): take the locks `resolve` uses, so the child never inherits them held. Locks taken
    /// here come after the resolver's and before every other lock of the core.
    fn prepare_fork(&mut self) {}

    /// Called after `fork()` in the parent (`child` false) and in the child: give back what
    /// [`Resolver::prepare_fork`] took.
    fn after_fork(&mut self, child: bool) {
        let _ = child;
    }
}

/// How native frames are merged with an interpreter's (see [`set_native_frames`]).
#[derive(Clone, Debug)]
pub struct NativeFrames {
    /// Any code address inside the object holding the interpreter (`libpython3.12.so.1.0`, or
    /// the executable), e.g. one of its functions: that object's frames are the interpreter's
    /// own machinery and are left out...
    pub interpreter_address: u64,
    /// ...except calls of this function (`_PyEval_EvalFrameDefault`), each replaced by the run
    /// of interpreter frames it executes.
    pub eval_function: String,
}

/// Native frames recorded with the interpreter's, when on.
static NATIVE: AtomicBool = AtomicBool::new(false);
static NATIVE_FRAMES: Mutex<Option<NativeFrames>> = Mutex::new(None);

/// With `Some`, samples of interpreter threads keep their native frames too (extension
/// modules, C libraries), merged with the interpreter's frames where the interpreter calls
/// its eval function, as py-spy's `--native` shows them. Native frames take at most half of a
/// sample's words (64), the interpreter's the rest. `None` (the default): interpreter frames
/// only.
pub fn set_native_frames(merge: Option<NativeFrames>) {
    NATIVE.store(merge.is_some(), Ordering::Release);
    *NATIVE_FRAMES.lock() = merge;
}

/// Whether native frames are recorded with the interpreter's.
///
/// # Signal safety
/// One atomic load.
#[inline(always)]
pub(crate) fn native() -> bool {
    NATIVE.load(Ordering::Acquire)
}

pub(crate) fn native_frames() -> Option<NativeFrames> {
    NATIVE_FRAMES.lock().clone()
}

/// The walker as a function address; 0 for none.
static WALK: AtomicUsize = AtomicUsize::new(0);
static RESOLVER: Mutex<Option<Box<dyn Resolver>>> = Mutex::new(None);

/// Registers the interpreter's walker and resolver for every agent of the process, replacing
/// earlier ones. Call it before [`crate::Agent::start`]; samples taken before it keep native
/// stacks.
pub fn set_interpreter(walk: WalkFn, resolver: Box<dyn Resolver>) {
    *RESOLVER.lock() = Some(resolver);
    WALK.store(walk as usize, Ordering::Release);
}

/// The registered walker.
///
/// # Signal safety
/// One atomic load.
#[inline(always)]
pub(crate) fn walker() -> Option<WalkFn> {
    match WALK.load(Ordering::Acquire) {
        0 => None,
        // SAFETY: a non-zero value was stored from a `WalkFn` by `set_interpreter`, and
        // function pointers round-trip through usize on every target we build for.
        f => Some(unsafe { std::mem::transmute::<usize, WalkFn>(f) }),
    }
}

/// The resolver, locked for one drain of the ring.
pub(crate) fn resolver() -> MutexGuard<'static, Option<Box<dyn Resolver>>> {
    RESOLVER.lock()
}

pub(crate) fn prepare_fork() {
    RESOLVER.fork_hold_with(|r| r.iter_mut().for_each(|r| r.prepare_fork()));
}

pub(crate) fn after_fork(child: bool) {
    RESOLVER.fork_release_with(|r| r.iter_mut().for_each(|r| r.after_fork(child)));
}
