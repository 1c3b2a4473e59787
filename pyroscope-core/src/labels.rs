//! Labels attached to samples at the instant they are taken.
//!
//! A label set is interned once into a global table and named by a `u32` id: the low
//! [`INDEX_BITS`] bits pick a table entry, the rest are that entry's generation. Each thread
//! owns one slot (see [`crate::thread::ThreadState`]) holding the id in force; the signal
//! handler reads it with a single relaxed atomic load, and entering a pre-built [`LabelSet`]
//! on a thread without labels is a single atomic store. Nothing here runs in signal context
//! except that load.
//!
//! # Reclamation
//! Sets no longer used are freed by the collector when it closes a window ([`reclaim`]), so
//! per-request or per-user labels never exhaust the table. A set is in use while
//! - a [`LabelSet`] handle (a counted reference) names it, including the handle a guard
//!   keeps on the set it restores on drop;
//! - a thread slot holds its id;
//! - a sample of the window being closed, an allocation sample not yet reported, or a live
//!   sampled allocation carries its id;
//! - it was looked up (interned again, merged, read back) since the previous pass.
//!
//! A set unused at two passes in a row is freed: the pass in between drains every ring record
//! that was written while the set was still in a slot. Its entry gets a new generation before
//! reuse, so an id that outlived its set (a record delayed by more than a window) resolves to
//! no labels, never to another set's. At [`MAX_LABEL_SETS`] live sets, new sets map to the
//! overflow set `pyroscope_overflow="true"` (counted). With no agent running there is no
//! collector and no record in flight: a label call that finds the table full runs a pass
//! itself and frees at once what no handle or slot holds. No lock is taken on the signal path;
//! the table's lock is taken by label calls that intern or merge, and by a pass for one batch
//! of entries at a time ([`Pass`]). See docs/labels.md.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::sync::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::thread::{current_slot, ThreadState};

/// Most label sets (distinct combinations) alive at once; beyond it new sets map to the
/// overflow set until the collector reclaims unused ones.
pub const MAX_LABEL_SETS: usize = 1 << 16;
/// Most dynamic labels on one sample (the server allows 100).
pub const MAX_SAMPLE_LABELS: usize = 32;
/// Longest label value, in bytes (the server's `max-label-value-length`).
pub const MAX_VALUE_LEN: usize = 2048;
/// The one label of the set that stands for every set refused at the live cap.
pub const OVERFLOW_LABEL: (&str, &str) = ("pyroscope_overflow", "true");

/// One label: a validated name and value.
pub type Label = (Arc<str>, Arc<str>);

/// Bits of an id that pick the table entry; the others hold the entry's generation.
const INDEX_BITS: u32 = 17;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;
const GENERATIONS: u32 = 1 << (32 - INDEX_BITS);
/// Id of the empty label set (entry 0, never freed).
pub(crate) const EMPTY: u32 = 0;
/// Id of the overflow set (entry 1, never freed).
pub(crate) const OVERFLOW: u32 = 1;
const FIRST_RECLAIMABLE: usize = 2;
/// Most cached (outer, inner) -> merged pairs.
const MAX_MERGED: usize = 4 * MAX_LABEL_SETS;

fn index_of(id: u32) -> usize {
    (id & INDEX_MASK) as usize
}

/// One interned set. The table holds one reference; every [`LabelSet`] handle holds another.
struct SetEntry {
    id: u32,
    labels: Arc<[Label]>,
    /// The table's pass number when this set was last looked up.
    stamp: AtomicU32,
}

impl SetEntry {
    /// Marks a lookup during `pass` (a store only on the first lookup of a pass, so entering
    /// a popular set from many threads reads its cache line without writing it).
    fn touch(&self, pass: u32) {
        if self.stamp.load(Ordering::Relaxed) != pass {
            self.stamp.store(pass, Ordering::Relaxed);
        }
    }
}

/// The interned sets. Reads (lookups, merges from the cache, resolving) take the lock shared;
/// interning a new set and reclaiming take it exclusively.
struct Table {
    entries: Vec<Option<Arc<SetEntry>>>,
    /// Per entry: unused at the previous pass.
    idle: Vec<bool>,
    generations: Vec<u32>,
    /// Freed entries, reused oldest first (spreads generations over all entries).
    free: VecDeque<usize>,
    index: HashMap<Arc<[Label]>, u32>,
    /// (outer set, inner set) -> merged set, so nested guards cost a lookup, not a merge.
    merged: HashMap<(u32, u32), u32>,
    live: usize,
    /// Most live sets (not counting the empty and the overflow set).
    cap: usize,
    /// Reclaim passes so far; see [`SetEntry::stamp`].
    pass: u32,
    /// No pass on a label call before this (see [`intern`]).
    next_call_pass: Option<Instant>,
}

impl Table {
    fn new(cap: usize) -> Self {
        let overflow: Arc<[Label]> = Arc::from(vec![(Arc::from(OVERFLOW_LABEL.0), Arc::from(OVERFLOW_LABEL.1))]);
        let entry = Arc::new(SetEntry { id: OVERFLOW, labels: overflow.clone(), stamp: AtomicU32::new(0) });
        let mut index = HashMap::new();
        index.insert(overflow, OVERFLOW);
        Table {
            entries: vec![None, Some(entry)],
            idle: vec![false; 2],
            generations: vec![0; 2],
            free: VecDeque::new(),
            index,
            merged: HashMap::new(),
            live: 0,
            cap,
            pass: 0,
            next_call_pass: None,
        }
    }

    /// The entry `id` names, if it is still that entry's generation.
    fn get(&self, id: u32) -> Option<&Arc<SetEntry>> {
        self.entries.get(index_of(id))?.as_ref().filter(|e| e.id == id)
    }

    /// A handle on set `id`: the empty set for [`EMPTY`] and for ids whose set was reclaimed.
    fn handle(&self, id: u32) -> LabelSet {
        let entry = self.get(id).cloned();
        if let Some(e) = &entry {
            e.touch(self.pass);
        }
        LabelSet { entry }
    }

    fn lookup(&self, key: &[Label]) -> Option<LabelSet> {
        self.index.get(key).map(|id| self.handle(*id))
    }

    /// Interns `key` (sorted, names unique); `None` when `cap` sets are live.
    fn insert(&mut self, key: Arc<[Label]>) -> Option<LabelSet> {
        if let Some(set) = self.lookup(&key) {
            return Some(set);
        }
        if self.live >= self.cap {
            return None;
        }
        let index = match self.free.pop_front() {
            Some(i) => i,
            None => {
                self.entries.push(None);
                self.idle.push(false);
                self.generations.push(0);
                self.entries.len() - 1
            }
        };
        let id = (self.generations[index] << INDEX_BITS) | index as u32;
        let entry = Arc::new(SetEntry { id, labels: key.clone(), stamp: AtomicU32::new(self.pass) });
        self.entries[index] = Some(entry.clone());
        self.idle[index] = false;
        self.index.insert(key, id);
        self.live += 1;
        Some(LabelSet { entry: Some(entry) })
    }

    /// Starts a pass: lookups from now on stamp their set with the new pass number. Returns
    /// the previous one, which lookups since the previous pass stamped.
    fn begin_pass(&mut self) -> u32 {
        let since = self.pass;
        self.pass = self.pass.wrapping_add(1);
        since
    }

    /// One whole reclaim pass over a table the caller owns (see [`Pass`]).
    #[cfg(test)]
    fn reclaim(
        &mut self,
        used: Vec<bool>,
        slot_ids: impl FnOnce(&mut dyn FnMut(u32)),
        settled: bool,
    ) -> Vec<Arc<SetEntry>> {
        let mut pass = Pass::new(self, used, settled);
        pass.scan(self, usize::MAX);
        pass.read_slots(slot_ids);
        pass.unlink(self, usize::MAX);
        pass.freed
    }
}

/// Most table entries a pass looks at, or settles, under one hold of the table's lock.
const PASS_BATCH: usize = 1024;

/// One reclaim pass (see the module docs), in steps, so that no label call waits for a walk
/// of the whole table:
/// 1. [`Pass::new`] (lock exclusive, constant time) starts a new pass number;
/// 2. [`Pass::scan`] (lock shared, a batch of entries per hold) notes the candidates: the sets
///    with no handle, not named by the collector and not looked up lately, and the idle ones;
/// 3. [`Pass::read_slots`] (no table lock) marks the sets in thread slots;
/// 4. [`Pass::unlink`] (lock exclusive, a batch of candidates per hold) checks each candidate
///    again and frees the unused ones; the caller drops their memory after the lock.
///
/// Why a set in use is never freed: handles are counted before slots are read. A handle is
/// made only by a lookup (which stamps the set with the pass number of step 1, so step 4 sees
/// it) or by cloning a handle (which step 2 counts). A slot takes an id only while a handle
/// on it exists, and stores it before that handle is dropped: a set step 2 sees with no
/// handle is either in a slot step 3 sees (the fence orders the count read before the slot
/// reads) or stays out of every slot until a lookup stamps it. Passes never overlap
/// ([`PASS`]), so entries are only freed here.
struct Pass {
    /// The pass number lookups since the previous pass stamped.
    since: u32,
    /// No record or window can hold an id (no agent runs): a set unused now is freed now.
    settled: bool,
    /// Per entry (as many as the table had at step 1): named by the collector, or in a slot.
    used: Vec<bool>,
    /// Ids of the entries whose state may change at step 4.
    candidates: Vec<u32>,
    /// Next entry to scan, next candidate to settle.
    scanned: usize,
    settled_upto: usize,
    freed: Vec<Arc<SetEntry>>,
    /// The merge cache, when step 4 dropped it (freed after the lock).
    merged: HashMap<(u32, u32), u32>,
    /// Live sets after the last step 4 batch.
    live: usize,
    /// Exclusive holds of the lock, and the most entries settled under one.
    writes: usize,
    most_per_write: usize,
}

impl Pass {
    fn new(t: &mut Table, mut used: Vec<bool>, settled: bool) -> Pass {
        let since = t.begin_pass();
        used.resize(t.entries.len(), false);
        Pass {
            since,
            settled,
            used,
            candidates: Vec::new(),
            scanned: FIRST_RECLAIMABLE,
            settled_upto: 0,
            freed: Vec::new(),
            merged: HashMap::new(),
            live: t.live,
            writes: 1,
            most_per_write: 0,
        }
    }

    /// Whether the set at entry `i` is in use, by what this pass knows now.
    fn in_use(&self, t: &Table, i: usize, entry: &Arc<SetEntry>) -> bool {
        let stamp = entry.stamp.load(Ordering::Relaxed);
        self.used.get(i).copied().unwrap_or(true)
            || Arc::strong_count(entry) > 1
            || stamp == t.pass
            || (!self.settled && stamp == self.since)
    }

    /// Step 2 on up to `batch` more entries; true once every entry is scanned.
    fn scan(&mut self, t: &Table, batch: usize) -> bool {
        let end = self.used.len().min(self.scanned.saturating_add(batch));
        for i in self.scanned..end {
            let Some(entry) = &t.entries[i] else { continue };
            if t.idle[i] || !self.in_use(t, i, entry) {
                self.candidates.push(entry.id);
            }
        }
        self.scanned = end;
        end == self.used.len()
    }

    /// Step 3: marks the ids `slot_ids` gives (the id in every thread slot).
    fn read_slots(&mut self, slot_ids: impl FnOnce(&mut dyn FnMut(u32))) {
        std::sync::atomic::fence(Ordering::SeqCst);
        let used = &mut self.used;
        slot_ids(&mut |id| {
            if let Some(u) = used.get_mut(index_of(id)) {
                *u = true;
            }
        });
    }

    /// Step 4 on up to `batch` more candidates: a set unused at two passes in a row (at this
    /// one if settled) is freed. True once every candidate is settled.
    fn unlink(&mut self, t: &mut Table, batch: usize) -> bool {
        let end = self.candidates.len().min(self.settled_upto.saturating_add(batch));
        for &id in &self.candidates[self.settled_upto..end] {
            let i = index_of(id);
            let Some(in_use) = t.get(id).map(|e| self.in_use(t, i, e)) else { continue };
            if in_use || !(t.idle[i] || self.settled) {
                t.idle[i] = !in_use;
                continue;
            }
            if let Some(entry) = t.entries[i].take() {
                t.index.remove(&entry.labels);
                self.freed.push(entry);
            }
            t.idle[i] = false;
            t.generations[i] = (t.generations[i] + 1) % GENERATIONS;
            t.free.push_back(i);
            t.live -= 1;
        }
        self.most_per_write = self.most_per_write.max(end - self.settled_upto);
        self.settled_upto = end;
        self.live = t.live;
        let done = end == self.candidates.len();
        // Cached merges naming a freed set never match again (generations); drop the cache
        // once it is half full.
        if done && !self.freed.is_empty() && t.merged.len() >= MAX_MERGED / 2 {
            self.merged = std::mem::take(&mut t.merged);
        }
        done
    }
}

/// Runs one pass on the table behind `lock`, holding the lock for one batch at a time (see
/// [`Pass`]); the caller holds [`PASS`]. `None` if there is no table.
fn run_pass(
    lock: &RwLock<Option<Table>>,
    used: Vec<bool>,
    slot_ids: impl FnOnce(&mut dyn FnMut(u32)),
    settled: bool,
) -> Option<Pass> {
    let mut pass = Pass::new(lock.write().as_mut()?, used, settled);
    while !pass.scan(lock.read().as_ref()?, PASS_BATCH) {}
    pass.read_slots(slot_ids);
    loop {
        pass.writes += 1;
        if pass.unlink(lock.write().as_mut()?, PASS_BATCH) {
            return Some(pass);
        }
        // Let the label calls that queued behind this batch in before the next one: a woken
        // reader needs a few microseconds to take the lock, which this thread would otherwise
        // take again first (tens of microseconds per batch, a few ms per full pass).
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Marks the table entries `ids` name, whatever their generation (an id of a reclaimed set
/// only keeps its entry's current set one pass longer).
fn mark(ids: impl IntoIterator<Item = u32>) -> Vec<bool> {
    let mut used = Vec::new();
    for id in ids {
        let i = index_of(id);
        if i >= used.len() {
            used.resize(i + 1, false);
        }
        used[i] = true;
    }
    used
}

static TABLE: RwLock<Option<Table>> = RwLock::new(None);
/// Held for a whole pass, so passes never overlap; taken before the table's lock.
static PASS: Mutex<()> = Mutex::new(());

static LIVE: AtomicU64 = AtomicU64::new(0);
static OVERFLOWED: AtomicU64 = AtomicU64::new(0);
static RECLAIMED: AtomicU64 = AtomicU64::new(0);

/// Why a label was left out of a set by [`push`], [`tag_wrapper`] or [`LabelSet::new_lossy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejection {
    Name = 0,
    Value = 1,
    Duplicate = 2,
    TooMany = 3,
}

static REJECTED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
/// Kinds of trouble already logged: the four rejections, then the live cap.
static LOGGED: [AtomicBool; 5] = [const { AtomicBool::new(false) }; 5];

fn log_first(kind: usize, message: impl FnOnce() -> String) {
    if !LOGGED[kind].swap(true, Ordering::Relaxed) {
        log::warn!("pyroscope: {}", message());
    }
}

fn reject(kind: Rejection, error: &Error) {
    REJECTED[kind as usize].fetch_add(1, Ordering::Relaxed);
    log_first(kind as usize, || format!("label left out (further ones are only counted in stats): {error}"));
}

fn note_overflow() {
    OVERFLOWED.fetch_add(1, Ordering::Relaxed);
    log_first(4, || {
        format!(
            "{MAX_LABEL_SETS} label sets in use: new sets are recorded as {}={} until unused ones are reclaimed",
            OVERFLOW_LABEL.0, OVERFLOW_LABEL.1
        )
    });
}

/// Label counters for [`crate::Stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub live: u64,
    pub overflowed: u64,
    pub reclaimed: u64,
    pub rejected_name: u64,
    pub rejected_value: u64,
    pub rejected_duplicate: u64,
    pub rejected_too_many: u64,
}

/// The process-wide label counters.
pub(crate) fn counters() -> Counters {
    let r = |k: Rejection| REJECTED[k as usize].load(Ordering::Relaxed);
    Counters {
        live: LIVE.load(Ordering::Relaxed),
        overflowed: OVERFLOWED.load(Ordering::Relaxed),
        reclaimed: RECLAIMED.load(Ordering::Relaxed),
        rejected_name: r(Rejection::Name),
        rejected_value: r(Rejection::Value),
        rejected_duplicate: r(Rejection::Duplicate),
        rejected_too_many: r(Rejection::TooMany),
    }
}

fn read<R>(f: impl FnOnce(&Table) -> R) -> Option<R> {
    TABLE.read().as_ref().map(f)
}

fn write<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    let mut guard = TABLE.write();
    let table = guard.get_or_insert_with(|| Table::new(MAX_LABEL_SETS));
    let out = f(table);
    LIVE.store(table.live as u64, Ordering::Relaxed);
    out
}

/// The labels of set `id`, sorted by name. [`EMPTY`] and ids of reclaimed sets give none.
pub(crate) fn resolve(id: u32) -> Arc<[Label]> {
    read(|t| t.get(id).map(|e| e.labels.clone())).flatten().unwrap_or_else(|| Arc::from(Vec::new()))
}

/// Interns `labels` (names unique); `None` at the live cap.
fn intern(mut labels: Vec<Label>) -> Option<LabelSet> {
    if labels.is_empty() {
        return Some(LabelSet::empty());
    }
    labels.sort();
    if let Some(set) = read(|t| t.lookup(&labels)).flatten() {
        return Some(set);
    }
    // With no agent running no collector reclaims, but nothing holds ids but handles and
    // slots either: at the cap, free what those do not hold (at most once a second when that
    // frees little, so a full table of held sets does not make every call scan it). A pass
    // already under way on another thread is not waited for.
    let due = read(|t| t.live >= t.cap && t.next_call_pass.is_none_or(|at| Instant::now() >= at));
    let mut freed = None;
    if due == Some(true) && !crate::agent::running() {
        if let Some(_pass) = PASS.try_lock() {
            let pass = run_pass(&TABLE, Vec::new(), |f| crate::thread::for_each_label_id(f), true);
            freed = pass.map(|p| p.freed.len());
        }
    }
    write(|t| {
        if let Some(freed) = freed {
            RECLAIMED.fetch_add(freed as u64, Ordering::Relaxed);
            t.next_call_pass = (freed < t.cap / 16).then(|| Instant::now() + Duration::from_secs(1));
        }
        t.insert(Arc::from(labels))
    })
}

/// Interns `labels`, or hands out the overflow set at the live cap (counted).
fn intern_or_overflow(labels: Vec<Label>) -> LabelSet {
    intern(labels).unwrap_or_else(|| {
        note_overflow();
        read(|t| t.handle(OVERFLOW)).unwrap_or_default()
    })
}

/// Stores in `slot` the set `inner` laid over the set `outer` (the id `slot` holds): inner's
/// values win for names both have. Returns a handle on `outer` (empty if it was reclaimed).
fn merge_into(slot: &AtomicU32, outer: u32, inner: &LabelSet) -> LabelSet {
    let cached = read(|t| {
        let prev = t.handle(outer);
        let next = if prev.is_empty() || inner.is_empty() || prev == *inner {
            Some(if inner.is_empty() { prev.id() } else { inner.id() })
        } else {
            t.merged.get(&(outer, inner.id())).and_then(|m| t.get(*m)).map(|m| {
                m.touch(t.pass);
                m.id
            })
        };
        match next {
            // Under the lock no pass can free `next`; once stored, the slot keeps it.
            Some(id) => {
                slot.store(id, Ordering::Release);
                Ok(prev)
            }
            None => Err(prev),
        }
    });
    let prev = match cached {
        Some(Ok(prev)) => return prev,
        Some(Err(prev)) => prev,
        None => {
            slot.store(inner.id(), Ordering::Release);
            return LabelSet::empty();
        }
    };
    let (a, b) = (prev.resolved(), inner.resolved());
    let mut labels: Vec<Label> = b.to_vec();
    let mut dropped = 0;
    for label in a.iter().filter(|(n, _)| !b.iter().any(|(m, _)| m == n)) {
        if labels.len() < MAX_SAMPLE_LABELS {
            labels.push(label.clone());
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        reject(
            Rejection::TooMany,
            &Error::TooManyLabels { count: MAX_SAMPLE_LABELS + dropped, max: MAX_SAMPLE_LABELS },
        );
    }
    let next = intern_or_overflow(labels);
    slot.store(next.id(), Ordering::Release);
    if next.id() != OVERFLOW {
        write(|t| {
            // All three sets are held (by `prev`, `inner` and `next`), so the entry is valid.
            if t.merged.len() < MAX_MERGED {
                t.merged.insert((outer, inner.id()), next.id());
            }
        });
    }
    prev
}

/// The id of `inner` laid over set `outer` (as [`LabelSet::enter`] merges them), for the
/// collector: the interned merge is cached, and the ids a window's samples carry stay
/// interned until the window is reported (see [`reclaim`]).
pub(crate) fn merge_ids(outer: u32, inner: &LabelSet) -> u32 {
    let slot = AtomicU32::new(EMPTY);
    drop(merge_into(&slot, outer, inner));
    slot.load(Ordering::Acquire)
}

/// Frees the label sets nobody uses any more (see the module docs). `referenced` are the ids
/// the collector still holds: the samples of the window it just closed, its allocation samples
/// not yet reported and the live sampled allocations. The collector calls it at each window
/// close, after draining the ring.
pub(crate) fn reclaim(referenced: impl IntoIterator<Item = u32>) {
    let used = mark(referenced);
    let _pass = PASS.lock();
    let Some(pass) = run_pass(&TABLE, used, |f| crate::thread::for_each_label_id(f), false) else { return };
    LIVE.store(pass.live as u64, Ordering::Relaxed);
    RECLAIMED.fetch_add(pass.freed.len() as u64, Ordering::Relaxed);
    // The sets' memory (and a dropped merge cache) is given back after the lock, which label
    // calls may be waiting for.
    drop(pass);
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

/// Checks the value of a sample label: free text as in Go's `pprof.Do` (`, { } =` and spaces
/// included, carried inside the pprof), 1..=2048 bytes, no control characters.
///
/// Empty values are refused because Pyroscope's label model (Prometheus') treats an empty
/// value as no label at all; control characters because a query cannot select them and the
/// UI shows them as nothing (a value read with its trailing newline is a bug worth a log line).
pub fn validate_value(name: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty() && value.len() <= MAX_VALUE_LEN && !value.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidLabelValue { name: name.to_owned(), value: value.to_owned() })
    }
}

/// Checks the value of a static tag (a series label): a sample value without `, { } =`, which
/// the `/ingest` series name `app{k=v,...}` cannot carry.
pub fn validate_tag_value(name: &str, value: &str) -> Result<()> {
    validate_value(name, value)
        .ok()
        .filter(|()| !value.contains([',', '{', '}', '=']))
        .ok_or_else(|| Error::InvalidTagValue { name: name.to_owned(), value: value.to_owned() })
}

/// Checks one dynamic label (name and value) without interning it: what [`LabelSet::new`]
/// checks for each pair.
pub fn validate_label(name: &str, value: &str) -> Result<()> {
    validate_name(name)?;
    validate_value(name, value)
}

/// Validates pairs and returns them as owned labels; the first bad one is the error.
fn validate_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<Vec<Label>> {
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

/// The valid labels of `pairs`: bad ones left out, a repeated name's last value kept (as Go's
/// `pprof.Labels`), the first [`MAX_SAMPLE_LABELS`] kept; each left-out label is counted and
/// logged once per kind.
fn lossy_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<Label> {
    let mut out: Vec<Label> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let (k, v) = (k.as_ref(), v.as_ref());
        if let Err(e) = validate_name(k) {
            reject(Rejection::Name, &e);
            continue;
        }
        if let Err(e) = validate_value(k, v) {
            reject(Rejection::Value, &e);
            continue;
        }
        if let Some(slot) = out.iter_mut().find(|(n, _)| &**n == k) {
            reject(Rejection::Duplicate, &Error::DuplicateLabel { name: k.to_owned() });
            slot.1 = Arc::from(v);
            continue;
        }
        if out.len() == MAX_SAMPLE_LABELS {
            reject(Rejection::TooMany, &Error::TooManyLabels { count: pairs.len(), max: MAX_SAMPLE_LABELS });
            continue;
        }
        out.push((Arc::from(k), Arc::from(v)));
    }
    out
}

/// An interned, validated set of dynamic labels: a counted reference, cheap to clone; create
/// it once and [`enter`](LabelSet::enter) it as often as you like. Entering it on a thread
/// that has no labels in force costs one atomic store. The set stays interned while any
/// handle on it exists; the table reclaims it some time after the last one is dropped.
#[derive(Clone, Default)]
pub struct LabelSet {
    /// `None` for the empty set.
    entry: Option<Arc<SetEntry>>,
}

impl PartialEq for LabelSet {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

impl Eq for LabelSet {}

impl std::hash::Hash for LabelSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id().hash(state);
    }
}

impl std::fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let labels = self.resolved();
        f.debug_map().entries(labels.iter().map(|(k, v)| (&**k, &**v))).finish()
    }
}

impl LabelSet {
    /// Validates and interns `pairs`. Errors name the offending label; while 65,536 sets are
    /// live, a new set is [`Error::LabelSetLimit`] (counted in
    /// `Stats::label_sets_overflowed`). Code that must run whatever the labels are uses
    /// [`LabelSet::new_lossy`], [`push`] or [`tag_wrapper`].
    pub fn new<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Result<Self> {
        intern(validate_pairs(pairs)?).ok_or_else(|| {
            note_overflow();
            Error::LabelSetLimit { limit: MAX_LABEL_SETS }
        })
    }

    /// Interns the valid labels of `pairs`, never failing: a bad name or value is left out, a
    /// repeated name keeps its last value, labels past the 32 a sample may carry are left out
    /// (each counted in `Stats::labels_rejected_*` and logged once per kind); at the live cap
    /// the set is the overflow set `pyroscope_overflow="true"` (counted).
    pub fn new_lossy<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Self {
        intern_or_overflow(lossy_pairs(pairs))
    }

    /// The empty set.
    pub fn empty() -> Self {
        LabelSet { entry: None }
    }

    fn is_empty(&self) -> bool {
        self.entry.is_none()
    }

    fn resolved(&self) -> Arc<[Label]> {
        self.entry.as_ref().map_or_else(|| Arc::from(Vec::new()), |e| e.labels.clone())
    }

    /// The labels, sorted by name.
    pub fn labels(&self) -> Vec<(String, String)> {
        self.resolved().iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The interned id: names this set for as long as any handle on it exists (after the set
    /// is reclaimed its entry is reused under a new generation, so the id never names another
    /// set).
    pub fn id(&self) -> u32 {
        self.entry.as_ref().map_or(EMPTY, |e| e.id)
    }

    /// Makes these labels (laid over the ones already in force) current on this thread until
    /// the guard drops. Never fails: a merged set past 32 labels keeps these labels
    /// and as many of the outer ones as fit, and at the live cap it is the overflow set.
    pub fn enter(&self) -> LabelGuard {
        let slot = current_slot();
        let prev = slot.label_id.load(Ordering::Relaxed);
        if prev == EMPTY {
            // The id is protected by `self` until the store is done, then by the slot.
            slot.label_id.store(self.id(), Ordering::Release);
            return LabelGuard { slot, prev, _prev_set: LabelSet::empty(), _not_send: PhantomData };
        }
        let prev_set = merge_into(&slot.label_id, prev, self);
        // The guard keeps `prev` interned until it has put it back in the slot.
        LabelGuard { slot, prev: prev_set.id(), _prev_set: prev_set, _not_send: PhantomData }
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
    /// Keeps the set `prev` names interned while this guard hides it.
    _prev_set: LabelSet,
    _not_send: PhantomData<*const ()>,
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        self.slot.label_id.store(self.prev, Ordering::Release);
    }
}

/// Validates, interns and enters `pairs` on this thread; never fails: the valid labels are
/// applied (see [`LabelSet::new_lossy`] and [`LabelSet::enter`]).
pub fn push<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> LabelGuard {
    LabelSet::new_lossy(pairs).enter()
}

/// Runs `f` with `pairs` added to this thread's labels; every sample taken meanwhile carries
/// them. `f` always runs: bad labels are left out (counted in [`crate::Stats`] and logged once
/// per kind), and `f` runs with the valid ones.
pub fn tag_wrapper<K: AsRef<str>, V: AsRef<str>, R>(pairs: &[(K, V)], f: impl FnOnce() -> R) -> R {
    let _guard = push(pairs);
    f()
}

/// Samples the calling thread's CPU from now on. A thread is otherwise sampled from its first
/// label call or from the collector's next scan of the process's threads (within 100 ms): call
/// this first thing in a short-lived thread that takes no labels. Later calls are cheap.
pub fn register_thread() {
    current_slot();
}

/// Samples the calling thread's wall-clock time too, running or waiting, while an agent runs:
/// a `wall` profile (`wall` nanoseconds) next to `process_cpu`, for event-loop threads whose
/// waits matter. Each sample interrupts the thread (a blocked `epoll_wait` returns `EINTR`,
/// which event loops retry). Later calls are cheap.
pub fn sample_wall_time() {
    let state = current_slot();
    if !state.wall.swap(true, Ordering::SeqCst) {
        crate::thread::announce(&state);
    }
}

/// The labels in force on this thread now.
pub fn current() -> LabelSet {
    let id = current_slot().label_id_now();
    if id == EMPTY {
        return LabelSet::empty();
    }
    read(|t| t.handle(id)).unwrap_or_default()
}

/// The labels in force now on thread `tid` (a Linux thread id, as `gettid` returns), read from
/// its slot: empty when the thread never took labels or has exited. For samplers that record
/// other threads (a binding's wall-clock sampler): the labels a CPU sample of that thread would
/// carry. Takes the thread registry's lock; never call it from a signal handler.
pub fn of_thread(tid: i32) -> LabelSet {
    match crate::thread::label_id_of(tid) {
        None | Some(EMPTY) => LabelSet::empty(),
        Some(id) => read(|t| t.handle(id)).unwrap_or_default(),
    }
}

/// The calling thread's label slot, as memory: for bindings that switch labels by a plain
/// store instead of a call (JavaScript writes ids into a typed array over it at every `await`).
/// The slot holds the [`LabelSet::id`] in force on the thread; the signal handler reads it at
/// each sample. Keeps the thread's state alive while it exists.
pub struct LabelSlot {
    state: Arc<ThreadState>,
}

impl LabelSlot {
    /// The calling thread's slot (it is sampled from now on, as after [`register_thread`]).
    pub fn current() -> LabelSlot {
        LabelSlot { state: current_slot() }
    }

    /// The slot's address: a 4-byte aligned `u32`. Whoever writes it stores only ids of sets
    /// it holds a [`LabelSet`] handle on (or [`LabelSet::empty`]'s), from the thread the slot
    /// belongs to; an id of a set no handle holds reads as no labels.
    pub fn as_ptr(&self) -> *mut u32 {
        self.state.label_id.as_ptr()
    }

    /// Makes samples of this thread take their labels from `source`, read through the
    /// process's [`crate::LabelReadFn`] (see [`crate::set_label_reader`]), whenever it names a
    /// set; the slot's own id otherwise. 0 removes the source.
    ///
    /// # Safety
    /// Call it on the thread the slot belongs to. `source` must stay valid for the registered
    /// reader until this thread replaces it (with 0 before it frees what `source` points at).
    pub unsafe fn set_source(&self, source: usize) {
        self.state.label_source.store(source, Ordering::Release);
    }
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
        // `WithLabels` has no Drop impl; `set` is never pinned (only borrowed).
        let this = unsafe { self.get_unchecked_mut() };
        let _guard = this.set.enter();
        // SAFETY: see above; `inner` stays where it is for as long as `self` is pinned.
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };
        inner.poll(cx)
    }
}

/// Takes the table's lock before fork, so no other thread of the parent holds it then.
pub(crate) fn prepare_fork() {
    PASS.fork_hold();
    TABLE.fork_hold();
}

/// Gives the lock back, in the parent and in the child.
pub(crate) fn after_fork() {
    TABLE.fork_release();
    PASS.fork_release();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(set: &LabelSet) -> Vec<(String, String)> {
        set.labels()
    }

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.into(), v.into())
    }

    #[test]
    fn interning_is_stable_and_order_free() {
        let a = LabelSet::new(&[("vehicle", "car"), ("region", "eu")]).unwrap();
        let b = LabelSet::new(&[("region", "eu"), ("vehicle", "car")]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.labels(), vec![kv("region", "eu"), kv("vehicle", "car")]);
    }

    #[test]
    fn nested_guards_merge_and_restore() {
        let outer = push(&[("endpoint", "/car"), ("vehicle", "bike")]);
        {
            let _inner = push(&[("vehicle", "car")]);
            assert_eq!(current().labels(), vec![kv("endpoint", "/car"), kv("vehicle", "car")]);
        }
        assert_eq!(current().labels(), vec![kv("endpoint", "/car"), kv("vehicle", "bike")]);
        drop(outer);
        assert!(current().labels().is_empty());
    }

    #[test]
    fn new_gives_typed_errors() {
        assert!(matches!(LabelSet::new(&[("", "x")]), Err(Error::InvalidLabelName { .. })));
        assert!(matches!(LabelSet::new(&[("a-b", "x")]), Err(Error::InvalidLabelName { .. })));
        assert!(matches!(LabelSet::new(&[("__name__", "x")]), Err(Error::ReservedLabelName { .. })));
        assert!(matches!(LabelSet::new(&[("k", "")]), Err(Error::InvalidLabelValue { .. })));
        assert!(matches!(LabelSet::new(&[("k", "line\n")]), Err(Error::InvalidLabelValue { .. })));
        assert!(matches!(LabelSet::new(&[("k", "x".repeat(2049))]), Err(Error::InvalidLabelValue { .. })));
        assert!(matches!(LabelSet::new(&[("k", "1"), ("k", "2")]), Err(Error::DuplicateLabel { .. })));
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(matches!(LabelSet::new(&many), Err(Error::TooManyLabels { .. })));
    }

    #[test]
    fn values_are_free_text_but_tags_are_strict() {
        let text = "a,b {c}=d e";
        let set = LabelSet::new(&[("query", text)]).unwrap();
        assert_eq!(set.labels(), vec![kv("query", text)]);
        assert!(validate_value("query", "héllo wörld, {x=1}").is_ok());
        for bad in ["a,b", "{", "}", "k=v"] {
            assert!(matches!(validate_tag_value("region", bad), Err(Error::InvalidTagValue { .. })), "{bad}");
        }
        assert!(matches!(validate_tag_value("region", ""), Err(Error::InvalidTagValue { .. })));
        assert!(validate_tag_value("region", "eu north").is_ok());
    }

    #[test]
    fn tag_wrapper_always_runs_with_the_valid_labels() {
        let before = counters();
        let seen =
            tag_wrapper(&[("bad key", "x"), ("vehicle", "car"), ("k", ""), ("vehicle", "bike")], || current().labels());
        assert_eq!(seen, vec![kv("vehicle", "bike")]);
        let after = counters();
        assert!(after.rejected_name > before.rejected_name);
        assert!(after.rejected_value > before.rejected_value);
        assert!(after.rejected_duplicate > before.rejected_duplicate);
        // Nothing valid at all: f still runs, unlabelled.
        assert_eq!(tag_wrapper(&[("}", "{")], || 7), 7);
        let many: Vec<(String, String)> = (0..40).map(|i| (format!("k{i:02}"), "v".to_string())).collect();
        let n = tag_wrapper(&many, || current().labels().len());
        assert_eq!(n, MAX_SAMPLE_LABELS);
        assert!(counters().rejected_too_many > before.rejected_too_many);
        assert!(current().labels().is_empty());
    }

    #[test]
    fn merged_sets_past_the_label_limit_keep_the_inner_labels() {
        let outer: Vec<(String, String)> = (0..30).map(|i| (format!("o{i:02}"), "v".to_string())).collect();
        let inner: Vec<(String, String)> = (0..5).map(|i| (format!("i{i}"), "w".to_string())).collect();
        let _o = push(&outer);
        let labels = tag_wrapper(&inner, current);
        assert_eq!(labels.labels().len(), MAX_SAMPLE_LABELS);
        assert!(inner.iter().all(|p| labels.labels().contains(p)));
    }

    /// The ids a pass sees in no slot: a local table, so the test does not depend on threads.
    fn no_slots(_: &mut dyn FnMut(u32)) {}

    fn set_of(t: &mut Table, value: &str) -> Option<LabelSet> {
        let key: Arc<[Label]> = Arc::from(vec![(Arc::from("user"), Arc::from(value))]);
        t.insert(key)
    }

    #[test]
    fn a_million_values_over_many_windows_stay_bounded() {
        const WINDOW: u32 = 15_000;
        let mut t = Table::new(MAX_LABEL_SETS);
        let held = set_of(&mut t, "held").unwrap();
        let held_id = held.id();
        let mut window: Vec<u32> = Vec::new();
        let mut peak_live = 0;
        let mut stale = None;
        for i in 0..1_000_000u32 {
            let set = set_of(&mut t, &format!("u{i}")).unwrap();
            if i % 1000 == 0 {
                // A sample of this window carries it, after its handle is gone.
                window.push(set.id());
            }
            if i == 10 {
                stale = Some(set.id());
            }
            if i % WINDOW == WINDOW - 1 {
                // A window closes: one pass.
                t.reclaim(mark(window.drain(..)), no_slots, false);
                peak_live = peak_live.max(t.live);
            }
        }
        // After a pass, the sets of the last two windows stay; during a window, three.
        let window = WINDOW as usize;
        assert!(peak_live <= 2 * window + 1, "live sets grew to {peak_live}");
        assert!(t.entries.len() <= 3 * window + 4, "table grew to {}", t.entries.len());
        assert!(t.index.len() <= 3 * window + 2);
        assert_eq!(t.get(held_id).map(|e| e.labels.to_vec()), Some(vec![(Arc::from("user"), Arc::from("held"))]));
        assert_eq!(pairs(&held), vec![kv("user", "held")]);
        // An id whose set was freed names nothing, though its entry was reused since.
        let stale = stale.unwrap();
        assert!(t.get(stale).is_none());
        assert!(t.entries[index_of(stale)].is_some(), "the entry was reused");
    }

    #[test]
    fn a_set_is_freed_only_after_two_unused_passes() {
        let mut t = Table::new(16);
        let a = set_of(&mut t, "a").unwrap();
        let id = a.id();
        t.reclaim(Vec::new(), no_slots, false);
        drop(a);
        // Looked up since the previous pass, then unused at this one: kept.
        t.reclaim(Vec::new(), no_slots, false);
        assert!(t.get(id).is_some());
        // In a thread slot: kept.
        t.reclaim(Vec::new(), |f| f(id), false);
        t.reclaim(Vec::new(), no_slots, false);
        assert!(t.get(id).is_some(), "freed one pass after leaving a slot");
        // In the window being closed: kept.
        t.reclaim(mark([id]), no_slots, false);
        t.reclaim(Vec::new(), no_slots, false);
        assert!(t.get(id).is_some());
        t.reclaim(Vec::new(), no_slots, false);
        assert!(t.get(id).is_none(), "unused at two passes in a row");
        assert_eq!(t.live, 0);
        assert_eq!(t.index.len(), 1, "only the overflow set");
    }

    /// A pass scans the slots (the set is in none), then the owning thread stores the set in
    /// its slot (a fast-path `enter`, or a guard restoring it) and drops its last handle, then
    /// the pass would read the handle count: the set must survive.
    #[test]
    fn a_set_entered_and_released_during_the_slot_scan_is_kept() {
        let mut t = Table::new(16);
        let h = set_of(&mut t, "s").unwrap();
        let id = h.id();
        // Age the stamp so only the handle and the slot protect the set.
        t.reclaim(Vec::new(), no_slots, false);
        t.reclaim(Vec::new(), no_slots, false);
        assert!(t.get(id).is_some(), "kept while a handle exists");
        let slot = std::cell::Cell::new(EMPTY);
        let mut h = Some(h);
        // Settled pass (no agent): the slot scan sees nothing, then the thread enters the set
        // and drops its handle.
        t.reclaim(
            Vec::new(),
            |_| {
                slot.set(id);
                drop(h.take());
            },
            true,
        );
        assert!(t.get(id).is_some(), "set {id} freed while a thread slot holds {}", slot.get());
    }

    /// A table of `n` sets no handle holds, unused at two passes already, and a merge cache
    /// `merges` entries full, behind a lock of its own.
    fn full_table(n: usize, merges: usize) -> RwLock<Option<Table>> {
        let mut t = Table::new(MAX_LABEL_SETS);
        for i in 0..n {
            drop(set_of(&mut t, &format!("u{i}")));
        }
        for i in 0..merges as u32 {
            t.merged.insert((i, i + 1), i + 2);
        }
        t.reclaim(Vec::new(), no_slots, false);
        t.reclaim(Vec::new(), no_slots, false);
        assert_eq!(t.live, n);
        RwLock::new(Some(t))
    }

    #[test]
    fn a_pass_holds_the_write_lock_for_one_batch_at_a_time() {
        let lock = full_table(MAX_LABEL_SETS, MAX_MERGED / 2);
        let in_slot =
            lock.read().as_ref().and_then(|t| t.index.get(&[(Arc::from("user"), Arc::from("u7"))][..]).copied());
        let in_slot = in_slot.unwrap();
        let pass = run_pass(
            &lock,
            Vec::new(),
            |f| {
                // No table lock is held while thread slots are read: a label call goes through.
                assert!(lock.read().is_some());
                f(in_slot);
            },
            false,
        )
        .unwrap();
        assert_eq!(pass.freed.len(), MAX_LABEL_SETS - 1);
        assert!(pass.most_per_write <= PASS_BATCH, "{} entries under one write lock", pass.most_per_write);
        assert!(pass.writes > MAX_LABEL_SETS / PASS_BATCH, "{} write locks", pass.writes);
        let guard = lock.read();
        let t = guard.as_ref().unwrap();
        assert_eq!((t.live, t.index.len()), (1, 2), "the set in a slot and the overflow set are left");
        assert!(t.get(in_slot).is_some());
        assert!(t.merged.is_empty(), "the merge cache is dropped once half full");
    }

    /// Figures for docs/labels.md: `cargo test --release -p pyroscope-core --lib
    /// longest_label_call_wait -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run in release mode"]
    fn longest_label_call_wait_during_a_pass() {
        use std::sync::atomic::AtomicBool;
        for merges in [0, MAX_MERGED / 2] {
            let lock = full_table(MAX_LABEL_SETS, merges);
            let key: Vec<Label> = vec![(Arc::from("user"), Arc::from("u1"))];
            let (stop, started) = (AtomicBool::new(false), AtomicBool::new(false));
            let (took, worst) = std::thread::scope(|s| {
                let reader = s.spawn(|| {
                    let mut worst = Duration::ZERO;
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        drop(lock.read().as_ref().map(|t| t.lookup(&key)));
                        worst = worst.max(t0.elapsed());
                        started.store(true, Ordering::Relaxed);
                    }
                    worst
                });
                while !started.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
                let t0 = Instant::now();
                let pass = run_pass(&lock, Vec::new(), no_slots, false).unwrap();
                let took = t0.elapsed();
                stop.store(true, Ordering::Relaxed);
                // All but the set the reader looks up.
                assert!(pass.freed.len() >= MAX_LABEL_SETS - 1, "{} freed", pass.freed.len());
                drop(pass);
                (took, reader.join().unwrap())
            });
            eprintln!("{MAX_LABEL_SETS} sets, {merges} merges: pass {took:?}, longest label-call wait {worst:?}");
        }
    }

    #[test]
    fn the_live_cap_maps_to_overflow_until_sets_are_reclaimed() {
        let mut t = Table::new(4);
        let held: Vec<LabelSet> = (0..4).map(|i| set_of(&mut t, &format!("h{i}")).unwrap()).collect();
        assert!(set_of(&mut t, "more").is_none(), "a fifth live set");
        // Existing sets are still found at the cap.
        assert_eq!(set_of(&mut t, "h0").unwrap(), held[0]);
        drop(held);
        for _ in 0..3 {
            t.reclaim(Vec::new(), no_slots, false);
        }
        assert_eq!(t.live, 0);
        // With no agent (settled), one pass frees what no handle and no slot holds.
        let kept: Vec<LabelSet> = (0..2).map(|i| set_of(&mut t, &format!("k{i}")).unwrap()).collect();
        let in_slot = set_of(&mut t, "slot").unwrap().id();
        let _ = set_of(&mut t, "gone");
        assert_eq!(t.reclaim(Vec::new(), |f| f(in_slot), true).len(), 1);
        assert!(t.get(in_slot).is_some() && kept.iter().all(|k| t.get(k.id()).is_some()));
        drop(kept);
        t.reclaim(Vec::new(), no_slots, true);
        let again = set_of(&mut t, "more").unwrap();
        assert_eq!(pairs(&again), vec![kv("user", "more")]);
        assert_eq!(t.entries.len(), 6, "entries are reused");
    }

    #[test]
    fn the_overflow_label_is_a_valid_label() {
        assert!(
            validate_name(OVERFLOW_LABEL.0).is_ok() && validate_tag_value(OVERFLOW_LABEL.0, OVERFLOW_LABEL.1).is_ok()
        );
        let t = Table::new(1);
        assert_eq!(pairs(&t.handle(OVERFLOW)), vec![kv(OVERFLOW_LABEL.0, OVERFLOW_LABEL.1)]);
    }

    #[test]
    fn a_held_set_survives_the_reclamation_of_others() {
        let held = LabelSet::new(&[("tenant", "kept-across-reclaim")]).unwrap();
        let id = held.id();
        for i in 0..2000 {
            let _ = LabelSet::new(&[("tenant", format!("gone-{i}"))]).unwrap();
        }
        for _ in 0..3 {
            reclaim([]);
        }
        assert_eq!(resolve(id).len(), 1);
        assert_eq!(pairs(&held), vec![kv("tenant", "kept-across-reclaim")]);
        let seen = {
            let _g = held.enter();
            current()
        };
        assert_eq!(seen, held);
        // A set left in this thread's slot (its handle dropped) is kept too.
        let _g = LabelSet::new_lossy(&[("tenant", "only-in-slot")]).enter();
        for _ in 0..3 {
            reclaim([]);
        }
        assert_eq!(current().labels(), vec![kv("tenant", "only-in-slot")]);
    }

    #[test]
    fn guards_dropped_out_of_order_restore_a_live_set() {
        let outer = push(&[("order", "outer")]);
        let inner = push(&[("order", "inner")]);
        // The outer set is now in no slot and has no handle of its own: the inner guard,
        // which will put it back, keeps it.
        drop(outer);
        for _ in 0..3 {
            reclaim([]);
        }
        drop(inner);
        assert_eq!(current().labels(), vec![kv("order", "outer")]);
        for _ in 0..3 {
            reclaim([]);
        }
        assert_eq!(current().labels(), vec![kv("order", "outer")], "a set in a slot was freed");
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
        assert_eq!(seen, vec![vec![kv("task", "a")]; 2]);
    }
}
