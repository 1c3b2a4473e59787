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
//! Frees: when the interpreter's allocators are pymalloc as built (`_PyMem_GetCurrentAllocatorName`
//! says "pymalloc": no debug hooks, no tracemalloc, no other wrapper), the OBJ and MEM domains'
//! `free` is left as pymalloc's own, and a sampled block is asked of pymalloc at 513 bytes or
//! more, above its small-block threshold (512 bytes, 3.8-3.13), so that pymalloc takes it from
//! the RAW domain. pymalloc hands every block it did not carve out itself to `PyMem_RawFree` (or
//! `PyMem_RawRealloc`), where a wrapper of the RAW domain checks the core's filter: most frees
//! (pymalloc's small blocks) then never reach the profiler. The cost is a sampled small block
//! taking 513 bytes instead of its size (for the few hundred live samples of a typical program,
//! tens of KiB). With any other allocator, each domain's `free` and `realloc` check the filter
//! themselves.
//!
//! The bytes-until-next-sample countdown is one process-wide counter, not a thread-local: the
//! OBJ and MEM domains are only ever called with the GIL held, so calls are serialized, and a
//! thread-local in a `dlopen`ed extension costs a call to `__tls_get_addr` per allocation. The
//! byte stream of all threads together is sampled as a Poisson process, which is as unbiased as
//! per-thread streams. (Subinterpreters with their own GIL, 3.12+, could race on the counter:
//! Rust reads and writes it as a relaxed atomic and the assembly below as one aligned word, so
//! the worst outcome is a sample more or less, never undefined behaviour.)
//!
//! Under pymalloc (routed frees), `malloc` and `realloc` of the OBJ and MEM domains are three
//! instructions of assembly each: subtract the size from the countdown, go to the sampled path
//! when that made it zero or less, else jump to pymalloc's function with the caller's arguments
//! untouched. Every object Python creates passes there, so this path is most of what memory
//! profiling adds to an allocation-heavy program; the same logic in Rust compiles to 11
//! instructions (the previous allocator loaded through `ctx`, the arguments moved back into
//! place). The routed domains keep pymalloc's own (null) `ctx`, so pymalloc gets exactly the
//! arguments it would get without us.
//!
//! Installed once per domain, never uninstalled: code that runs later (tracemalloc, another
//! profiler) may have wrapped our wrappers, so putting the old allocator back would cut it off.
//! With no agent running the wrappers only count down; a sample then records nothing.
//! Allocation requires the GIL: everything here runs on a Python thread in normal context
//! (no signal handler), and never calls back into Python.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
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

impl PyMemAllocatorEx {
    /// All null, for `PyMem_GetAllocator` to fill.
    fn empty() -> PyMemAllocatorEx {
        PyMemAllocatorEx { ctx: std::ptr::null_mut(), malloc: None, calloc: None, realloc: None, free: None }
    }
}

impl PyMemAllocatorEx {
    /// The same functions and context.
    fn same(&self, other: &PyMemAllocatorEx) -> bool {
        self.ctx == other.ctx
            && self.malloc.map(|f| f as usize) == other.malloc.map(|f| f as usize)
            && self.calloc.map(|f| f as usize) == other.calloc.map(|f| f as usize)
            && self.realloc.map(|f| f as usize) == other.realloc.map(|f| f as usize)
            && self.free.map(|f| f as usize) == other.free.map(|f| f as usize)
    }
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

impl Previous {
    fn new(inner: PyMemAllocatorEx) -> Option<Previous> {
        Some(Previous {
            inner,
            malloc: inner.malloc?,
            calloc: inner.calloc?,
            realloc: inner.realloc?,
            free: inner.free?,
        })
    }
}

// SAFETY: written once before the wrapper that reads it is installed, never changed; the
// pointers are CPython's allocator functions and context, valid for the process's life.
unsafe impl Send for Previous {}
// SAFETY: as above: read-only after initialisation.
unsafe impl Sync for Previous {}

/// `PyMemAllocatorDomain` values.
const DOMAIN_RAW: c_int = 0;
const DOMAIN_MEM: c_int = 1;
const DOMAIN_OBJ: c_int = 2;

/// The replaced allocators; the address of each is the `ctx` of our wrapper in that domain,
/// unless the domain is routed (its wrappers forward to `PYMALLOC`).
static PREVIOUS_MEM: OnceLock<Previous> = OnceLock::new();
static PREVIOUS_OBJ: OnceLock<Previous> = OnceLock::new();
/// The RAW domain's allocator, wrapped only when frees are routed (see the module comment). Its
/// wrappers read it here, never through `ctx`: RAW is called without the GIL, so a thread may
/// pair our function with the old `ctx` while `PyMem_SetAllocator` copies the struct.
static PREVIOUS_RAW: OnceLock<Previous> = OnceLock::new();
/// pymalloc's allocator as the OBJ domain had it when `_PyMem_GetCurrentAllocatorName` said
/// "pymalloc"; a domain that still has exactly this one gets the routed wrappers, which forward
/// to it (see [`set_pymalloc`]).
static PYMALLOC: OnceLock<Previous> = OnceLock::new();

/// pymalloc's largest small block (`SMALL_REQUEST_THRESHOLD`, 512 in 3.8-3.13): a request above
/// it goes to the RAW domain (and its free comes back there).
const PYMALLOC_SMALL_MAX: usize = 512;

/// What every allocation of a routed domain reads, on a cache line of its own: no other
/// variable's writes (a counter bumped by the collector thread, say) take it away from the
/// allocating thread.
#[repr(C, align(64))]
struct Hot {
    /// Bytes allocated through the wrappers until the next sample is due (see the module
    /// comment). Zero at first: the first allocation draws the first interval.
    countdown: AtomicI64,
    /// pymalloc's `malloc` and `realloc` (from `PYMALLOC`), where the routed wrappers' assembly
    /// jumps; stored before any routed wrapper is installed, never changed.
    malloc: AtomicUsize,
    realloc: AtomicUsize,
}

static HOT: Hot = Hot { countdown: AtomicI64::new(0), malloc: AtomicUsize::new(0), realloc: AtomicUsize::new(0) };

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
        HOT.countdown.store(pyroscope_core::countdown_expired(std::ptr::null_mut(), 0, 0), Ordering::Relaxed);
        if allocators_are_pymalloc() {
            let mut obj = PyMemAllocatorEx::empty();
            // SAFETY: fills the struct we own with the domain's allocator; the GIL is held.
            unsafe { get(DOMAIN_OBJ, &mut obj) };
            // The RAW wrapper first: it must be there before any block is sampled as a raw one.
            if let (Some(obj), true) = (Previous::new(obj), wrap_raw(get, set)) {
                set_pymalloc(obj);
            }
        }
    }
    wrap(get, set, DOMAIN_OBJ, &PREVIOUS_OBJ)?;
    if mem_domain {
        wrap(get, set, DOMAIN_MEM, &PREVIOUS_MEM)?;
    }
    Ok(())
}

/// Keeps pymalloc's allocator for the routed wrappers: the words the assembly jumps through
/// first, then `PYMALLOC`, whose presence lets [`wrap`] install them.
fn set_pymalloc(pymalloc: Previous) {
    HOT.malloc.store(pymalloc.malloc as usize, Ordering::Release);
    HOT.realloc.store(pymalloc.realloc as usize, Ordering::Release);
    let _ = PYMALLOC.set(pymalloc);
}

/// Which domains carry our wrappers: (OBJ, MEM).
pub fn installed() -> (bool, bool) {
    (PREVIOUS_OBJ.get().is_some(), PREVIOUS_MEM.get().is_some())
}

/// Whether frees of sampled blocks come back through the RAW domain: (OBJ, MEM).
pub fn routed() -> (bool, bool) {
    let routed =
        |slot: &OnceLock<Previous>| slot.get().is_some_and(|p| PYMALLOC.get().is_some_and(|m| p.inner.same(&m.inner)));
    (routed(&PREVIOUS_OBJ), routed(&PREVIOUS_MEM))
}

/// The interpreter's three domains are its allocators as built, pymalloc for OBJ and MEM (no
/// debug hooks, nothing wrapped). False when the check is not available.
fn allocators_are_pymalloc() -> bool {
    let Some(name) = symbol(c"_PyMem_GetCurrentAllocatorName") else { return false };
    // SAFETY: CPython's `const char *_PyMem_GetCurrentAllocatorName(void)` (3.8-3.13); it only
    // compares the allocator structs. The GIL is held.
    let name = unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn() -> *const c_char>(name)() };
    // SAFETY: null, or a static NUL-terminated string of CPython's.
    !name.is_null() && unsafe { CStr::from_ptr(name) } == c"pymalloc"
}

/// Wraps the RAW domain's `realloc` and `free` (not its `malloc`/`calloc`: RAW allocations are
/// not sampled, pymalloc's own large blocks come from there). False if it could not.
fn wrap_raw(get: GetAllocator, set: SetAllocator) -> bool {
    if PREVIOUS_RAW.get().is_some() {
        return true;
    }
    let mut current = PyMemAllocatorEx::empty();
    // SAFETY: fills the struct we own with the domain's allocator; the GIL is held.
    unsafe { get(DOMAIN_RAW, &mut current) };
    let Some(previous) = Previous::new(current) else { return false };
    if PREVIOUS_RAW.set(previous).is_err() {
        return true;
    }
    let mut ours = PyMemAllocatorEx {
        ctx: current.ctx,
        malloc: current.malloc,
        calloc: current.calloc,
        realloc: Some(raw_realloc),
        free: Some(raw_free),
    };
    // SAFETY: CPython copies the struct. `malloc` and `calloc` are the domain's own with its own
    // `ctx`; ours ignore `ctx` and forward through `PREVIOUS_RAW`, set above and never changed,
    // so any mix of old and new fields a thread without the GIL may read is a working allocator.
    unsafe { set(DOMAIN_RAW, &mut ours) };
    true
}

/// Replaces `domain`'s allocator with the wrappers, forwarding to the current one. The GIL is
/// held (the caller's `py`), so no allocation of the domain runs meanwhile.
fn wrap(get: GetAllocator, set: SetAllocator, domain: c_int, slot: &'static OnceLock<Previous>) -> Result<(), String> {
    if slot.get().is_some() {
        return Ok(());
    }
    let mut current = PyMemAllocatorEx::empty();
    // SAFETY: fills the struct we own with the domain's allocator; the GIL is held.
    unsafe { get(domain, &mut current) };
    let Some(previous) = Previous::new(current) else {
        return Err(format!("the allocator of memory domain {domain} has a null function: not wrapped"));
    };
    if slot.set(previous).is_err() {
        return Ok(());
    }
    let Some(previous) = slot.get() else { return Err("memory hooks: lost the saved allocator".into()) };
    // Routed: the domain has pymalloc as `PYMALLOC` holds it (null `ctx`), where the routed
    // wrappers forward; its `free` stays, and so does its `ctx`, passed on untouched.
    let routed = PYMALLOC.get().is_some_and(|m| m.inner.same(&current)) && current.ctx.is_null();
    let mut ours = if routed {
        PyMemAllocatorEx {
            ctx: current.ctx,
            malloc: Some(pyroscope_py_malloc_routed),
            calloc: Some(hook_calloc_routed),
            realloc: Some(pyroscope_py_realloc_routed),
            free: current.free,
        }
    } else {
        PyMemAllocatorEx {
            ctx: (previous as *const Previous).cast_mut().cast(),
            malloc: Some(hook_malloc),
            calloc: Some(hook_calloc),
            realloc: Some(hook_realloc),
            free: Some(hook_free),
        }
    };
    // SAFETY: CPython copies the struct; each function matches the slot's signature. A routed
    // domain's `ctx` is pymalloc's own (null, which its functions ignore), and its wrappers
    // forward to `PYMALLOC` and the words `set_pymalloc` stored before it was set; otherwise
    // `ctx` points at a static that lives as long as the process. The GIL is held.
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
    let left = HOT.countdown.load(Ordering::Relaxed).wrapping_sub(size as i64);
    HOT.countdown.store(left, Ordering::Relaxed);
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
    let next = pyroscope_core::countdown_expired(p.cast(), size, HOT.countdown.load(Ordering::Relaxed));
    HOT.countdown.store(next, Ordering::Relaxed);
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

/// A routed domain's sampled block is asked of pymalloc above its small-block threshold, so that
/// pymalloc takes it from the RAW domain and its free comes back there (see the module comment).
#[inline(always)]
fn routed_request(size: usize) -> usize {
    size.max(PYMALLOC_SMALL_MAX + 1)
}

// The routed domains' `malloc(ctx, size)` and `realloc(ctx, old, size)`. `sub` leaves the
// countdown and sets the flags of `countdown - size` (exact, overflow included), so `jle` takes
// the sampled path when it is zero or less; otherwise a jump to pymalloc's function, every
// argument register as the caller set it (rdi: pymalloc's own null `ctx`). Nothing else is
// touched: no stack, no other register. The CFI is the entry state throughout (the return
// address at the stack pointer), so an unwinder that stops here finds its way out.
std::arch::global_asm!(
    ".pushsection .text.pyroscope_py_hooks,\"ax\",@progbits",
    ".p2align 4",
    ".globl pyroscope_py_malloc_routed",
    ".hidden pyroscope_py_malloc_routed",
    ".type pyroscope_py_malloc_routed,@function",
    "pyroscope_py_malloc_routed:",
    "    .cfi_startproc",
    "    sub qword ptr [rip + {hot} + {countdown}], rsi",
    "    jle {malloc_sampled}",
    "    jmp qword ptr [rip + {hot} + {malloc}]",
    "    .cfi_endproc",
    ".size pyroscope_py_malloc_routed, . - pyroscope_py_malloc_routed",
    ".p2align 4",
    ".globl pyroscope_py_realloc_routed",
    ".hidden pyroscope_py_realloc_routed",
    ".type pyroscope_py_realloc_routed,@function",
    "pyroscope_py_realloc_routed:",
    "    .cfi_startproc",
    "    sub qword ptr [rip + {hot} + {countdown}], rdx",
    "    jle {realloc_sampled}",
    "    jmp qword ptr [rip + {hot} + {realloc}]",
    "    .cfi_endproc",
    ".size pyroscope_py_realloc_routed, . - pyroscope_py_realloc_routed",
    ".popsection",
    hot = sym HOT,
    countdown = const std::mem::offset_of!(Hot, countdown),
    malloc = const std::mem::offset_of!(Hot, malloc),
    realloc = const std::mem::offset_of!(Hot, realloc),
    malloc_sampled = sym malloc_routed_sampled,
    realloc_sampled = sym realloc_routed_sampled,
);

extern "C" {
    /// The routed domains' `malloc` (the assembly above).
    fn pyroscope_py_malloc_routed(ctx: *mut c_void, size: usize) -> *mut c_void;
    /// The routed domains' `realloc` (the assembly above): a sampled block's old version ends
    /// in the RAW domain's `realloc` (pymalloc sends its raw blocks there), so only the new size
    /// is counted here.
    fn pyroscope_py_realloc_routed(ctx: *mut c_void, old: *mut c_void, size: usize) -> *mut c_void;
}

/// pymalloc's allocator, which the routed wrappers forward to. Set before any of them is
/// installed: the `None` arm is never taken (it would fail the allocation, not crash).
#[inline(always)]
fn pymalloc() -> Option<&'static Previous> {
    PYMALLOC.get()
}

/// The countdown ran out in a routed `malloc` (the assembly took `size` from it).
#[cold]
#[inline(never)]
extern "C" fn malloc_routed_sampled(ctx: *mut c_void, size: usize) -> *mut c_void {
    let Some(pymalloc) = pymalloc() else { return std::ptr::null_mut() };
    // SAFETY: pymalloc's `malloc` with its own `ctx` (the caller's); a larger block serves the
    // caller as well.
    let p = unsafe { (pymalloc.malloc)(ctx, routed_request(size)) };
    if !p.is_null() {
        sampled(p, size);
    }
    p
}

/// The countdown ran out in a routed `realloc`.
#[cold]
#[inline(never)]
extern "C" fn realloc_routed_sampled(ctx: *mut c_void, old: *mut c_void, size: usize) -> *mut c_void {
    let Some(pymalloc) = pymalloc() else { return std::ptr::null_mut() };
    // SAFETY: pymalloc's `realloc` with its own `ctx`; it moves a small block to a raw one of
    // the larger size, copying its contents.
    let p = unsafe { (pymalloc.realloc)(ctx, old, routed_request(size)) };
    if !p.is_null() {
        sampled(p, size);
    }
    p
}

/// The routed domains' `calloc` (rarer than `malloc`: Rust, not assembly).
unsafe extern "C" fn hook_calloc_routed(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    if countdown_take(nelem.saturating_mul(elsize)) {
        return calloc_routed_sampled(ctx, nelem, elsize);
    }
    let Some(pymalloc) = pymalloc() else { return std::ptr::null_mut() };
    // SAFETY: forwarded unchanged to pymalloc, with its own `ctx`.
    unsafe { (pymalloc.calloc)(ctx, nelem, elsize) }
}

/// A sampled routed calloc: one zeroed element of at least 513 bytes.
#[cold]
#[inline(never)]
extern "C" fn calloc_routed_sampled(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    let Some(pymalloc) = pymalloc() else { return std::ptr::null_mut() };
    let Some(size) = nelem.checked_mul(elsize) else {
        // SAFETY: forwarded unchanged (pymalloc refuses the overflow).
        return unsafe { (pymalloc.calloc)(ctx, nelem, elsize) };
    };
    // SAFETY: pymalloc's `calloc` with its own `ctx`: as many zeroed bytes, or more.
    let p = unsafe { (pymalloc.calloc)(ctx, 1, routed_request(size)) };
    if !p.is_null() {
        sampled(p, size);
    }
    p
}

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

/// The RAW domain's `free` when frees are routed: pymalloc's large blocks and sampled blocks end
/// here, and every other raw block. Called without the GIL, from any thread; `ctx` is unused
/// (see `PREVIOUS_RAW`).
unsafe extern "C" fn raw_free(_ctx: *mut c_void, p: *mut c_void) {
    if pyroscope_core::free_is_tracked(p.cast()) {
        return raw_free_tracked(p);
    }
    let Some(prev) = PREVIOUS_RAW.get() else { return };
    // SAFETY: forwarded unchanged to the allocator we replaced.
    unsafe { (prev.free)(prev.inner.ctx, p) }
}

#[cold]
#[inline(never)]
extern "C" fn raw_free_tracked(p: *mut c_void) {
    pyroscope_core::record_free(p.cast());
    let Some(prev) = PREVIOUS_RAW.get() else { return };
    // SAFETY: forwarded unchanged to the allocator we replaced.
    unsafe { (prev.free)(prev.inner.ctx, p) }
}

/// The RAW domain's `realloc` when frees are routed: the old block ends (see `hook_realloc`);
/// the new one is not counted (RAW allocations are not sampled: the OBJ or MEM wrapper that
/// led here counted it).
unsafe extern "C" fn raw_realloc(_ctx: *mut c_void, old: *mut c_void, size: usize) -> *mut c_void {
    freeing(old);
    let Some(prev) = PREVIOUS_RAW.get() else { return std::ptr::null_mut() };
    // SAFETY: forwarded unchanged to the allocator we replaced.
    unsafe { (prev.realloc)(prev.inner.ctx, old, size) }
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

/// `_native._memory_routed()`: (OBJ, MEM) leave their frees to pymalloc (see the module comment).
#[pyfunction]
fn _memory_routed() -> (bool, bool) {
    routed()
}

/// Adds the private functions above to `pyroscope._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_memory_install, m)?)?;
    m.add_function(wrap_pyfunction!(_memory_installed, m)?)?;
    m.add_function(wrap_pyfunction!(_memory_routed, m)?)?;
    Ok(())
}
