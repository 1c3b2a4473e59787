//! The single "read a word without faulting" primitive handed to the unwinder. ⚠
//!
//! Within the interrupted thread's known stack mapping a read is a plain load (the stack cannot
//! be unmapped while its own thread is inside our handler). Anywhere else, or before the
//! stack's bounds are known, the word is copied with `process_vm_readv` on our own pid, which
//! returns an error instead of faulting on unmapped memory.

/// Reads the aligned word at `addr`, or `Err(())` when it is not readable.
///
/// # Signal safety
/// A plain load or one raw syscall; no allocation, no locks.
pub(crate) fn read_word(addr: u64, stack: (u64, u64)) -> Result<u64, ()> {
    if addr % 8 != 0 {
        return Err(());
    }
    let (lo, hi) = stack;
    if lo <= addr && addr.checked_add(8).is_some_and(|end| end <= hi) {
        // SAFETY: [lo, hi) runs from the thread's stack pointer to the end of the mapping that
        // holds it (`unwind::stack_window`, from /proc/self/maps); the thread is running this
        // handler or hook, so its stack stays mapped. The address is aligned.
        return Ok(unsafe { std::ptr::read_volatile(addr as *const u64) });
    }
    read_word_checked(addr)
}

/// Copies the word at `addr` through the kernel; never faults.
///
/// # Signal safety
/// One raw syscall.
pub(crate) fn read_word_checked(addr: u64) -> Result<u64, ()> {
    let mut out: u64 = 0;
    let local = libc::iovec { iov_base: (&mut out as *mut u64).cast(), iov_len: 8 };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: 8 };
    // SAFETY: `local` points at our own 8-byte variable; the kernel validates `remote` and
    // reports EFAULT instead of faulting. process_vm_readv on our own pid needs no privilege.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n == 8 {
        Ok(out)
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stack_and_refuses_unmapped() {
        let x: u64 = 0xfeed_beef;
        let addr = &x as *const u64 as u64;
        assert_eq!(read_word(addr, (0, 0)), Ok(0xfeed_beef));
        assert_eq!(read_word(addr, (addr, addr + 8)), Ok(0xfeed_beef));
        assert_eq!(read_word(8, (0, 0)), Err(()));
        assert_eq!(read_word(addr + 1, (0, u64::MAX)), Err(()));
    }
}
