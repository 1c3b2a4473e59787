//! The CPU-timer signal handler, and nothing else. ⚠
//!
//! Calls made here, each async-signal-safe per signal-safety(7) or a raw syscall:
//! - `__errno_location` (read/restore errno), atomics, plain loads of preallocated memory;
//! - `process_vm_readv` (raw syscall) through [`crate::unwind::memory`] when a stack word lies
//!   outside the thread's known stack mapping;
//! - `clock_gettime(CLOCK_MONOTONIC)` (listed in signal-safety(7)) to time the handler;
//! - the previous handler of the signal, when the signal is not one of our timers;
//! - a binding's interpreter walker ([`crate::interp::WalkFn`]) and label reader
//!   ([`crate::thread::LabelReadFn`]), async-signal-safe by contract.
//!
//! Not called: malloc/free, locks (not even try-locks), formatting, thread-locals (a cdylib's
//! TLS may allocate on first touch), `dladdr`/`dl_iterate_phdr`, libgcc's unwinder.

use std::sync::atomic::Ordering;

use framehop::{FrameAddress, Unwinder};

use super::{ThreadState, ENABLED, PREVIOUS};
use crate::ring::{self, Kind, MAX_DEPTH};
use crate::sys::ErrnoGuard;
use crate::unwind::{self, memory, NativeRegs, HANDLERS_ACTIVE};

/// `si_code` of a signal sent by a POSIX timer.
const SI_TIMER: i32 = -2;

/// The fields of `siginfo_t` a POSIX timer fills in (kernel `_sigposix_timer` layout).
#[repr(C)]
pub(super) struct TimerInfo {
    pub(super) signo: i32,
    errno: i32,
    pub(super) code: i32,
    _pad: i32,
    timer_id: i32,
    overrun: i32,
    pub(super) value: *mut libc::c_void,
}

/// The handler installed with `SA_SIGINFO | SA_RESTART`.
///
/// # Signal safety
/// See the module doc: atomics, preallocated memory and raw syscalls only.
pub(super) extern "C" fn on_signal(sig: i32, info: *mut libc::siginfo_t, ucontext: *mut libc::c_void) {
    let _errno = ErrnoGuard::new();
    if info.is_null() {
        return chain(sig, info, ucontext);
    }
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; its first 32 bytes
    // always exist and hold these fields for SI_TIMER signals.
    let timer = unsafe { &*(info as *const TimerInfo) };
    let Some((slot, generation, wall)) =
        (timer.code == SI_TIMER).then(|| super::slot_of_sigval(timer.value as u64)).flatten()
    else {
        return chain(sig, info, ucontext);
    };
    let stripe = HANDLERS_ACTIVE.enter(slot);
    let t0 = monotonic_ns();
    #[cfg(feature = "test-hooks")]
    super::IN_HANDLER.with(|f| f.set(true));
    #[cfg(feature = "test-hooks")]
    super::test_hooks::hold_in_handler_here();
    if ENABLED.load(Ordering::SeqCst) {
        let state = super::SLOTS[slot].load(Ordering::SeqCst);
        // SAFETY: a non-null slot points at a ThreadState that the sampler frees only after
        // clearing the slot and then seeing HANDLERS_ACTIVE at zero; we are counted in it.
        let state = unsafe { state.as_ref() };
        // The state is this signal's only if it still holds the timer that sent it: a signal
        // queued before its timer was deleted may arrive after the slot went to another thread.
        let state = state.filter(|s| s.timer_gen.load(Ordering::SeqCst) == generation);
        if state.is_none() {
            super::STALE_SIGNALS.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(state) = state {
            let weight = 1 + timer.overrun.max(0) as u64;
            let kind = if wall { Kind::Wall } else { Kind::Cpu };
            match state.handler_stack_top() {
                Some(top) => {
                    let mut job = Job { state, kind, weight, ucontext };
                    // SAFETY: the stack is this thread's own (only its handler uses it, and the
                    // handler does not nest), 64 KiB above a guard page, freed only on this
                    // thread outside the handler or with the state, which outlives this call;
                    // `run_job` is an extern "C" fn taking the job pointer, which outlives the
                    // call.
                    unsafe { crate::sys::call_on_stack(top, run_job, (&mut job as *mut Job).cast()) };
                }
                None => sample(state, kind, weight, ucontext),
            }
        }
    }
    #[cfg(feature = "test-hooks")]
    super::IN_HANDLER.with(|f| f.set(false));
    super::HANDLER_NS.fetch_add(monotonic_ns().saturating_sub(t0), Ordering::Relaxed);
    super::HANDLER_RUNS.fetch_add(1, Ordering::Relaxed);
    HANDLERS_ACTIVE.exit(stripe);
}

/// What the handler hands to the code it runs on its own stack.
struct Job<'a> {
    state: &'a ThreadState,
    kind: Kind,
    weight: u64,
    ucontext: *mut libc::c_void,
}

extern "C" fn run_job(job: *mut libc::c_void) {
    // SAFETY: `call_on_stack` passes the `Job` the handler built on its own stack frame.
    let job = unsafe { &*(job as *const Job) };
    sample(job.state, job.kind, job.weight, job.ucontext);
}

fn sample(state: &ThreadState, kind: Kind, weight: u64, ucontext: *mut libc::c_void) {
    // SAFETY: for SA_SIGINFO handlers the third argument is the interrupted ucontext_t.
    let uc = unsafe { &*(ucontext as *const libc::ucontext_t) };
    let regs = &uc.uc_mcontext.gregs;
    let (ip, sp, bp) =
        (regs[libc::REG_RIP as usize] as u64, regs[libc::REG_RSP as usize] as u64, regs[libc::REG_RBP as usize] as u64);
    // Between sp and the end of its mapping reads are plain loads; elsewhere through the kernel.
    let stack = unwind::stack_window(sp);
    let label_id = state.label_id_now();
    // Read before the stack: its JIT frames are named by the code that was where they point now.
    let jit_generation = crate::jit::generation();
    let Some(cache) = state.cache() else { return };
    let snapshot = unwind::current();
    let walker = crate::interp::walker();
    let native = crate::interp::native();
    ring::push(state.tid as usize, kind, |rec| {
        rec.kind = kind;
        rec.tid = state.tid;
        rec.label_id = label_id;
        rec.weight = weight;
        rec.aux = jit_generation;
        rec.truncated = false;
        rec.interp = 0;
        if let Some(walk) = walker.filter(|_| !native) {
            // SAFETY: a registered walker is async-signal-safe by its contract (`WalkFn`), and
            // runs here on the sampled thread as it expects.
            let words = unsafe { walk(&mut rec.pcs[..]) }.min(MAX_DEPTH);
            if words > 0 {
                rec.depth = 0;
                rec.interp = words as u16;
                return;
            }
        }
        // With native frames merged, they take at most half the record; the walker the rest.
        let max_depth = if walker.is_some() && native { MAX_DEPTH / 2 } else { MAX_DEPTH };
        rec.pcs[0] = ip;
        let mut depth = 1;
        if let Some(snapshot) = snapshot {
            let mut read = |addr: u64| memory::read_word(addr, stack);
            let mut frames = snapshot.unwinder.iter_frames(ip, NativeRegs::new(ip, sp, bp), cache, &mut read);
            // The first frame is `ip` itself, already stored.
            let _ = frames.next();
            loop {
                match frames.next() {
                    Ok(Some(addr @ FrameAddress::ReturnAddress(_))) => {
                        if depth == max_depth {
                            rec.truncated = true;
                            break;
                        }
                        rec.pcs[depth] = addr.address_for_lookup();
                        depth += 1;
                    }
                    Ok(Some(FrameAddress::InstructionPointer(_))) => {}
                    Ok(None) => break,
                    Err(_) => {
                        rec.truncated = true;
                        break;
                    }
                }
            }
        } else {
            rec.truncated = true;
        }
        rec.depth = depth as u16;
        if let Some(walk) = walker.filter(|_| native) {
            // SAFETY: as above.
            rec.interp = unsafe { walk(&mut rec.pcs[depth..]) }.min(MAX_DEPTH - depth) as u16;
        }
    });
}

/// `CLOCK_MONOTONIC` in nanoseconds.
///
/// # Signal safety
/// `clock_gettime` is async-signal-safe (and a vDSO call on Linux).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Passes a signal that is not ours to whoever had the signal before us.
fn chain(sig: i32, info: *mut libc::siginfo_t, ucontext: *mut libc::c_void) {
    let prev = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: PREVIOUS is either null or points at the sigaction saved (and leaked) when we
    // installed ours; it is never freed.
    let Some(prev) = (unsafe { prev.as_ref() }) else {
        return;
    };
    let handler = prev.sa_sigaction;
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // A stray profiling signal must not terminate the host (SIGPROF's default action).
        return;
    }
    if prev.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this signature.
        let f: extern "C" fn(i32, *mut libc::siginfo_t, *mut libc::c_void) = unsafe { std::mem::transmute(handler) };
        f(sig, info, ucontext);
    } else {
        // SAFETY: without SA_SIGINFO the previous handler takes only the signal number.
        let f: extern "C" fn(i32) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}
