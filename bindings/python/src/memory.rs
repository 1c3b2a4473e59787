//! Memory profiles for Python: wrappers around the allocators of CPython's OBJ domain (every
//! object) and MEM domain (`PyMem_Malloc`: list and dict storage, buffers of C extensions; on
//! by default, like pyroscope-io's `mem_enable_mem_domain=True`).
//!
//! Each wrapper calls the allocator it replaced, then reports the block to the core
//! (`pyroscope_core::countdown_expired`, `free_is_tracked`/`record_free`), which applies
//! Poisson sampling by bytes (mean: the agent's `alloc_sample_bytes`, 512 KiB by default),
//! unwinds the stack of a sampled allocation (the CPython walker's once it is registered with
//! the core), keeps the live set for `inuse_*` and unbiases the totals. The RAW domain is left
//! alone: it is called without the GIL, and pymalloc's own large blocks come from it (they would
//! be counted twice).
//!
//! The bytes-until-next-sample countdown is one process-wide counter, not a thread-local: the
//! OBJ and MEM domains are only ever called with the GIL held, so calls are serialized, and a
//! thread-local in a `dlopen`ed extension costs a call to `__tls_get_addr` per allocation. The
//! byte stream of all threads together is sampled as a Poisson process, which is as unbiased as
//! per-thread streams. (Subinterpreters with their own GIL, 3.12+, could race on the counter:
//! relaxed atomics, so the worst outcome is a sample more or less, never undefined behaviour.)
//!
//! Installed once per domain, never uninstalled: code that runs later (tracemalloc, another
//! profiler) may have wrapped our wrappers, so putting the old allocator back would cut it off.
//! With no agent running the wrappers only count down; a sample then records nothing.
//! Allocation requires the GIL: everything here runs on a Python thread in normal context
//! (no signal handler), and never calls back into Python.

use std::cell::Cell;
use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

/// CPython's `PyMemAllocatorEx` (Include/cpython/pymem.h, the same in 3.11-3.13).
#[repr(C)]
#[derive(Clone, Copy)]
struct PyMemAllocatorEx {
    ctx: *mut c_void,
    malloc: Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>,
    calloc: Option<unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void>,
    realloc: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void>,
    free: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
}

/// The allocator a wrapper forwards to (what the domain had before us).
#[derive(Clone, Copy)]
struct Previous {
    inner: PyMemAllocatorEx,
    malloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    calloc: unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void,
    realloc: unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void,
    free: unsafe extern "C" fn(*mut c_void, *mut c_void),
}

// SAFETY: written once before the wrapper that reads it is installed, never changed; the
// pointers are CPython's allocator functions and context, valid for the process's life.
unsafe impl Send for Previous {}
// SAFETY: as above: read-only after initialisation.
unsafe impl Sync for Previous {}

/// `PyMemAllocatorDomain` values.
const DOMAIN_MEM: c_int = 1;
const DOMAIN_OBJ: c_int = 2;

/// The replaced allocators; the address of each is the `ctx` of our wrapper in that domain.
static PREVIOUS_MEM: OnceLock<Previous> = OnceLock::new();
static PREVIOUS_OBJ: OnceLock<Previous> = OnceLock::new();

/// Bytes allocated through the wrappers until the next sample is due (see the module comment).
/// Zero at first: the first allocation draws the first interval.
static COUNTDOWN: AtomicI64 = AtomicI64::new(0);

type GetAllocator = unsafe extern "C" fn(c_int, *mut PyMemAllocatorEx);
type SetAllocator = unsafe extern "C" fn(c_int, *mut PyMemAllocatorEx);

/// Resolves `name` in the process's global scope (the interpreter's symbols: the extension does
/// not link libpython, and abi3 headers hide these functions).
fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// Installs the OBJ domain's wrapper, and the MEM domain's when `mem_domain` (each once per
/// process; later calls only add what is missing). Needs the GIL (`py`).
pub fn install(_py: Python<'_>, mem_domain: bool) -> Result<(), String> {
    let (Some(get), Some(set)) = (symbol(c"PyMem_GetAllocator"), symbol(c"PyMem_SetAllocator")) else {
        return Err("PyMem_GetAllocator/PyMem_SetAllocator not found in this process: no memory profiles".into());
    };
    // SAFETY: the two symbols are CPython's functions with these signatures (Include/cpython/pymem.h).
    let (get, set) = unsafe {
        (std::mem::transmute::<*mut c_void, GetAllocator>(get), std::mem::transmute::<*mut c_void, SetAllocator>(set))
    };
    if PREVIOUS_OBJ.get().is_none() && PREVIOUS_MEM.get().is_none() {
        // The first interval is a draw too: a countdown left at zero would sample (and
        // inflate) the first allocation.
        seed_thread();
        COUNTDOWN.store(pyroscope_core::countdown_expired(std::ptr::null_mut(), 0, 0), Ordering::Relaxed);
    }
    wrap(get, set, DOMAIN_OBJ, &PREVIOUS_OBJ)?;
    if mem_domain {
        wrap(get, set, DOMAIN_MEM, &PREVIOUS_MEM)?;
    }
    Ok(())
}

/// Which domains carry our wrappers: (OBJ, MEM).
pub fn installed() -> (bool, bool) {
    (PREVIOUS_OBJ.get().is_some(), PREVIOUS_MEM.get().is_some())
}

/// Replaces `domain`'s allocator with the wrappers, forwarding to the current one. The GIL is
/// held (the caller's `py`), so no allocation of the domain runs meanwhile.
fn wrap(get: GetAllocator, set: SetAllocator, domain: c_int, slot: &'static OnceLock<Previous>) -> Result<(), String> {
    if slot.get().is_some() {
        return Ok(());
    }
    let mut current =
        PyMemAllocatorEx { ctx: std::ptr::null_mut(), malloc: None, calloc: None, realloc: None, free: None };
    // SAFETY: fills the struct we own with the domain's allocator; the GIL is held.
    unsafe { get(domain, &mut current) };
    let (Some(malloc), Some(calloc), Some(realloc), Some(free)) =
        (current.malloc, current.calloc, current.realloc, current.free)
    else {
        return Err(format!("the allocator of memory domain {domain} has a null function: not wrapped"));
    };
    if slot.set(Previous { inner: current, malloc, calloc, realloc, free }).is_err() {
        return Ok(());
    }
    let Some(previous) = slot.get() else { return Err("memory hooks: lost the saved allocator".into()) };
    let mut ours = PyMemAllocatorEx {
        ctx: (previous as *const Previous).cast_mut().cast(),
        malloc: Some(hook_malloc),
        calloc: Some(hook_calloc),
        realloc: Some(hook_realloc),
        free: Some(hook_free),
    };
    // SAFETY: CPython copies the struct; `ctx` points at a static that lives as long as the
    // process, and each function below matches the slot's signature. The GIL is held.
    unsafe { set(domain, &mut ours) };
    Ok(())
}

/// The allocator a wrapper forwards to.
///
/// # Safety
/// `ctx` is the `ctx` CPython passes to our wrappers: the address of a `Previous` in a static.
#[inline(always)]
unsafe fn previous<'a>(ctx: *mut c_void) -> &'a Previous {
    // SAFETY: per the contract, a valid, immutable `Previous` with static lifetime.
    unsafe { &*ctx.cast::<Previous>() }
}

/// Takes `size` bytes from the countdown; true when a sample (or the first draw) is due.
#[inline(always)]
fn countdown_take(size: usize) -> bool {
    // Load and store, not fetch_sub: calls are serialized by the GIL, and a locked instruction
    // would cost more than the rest of the fast path.
    let left = COUNTDOWN.load(Ordering::Relaxed).wrapping_sub(size as i64);
    COUNTDOWN.store(left, Ordering::Relaxed);
    left <= 0
}

thread_local! {
    /// This thread has drawn from its sampling RNG before (see `sampled`).
    static SEEDED: Cell<bool> = const { Cell::new(false) };
}

/// Makes the core draw from this thread's sampling RNG once, so that its next expiry here is a
/// real one: the core skips the first expiry on each thread (it only seeds the thread's RNG,
/// which is right for a per-thread countdown); ours is shared, so every expiry counts. A draw
/// for a null block records nothing.
fn seed_thread() {
    if !SEEDED.try_with(|s| s.replace(true)).unwrap_or(true) {
        pyroscope_core::countdown_expired(std::ptr::null_mut(), 0, 0);
    }
}

/// The countdown ran out on a block of `size` bytes at `p` (non-null): the core samples it and
/// draws the next interval.
#[cold]
#[inline(never)]
fn sampled(p: *mut c_void, size: usize) {
    seed_thread();
    let next = pyroscope_core::countdown_expired(p.cast(), size, COUNTDOWN.load(Ordering::Relaxed));
    COUNTDOWN.store(next, Ordering::Relaxed);
}

/// Reports a new block to the sampler.
#[inline(always)]
fn allocated(p: *mut c_void, size: usize) {
    if !p.is_null() && countdown_take(size) {
        sampled(p, size);
    }
}

/// Reports the end of a block (before it goes back to the allocator, so its address cannot be
/// handed out again while the live set still holds it).
#[inline(always)]
fn freeing(p: *mut c_void) {
    if pyroscope_core::free_is_tracked(p.cast()) {
        pyroscope_core::record_free(p.cast());
    }
}

// The fast paths decide before forwarding, so that forwarding is a tail call (no frame of ours
// under the allocator's). The cold paths are `extern "C"` (they cannot unwind): a call to a Rust
// function that might unwind needs a frame in the caller, which cost the fast path a push/pop.

unsafe extern "C" fn hook_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    if countdown_take(size) {
        return malloc_sampled(ctx, size);
    }
    // SAFETY: CPython passes the ctx we installed.
    let prev = unsafe { previous(ctx) };
    // SAFETY: forwarded unchanged to the allocator we replaced.
    unsafe { (prev.malloc)(prev.inner.ctx, size) }
}

#[cold]
#[inline(never)]
extern "C" fn malloc_sampled(ctx: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: CPython passes the ctx we installed.
    let prev = unsafe { previous(ctx) };
    // SAFETY: forwarded unchanged to the allocator we replaced.
    let p = unsafe { (prev.malloc)(prev.inner.ctx, size) };
    if !p.is_null() {
        sampled(p, size);
    }
    p
}

unsafe extern "C" fn hook_calloc(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    // SAFETY: CPython passes the ctx we installed.
    let prev = unsafe { previous(ctx) };
    // SAFETY: forwarded unchanged to the allocator we replaced (which checks the overflow).
    let p = unsafe { (prev.calloc)(prev.inner.ctx, nelem, elsize) };
    allocated(p, nelem.saturating_mul(elsize));
    p
}

unsafe extern "C" fn hook_realloc(ctx: *mut c_void, old: *mut c_void, size: usize) -> *mut c_void {
    // SAFETY: CPython passes the ctx we installed.
    let prev = unsafe { previous(ctx) };
    // The old block ends here (a realloc that fails leaves it live but untracked: rare, and
    // only an under-count of inuse). Counted as a new allocation of `size`, as the preload
    // library and the Rust allocator do.
    freeing(old);
    // SAFETY: forwarded unchanged to the allocator we replaced.
    let p = unsafe { (prev.realloc)(prev.inner.ctx, old, size) };
    allocated(p, size);
    p
}

unsafe extern "C" fn hook_free(ctx: *mut c_void, p: *mut c_void) {
    if pyroscope_core::free_is_tracked(p.cast()) {
        return free_tracked(ctx, p);
    }
    // SAFETY: CPython passes the ctx we installed.
    let prev = unsafe { previous(ctx) };
    // SAFETY: forwarded unchanged to the allocator we replaced.
    unsafe { (prev.free)(prev.inner.ctx, p) }
}

#[cold]
#[inline(never)]
extern "C" fn free_tracked(ctx: *mut c_void, p: *mut c_void) {
    pyroscope_core::record_free(p.cast());
    // SAFETY: CPython passes the ctx we installed.
    let prev = unsafe { previous(ctx) };
    // SAFETY: forwarded unchanged to the allocator we replaced.
    unsafe { (prev.free)(prev.inner.ctx, p) }
}

/// `_native._memory_install(mem_domain=True)`: installs the wrappers (what starting an agent with
/// memory profiles does); for tests and benchmarks.
#[pyfunction]
#[pyo3(signature = (mem_domain=true))]
fn _memory_install(py: Python<'_>, mem_domain: bool) -> PyResult<()> {
    install(py, mem_domain).map_err(PyRuntimeError::new_err)
}

/// `_native._memory_installed()`: (OBJ, MEM) wrapped.
#[pyfunction]
fn _memory_installed() -> (bool, bool) {
    installed()
}

/// Adds the private functions above to `pyroscope._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_memory_install, m)?)?;
    m.add_function(wrap_pyfunction!(_memory_installed, m)?)?;
    Ok(())
}
