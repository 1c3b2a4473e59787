//! Labels carried across `await` by V8 itself: the label set in force is a small JavaScript
//! object, a carrier (`lib/labels.js`), in the context's continuation-preserved embedder data
//! (CPED), which V8 11.x (Node 20) copies into every promise reaction when `await` or `then`
//! registers it and puts back while the reaction runs. JavaScript stores it only where labels
//! change (`wrapWithLabels`), never per await, and a reaction that holds it keeps the set
//! alive. The signal handler reads the set's id through the core's label source
//! (`pyroscope_core::LabelReadFn`) with four loads:
//!
//! 1. the context's tagged address, from the handle slot of a `v8::Global` this module holds
//!    (the garbage collector rewrites that slot, with one aligned store, when it moves the
//!    context);
//! 2. the field: the carrier's tagged address (or undefined, or something that is not ours);
//! 3. the carrier's magic Smi, which tells a carrier from any other object;
//! 4. the carrier's id Smi.
//!
//! The offsets are found when the thread's record is made (the shim stores sentinels through
//! V8's API and looks for them). Node 20 has no pointer compression: tagged values are 8-byte
//! words, heap objects end in `01`, Smis hold their value in the upper 32 bits over zeros.
//! While a garbage collection runs (between V8's GC prologue and epilogue on the thread, when
//! the context or the carrier may move) the handler reads the id the thread had when it began
//! instead. Every load goes through the core's fault-tolerant reads.
//!
//! A thread's record lives from its first label call (`open`) to its environment's teardown,
//! which removes it from the core's thread state before freeing it.

use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{compiler_fence, AtomicU32, Ordering};
use std::sync::Once;

use napi::sys;
use pyroscope_core::{fault, LabelSlot};

/// Where the handler reads (the shim's `CpedLayout`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Layout {
    /// Address of the `v8::Global<Context>`'s handle slot: holds the context's tagged address.
    handle_slot: usize,
    /// Byte offset of the CPED field in the context.
    context_offset: usize,
    /// Byte offsets of the magic and of the id in a carrier.
    magic_offset: usize,
    id_offset: usize,
}

extern "C" {
    fn pyroscope_node_isolate() -> *mut c_void;
    fn pyroscope_node_cped_open(sample: sys::napi_value, magic: i32, sentinel: i32, layout: *mut Layout)
        -> *mut c_void;
    fn pyroscope_node_cped_watch_gc(isolate: *mut c_void, cell: *mut c_void, on: i32);
    fn pyroscope_node_cped_accessors() -> sys::napi_value;
    fn pyroscope_node_cped_close(global: *mut c_void);
}

use crate::CARRIER_MAGIC;

/// One thread's record: what the label reader needs, and what its teardown frees.
struct Cped {
    layout: Layout,
    /// The thread's isolate, whose GC callbacks point at this record.
    isolate: *mut c_void,
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

/// A Smi's value, or `None` for a word that is no Smi.
///
/// # Signal safety
/// Arithmetic only.
fn smi(word: u64) -> Option<i32> {
    (word & 0xffff_ffff == 0).then_some((word >> 32) as u32 as i32)
}

/// The id of the carrier in the field of the context at the layout's handle slot: 0 when the
/// field holds no carrier or a read fails.
///
/// # Signal safety
/// Four fault-tolerant loads.
fn read_field(layout: &Layout) -> u32 {
    let tagged = |word: u64| (word & 3 == 1).then(|| word as usize - 1);
    let read = |base: usize, offset: usize| fault::read_u64(base.wrapping_add(offset)).ok();
    let id = || {
        let context = tagged(read(layout.handle_slot, 0)?)?;
        let carrier = tagged(read(context, layout.context_offset)?)?;
        (smi(read(carrier, layout.magic_offset)?)? == CARRIER_MAGIC).then_some(())?;
        smi(read(carrier, layout.id_offset)?)
    };
    id().map_or(0, |id| id as u32)
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
    read_field(&cped.layout)
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
            cped.gc_id.store(read_field(&cped.layout), Ordering::Relaxed);
        }
        cped.gc_depth.fetch_add(1, Ordering::Release);
    } else {
        let _ = cped.gc_depth.fetch_update(Ordering::Release, Ordering::Relaxed, |d| d.checked_sub(1));
    }
}

/// Makes the calling thread's labels live in its context's CPED (`env`: the call's
/// environment; `sample`: a carrier holding `sentinel` as its id, to find the offsets in). True
/// when they do (now or since an earlier call); false when this V8 cannot carry them there,
/// the field is someone else's, or the fault-tolerant reads cannot be set up: the caller keeps
/// labels another way.
pub fn open(env: sys::napi_env, sample: sys::napi_value, sentinel: i32) -> bool {
    if !CURRENT.get().is_null() {
        return true;
    }
    if fault::install().is_err() {
        return false;
    }
    // SAFETY: asks V8 for the calling thread's isolate.
    let isolate = unsafe { pyroscope_node_isolate() };
    if isolate.is_null() {
        return false;
    }
    let mut layout = Layout::default();
    // SAFETY: on a thread that runs JavaScript, inside a call from it, `sample` one of its
    // arguments; the shim writes the layout when it succeeds.
    let global = unsafe { pyroscope_node_cped_open(sample, CARRIER_MAGIC, sentinel, &mut layout) };
    if global.is_null() {
        return false;
    }
    let cped = Box::into_raw(Box::new(Cped {
        layout,
        isolate,
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
    // thread's label source first; both are set on this thread, the record's and the isolate's.
    unsafe {
        pyroscope_node_cped_watch_gc(isolate, cped.cast(), 1);
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
        // The handler, which may interrupt this thread at any point, sees the source gone before
        // anything is freed.
        compiler_fence(Ordering::SeqCst);
        pyroscope_node_cped_watch_gc((*cped).isolate, cell, 0);
        pyroscope_node_cped_close((*cped).global);
        drop(Box::from_raw(cped));
    }
}

/// The functions that read and write the calling thread's CPED, `[get, set]` (a napi_value of
/// the current call's scope), or null without `open` on this thread.
pub fn accessors() -> sys::napi_value {
    if CURRENT.get().is_null() {
        return ptr::null_mut();
    }
    // SAFETY: inside a call from JavaScript on a thread whose CPED `open` took.
    unsafe { pyroscope_node_cped_accessors() }
}
