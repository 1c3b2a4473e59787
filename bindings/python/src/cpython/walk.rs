//! The frame walker: reads the calling thread's Python frames into words. ⚠ (signal path)
//!
//! Runs on the sampled thread, inside the CPU-timer signal handler or an allocation hook. Every
//! read of interpreter memory goes through `pyroscope_core::fault` (a torn or freed frame gives
//! an error, never a crash); the only calls are `PyGILState_GetThisThreadState` (a
//! `pthread_getspecific`, lock-free reads in glibc, resolved by `dlsym` at init so no lazy
//! binding runs here), two `sigaction` queries ([`fault::armed`]) and `pthread_self` (a read of
//! the thread pointer in glibc; the library is bound at load, `BIND_NOW`). No allocation, no
//! locks, no formatting.

use std::sync::atomic::{AtomicU64, Ordering};

use pyroscope_core::fault::{self, Fault};

use super::offsets::{self as off, OWNER_GENERATOR};
use super::Runtime;

/// Most frames kept per sample (more if `out` allows); deeper stacks keep their leaf-most
/// frames. The core's 256-word record holds 127 (63 when native frames take their half).
pub(crate) const MAX_FRAMES: usize = 255;
/// Words before the frames: context label key, thread ident.
pub(crate) const HEADER: usize = 2;

/// Set in `out[1]` (the thread ident, a user-space pointer below 2^47) when the stack had more
/// frames than `out` holds: the resolver then adds a `[truncated]` root frame.
pub(crate) const TRUNCATED: u64 = 1 << 63;

/// The thread ident of a walk's `out[1]`, without the [`TRUNCATED`] mark.
pub(crate) fn thread_ident(word: u64) -> u64 {
    word & !TRUNCATED
}

/// Walk outcomes, for stats (all relaxed counters).
pub(crate) struct Counters {
    /// Walks that wrote a Python stack.
    pub(crate) stacks: AtomicU64,
    /// Threads with no Python thread state, or no Python frame running.
    pub(crate) not_python: AtomicU64,
    /// The fault handler was not ours any more (faulthandler.enable()): nothing read.
    pub(crate) disarmed: AtomicU64,
    /// The thread state's `thread_id` was not the calling thread's `pthread_self()`.
    pub(crate) wrong_thread: AtomicU64,
    /// Stacks cut short: deeper than the buffer.
    pub(crate) truncated: AtomicU64,
    /// Stacks cut short by a torn chain: a read faulted, a frame's code was not a code object,
    /// or the chain looped. The frames read before are kept.
    pub(crate) torn: AtomicU64,
    /// Context label lookups that found a value that was not `(8-byte bytes, ...)` or faulted.
    pub(crate) bad_label: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    stacks: AtomicU64::new(0),
    not_python: AtomicU64::new(0),
    disarmed: AtomicU64::new(0),
    wrong_thread: AtomicU64::new(0),
    truncated: AtomicU64::new(0),
    torn: AtomicU64::new(0),
    bad_label: AtomicU64::new(0),
};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Packs a frame's second word: `lasti` (code units, may be -1) high, `co_firstlineno` low.
pub(crate) fn pack(lasti: i32, firstlineno: i32) -> u64 {
    (u64::from(lasti as u32) << 32) | u64::from(firstlineno as u32)
}

/// Set in a frame's second word when the frame is the root-most of the frames one call of the
/// eval function runs (native frames are merged at those calls). `co_firstlineno` is never
/// negative, so its sign bit is free.
pub(crate) const RUN_END: u64 = 1 << 31;

/// The inverse of [`pack`] (without [`RUN_END`]).
pub(crate) fn unpack(word: u64) -> (i32, i32) {
    ((word >> 32) as u32 as i32, (word & !RUN_END) as u32 as i32)
}

/// Reads the calling thread's Python frames into `out`: `out[0]` the context label key (0 when
/// unset), `out[1]` the thread's `threading.get_ident()` (with [`TRUNCATED`] set when frames
/// were left out), then per frame, leaf first, the code
/// object's address (tagged, see [`CODE_MASK`]) and [`pack`]`(lasti, co_firstlineno)`. Returns the words written; 0 when
/// this is not a Python thread, Python is not running on it, the walker was never initialised,
/// or reading is not safe (our fault handler was replaced).
///
/// # Safety
/// None beyond the signature (`pyroscope_core::WalkFn`): every read is guarded.
///
/// # Signal safety
/// Async-signal-safe: guarded loads, atomics, `sigaction` queries, `pthread_self`, and
/// `PyGILState_GetThisThreadState` (a `pthread_getspecific`, lock-free in glibc).
pub unsafe fn walk(out: &mut [u64]) -> usize {
    let Some(rt) = super::runtime() else {
        return 0;
    };
    if out.len() < HEADER + 2 {
        return 0;
    }
    if !fault::armed() {
        bump(&COUNTERS.disarmed);
        return 0;
    }
    // SAFETY: the function pointer came from dlsym of this exact symbol at init; it takes no
    // arguments, returns the thread's own state or NULL and neither allocates nor locks.
    let tstate = unsafe { (rt.get_tstate)() } as usize;
    if tstate == 0 {
        bump(&COUNTERS.not_python);
        return 0;
    }
    match walk_tstate(rt, tstate, out) {
        Ok(0) => {
            bump(&COUNTERS.not_python);
            0
        }
        Ok(n) => {
            bump(&COUNTERS.stacks);
            n
        }
        Err(Fault) => {
            bump(&COUNTERS.wrong_thread);
            0
        }
    }
}

/// # Signal safety
/// As [`walk`].
fn walk_tstate(rt: &Runtime, tstate: usize, out: &mut [u64]) -> Result<usize, Fault> {
    // The state is this thread's: its `thread_id` is `PyThread_get_thread_ident()`, the
    // `pthread_self()` of the thread it was bound to (set with `native_thread_id`, 3.11-3.13).
    // `pthread_self` reads the thread pointer (one load in glibc) where the kernel's thread id
    // would cost a system call on every sampled allocation.
    // SAFETY: pthread_self has no arguments and cannot fail.
    let me = unsafe { libc::pthread_self() } as u64;
    if fault::read_u64(tstate + rt.offsets.tstate_thread_id)? != me {
        return Err(Fault);
    }
    let Ok(first) = current_frame(rt, tstate) else {
        bump(&COUNTERS.torn);
        return Ok(0);
    };
    // The calling thread's own stack cannot change under us: a torn chain is cut, not dropped.
    Ok(walk_from(rt, tstate, first, out, false).unwrap_or(0))
}

/// The innermost interpreter frame of `tstate` (0: none).
///
/// # Signal safety
/// Guarded loads only.
pub(crate) fn current_frame(rt: &Runtime, tstate: usize) -> Result<usize, Fault> {
    let o = rt.offsets;
    match o.tstate_cframe {
        Some(cframe) => fault::read_u64(tstate + cframe).and_then(|c| read_ptr(c as usize + o.cframe_current_frame)),
        None => read_ptr(tstate + o.tstate_current_frame),
    }
}

/// Walks `tstate`'s frames from `first` (its current frame) into `out` as [`walk`] describes;
/// 0 when no frame is kept. With `strict` (another thread's stack, which may change while it is
/// read) a fault, a non-code object or a loop is `Err`: the sample is dropped, never guessed;
/// without, the frames read before are kept.
///
/// # Signal safety
/// As [`walk`].
pub(crate) fn walk_from(
    rt: &Runtime,
    tstate: usize,
    mut frame: usize,
    out: &mut [u64],
    strict: bool,
) -> Result<usize, Fault> {
    let thread_ident = fault::read_u64(tstate + rt.offsets.tstate_thread_id)?;
    let limit = out.len().min(HEADER + 2 * MAX_FRAMES);
    let mut n = HEADER;
    // Brent's cycle check: `mark` is re-anchored at powers of two.
    let (mut mark, mut power, mut steps) = (0usize, 1usize, 0usize);
    // Skipped frames (shims, incomplete frames) write nothing: a hard cap on links followed
    // bounds the walk whatever a torn chain points at.
    let mut links = 0usize;
    let mut cut = 0;
    while frame != 0 {
        links += 1;
        if links > 4 * MAX_FRAMES {
            bump(&COUNTERS.torn);
            break;
        }
        match read_frame(rt, frame) {
            Ok((word0, word1, previous)) => {
                if word0 != 0 {
                    if n + 2 > limit {
                        // A frame that would be shown does not fit (shims past the limit do
                        // not count): the stack is cut, and marked so.
                        bump(&COUNTERS.truncated);
                        cut = TRUNCATED;
                        break;
                    }
                    out[n] = word0;
                    out[n + 1] = word1;
                    n += 2;
                } else if word1 & RUN_END != 0 && n > HEADER {
                    // A C-entry shim: the frame above it ends a run of the eval function.
                    out[n - 1] |= RUN_END;
                }
                frame = previous;
            }
            Err(Fault) => {
                bump(&COUNTERS.torn);
                if strict {
                    return Err(Fault);
                }
                break;
            }
        }
        if frame != 0 && frame == mark {
            bump(&COUNTERS.torn);
            if strict {
                return Err(Fault);
            }
            break;
        }
        steps += 1;
        if steps == power {
            mark = frame;
            power *= 2;
            steps = 0;
        }
    }
    if n == HEADER {
        return Ok(0);
    }
    out[0] = context_key(rt, tstate);
    out[1] = thread_ident | cut;
    Ok(n)
}

/// One frame: (code address, packed word, previous frame), or code address 0 for a frame to
/// skip (a C-entry shim, or an incomplete frame CPython's tracebacks hide too).
///
/// # Signal safety
/// Guarded loads only.
fn read_frame(rt: &Runtime, frame: usize) -> Result<(u64, u64, usize), Fault> {
    let o = rt.offsets;
    let previous = read_ptr(frame + o.frame_previous)?;
    let owner = read_u8(frame + o.frame_owner)?;
    if Some(owner) == o.owner_cstack {
        return Ok((0, RUN_END, previous));
    }
    let code = read_ptr(frame + o.frame_code)?;
    if code == 0 || fault::read_u64(code + off::OB_TYPE)? != rt.code_type as u64 {
        return Err(Fault);
    }
    let instr = fault::read_u64(frame + o.frame_instr)? as i64;
    let start = (code + o.code_adaptive) as i64;
    let lasti = instr.wrapping_sub(start) / 2;
    let Ok(lasti) = i32::try_from(lasti) else {
        return Err(Fault);
    };
    let firstlineno = fault::read_u32(code + o.code_firstlineno)? as i32;
    let qualname = read_ptr(code + o.code_qualname)?;
    if owner != OWNER_GENERATOR {
        let firsttraceable = fault::read_u32(code + o.code_firsttraceable)? as i32;
        if lasti < firsttraceable {
            return Ok((0, 0, previous)); // _PyFrame_IsIncomplete
        }
    }
    let entry = match o.frame_is_entry {
        Some(at) => read_u8(frame + at)? != 0,
        None => false,
    };
    let word1 = pack(lasti, firstlineno) | if entry { RUN_END } else { 0 };
    Ok((code as u64 | u64::from(name_tag(qualname)) << 48, word1, previous))
}

/// User-space addresses fit in 47 bits: a frame's first word carries the code address in its
/// low 48 bits and [`name_tag`] of the code's `co_qualname` pointer in the high 16, so the
/// resolver can tell a code object from another one later allocated at the same address.
pub(crate) const CODE_MASK: u64 = (1 << 48) - 1;

/// 16 bits of a string object's address.
///
/// # Signal safety
/// Arithmetic only.
pub(crate) fn name_tag(ptr: usize) -> u16 {
    let p = ptr as u64;
    ((p >> 4) ^ (p >> 20) ^ (p >> 36)) as u16
}

/// # Signal safety
/// One guarded load.
fn read_ptr(addr: usize) -> Result<usize, Fault> {
    fault::read_u64(addr).map(|v| v as usize)
}

/// # Signal safety
/// One guarded load (of the 8 bytes starting at the aligned word that holds `addr`).
fn read_u8(addr: usize) -> Result<u8, Fault> {
    let word = fault::read_u64(addr & !7)?;
    Ok((word >> ((addr & 7) * 8)) as u8)
}

/// The `u64` key in the thread's current Context's value of the package's label ContextVar,
/// or 0. The value must be a tuple whose item 0 is an 8-byte `bytes` (little-endian key).
///
/// # Signal safety
/// Guarded loads only.
pub(crate) fn context_key(rt: &Runtime, tstate: usize) -> u64 {
    match context_value(rt, tstate).and_then(|v| v.map(|value| key_of(rt, value)).transpose()) {
        Ok(Some(key)) => key,
        Ok(None) => 0,
        Err(Fault) => {
            bump(&COUNTERS.bad_label);
            0
        }
    }
}

/// # Signal safety
/// Guarded loads only.
fn context_value(rt: &Runtime, tstate: usize) -> Result<Option<usize>, Fault> {
    let ctx = read_ptr(tstate + rt.offsets.tstate_context)?;
    if ctx == 0 {
        return Ok(None); // this thread never entered a Context
    }
    if read_ptr(ctx + off::OB_TYPE)? != rt.context_type {
        return Err(Fault);
    }
    let vars = read_ptr(ctx + off::CONTEXT_VARS)?;
    let root = read_ptr(vars + off::HAMT_ROOT)?;
    hamt_find(rt, root, rt.var_hash, rt.label_var)
}

/// # Signal safety
/// Guarded loads only.
fn key_of(rt: &Runtime, value: usize) -> Result<u64, Fault> {
    if read_ptr(value + off::OB_TYPE)? != rt.tuple_type || (fault::read_u64(value + off::OB_SIZE)? as i64) < 1 {
        return Err(Fault);
    }
    let bytes = read_ptr(value + off::TUPLE_ITEM)?;
    if read_ptr(bytes + off::OB_TYPE)? != rt.bytes_type || fault::read_u64(bytes + off::OB_SIZE)? != 8 {
        return Err(Fault);
    }
    Ok(u64::from_le(fault::read_u64(bytes + off::BYTES_SVAL)?))
}

/// Looks `key` (compared by address, as ContextVars compare) up in the HAMT under `node`
/// (CPython Python/hamt.c): the value's address, `None` when absent.
///
/// # Signal safety
/// Guarded loads only; at most 8 levels.
pub(crate) fn hamt_find(rt: &Runtime, mut node: usize, hash: u32, key: usize) -> Result<Option<usize>, Fault> {
    let mut shift = 0u32;
    for _ in 0..8 {
        let ty = read_ptr(node + off::OB_TYPE)?;
        let slot = hash.checked_shr(shift).unwrap_or(0) & 31;
        if ty == rt.bitmap_type {
            let bitmap = fault::read_u32(node + off::BITMAP_BITMAP)?;
            let bit = 1u32 << slot;
            if bitmap & bit == 0 {
                return Ok(None);
            }
            let index = (bitmap & (bit - 1)).count_ones() as usize;
            if 2 * index + 1 >= fault::read_u64(node + off::OB_SIZE)? as usize {
                return Err(Fault);
            }
            let entry = node + off::BITMAP_ARRAY + 16 * index;
            let (k, v) = (read_ptr(entry)?, read_ptr(entry + 8)?);
            if k == 0 {
                node = v; // a sub-node
                shift += 5;
                continue;
            }
            return Ok((k == key).then_some(v));
        } else if ty == rt.array_type {
            node = read_ptr(node + off::ARRAY_ARRAY + 8 * slot as usize)?;
            if node == 0 {
                return Ok(None);
            }
            shift += 5;
        } else if ty == rt.collision_type && ty != 0 {
            let entries = (fault::read_u64(node + off::OB_SIZE)? as usize).min(64);
            for i in (0..entries.saturating_sub(1)).step_by(2) {
                if read_ptr(node + off::COLLISION_ARRAY + 8 * i)? == key {
                    return read_ptr(node + off::COLLISION_ARRAY + 8 * (i + 1)).map(Some);
                }
            }
            return Ok(None);
        } else {
            return Err(Fault);
        }
    }
    Err(Fault)
}
