//! `libpyroscope_preload.so`: profiles a native program that never calls our API.
//!
//! ```sh
//! LD_PRELOAD=target/release/libpyroscope_preload.so PYROSCOPE_APPLICATION_NAME=my-app ./my-program
//! ```
//! At load time a constructor starts an agent from the `PYROSCOPE_*` variables (CPU and memory
//! profiles; the application name defaults to the executable's name); at exit the last window
//! is flushed. The allocation functions below interpose the C library's and forward to glibc's
//! own entry points (`__libc_malloc` and friends), reporting each call to the sampler, so
//! `new`/`delete` and every library that uses malloc are covered. `pthread_create` is
//! interposed too, so that each new thread is sampled from its first instruction rather than
//! from the collector's next thread scan. glibc only.
//!
//! Bad settings never break the host: the error is printed once to stderr and the program runs
//! unprofiled. Sampled allocations dropped because the sample ring was full are counted on
//! stderr at exit, when there were any.
//!
//! The library also exports the whole C API of `libpyroscope.so` (`pyroscope.h`): a program
//! linked against it and run with this library preloaded calls into this copy, so its labels
//! and its allocations meet in one profiler. Such a program starts its own agent: set
//! `PYROSCOPE_PRELOAD_START=0` so the preload does not start one first.

// Keep the C API's symbols in this library.
pub use pyroscope::*;

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pyroscope_core::{countdown_expired, free_is_tracked, on_free, record_free, Agent, AgentBuilder};

extern "C" {
    fn __libc_malloc(size: usize) -> *mut c_void;
    fn __libc_calloc(n: usize, size: usize) -> *mut c_void;
    fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void;
    fn __libc_free(p: *mut c_void);
    fn __libc_memalign(align: usize, size: usize) -> *mut c_void;
    fn __libc_valloc(size: usize) -> *mut c_void;
    fn __libc_pvalloc(size: usize) -> *mut c_void;
}

// The sampling countdown: bytes this thread may still allocate before its next sample. It is
// an initial-exec TLS variable, reached with one `%fs`-relative access; a Rust thread-local in
// a shared library goes through a call to `__tls_get_addr` on every malloc, which made this
// library's fast path cost about 2 points more than a no-op interposer on a malloc/free loop.
// (Stable Rust cannot choose a TLS model, hence the assembly.) Initial-exec TLS suits a
// library loaded at startup by LD_PRELOAD; glibc keeps spare static TLS for the rare `dlopen`
// of it.
std::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".balign 8",
    ".globl pyroscope_preload_countdown",
    ".hidden pyroscope_preload_countdown",
    ".type pyroscope_preload_countdown, @object",
    ".size pyroscope_preload_countdown, 8",
    "pyroscope_preload_countdown:",
    ".zero 8",
    ".popsection",
);

/// Adds `delta` to this thread's countdown and returns the new value.
#[inline(always)]
fn countdown_add(delta: i64) -> i64 {
    let left: i64;
    // SAFETY: reads this thread's TLS offset of `pyroscope_preload_countdown` from the GOT
    // and updates the 8-byte variable at that offset from %fs, which the variable's own
    // thread alone touches; no other memory or register is changed.
    unsafe {
        std::arch::asm!(
            "movq pyroscope_preload_countdown@GOTTPOFF(%rip), {off}",
            "movq %fs:({off}), {left}",
            "addq {delta}, {left}",
            "movq {left}, %fs:({off})",
            off = out(reg) _,
            left = out(reg) left,
            delta = in(reg) delta,
            options(att_syntax, nostack),
        );
    }
    left
}

/// Takes `size` bytes from this thread's countdown; true when it reached zero (a sample is due
/// or the countdown needs its first draw): then call [`countdown_slow`].
#[inline(always)]
fn countdown_take(size: usize) -> bool {
    countdown_add((size as i64).wrapping_neg()) <= 0
}

/// The countdown ran out on an allocation of `size` bytes at `p`: let the core sample it and
/// store the next countdown.
#[cold]
#[inline(never)]
fn countdown_slow(p: *mut c_void, size: usize) {
    let next = countdown_expired(p.cast(), size, countdown_add(0));
    // Stored as is: allocations the profiler made meanwhile moved the countdown.
    countdown_add(next.wrapping_sub(countdown_add(0)));
}

/// Reports a successful allocation other than `malloc`'s (those are rarer: no tail call).
fn seen(p: *mut c_void, size: usize) -> *mut c_void {
    if !p.is_null() && countdown_take(size) {
        countdown_slow(p, size);
    }
    p
}

/// # Safety
/// The C `malloc` contract.
#[no_mangle]
pub unsafe extern "C" fn malloc(size: usize) -> *mut c_void {
    if countdown_take(size) {
        return malloc_sampled(size);
    }
    // SAFETY: forwarded unchanged to glibc's implementation; a tail call on the hot path.
    unsafe { __libc_malloc(size) }
}

// The cold paths are `extern "C"` (they cannot unwind): a call to a Rust function that might
// unwind needs a frame in the caller, which made the fast paths save a register on every call.
#[cold]
#[inline(never)]
extern "C" fn malloc_sampled(size: usize) -> *mut c_void {
    // SAFETY: forwarded unchanged to glibc's implementation.
    let p = unsafe { __libc_malloc(size) };
    if !p.is_null() {
        countdown_slow(p, size);
    }
    p
}

/// # Safety
/// The C `calloc` contract.
#[no_mangle]
pub unsafe extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded unchanged to glibc's implementation (which checks the overflow).
    seen(unsafe { __libc_calloc(n, size) }, n.saturating_mul(size))
}

/// # Safety
/// The C `realloc` contract.
#[no_mangle]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    on_free(p.cast());
    // SAFETY: forwarded unchanged to glibc's implementation.
    seen(unsafe { __libc_realloc(p, size) }, size)
}

/// # Safety
/// The C `reallocarray` contract.
#[no_mangle]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    let Some(total) = n.checked_mul(size) else {
        // SAFETY: errno is this thread's.
        unsafe { *libc::__errno_location() = libc::ENOMEM };
        return std::ptr::null_mut();
    };
    // SAFETY: same contract as realloc with the checked product.
    unsafe { realloc(p, total) }
}

/// # Safety
/// The C `free` contract.
#[no_mangle]
pub unsafe extern "C" fn free(p: *mut c_void) {
    if free_is_tracked(p.cast()) {
        return free_tracked(p);
    }
    // SAFETY: forwarded unchanged to glibc's implementation; a tail call on the hot path.
    unsafe { __libc_free(p) }
}

#[cold]
#[inline(never)]
extern "C" fn free_tracked(p: *mut c_void) {
    record_free(p.cast());
    // SAFETY: forwarded unchanged to glibc's implementation.
    unsafe { __libc_free(p) }
}

/// # Safety
/// The C `memalign` contract.
#[no_mangle]
pub unsafe extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    // SAFETY: forwarded unchanged to glibc's implementation.
    seen(unsafe { __libc_memalign(align, size) }, size)
}

/// # Safety
/// The C `aligned_alloc` contract.
#[no_mangle]
pub unsafe extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    // SAFETY: glibc implements aligned_alloc as memalign.
    unsafe { memalign(align, size) }
}

/// # Safety
/// The C `posix_memalign` contract: `out` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
    if !align.is_multiple_of(std::mem::size_of::<usize>()) || !align.is_power_of_two() {
        return libc::EINVAL;
    }
    // SAFETY: forwarded to glibc's memalign with a checked alignment.
    let p = seen(unsafe { __libc_memalign(align, size) }, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: the caller passes a valid `out`.
    unsafe { *out = p };
    0
}

/// # Safety
/// The C `valloc` contract.
#[no_mangle]
pub unsafe extern "C" fn valloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded unchanged to glibc's implementation.
    seen(unsafe { __libc_valloc(size) }, size)
}

/// # Safety
/// The C `pvalloc` contract.
#[no_mangle]
pub unsafe extern "C" fn pvalloc(size: usize) -> *mut c_void {
    // SAFETY: forwarded unchanged to glibc's implementation.
    seen(unsafe { __libc_pvalloc(size) }, size)
}

/// A thread's start routine, as `pthread_create` takes it. "C-unwind": `pthread_exit` and
/// cancellation unwind through it.
type StartRoutine = unsafe extern "C-unwind" fn(*mut c_void) -> *mut c_void;
type PthreadCreate =
    unsafe extern "C" fn(*mut libc::pthread_t, *const libc::pthread_attr_t, StartRoutine, *mut c_void) -> libc::c_int;

/// The C library's `pthread_create`, found once with `dlsym(RTLD_NEXT)`.
static REAL_PTHREAD_CREATE: AtomicUsize = AtomicUsize::new(0);

struct Start {
    routine: StartRoutine,
    arg: *mut c_void,
}

/// Every new thread starts here: it is sampled from its first instruction instead of from the
/// collector's next thread scan (up to 100 ms of a short thread's CPU time was missing).
unsafe extern "C-unwind" fn started(start: *mut c_void) -> *mut c_void {
    // SAFETY: `pthread_create` below passes a `Start` it leaked for this thread alone.
    let Start { routine, arg } = *unsafe { Box::from_raw(start.cast::<Start>()) };
    pyroscope_core::register_thread();
    // SAFETY: the routine and argument the program gave `pthread_create`. Nothing of ours is
    // left to drop in this frame, so `pthread_exit`'s unwinding may pass through it.
    unsafe { routine(arg) }
}

/// Interposes the C library's `pthread_create` to start each thread in [`started`].
///
/// # Safety
/// As `pthread_create(3)`.
#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    thread: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    routine: StartRoutine,
    arg: *mut c_void,
) -> libc::c_int {
    let mut real = REAL_PTHREAD_CREATE.load(Ordering::Acquire);
    if real == 0 {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds the C library's definition.
        real = unsafe { libc::dlsym(libc::RTLD_NEXT, c"pthread_create".as_ptr()) } as usize;
        if real == 0 {
            return libc::EAGAIN;
        }
        REAL_PTHREAD_CREATE.store(real, Ordering::Release);
    }
    // SAFETY: `real` is the address dlsym gave for `pthread_create`, whose type this is.
    let real: PthreadCreate = unsafe { std::mem::transmute::<usize, PthreadCreate>(real) };
    let start = Box::into_raw(Box::new(Start { routine, arg }));
    // SAFETY: the caller's arguments, with our routine and its `Start` in place of theirs.
    let rc = unsafe { real(thread, attr, started, start.cast()) };
    if rc != 0 {
        // SAFETY: the thread was not created, so `started` will never take `start`.
        drop(unsafe { Box::from_raw(start) });
    }
    rc
}

static AGENT: Mutex<Option<Agent>> = Mutex::new(None);

extern "C" fn start() {
    if std::env::var("PYROSCOPE_PRELOAD_START").is_ok_and(|v| v == "0" || v.eq_ignore_ascii_case("false")) {
        return;
    }
    let mut builder = AgentBuilder::from_env();
    if std::env::var_os(pyroscope_core::env::APPLICATION_NAME).is_none() {
        let exe = std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        let name: String = exe
            .unwrap_or_else(|| "native-app".into())
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '_' })
            .collect();
        builder = builder.application_name(name);
    }
    match builder.start() {
        Ok(agent) => {
            *AGENT.lock().unwrap_or_else(|e| e.into_inner()) = Some(agent);
            // SAFETY: `stop` is a plain extern "C" function that lives as long as the process.
            unsafe { libc::atexit(stop) };
        }
        Err(e) => warn(format_args!("profiling disabled: {e}")),
    }
}

extern "C" fn stop() {
    let Some(agent) = AGENT.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    // Lost CPU samples show in the CPU profile as `[lost samples]`; lost allocation samples
    // are memory no profile shows, so the program's stderr says so.
    let lost = agent.stop().alloc_samples_lost;
    if lost > 0 {
        warn(format_args!(
            "{lost} sampled allocations were dropped (the sample ring was full): the memory profiles are short of them"
        ));
    }
}

/// One line on the program's stderr. A closed or broken stderr is not the program's problem.
fn warn(message: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "pyroscope-preload: {message}");
}

/// Runs `start` when the library is loaded, before the program's `main`.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = start;
