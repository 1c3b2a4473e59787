//! Lifecycle: build -> start -> stop/drop (flushes the last window under a deadline); fork.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::aggregate::{FrameId, HeapSample};
use crate::collector::{self, CaptureRequest, CaptureSlot, Shared};
use crate::config::{AgentBuilder, Config, Destination};
use crate::error::{Error, Result};
use crate::export::{file::FileExporter, http::HttpExporter, ExportStats, Exporter, Queue};
use crate::labels::LabelSet;
use crate::sampler::{self, Sampler};
use crate::{sys, unwind};

static RUNNING: AtomicBool = AtomicBool::new(false);

/// An agent runs in this process (from start until its collector has finished).
pub fn running() -> bool {
    RUNNING.load(Ordering::SeqCst)
}

impl AgentBuilder {
    /// Validates and starts profiling every thread of the process.
    pub fn start(self) -> Result<Agent> {
        Agent::start(self.build()?)
    }
}

/// Counters of a running agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU samples aggregated (weights summed).
    pub samples: u64,
    /// CPU samples dropped because the ring was full (in the CPU profile as `[lost samples]`).
    pub samples_lost: u64,
    /// Sampled allocations dropped because the ring was full: memory the memory profile does
    /// not show (never counted as CPU).
    pub alloc_samples_lost: u64,
    /// Samples whose stack was cut short.
    pub samples_truncated: u64,
    /// Wall-clock samples ([`Agent::add_wall_sample`]) in closed windows (weights summed).
    pub wall_samples: u64,
    /// Wall-clock samples dropped (the collector was behind by 100,000, or a forked child).
    pub wall_samples_lost: u64,
    /// Windows closed.
    pub windows: u64,
    /// Profiles built and queued for delivery (one per profile type per window with samples).
    /// Once [`Agent::stop`] returns, `profiles == uploads_sent + uploads_dropped`.
    pub profiles: u64,
    /// Profiles delivered.
    pub uploads_sent: u64,
    /// Profiles not delivered, whatever the reason: failed, pushed out of a full queue, or
    /// still queued or in flight when the shutdown timeout passed.
    pub uploads_dropped: u64,
    /// Of `uploads_dropped`, those the server refused or that failed until retries ran out.
    pub uploads_failed: u64,
    /// Upload attempts retried.
    pub upload_retries: u64,
    /// Windows the shutdown timeout did not wait for (the collector was still building them):
    /// never queued, so counted here and not in `profiles`.
    pub windows_abandoned: u64,
    /// Threads with a CPU timer now.
    pub threads_sampled: u64,
    /// Timer creations refused so far (thread table full, or the kernel refused), one per
    /// attempt: a thread that cannot be armed is retried at every scan.
    pub threads_unsampled: u64,
    /// Signal handler runs for our timers since the process started (all agents).
    pub handler_runs: u64,
    /// Nanoseconds spent in those runs, in all.
    pub handler_ns: u64,
    /// Distinct (stack, labels) allocation sample groups aggregated (sum over windows).
    pub alloc_sample_groups: u64,
    /// Sampled allocations not tracked as live because the live map was full.
    pub live_overflow: u64,
    /// Label sets interned now (process-wide; unused ones are reclaimed as windows close).
    pub label_sets_live: u64,
    /// New label sets refused at the live cap (`labels::MAX_LABEL_SETS`, 65,536) so far:
    /// recorded under `pyroscope_overflow="true"` instead, or `LabelSet::new` returned
    /// `Error::LabelSetLimit`.
    pub label_sets_overflowed: u64,
    /// Label sets freed because nothing used them any more, so far.
    pub label_sets_reclaimed: u64,
    /// Labels left out by `tag_wrapper`/`push_labels` so far (process-wide): invalid name.
    pub labels_rejected_name: u64,
    /// ... invalid value (empty, over 2048 bytes, or with control characters).
    pub labels_rejected_value: u64,
    /// ... a name given twice in one call (the last value is kept).
    pub labels_rejected_duplicate: u64,
    /// ... beyond the 32 labels a sample may carry.
    pub labels_rejected_too_many: u64,
    /// Timer signals that arrived after their timer was deleted (kernels before 6.13) and were
    /// dropped, so far (process-wide): never recorded against another thread.
    pub signals_stale: u64,
    /// Times a scan found a signal handler still running and kept the states of exited threads
    /// for a later scan instead of freeing them, so far (process-wide).
    pub thread_frees_deferred: u64,
}

/// A running profiler. Dropping it stops profiling and flushes the last window, waiting at
/// most the shutdown timeout (default 2 s).
pub struct Agent {
    config: Config,
    shared: Arc<Shared>,
    /// The collector thread and the channel it signals its end on.
    collector: Option<(JoinHandle<()>, mpsc::Receiver<()>)>,
    uploader_done: Option<mpsc::Receiver<()>>,
    queue: Arc<Queue>,
    pid: i32,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Agent {
    /// Checks `config` ([`Config::validate`]) and starts profiling with it. Only one agent may
    /// run per process: [`Error::AlreadyRunning`] while another runs, or while the collector of
    /// one whose [`stop`](Agent::stop) timed out is still finishing its last window.
    pub fn start(config: Config) -> Result<Agent> {
        config.validate()?;
        if RUNNING.swap(true, Ordering::SeqCst) {
            return Err(Error::AlreadyRunning);
        }
        match Self::start_inner(config) {
            Ok(a) => Ok(a),
            Err(e) => {
                RUNNING.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    fn start_inner(config: Config) -> Result<Agent> {
        install_fork_handlers();
        let exporter: Box<dyn Exporter> = match &config.destination {
            Destination::Server(url) => Box::new(HttpExporter::new(&config, url)),
            Destination::Directory(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::ExportDir { path: dir.display().to_string(), reason: e.to_string() })?;
                Box::new(FileExporter { dir: dir.clone() })
            }
            Destination::Nowhere => Box::new(crate::export::Discard),
        };
        let stats = Arc::new(ExportStats::default());
        let queue = Arc::new(Queue::new(config.queue_capacity, stats.clone()));
        let shared = Arc::new(Shared::new(stats));
        // The first window's end, known before the collector starts: `window_remaining` is
        // right from the start.
        shared.set_window_end(std::time::Instant::now() + config.upload_interval);
        let sampler = Sampler::start(
            config.cpu,
            config.signal,
            config.signal_on_alt_stack,
            config.sample_rate,
            collector::RING_LANES,
            config.ring_records.div_ceil(collector::RING_LANES),
        )?;
        if config.memory {
            crate::alloc::reset_live();
            crate::alloc::SAMPLE_BYTES.store(config.alloc_sample_bytes, Ordering::SeqCst);
            if let Some(seed) = config.alloc_seed {
                crate::alloc::SEED.store(seed, Ordering::SeqCst);
            }
            crate::alloc::ENABLED.store(true, Ordering::SeqCst);
        }
        // Allocation sampling is off again if starting fails below (the sampler stops on drop).
        let failed = |e: Error| {
            crate::alloc::ENABLED.store(false, Ordering::SeqCst);
            e
        };

        let (done_tx, done_rx) = mpsc::channel();
        let q = queue.clone();
        let max_retry = config.upload_interval * 3;
        std::thread::Builder::new()
            .name("pyroscope-upload".into())
            .spawn(move || {
                crate::thread::mark_own();
                q.run(&*exporter, max_retry);
                let _ = done_tx.send(());
            })
            .map_err(|e| failed(Error::Os { what: "spawning the upload thread", errno: e.to_string() }))?;

        let (ready_tx, ready_rx) = mpsc::channel();
        let (collector_tx, collector_rx) = mpsc::channel();
        let (sh, q, cfg) = (shared.clone(), queue.clone(), config.clone());
        // The thread owns everything it uses (the sampler, the config and the shared state are
        // moved in or reference-counted; the rest is 'static), so it may outlive the Agent when
        // shutdown stops waiting for it. It releases the one-agent slot itself once the sampler
        // is dropped: no second agent can arm timers or reset allocation state under it.
        let spawned = std::thread::Builder::new().name("pyroscope-collect".into()).spawn(move || {
            // Dropped last, after the sampler, even if the collector panics.
            let _slot = ReleaseSlot(collector_tx);
            crate::thread::mark_own();
            let _ = ready_tx.send(());
            collector::collect(cfg, sampler, sh, q);
        });
        let collector = match spawned {
            Ok(c) => c,
            Err(e) => {
                // The uploader has nothing to wait for.
                queue.close(Instant::now());
                return Err(failed(Error::Os { what: "spawning the collector thread", errno: e.to_string() }));
            }
        };
        // The collector's first scan must not sample the collector itself.
        let _ = ready_rx.recv_timeout(Duration::from_secs(1));
        Ok(Agent {
            config,
            shared,
            collector: Some((collector, collector_rx)),
            uploader_done: Some(done_rx),
            queue,
            pid: sys::getpid(),
        })
    }

    /// The validated configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let e = &s.export;
        let labels = crate::labels::counters();
        Stats {
            samples: s.samples.load(Ordering::Relaxed),
            samples_lost: s.lost.load(Ordering::Relaxed),
            alloc_samples_lost: s.alloc_lost.load(Ordering::Relaxed),
            samples_truncated: s.truncated.load(Ordering::Relaxed),
            wall_samples: s.wall_samples.load(Ordering::Relaxed),
            wall_samples_lost: s.wall_lost.load(Ordering::Relaxed),
            windows: s.windows.load(Ordering::Relaxed),
            profiles: e.queued.load(Ordering::Relaxed),
            uploads_sent: e.sent.load(Ordering::Relaxed),
            uploads_failed: e.dropped_failed.load(Ordering::Relaxed),
            windows_abandoned: s.windows_abandoned.load(Ordering::Relaxed),
            uploads_dropped: e.dropped_failed.load(Ordering::Relaxed)
                + e.dropped_queue_full.load(Ordering::Relaxed)
                + e.dropped_at_shutdown.load(Ordering::Relaxed),
            upload_retries: e.retries.load(Ordering::Relaxed),
            threads_sampled: s.threads.load(Ordering::Relaxed),
            threads_unsampled: s.unsampled.load(Ordering::Relaxed),
            handler_runs: sampler::HANDLER_RUNS.load(Ordering::Relaxed),
            handler_ns: sampler::HANDLER_NS.load(Ordering::Relaxed),
            alloc_sample_groups: s.alloc_samples.load(Ordering::Relaxed),
            live_overflow: crate::alloc::LIVE_OVERFLOW.load(Ordering::Relaxed),
            label_sets_live: labels.live,
            label_sets_overflowed: labels.overflowed,
            label_sets_reclaimed: labels.reclaimed,
            labels_rejected_name: labels.rejected_name,
            labels_rejected_value: labels.rejected_value,
            labels_rejected_duplicate: labels.rejected_duplicate,
            labels_rejected_too_many: labels.rejected_too_many,
            signals_stale: sampler::STALE_SIGNALS.load(Ordering::Relaxed),
            thread_frees_deferred: sampler::RETIRE_DEFERRED.load(Ordering::Relaxed),
        }
    }

    /// Closes the current window now (instead of at the end of the interval) and queues it.
    pub fn flush(&self) {
        self.shared.flush_now.store(true, Ordering::SeqCst);
        crate::ring::COLLECTOR_WAKE.notify_all();
    }

    /// Profiles CPU for `duration` from now, beside the regular windows, which go on being
    /// built and sent as usual: the capture gets a copy of every CPU sample the agent takes
    /// meanwhile, labels included. Returns at once; [`Capture::wait`] gives the profile once
    /// `duration` has passed.
    ///
    /// The capture begins when the collector next wakes (within 50 ms) and its profile says
    /// when it began and how long it lasted. If the agent stops first, the capture ends there
    /// with what it has. At most 8 captures at once ([`Error::CaptureLimit`]), each at most
    /// an hour ([`Error::InvalidCaptureDuration`]); none in a forked child
    /// ([`Error::CaptureStopped`]).
    pub fn capture_cpu(&self, duration: Duration) -> Result<Capture> {
        if duration > collector::MAX_CAPTURE {
            return Err(Error::InvalidCaptureDuration { duration });
        }
        if sys::getpid() != self.pid {
            return Err(Error::CaptureStopped);
        }
        let capturing = &self.shared.capturing;
        let taken = capturing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < collector::MAX_CAPTURES).then_some(n + 1));
        if taken.is_err() {
            return Err(Error::CaptureLimit { limit: collector::MAX_CAPTURES });
        }
        let slot = CaptureSlot(capturing.clone());
        let (reply, rx) = mpsc::channel();
        match self.shared.captures.lock().as_mut() {
            Some(pending) => pending.push(CaptureRequest { duration, reply, slot }),
            // The collector has ended.
            None => return Err(Error::CaptureStopped),
        }
        crate::ring::COLLECTOR_WAKE.notify_all();
        Ok(Capture { rx })
    }

    /// Adds a CPU sample from another stack source (a binding's interpreter frames, leaf
    /// first), with the labels it had and its weight in sample periods.
    /// In a forked child the sample is counted as lost: the parent's collector does not run
    /// there, and a parent thread may have held the queue's lock at the fork.
    pub fn add_cpu_sample(&self, frames: &[FrameId], labels: &LabelSet, weight: u64) {
        if sys::getpid() != self.pid {
            self.shared.lost.fetch_add(weight, Ordering::Relaxed);
            return;
        }
        let mut ext = self.shared.external.lock();
        if ext.len() < 100_000 {
            ext.push((frames.to_vec(), labels.clone(), weight));
        } else {
            self.shared.lost.fetch_add(weight, Ordering::Relaxed);
        }
    }

    /// Adds a wall-clock sample of some thread (not necessarily the caller: a binding's sampler
    /// thread records every thread, idle ones included): its frames (leaf first), the labels in
    /// force on that thread ([`crate::labels_of_thread`]), the interpreter's labels to lay over
    /// them name by name (a context variable's), and the weight in sample periods. They go into
    /// the `wall` profile (`samples/count`, `wall/nanoseconds`, period 1/sample rate), closed and
    /// sent with the CPU profile's window; the CPU profile is unchanged. Counted as lost in a
    /// forked child, and past 100,000 samples waiting for the collector.
    pub fn add_wall_sample(&self, frames: &[FrameId], labels: &LabelSet, context: Option<&LabelSet>, weight: u64) {
        if sys::getpid() != self.pid {
            self.shared.wall_lost.fetch_add(weight, Ordering::Relaxed);
            return;
        }
        let mut wall = self.shared.wall.lock();
        if wall.len() < 100_000 {
            wall.push((frames.to_vec(), labels.clone(), context.cloned(), weight));
        } else {
            self.shared.wall_lost.fetch_add(weight, Ordering::Relaxed);
        }
    }

    /// Reports the in-use memory of a runtime's own heap as it is now, from the runtime's
    /// sampler (V8's sampling heap profiler: live sampled objects, unbiased by V8), sampled
    /// every `interval_bytes` on average. `heap` tells heaps apart (one per isolate): the
    /// window open now reports the latest state of each heap, summed, as `inuse_objects` and
    /// `inuse_space` in its `memory` profile (period `space`/bytes = `interval_bytes`). The
    /// binding gives it again before each window closes ([`Agent::window_remaining`]) and
    /// before [`Agent::stop`]; a heap not given again in a window keeps its last state there,
    /// until [`Agent::end_heap`].
    ///
    /// This profile is separate from the allocator hook's (the `memory` option): with both on,
    /// a window sends two `memory` profiles. Ignored in a forked child.
    pub fn set_heap_inuse(&self, heap: u64, interval_bytes: u64, samples: Vec<HeapSample>) {
        if sys::getpid() == self.pid {
            self.shared.heap.lock().set_inuse(heap, interval_bytes, samples);
        }
    }

    /// Ends heap `heap` (its sampler stopped, or its isolate is gone): a state given in the
    /// window open now is reported there, and none in later windows (unless the heap is
    /// reported again). Ignored in a forked child.
    pub fn end_heap(&self, heap: u64) {
        if sys::getpid() == self.pid {
            self.shared.heap.lock().end(heap);
        }
    }

    /// Adds allocations a runtime's own sampler saw (V8's sampling heap profiler keeping
    /// collected objects too), sampled every `interval_bytes` on average, to the window open
    /// now: summed per stack, reported as `alloc_objects` and `alloc_space` in its `memory`
    /// profile (see [`Agent::set_heap_inuse`]). At most 50,000 distinct stacks a window; more
    /// go to one `[stack table overflow]` stack. Ignored in a forked child.
    pub fn add_heap_allocations(&self, interval_bytes: u64, samples: &[HeapSample]) {
        if sys::getpid() == self.pid {
            self.shared.heap.lock().add_alloc(interval_bytes, samples);
        }
    }

    /// A gzipped pprof of one heap report on its own, as the window's `memory` profile would
    /// show it (in-use, or `allocations`), for pull-mode endpoints (`/debug/pprof/heap`); the
    /// agent's tags go on every sample, as in exported files.
    pub fn heap_pprof(&self, allocations: bool, interval_bytes: u64, samples: Vec<HeapSample>) -> Vec<u8> {
        let mut heap = crate::aggregate::HeapWindow::default();
        if allocations {
            heap.add_alloc(interval_bytes, &samples);
        } else {
            heap.set_inuse(0, interval_bytes, samples);
        }
        let labels: Vec<(String, String)> = self.config.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let now = std::time::SystemTime::now();
        crate::pprof::encode_gzip(&heap.memory_profile(now, now, &labels))
    }

    /// Time left until the open window closes (at most the upload interval; zero once it is
    /// due): when a binding that reports its runtime's heap should do it.
    pub fn window_remaining(&self) -> Duration {
        self.shared.window_remaining()
    }

    /// Stops profiling, flushes the last window and waits for it to be delivered, at most
    /// the shutdown timeout. Returns the final counters.
    pub fn stop(mut self) -> Stats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        let Some((collector, collector_done)) = self.collector.take() else {
            return;
        };
        if sys::getpid() != self.pid {
            // A forked child: the parent's threads do not exist here and its samples are not
            // ours to send. Forget them.
            std::mem::forget(collector);
            self.uploader_done.take();
            return;
        }
        let deadline = Instant::now() + self.config.shutdown_timeout;
        // No new samples from here, even if the collector is not waited for: a hook or handler
        // that ran on would write into a ring nothing drains.
        sampler::ENABLED.store(false, Ordering::SeqCst);
        crate::alloc::ENABLED.store(false, Ordering::SeqCst);
        self.queue.stopping();
        *self.shared.stop.lock() = true;
        crate::ring::COLLECTOR_WAKE.notify_all();
        // The collector closes the last window (symbolizing every new address in it) and
        // queues its profiles. Past the deadline it is left to finish on its own: it owns its
        // state, drops what it built, and frees the agent slot when it ends.
        match collector_done.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Closing first: from here the queue refuses (and counts nowhere) what the
                // collector still pushes, so `profiles` holds only what the uploader sends or
                // counts as dropped.
                self.queue.close(deadline);
                self.shared.windows_abandoned.fetch_add(1, Ordering::Relaxed);
                drop(collector);
            }
            _ => {
                let _ = collector.join();
                self.queue.close(deadline);
            }
        }
        let uploaded = self
            .uploader_done
            .take()
            .is_some_and(|done| done.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok());
        if !uploaded {
            // What is queued or in flight now is counted as dropped; the uploader thread, still
            // inside a request, exits when that returns.
            self.queue.abandon();
        }
    }
}

/// A CPU profile being captured ([`Agent::capture_cpu`]).
#[derive(Debug)]
#[must_use = "the profile is only read through wait()"]
pub struct Capture {
    rx: mpsc::Receiver<Vec<u8>>,
}

impl Capture {
    /// Blocks until the capture has ended and its profile is built: a gzipped pprof
    /// (`process_cpu`: `samples`/count and `cpu`/nanoseconds, period `cpu`/nanoseconds, as
    /// the uploaded CPU profiles). [`Error::CaptureStopped`] if the collector ended without
    /// building it: the agent stopped before the capture began, or its shutdown timeout
    /// passed while the profile was being built.
    pub fn wait(self) -> Result<Vec<u8>> {
        self.rx.recv().map_err(|_| Error::CaptureStopped)
    }
}

/// Turns allocation sampling off (however the collector ended: stopped, abandoned or
/// panicked, nothing drains the ring any more), frees the one-agent slot, then tells the
/// agent the collector has ended.
struct ReleaseSlot(mpsc::Sender<()>);

impl Drop for ReleaseSlot {
    fn drop(&mut self) {
        crate::alloc::ENABLED.store(false, Ordering::SeqCst);
        RUNNING.store(false, Ordering::SeqCst);
        let _ = self.0.send(());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn install_fork_handlers() {
    static ONCE: Once = Once::new();
    // Every lock the profiler's threads take is held across fork, so the child never inherits
    // one held by a thread that does not exist there. Fixed order, reversed on release.
    extern "C" fn prepare() {
        // Lock order: the resolver (held while a drain names frames and merges labels) first.
        crate::interp::prepare_fork();
        crate::jit::prepare_fork();
        crate::labels::prepare_fork();
        sampler::prepare_fork();
        crate::alloc::prepare_fork();
        crate::aggregate::prepare_fork();
        unwind::prepare_fork();
        crate::log_prepare_fork();
    }
    extern "C" fn parent() {
        crate::log_after_fork();
        unwind::after_fork();
        crate::aggregate::after_fork();
        crate::alloc::after_fork_parent();
        sampler::after_fork_parent();
        crate::labels::after_fork();
        crate::jit::after_fork();
        crate::interp::after_fork(false);
    }
    extern "C" fn child() {
        crate::log_after_fork();
        unwind::after_fork();
        crate::aggregate::after_fork();
        crate::alloc::after_fork_child();
        sampler::after_fork_child();
        crate::labels::after_fork();
        crate::jit::after_fork();
        crate::interp::after_fork(true);
        // The parent's agent does not run here; a new one may be started.
        RUNNING.store(false, Ordering::SeqCst);
    }
    ONCE.call_once(|| {
        // SAFETY: the three handlers are plain extern "C" functions that live forever.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}
