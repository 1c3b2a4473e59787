//! The one agent of the process, started and stopped from Python.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pyroscope_core::{Agent, AgentBuilder, Error, Stats};

/// Explicit settings from `configure()` (None = not given: the `PYROSCOPE_*` variable, else
/// the default). Types are checked by the Python layer.
#[derive(Default, Debug)]
pub struct Settings {
    pub application_name: Option<String>,
    pub server_address: Option<String>,
    pub basic_auth: Option<(String, String)>,
    pub tenant_id: Option<String>,
    pub tags: Vec<(String, String)>,
    /// Added after the user's and the environment's tags, unless those have the name.
    pub runtime_tags: Vec<(String, String)>,
    pub http_headers: Vec<(String, String)>,
    pub sample_rate: Option<i64>,
    pub upload_interval: Option<f64>,
    pub cpu: Option<bool>,
    pub memory: Option<bool>,
    pub alloc_sample_bytes: Option<i64>,
    pub shutdown_timeout: Option<f64>,
    /// `report_pid`: `pid` on every sample, Python or native.
    pub report_pid: bool,
}

static AGENT: Mutex<Option<Agent>> = Mutex::new(None);

/// The `LineNo` of the running configuration, for the CPython resolver: 0 the line of the last
/// instruction, 1 the function's first line, 2 none.
pub static LINE_NO: AtomicU8 = AtomicU8::new(0);

fn agent() -> MutexGuard<'static, Option<Agent>> {
    AGENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why `configure` refused: a sentence for `ConfigError`.
pub fn message(e: &Error) -> String {
    match e {
        Error::EmptyApplicationName => {
            "application_name is empty: pass configure(application_name=...) or set PYROSCOPE_APPLICATION_NAME".into()
        }
        other => other.to_string(),
    }
}

/// Checks every setting and builds the core configuration (environment first, then `s`).
pub fn build(s: &Settings) -> Result<pyroscope_core::Config, String> {
    let mut b = AgentBuilder::from_env();
    if let Some(n) = &s.application_name {
        b = b.application_name(n.clone());
    }
    if let Some(a) = &s.server_address {
        b = b.server_address(a.clone());
    }
    if let Some((user, password)) = &s.basic_auth {
        b = b.basic_auth(user.clone(), password.clone());
    }
    if let Some(t) = &s.tenant_id {
        b = b.tenant_id(t.clone());
    }
    b = b.tags(s.tags.iter().cloned());
    if s.report_pid {
        b = b.sample_label("pid", std::process::id().to_string());
    }
    for (k, v) in &s.http_headers {
        b = b.header(k.clone(), v.clone());
    }
    if let Some(rate) = s.sample_rate {
        let max = pyroscope_core::MAX_SAMPLE_RATE;
        match u32::try_from(rate) {
            Ok(r) if r > 0 => b = b.sample_rate(r),
            _ => return Err(format!("invalid sample rate {rate} Hz: must be 1..={max}")),
        }
    }
    if let Some(secs) = s.upload_interval {
        if !(1.0..=3600.0).contains(&secs) {
            return Err(format!("invalid upload interval {secs} s: must be between 1 s and 1 h"));
        }
        b = b.upload_interval(Duration::from_secs_f64(secs));
    }
    if let Some(c) = s.cpu {
        b = b.cpu(c);
    }
    if let Some(m) = s.memory {
        b = b.memory(m);
    }
    if let Some(n) = s.alloc_sample_bytes {
        match u64::try_from(n) {
            Ok(n) if n > 0 => b = b.alloc_sample_bytes(n),
            _ => return Err(format!("invalid mem_heap_sample_size {n} bytes: must be above zero")),
        }
    }
    if let Some(t) = s.shutdown_timeout {
        if !(t.is_finite() && t > 0.0 && t <= 60.0) {
            return Err(format!("invalid shutdown timeout {t} s: must be above 0 and at most 60"));
        }
        b = b.shutdown_timeout(Duration::from_secs_f64(t));
    }
    let mut config = b.build().map_err(|e| message(&e))?;
    for (k, v) in &s.runtime_tags {
        // The server allows 30 names per series; the core checks 24 tags: ours give way.
        if config.tags.len() < 24 && !config.tags.contains_key(k) && pyroscope_core::validate_tag(k, v).is_ok() {
            config.tags.insert(k.clone(), v.clone());
        }
    }
    Ok(config)
}

/// Starts the agent. Ok(false): one is running already (pyroscope-io refuses a second
/// `configure` too; the first keeps running).
/// `walker` is the outcome of `cpython::init` (None: not tried, keep what is registered).
/// `native`: merge native frames of extension modules into the Python stacks.
pub fn start(
    config: pyroscope_core::Config,
    line_no: u8,
    native: bool,
    walker: Option<Result<(), String>>,
) -> Result<bool, String> {
    let mut slot = agent();
    if slot.is_some() {
        return Ok(false);
    }
    LINE_NO.store(line_no, Ordering::Relaxed);
    pyroscope_core::set_native_frames(native.then(native_frames).flatten());
    // Python stacks: the walker is proven on this thread once per process, then registered
    // with the core before its first sample; without it samples keep native frames and
    // `tag_wrapper` falls back to thread tags.
    if let Some(walker) = walker {
        crate::labels::CONTEXT_LABELS.store(walker.is_ok(), Ordering::SeqCst);
        match walker {
            Ok(()) => pyroscope_core::set_interpreter(
                crate::cpython::walk,
                Box::new(crate::cpython::PyResolver::new(crate::labels::lookup)),
            ),
            Err(why) => log::warn!("{why}"),
        }
    }
    match Agent::start(config) {
        Ok(a) => {
            *slot = Some(a);
            Ok(true)
        }
        Err(Error::AlreadyRunning) => Ok(false),
        Err(e) => Err(message(&e)),
    }
}

thread_local! {
    /// The agent slot's lock, held by the forking thread from `before_fork` to `after_fork`.
    static FORK_HOLD: std::cell::RefCell<Option<MutexGuard<'static, Option<Agent>>>> =
        const { std::cell::RefCell::new(None) };
}

/// `os.register_at_fork(before=...)`: holds the agent slot across the fork, so the child never
/// inherits it locked by another thread.
pub fn before_fork() {
    let guard = agent();
    let _ = FORK_HOLD.try_with(|h| *h.borrow_mut() = Some(guard));
}

/// `after_in_parent` / `after_in_child`. In the child, the parent's agent is let go (the core
/// sends nothing of the parent's from a child) and the answer says whether one ran, so the
/// caller starts the child's own with the same settings.
pub fn after_fork(child: bool) -> bool {
    let held = FORK_HOLD.try_with(|h| h.borrow_mut().take()).ok().flatten();
    let mut slot = match held {
        Some(guard) => guard,
        // Forked without `before` (from C): the slot's lock may be held by a thread that no
        // longer exists in the child; never wait for it there.
        None if child => match AGENT.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        },
        None => return false,
    };
    if !child {
        return false;
    }
    slot.take().is_some()
}

/// Takes the running agent out, if any (stop it without the GIL).
pub fn take() -> Option<Agent> {
    agent().take()
}

/// An agent runs.
pub fn running() -> bool {
    agent().is_some()
}

/// Closes the current window now.
pub fn flush() -> bool {
    agent().as_ref().map(Agent::flush).is_some()
}

/// Hands the wall sampler's samples to the running agent (dropped if none runs); empties `batch`.
pub fn add_wall(batch: &mut Vec<crate::wall::Sample>) {
    if batch.is_empty() {
        return;
    }
    if let Some(a) = agent().as_ref() {
        for (frames, labels, context, weight) in batch.iter() {
            a.add_wall_sample(frames, labels, context.as_ref(), *weight);
        }
    }
    batch.clear();
}

/// The running agent's counters.
pub fn stats() -> Option<Stats> {
    agent().as_ref().map(Agent::stats)
}

/// Logging to stderr, for `enable_logging=True` (the core logs from its own threads, which must
/// not take the GIL, above all while the interpreter finalizes).
pub struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[pyroscope] {} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Turns logging on at the level of Python's `logging` number `level`, or off (None).
pub fn set_logging(level: Option<i32>) {
    let _ = log::set_logger(&LOGGER);
    let filter = match level {
        None => log::LevelFilter::Off,
        Some(l) if l <= 10 => log::LevelFilter::Debug,
        Some(l) if l <= 20 => log::LevelFilter::Info,
        Some(l) if l <= 30 => log::LevelFilter::Warn,
        Some(_) => log::LevelFilter::Error,
    };
    log::set_max_level(filter);
}

/// Where the interpreter's eval function is: its calls are where native and Python frames meet.
fn native_frames() -> Option<pyroscope_core::NativeFrames> {
    const EVAL: &std::ffi::CStr = c"_PyEval_EvalFrameDefault";
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the symbol up.
    let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, EVAL.as_ptr()) } as u64;
    if address == 0 {
        log::warn!("pyroscope: native=True: _PyEval_EvalFrameDefault not found, Python frames only");
        return None;
    }
    Some(pyroscope_core::NativeFrames {
        interpreter_address: address,
        eval_function: EVAL.to_string_lossy().into_owned(),
    })
}
