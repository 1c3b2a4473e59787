//! The collector thread: drain the ring, aggregate, close windows and hand them to export.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use crate::aggregate::{AllocWindow, FrameId, HeapWindow, Window};
use crate::config::{Config, Destination};
use crate::export::{ExportStats, Queue, Upload};
use crate::labels::LabelSet;
use crate::ring::{self, Kind};
use crate::sampler::{self, Sampler};
use crate::symbolize::Symbolizer;
use crate::sync::Mutex;
use crate::{pprof, unwind};

/// What the agent and its collector thread share: the stop flag the collector waits on, and
/// the counters [`crate::Agent::stats`] reads.
pub(crate) struct Shared {
    pub(crate) stop: Mutex<bool>,
    pub(crate) flush_now: AtomicBool,
    pub(crate) samples: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) alloc_lost: AtomicU64,
    pub(crate) truncated: AtomicU64,
    pub(crate) windows: AtomicU64,
    pub(crate) threads: AtomicU64,
    pub(crate) unsampled: AtomicU64,
    pub(crate) alloc_samples: AtomicU64,
    pub(crate) external: Mutex<Vec<(Vec<FrameId>, LabelSet, u64)>>,
    /// Wall-clock samples from a binding's sampler: frames, the thread's labels, the
    /// interpreter's labels to lay over them, weight in periods.
    pub(crate) wall: Mutex<Vec<WallSample>>,
    pub(crate) wall_samples: AtomicU64,
    pub(crate) wall_lost: AtomicU64,
    pub(crate) export: Arc<ExportStats>,
    /// Windows shutdown did not wait for (at most one per agent).
    pub(crate) windows_abandoned: AtomicU64,
    /// What runtimes reported of their own heaps in the open window.
    pub(crate) heap: Mutex<HeapWindow>,
    /// When the open window closes: nanoseconds after `epoch`.
    window_end: AtomicU64,
    epoch: Instant,
    /// CPU captures asked for ([`crate::Agent::capture_cpu`]) that the collector has not
    /// begun yet; `None` once the collector has ended, so that asking fails at once.
    pub(crate) captures: Mutex<Option<Vec<CaptureRequest>>>,
    /// Captures asked for and not answered yet, against [`MAX_CAPTURES`].
    pub(crate) capturing: Arc<AtomicUsize>,
}

impl Shared {
    pub(crate) fn new(export: Arc<ExportStats>) -> Self {
        Shared {
            stop: Mutex::new(false),
            flush_now: AtomicBool::new(false),
            samples: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            alloc_lost: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            threads: AtomicU64::new(0),
            unsampled: AtomicU64::new(0),
            alloc_samples: AtomicU64::new(0),
            external: Mutex::new(Vec::new()),
            wall: Mutex::new(Vec::new()),
            wall_samples: AtomicU64::new(0),
            wall_lost: AtomicU64::new(0),
            export,
            windows_abandoned: AtomicU64::new(0),
            heap: Mutex::new(HeapWindow::default()),
            window_end: AtomicU64::new(0),
            epoch: Instant::now(),
            captures: Mutex::new(Some(Vec::new())),
            capturing: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub(crate) fn set_window_end(&self, end: Instant) {
        let ns = end.saturating_duration_since(self.epoch).as_nanos().min(u64::MAX as u128) as u64;
        self.window_end.store(ns, Ordering::Relaxed);
    }

    /// Time left until the collector closes the open window (zero once that is due).
    pub(crate) fn window_remaining(&self) -> Duration {
        let end = self.epoch + Duration::from_nanos(self.window_end.load(Ordering::Relaxed));
        end.saturating_duration_since(Instant::now())
    }
}

/// Most CPU captures under way at once.
pub(crate) const MAX_CAPTURES: usize = 8;
/// The longest CPU capture.
pub(crate) const MAX_CAPTURE: Duration = Duration::from_secs(3600);

/// A CPU capture asked for: how long, and where its gzipped pprof goes.
pub(crate) struct CaptureRequest {
    pub(crate) duration: Duration,
    pub(crate) reply: mpsc::Sender<Vec<u8>>,
    pub(crate) slot: CaptureSlot,
}

/// A place in [`Shared::capturing`], given back when the capture is answered or dropped.
pub(crate) struct CaptureSlot(pub(crate) Arc<AtomicUsize>);

impl Drop for CaptureSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A capture under way: a window of its own, fed every sample the regular window gets.
struct ActiveCapture {
    window: Window,
    end: Instant,
    request: CaptureRequest,
}

/// Refuses new captures once the collector ends, however it ends; pending ones are dropped,
/// which their waiters see as [`crate::Error::CaptureStopped`].
struct CloseCaptures(Arc<Shared>);

impl Drop for CloseCaptures {
    fn drop(&mut self) {
        self.0.captures.lock().take();
    }
}

/// Builds and sends the profiles of the captures whose time is up (all of them with `all`).
fn finish_captures(
    captures: &mut Vec<ActiveCapture>,
    all: bool,
    symbolizer: &mut Symbolizer,
    period: Duration,
    labels: &[(String, String)],
) {
    let now = Instant::now();
    let mut i = 0;
    while i < captures.len() {
        if !all && captures[i].end > now {
            i += 1;
            continue;
        }
        let ActiveCapture { window, request: CaptureRequest { reply, slot, .. }, .. } = captures.swap_remove(i);
        let profile = window.cpu_profile(symbolizer, unwind::current(), period, SystemTime::now(), labels);
        // Free before the waiter hears: it may ask for the next capture at once.
        drop(slot);
        // The waiter may have gone: nothing to do then.
        let _ = reply.send(pprof::encode_gzip(&profile));
    }
}

/// One wall-clock sample waiting for the collector (see [`Shared::wall`]).
pub(crate) type WallSample = (Vec<FrameId>, LabelSet, Option<LabelSet>, u64);

const TICK: Duration = Duration::from_millis(50);
/// The collector's sleep while the ring is busy: a drain that found an eighth of a lane
/// filled since the last one comes back this soon, and a hook that finds its lane half full
/// wakes it, so bursts (a program allocating tens of GB/s) do not overflow the ring and lose
/// samples.
const BUSY_TICK: Duration = Duration::from_millis(2);
/// Ring lanes (writer threads are spread over them); `Config::ring_records` share them.
pub(crate) const RING_LANES: usize = 4;
const SCAN_EVERY: Duration = Duration::from_millis(100);
const MIN_SCAN_GAP: Duration = Duration::from_millis(5);

fn tags_hash(app: &str, tags: &BTreeMap<String, String>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    app.hash(&mut h);
    tags.hash(&mut h);
    h.finish()
}

/// The collector thread's body: drains the ring, aggregates, scans for threads, closes a
/// window every upload interval (or on flush and stop) and queues its profiles.
pub(crate) fn collect(config: Config, mut sampler: Sampler, shared: Arc<Shared>, queue: Arc<Queue>) {
    let _close = CloseCaptures(shared.clone());
    // The unwind tables, off the thread that started the agent (see `Sampler::start`).
    unwind::refresh();
    let ring = ring::RING_CELL.get();
    // Records left by an earlier agent belong to no window of ours.
    if let Some(r) = ring {
        r.drain(|_| {});
    }
    let period = Duration::from_nanos(1_000_000_000 / config.sample_rate as u64);
    let rate = config.alloc_sample_bytes;
    let tags = Arc::new(config.tags.clone());
    let app: Arc<str> = config.application_name.as_str().into();
    let hash = tags_hash(&config.application_name, &config.tags);
    // Every sample carries the process's sample labels; files are standalone, so they carry the
    // static tags on every sample too.
    let mut extra: Vec<(String, String)> = config.sample_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    // Pull mode without uploads builds no window's profiles: captures alone read the samples.
    let export = config.destination != Destination::Nowhere;
    if let Destination::Directory(_) = config.destination {
        extra.extend(config.tags.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    // A capture carries the process's sample labels, as the samples the server gets do.
    let capture_labels: Vec<(String, String)> =
        config.sample_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut captures: Vec<ActiveCapture> = Vec::new();
    let upload = |name: &'static str, profile: &crate::proto::Profile, start: SystemTime, end: SystemTime| Upload {
        profile_name: name,
        pprof: pprof::encode_gzip(profile),
        start,
        end,
        tags: tags.clone(),
        application_name: app.clone(),
        tags_hash: hash,
    };
    let mut symbolizer = Symbolizer::default();
    let mut window = Window::new(SystemTime::now());
    // Wall-clock samples (`Agent::add_wall_sample`): closed with the CPU window.
    let mut wall = Window::new(window.start);
    let mut allocs = AllocWindow::default();
    let mut window_end = Instant::now() + config.upload_interval;
    shared.set_window_end(window_end);
    let mut last_scan = Instant::now();
    // Records the ring dropped, per kind, counted so far.
    let dropped = |kind| ring.map_or(0, |r| r.dropped(kind));
    let (mut cpu_lost_seen, mut alloc_lost_seen, mut wall_lost_seen) =
        (dropped(Kind::Cpu), dropped(Kind::Alloc), dropped(Kind::Wall));
    // Lost CPU records go into the CPU profile as `[lost samples]`; lost allocation records
    // are memory that was not seen, not CPU time, and are only counted.
    let mut count_lost = |window: &mut Window, captures: &mut [ActiveCapture]| {
        let (cpu, alloc, wall) = (dropped(Kind::Cpu), dropped(Kind::Alloc), dropped(Kind::Wall));
        window.add_lost(cpu - cpu_lost_seen);
        for c in captures.iter_mut() {
            c.window.add_lost(cpu - cpu_lost_seen);
        }
        shared.lost.fetch_add(cpu - cpu_lost_seen, Ordering::Relaxed);
        shared.alloc_lost.fetch_add(alloc - alloc_lost_seen, Ordering::Relaxed);
        shared.wall_lost.fetch_add(wall - wall_lost_seen, Ordering::Relaxed);
        (cpu_lost_seen, alloc_lost_seen, wall_lost_seen) = (cpu, alloc, wall);
    };
    let mut frames: Vec<FrameId> = Vec::new();
    let mut ends: Vec<usize> = Vec::new();
    let mut keys: Vec<u64> = Vec::new();
    let mut merger = NativeMerger::default();
    let mut drain = |window: &mut Window,
                     wall: &mut Window,
                     captures: &mut [ActiveCapture],
                     allocs: &mut AllocWindow,
                     symbolizer: &mut Symbolizer| {
        let Some(r) = ring else { return 0 };
        let mut resolver = crate::interp::resolver();
        merger.refresh();
        let jit = crate::jit::active();
        if jit {
            crate::jit::drain_started();
        }
        r.drain(|rec| {
            let (stack, context) = if rec.interp == 0 && jit {
                // JIT code: named now, before the compiler puts other code at its addresses.
                keys.clear();
                let code = crate::jit::lock();
                // Samples carry the code map's generation they saw; allocations carry a hash there.
                let seen = if rec.kind == Kind::Alloc { u64::MAX } else { rec.aux };
                keys.extend(rec.stack().iter().map(|&pc| code.lookup(pc, seen).map_or(pc, |f| f.key())));
                (&keys[..], None)
            } else if rec.interp == 0 {
                (rec.stack(), None)
            } else {
                // An interpreter's frames: named now, while what they point at is fresh.
                frames.clear();
                ends.clear();
                keys.clear();
                let context = if rec.depth == 0 {
                    let context = resolver.as_mut().and_then(|r| r.resolve(rec.interp_words(), &mut frames));
                    keys.extend(frames.iter().map(|f| f.key()));
                    context
                } else {
                    let context =
                        resolver.as_mut().and_then(|r| r.resolve_runs(rec.interp_words(), &mut frames, &mut ends));
                    merge_native(rec.stack(), &frames, &ends, |pc| merger.kind(pc, symbolizer), &mut keys);
                    context
                };
                (&keys[..], context)
            };
            match rec.kind {
                // The labels the interpreter had in force lie over the thread's.
                Kind::Cpu => {
                    let label_id = context.map_or(rec.label_id, |c| crate::labels::merge_ids(rec.label_id, &c));
                    window.add_cpu(stack, rec.truncated, label_id, rec.weight);
                    for c in captures.iter_mut() {
                        c.window.add_cpu(stack, rec.truncated, label_id, rec.weight);
                    }
                }
                // Live allocations are keyed by the thread's labels: the interpreter's are
                // kept per stack (its words, context included, make the hash).
                Kind::Alloc => allocs.add(stack, rec.aux, rec.label_id, context, rec.weight, rate),
                Kind::Wall => {
                    let label_id = context.map_or(rec.label_id, |c| crate::labels::merge_ids(rec.label_id, &c));
                    wall.add_cpu(stack, rec.truncated, label_id, rec.weight)
                }
            }
        })
    };
    let mut busy = false;
    loop {
        let stopping = {
            let mut stop = shared.stop.lock();
            // A registered thread gets its timer soon, but scans stay at most one per
            // MIN_SCAN_GAP however fast threads come and go.
            let tick = if busy { BUSY_TICK } else { TICK };
            let timeout = if sampler::NEW_THREADS.load(Ordering::SeqCst) {
                MIN_SCAN_GAP.saturating_sub(last_scan.elapsed()).min(tick)
            } else {
                tick
            };
            // Awake when a capture's time is up.
            let now = Instant::now();
            let timeout = captures.iter().map(|c| c.end.saturating_duration_since(now)).fold(timeout, Duration::min);
            if !*stop && !shared.flush_now.load(Ordering::SeqCst) && !timeout.is_zero() {
                stop = ring::COLLECTOR_WAKE.wait_for(stop, timeout);
            }
            *stop
        };
        // Before draining: a hook that fills its lane during the drain asks again.
        ring::WAKE_ASKED.store(false, Ordering::Release);
        busy = drain(&mut window, &mut wall, &mut captures, &mut allocs, &mut symbolizer)
            >= config.ring_records.div_ceil(RING_LANES) / 8;
        if config.memory && crate::alloc::HOOKED.load(Ordering::Relaxed) {
            crate::alloc::make_resident();
        }
        count_lost(&mut window, &mut captures);
        crate::jit::poll();
        for (frames, label, weight) in std::mem::take(&mut *shared.external.lock()) {
            window.add_cpu_frames(&frames, label.id(), weight);
            for c in captures.iter_mut() {
                c.window.add_cpu_frames(&frames, label.id(), weight);
            }
        }
        add_wall(&shared, &mut wall);
        finish_captures(&mut captures, false, &mut symbolizer, period, &capture_labels);
        // Captures asked for since the last pass begin now, after the samples taken before
        // them went into the regular window only.
        if !stopping {
            for request in shared.captures.lock().iter_mut().flat_map(|pending| pending.drain(..)) {
                let end = Instant::now() + request.duration;
                captures.push(ActiveCapture { window: Window::new(SystemTime::now()), end, request });
            }
        }
        if !stopping {
            // Cheap when nothing was loaded or unloaded: one dl_iterate_phdr step.
            unwind::refresh();
        }
        let since = last_scan.elapsed();
        let due = since >= SCAN_EVERY || (since >= MIN_SCAN_GAP && sampler::NEW_THREADS.load(Ordering::SeqCst));
        if due && !stopping {
            sampler::NEW_THREADS.store(false, Ordering::SeqCst);
            sampler.scan();
            let (sampled, unsampled) = sampler.threads();
            shared.threads.store(sampled as u64, Ordering::Relaxed);
            shared.unsampled.store(unsampled, Ordering::Relaxed);
            last_scan = Instant::now();
        }
        let flush = shared.flush_now.swap(false, Ordering::SeqCst);
        if stopping || flush || Instant::now() >= window_end {
            if stopping {
                // Stop the timers and allocation sampling first, then take what they wrote.
                sampler.stop();
                crate::alloc::ENABLED.store(false, Ordering::SeqCst);
                drain(&mut window, &mut wall, &mut captures, &mut allocs, &mut symbolizer);
                count_lost(&mut window, &mut captures);
                add_wall(&shared, &mut wall);
                // Captures under way end here, with what they have.
                finish_captures(&mut captures, true, &mut symbolizer, period, &capture_labels);
            }
            let end = SystemTime::now();
            let closed = std::mem::replace(&mut window, Window::new(end));
            let closed_wall = std::mem::replace(&mut wall, Window::new(end));
            window_end = Instant::now() + config.upload_interval;
            shared.set_window_end(window_end);
            shared.samples.fetch_add(closed.total_weight, Ordering::Relaxed);
            shared.truncated.fetch_add(closed.truncated, Ordering::Relaxed);
            shared.windows.fetch_add(1, Ordering::Relaxed);
            // Label sets this window and the allocation samples still name are in use.
            let mut label_ids: Vec<u32> = closed
                .label_ids()
                .chain(closed_wall.label_ids())
                .chain(allocs.label_ids())
                .chain(captures.iter().flat_map(|c| c.window.label_ids()))
                .collect();
            // One batch for both profiles: a large module's symbol tables are read once.
            if export {
                symbolizer.prefetch(closed.addresses().chain(closed_wall.addresses()), unwind::current());
            }
            if export && !closed.is_empty() {
                let profile = closed.cpu_profile(&mut symbolizer, unwind::current(), period, end, &extra);
                #[cfg(feature = "test-hooks")]
                sampler::test_hooks::hold_collector_here();
                // Refused once shutdown stopped waiting: what is still built is dropped.
                if !queue.push(upload("process_cpu", &profile, closed.start, end)) {
                    return;
                }
            }
            if !closed_wall.is_empty() {
                shared.wall_samples.fetch_add(closed_wall.total_weight, Ordering::Relaxed);
            }
            if export && !closed_wall.is_empty() {
                let profile = closed_wall.wall_profile(&mut symbolizer, unwind::current(), period, end, &extra);
                if !queue.push(upload("wall", &profile, closed.start, end)) {
                    return;
                }
            }
            if export && config.memory && crate::alloc::HOOKED.load(Ordering::Relaxed) {
                let live = crate::alloc::live_snapshot();
                label_ids.extend(live.keys().map(|(_, label)| *label));
                if !allocs.is_empty() || !live.is_empty() {
                    shared.alloc_samples.fetch_add(allocs.sampled.len() as u64, Ordering::Relaxed);
                    let profile = allocs.memory_profile(
                        &live,
                        &mut symbolizer,
                        unwind::current(),
                        rate,
                        closed.start,
                        end,
                        &extra,
                    );
                    #[cfg(feature = "test-hooks")]
                    sampler::test_hooks::hold_collector_here();
                    if !queue.push(upload("memory", &profile, closed.start, end)) {
                        return;
                    }
                }
            }
            // A runtime's own heap profile (V8's sampling heap profiler), as it reported it.
            let heap = std::mem::take(&mut *shared.heap.lock());
            if export && !heap.is_empty() {
                let profile = heap.memory_profile(closed.start, end, &extra);
                if !queue.push(upload("memory", &profile, closed.start, end)) {
                    return;
                }
            }
            shared.heap.lock().keep_inuse(heap);
            // The window's new addresses are named: drop the debug info parsed for them.
            symbolizer.release();
            crate::labels::reclaim(label_ids);
            if stopping {
                return;
            }
        }
    }
}

/// Moves the wall-clock samples waiting in `shared` into `wall`, the interpreter's labels laid
/// over the thread's as on CPU samples.
fn add_wall(shared: &Shared, wall: &mut Window) {
    for (frames, thread, context, weight) in std::mem::take(&mut *shared.wall.lock()) {
        let label_id = match &context {
            Some(c) => crate::labels::merge_ids(thread.id(), c),
            None => thread.id(),
        };
        wall.add_cpu_frames(&frames, label_id, weight);
    }
}

/// What a native frame of an interpreter thread is, for merging (see [`crate::NativeFrames`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum NativeKind {
    /// A call of the interpreter's eval function: replaced by the frames it runs.
    Eval,
    /// The interpreter's own machinery: left out.
    Interpreter,
    /// Anything else (extension modules, C libraries): kept.
    Other,
}

/// Merges native frames with an interpreter's, as py-spy's `--native` does: each call of the
/// eval function becomes the run of interpreter frames it executes, the interpreter's other
/// frames are left out, every other native frame stays where it is.
#[derive(Default)]
struct NativeMerger {
    config: Option<crate::interp::NativeFrames>,
    kinds: rustc_hash::FxHashMap<u64, NativeKind>,
}

impl NativeMerger {
    /// Picks up the binding's settings (once per drain).
    fn refresh(&mut self) {
        if crate::interp::native() && self.config.is_none() {
            self.config = crate::interp::native_frames();
        }
        if self.kinds.len() > 1 << 16 {
            self.kinds.clear();
        }
    }

    fn kind(&mut self, pc: u64, symbolizer: &mut Symbolizer) -> NativeKind {
        if let Some(k) = self.kinds.get(&pc) {
            return *k;
        }
        let Some(config) = &self.config else { return NativeKind::Other };
        let snapshot = unwind::current();
        let path_of = |addr: u64| snapshot.and_then(|s| s.module_for(addr)).map(|m| m.path.as_str());
        let in_interpreter = path_of(pc).is_some_and(|p| Some(p) == path_of(config.interpreter_address));
        let kind = if !in_interpreter {
            NativeKind::Other
        } else if symbolizer.physical_name(pc, snapshot).is_some_and(|n| *n == *config.eval_function) {
            NativeKind::Eval
        } else {
            NativeKind::Interpreter
        };
        self.kinds.insert(pc, kind);
        kind
    }
}

/// `native` and `frames` leaf first; `ends` splits `frames` into runs (leaf first); `kind`
/// classifies a native frame. Writes the merged stack's keys, leaf first.
fn merge_native(
    native: &[u64],
    frames: &[FrameId],
    ends: &[usize],
    mut kind: impl FnMut(u64) -> NativeKind,
    out: &mut Vec<u64>,
) {
    let mut start = 0;
    let mut runs = ends.iter().map(|&end| {
        let run = frames.get(start..end.clamp(start, frames.len())).unwrap_or(&[]);
        start = end.clamp(start, frames.len());
        run
    });
    for &pc in native {
        match kind(pc) {
            NativeKind::Other => out.push(pc),
            NativeKind::Interpreter => {}
            NativeKind::Eval => {
                if let Some(run) = runs.next() {
                    out.extend(run.iter().map(|f| f.key()));
                }
            }
        }
    }
    // Runs whose eval call the native unwind did not reach (a stack cut short) go at the root.
    let rest: Vec<&[FrameId]> = runs.collect();
    for run in rest {
        out.extend(run.iter().map(|f| f.key()));
    }
    out.extend(frames[start..].iter().map(|f| f.key()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_calls_become_their_runs_and_interpreter_frames_go() {
        let f: Vec<FrameId> = (0..5).map(|i| FrameId::new(&format!("py{i}"), "x.py", 1).unwrap()).collect();
        let key = |i: usize| f[i].key();
        // Leaf first: a C library, an extension, the eval loop (runs py0, py1), interpreter
        // glue, the eval loop again (py2), main's glue, and a third run never reached.
        let native = [0x10, 0x20, 0xe0, 0x30, 0xe1, 0x31];
        let kind = |pc: u64| match pc {
            0xe0 | 0xe1 => NativeKind::Eval,
            0x30 | 0x31 => NativeKind::Interpreter,
            _ => NativeKind::Other,
        };
        let mut out = Vec::new();
        merge_native(&native, &f, &[2, 3, 4], kind, &mut out);
        assert_eq!(out, vec![0x10, 0x20, key(0), key(1), key(2), key(3), key(4)]);
        // Frames past the last end (a resolver that reports fewer runs) are kept at the root.
        out.clear();
        merge_native(&native, &f, &[2], kind, &mut out);
        assert_eq!(out, vec![0x10, 0x20, key(0), key(1), key(2), key(3), key(4)]);
        // No eval frame in the native stack: every run at the root, native frames first.
        out.clear();
        merge_native(&[0x10], &f[..2], &[1, 2], kind, &mut out);
        assert_eq!(out, vec![0x10, key(0), key(1)]);
    }
}
