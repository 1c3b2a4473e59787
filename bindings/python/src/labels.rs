//! Labels from Python: the per-thread tags of `add_thread_tag`, and the registry behind
//! `tag_wrapper`'s context variable.
//!
//! - Thread tags (pyroscope-io semantics): each OS thread keeps the pairs added and not yet
//!   removed; a name's value is the one added last. They live in the core's per-thread label
//!   slot: this module keeps the [`LabelGuard`] of the thread's current set in a thread local,
//!   and replaces it (drop the old, enter the new) on every change.
//! - Context labels: `tag_wrapper` stores in a `contextvars.ContextVar` a tuple
//!   `(key_bytes, holder)`, `key_bytes` the little-endian `u64` key of a registry entry here
//!   and `holder` a [`ContextHolder`] that keeps that entry alive. The CPython walker copies the
//!   key of the sampled thread's current context into each sample; the resolver calls
//!   [`lookup`] on the collector thread to turn it back into labels. An entry outlives its last
//!   holder by [`GRACE`], so the samples of a wrapper's last moments, still in the ring, find
//!   their labels. Keys are never reused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyroscope_core::{LabelGuard, LabelSet};

/// How long an entry stays after its last holder is gone.
pub const GRACE: Duration = Duration::from_secs(10);
/// Most cached (key, thread) sets with thread labels added; the cache is emptied when full.
const CACHE_MAX: usize = 4096;

/// `report_thread_id`, `report_thread_name` of the running configuration.
pub static REPORT_THREAD_ID: AtomicBool = AtomicBool::new(false);
/// See [`REPORT_THREAD_ID`].
pub static REPORT_THREAD_NAME: AtomicBool = AtomicBool::new(false);
/// Context labels are read from samples (the CPython walker is registered): `tag_wrapper` uses
/// the context variable. Otherwise it falls back to thread tags, as pyroscope-io does.
pub static CONTEXT_LABELS: AtomicBool = AtomicBool::new(false);

/// Next registry key; 0 means "no context labels" and is never handed out.
static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

struct Entry {
    set: LabelSet,
    labels: Vec<(String, String)>,
    holders: u64,
    /// When the last holder went away.
    dead_since: Option<Instant>,
}

#[derive(Default)]
struct Registry {
    entries: HashMap<u64, Entry>,
    /// The key of each label set in `entries`: a wrapper with the same labels as a live (or
    /// recently dead) entry shares its key, so the registry holds one entry per distinct set.
    by_labels: HashMap<Vec<(String, String)>, u64>,
    /// threading ident -> thread name.
    names: HashMap<u64, String>,
    /// (key, ident) -> the entry's set with the thread labels added.
    cache: HashMap<(u64, u64), LabelSet>,
    last_sweep: Option<Instant>,
}

static REGISTRY: Mutex<Option<Registry>> = Mutex::new(None);

/// Never blocks on a poisoned lock: the registry holds no invariant a panic could break.
fn registry() -> MutexGuard<'static, Option<Registry>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    let mut guard = registry();
    f(guard.get_or_insert_with(Registry::default))
}

impl Registry {
    /// Frees entries whose last holder died more than [`GRACE`] ago (at most once a second).
    fn sweep(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        self.last_sweep = Some(now);
        let before = self.entries.len();
        self.entries.retain(|_, e| e.dead_since.is_none_or(|t| now.duration_since(t) < GRACE));
        if self.entries.len() != before {
            let entries = &self.entries;
            self.by_labels.retain(|_, key| entries.contains_key(key));
            self.cache.retain(|(key, _), _| *key == 0 || entries.contains_key(key));
        }
    }
}

/// Keeps one registry entry alive; the second item of the context variable's tuple.
#[pyclass(module = "pyroscope._native", frozen, weakref)]
pub struct ContextHolder {
    key: u64,
}

#[pymethods]
impl ContextHolder {
    /// The registry key.
    #[getter]
    fn key(&self) -> u64 {
        self.key
    }

    /// The key as 8 little-endian bytes, as the walker reads it.
    #[getter]
    fn key_bytes(&self) -> [u8; 8] {
        self.key.to_le_bytes()
    }

    /// The labels of the entry (sorted by name).
    fn labels(&self) -> Vec<(String, String)> {
        with_registry(|r| r.entries.get(&self.key).map(|e| e.labels.clone()).unwrap_or_default())
    }

    fn __repr__(&self) -> String {
        format!("<pyroscope context labels {} {:?}>", self.key, self.labels())
    }
}

impl Drop for ContextHolder {
    fn drop(&mut self) {
        with_registry(|r| {
            if let Some(e) = r.entries.get_mut(&self.key) {
                e.holders = e.holders.saturating_sub(1);
                if e.holders == 0 {
                    e.dead_since = Some(Instant::now());
                }
            }
        });
    }
}

/// A new registry entry: the labels of `parent` (if it still exists) with `pairs` laid over
/// them. Bad names or values are left out (counted by the core and logged once).
pub fn new_context(parent: u64, pairs: &[(String, String)]) -> ContextHolder {
    let key = with_registry(|r| {
        let now = Instant::now();
        r.sweep(now);
        let mut merged: Vec<(String, String)> = match r.entries.get(&parent) {
            Some(p) if parent != 0 => p.labels.clone(),
            _ => Vec::new(),
        };
        for (k, v) in pairs {
            merged.retain(|(n, _)| n != k);
            merged.push((k.clone(), v.clone()));
        }
        let set = LabelSet::new_lossy(&merged);
        let labels = set.labels();
        if let Some(e) = r.by_labels.get(&labels).and_then(|k| Some((*k, r.entries.get_mut(k)?))) {
            e.1.holders += 1;
            e.1.dead_since = None;
            return e.0;
        }
        let key = NEXT_KEY.fetch_add(1, Ordering::Relaxed);
        r.by_labels.insert(labels.clone(), key);
        r.entries.insert(key, Entry { set, labels, holders: 1, dead_since: None });
        key
    });
    ContextHolder { key }
}

/// The labels of a sample: those of context key `context_key` (0 = none) plus, when enabled,
/// `thread_id` (the `threading` ident, as pyroscope-io) and `thread_name` (`pid` is a sample
/// label of the agent's, on every sample: `AgentBuilder::sample_label`). What the
/// CPython resolver calls on the collector thread; never touches Python.
pub fn lookup(context_key: u64, thread_ident: u64) -> Option<LabelSet> {
    let (id_on, name_on) = (REPORT_THREAD_ID.load(Ordering::Relaxed), REPORT_THREAD_NAME.load(Ordering::Relaxed));
    with_registry(|r| {
        r.sweep(Instant::now());
        // A key past its grace period (or unknown) gives no context labels; the thread ones stay.
        let base = if context_key == 0 { None } else { r.entries.get(&context_key) };
        if !(id_on || name_on) {
            return base.map(|e| e.set.clone());
        }
        let context_key = if base.is_some() { context_key } else { 0 };
        let ident = if id_on || name_on { thread_ident } else { 0 };
        if let Some(set) = r.cache.get(&(context_key, ident)) {
            return Some(set.clone());
        }
        let mut pairs = base.map(|e| e.labels.clone()).unwrap_or_default();
        let mut put = |k: &str, v: String| {
            pairs.retain(|(n, _)| n != k);
            pairs.push((k.to_owned(), v));
        };
        if id_on {
            put("thread_id", thread_ident.to_string());
        }
        if name_on {
            if let Some(name) = r.names.get(&thread_ident) {
                put("thread_name", name.clone());
            }
        }
        let set = LabelSet::new_lossy(&pairs);
        if r.cache.len() >= CACHE_MAX {
            r.cache.clear();
        }
        r.cache.insert((context_key, ident), set.clone());
        Some(set)
    })
}

/// Records the name of the thread with `threading` ident `ident` (None: the thread ended).
pub fn set_thread_name(ident: u64, name: Option<String>) {
    with_registry(|r| {
        match name {
            Some(n) => {
                if r.names.get(&ident) == Some(&n) {
                    return;
                }
                r.names.insert(ident, n);
            }
            None => {
                r.names.remove(&ident);
            }
        }
        r.cache.retain(|(_, i), _| *i != ident);
    });
}

/// Entries in the registry now (live or in their grace period).
pub fn registry_len() -> usize {
    with_registry(|r| r.entries.len())
}

/// Frees entries past their grace period now, whatever the time of the last sweep (tests).
pub fn sweep_now() {
    with_registry(|r| {
        r.last_sweep = None;
        r.sweep(Instant::now());
    });
}

/// A thread's added tags, in the order added, and the guard of their set in the core's slot.
type ThreadTags = (Vec<(String, String)>, Option<LabelGuard>);

thread_local! {
    static THREAD_TAGS: RefCell<ThreadTags> = const { RefCell::new((Vec::new(), None)) };
}

/// Re-enters this thread's tag set after a change.
fn apply(tags: &mut ThreadTags) {
    // The old guard restores what was below it before the new set is entered over that.
    tags.1 = None;
    if tags.0.is_empty() {
        return;
    }
    // A name's last added value wins; new_lossy keeps the last of repeated names, but counts
    // them as rejected duplicates: give it each name once.
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(tags.0.len());
    for (k, v) in &tags.0 {
        pairs.retain(|(n, _)| n != k);
        pairs.push((k, v));
    }
    tags.1 = Some(LabelSet::new_lossy(&pairs).enter());
}

/// `add_thread_tag(key, value)`: pyroscope-io semantics (a set of pairs per thread).
pub fn add_thread_tag(key: String, value: String) {
    let _ = THREAD_TAGS.try_with(|t| {
        let mut t = t.borrow_mut();
        if t.0.iter().any(|(k, v)| *k == key && *v == value) {
            // Already there: it becomes the last added, so its value wins.
            t.0.retain(|(k, v)| !(*k == key && *v == value));
        }
        t.0.push((key, value));
        apply(&mut t);
    });
}

/// `remove_thread_tag(key, value)`: removes that pair if present.
pub fn remove_thread_tag(key: &str, value: &str) {
    let _ = THREAD_TAGS.try_with(|t| {
        let mut t = t.borrow_mut();
        let before = t.0.len();
        t.0.retain(|(k, v)| !(k == key && v == value));
        if t.0.len() != before {
            apply(&mut t);
        }
    });
}

/// This thread's tags in force (a name's last added value), sorted by name.
pub fn thread_tags() -> Vec<(String, String)> {
    pyroscope_core::current_labels().labels()
}

thread_local! {
    /// The registry's lock, held by the thread that forks across `fork()` (see [`before_fork`]).
    static FORK_HOLD: RefCell<Option<MutexGuard<'static, Option<Registry>>>> = const { RefCell::new(None) };
}

/// The core's fork handler (through the resolver): takes the registry's lock so the child never
/// inherits it held by the collector thread (which does not exist there).
pub fn before_fork() {
    let guard = registry();
    let _ = FORK_HOLD.try_with(|h| *h.borrow_mut() = Some(guard));
}

/// After `fork()`, in the parent and the child: gives the lock back.
pub fn after_fork() {
    let _ = FORK_HOLD.try_with(|h| drop(h.borrow_mut().take()));
}
