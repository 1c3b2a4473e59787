//! Locks that a forked child can use.
//!
//! `parking_lot` parks threads in one process-wide hash table whose buckets have locks of their
//! own: a thread of the parent that was parking or waking another at the instant of `fork()`
//! leaves a bucket locked forever in the child, and the child's first contended lock or
//! `notify` hangs (seen in CI: `Condvar::notify_all` in a forked child, stuck on a bucket). The
//! standard library's locks are a futex word inside the lock itself, with no shared table, so
//! these wrappers build on them: `lock()` without poisoning (a panic while holding one of our
//! locks leaves data that is still consistent enough to profile with), and `fork_hold` /
//! `fork_release` for the `pthread_atfork` handlers, which take a lock before `fork()` and give
//! it back in the parent and in the child.

use std::cell::UnsafeCell;
use std::sync::PoisonError;
use std::time::Duration;

pub(crate) use std::sync::MutexGuard;

/// A mutex (see the module docs).
pub(crate) struct Mutex<T: 'static> {
    inner: std::sync::Mutex<T>,
    /// The guard `fork_hold` took, until `fork_release`.
    held: UnsafeCell<Option<MutexGuard<'static, T>>>,
}

// SAFETY: `inner` is Sync for T: Send. `held` is only read or written by the thread that holds
// `inner` (in `fork_hold` after locking, in `fork_release` before the guard it takes out
// unlocks), so those accesses never overlap.
unsafe impl<T: Send + 'static> Sync for Mutex<T> {}
// SAFETY: a guard in `held` borrows the mutex for 'static, which only a static (never moved)
// can lend, so a Mutex that moves has `held == None` and is a plain std Mutex.
unsafe impl<T: Send + 'static> Send for Mutex<T> {}

impl<T: 'static> Mutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        Mutex { inner: std::sync::Mutex::new(value), held: UnsafeCell::new(None) }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock, if no other thread holds it now.
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.inner.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Takes the lock and keeps it until [`Mutex::fork_release`] on this thread (a
    /// `pthread_atfork` prepare handler).
    pub(crate) fn fork_hold(&'static self) {
        let guard = self.lock();
        // SAFETY: this thread holds the lock, so it alone touches `held` (see the Sync impl).
        unsafe { *self.held.get() = Some(guard) };
    }

    /// [`Mutex::fork_hold`], then `f` on the value while it is held.
    pub(crate) fn fork_hold_with(&'static self, f: impl FnOnce(&mut T)) {
        let mut guard = self.lock();
        f(&mut guard);
        // SAFETY: this thread holds the lock, so it alone touches `held` (see the Sync impl).
        unsafe { *self.held.get() = Some(guard) };
    }

    /// `f` on the value still held since [`Mutex::fork_hold_with`], then [`Mutex::fork_release`].
    pub(crate) fn fork_release_with(&'static self, f: impl FnOnce(&mut T)) {
        // SAFETY: only the holder calls this, after its `fork_hold_with`; nobody else touches
        // `held`.
        let guard = unsafe { (*self.held.get()).take() };
        if let Some(mut guard) = guard {
            f(&mut guard);
        }
    }

    /// Gives back the lock [`Mutex::fork_hold`] took (the parent and child handlers; in the
    /// child, the forking thread is the only one left and it is the holder).
    pub(crate) fn fork_release(&'static self) {
        // SAFETY: only the holder calls this, after its `fork_hold`; nobody else touches `held`.
        let guard = unsafe { (*self.held.get()).take() };
        drop(guard);
    }
}

/// A reader-writer lock (see the module docs).
pub(crate) struct RwLock<T: 'static> {
    inner: std::sync::RwLock<T>,
    held: UnsafeCell<Option<std::sync::RwLockWriteGuard<'static, T>>>,
}

// SAFETY: as for `Mutex`: `held` is touched only by the writer holding `inner`. `inner` is Sync
// for T: Send + Sync.
unsafe impl<T: Send + Sync + 'static> Sync for RwLock<T> {}

impl<T: 'static> RwLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        RwLock { inner: std::sync::RwLock::new(value), held: UnsafeCell::new(None) }
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, T> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, T> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// As [`Mutex::fork_hold`], with the write lock.
    pub(crate) fn fork_hold(&'static self) {
        let guard = self.write();
        // SAFETY: this thread holds the write lock, so it alone touches `held`.
        unsafe { *self.held.get() = Some(guard) };
    }

    /// As [`Mutex::fork_release`].
    pub(crate) fn fork_release(&'static self) {
        // SAFETY: only the holder calls this, after its `fork_hold`.
        let guard = unsafe { (*self.held.get()).take() };
        drop(guard);
    }
}

/// A condition variable over [`Mutex`].
pub(crate) struct Condvar(std::sync::Condvar);

impl Condvar {
    pub(crate) const fn new() -> Self {
        Condvar(std::sync::Condvar::new())
    }

    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }

    pub(crate) fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.0.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits at most `timeout` (or until notified, or spuriously).
    pub(crate) fn wait_for<'a, T>(&self, guard: MutexGuard<'a, T>, timeout: Duration) -> MutexGuard<'a, T> {
        self.0.wait_timeout(guard, timeout).map_or_else(|e| e.into_inner().0, |(g, _)| g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static M: Mutex<u32> = Mutex::new(0);
    static RW: RwLock<u32> = RwLock::new(0);

    #[test]
    fn fork_hold_blocks_others_until_release() {
        M.fork_hold();
        RW.fork_hold();
        let other = std::thread::spawn(|| {
            *M.lock() += 1;
            *RW.write() += 1;
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!other.is_finished(), "another thread took a held lock");
        M.fork_release();
        RW.fork_release();
        other.join().unwrap();
        assert_eq!((*M.lock(), *RW.read()), (1, 1));
    }
}
