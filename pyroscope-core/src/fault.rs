//! Memory reads that return an error instead of crashing, for signal handlers. ⚠
//!
//! An interpreter's frames are read on the sampled thread, inside its CPU-timer signal handler,
//! while that thread may be halfway through pushing or popping a frame: a stale `previous`
//! pointer can lead into a freed, unmapped data-stack chunk. Every such read goes through this
//! module.
//!
//! Mechanism (exception table, as the kernel's own `copy_from_user`): the only instructions
//! that touch the foreign address are two in a tiny assembly routine ([`read_u64`]'s load and
//! [`read_bytes`]'s `rep movsb`). A process-wide SIGSEGV/SIGBUS handler, installed once by
//! [`install`], looks at the faulting instruction pointer: if it is one of those two
//! instructions it moves it to a fix-up stub that returns "fault" and lets the thread resume.
//! Any other fault is passed on to the handler that was installed before ours, exactly as the
//! kernel would have run it (its flags, its `sa_mask`), or, when that was `SIG_DFL`, the
//! default action is restored and the signal raised again so the process dies as it would have.
//!
//! Properties: no per-thread state, no `setjmp`; reads nest (a read inside a signal handler that
//! interrupted a read works, the handler is `SA_NODEFER`); a fault costs one signal delivery
//! (~3 µs), a good read a few nanoseconds. SIGSEGV and SIGBUS must never be in the `sa_mask` of
//! a handler that reads through this module: a fault while they are blocked kills the process
//! (see PYTHON-FACTS §4 (a)).
//!
//! Another library can replace our SIGSEGV handler later (Python's `faulthandler.enable()`
//! does). [`armed`] checks that ours is still the one installed; callers on the signal path
//! check it once per walk and read nothing when it is false.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

/// A read hit memory that is not mapped or not readable, or the guard is not installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault;

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("memory not readable")
    }
}

impl std::error::Error for Fault {}

// The routines. `pyroscope_fault_load(addr) -> (value, fault)` and
// `pyroscope_fault_copy(dst, src, len) -> (0, fault)` return a two-word struct in rax:rdx
// (System V). Only the instructions labelled `*_insn` may fault on the caller's address; the
// handler sends a fault there to `pyroscope_fault_fixup`, which returns (0, 1). Symbols are
// hidden: two copies of this crate in one process (two extension modules) keep their own.
std::arch::global_asm!(
    ".pushsection .text.pyroscope_fault,\"ax\",@progbits",
    ".p2align 4",
    ".globl pyroscope_fault_load",
    ".hidden pyroscope_fault_load",
    ".type pyroscope_fault_load,@function",
    "pyroscope_fault_load:",
    "    xor edx, edx",
    ".globl pyroscope_fault_load_insn",
    ".hidden pyroscope_fault_load_insn",
    "pyroscope_fault_load_insn:",
    "    mov rax, qword ptr [rdi]",
    "    ret",
    ".size pyroscope_fault_load, . - pyroscope_fault_load",
    ".p2align 4",
    ".globl pyroscope_fault_copy",
    ".hidden pyroscope_fault_copy",
    ".type pyroscope_fault_copy,@function",
    "pyroscope_fault_copy:",
    "    mov rcx, rdx",
    "    xor edx, edx",
    "    xor eax, eax",
    ".globl pyroscope_fault_copy_insn",
    ".hidden pyroscope_fault_copy_insn",
    "pyroscope_fault_copy_insn:",
    "    rep movsb",
    "    ret",
    ".size pyroscope_fault_copy, . - pyroscope_fault_copy",
    ".p2align 4",
    ".globl pyroscope_fault_fixup",
    ".hidden pyroscope_fault_fixup",
    ".type pyroscope_fault_fixup,@function",
    "pyroscope_fault_fixup:",
    "    xor eax, eax",
    "    mov edx, 1",
    "    ret",
    ".size pyroscope_fault_fixup, . - pyroscope_fault_fixup",
    ".popsection",
);

#[repr(C)]
struct Outcome {
    value: u64,
    fault: u64,
}

extern "sysv64" {
    fn pyroscope_fault_load(addr: usize) -> Outcome;
    fn pyroscope_fault_copy(dst: *mut u8, src: usize, len: usize) -> Outcome;
    fn pyroscope_fault_load_insn();
    fn pyroscope_fault_copy_insn();
    fn pyroscope_fault_fixup();
}

/// Set once our handler is installed for both signals (never cleared: reads stay guarded for
/// as long as our handler is the one the kernel runs, which [`armed`] checks).
static INSTALLED: AtomicBool = AtomicBool::new(false);
static INSTALL_LOCK: Mutex<()> = Mutex::new(());
/// The actions installed before ours for SIGSEGV and SIGBUS (leaked on install, chained to).
static PREVIOUS_SEGV: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
static PREVIOUS_BUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());
/// Faults turned into errors so far (for stats).
static FAULTS: AtomicU64 = AtomicU64::new(0);

/// Addresses below this are never mapped (Linux `vm.mmap_min_addr` is at least 4096), and
/// above the user half of the address space is never readable: refuse both without a fault.
const LOWEST: usize = 4096;
const HIGHEST: usize = 1 << 47;

/// Installs the SIGSEGV/SIGBUS handler that makes [`read_u64`] and [`read_bytes`] fault-tolerant,
/// keeping the previous actions to chain to. Idempotent; the handler is never removed.
///
/// Flags `SA_SIGINFO | SA_NODEFER | SA_ONSTACK`, empty `sa_mask`.
///
/// # Errors
/// The OS error of `sigaction`.
pub fn install() -> std::io::Result<()> {
    let _held = INSTALL_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if INSTALLED.load(Ordering::Acquire) {
        return Ok(());
    }
    for (sig, slot) in [(libc::SIGSEGV, &PREVIOUS_SEGV), (libc::SIGBUS, &PREVIOUS_BUS)] {
        // SAFETY: all-zero is a valid sigaction for the kernel to overwrite.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: query only (null new action); `old` is valid for writing.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Publish the action to chain to before ours can run.
        slot.store(Box::into_raw(Box::new(old)), Ordering::Release);
        // SAFETY: all-zero is a valid starting sigaction; every field used is set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_fault as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
        // SAFETY: `sa_mask` is a valid sigset_t; empty: SIGSEGV/SIGBUS are never blocked by us.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: valid pointers; SIGSEGV/SIGBUS can take handlers.
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    INSTALLED.store(true, Ordering::Release);
    Ok(())
}

/// Whether our handler is installed and still the one the kernel runs for SIGSEGV and SIGBUS.
/// False after `faulthandler.enable()` or any other library replaced it: then reads of
/// possibly-invalid memory must stop.
///
/// # Signal safety
/// Two `sigaction` queries (async-signal-safe, POSIX), an atomic load.
pub fn armed() -> bool {
    if !INSTALLED.load(Ordering::Acquire) {
        return false;
    }
    [libc::SIGSEGV, libc::SIGBUS].into_iter().all(|sig| {
        // SAFETY: all-zero is a valid sigaction to overwrite.
        let mut now: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: query only; `now` is valid for writing.
        let ok = unsafe { libc::sigaction(sig, std::ptr::null(), &mut now) } == 0;
        ok && now.sa_sigaction == on_fault as *const () as usize
    })
}

/// How many faults were turned into errors since the process started.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Relaxed)
}

/// Reads the 8 bytes at `addr` (any alignment), or `Err(Fault)` when they are not readable or
/// the handler was never installed.
///
/// Reads race with other threads' writes by design: the value can be torn or stale, callers
/// validate what they read.
///
/// # Signal safety
/// One atomic load and one load instruction; a fault costs one signal delivery.
#[inline]
pub fn read_u64(addr: usize) -> Result<u64, Fault> {
    if !(LOWEST..HIGHEST - 8).contains(&addr) || !INSTALLED.load(Ordering::Relaxed) {
        return Err(Fault);
    }
    // SAFETY: the routine only loads from `addr` (never writes through it) and a fault on that
    // load is turned into `fault = 1` by our installed handler; Rust never sees the memory.
    let out = unsafe { pyroscope_fault_load(addr) };
    if out.fault == 0 {
        Ok(out.value)
    } else {
        Err(Fault)
    }
}

/// Reads a `u32` at `addr` (as the low half of an 8-byte read: the 4 bytes after it must be
/// readable too, true for a field inside an object).
///
/// # Signal safety
/// As [`read_u64`].
#[inline]
pub fn read_u32(addr: usize) -> Result<u32, Fault> {
    read_u64(addr).map(|v| v as u32)
}

/// Copies `dst.len()` bytes from `src` into `dst`, or `Err(Fault)` when any of them is not
/// readable (then `dst` holds a partial copy).
///
/// # Signal safety
/// One atomic load and a `rep movsb`; a fault costs one signal delivery.
pub fn read_bytes(dst: &mut [u8], src: usize) -> Result<(), Fault> {
    let Some(end) = src.checked_add(dst.len()) else {
        return Err(Fault);
    };
    if src < LOWEST || end > HIGHEST || !INSTALLED.load(Ordering::Relaxed) {
        return Err(Fault);
    }
    if dst.is_empty() {
        return Ok(());
    }
    // SAFETY: `dst` is a valid writable buffer of `dst.len()` bytes; only the reads from `src`
    // may fault, and our handler turns such a fault into `fault = 1`.
    let out = unsafe { pyroscope_fault_copy(dst.as_mut_ptr(), src, dst.len()) };
    if out.fault == 0 {
        Ok(())
    } else {
        Err(Fault)
    }
}

/// The SIGSEGV/SIGBUS handler.
///
/// # Signal safety
/// Reads and writes the interrupted context, atomic loads; chaining uses `sigaction`,
/// `pthread_sigmask`, `tgkill` (all async-signal-safe) and the previous handler.
extern "C" fn on_fault(sig: libc::c_int, info: *mut libc::siginfo_t, ucontext: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo (SA_SIGINFO).
    let code = unsafe { (*info).si_code };
    // Only faults the kernel raised for an instruction (si_code > 0), never a kill() that
    // happens to land while a read is in progress.
    if code > 0 && !ucontext.is_null() {
        let uc = ucontext.cast::<libc::ucontext_t>();
        // SAFETY: with SA_SIGINFO the third argument is the interrupted ucontext_t, valid and
        // writable for the duration of the handler; the kernel restores registers from it.
        let rip = unsafe { &mut (*uc).uc_mcontext.gregs[libc::REG_RIP as usize] };
        let at = *rip as usize;
        if at == pyroscope_fault_load_insn as *const () as usize
            || at == pyroscope_fault_copy_insn as *const () as usize
        {
            *rip = pyroscope_fault_fixup as *const () as usize as i64;
            FAULTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let previous = if sig == libc::SIGBUS { &PREVIOUS_BUS } else { &PREVIOUS_SEGV };
    chain(sig, info, ucontext, previous.load(Ordering::Acquire));
}

/// Runs `previous` as the kernel would have run it for this signal.
///
/// # Signal safety
/// `sigaction`, `pthread_sigmask`, `getpid`, `gettid`, `tgkill`; then the previous handler.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ucontext: *mut libc::c_void, previous: *const libc::sigaction) {
    // SAFETY: `previous` is null or a leaked Box written once before our handler was installed.
    let previous = unsafe { previous.as_ref() };
    let (handler, flags, mask) = match previous {
        Some(p) => (p.sa_sigaction, p.sa_flags, Some(p.sa_mask)),
        None => (libc::SIG_DFL, 0, None),
    };
    // SAFETY: valid siginfo from the kernel.
    let from_kernel = unsafe { (*info).si_code } > 0;
    if handler == libc::SIG_DFL || (handler == libc::SIG_IGN && from_kernel) {
        // The kernel kills the process for a fault with the default action, and also for an
        // ignored one (force_sig_fault). Restore the default and raise again: the process dies
        // by this signal, with a core dump where enabled, as without us.
        die_by(sig);
        return;
    }
    if handler == libc::SIG_IGN {
        return;
    }
    // As the kernel does: block the handler's mask, and the signal unless SA_NODEFER, while it
    // runs; reset to the default first with SA_RESETHAND.
    // SAFETY: all-zero sigset_t values are valid and initialised below.
    let mut block: libc::sigset_t = mask.unwrap_or(unsafe { std::mem::zeroed() });
    if flags & libc::SA_NODEFER == 0 {
        // SAFETY: `block` is a valid sigset_t.
        unsafe { libc::sigaddset(&mut block, sig) };
    }
    // SAFETY: as above.
    let mut saved: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sets; pthread_sigmask is async-signal-safe.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut saved) };
    if flags & libc::SA_RESETHAND != 0 {
        set_default(sig);
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: installed with SA_SIGINFO, so the handler has the three-argument signature;
        // we pass the kernel's own arguments through.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(sig, info, ucontext);
    } else {
        // SAFETY: without SA_SIGINFO the handler takes only the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, std::ptr::null_mut()) };
}

/// # Signal safety
/// `sigaction` only.
fn set_default(sig: libc::c_int) {
    // SAFETY: all-zero sigaction with SIG_DFL (0) is the default action.
    let dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
}

/// Restores the default action for `sig`, unblocks it and sends it to this thread.
///
/// # Signal safety
/// `sigaction`, `pthread_sigmask`, raw `getpid`/`gettid`/`tgkill` syscalls.
fn die_by(sig: libc::c_int) {
    set_default(sig);
    // SAFETY: all-zero sigset_t, then initialised.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sets and pointers; raw syscalls with plain integer arguments.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        let pid = libc::syscall(libc::SYS_getpid);
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(libc::SYS_tgkill, pid, tid, sig);
    }
    // For a fault the instruction also runs again on return and faults into the default action.
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;

    /// An anonymous mapping with its second page unmapped: (base of readable page, hole).
    fn page_and_hole() -> (usize, usize) {
        // SAFETY: fresh anonymous mapping of two pages; we unmap the second one.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            assert_eq!(libc::munmap(p.cast::<u8>().add(4096).cast(), 4096), 0);
            (p as usize, p as usize + 4096)
        }
    }

    #[test]
    fn reads_valid_memory_and_refuses_unmapped() {
        install().unwrap();
        assert!(armed());
        let x: u64 = 0x1122_3344_5566_7788;
        assert_eq!(read_u64(&x as *const u64 as usize), Ok(x));
        let (page, hole) = page_and_hole();
        // SAFETY: the first page is ours and writable.
        unsafe { *((hole - 8) as *mut u64) = 42 };
        let before = faults();
        assert_eq!(read_u64(hole - 8), Ok(42));
        assert_eq!(read_u64(hole), Err(Fault));
        assert_eq!(read_u64(hole - 4), Err(Fault), "straddles into the hole");
        assert_eq!(read_u64(8), Err(Fault), "null page refused without a fault");
        assert_eq!(read_u64(usize::MAX - 3), Err(Fault));
        assert_eq!(faults() - before, 2);
        let mut buf = [0u8; 16];
        assert_eq!(read_bytes(&mut buf, hole - 16), Ok(()));
        assert_eq!(&buf[8..], &42u64.to_ne_bytes());
        assert_eq!(read_bytes(&mut buf, hole - 8), Err(Fault));
        assert_eq!(read_bytes(&mut [0u8; 0], hole), Ok(()));
        let _ = page;
    }

    static NESTED_RESULT: AtomicU64 = AtomicU64::new(0);

    extern "C" fn usr1_reads_hole(_: libc::c_int) {
        let hole = NESTED_HOLE.load(Ordering::Relaxed);
        let first = read_u64(hole).is_err() as u64;
        let second = read_u64(hole).is_err() as u64;
        let good = read_u64(hole - 8).is_ok() as u64;
        NESTED_RESULT.store(first + second + good, Ordering::Relaxed);
    }
    static NESTED_HOLE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[test]
    fn faults_inside_a_signal_handler_are_contained() {
        install().unwrap();
        let (_, hole) = page_and_hole();
        NESTED_HOLE.store(hole, Ordering::Relaxed);
        // SAFETY: a handler that only does guarded reads and atomic stores; SIGUSR2 is not used
        // by the other unit tests of this crate.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = usr1_reads_hole as *const () as usize;
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut());
            libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::syscall(libc::SYS_gettid), libc::SIGUSR2);
        }
        assert_eq!(NESTED_RESULT.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn cost_per_read() {
        install().unwrap();
        let words = vec![7u64; 1024];
        let n = 1_000_000;
        let start = Instant::now();
        let mut sum = 0u64;
        for i in 0..n {
            sum = sum.wrapping_add(read_u64(&words[i & 1023] as *const u64 as usize).unwrap());
        }
        let good = start.elapsed().as_nanos() as f64 / n as f64;
        assert_eq!(sum, 7 * n as u64);
        let (_, hole) = page_and_hole();
        let start = Instant::now();
        for _ in 0..1000 {
            assert!(read_u64(hole).is_err());
        }
        let bad = start.elapsed().as_nanos() as f64 / 1000.0;
        let start = Instant::now();
        for _ in 0..10_000 {
            assert!(armed());
        }
        let check = start.elapsed().as_nanos() as f64 / 10_000.0;
        println!("guarded read {good:.1} ns, faulting read {bad:.0} ns, armed() {check:.0} ns");
        assert!(good < 200.0, "a good read costs {good} ns");
    }

    /// Runs this test binary again with only `test` and `PYROSCOPE_FAULT_CHILD=mode`.
    fn child(test: &str, mode: &str) -> std::process::ExitStatus {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env("PYROSCOPE_FAULT_CHILD", mode)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    }

    extern "C" fn exit_42(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(42) };
    }

    extern "C" fn exit_43(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(43) };
    }

    #[test]
    fn crash_child() {
        let Ok(mode) = std::env::var("PYROSCOPE_FAULT_CHILD") else {
            return; // only runs as the child of the tests below
        };
        // SAFETY: installs plain handlers in a child process that is about to crash on purpose.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            match mode.as_str() {
                "siginfo" => {
                    action.sa_sigaction = exit_42 as *const () as usize;
                    action.sa_flags = libc::SA_SIGINFO;
                    libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
                }
                "plain" => {
                    action.sa_sigaction = exit_43 as *const () as usize;
                    libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
                }
                // Rust's runtime installs its own SIGSEGV handler (stack overflow detection); the
                // default action is what these modes test.
                _ => {
                    action.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(libc::SIGSEGV, &action, std::ptr::null_mut());
                }
            }
        }
        install().unwrap();
        // Our own reads still work with the chain in place.
        let (_, hole) = page_and_hole();
        assert!(read_u64(hole).is_err());
        if mode == "kill" {
            // SAFETY: sends SIGSEGV to this thread, not a fault: must not be swallowed.
            unsafe { libc::raise(libc::SIGSEGV) };
        } else {
            // SAFETY: a real crash on purpose, outside our routines: the chain must run.
            unsafe { std::ptr::read_volatile(hole as *const u64) };
        }
        std::process::exit(0);
    }

    #[test]
    fn a_real_crash_elsewhere_still_kills_or_reaches_the_previous_handler() {
        let name = "fault::tests::crash_child";
        assert_eq!(child(name, "default").signal(), Some(libc::SIGSEGV), "SIG_DFL before us: killed by SIGSEGV");
        assert_eq!(child(name, "kill").signal(), Some(libc::SIGSEGV), "kill(SIGSEGV) is not swallowed");
        assert_eq!(child(name, "siginfo").code(), Some(42), "previous SA_SIGINFO handler ran");
        assert_eq!(child(name, "plain").code(), Some(43), "previous plain handler ran");
    }
}
