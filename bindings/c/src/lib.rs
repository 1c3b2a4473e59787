//! `libpyroscope`: the C ABI of pyroscope-core. See `include/pyroscope.h` (generated from this
//! file by cbindgen) for the contract every function keeps.
//!
//! Each export checks its pointers, then runs a plain `fn -> Result` inside `catch_unwind`, so
//! a Rust panic becomes `PYROSCOPE_STATUS_PANIC` instead of unwinding into C.

// The C names are the API.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use pyroscope_core::{Agent, AgentBuilder, LabelGuard, Protocol, Stats};

/// Result of every call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum pyroscope_status {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 2,
    /// A setting or label was rejected (the message says which and why).
    InvalidArgument = 3,
    /// The call does not fit the handle's state (e.g. flush after stop, a second agent).
    InvalidState = 4,
    /// The operating system refused something (signals, timers, threads, the export folder).
    System = 5,
    /// A bug inside the library was caught at the boundary.
    Panic = 6,
}

/// Settings for an agent. Create with pyroscope_config_new or pyroscope_config_from_env.
pub struct pyroscope_config {
    builder: AgentBuilder,
}

/// A running (or stopped) profiler.
pub struct pyroscope_agent {
    agent: Option<Agent>,
    /// The final counters, once stopped.
    stopped: Option<Stats>,
}

/// Counters of an agent (pyroscope_agent_stats). Versioned by `size`: set it to
/// sizeof(pyroscope_stats) before the call; the library fills the fields that fit in both your
/// struct and its own and sets `size` to the bytes it filled, so fields added later (always at
/// the end) read as absent rather than as garbage. A field lies within the filled part when
/// offsetof(pyroscope_stats, field) + sizeof(uint64_t) <= size.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct pyroscope_stats {
    /// In: sizeof(pyroscope_stats) as the caller knows it. Out: bytes filled.
    pub size: u64,
    /// CPU samples taken (weights summed).
    pub samples: u64,
    /// CPU samples lost because the sample ring was full.
    pub samples_lost: u64,
    /// Sampled allocations lost because the sample ring was full.
    pub alloc_samples_lost: u64,
    /// CPU samples whose stack was cut short.
    pub samples_truncated: u64,
    /// Windows closed.
    pub windows: u64,
    /// Profiles built and queued for delivery.
    pub profiles: u64,
    /// Profiles delivered.
    pub uploads_sent: u64,
    /// Upload attempts retried.
    pub uploads_retried: u64,
    /// Profiles the server refused or that failed until retries ran out.
    pub uploads_failed: u64,
    /// Profiles not delivered for any reason (failed included). Once stopped,
    /// profiles == uploads_sent + uploads_dropped.
    pub uploads_dropped: u64,
    /// Windows the shutdown timeout did not wait for (never queued).
    pub windows_abandoned: u64,
    /// Threads with a CPU timer now.
    pub threads_sampled: u64,
    /// Timer creations refused so far.
    pub threads_unsampled: u64,
    /// Sampled allocations not tracked as live because the live table was full.
    pub live_overflow: u64,
    /// Label sets interned now (process-wide; unused ones are reclaimed as windows close).
    pub label_sets_live: u64,
    /// New label sets recorded as `pyroscope_overflow="true"` because 65,536 were live.
    pub label_sets_overflowed: u64,
    /// Label sets freed because nothing used them any more.
    pub label_sets_reclaimed: u64,
    /// Labels left out of a push (process-wide): invalid name.
    pub labels_rejected_name: u64,
    /// ... invalid value (empty, over 2048 bytes, or with control characters).
    pub labels_rejected_value: u64,
    /// ... a name given twice in one call.
    pub labels_rejected_duplicate: u64,
    /// ... beyond the 32 labels a sample may carry.
    pub labels_rejected_too_many: u64,
    /// Timer signals that arrived after their timer was deleted and were dropped (process-wide).
    pub signals_stale: u64,
    /// Scans that kept exited threads' states for later because a handler still ran.
    pub thread_frees_deferred: u64,
}

impl From<&Stats> for pyroscope_stats {
    fn from(s: &Stats) -> Self {
        pyroscope_stats {
            size: std::mem::size_of::<pyroscope_stats>() as u64,
            samples: s.samples,
            samples_lost: s.samples_lost,
            alloc_samples_lost: s.alloc_samples_lost,
            samples_truncated: s.samples_truncated,
            windows: s.windows,
            profiles: s.profiles,
            uploads_sent: s.uploads_sent,
            uploads_retried: s.upload_retries,
            uploads_failed: s.uploads_failed,
            uploads_dropped: s.uploads_dropped,
            windows_abandoned: s.windows_abandoned,
            threads_sampled: s.threads_sampled,
            threads_unsampled: s.threads_unsampled,
            live_overflow: s.live_overflow,
            label_sets_live: s.label_sets_live,
            label_sets_overflowed: s.label_sets_overflowed,
            label_sets_reclaimed: s.label_sets_reclaimed,
            labels_rejected_name: s.labels_rejected_name,
            labels_rejected_value: s.labels_rejected_value,
            labels_rejected_duplicate: s.labels_rejected_duplicate,
            labels_rejected_too_many: s.labels_rejected_too_many,
            signals_stale: s.signals_stale,
            thread_frees_deferred: s.thread_frees_deferred,
        }
    }
}

thread_local! {
    /// The message of this thread's last failed call; `None` after a call that succeeded.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
    /// Labels pushed on this thread and not yet popped, innermost last.
    static LABELS: RefCell<Vec<LabelGuard>> = const { RefCell::new(Vec::new()) };
}

struct Failure(pyroscope_status, String);

impl From<pyroscope_core::Error> for Failure {
    fn from(e: pyroscope_core::Error) -> Self {
        let status = match e {
            pyroscope_core::Error::AlreadyRunning => pyroscope_status::InvalidState,
            pyroscope_core::Error::Os { .. } | pyroscope_core::Error::ExportDir { .. } => pyroscope_status::System,
            _ => pyroscope_status::InvalidArgument,
        };
        Failure(status, e.to_string())
    }
}

fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = Some(c));
}

/// Clears the last error without allocating: the success path of every call, label calls
/// included, stays cheap.
fn clear_error() {
    let _ = LAST_ERROR.try_with(|e| {
        if let Ok(mut e) = e.try_borrow_mut() {
            *e = None;
        }
    });
}

/// Runs `f`, turning errors and panics into a status and a last-error message.
fn call(f: impl FnOnce() -> Result<(), Failure>) -> pyroscope_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            clear_error();
            pyroscope_status::Ok
        }
        Ok(Err(Failure(status, message))) => {
            set_error(&message);
            status
        }
        Err(_) => {
            set_error("internal error (panic) in libpyroscope");
            pyroscope_status::Panic
        }
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure(pyroscope_status::NullArgument, format!("{what} is NULL")));
    }
    // SAFETY: the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Failure(pyroscope_status::InvalidUtf8, format!("{what} is not valid UTF-8")))
}

fn null(what: &str) -> Failure {
    Failure(pyroscope_status::NullArgument, format!("{what} is NULL"))
}

/// # Safety
/// `cfg` is NULL or a live config from this library.
unsafe fn with_config(cfg: *mut pyroscope_config, f: impl FnOnce(AgentBuilder) -> AgentBuilder) -> Result<(), Failure> {
    // SAFETY: the caller passes NULL or a pointer from pyroscope_config_new, used by one thread.
    let cfg = unsafe { cfg.as_mut() }.ok_or_else(|| null("config"))?;
    let b = std::mem::replace(&mut cfg.builder, AgentBuilder::new(""));
    cfg.builder = f(b);
    Ok(())
}

/// The message of the last failed call on this thread ("" after a success). Never NULL; valid
/// until this thread's next call into the library.
#[no_mangle]
pub extern "C" fn pyroscope_last_error() -> *const c_char {
    LAST_ERROR.try_with(|e| e.borrow().as_ref().map_or(c"".as_ptr(), |m| m.as_ptr())).unwrap_or(c"".as_ptr())
}

/// Creates a config for `application_name` with the defaults (100 Hz, 10 s windows, push API,
/// profiles to ./profiles unless a server address is set). Validation happens at start.
///
/// # Safety
/// `application_name` is a NUL-terminated string; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_new(
    application_name: *const c_char,
    out: *mut *mut pyroscope_config,
) -> pyroscope_status {
    call(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: checked by `text`.
        let name = unsafe { text(application_name, "application_name") }?;
        let cfg = Box::new(pyroscope_config { builder: AgentBuilder::new(name) });
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { *out = Box::into_raw(cfg) };
        Ok(())
    })
}

/// Creates a config from the PYROSCOPE_* environment variables.
///
/// # Safety
/// `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_from_env(out: *mut *mut pyroscope_config) -> pyroscope_status {
    call(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { *out = Box::into_raw(Box::new(pyroscope_config { builder: AgentBuilder::from_env() })) };
        Ok(())
    })
}

/// Frees a config and sets `*cfg` to NULL. NULL or `*cfg == NULL` is a no-op.
///
/// # Safety
/// `cfg` is NULL or points to NULL or to a config from this library not freed before.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_free(cfg: *mut *mut pyroscope_config) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the contract.
        if let Some(slot) = unsafe { cfg.as_mut() } {
            if !slot.is_null() {
                // SAFETY: the pointer came from Box::into_raw and is freed once: we clear it.
                drop(unsafe { Box::from_raw(*slot) });
                *slot = std::ptr::null_mut();
            }
        }
    }));
}

/// Stores one string setting.
///
/// # Safety
/// `cfg` is NULL or a live config; `value` is NULL or NUL-terminated.
unsafe fn set_string(
    cfg: *mut pyroscope_config,
    value: *const c_char,
    what: &str,
    apply: impl FnOnce(AgentBuilder, String) -> AgentBuilder,
) -> pyroscope_status {
    call(|| {
        // SAFETY: checked by `text`.
        let v = unsafe { text(value, what) }?.to_owned();
        // SAFETY: per the contract.
        unsafe { with_config(cfg, |b| apply(b, v)) }
    })
}

/// Pyroscope server base URL, e.g. "http://localhost:4040" (checked at start).
///
/// # Safety
/// `cfg` is a live config; the string is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_server_address(
    cfg: *mut pyroscope_config,
    value: *const c_char,
) -> pyroscope_status {
    // SAFETY: per the contract.
    unsafe { set_string(cfg, value, "server_address", |b, v| b.server_address(v)) }
}

/// Folder for the embedded default (used when no server address is set).
///
/// # Safety
/// `cfg` is a live config; the string is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_export_dir(
    cfg: *mut pyroscope_config,
    value: *const c_char,
) -> pyroscope_status {
    // SAFETY: per the contract.
    unsafe { set_string(cfg, value, "export_dir", |b, v| b.export_dir(v)) }
}

/// Bearer token for the server.
///
/// # Safety
/// `cfg` is a live config; the string is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_auth_token(
    cfg: *mut pyroscope_config,
    value: *const c_char,
) -> pyroscope_status {
    // SAFETY: per the contract.
    unsafe { set_string(cfg, value, "auth_token", |b, v| b.auth_token(v)) }
}

/// X-Scope-OrgID for multi-tenant servers.
///
/// # Safety
/// `cfg` is a live config; the string is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_tenant_id(
    cfg: *mut pyroscope_config,
    value: *const c_char,
) -> pyroscope_status {
    // SAFETY: per the contract.
    unsafe { set_string(cfg, value, "tenant_id", |b, v| b.tenant_id(v)) }
}

/// Application (service) name, replacing the one given at creation or from the environment.
///
/// # Safety
/// `cfg` is a live config; the string is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_application_name(
    cfg: *mut pyroscope_config,
    value: *const c_char,
) -> pyroscope_status {
    // SAFETY: per the contract.
    unsafe { set_string(cfg, value, "application_name", |b, v| b.application_name(v)) }
}

/// Static tags "k=v,k2=v2", added to those already set.
///
/// # Safety
/// `cfg` is a live config; the string is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_tags(
    cfg: *mut pyroscope_config,
    tags: *const c_char,
) -> pyroscope_status {
    call(|| {
        // SAFETY: checked by `text`.
        let tags = pyroscope_core::parse_tags(unsafe { text(tags, "tags") }?)?;
        // SAFETY: per the contract.
        unsafe { with_config(cfg, |b| b.tags(tags)) }
    })
}

/// Adds a static tag.
///
/// # Safety
/// `cfg` is a live config; both strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_tag(
    cfg: *mut pyroscope_config,
    key: *const c_char,
    value: *const c_char,
) -> pyroscope_status {
    call(|| {
        // SAFETY: checked by `text`.
        let (k, v) = unsafe { (text(key, "key")?.to_owned(), text(value, "value")?.to_owned()) };
        pyroscope_core::validate_tag(&k, &v)?;
        // SAFETY: per the contract.
        unsafe { with_config(cfg, |b| b.tag(k, v)) }
    })
}

/// Adds an HTTP header sent with every upload.
///
/// # Safety
/// `cfg` is a live config; both strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_header(
    cfg: *mut pyroscope_config,
    name: *const c_char,
    value: *const c_char,
) -> pyroscope_status {
    call(|| {
        // SAFETY: checked by `text`.
        let (k, v) = unsafe { (text(name, "name")?.to_owned(), text(value, "value")?.to_owned()) };
        // SAFETY: per the contract.
        unsafe { with_config(cfg, |b| b.header(k, v)) }
    })
}

/// HTTP basic auth (Grafana Cloud: user = stack id, password = access token).
///
/// # Safety
/// `cfg` is a live config; both strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_basic_auth(
    cfg: *mut pyroscope_config,
    user: *const c_char,
    password: *const c_char,
) -> pyroscope_status {
    call(|| {
        // SAFETY: checked by `text`.
        let (u, p) = unsafe { (text(user, "user")?.to_owned(), text(password, "password")?.to_owned()) };
        // SAFETY: per the contract.
        unsafe { with_config(cfg, |b| b.basic_auth(u, p)) }
    })
}

/// CPU samples per second per thread (1..=10000; checked at start).
///
/// # Safety
/// `cfg` is a live config.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_sample_rate(cfg: *mut pyroscope_config, hz: u32) -> pyroscope_status {
    // SAFETY: per the contract.
    call(|| unsafe { with_config(cfg, |b| b.sample_rate(hz)) })
}

/// Window length in milliseconds (1000..=3600000; checked at start).
///
/// # Safety
/// `cfg` is a live config.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_upload_interval_ms(
    cfg: *mut pyroscope_config,
    ms: u64,
) -> pyroscope_status {
    // SAFETY: per the contract.
    call(|| unsafe { with_config(cfg, |b| b.upload_interval(Duration::from_millis(ms))) })
}

/// Timeout of one HTTP request in milliseconds.
///
/// # Safety
/// `cfg` is a live config.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_request_timeout_ms(
    cfg: *mut pyroscope_config,
    ms: u64,
) -> pyroscope_status {
    // SAFETY: per the contract.
    call(|| unsafe { with_config(cfg, |b| b.request_timeout(Duration::from_millis(ms))) })
}

/// Longest pyroscope_agent_stop (or pyroscope_agent_free of a running agent) may take, in
/// milliseconds (default 2000). What cannot be delivered by then is counted as dropped
/// (pyroscope_agent_stats), not waited for.
///
/// # Safety
/// `cfg` is a live config.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_shutdown_timeout_ms(
    cfg: *mut pyroscope_config,
    ms: u64,
) -> pyroscope_status {
    // SAFETY: per the contract.
    call(|| unsafe { with_config(cfg, |b| b.shutdown_timeout(Duration::from_millis(ms))) })
}

/// Uses the legacy /ingest endpoint instead of the push API when `ingest` is true.
///
/// # Safety
/// `cfg` is a live config.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_use_ingest(cfg: *mut pyroscope_config, ingest: bool) -> pyroscope_status {
    let p = if ingest { Protocol::Ingest } else { Protocol::Push };
    // SAFETY: per the contract.
    call(|| unsafe { with_config(cfg, |b| b.protocol(p)) })
}

/// The signal for CPU samples (default SIGPROF; a real-time signal inside hosts that own
/// SIGPROF) and whether its handler runs on the alternate signal stack (SA_ONSTACK: required in
/// Go programs; only for hosts whose alternate stacks have 32 KiB or more).
///
/// # Safety
/// `cfg` is a live config.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_signal(
    cfg: *mut pyroscope_config,
    signal: i32,
    on_alt_stack: bool,
) -> pyroscope_status {
    // SAFETY: per the contract.
    call(|| unsafe { with_config(cfg, |b| b.signal(signal).signal_on_alt_stack(on_alt_stack)) })
}

/// Memory profiles on or off (on by default; they need the preload library or a sampling
/// allocator in the process).
///
/// # Safety
/// `cfg` is a live config.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_config_set_memory(cfg: *mut pyroscope_config, enabled: bool) -> pyroscope_status {
    // SAFETY: per the contract.
    call(|| unsafe { with_config(cfg, |b| b.memory(enabled)) })
}

/// Validates the config and starts profiling every thread of the process. The config is not
/// consumed (free it when done). Only one agent may run at a time.
///
/// # Safety
/// `cfg` is a live config; `out` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_agent_start(
    cfg: *const pyroscope_config,
    out: *mut *mut pyroscope_agent,
) -> pyroscope_status {
    call(|| {
        // SAFETY: per the contract.
        let cfg = unsafe { cfg.as_ref() }.ok_or_else(|| null("config"))?;
        if out.is_null() {
            return Err(null("out"));
        }
        let agent = cfg.builder.clone().start()?;
        // SAFETY: `out` is non-null and writable per the contract.
        unsafe { *out = Box::into_raw(Box::new(pyroscope_agent { agent: Some(agent), stopped: None })) };
        Ok(())
    })
}

/// Closes the current window now and queues it for delivery.
///
/// # Safety
/// `agent` is a live agent handle.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_agent_flush(agent: *mut pyroscope_agent) -> pyroscope_status {
    call(|| {
        // SAFETY: per the contract.
        let a = unsafe { agent.as_ref() }.ok_or_else(|| null("agent"))?;
        let a = a.agent.as_ref().ok_or(Failure(pyroscope_status::InvalidState, "agent is stopped".into()))?;
        a.flush();
        Ok(())
    })
}

/// Stops profiling and delivers the last window (at most the shutdown timeout, default 2 s). The handle
/// stays valid (further calls report PYROSCOPE_STATUS_INVALID_STATE) until freed.
///
/// # Safety
/// `agent` is a live agent handle.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_agent_stop(agent: *mut pyroscope_agent) -> pyroscope_status {
    call(|| {
        // SAFETY: per the contract.
        let a = unsafe { agent.as_mut() }.ok_or_else(|| null("agent"))?;
        let running =
            a.agent.take().ok_or(Failure(pyroscope_status::InvalidState, "agent is already stopped".into()))?;
        a.stopped = Some(running.stop());
        Ok(())
    })
}

/// Copies the agent's counters into `*out` (see pyroscope_stats for `out->size`, which the
/// caller sets first). After pyroscope_agent_stop, the final counters.
///
/// # Safety
/// `agent` is a live agent handle; `out` points to a writable pyroscope_stats (or a prefix of
/// one at least `out->size` bytes long) whose `size` is set.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_agent_stats(
    agent: *const pyroscope_agent,
    out: *mut pyroscope_stats,
) -> pyroscope_status {
    call(|| {
        // SAFETY: per the contract.
        let a = unsafe { agent.as_ref() }.ok_or_else(|| null("agent"))?;
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: `out` is non-null and points to at least a readable `size` field.
        let caller_size = unsafe { std::ptr::addr_of!((*out).size).read_unaligned() };
        if caller_size < 8 {
            return Err(Failure(
                pyroscope_status::InvalidArgument,
                format!("out->size is {caller_size}: set it to sizeof(pyroscope_stats)"),
            ));
        }
        let stats = match (&a.agent, &a.stopped) {
            (Some(running), _) => running.stats(),
            (None, Some(last)) => last.clone(),
            (None, None) => return Err(Failure(pyroscope_status::InvalidState, "agent has no counters".into())),
        };
        let mut filled = pyroscope_stats::from(&stats);
        // Whole fields only (every one is 8 bytes), in the caller's size and ours.
        let ours = std::mem::size_of::<pyroscope_stats>();
        let size = usize::try_from(caller_size).map_or(ours, |c| c.min(ours)) / 8 * 8;
        filled.size = size as u64;
        // SAFETY: `out` holds at least `caller_size >= size` writable bytes per the contract,
        // and `filled` is a plain #[repr(C)] struct of `ours >= size` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping((&filled as *const pyroscope_stats).cast::<u8>(), out.cast::<u8>(), size)
        };
        Ok(())
    })
}

/// Stops the agent if it runs, frees it and sets `*agent` to NULL. NULL or `*agent == NULL` is
/// a no-op.
///
/// # Safety
/// `agent` is NULL or points to NULL or to a handle from this library not freed before.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_agent_free(agent: *mut *mut pyroscope_agent) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: per the contract.
        if let Some(slot) = unsafe { agent.as_mut() } {
            if !slot.is_null() {
                // SAFETY: the pointer came from Box::into_raw and is freed once: we clear it.
                drop(unsafe { Box::from_raw(*slot) });
                *slot = std::ptr::null_mut();
            }
        }
    }));
}

/// Adds `key=value` to the calling thread's labels (laid over the ones in force) until the
/// matching pyroscope_labels_pop. Always pushes one level, whatever it returns: pop once per
/// push. A label that cannot be used (NULL, not UTF-8, an invalid name or value) is left out
/// of that level and reported by the status and pyroscope_last_error(); invalid names and
/// values are also counted in the agent's stats and logged once per kind. Values are free
/// text (`, { } =` and spaces are fine). Works whether or not an agent runs.
///
/// # Safety
/// Both strings are NUL-terminated, or NULL.
#[no_mangle]
pub unsafe extern "C" fn pyroscope_labels_push(key: *const c_char, value: *const c_char) -> pyroscope_status {
    call(|| {
        // SAFETY: checked by `text`.
        let pair = unsafe { text(key, "key").and_then(|k| Ok((k, text(value, "value")?))) };
        let (guard, checked) = match pair {
            Ok((k, v)) => {
                (pyroscope_core::push_labels(&[(k, v)]), pyroscope_core::validate_label(k, v).map_err(Failure::from))
            }
            Err(e) => (pyroscope_core::LabelSet::empty().enter(), Err(e)),
        };
        LABELS.with(|l| l.borrow_mut().push(guard));
        checked
    })
}

/// Samples the calling thread's CPU from now on. A thread is otherwise sampled from its first
/// label call or from the agent's next scan of the process's threads (within 100 ms): call
/// this first thing in a short-lived thread that takes no labels. Always PYROSCOPE_OK.
#[no_mangle]
pub extern "C" fn pyroscope_thread_register() -> pyroscope_status {
    call(|| {
        pyroscope_core::register_thread();
        Ok(())
    })
}

/// Removes the labels added by this thread's last pyroscope_labels_push.
#[no_mangle]
pub extern "C" fn pyroscope_labels_pop() -> pyroscope_status {
    call(|| {
        let guard = LABELS.with(|l| l.borrow_mut().pop());
        match guard {
            Some(g) => {
                drop(g);
                Ok(())
            }
            None => Err(Failure(pyroscope_status::InvalidState, "no labels pushed on this thread".into())),
        }
    })
}

/// The library's version, e.g. "0.1.0". Never NULL, static.
#[no_mangle]
pub extern "C" fn pyroscope_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
