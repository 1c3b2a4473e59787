//! Lifecycle: build -> start -> stop/drop (flushes the last window under a deadline); fork.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::sync::Mutex;

use crate::aggregate::{AllocWindow, FrameId, Window};
use crate::config::{self, env, Auth, Config, Destination, Protocol, MAX_SAMPLE_RATE};
use crate::error::{Error, Result};
use crate::export::{file::FileExporter, http::HttpExporter, ExportStats, Exporter, Queue, Upload};
use crate::labels::LabelSet;
use crate::sampler::{self, ring::Kind, Sampler};
use crate::symbolize::Symbolizer;
use crate::{pprof, sys, unwind};

static RUNNING: AtomicBool = AtomicBool::new(false);

/// Collects settings; [`start`](AgentBuilder::start) validates them all and starts profiling.
#[derive(Clone, Debug)]
#[must_use]
pub struct AgentBuilder {
    application_name: String,
    server_address: Option<String>,
    export_dir: Option<PathBuf>,
    tags: Vec<(String, String)>,
    sample_rate: u32,
    upload_interval: Duration,
    auth: Auth,
    tenant_id: Option<String>,
    headers: BTreeMap<String, String>,
    request_timeout: Duration,
    protocol: Protocol,
    signal: i32,
    signal_on_alt_stack: bool,
    shutdown_timeout: Duration,
    queue_capacity: usize,
    memory: bool,
    alloc_sample_bytes: u64,
    alloc_seed: Option<u64>,
    env_error: Option<Error>,
}

impl AgentBuilder {
    /// Defaults: 100 Hz, 10 s windows, push API, profiles to `./profiles` unless a server is set.
    pub fn new(application_name: impl Into<String>) -> Self {
        AgentBuilder {
            application_name: application_name.into(),
            server_address: None,
            export_dir: None,
            tags: Vec::new(),
            sample_rate: 100,
            upload_interval: Duration::from_secs(10),
            auth: Auth::None,
            tenant_id: None,
            headers: BTreeMap::new(),
            request_timeout: Duration::from_secs(10),
            protocol: Protocol::Push,
            signal: libc::SIGPROF,
            signal_on_alt_stack: false,
            shutdown_timeout: Duration::from_secs(2),
            queue_capacity: 32,
            memory: true,
            alloc_sample_bytes: crate::alloc::DEFAULT_SAMPLE_BYTES,
            alloc_seed: None,
            env_error: None,
        }
    }

    /// Starts from the `PYROSCOPE_*` environment variables (see [`crate::env`]); later calls
    /// override them. A malformed variable is reported by `start()`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut b2 = AgentBuilder::new(var(env::APPLICATION_NAME).unwrap_or_default());
        let mut env_error = None;
        let mut fail = |e: Error| {
            if env_error.is_none() {
                env_error = Some(e);
            }
        };
        if let Some(v) = var(env::SERVER_ADDRESS) {
            b2.server_address = Some(v);
        }
        if let Some(v) = var(env::EXPORT_DIR) {
            b2.export_dir = Some(v.into());
        }
        if let Some(v) = var(env::TAGS) {
            match config::parse_tags(&v) {
                Ok(t) => b2.tags = t,
                Err(e) => fail(e),
            }
        }
        match env_number::<u32>(env::SAMPLE_RATE, "not a whole number of Hz") {
            Ok(Some(r)) => b2.sample_rate = r,
            Ok(None) => {}
            Err(e) => fail(e),
        }
        if let Some(v) = var(env::UPLOAD_INTERVAL) {
            match config::parse_seconds(env::UPLOAD_INTERVAL, &v) {
                Ok(d) => b2.upload_interval = d,
                Err(e) => fail(e),
            }
        }
        if let Some(t) = var(env::AUTH_TOKEN) {
            b2.auth = Auth::Bearer(t);
        }
        if let Some(user) = var(env::BASIC_AUTH_USER) {
            if matches!(b2.auth, Auth::Bearer(_)) {
                fail(Error::ConflictingAuth);
            }
            b2.auth = Auth::Basic { user, password: var(env::BASIC_AUTH_PASSWORD).unwrap_or_default() };
        }
        if let Some(t) = var(env::TENANT_ID) {
            b2.tenant_id = Some(t);
        }
        match env_number::<u64>(env::ALLOC_SAMPLE_BYTES, "not a whole number of bytes") {
            Ok(Some(n)) => b2.alloc_sample_bytes = n,
            Ok(None) => {}
            Err(e) => fail(e),
        }
        if let Some(v) = var(env::MEMORY) {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => b2.memory = true,
                "0" | "false" | "no" | "off" => b2.memory = false,
                _ => fail(Error::InvalidEnv { var: env::MEMORY, value: v, reason: "use true or false".into() }),
            }
        }
        b2.env_error = env_error;
        b2
    }

    /// Application (service) name, `[A-Za-z0-9_.\-/]+`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }
    /// Pyroscope server base URL (`http://localhost:4040`). Without it, profiles go to files.
    pub fn server_address(mut self, url: impl Into<String>) -> Self {
        self.server_address = Some(url.into());
        self
    }
    /// Folder for the embedded default (used when no server address is set).
    pub fn export_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.export_dir = Some(dir.into());
        self
    }
    /// Adds a static tag (on every series), e.g. `region`.
    pub fn tag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.tags.retain(|(k, _)| *k != name);
        self.tags.push((name, value.into()));
        self
    }
    /// Adds static tags.
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        for (k, v) in tags {
            self = self.tag(k, v);
        }
        self
    }
    /// CPU samples per second per thread (default 100).
    pub fn sample_rate(mut self, hz: u32) -> Self {
        self.sample_rate = hz;
        self
    }
    /// Window length (default 10 s).
    pub fn upload_interval(mut self, interval: Duration) -> Self {
        self.upload_interval = interval;
        self
    }
    /// HTTP basic auth.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Auth::Basic { user: user.into(), password: password.into() };
        self
    }
    /// Bearer token.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Bearer(token.into());
        self
    }
    /// `X-Scope-OrgID`.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }
    /// An extra HTTP header, applied after the others.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
    /// Timeout of one HTTP request (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
    /// Push API (default) or `/ingest`.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }
    /// The signal for CPU samples (default SIGPROF; use a real-time signal inside hosts that
    /// own SIGPROF).
    pub fn signal(mut self, signal: i32) -> Self {
        self.signal = signal;
        self
    }
    /// Runs the CPU signal handler on the thread's alternate signal stack (`SA_ONSTACK`), as Go
    /// requires of every handler in a cgo program. Only for hosts whose alternate stacks have
    /// 32 KiB or more (Go's have); Rust's own are smaller, so the default is off.
    pub fn signal_on_alt_stack(mut self, on: bool) -> Self {
        self.signal_on_alt_stack = on;
        self
    }
    /// Longest `stop()`/drop may take (default 2 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Memory profiles on (default) or off. They need a [`crate::SamplingAllocator`] as the
    /// global allocator, or the preload library.
    pub fn memory(mut self, enabled: bool) -> Self {
        self.memory = enabled;
        self
    }
    /// Mean bytes between allocation samples (default 512 KiB).
    pub fn alloc_sample_bytes(mut self, bytes: u64) -> Self {
        self.alloc_sample_bytes = bytes;
        self
    }
    /// Fixes the allocation sampling RNG's seed, for reproducible tests.
    pub fn alloc_seed(mut self, seed: u64) -> Self {
        self.alloc_seed = Some(seed);
        self
    }

    /// Validates every setting.
    pub fn build(self) -> Result<Config> {
        if let Some(e) = self.env_error {
            return Err(e);
        }
        config::validate_application_name(&self.application_name)?;
        let destination = match &self.server_address {
            Some(s) => Destination::Server(config::parse_server_address(s)?),
            None => Destination::Directory(self.export_dir.clone().unwrap_or_else(|| PathBuf::from("./profiles"))),
        };
        let mut tags = BTreeMap::new();
        for (k, v) in &self.tags {
            config::validate_tag(k, v)?;
            tags.insert(k.clone(), v.clone());
        }
        // The server allows 30 label names per series; we add up to 6 of our own.
        if tags.len() > 24 {
            return Err(Error::TooManyLabels { count: tags.len(), max: 24 });
        }
        if self.sample_rate == 0 || self.sample_rate > MAX_SAMPLE_RATE {
            return Err(Error::InvalidSampleRate { rate: self.sample_rate, max: MAX_SAMPLE_RATE });
        }
        if self.upload_interval < Duration::from_secs(1) || self.upload_interval > Duration::from_secs(3600) {
            return Err(Error::InvalidUploadInterval { interval: self.upload_interval });
        }
        if self.request_timeout.is_zero() {
            return Err(Error::InvalidTimeout { timeout: self.request_timeout });
        }
        for (k, v) in &self.headers {
            let name_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
            if !name_ok || v.bytes().any(|b| b == b'\r' || b == b'\n') {
                return Err(Error::InvalidHeader { name: k.clone() });
            }
        }
        if self.signal != libc::SIGPROF && !(libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&self.signal) {
            return Err(Error::InvalidSignal { signal: self.signal });
        }
        if self.alloc_sample_bytes == 0 {
            return Err(Error::InvalidAllocSampleBytes { bytes: 0 });
        }
        Ok(Config {
            memory: self.memory,
            alloc_sample_bytes: self.alloc_sample_bytes,
            alloc_seed: self.alloc_seed,
            application_name: self.application_name,
            destination,
            tags,
            sample_rate: self.sample_rate,
            upload_interval: self.upload_interval,
            auth: self.auth,
            tenant_id: self.tenant_id,
            headers: self.headers,
            request_timeout: self.request_timeout,
            protocol: self.protocol,
            signal: self.signal,
            signal_on_alt_stack: self.signal_on_alt_stack,
            shutdown_timeout: self.shutdown_timeout,
            queue_capacity: self.queue_capacity,
        })
    }

    /// Validates and starts profiling every thread of the process.
    pub fn start(self) -> Result<Agent> {
        Agent::start(self.build()?)
    }
}

/// A whole number from the environment: None when unset or blank, a typed error when malformed.
fn env_number<T: std::str::FromStr>(var: &'static str, reason: &str) -> Result<Option<T>> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse().map(Some).map_err(|_| Error::InvalidEnv { var, value: v, reason: reason.into() })
        }
        _ => Ok(None),
    }
}

/// Counters of a running agent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// CPU samples aggregated (weights summed).
    pub samples: u64,
    /// Samples dropped because the ring was full.
    pub samples_lost: u64,
    /// Samples whose stack was cut short.
    pub samples_truncated: u64,
    /// Windows closed.
    pub windows: u64,
    /// Profiles delivered.
    pub uploads_sent: u64,
    /// Profiles dropped (queue full, failed, or at shutdown).
    pub uploads_dropped: u64,
    /// Upload attempts retried.
    pub upload_retries: u64,
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
}

struct Shared {
    stop: Mutex<bool>,
    flush_now: AtomicBool,
    samples: AtomicU64,
    lost: AtomicU64,
    truncated: AtomicU64,
    windows: AtomicU64,
    threads: AtomicU64,
    unsampled: AtomicU64,
    alloc_samples: AtomicU64,
    external: Mutex<Vec<(Vec<FrameId>, u32, u64)>>,
    export: Arc<ExportStats>,
}

/// A running profiler. Dropping it stops profiling and flushes the last window, waiting at
/// most the shutdown timeout (default 2 s).
pub struct Agent {
    config: Config,
    shared: Arc<Shared>,
    collector: Option<JoinHandle<()>>,
    uploader_done: Option<mpsc::Receiver<()>>,
    queue: Arc<Queue>,
    pid: i32,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("config", &self.config).finish_non_exhaustive()
    }
}

const TICK: Duration = Duration::from_millis(50);
/// The collector's sleep while the ring is busy: a drain that found an eighth of a lane
/// filled since the last one comes back this soon, and a hook that finds its lane half full
/// wakes it, so bursts (a program allocating tens of GB/s) do not overflow the ring and lose
/// samples.
const BUSY_TICK: Duration = Duration::from_millis(2);
/// Ring lanes (writer threads are spread over them) and records per lane: 4 MiB in all.
const RING_LANES: usize = 4;
const LANE_CAPACITY: usize = 1024;
const SCAN_EVERY: Duration = Duration::from_millis(100);
const MIN_SCAN_GAP: Duration = Duration::from_millis(5);

impl Agent {
    /// Starts profiling with a validated config. Only one agent may run per process.
    pub fn start(config: Config) -> Result<Agent> {
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
        };
        let stats = Arc::new(ExportStats::default());
        let queue = Arc::new(Queue::new(config.queue_capacity, stats.clone()));
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            flush_now: AtomicBool::new(false),
            samples: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            windows: AtomicU64::new(0),
            threads: AtomicU64::new(0),
            unsampled: AtomicU64::new(0),
            alloc_samples: AtomicU64::new(0),
            external: Mutex::new(Vec::new()),
            export: stats,
        });
        let sampler =
            Sampler::start(config.signal, config.signal_on_alt_stack, config.sample_rate, RING_LANES, LANE_CAPACITY)?;
        if config.memory {
            crate::alloc::reset_live();
            crate::alloc::SAMPLE_BYTES.store(config.alloc_sample_bytes, Ordering::SeqCst);
            if let Some(seed) = config.alloc_seed {
                crate::alloc::SEED.store(seed, Ordering::SeqCst);
            }
            crate::alloc::ENABLED.store(true, Ordering::SeqCst);
        }

        let (done_tx, done_rx) = mpsc::channel();
        let q = queue.clone();
        let max_retry = config.upload_interval * 3;
        std::thread::Builder::new()
            .name("pyroscope-upload".into())
            .spawn(move || {
                sampler::mark_own_thread();
                q.run(&*exporter, max_retry);
                let _ = done_tx.send(());
            })
            .map_err(|e| Error::Os { what: "spawning the upload thread", errno: e.to_string() })?;

        let (ready_tx, ready_rx) = mpsc::channel();
        let (sh, q, cfg) = (shared.clone(), queue.clone(), config.clone());
        let collector = std::thread::Builder::new()
            .name("pyroscope-collect".into())
            .spawn(move || {
                sampler::mark_own_thread();
                let _ = ready_tx.send(());
                collect(cfg, sampler, sh, q);
            })
            .map_err(|e| Error::Os { what: "spawning the collector thread", errno: e.to_string() })?;
        // The collector's first scan must not sample the collector itself.
        let _ = ready_rx.recv_timeout(Duration::from_secs(1));
        Ok(Agent {
            config,
            shared,
            collector: Some(collector),
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
        Stats {
            samples: s.samples.load(Ordering::Relaxed),
            samples_lost: s.lost.load(Ordering::Relaxed),
            samples_truncated: s.truncated.load(Ordering::Relaxed),
            windows: s.windows.load(Ordering::Relaxed),
            uploads_sent: e.sent.load(Ordering::Relaxed),
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
        }
    }

    /// Closes the current window now (instead of at the end of the interval) and queues it.
    pub fn flush(&self) {
        self.shared.flush_now.store(true, Ordering::SeqCst);
        sampler::COLLECTOR_WAKE.notify_all();
    }

    /// Adds a CPU sample from another stack source (a binding's interpreter frames, leaf
    /// first), with the labels it had and its weight in sample periods.
    pub fn add_cpu_sample(&self, frames: &[FrameId], labels: LabelSet, weight: u64) {
        let mut ext = self.shared.external.lock();
        if ext.len() < 100_000 {
            ext.push((frames.to_vec(), labels.id(), weight));
        } else {
            self.shared.lost.fetch_add(weight, Ordering::Relaxed);
        }
    }

    /// Stops profiling, flushes the last window and waits for it to be delivered, at most
    /// the shutdown timeout. Returns the final counters.
    pub fn stop(mut self) -> Stats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        let Some(collector) = self.collector.take() else {
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
        *self.shared.stop.lock() = true;
        sampler::COLLECTOR_WAKE.notify_all();
        let _ = collector.join();
        self.queue.close(deadline);
        if let Some(done) = self.uploader_done.take() {
            let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
        RUNNING.store(false, Ordering::SeqCst);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn tags_hash(app: &str, tags: &BTreeMap<String, String>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    app.hash(&mut h);
    tags.hash(&mut h);
    h.finish()
}

fn collect(config: Config, mut sampler: Sampler, shared: Arc<Shared>, queue: Arc<Queue>) {
    let ring = sampler::RING_CELL.get();
    // Records left by an earlier agent belong to no window of ours.
    if let Some(r) = ring {
        r.drain(|_| {});
    }
    let period = Duration::from_nanos(1_000_000_000 / config.sample_rate as u64);
    let rate = config.alloc_sample_bytes;
    let tags = Arc::new(config.tags.clone());
    let app: Arc<str> = config.application_name.as_str().into();
    let hash = tags_hash(&config.application_name, &config.tags);
    // Files are standalone: they carry the static tags on every sample.
    let extra: Vec<(String, String)> = match config.destination {
        Destination::Directory(_) => config.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Destination::Server(_) => Vec::new(),
    };
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
    let mut allocs = AllocWindow::default();
    let mut window_end = Instant::now() + config.upload_interval;
    let mut last_scan = Instant::now();
    let mut lost_seen = ring.map_or(0, |r| r.dropped());
    let drain = |window: &mut Window, allocs: &mut AllocWindow| {
        ring.map_or(0, |r| {
            r.drain(|rec| match rec.kind {
                Kind::Cpu => window.add_cpu(rec.stack(), rec.truncated, rec.label_id, rec.weight),
                Kind::Alloc => allocs.add(rec.stack(), rec.aux, rec.label_id, rec.weight, rate),
            })
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
            if !*stop && !shared.flush_now.load(Ordering::SeqCst) && !timeout.is_zero() {
                stop = sampler::COLLECTOR_WAKE.wait_for(stop, timeout);
            }
            *stop
        };
        // Before draining: a hook that fills its lane during the drain asks again.
        sampler::WAKE_ASKED.store(false, Ordering::Release);
        busy = drain(&mut window, &mut allocs) >= LANE_CAPACITY / 8;
        if config.memory && crate::alloc::HOOKED.load(Ordering::Relaxed) {
            crate::alloc::make_resident();
        }
        if let Some(r) = ring {
            let lost = r.dropped();
            window.add_lost(lost - lost_seen);
            shared.lost.fetch_add(lost - lost_seen, Ordering::Relaxed);
            lost_seen = lost;
        }
        for (frames, label, weight) in std::mem::take(&mut *shared.external.lock()) {
            window.add_cpu_frames(&frames, label, weight);
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
                drain(&mut window, &mut allocs);
            }
            let end = SystemTime::now();
            let closed = std::mem::replace(&mut window, Window::new(end));
            window_end = Instant::now() + config.upload_interval;
            shared.samples.fetch_add(closed.total_weight, Ordering::Relaxed);
            shared.truncated.fetch_add(closed.truncated, Ordering::Relaxed);
            shared.windows.fetch_add(1, Ordering::Relaxed);
            if !closed.is_empty() {
                let profile = closed.cpu_profile(&mut symbolizer, unwind::current(), period, end, &extra);
                queue.push(upload("process_cpu", &profile, closed.start, end));
            }
            if config.memory && crate::alloc::HOOKED.load(Ordering::Relaxed) {
                let live = crate::alloc::live_snapshot();
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
                    queue.push(upload("memory", &profile, closed.start, end));
                }
            }
            // The window's new addresses are named: drop the debug info parsed for them.
            symbolizer.release();
            if stopping {
                return;
            }
        }
    }
}

fn install_fork_handlers() {
    static ONCE: Once = Once::new();
    // Every lock the profiler's threads take is held across fork, so the child never inherits
    // one held by a thread that does not exist there. Fixed order, reversed on release.
    extern "C" fn prepare() {
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
    }
    extern "C" fn child() {
        crate::log_after_fork();
        unwind::after_fork();
        crate::aggregate::after_fork();
        crate::alloc::after_fork_child();
        sampler::after_fork_child();
        crate::labels::after_fork();
        // The parent's agent does not run here; a new one may be started.
        RUNNING.store(false, Ordering::SeqCst);
    }
    ONCE.call_once(|| {
        // SAFETY: the three handlers are plain extern "C" functions that live forever.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    });
}
