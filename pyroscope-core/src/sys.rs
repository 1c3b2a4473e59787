//! Thin wrappers over the few libc calls the profiler needs. ⚠ unsafe lives here.

use std::io;

/// A value alone on its cache line, so writes to its neighbours never take it away from the
/// cores that use it (and its writes never take theirs).
#[repr(align(64))]
pub(crate) struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Hints the CPU to bring the cache line holding `p` into its caches (a miss that overlaps
/// other work instead of stalling it later).
///
/// # Signal safety
/// One instruction: prefetching never faults and has no architectural effect.
#[inline(always)]
pub(crate) fn prefetch<T>(p: *const T) {
    // SAFETY: prefetching has no architectural effect and never faults, whatever `p` is.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) };
}

/// The kernel thread id of the calling thread.
///
/// # Signal safety
/// A raw syscall: async-signal-safe.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// The process id.
pub(crate) fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Saves `errno` on creation and restores it on drop, so a signal handler never changes
/// what the interrupted code sees.
///
/// # Signal safety
/// Reads and writes the thread's errno location only.
pub(crate) struct ErrnoGuard(i32);

impl ErrnoGuard {
    pub(crate) fn new() -> Self {
        // SAFETY: __errno_location always returns the calling thread's valid errno slot.
        ErrnoGuard(unsafe { *libc::__errno_location() })
    }
}

impl Drop for ErrnoGuard {
    fn drop(&mut self) {
        // SAFETY: as in `new`; the slot belongs to this thread.
        unsafe { *libc::__errno_location() = self.0 };
    }
}

/// The link count of `/proc/self/task`: the kernel reports it as 2 plus the process's thread
/// count, so one `stat` tells whether threads came or went without reading the directory
/// (which instantiates an entry per thread).
pub(crate) fn task_links() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/task").ok().map(|m| m.nlink())
}

/// Thread ids of this process, from `/proc/self/task`.
pub(crate) fn list_threads() -> io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|s| s.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// Calls `f(arg)` with the stack pointer moved to `top`, then restores it.
///
/// # Safety
/// `top` is the 16-byte aligned end of a writable region large enough for `f`, which no one
/// else uses meanwhile; `f` must not unwind.
///
/// # Signal safety
/// A few register moves and a call.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn call_on_stack(top: *mut u8, f: extern "C" fn(*mut libc::c_void), arg: *mut libc::c_void) {
    // SAFETY: per the function's contract. The old stack pointer is saved on the new stack
    // (keeping 16-byte alignment at the call) and restored after; every caller-saved register
    // is declared clobbered.
    unsafe {
        std::arch::asm!(
            "xchg rsp, r12",
            "sub rsp, 16",
            "mov [rsp], r12",
            "call {f}",
            "mov rsp, [rsp]",
            f = in(reg) f,
            inout("r12") top => _,
            in("rdi") arg,
            clobber_abi("C"),
        );
    }
}
