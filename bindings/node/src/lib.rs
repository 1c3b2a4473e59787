//! The native part of the Node.js package: the core agent, started and stopped from
//! JavaScript; V8's JIT code names fed to the core's code map; and the label slot that
//! JavaScript switches with a plain store (see `lib/labels.js`).
//!
//! The JavaScript layer (`index.js`) checks and merges the options; this module turns them
//! into the core's configuration and keeps the one agent of the process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use pyroscope_core::{Agent, AgentBuilder, LabelSet, LabelSlot};

#[cfg(pyroscope_node_shim)]
mod cped;
mod heap;
mod idle;
mod jit;
mod pages;
mod sourcemaps;

/// The Node module ABI (`process.versions.modules`) and version this addon was built for.
pub const BUILT_FOR_ABI: &str = env!("PYROSCOPE_NODE_MODULES_ABI");
const BUILT_FOR_NODE: &str = env!("PYROSCOPE_NODE_BUILT_FOR");

/// The real-time signal of CPU samples, above glibc's reserved ones: V8's CpuProfiler and
/// tools built on it (@datadog/pprof, dd-trace) own SIGPROF.
const SIGNAL_OFFSET: i32 = 5;

static AGENT: Mutex<Option<Agent>> = Mutex::new(None);

fn agent() -> MutexGuard<'static, Option<Agent>> {
    AGENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `init()` settled, checked and merged by the JavaScript layer; `None`: the core's
/// `PYROSCOPE_*` variable, else its default.
#[napi(object)]
#[derive(Default)]
pub struct NativeOptions {
    pub app_name: Option<String>,
    pub server_address: Option<String>,
    /// Write profiles to this directory instead of uploading them.
    pub export_dir: Option<String>,
    pub auth_token: Option<String>,
    pub basic_auth_user: Option<String>,
    pub basic_auth_password: Option<String>,
    pub tenant_id: Option<String>,
    pub headers: Option<HashMap<String, String>>,
    /// The user's tags (series labels).
    pub tags: Option<HashMap<String, String>>,
    /// Added after the user's tags unless those have the name (`otel.scope.name`, ...).
    pub runtime_tags: Option<HashMap<String, String>>,
    pub upload_interval_ms: Option<u32>,
    pub sample_rate: Option<u32>,
    pub cpu: Option<bool>,
    pub shutdown_timeout_ms: Option<u32>,
    /// Upload nothing: profiles are only pulled (pull mode without `start()`).
    pub pull_only: Option<bool>,
}

fn invalid(message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(Status::InvalidArg, format!("Invalid config: {message}"))
}

fn build(o: &NativeOptions) -> Result<pyroscope_core::Config> {
    // No allocation hooks in Node (V8 reports its heap itself): a ring for CPU and wall samples.
    let mut b = AgentBuilder::from_env().signal(libc::SIGRTMIN() + SIGNAL_OFFSET).memory(false).ring_records(512);
    if let Some(n) = &o.app_name {
        b = b.application_name(n.clone());
    }
    if let Some(a) = &o.server_address {
        b = b.server_address(a.clone());
    }
    if let Some(d) = &o.export_dir {
        b = b.export_dir(d.clone());
    }
    if let Some(t) = &o.auth_token {
        b = b.auth_token(t.clone());
    } else if let (Some(u), Some(p)) = (&o.basic_auth_user, &o.basic_auth_password) {
        b = b.basic_auth(u.clone(), p.clone());
    }
    if let Some(t) = &o.tenant_id {
        b = b.tenant_id(t.clone());
    }
    for (k, v) in o.headers.iter().flatten() {
        b = b.header(k.clone(), v.clone());
    }
    let mut tags: Vec<(&String, &String)> = o.tags.iter().flatten().collect();
    tags.sort();
    b = b.tags(tags.into_iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(ms) = o.upload_interval_ms {
        if !(1000..=3_600_000).contains(&ms) {
            return Err(invalid(format!("flushIntervalMs {ms} must be between 1000 (1 s) and 3600000 (1 h)")));
        }
        b = b.upload_interval(Duration::from_millis(ms.into()));
    }
    if let Some(hz) = o.sample_rate {
        b = b.sample_rate(hz);
    }
    if let Some(cpu) = o.cpu {
        b = b.cpu(cpu);
    }
    if let Some(ms) = o.shutdown_timeout_ms {
        b = b.shutdown_timeout(Duration::from_millis(ms.into()));
    }
    if o.pull_only == Some(true) {
        b = b.pull_only();
    }
    let mut config = b.build().map_err(|e| match e {
        pyroscope_core::Error::EmptyApplicationName => {
            invalid("appName is empty: pass init({ appName: ... }) or set PYROSCOPE_APPLICATION_NAME")
        }
        e => invalid(e),
    })?;
    let mut runtime: Vec<(&String, &String)> = o.runtime_tags.iter().flatten().collect();
    runtime.sort();
    for (k, v) in runtime {
        // The server allows 30 names per series; the core checks 24 tags: ours give way.
        if config.tags.len() < 24 && !config.tags.contains_key(k) && pyroscope_core::validate_tag(k, v).is_ok() {
            config.tags.insert(k.clone(), v.clone());
        }
    }
    Ok(config)
}

/// Checks `options` without starting anything: throws `Error('Invalid config: ...')`.
#[napi]
pub fn check(options: NativeOptions) -> Result<()> {
    build(&options).map(drop)
}

/// Starts the agent; `false` when one runs already (the first keeps running).
#[napi]
pub fn start(options: NativeOptions) -> Result<bool> {
    let config = build(&options)?;
    let mut slot = agent();
    if slot.is_some() {
        return Ok(false);
    }
    match Agent::start(config) {
        Ok(a) => {
            *slot = Some(a);
            Ok(true)
        }
        Err(pyroscope_core::Error::AlreadyRunning) => Ok(false),
        Err(e) => Err(invalid(e)),
    }
}

/// Stops the agent on a libuv worker thread: the last window is sent within the core's
/// shutdown bound, and the event loop keeps running meanwhile.
pub struct StopTask;

impl Task for StopTask {
    type Output = bool;
    type JsValue = bool;

    fn compute(&mut self) -> Result<bool> {
        Ok(stop_now())
    }

    fn resolve(&mut self, _env: Env, output: bool) -> Result<bool> {
        Ok(output)
    }
}

/// Stops the agent (a Promise of whether one ran).
#[napi(ts_return_type = "Promise<boolean>")]
pub fn stop() -> AsyncTask<StopTask> {
    AsyncTask::new(StopTask)
}

/// Stops the agent now, on this thread (at process exit): whether one ran.
#[napi]
pub fn stop_now() -> bool {
    let taken = agent().take();
    match taken {
        Some(a) => {
            a.stop();
            true
        }
        None => false,
    }
}

fn not_running() -> napi::Error {
    napi::Error::new(Status::GenericFailure, "pyroscope: profiling is not running: call init() and start() first")
}

/// Profiles CPU for the next `ms` milliseconds beside the regular uploads (pull mode): a
/// Promise of the gzipped pprof. A thread of its own waits for the profile, so neither the
/// event loop nor a libuv worker (4 by default, shared with `fs` and `dns`) is held for the
/// capture's length.
#[napi(ts_return_type = "Promise<Buffer>")]
pub fn capture_cpu(env: &Env, ms: u32) -> Result<Object<'_>> {
    let capture = match agent().as_ref() {
        Some(a) => a.capture_cpu(Duration::from_millis(ms.into())),
        None => return Err(not_running()),
    };
    let capture = capture.map_err(|e| napi::Error::new(Status::GenericFailure, format!("pyroscope: {e}")))?;
    let (deferred, promise) = env.create_deferred::<Buffer, _>()?;
    std::thread::Builder::new()
        .name("pyroscope-capture".into())
        .spawn(move || {
            pyroscope_core::mark_own_thread();
            match capture.wait() {
                Ok(bytes) => deferred.resolve(move |_| Ok(Buffer::from(bytes))),
                Err(e) => deferred.reject(napi::Error::new(Status::GenericFailure, format!("pyroscope: {e}"))),
            }
        })
        .map_err(|e| napi::Error::new(Status::GenericFailure, format!("pyroscope: spawning a thread: {e}")))?;
    Ok(promise)
}

/// The JavaScript function the core's log records go to: `(level, message)`, called on the
/// event loop of the thread that set it; weak, so it never keeps the process alive.
type LogCallback = ThreadsafeFunction<FnArgs<(String, String)>, (), FnArgs<(String, String)>, Status, false, true>;

static LOG_CALLBACK: Mutex<Option<LogCallback>> = Mutex::new(None);

/// Hands the core's log records (warnings such as a failed upload, logged once per kind) to
/// JavaScript's logger.
struct JsLogger;

impl log::Log for JsLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warn",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let guard = LOG_CALLBACK.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = guard.as_ref() {
            // Never blocks: a full queue or a closing thread drops the record.
            f.call((level.to_owned(), r.args().to_string()).into(), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    fn flush(&self) {}
}

static JS_LOGGER: JsLogger = JsLogger;

/// Sends the core's log records to `callback(level, message)`, or nowhere (`null`).
#[napi]
pub fn set_log_callback(
    #[napi(ts_arg_type = "((level: string, message: string) => void) | null")] callback: Option<LogCallback>,
) {
    // Fails only if another logger is installed in this process: ours then stays unused.
    let _ = log::set_logger(&JS_LOGGER);
    log::set_max_level(if callback.is_some() { log::LevelFilter::Info } else { log::LevelFilter::Off });
    *LOG_CALLBACK.lock().unwrap_or_else(|e| e.into_inner()) = callback;
}

/// Closes the current window now (its profiles are sent in the background).
#[napi]
pub fn flush() -> bool {
    agent().as_ref().map(Agent::flush).is_some()
}

/// Whether an agent runs.
#[napi]
pub fn running() -> bool {
    agent().is_some()
}

/// The agent's counters, for tests and diagnostics.
#[napi(object)]
pub struct NativeStats {
    pub samples: f64,
    pub lost: f64,
    pub truncated: f64,
    pub windows: f64,
    pub threads: f64,
    pub uploads_sent: f64,
    pub uploads_failed: f64,
    pub jit_ranges: f64,
    /// Time spent in the sampling signal handler, every thread, nanoseconds.
    pub handler_ns: f64,
    /// Sampling signals handled.
    pub handler_runs: f64,
}

#[napi]
pub fn stats() -> Option<NativeStats> {
    let guard = agent();
    let s = guard.as_ref()?.stats();
    Some(NativeStats {
        samples: s.samples as f64,
        lost: s.samples_lost as f64,
        truncated: s.samples_truncated as f64,
        windows: s.windows as f64,
        threads: s.threads_sampled as f64,
        uploads_sent: s.uploads_sent as f64,
        uploads_failed: s.uploads_failed as f64,
        jit_ranges: pyroscope_core::jit::len() as f64,
        handler_ns: s.handler_ns as f64,
        handler_runs: s.handler_runs as f64,
    })
}

/// Starts V8's sampling heap profiler on the calling JavaScript thread's isolate: a sample
/// every `intervalBytes` on average, stacks of at most `stackDepth` frames; `allocations`
/// profiles allocations (samples of collected objects kept) instead of in-use memory. `false`
/// when another tool (the inspector's `HeapProfiler.startSampling`) runs it already.
#[napi]
pub fn heap_start(env: Env, interval_bytes: f64, stack_depth: u32, allocations: bool) -> Result<bool> {
    if !(interval_bytes >= 1.0 && interval_bytes <= u32::MAX as f64) {
        return Err(invalid(format!("heap.samplingIntervalBytes {interval_bytes} must be between 1 and 4294967295")));
    }
    match heap::start(interval_bytes as u64, stack_depth, allocations) {
        Ok(()) => {
            end_heap_at_teardown(&env);
            Ok(true)
        }
        Err(heap::StartError::Busy) => Ok(false),
        Err(heap::StartError::NoIsolate) => Err(napi::Error::from_reason("pyroscope: this thread runs no JavaScript")),
    }
}

/// What one heap read found.
#[napi(object)]
pub struct HeapRead {
    /// Stacks with samples.
    pub stacks: u32,
    /// Objects and bytes in all (in use, or allocated since the last read).
    pub objects: f64,
    pub bytes: f64,
    /// Nodes of V8's profile tree.
    pub nodes: u32,
    /// V8's samples in it.
    pub samples: u32,
    /// Milliseconds the read took (V8 building its profile, naming, the restart).
    pub ms: f64,
    /// Whether an agent took it (into its open window).
    pub sent: bool,
}

/// Reads the calling thread's isolate's heap profile and hands it to the agent's open window:
/// in-use memory replaces this isolate's earlier state of the window, allocations add up.
/// `null` when this thread's sampling does not run.
#[napi]
pub fn heap_collect() -> Option<HeapRead> {
    let read = heap::read()?;
    let (objects, bytes) =
        read.samples.iter().fold((0u64, 0u64), |(o, b), s| (o.saturating_add(s.objects), b.saturating_add(s.bytes)));
    let (stacks, nodes, samples, ms) = (read.samples.len() as u32, read.nodes as u32, read.v8_samples as u32, read.ms);
    let guard = agent();
    let sent = match guard.as_ref() {
        Some(a) if read.allocations => {
            a.add_heap_allocations(read.interval, &read.samples);
            true
        }
        Some(a) => {
            a.set_heap_inuse(heap_id(), read.interval, read.samples);
            true
        }
        None => false,
    };
    Some(HeapRead { stacks, objects: objects as f64, bytes: bytes as f64, nodes, samples, ms, sent })
}

/// The calling thread's isolate's heap now, as a gzipped pprof (`/debug/pprof/heap`); the
/// same read goes to the open window as `heapCollect` would send it, so pulling loses nothing.
/// `null` when this thread's sampling does not run or no agent runs.
#[napi]
pub fn heap_pprof() -> Option<Buffer> {
    let read = heap::read()?;
    let guard = agent();
    let a = guard.as_ref()?;
    let pprof = a.heap_pprof(read.allocations, read.interval, read.samples.clone());
    if read.allocations {
        a.add_heap_allocations(read.interval, &read.samples);
    } else {
        a.set_heap_inuse(heap_id(), read.interval, read.samples);
    }
    Some(pprof.into())
}

/// Heap profiling settings, as `heapStart` takes them.
#[napi(object)]
#[derive(Clone)]
pub struct HeapSettings {
    pub interval_bytes: f64,
    pub stack_depth: u32,
    pub allocations: bool,
}

/// The settings JavaScript threads follow while heap profiling is on: a worker samples its own
/// isolate with them (see `lib/heap.js`).
static HEAP_SHARED: Mutex<Option<HeapSettings>> = Mutex::new(None);

/// Sets (or clears, with `null`) the heap settings every JavaScript thread follows.
#[napi]
pub fn heap_share(settings: Option<HeapSettings>) {
    *HEAP_SHARED.lock().unwrap_or_else(|e| e.into_inner()) = settings;
}

/// The heap settings every JavaScript thread follows; `null` while heap profiling is off.
#[napi]
pub fn heap_shared() -> Option<HeapSettings> {
    HEAP_SHARED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Stops the calling thread's isolate's heap sampling; whether it ran. Its in-use state is
/// reported no more after the window open now.
#[napi]
pub fn heap_stop() -> bool {
    end_heap();
    heap::stop()
}

/// The calling thread's id: what tells its isolate's heap apart from the others.
fn heap_id() -> u64 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u64 }
}

/// Ends the calling thread's heap in the agent's windows (see `Agent::end_heap`).
fn end_heap() {
    if let Some(a) = agent().as_ref() {
        a.end_heap(heap_id());
    }
}

thread_local! {
    /// Whether this thread's environment ends its heap at its teardown (its hook is added).
    static TEARDOWN_HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Ends the thread's heap when its environment is torn down (a worker that ends, or is
/// terminated, without stopping its heap sampling): its last state stands no longer.
fn end_heap_at_teardown(env: &Env) {
    if TEARDOWN_HOOKED.with(|h| h.replace(true)) {
        return;
    }
    unsafe extern "C" fn at_teardown(_arg: *mut std::ffi::c_void) {
        // Never unwind into Node.
        let _ = std::panic::catch_unwind(end_heap);
        // Another environment on this thread (an embedder's) hooks its own teardown.
        TEARDOWN_HOOKED.with(|h| h.set(false));
    }
    // SAFETY: a cleanup hook of this environment, added once per environment (Node aborts on
    // the same hook and argument twice); the function takes no data.
    let status = unsafe { sys::napi_add_env_cleanup_hook(env.raw(), Some(at_teardown), std::ptr::null_mut()) };
    if status != sys::Status::napi_ok {
        TEARDOWN_HOOKED.with(|h| h.set(false));
    }
}

/// Milliseconds until the next heap read is due: shortly before the agent's open window closes
/// (a tenth of the upload interval, at most 1 s, before), or before the next one when that is
/// too close. `null` without an agent, or for one that sends no windows (pull mode alone).
#[napi]
pub fn heap_delay_ms() -> Option<f64> {
    let guard = agent();
    let a = guard.as_ref().filter(|a| a.config().destination != pyroscope_core::Destination::Nowhere)?;
    let interval = a.config().upload_interval;
    let lead = (interval / 10).min(Duration::from_secs(1));
    let left = a.window_remaining();
    let delay = if left >= lead * 2 { left - lead } else { left + interval - lead };
    Some(delay.as_secs_f64() * 1e3)
}

/// The Node module ABI and version the addon was built for.
#[napi(object)]
pub struct BuildInfo {
    pub modules: String,
    pub node: String,
}

#[napi]
pub fn build_info() -> BuildInfo {
    BuildInfo { modules: BUILT_FOR_ABI.to_owned(), node: BUILT_FOR_NODE.to_owned() }
}

/// Samples the calling JavaScript thread (the main thread or a worker) from now on, and
/// (unless `name_code` is false) names its isolate's JIT code: new code as V8 compiles it, the
/// code it had before once the thread has used half a second of CPU time (see `jit.rs`).
/// Whether code is named.
#[napi]
pub fn register_thread(env: Env, name_code: Option<bool>) -> bool {
    pyroscope_core::register_thread();
    name_code != Some(false) && jit::watch(env.raw())
}

/// Whether the calling thread is the process's first thread: the main thread of `node` (a
/// worker never is), told without loading `node:worker_threads`.
#[napi]
pub fn is_main_thread() -> bool {
    // SAFETY: getpid and gettid take no arguments and cannot fail.
    unsafe { libc::getpid() as libc::c_long == libc::syscall(libc::SYS_gettid) }
}

/// Gives functions interpreted from now on a frame of their own, named by their code events
/// (V8's `--interpreted-frames-native-stack`).
#[napi]
pub fn name_interpreted_frames() {
    jit::name_interpreted_frames();
}

/// Leaves the calling thread out of the core's CPU and wall samples (fallback mode: V8's
/// sampler covers the main thread's JavaScript).
#[napi]
pub fn exclude_thread() {
    pyroscope_core::mark_own_thread();
}

/// One read-only mapping of the node executable as JavaScript read it before loading the
/// addon: its start and its pages' `/proc/self/pagemap` entries (8 bytes each, native order).
#[napi(object)]
pub struct MappingPages {
    pub start: f64,
    pub entries: Buffer,
}

/// Gives back the file pages that loading the addon mapped and will not read again (see
/// `pages.rs`): node's that became present since `before`, and the addon's own. The bytes
/// given back.
#[napi]
pub fn release_load_pages(before: Vec<MappingPages>) -> f64 {
    let taken = before
        .iter()
        .map(|m| {
            let entries = m.entries.chunks_exact(8).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()));
            (m.start as usize, entries.collect())
        })
        .collect();
    let node = pages::Resident::from_entries(taken).map_or(0, pages::Resident::release_new);
    (node + pages::release_own_pages()) as f64
}

/// Whether the addon was built with V8's JIT code names (the C++ shim); without them the
/// package names JavaScript frames from V8's own sampling profiler (fallback mode).
#[napi]
pub fn jit_names_available() -> bool {
    jit::AVAILABLE
}

/// Adds `weight` CPU samples of one stack, leaf first (`functions[i]` in `files[i]` at
/// `lines[i]`), from a sampler of the package's own (fallback mode). False when no agent runs.
#[napi]
pub fn add_cpu_sample(functions: Vec<String>, files: Vec<String>, lines: Vec<u32>, weight: u32) -> bool {
    let guard = agent();
    let Some(agent) = guard.as_ref() else { return false };
    let frames: Vec<pyroscope_core::FrameId> = functions
        .iter()
        .zip(&files)
        .zip(&lines)
        .filter_map(|((f, file), line)| pyroscope_core::FrameId::new(f, file, *line))
        .collect();
    agent.add_cpu_sample(&frames, &LabelSet::empty(), weight.into());
    true
}

/// Samples the calling JavaScript thread's wall-clock time too (the `wall` profile
/// @pyroscope/nodejs users see), waiting in the event loop included.
#[napi]
pub fn sample_wall_time() {
    pyroscope_core::sample_wall_time();
}

/// An interned label set, held by the JavaScript value that uses it: its id is what the label
/// slot holds while it is in force.
#[napi]
pub struct NativeLabelSet {
    set: LabelSet,
}

#[napi]
impl NativeLabelSet {
    /// The id written into the slot.
    #[napi(getter)]
    pub fn id(&self) -> u32 {
        self.set.id()
    }
}

/// Interns `pairs` (`[name, value, name, value, ...]`). Never fails: bad labels are left out,
/// counted and logged once per kind, as everywhere in the core.
#[napi]
pub fn label_set(pairs: Vec<String>) -> NativeLabelSet {
    let pairs: Vec<(&str, &str)> = pairs.chunks_exact(2).map(|p| (p[0].as_str(), p[1].as_str())).collect();
    NativeLabelSet { set: LabelSet::new_lossy(&pairs) }
}

/// The calling thread's label slot as a one-element `Uint32Array`: JavaScript stores a
/// `NativeLabelSet`'s id in it to put that set in force. Call it once per thread.
#[napi]
pub fn label_slot() -> Uint32Array {
    let slot = LabelSlot::current();
    let ptr = slot.as_ptr();
    // SAFETY: `ptr` is the 4-byte aligned slot of this thread's state, which `slot` keeps
    // alive until V8 frees the array (the notify closure owns it). JavaScript writes it from
    // this thread only, with plain 32-bit stores, which are atomic on x86_64; the core reads
    // it atomically.
    unsafe { Uint32Array::with_external_data(ptr, 1, move |_, _| drop(slot)) }
}

/// Starts (`on`) or stops clearing the calling thread's label slot each time its event loop
/// is about to wait (see `idle.rs`). Whether it is on.
#[napi]
pub fn clear_label_slot_when_idle(env: Env, on: bool) -> bool {
    idle::clear_slot_when_idle(env.raw(), on)
}

/// The magic number every label carrier holds (`lib/labels.js`), which tells the signal
/// handler a carrier from any other object.
#[napi]
pub const CARRIER_MAGIC: i32 = 0x5079_4c42;

/// Makes the calling thread's labels ride V8's continuation-preserved embedder data, which
/// follows `await` by itself (see `cped.rs`): `sample` is a label carrier whose id is
/// `sentinel`, to find where carriers hold their fields. True when they do; false when this
/// build or this V8 cannot (the caller keeps labels another way).
#[napi]
pub fn cped_open(env: Env, sample: Unknown, sentinel: i32) -> bool {
    #[cfg(pyroscope_node_shim)]
    return cped::open(env.raw(), sample.value().value, sentinel);
    #[cfg(not(pyroscope_node_shim))]
    {
        let _ = (env, sample, sentinel);
        false
    }
}

/// The functions that read and write the calling thread's embedder data, `[get, set]`: `get()`
/// returns a label carrier or undefined, `set(carrier)` puts a carrier (or undefined: no labels)
/// in force, and it stays on the promise reactions registered meanwhile. Plain V8 functions,
/// for their cost; null without `cpedOpen` on the thread.
#[napi]
pub fn cped_accessors(env: Env) -> Option<Unknown<'static>> {
    #[cfg(pyroscope_node_shim)]
    let value = cped::accessors();
    #[cfg(not(pyroscope_node_shim))]
    let value: sys::napi_value = std::ptr::null_mut();
    // SAFETY: a value of this call's scope, from V8 through the shim; it is returned at once.
    (!value.is_null()).then(|| unsafe { Unknown::from_raw_unchecked(env.raw(), value) })
}

/// The id of the label set a sample of the calling thread would carry now, from wherever its
/// labels live (for tests of what the signal handler sees).
#[napi]
pub fn sampled_label_id() -> u32 {
    pyroscope_core::current_labels().id()
}

/// Sets how frames show their scripts: `strip` is @pyroscope/nodejs's `stripFilenames`
/// (`"all"`, `"dependencies"`, or null), `shorten` its `shortenPaths` (see `jit::set_paths`).
#[napi]
pub fn set_paths(strip: Option<String>, shorten: bool) {
    jit::set_paths(strip.as_deref(), shorten);
}

/// How a V8 code name reads as a frame, `[function, file, line]` (for tests of the naming).
#[napi]
pub fn frame_of_code_name(name: String, cwd: String) -> (String, String, u32) {
    let f = jit::frame_of(&name, &cwd);
    (f.function, f.file, f.line)
}

/// The calling thread's CPU time in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`), the truth the
/// profile's `cpu` values are checked against.
#[napi]
pub fn thread_cpu_time() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}

/// Names JavaScript function `function` (empty when anonymous) at `line`:`column` (1-based) of
/// `script` as JIT code is named, source maps in force applied: `[function, file, line]`
/// (fallback mode names V8's own samples with it).
#[napi]
pub fn js_frame(function: String, script: String, line: u32, column: u32) -> (String, String, u32) {
    let f = jit::js_frame(&function, &script, line, column, jit::cwd());
    (f.function, f.file, f.line)
}
