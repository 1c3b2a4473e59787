//! Heap profiles: V8's sampling heap profiler on the calling JavaScript thread's isolate, read
//! into the core's heap profile (`Agent::set_heap_inuse` / `Agent::add_heap_allocations`).
//!
//! V8 samples an allocation every `interval` bytes on average (a Poisson process) and scales
//! each sample by `1 / (1 - exp(-size / interval))` when it builds the profile, so the
//! objects and bytes read here are already unbiased estimates: they are handed on as they are.
//! One sampling session per isolate: without flags it keeps only live objects (in-use memory,
//! read as it is, never restarted); with V8's "include objects collected by major/minor GC"
//! flags it keeps every sample (allocations), and is restarted after each read so each read
//! holds the allocations since the last one.
//!
//! Read through V8's C++ API (`HeapProfiler::GetAllocationProfile`, src/shim.cc) rather than
//! the inspector's `HeapProfiler.getSamplingProfile`, which gives each node's bytes but not its
//! objects (a sample's `size` there is size x count, which several sizes can produce), always
//! samples 128 frames, and forces a full garbage collection on every read.

use std::cell::RefCell;
use std::ffi::c_void;
use std::time::Instant;

use pyroscope_core::{FrameId, HeapSample};

use crate::jit;

#[cfg(pyroscope_node_shim)]
extern "C" {
    fn pyroscope_node_heap_start(interval: u64, depth: i32, keep_collected: i32) -> i32;
    fn pyroscope_node_heap_stop();
    fn pyroscope_node_heap_read(ctx: *mut c_void, samples: *mut usize) -> i32;
}

/// Without the C++ shim (fallback mode) there is no heap profiler: sampling never starts.
#[cfg(not(pyroscope_node_shim))]
mod no_shim {
    use std::ffi::c_void;

    /// # Safety
    /// None needed: it does nothing (the shim's version needs the isolate's thread).
    pub unsafe fn pyroscope_node_heap_start(_interval: u64, _depth: i32, _keep_collected: i32) -> i32 {
        0
    }

    /// # Safety
    /// As above.
    pub unsafe fn pyroscope_node_heap_stop() {}

    /// # Safety
    /// As above.
    pub unsafe fn pyroscope_node_heap_read(_ctx: *mut c_void, _samples: *mut usize) -> i32 {
        0
    }
}
#[cfg(not(pyroscope_node_shim))]
use no_shim::*;

/// `v8::AllocationProfile::Allocation` (the shim checks the layout).
#[repr(C)]
pub struct Allocation {
    size: usize,
    count: u32,
}

/// How the calling thread's isolate is sampled.
#[derive(Clone, Copy)]
struct Session {
    interval: u64,
    depth: i32,
    allocations: bool,
}

thread_local! {
    /// This thread's session, while ours runs.
    static SESSION: RefCell<Option<Session>> = const { RefCell::new(None) };
}

/// Why sampling did not start.
#[derive(Debug, PartialEq, Eq)]
pub enum StartError {
    /// The calling thread runs no JavaScript.
    NoIsolate,
    /// The isolate's sampling heap profiler runs already, started by another tool.
    Busy,
}

/// Starts sampling the calling thread's isolate: `allocations` keeps the samples of collected
/// objects (allocation profile), otherwise only live ones (in-use profile). Restarts it when
/// ours runs already with other settings.
pub fn start(interval: u64, depth: u32, allocations: bool) -> Result<(), StartError> {
    let session = Session { interval: interval.max(1), depth: depth.clamp(1, i32::MAX as u32) as i32, allocations };
    if let Some(old) = SESSION.with(|s| s.borrow_mut().take()) {
        if (old.interval, old.depth, old.allocations) == (session.interval, session.depth, session.allocations) {
            SESSION.with(|s| *s.borrow_mut() = Some(old));
            return Ok(());
        }
        // SAFETY: called on the isolate's own thread (a JavaScript call); stops our session.
        unsafe { pyroscope_node_heap_stop() };
    }
    // SAFETY: called on the isolate's own thread; the shim only starts V8's profiler.
    match unsafe { pyroscope_node_heap_start(session.interval, session.depth, i32::from(allocations)) } {
        1 => {
            SESSION.with(|s| *s.borrow_mut() = Some(session));
            Ok(())
        }
        0 => Err(StartError::NoIsolate),
        _ => Err(StartError::Busy),
    }
}

/// Stops sampling the calling thread's isolate, if ours runs (its samples are discarded).
pub fn stop() -> bool {
    let Some(_) = SESSION.with(|s| s.borrow_mut().take()) else { return false };
    // SAFETY: called on the isolate's own thread; stops the session this thread started.
    unsafe { pyroscope_node_heap_stop() };
    true
}

/// One read of the calling thread's isolate.
pub struct Read {
    /// Whether the samples are allocations (else live objects).
    pub allocations: bool,
    /// The sampling interval, bytes.
    pub interval: u64,
    /// One per profile node with samples, frames leaf first.
    pub samples: Vec<HeapSample>,
    /// Nodes of the profile tree visited.
    pub nodes: usize,
    /// V8's samples in the profile (each stands for about `interval` bytes).
    pub v8_samples: usize,
    /// Time the read took: V8 building its profile, our walk and naming, and (allocations)
    /// the restart.
    pub ms: f64,
}

/// Reads the calling thread's isolate's profile; `None` when our session does not run there
/// (never started, stopped, or stopped behind our back by another tool, as the inspector's
/// `HeapProfiler.stopSampling` would: then it is forgotten).
pub fn read() -> Option<Read> {
    let session = SESSION.with(|s| *s.borrow())?;
    let t0 = Instant::now();
    let mut walk = Walk { cwd: jit::cwd(), path: Vec::new(), samples: Vec::new(), nodes: 0 };
    let mut v8_samples = 0usize;
    // SAFETY: called on the isolate's own thread; `walk` and `v8_samples` outlive the call,
    // and the shim passes `walk` back unchanged to `pyroscope_node_heap_node` only during it.
    let ok = unsafe { pyroscope_node_heap_read((&mut walk as *mut Walk).cast(), &mut v8_samples) };
    if ok == 0 {
        SESSION.with(|s| *s.borrow_mut() = None);
        return None;
    }
    if session.allocations {
        // A new session holds the allocations from now on.
        // SAFETY: on the isolate's own thread, our session (read just now).
        let restarted = unsafe {
            pyroscope_node_heap_stop();
            pyroscope_node_heap_start(session.interval, session.depth, 1)
        };
        if restarted != 1 {
            SESSION.with(|s| *s.borrow_mut() = None);
        }
    }
    Some(Read {
        allocations: session.allocations,
        interval: session.interval,
        samples: walk.samples,
        nodes: walk.nodes,
        v8_samples,
        ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// The state of one walk of a profile tree.
struct Walk {
    cwd: &'static str,
    /// Frames from the root to the node visited last (`None`: over the frame table's limit).
    path: Vec<Option<FrameId>>,
    samples: Vec<HeapSample>,
    nodes: usize,
}

impl Walk {
    fn node(&mut self, depth: usize, name: &str, script: &str, line: i32, column: i32, allocations: &[Allocation]) {
        self.nodes += 1;
        let (line, column) = (line.max(0) as u32, column.max(0) as u32);
        let frame = if script.is_empty() {
            // V8's own states ("(V8 API)", "(GC)", "(EXTERNAL)") and builtins ("push"): no file.
            let name = if name.is_empty() { "(anonymous)" } else { name };
            FrameId::new(name, "", line)
        } else {
            let f = jit::js_frame(name, script, line, column, self.cwd);
            FrameId::new(&f.function, &f.file, f.line)
        };
        self.path.truncate(depth.saturating_sub(1));
        self.path.push(frame);
        if allocations.is_empty() {
            return;
        }
        let (mut objects, mut bytes) = (0u64, 0u64);
        for a in allocations {
            objects = objects.saturating_add(a.count.into());
            bytes = bytes.saturating_add((a.size as u64).saturating_mul(a.count.into()));
        }
        if objects == 0 {
            return;
        }
        let frames = self.path.iter().rev().flatten().copied().collect();
        self.samples.push(HeapSample { frames, objects, bytes });
    }
}

/// Called by the shim for each node of the profile being read (see `pyroscope_node_heap_read`).
///
/// # Safety
/// `ctx` is the `Walk` `read` passed; `name`/`script` point at `name_len`/`script_len`
/// readable bytes (or are null with length 0); `allocations` at `count` entries (or null with
/// count 0).
#[no_mangle]
pub unsafe extern "C" fn pyroscope_node_heap_node(
    ctx: *mut c_void,
    depth: i32,
    name: *const u8,
    name_len: usize,
    script: *const u8,
    script_len: usize,
    line: i32,
    column: i32,
    allocations: *const Allocation,
    count: usize,
) {
    let bytes = |p: *const u8, len: usize| {
        if p.is_null() || len == 0 {
            &[][..]
        } else {
            // SAFETY: the shim passes V8's UTF-8 buffer and its length, valid for this call.
            unsafe { std::slice::from_raw_parts(p, len) }
        }
    };
    // Never unwind into V8.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `Walk` that `read` lent the shim for this walk, and nothing else
        // uses it meanwhile (the walk runs on this thread, inside `read`).
        let walk = unsafe { &mut *ctx.cast::<Walk>() };
        let allocations = if allocations.is_null() || count == 0 {
            &[][..]
        } else {
            // SAFETY: the shim passes the node's `std::vector<Allocation>` data and length,
            // valid for this call, with the layout of `Allocation` (checked there).
            unsafe { std::slice::from_raw_parts(allocations, count) }
        };
        let name = String::from_utf8_lossy(bytes(name, name_len));
        let script = String::from_utf8_lossy(bytes(script, script_len));
        walk.node(depth.max(1) as usize, &name, &script, line, column, allocations);
    }));
}
