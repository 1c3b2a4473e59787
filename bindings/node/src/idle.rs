//! Clears a thread's label slot each time its event loop is about to wait for I/O: a libuv
//! prepare handle, the mechanism Node itself uses to tell V8's profiler the loop is idle.
//!
//! `lib/labels.js` puts the labels of each callback and continuation into the slot before it
//! runs and does not clear them after (an `after` hook costs about a quarter of what labels
//! add per `await`). Without this handle the loop's wait, and the work it does between
//! callbacks, would carry the labels of the last callback that ran; with it, the wait (and
//! the `wall` samples taken in it) carries none.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};

use napi::sys;
use pyroscope_core::LabelSlot;

// libuv 1.x, exported by the `node` executable that loads the addon. Handles are opaque here:
// their size comes from `uv_handle_size`, their user pointer goes through the accessors.
extern "C" {
    fn uv_handle_size(kind: i32) -> usize;
    fn uv_prepare_init(event_loop: *mut sys::uv_loop_s, handle: *mut c_void) -> i32;
    fn uv_prepare_start(handle: *mut c_void, cb: unsafe extern "C" fn(*mut c_void)) -> i32;
    fn uv_prepare_stop(handle: *mut c_void) -> i32;
    fn uv_unref(handle: *mut c_void);
    fn uv_close(handle: *mut c_void, cb: unsafe extern "C" fn(*mut c_void));
    fn uv_handle_get_data(handle: *const c_void) -> *mut c_void;
    fn uv_handle_set_data(handle: *mut c_void, data: *mut c_void);
}

/// `UV_PREPARE` in libuv's `uv_handle_type` (fixed for the 1.x ABI).
const UV_PREPARE: i32 = 9;

/// One thread's handle and the slot it clears; owned by the handle's user pointer from the
/// start until its close callback.
struct Idle {
    slot: LabelSlot,
    handle: *mut c_void,
    layout: Layout,
    remove: sys::napi_async_cleanup_hook_handle,
}

thread_local! {
    /// The calling thread's `Idle`, from its start until its close callback.
    static CURRENT: Cell<*mut Idle> = const { Cell::new(ptr::null_mut()) };
}

/// Starts (`on`) or stops clearing the calling thread's label slot before each wait of `env`'s
/// event loop; it stops by itself when the environment is torn down (the thread's exit, for a
/// worker). Whether it is on.
pub fn clear_slot_when_idle(env: sys::napi_env, on: bool) -> bool {
    let current = CURRENT.get();
    if !current.is_null() {
        // SAFETY: `current` is this thread's live `Idle` (reset before it is freed), whose
        // handle is an initialized prepare handle of this thread's loop.
        return unsafe {
            if on {
                uv_prepare_start((*current).handle, on_prepare) == 0
            } else {
                uv_prepare_stop((*current).handle);
                false
            }
        };
    }
    if !on {
        return false;
    }
    let mut event_loop: *mut sys::uv_loop_s = ptr::null_mut();
    // SAFETY: `env` is the environment of the call in progress, on its thread.
    if unsafe { sys::napi_get_uv_event_loop(env, &mut event_loop) } != sys::Status::napi_ok || event_loop.is_null() {
        return false;
    }
    // SAFETY: a plain query of libuv's handle sizes.
    let size = unsafe { uv_handle_size(UV_PREPARE) };
    let Ok(layout) = Layout::from_size_align(size, 16) else { return false };
    if size == 0 {
        return false;
    }
    // SAFETY: `layout` has a non-zero size.
    let handle = unsafe { alloc_zeroed(layout) }.cast::<c_void>();
    if handle.is_null() {
        return false;
    }
    // SAFETY: `handle` is zeroed memory of the size libuv asks for a prepare handle, 16-byte
    // aligned; `event_loop` is this thread's loop, and we are on its thread.
    if unsafe { uv_prepare_init(event_loop, handle) } != 0 {
        // SAFETY: allocated above with `layout`; libuv did not keep it.
        unsafe { dealloc(handle.cast(), layout) };
        return false;
    }
    let idle = Box::into_raw(Box::new(Idle { slot: LabelSlot::current(), handle, layout, remove: ptr::null_mut() }));
    // SAFETY: `handle` is an initialized prepare handle of this thread's loop; from here on it
    // is released only by `on_closed`, after `uv_close`, which takes `idle` back. Unreferenced,
    // it never keeps the loop (or the process) alive. The teardown hook closes it before the
    // loop is closed; without one (napi refused it) it is closed at once.
    unsafe {
        uv_handle_set_data(handle, idle.cast());
        let status = sys::napi_add_async_cleanup_hook(env, Some(on_teardown), idle.cast(), &mut (*idle).remove);
        if status != sys::Status::napi_ok {
            (*idle).remove = ptr::null_mut();
            uv_close(handle, on_closed);
            return false;
        }
        uv_prepare_start(handle, on_prepare);
        uv_unref(handle);
    }
    CURRENT.set(idle);
    true
}

/// Runs on the loop's thread just before it polls for I/O.
unsafe extern "C" fn on_prepare(handle: *mut c_void) {
    // SAFETY: the user pointer is the `Idle` set at start, alive until `on_closed`, which runs
    // only after the handle stops; its slot is a 4-byte aligned u32 the thread's state keeps
    // alive (the `LabelSlot` held here), written by this thread only.
    unsafe {
        let idle = uv_handle_get_data(handle).cast::<Idle>();
        AtomicU32::from_ptr((*idle).slot.as_ptr()).store(0, Ordering::Relaxed);
    }
}

/// The environment's teardown: closes the handle; the teardown waits for `on_closed`.
unsafe extern "C" fn on_teardown(remove: sys::napi_async_cleanup_hook_handle, arg: *mut c_void) {
    let idle = arg.cast::<Idle>();
    // SAFETY: `arg` is the `Idle` registered with this hook, not yet freed (only `on_closed`
    // frees it, after this close); the hook runs on the loop's thread.
    unsafe {
        (*idle).remove = remove;
        uv_close((*idle).handle, on_closed);
    }
}

/// libuv is done with the handle: frees it and its `Idle`, and lets the teardown go on.
unsafe extern "C" fn on_closed(handle: *mut c_void) {
    // SAFETY: the user pointer is the `Idle` boxed at start, taken back once here (libuv calls
    // a close callback once); the handle's memory was allocated with its `layout` and libuv no
    // longer uses it.
    unsafe {
        let raw = uv_handle_get_data(handle).cast::<Idle>();
        if CURRENT.get() == raw {
            CURRENT.set(ptr::null_mut());
        }
        let idle = Box::from_raw(raw);
        dealloc(handle.cast(), idle.layout);
        if !idle.remove.is_null() {
            sys::napi_remove_async_cleanup_hook(idle.remove);
        }
    }
}
