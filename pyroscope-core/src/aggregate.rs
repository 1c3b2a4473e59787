//! Per-window aggregation: stacks interned, counts per (stack, label set), bounded.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sync::Mutex;

use crate::labels::{self, LabelSet};
use crate::pprof::{proto::Profile, ProfileBuilder};
use crate::symbolize::{Symbol, Symbolizer};
use crate::unwind::Snapshot;

/// Most distinct stacks kept per window; samples with further stacks go to one overflow stack.
pub const MAX_STACKS: usize = 50_000;

/// Frame keys with this bit set name a frame given by a binding (Python, V8) rather than an
/// address; the rest is an index into [`FRAMES`].
const SYMBOLIC: u64 = 1 << 63;
/// Location key of a leaf address shown without its inlined allocator frames.
const TRIMMED: u64 = 1 << 62;
/// Synthetic frames.
const OVERFLOW_FRAME: u64 = SYMBOLIC | (1 << 62);
const LOST_FRAME: u64 = SYMBOLIC | (1 << 62) | 1;
const TRUNCATED_FRAME: u64 = SYMBOLIC | (1 << 62) | 2;
const UNKNOWN_STACK_FRAME: u64 = SYMBOLIC | (1 << 62) | 3;

/// Frames supplied by bindings, interned process-wide.
type FrameTable = (Vec<Symbol>, HashMap<Symbol, u64>);
static FRAMES: Mutex<Option<FrameTable>> = Mutex::new(None);
const MAX_FRAMES: usize = 1 << 20;

/// A frame from a non-native stack source (a Python or JavaScript function), interned once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameId(u64);

impl FrameId {
    /// Interns (function, file, line). Returns `None` past the process-wide frame limit.
    pub fn new(function: &str, file: &str, line: u32) -> Option<FrameId> {
        let sym = Symbol { function: function.into(), file: file.into(), line };
        let mut guard = FRAMES.lock();
        let (list, index) = guard.get_or_insert_with(Default::default);
        if let Some(id) = index.get(&sym) {
            return Some(FrameId(*id));
        }
        if list.len() >= MAX_FRAMES {
            return None;
        }
        let id = SYMBOLIC | list.len() as u64;
        list.push(sym.clone());
        index.insert(sym, id);
        Some(FrameId(id))
    }

    pub(crate) fn key(self) -> u64 {
        self.0
    }
}

pub(crate) fn prepare_fork() {
    FRAMES.fork_hold();
}

pub(crate) fn after_fork() {
    FRAMES.fork_release();
}

fn symbolic(key: u64) -> Symbol {
    let special = |name: &str| Symbol { function: name.into(), file: "".into(), line: 0 };
    match key {
        OVERFLOW_FRAME => special("[stack table overflow]"),
        LOST_FRAME => special("[lost samples]"),
        TRUNCATED_FRAME => special("[truncated]"),
        UNKNOWN_STACK_FRAME => special("[stack not recorded]"),
        _ => FRAMES
            .lock()
            .as_ref()
            .and_then(|(list, _)| list.get((key & !SYMBOLIC) as usize).cloned())
            .unwrap_or_else(|| special("[unknown frame]")),
    }
}

/// The samples of one window.
pub(crate) struct Window {
    pub start: SystemTime,
    stacks: FxHashMap<Arc<[u64]>, u32>,
    stack_list: Vec<Arc<[u64]>>,
    cpu: FxHashMap<(u32, u32), u64>,
    /// Samples put on the overflow stack because the stack table was full.
    pub overflowed: u64,
    /// Samples whose stack was cut short.
    pub truncated: u64,
    /// Samples recorded in total (weights summed).
    pub total_weight: u64,
}

impl Window {
    pub fn new(start: SystemTime) -> Self {
        Window {
            start,
            stacks: FxHashMap::default(),
            stack_list: Vec::new(),
            cpu: FxHashMap::default(),
            overflowed: 0,
            truncated: 0,
            total_weight: 0,
        }
    }

    fn intern(&mut self, stack: &[u64]) -> u32 {
        if let Some(id) = self.stacks.get(stack) {
            return *id;
        }
        let stack: Arc<[u64]> = if self.stack_list.len() >= MAX_STACKS {
            self.overflowed += 1;
            Arc::from(&[OVERFLOW_FRAME][..])
        } else {
            Arc::from(stack)
        };
        if let Some(id) = self.stacks.get(&stack) {
            return *id;
        }
        let id = self.stack_list.len() as u32;
        self.stack_list.push(stack.clone());
        self.stacks.insert(stack, id);
        id
    }

    /// The code addresses of this window's stacks, for [`Symbolizer::prefetch`] (the
    /// collector notes a window's CPU and wall addresses in one batch).
    pub(crate) fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.stack_list.iter().flat_map(|s| s.iter().copied()).filter(|k| k & SYMBOLIC == 0)
    }

    /// Adds a CPU sample: `stack` leaf first, `weight` in timer periods.
    pub fn add_cpu(&mut self, stack: &[u64], truncated: bool, label_id: u32, weight: u64) {
        if truncated {
            self.truncated += weight;
            // Mark the cut so the flame graph does not pretend the stack ends there.
            let mut marked = Vec::with_capacity(stack.len() + 1);
            marked.extend_from_slice(stack);
            marked.push(TRUNCATED_FRAME);
            let id = self.intern(&marked);
            *self.cpu.entry((id, label_id)).or_default() += weight;
        } else {
            let id = self.intern(stack);
            *self.cpu.entry((id, label_id)).or_default() += weight;
        }
        self.total_weight += weight;
    }

    /// Adds a sample from a binding's own stack source (frames leaf first).
    pub fn add_cpu_frames(&mut self, frames: &[FrameId], label_id: u32, weight: u64) {
        let keys: Vec<u64> = frames.iter().map(|f| f.key()).collect();
        self.add_cpu(&keys, false, label_id, weight);
    }

    /// Counts samples the ring had to drop as one synthetic stack.
    pub fn add_lost(&mut self, weight: u64) {
        if weight > 0 {
            let id = self.intern(&[LOST_FRAME]);
            *self.cpu.entry((id, labels::EMPTY)).or_default() += weight;
            self.total_weight += weight;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.cpu.is_empty()
    }

    /// The label sets this window's samples carry (with repeats).
    pub fn label_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.cpu.keys().map(|(_, label)| *label)
    }

    #[cfg(test)]
    pub fn distinct_stacks(&self) -> usize {
        self.stack_list.len()
    }

    /// The `process_cpu` profile of this window: `samples/count`, `cpu/nanoseconds`.
    /// `extra_labels` go on every sample (the file exporter puts static tags there).
    pub fn cpu_profile(
        &self,
        symbolizer: &mut Symbolizer,
        snapshot: Option<&Snapshot>,
        period: Duration,
        end: SystemTime,
        extra_labels: &[(String, String)],
    ) -> Profile {
        self.timed_profile("cpu", symbolizer, snapshot, period, end, extra_labels)
    }

    /// The `wall` profile of this window: `samples/count`, `wall/nanoseconds`, period type
    /// `wall/nanoseconds` (a binding's wall-clock sampler: every thread, idle ones included).
    pub fn wall_profile(
        &self,
        symbolizer: &mut Symbolizer,
        snapshot: Option<&Snapshot>,
        period: Duration,
        end: SystemTime,
        extra_labels: &[(String, String)],
    ) -> Profile {
        self.timed_profile("wall", symbolizer, snapshot, period, end, extra_labels)
    }

    /// A profile of sample counts and `clock`/nanoseconds (count x period), period `clock`.
    fn timed_profile(
        &self,
        clock: &str,
        symbolizer: &mut Symbolizer,
        snapshot: Option<&Snapshot>,
        period: Duration,
        end: SystemTime,
        extra_labels: &[(String, String)],
    ) -> Profile {
        let period_ns = period.as_nanos() as i64;
        let mut b =
            ProfileBuilder::new(&[("samples", "count"), (clock, "nanoseconds")], (clock, "nanoseconds"), period_ns);
        let start_ns = self.start.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
        let len_ns = end.duration_since(self.start).unwrap_or_default().as_nanos() as i64;
        b.time(start_ns, len_ns);
        let mut label_cache: HashMap<u32, Vec<labels::Label>> = HashMap::new();
        symbolizer.prefetch(self.addresses(), snapshot);
        let mut entries: Vec<_> = self.cpu.iter().collect();
        entries.sort_unstable_by_key(|(k, _)| **k);
        for ((stack_id, label_id), weight) in entries {
            let stack = &self.stack_list[*stack_id as usize];
            let locs = stack
                .iter()
                .map(|&key| {
                    if key & SYMBOLIC != 0 {
                        let sym = symbolic(key);
                        b.location(key, 0, || vec![(&sym.function, &sym.file, sym.line)])
                    } else {
                        let syms = symbolizer.symbolize(key, snapshot);
                        b.location(key, key, || syms.iter().map(|s| (&*s.function, &*s.file, s.line)).collect())
                    }
                })
                .collect();
            let dynamic = label_cache.entry(*label_id).or_insert_with(|| labels::resolve(*label_id).to_vec());
            let mut pairs: Vec<(&str, &str)> = dynamic.iter().map(|(k, v)| (&**k, &**v)).collect();
            for (k, v) in extra_labels {
                if !pairs.iter().any(|(n, _)| *n == k) {
                    pairs.push((k, v));
                }
            }
            let w = *weight as i64;
            b.sample(locs, vec![w, w * period_ns], &pairs);
        }
        b.build()
    }
}

/// Function names of the allocation plumbing between the user's code and the hook: dropped
/// from the leaf end of memory stacks.
fn is_alloc_plumbing(name: &str) -> bool {
    const ENTRY_POINTS: [&str; 10] = [
        "malloc",
        "calloc",
        "realloc",
        "free",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "reallocarray",
    ];
    name.starts_with("pyroscope_core::alloc")
        || name.starts_with("<pyroscope_core::alloc")
        || name.starts_with("pyroscope_preload")
        || name.contains("__rust_alloc")
        || name.contains("__rust_realloc")
        || name.contains("__rust_dealloc")
        || name.contains("__rdl_")
        || name.contains("__rg_")
        || ENTRY_POINTS.contains(&name)
}

/// Allocation samples of one window, keyed by (stack hash, label set): (objects, bytes),
/// unbiased.
#[derive(Default)]
pub(crate) struct AllocWindow {
    pub sampled: FxHashMap<(u64, u32), [f64; 2]>,
    /// Stacks by hash, for this window's samples and every live sampled allocation.
    pub stacks: FxHashMap<u64, Arc<[u64]>>,
    /// Labels an interpreter had in force, by stack hash (laid over the thread's labels).
    pub contexts: FxHashMap<u64, LabelSet>,
}

/// The unbiasing factor for an allocation of `size` bytes sampled with mean interval `rate`.
pub(crate) fn unbias(size: u64, rate: u64) -> f64 {
    let p = 1.0 - (-(size as f64) / rate.max(1) as f64).exp();
    if p <= 0.0 {
        1.0
    } else {
        1.0 / p
    }
}

impl AllocWindow {
    pub fn add(&mut self, stack: &[u64], hash: u64, label_id: u32, context: Option<LabelSet>, size: u64, rate: u64) {
        self.stacks.entry(hash).or_insert_with(|| Arc::from(stack));
        if let Some(context) = context {
            self.contexts.entry(hash).or_insert(context);
        }
        let scale = unbias(size, rate);
        let e = self.sampled.entry((hash, label_id)).or_default();
        e[0] += scale;
        e[1] += scale * size as f64;
    }

    pub fn is_empty(&self) -> bool {
        self.sampled.is_empty()
    }

    /// The label sets of the allocation samples not yet reported (with repeats).
    pub fn label_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.sampled.keys().map(|(_, label)| *label)
    }

    /// The `memory` profile: alloc_objects, alloc_space for this window, inuse_objects and
    /// inuse_space from `live` (sizes per (stack hash, label set)). Forgets this window's
    /// samples and stacks no live allocation needs any more.
    #[allow(clippy::too_many_arguments)]
    pub fn memory_profile(
        &mut self,
        live: &HashMap<(u64, u32), Vec<u64>>,
        symbolizer: &mut Symbolizer,
        snapshot: Option<&Snapshot>,
        rate: u64,
        start: SystemTime,
        end: SystemTime,
        extra_labels: &[(String, String)],
    ) -> Profile {
        let mut b = ProfileBuilder::new(
            &[
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes"),
            ],
            ("space", "bytes"),
            rate as i64,
        );
        let start_ns = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
        b.time(start_ns, end.duration_since(start).unwrap_or_default().as_nanos() as i64);
        let mut values: HashMap<(u64, u32), [f64; 4]> = HashMap::new();
        for (k, v) in &self.sampled {
            let e = values.entry(*k).or_default();
            e[0] += v[0];
            e[1] += v[1];
        }
        for (k, sizes) in live {
            let e = values.entry(*k).or_default();
            for s in sizes {
                let scale = unbias(*s, rate);
                e[2] += scale;
                e[3] += scale * *s as f64;
            }
        }
        let mut keys: Vec<_> = values.keys().copied().collect();
        keys.sort_unstable();
        let addresses = keys.iter().filter_map(|k| self.stacks.get(&k.0)).flat_map(|s| s.iter().copied());
        symbolizer.prefetch(addresses.filter(|pc| pc & SYMBOLIC == 0), snapshot);
        for key in keys {
            let v = values[&key];
            let stack: Arc<[u64]> =
                self.stacks.get(&key.0).cloned().unwrap_or_else(|| Arc::from(&[UNKNOWN_STACK_FRAME][..]));
            let mut locs = Vec::with_capacity(stack.len());
            let mut trimming = true;
            for &pc in stack.iter() {
                if pc & SYMBOLIC != 0 {
                    trimming = false;
                    let sym = symbolic(pc);
                    locs.push(b.location(pc, 0, || vec![(&sym.function, &sym.file, sym.line)]));
                    continue;
                }
                // Drop the hook and allocator entry frames at the leaf, judged by the function
                // that physically holds the address (inlined names are too short to tell).
                if trimming && symbolizer.physical_name(pc, snapshot).is_some_and(|n| is_alloc_plumbing(&n)) {
                    continue;
                }
                let syms = symbolizer.symbolize(pc, snapshot);
                if trimming {
                    // The allocator's entry may be inlined into its caller (release builds inline
                    // `__rust_alloc` into the program's own functions): drop its inlined frames.
                    let keep = syms.iter().position(|s| !is_alloc_plumbing(&s.function)).unwrap_or(syms.len());
                    if keep == syms.len() {
                        continue;
                    }
                    trimming = false;
                    if keep > 0 {
                        let kept = &syms[keep..];
                        locs.push(b.location(pc | TRIMMED, pc, || {
                            kept.iter().map(|s| (&*s.function, &*s.file, s.line)).collect()
                        }));
                        continue;
                    }
                }
                trimming = false;
                locs.push(b.location(pc, pc, || syms.iter().map(|s| (&*s.function, &*s.file, s.line)).collect()));
            }
            let label_id = self.contexts.get(&key.0).map_or(key.1, |c| labels::merge_ids(key.1, c));
            let dynamic = labels::resolve(label_id);
            let mut pairs: Vec<(&str, &str)> = dynamic.iter().map(|(k, v)| (&**k, &**v)).collect();
            for (k, v) in extra_labels {
                if !pairs.iter().any(|(n, _)| *n == k) {
                    pairs.push((k, v));
                }
            }
            b.sample(locs, v.iter().map(|x| x.round() as i64).collect(), &pairs);
        }
        // Keep the stacks of live allocations, and of this window's samples: an allocation is
        // put in the ring before it enters the live map, so it may join the live set later.
        let needed: std::collections::HashSet<u64> = live.keys().chain(self.sampled.keys()).map(|(h, _)| *h).collect();
        self.stacks.retain(|h, _| needed.contains(h));
        self.contexts.retain(|h, _| needed.contains(h));
        self.sampled.clear();
        b.build()
    }
}

/// One call stack of a runtime's own heap profile (V8's sampling heap profiler): its frames,
/// leaf first, and the objects and bytes sampled there, already unbiased by the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapSample {
    /// Frames, leaf first.
    pub frames: Vec<FrameId>,
    /// Objects (estimated from the samples, as the runtime scales them).
    pub objects: u64,
    /// Bytes (estimated likewise).
    pub bytes: u64,
}

/// What runtimes reported of their own heaps during one window (see
/// [`crate::Agent::set_heap_inuse`] and [`crate::Agent::add_heap_allocations`]).
#[derive(Default)]
pub(crate) struct HeapWindow {
    /// In-use memory per heap: the latest report of this window.
    inuse: HashMap<u64, Vec<HeapSample>>,
    /// Heaps that ended in this window (see [`Agent::end_heap`](crate::Agent::end_heap)).
    ended: Vec<u64>,
    /// Allocations: [objects, bytes] summed per stack (frame keys, leaf first).
    alloc: HashMap<Vec<u64>, [u64; 2]>,
    /// The sampling interval of the latest report: the profile's period.
    interval: u64,
}

impl HeapWindow {
    pub fn set_inuse(&mut self, heap: u64, interval: u64, samples: Vec<HeapSample>) {
        self.interval = interval;
        self.inuse.insert(heap, samples);
        // A heap reported again after it ended (its sampler restarted) goes on.
        self.ended.retain(|h| *h != heap);
    }

    pub fn end(&mut self, heap: u64) {
        if !self.ended.contains(&heap) {
            self.ended.push(heap);
        }
    }

    /// Takes back the in-use states of `closed` (the window before this one, whose profile is
    /// built) of the heaps not reported again since and not ended: a heap's state stands until
    /// it is reported again or ends, so a thread too busy to report before a window closes
    /// still shows there.
    pub fn keep_inuse(&mut self, closed: HeapWindow) {
        for (heap, samples) in closed.inuse {
            if !closed.ended.contains(&heap) && !self.ended.contains(&heap) {
                self.inuse.entry(heap).or_insert(samples);
            }
        }
        if self.interval == 0 {
            self.interval = closed.interval;
        }
    }

    pub fn add_alloc(&mut self, interval: u64, samples: &[HeapSample]) {
        self.interval = interval;
        for s in samples {
            let mut key: Vec<u64> = s.frames.iter().map(|f| f.key()).collect();
            if self.alloc.len() >= MAX_STACKS && !self.alloc.contains_key(&key) {
                key = vec![OVERFLOW_FRAME];
            }
            let e = self.alloc.entry(key).or_default();
            e[0] = e[0].saturating_add(s.objects);
            e[1] = e[1].saturating_add(s.bytes);
        }
    }

    /// Whether there is anything to report: allocations, or a heap with live samples.
    pub fn is_empty(&self) -> bool {
        self.alloc.is_empty() && self.inuse.values().all(Vec::is_empty)
    }

    /// The `memory` profile: `alloc_objects`/`alloc_space` when allocations were reported,
    /// `inuse_objects`/`inuse_space` when a heap's in-use memory was (the heaps summed), in
    /// that order (the order of the allocator hook's memory profile); period `space`/bytes =
    /// the sampling interval. Values are the runtime's own, unscaled here. `extra_labels` go
    /// on every sample.
    pub fn memory_profile(&self, start: SystemTime, end: SystemTime, extra_labels: &[(String, String)]) -> Profile {
        let with_alloc = !self.alloc.is_empty();
        let with_inuse = !self.inuse.is_empty();
        let mut types = Vec::with_capacity(4);
        if with_alloc {
            types.extend([("alloc_objects", "count"), ("alloc_space", "bytes")]);
        }
        if with_inuse {
            types.extend([("inuse_objects", "count"), ("inuse_space", "bytes")]);
        }
        let mut b = ProfileBuilder::new(&types, ("space", "bytes"), self.interval as i64);
        let start_ns = start.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as i64;
        b.time(start_ns, end.duration_since(start).unwrap_or_default().as_nanos() as i64);
        // [alloc objects, alloc bytes, inuse objects, inuse bytes] per stack.
        let mut values: HashMap<&[u64], [u64; 4]> = HashMap::new();
        for (stack, v) in &self.alloc {
            let e = values.entry(stack.as_slice()).or_default();
            e[0] = e[0].saturating_add(v[0]);
            e[1] = e[1].saturating_add(v[1]);
        }
        let inuse_keys: Vec<Vec<u64>> =
            self.inuse.values().flatten().map(|s| s.frames.iter().map(|f| f.key()).collect()).collect();
        for (key, s) in inuse_keys.iter().zip(self.inuse.values().flatten()) {
            let e = values.entry(key.as_slice()).or_default();
            e[2] = e[2].saturating_add(s.objects);
            e[3] = e[3].saturating_add(s.bytes);
        }
        let mut stacks: Vec<&[u64]> = values.keys().copied().collect();
        stacks.sort_unstable();
        let pairs: Vec<(&str, &str)> = extra_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for stack in stacks {
            let v = values[stack];
            let shown: Vec<i64> = [(with_alloc, &v[..2]), (with_inuse, &v[2..])]
                .into_iter()
                .filter(|(on, _)| *on)
                .flat_map(|(_, v)| v.iter().map(|x| (*x).min(i64::MAX as u64) as i64))
                .collect();
            if shown.iter().all(|x| *x == 0) {
                continue;
            }
            let locs = stack
                .iter()
                .map(|&key| {
                    let sym = symbolic(key);
                    b.location(key, 0, || vec![(&sym.function, &sym.file, sym.line)])
                })
                .collect();
            b.sample(locs, shown, &pairs);
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_summed() {
        let mut w = Window::new(UNIX_EPOCH);
        w.add_cpu(&[1, 2, 3], false, 0, 1);
        w.add_cpu(&[1, 2, 3], false, 0, 2);
        w.add_cpu(&[1, 2], true, 0, 1);
        assert_eq!(w.cpu.len(), 2);
        assert_eq!(w.total_weight, 4);
        assert_eq!(w.truncated, 1);
        for i in 0..(MAX_STACKS as u64 + 10) {
            w.add_cpu(&[100 + i], false, 0, 1);
        }
        assert_eq!(w.distinct_stacks(), MAX_STACKS + 1);
        assert!(w.overflowed >= 10);
    }

    #[test]
    fn symbolic_frames_become_functions() {
        let set = crate::LabelSet::new(&[("vehicle", "car")]).unwrap();
        let f1 = FrameId::new("mutex_lock", "app.py", 10).unwrap();
        let f2 = FrameId::new("find_nearest_vehicle", "app.py", 3).unwrap();
        assert_eq!(FrameId::new("mutex_lock", "app.py", 10), Some(f1));
        let mut w = Window::new(UNIX_EPOCH);
        w.add_cpu_frames(&[f1, f2], set.id(), 3);
        w.add_lost(2);
        let p = w.cpu_profile(
            &mut Symbolizer::default(),
            None,
            Duration::from_millis(10),
            UNIX_EPOCH + Duration::from_secs(10),
            &[("region".into(), "eu".into())],
        );
        let p = crate::pprof::decode(&crate::pprof::encode_gzip(&p)).unwrap();
        let s = |i: i64| p.string_table[i as usize].clone();
        let names: Vec<String> = p.function.iter().map(|f| s(f.name)).collect();
        assert!(names.contains(&"mutex_lock".to_string()) && names.contains(&"[lost samples]".to_string()));
        let sample = p.sample.iter().find(|x| x.value[0] == 3).unwrap();
        assert_eq!(sample.value[1], 30_000_000);
        let labels: Vec<(String, String)> = sample.label.iter().map(|l| (s(l.key), s(l.str))).collect();
        assert_eq!(labels, vec![("vehicle".into(), "car".into()), ("region".into(), "eu".into())]);
        assert_eq!(p.duration_nanos, 10_000_000_000);
    }

    #[test]
    fn heap_allocations_alone_are_bounded_and_typed() {
        let f = |i: usize| FrameId::new(&format!("./a.js:f{i}:1"), "/a.js", 1).unwrap();
        let mut h = HeapWindow::default();
        assert!(h.is_empty());
        h.set_inuse(1, 1024, Vec::new());
        assert!(h.is_empty(), "a heap with nothing live is nothing to send");
        let mut h = HeapWindow::default();
        let samples: Vec<HeapSample> =
            (0..MAX_STACKS + 5).map(|i| HeapSample { frames: vec![f(i)], objects: 1, bytes: 64 }).collect();
        h.add_alloc(1024, &samples);
        h.add_alloc(1024, &[HeapSample { frames: vec![f(0)], objects: 2, bytes: 128 }]);
        assert_eq!(h.alloc.len(), MAX_STACKS + 1);
        let p = h.memory_profile(UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(1), &[]);
        let s = |i: i64| p.string_table[i as usize].clone();
        let types: Vec<String> = p.sample_type.iter().map(|t| s(t.r#type)).collect();
        assert_eq!(types, ["alloc_objects", "alloc_space"]);
        assert_eq!(p.period, 1024);
        let name = |smp: &crate::proto::Sample| {
            let loc = &p.location[smp.location_id[0] as usize - 1];
            s(p.function[loc.line[0].function_id as usize - 1].name)
        };
        let overflow = p.sample.iter().find(|x| name(x) == "[stack table overflow]").unwrap();
        assert_eq!(overflow.value, [5, 320]);
        let first = p.sample.iter().find(|x| name(x) == "./a.js:f0:1").unwrap();
        assert_eq!(first.value, [3, 192]);
        assert_eq!(p.sample.len(), MAX_STACKS + 1);
    }
}
