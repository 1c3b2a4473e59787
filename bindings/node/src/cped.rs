//! Labels carried across `await` by V8 itself: the id of the label set in force is a Smi in the
//! context's continuation-preserved embedder data (CPED), which V8 11.x (Node 20) copies into
//! every promise reaction when `await` or `then` registers it and puts back while the
//! reaction runs. JavaScript stores the id only where labels change (`wrapWithLabels`,
//! `setLabels`), never per await; the signal handler reads it through the core's label source
//! (`pyroscope_core::LabelReadFn`) with two loads:
//!
//! 1. the context's tagged address, from the handle slot of a `v8::Global` this module holds
//!    (the garbage collector rewrites that slot, with one aligned store, when it moves the
//!    context);
//! 2. the field, at the offset found when the thread's record was made (the shim stores
//!    sentinel Smis through V8's API and looks for them).
//!
//! Node 20 has no pointer compression: tagged values are 8-byte words, heap objects end in
//! `01`, Smis hold their value in the upper 32 bits over zeros. A word that is not a Smi
//! (undefined: no labels) reads as no labels. While a garbage collection runs (between V8's GC
//! prologue and epilogue on the thread, when the context may be moved) the handler reads the
//! id the thread had when it began instead. Both loads go through the core's fault-tolerant
//! reads.
//!
//! A thread's record lives from its first label call (`open`) to its environment's teardown,
//! which removes it from the core's thread state before freeing it.

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use napi::sys;
use pyroscope_core::{fault, LabelSlot};

extern "C" {
    fn pyroscope_node_cped_open(handle_slot: *mut usize, offset: *mut usize) -> *mut c_void;
    fn pyroscope_node_cped_watch_gc(cell: *mut c_void, on: i32);
    fn pyroscope_node_cped_set(global: *mut c_void, has_id: i32, id: u32);
    fn pyroscope_node_cped_close(global: *mut c_void);
}

/// One thread's record: what the label reader needs, and what its teardown frees.
struct Cped {
    /// Address of the `v8::Global<Context>`'s handle slot: holds the context's tagged address.
    handle_slot: usize,
    /// Byte offset of the CPED field in the context.
    offset: usize,
    /// Garbage collections running on the thread (V8 may nest them).
    gc_depth: AtomicU32,
    /// The id in force when the outermost running collection began.
    gc_id: AtomicU32,
    /// The `v8::Global<Context>` (the shim's).
    global: *mut c_void,
    /// The thread's state in the core, whose label source is this record.
    slot: LabelSlot,
}

thread_local! {
    /// The calling thread's record, from `open` until its environment's teardown.
    static CURRENT: Cell<*mut Cped> = const { Cell::new(ptr::null_mut()) };
}

/// Reads the id in the field of the context at the handle slot's address: 0 when the field
/// holds no Smi or a read fails.
///
/// # Signal safety
/// Two fault-tolerant loads.
fn read_field(handle_slot: usize, offset: usize) -> u32 {
    let Ok(tagged) = fault::read_u64(handle_slot) else { return 0 };
    if tagged & 3 != 1 {
        return 0;
    }
    let Ok(word) = fault::read_u64((tagged as usize - 1).wrapping_add(offset)) else { return 0 };
    if word & 0xffff_ffff != 0 {
        return 0;
    }
    (word >> 32) as u32
}

/// The core's label reader for threads whose labels live in CPED.
///
/// # Safety
/// `source` is a live `Cped` of the calling thread: `open` sets it as this thread's label
/// source and the teardown removes it before freeing it. Async-signal-safe: atomics and
/// fault-tolerant loads (after checking that the fault handler is still ours).
unsafe fn read_labels(source: usize) -> u32 {
    // SAFETY: per the contract.
    let cped = unsafe { &*(source as *const Cped) };
    if cped.gc_depth.load(Ordering::Acquire) > 0 {
        return cped.gc_id.load(Ordering::Relaxed);
    }
    if !fault::armed() {
        return 0;
    }
    read_field(cped.handle_slot, cped.offset)
}

/// V8's GC prologue (`start` 1) and epilogue (0) of the thread's isolate, on that thread.
///
/// # Safety
/// `cell` is the live `Cped` registered with the callbacks (they are removed before it is freed).
#[no_mangle]
unsafe extern "C" fn pyroscope_node_cped_gc(cell: *mut c_void, start: i32) {
    // SAFETY: per the contract.
    let cped = unsafe { &*(cell as *const Cped) };
    if start != 0 {
        if cped.gc_depth.load(Ordering::Relaxed) == 0 {
            // Before any object moves: the context is where the slot says.
            cped.gc_id.store(read_field(cped.handle_slot, cped.offset), Ordering::Relaxed);
        }
        cped.gc_depth.fetch_add(1, Ordering::Release);
    } else {
        let _ = cped.gc_depth.fetch_update(Ordering::Release, Ordering::Relaxed, |d| d.checked_sub(1));
    }
}

/// Makes the calling thread's labels live in its context's CPED (`env`: the call's
/// environment). True when they do (now or since an earlier call); false when this V8 cannot
/// carry them there, the field is someone else's, or the fault-tolerant reads cannot be set
/// up: the caller keeps labels another way.
pub fn open(env: sys::napi_env) -> bool {
    if !CURRENT.get().is_null() {
        return true;
    }
    if fault::install().is_err() {
        return false;
    }
    let (mut handle_slot, mut offset) = (0usize, 0usize);
    // SAFETY: on a thread that runs JavaScript, inside a call from it; the shim writes the two
    // words when it succeeds.
    let global = unsafe { pyroscope_node_cped_open(&mut handle_slot, &mut offset) };
    if global.is_null() {
        return false;
    }
    let cped = Box::into_raw(Box::new(Cped {
        handle_slot,
        offset,
        gc_depth: AtomicU32::new(0),
        gc_id: AtomicU32::new(0),
        global,
        slot: LabelSlot::current(),
    }));
    // SAFETY: `env` is the environment of the call in progress; the hook gets the record, which
    // it frees once.
    if unsafe { sys::napi_add_env_cleanup_hook(env, Some(close), cped.cast()) } != sys::Status::napi_ok {
        // SAFETY: `global` came from the shim and is not used again; the record was never shared.
        unsafe {
            pyroscope_node_cped_close(global);
            drop(Box::from_raw(cped));
        }
        return false;
    }
    static READER: Once = Once::new();
    READER.call_once(|| pyroscope_core::set_label_reader(read_labels));
    // SAFETY: the record lives until `close`, which removes it from V8's callbacks and from the
    // thread's label source first; both are set on this thread, the record's.
    unsafe {
        pyroscope_node_cped_watch_gc(cped.cast(), 1);
        (*cped).slot.set_source(cped as usize);
    }
    CURRENT.set(cped);
    true
}

/// An environment's teardown, on its thread: the record is removed, then freed.
///
/// # Safety
/// Node calls it once, with the record `open` registered, on the record's thread.
unsafe extern "C" fn close(cell: *mut c_void) {
    let cped = cell as *mut Cped;
    CURRENT.set(ptr::null_mut());
    // SAFETY: per the contract the record is live; once the source and the callbacks are gone
    // nothing reads it (the handler runs on this thread, and sees 0 after the store).
    unsafe {
        (*cped).slot.set_source(0);
        pyroscope_node_cped_watch_gc(cell, 0);
        pyroscope_node_cped_close((*cped).global);
        drop(Box::from_raw(cped));
    }
}

/// Stores label set `id` in the calling thread's CPED (0: no labels). False when the thread's
/// labels do not live there (no `open`).
pub fn set(id: u32) -> bool {
    let cped = CURRENT.get();
    if cped.is_null() {
        return false;
    }
    // SAFETY: this thread's live record, inside a call from JavaScript on its thread.
    unsafe { pyroscope_node_cped_set((*cped).global, i32::from(id != 0), id) };
    true
}

/// The label set id in the calling thread's CPED, as the signal handler reads it (0: none, or
/// no `open` on this thread).
pub fn get() -> u32 {
    let cped = CURRENT.get();
    if cped.is_null() {
        return 0;
    }
    // SAFETY: this thread's live record; no garbage collection runs during a call from
    // JavaScript, so the slot holds the context's current address.
    let cped = unsafe { &*cped };
    read_field(cped.handle_slot, cped.offset)
}
