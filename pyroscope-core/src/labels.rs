//! Labels attached to samples at the instant they are taken.
//!
//! A label set is interned once into a global, append-only table and named by a `u32` id.
//! Each thread owns one slot (see [`crate::thread::ThreadState`]) holding the id in force;
//! the signal handler reads it with a single relaxed atomic load, and changing labels is a
//! single atomic store. Nothing here runs in signal context except that load.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::sync::RwLock;

use crate::error::{Error, Result};
use crate::thread::{current_slot, ThreadState};

/// Most label sets (distinct combinations) a process may intern; beyond it new sets are refused.
pub const MAX_LABEL_SETS: usize = 1 << 16;
/// Most dynamic labels on one sample (the server allows 100).
pub const MAX_SAMPLE_LABELS: usize = 32;

/// One label: a validated name and value.
pub type Label = (Arc<str>, Arc<str>);

/// Id of the empty label set.
pub(crate) const EMPTY: u32 = 0;

struct Interner {
    sets: Vec<Arc<[Label]>>,
    index: HashMap<Arc<[Label]>, u32>,
    /// (outer set, inner set) -> merged set, so nested guards cost a lookup, not a merge.
    merged: HashMap<(u32, u32), u32>,
}

static INTERNER: RwLock<Option<Interner>> = RwLock::new(None);

fn with_interner<R>(f: impl FnOnce(&mut Interner) -> R) -> R {
    let mut guard = INTERNER.write();
    let interner = guard.get_or_insert_with(|| {
        let empty: Arc<[Label]> = Arc::from(Vec::new());
        let mut index = HashMap::new();
        index.insert(empty.clone(), EMPTY);
        Interner { sets: vec![empty], index, merged: HashMap::new() }
    });
    f(interner)
}

/// The labels of set `id`, sorted by name. Unknown ids give the empty set.
pub(crate) fn resolve(id: u32) -> Arc<[Label]> {
    if let Some(interner) = INTERNER.read().as_ref() {
        if let Some(set) = interner.sets.get(id as usize) {
            return set.clone();
        }
    }
    Arc::from(Vec::new())
}

fn intern(mut labels: Vec<Label>) -> Result<u32> {
    labels.sort();
    let key: Arc<[Label]> = Arc::from(labels);
    if let Some(id) = INTERNER.read().as_ref().and_then(|i| i.index.get(&key).copied()) {
        return Ok(id);
    }
    with_interner(|i| {
        if let Some(id) = i.index.get(&key) {
            return Ok(*id);
        }
        if i.sets.len() >= MAX_LABEL_SETS {
            return Err(Error::LabelSetLimit { limit: MAX_LABEL_SETS });
        }
        let id = i.sets.len() as u32;
        i.sets.push(key.clone());
        i.index.insert(key, id);
        Ok(id)
    })
}

/// `inner` laid over `outer`: inner's values win for names both have.
fn merge(outer: u32, inner: u32) -> Result<u32> {
    if outer == EMPTY || outer == inner {
        return Ok(inner);
    }
    if inner == EMPTY {
        return Ok(outer);
    }
    if let Some(id) = INTERNER.read().as_ref().and_then(|i| i.merged.get(&(outer, inner)).copied()) {
        return Ok(id);
    }
    let (a, b) = (resolve(outer), resolve(inner));
    let mut labels: Vec<Label> = a.iter().filter(|(n, _)| !b.iter().any(|(m, _)| m == n)).cloned().collect();
    labels.extend(b.iter().cloned());
    if labels.len() > MAX_SAMPLE_LABELS {
        return Err(Error::TooManyLabels { count: labels.len(), max: MAX_SAMPLE_LABELS });
    }
    let id = intern(labels)?;
    with_interner(|i| i.merged.insert((outer, inner), id));
    Ok(id)
}

/// Checks a label name: 1..=1024 chars of `[A-Za-z0-9_.]`, not starting with `__`.
pub fn validate_name(name: &str) -> Result<()> {
    if name.starts_with("__") {
        return Err(Error::ReservedLabelName { name: name.to_owned() });
    }
    let ok = !name.is_empty()
        && name.len() <= 1024
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidLabelName { name: name.to_owned() })
    }
}

/// Checks a label value: 1..=2048 bytes, none of `, { } =` (which `/ingest` cannot carry).
pub fn validate_value(name: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 2048
        && !value.contains([',', '{', '}', '='])
        && !value.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidLabelValue { name: name.to_owned(), value: value.to_owned() })
    }
}

/// Validates pairs and returns them as owned labels, rejecting duplicates.
pub(crate) fn validate_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<Vec<Label>> {
    let mut out: Vec<Label> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let (k, v) = (k.as_ref(), v.as_ref());
        validate_name(k)?;
        validate_value(k, v)?;
        if out.iter().any(|(n, _)| &**n == k) {
            return Err(Error::DuplicateLabel { name: k.to_owned() });
        }
        out.push((Arc::from(k), Arc::from(v)));
    }
    if out.len() > MAX_SAMPLE_LABELS {
        return Err(Error::TooManyLabels { count: out.len(), max: MAX_SAMPLE_LABELS });
    }
    Ok(out)
}

/// An interned, validated set of dynamic labels. Cheap to copy; create it once and
/// [`enter`](LabelSet::enter) it as often as you like: entering costs one atomic store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LabelSet {
    id: u32,
}

impl LabelSet {
    /// Validates and interns `pairs`. Errors name the offending label.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<Self> {
        Ok(LabelSet { id: intern(validate_pairs(pairs)?)? })
    }

    /// The empty set.
    pub fn empty() -> Self {
        LabelSet { id: EMPTY }
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> Vec<(String, String)> {
        resolve(self.id).iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The interned id (stable for the life of the process).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Makes these labels (laid over the ones already in force) current on this thread until
    /// the guard drops. Fails only if the merged set would exceed the interning limits.
    pub fn enter(&self) -> Result<LabelGuard> {
        let slot = current_slot();
        let prev = slot.label_id.load(Ordering::Relaxed);
        let next = merge(prev, self.id)?;
        slot.label_id.store(next, Ordering::Relaxed);
        Ok(LabelGuard { slot, prev, _not_send: PhantomData })
    }

    /// Wraps a future so that these labels are in force whenever it is polled, on whichever
    /// thread polls it (tokio tasks keep their labels across `.await`).
    pub fn wrap<F: Future>(self, future: F) -> WithLabels<F> {
        WithLabels { set: self, inner: future }
    }
}

/// Restores the previous labels of the thread when dropped. Not `Send`: labels belong to a thread.
#[must_use = "the labels are removed when the guard is dropped"]
pub struct LabelGuard {
    slot: Arc<ThreadState>,
    prev: u32,
    _not_send: PhantomData<*const ()>,
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        self.slot.label_id.store(self.prev, Ordering::Relaxed);
    }
}

/// Validates, interns and enters `pairs` on this thread; see [`LabelSet::enter`].
pub fn push<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<LabelGuard> {
    LabelSet::new(pairs)?.enter()
}

/// Runs `f` with `pairs` added to this thread's labels; every sample taken meanwhile carries
/// them. Bad labels are reported before `f` runs.
pub fn tag_wrapper<K: AsRef<str>, V: AsRef<str>, R>(pairs: &[(K, V)], f: impl FnOnce() -> R) -> Result<R> {
    let _guard = push(pairs)?;
    Ok(f())
}

/// Samples the calling thread's CPU from now on. A thread is otherwise sampled from its first
/// label call or from the collector's next scan of the process's threads (within 100 ms): call
/// this first thing in a short-lived thread that takes no labels. Later calls are cheap.
pub fn register_thread() {
    current_slot();
}

/// The labels in force on this thread now.
pub fn current() -> LabelSet {
    LabelSet { id: current_slot().label_id.load(Ordering::Relaxed) }
}

/// A future that carries its own labels; see [`LabelSet::wrap`].
pub struct WithLabels<F> {
    set: LabelSet,
    inner: F,
}

impl<F: Future> Future for WithLabels<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of `self`, and
        // `WithLabels` has no Drop impl and is not Unpin-dependent on `set` (a Copy id).
        let this = unsafe { self.get_unchecked_mut() };
        let set = this.set;
        // SAFETY: see above; `inner` stays where it is for as long as `self` is pinned.
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        // Merging can only fail on interning limits; then poll without the labels rather
        // than fail the user's future.
        let _guard = set.enter().ok();
        inner.poll(cx)
    }
}

/// Takes the interner's lock before fork, so no other thread of the parent holds it then.
pub(crate) fn prepare_fork() {
    INTERNER.fork_hold();
}

/// Gives the lock back, in the parent and in the child.
pub(crate) fn after_fork() {
    INTERNER.fork_release();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_order_free() {
        let a = LabelSet::new(&[("vehicle", "car"), ("region", "eu")]).unwrap();
        let b = LabelSet::new(&[("region", "eu"), ("vehicle", "car")]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.labels(), vec![("region".into(), "eu".into()), ("vehicle".into(), "car".into())]);
    }

    #[test]
    fn nested_guards_merge_and_restore() {
        let outer = push(&[("endpoint", "/car"), ("vehicle", "bike")]).unwrap();
        {
            let _inner = push(&[("vehicle", "car")]).unwrap();
            assert_eq!(current().labels(), vec![("endpoint".into(), "/car".into()), ("vehicle".into(), "car".into())]);
        }
        assert_eq!(current().labels(), vec![("endpoint".into(), "/car".into()), ("vehicle".into(), "bike".into())]);
        drop(outer);
        assert!(current().labels().is_empty());
    }

    #[test]
    fn bad_labels_are_typed_errors() {
        assert!(matches!(push(&[("", "x")]), Err(Error::InvalidLabelName { .. })));
        assert!(matches!(push(&[("a-b", "x")]), Err(Error::InvalidLabelName { .. })));
        assert!(matches!(push(&[("__name__", "x")]), Err(Error::ReservedLabelName { .. })));
        assert!(matches!(push(&[("k", "a,b")]), Err(Error::InvalidLabelValue { .. })));
        assert!(matches!(push(&[("k", "")]), Err(Error::InvalidLabelValue { .. })));
        assert!(matches!(push(&[("k", "1"), ("k", "2")]), Err(Error::DuplicateLabel { .. })));
        let ran = tag_wrapper(&[("k", "}")], || true);
        assert!(ran.is_err());
    }

    #[test]
    fn wrapped_future_keeps_labels_per_poll() {
        use std::task::{RawWaker, RawWakerVTable, Waker};
        fn noop(_: *const ()) {}
        fn clone(p: *const ()) -> RawWaker {
            RawWaker::new(p, &VTABLE)
        }
        static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
        // SAFETY: the vtable functions ignore the data pointer.
        let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
        let set = LabelSet::new(&[("task", "a")]).unwrap();
        let mut seen = Vec::new();
        let fut = set.wrap(std::future::poll_fn(|_| {
            seen.push(current().labels());
            if seen.len() < 2 {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }));
        let mut fut = Box::pin(fut);
        let mut cx = Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(current().labels().is_empty(), "labels leak out of the poll");
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        drop(fut);
        assert_eq!(seen, vec![vec![("task".to_string(), "a".to_string())]; 2]);
    }
}
