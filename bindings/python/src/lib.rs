//! `pyroscope._native`: the part of the `pyroscope` Python package written in Rust. The Python
//! layer (`python/pyroscope/__init__.py`) checks argument types and pyroscope-io's semantics;
//! this module starts the core agent and keeps the labels.

use std::sync::atomic::Ordering;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

mod agent;
mod cpython;
mod labels;
mod memory;
mod wall;

pyo3::create_exception!(
    _native,
    ConfigError,
    PyValueError,
    "A `configure()` setting (or a `PYROSCOPE_*` variable) cannot be used; nothing was started."
);

/// The package's label context variable (`tag_wrapper`), handed to the CPython walker.
static LABEL_VAR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Whether the CPython walker passed its self-test (set by the first `start`).
static WALKER: PyOnceLock<bool> = PyOnceLock::new();

/// The context variable `tag_wrapper` sets, once the package has registered it.
pub(crate) fn label_var(py: Python<'_>) -> Option<&Bound<'_, PyAny>> {
    LABEL_VAR.get(py).map(|v| v.bind(py))
}

#[pyfunction]
fn set_label_var(py: Python<'_>, var: Py<PyAny>) -> bool {
    LABEL_VAR.set(py, var).is_ok()
}

/// Checks the settings and starts the agent; False if one runs already. Raises ConfigError.
#[pyfunction]
#[pyo3(signature = (*, application_name=None, server_address=None, basic_auth=None, tenant_id=None,
    tags=Vec::new(), runtime_tags=Vec::new(), http_headers=Vec::new(), sample_rate=None, upload_interval=None,
    cpu=None, memory=None, mem_domain=true, alloc_sample_bytes=None, shutdown_timeout=None, line_no=0, native=false, report_pid=false,
    report_thread_id=false, report_thread_name=false, log_level=None, wall=false, check_only=false))]
#[allow(clippy::too_many_arguments)]
fn start(
    py: Python<'_>,
    application_name: Option<String>,
    server_address: Option<String>,
    basic_auth: Option<(String, String)>,
    tenant_id: Option<String>,
    tags: Vec<(String, String)>,
    runtime_tags: Vec<(String, String)>,
    http_headers: Vec<(String, String)>,
    sample_rate: Option<i64>,
    upload_interval: Option<f64>,
    cpu: Option<bool>,
    memory: Option<bool>,
    mem_domain: bool,
    alloc_sample_bytes: Option<i64>,
    shutdown_timeout: Option<f64>,
    line_no: u8,
    native: bool,
    report_pid: bool,
    report_thread_id: bool,
    report_thread_name: bool,
    log_level: Option<i32>,
    wall: bool,
    check_only: bool,
) -> PyResult<bool> {
    let settings = agent::Settings {
        application_name,
        server_address,
        basic_auth,
        tenant_id,
        tags,
        runtime_tags,
        http_headers,
        sample_rate,
        upload_interval,
        cpu,
        memory,
        alloc_sample_bytes,
        shutdown_timeout,
        report_pid,
    };
    let config = agent::build(&settings).map_err(ConfigError::new_err)?;
    if check_only {
        return Ok(true);
    }
    if agent::running() {
        return Ok(false);
    }
    agent::set_logging(log_level);
    labels::REPORT_THREAD_ID.store(report_thread_id, Ordering::SeqCst);
    labels::REPORT_THREAD_NAME.store(report_thread_name, Ordering::SeqCst);
    // The allocator wrappers stay for the life of the process (another wrapper may sit on
    // top of ours); they record nothing while no agent samples memory.
    if config.memory {
        if let Err(why) = memory::install(py, mem_domain) {
            log::warn!("pyroscope: {why}");
        }
    }
    // The walker is proven and registered once per process (a forked child keeps it).
    let walker = match WALKER.get(py) {
        Some(_) => None,
        None => {
            let outcome = match label_var(py) {
                Some(var) => cpython::init(py, var),
                None => Err("Python stacks are disabled: the package did not register its label variable".into()),
            };
            let _ = WALKER.set(py, outcome.is_ok());
            Some(outcome)
        }
    };
    let rate = config.sample_rate;
    let started = agent::start(config, line_no, native, walker).map_err(ConfigError::new_err)?;
    // `oncpu=False`: wall-clock samples of every thread, beside the CPU profile.
    if started && wall {
        if let Err(why) = wall::start(rate) {
            log::warn!("pyroscope: {why}");
        }
    }
    Ok(started)
}

/// Stops the agent, flushing the last window (at most the shutdown timeout, without the GIL).
/// False if none was running.
#[pyfunction]
fn stop(py: Python<'_>) -> bool {
    // The wall sampler first: its last samples go into the agent's last window.
    py.detach(wall::stop);
    match agent::take() {
        Some(a) => {
            py.detach(move || {
                a.stop();
            });
            true
        }
        None => false,
    }
}

#[pyfunction]
fn running() -> bool {
    agent::running()
}

/// Closes the current window now; False if no agent runs.
#[pyfunction]
fn flush() -> bool {
    agent::flush()
}

/// The running agent's counters as a dict, or None.
#[pyfunction]
fn stats(py: Python<'_>) -> PyResult<Option<Bound<'_, PyDict>>> {
    let Some(s) = agent::stats() else { return Ok(None) };
    let d = PyDict::new(py);
    for (k, v) in [
        ("samples", s.samples),
        ("samples_lost", s.samples_lost),
        ("alloc_samples_lost", s.alloc_samples_lost),
        ("samples_truncated", s.samples_truncated),
        ("windows", s.windows),
        ("profiles", s.profiles),
        ("uploads_sent", s.uploads_sent),
        ("uploads_dropped", s.uploads_dropped),
        ("uploads_failed", s.uploads_failed),
        ("upload_retries", s.upload_retries),
        ("windows_abandoned", s.windows_abandoned),
        ("threads_sampled", s.threads_sampled),
        ("threads_unsampled", s.threads_unsampled),
        ("handler_runs", s.handler_runs),
        ("handler_ns", s.handler_ns),
        ("alloc_sample_groups", s.alloc_sample_groups),
        ("live_overflow", s.live_overflow),
        ("label_sets_live", s.label_sets_live),
        ("label_sets_overflowed", s.label_sets_overflowed),
        ("label_sets_reclaimed", s.label_sets_reclaimed),
        ("wall_samples", s.wall_samples),
        ("wall_samples_lost", s.wall_samples_lost),
        ("labels_rejected_name", s.labels_rejected_name),
        ("labels_rejected_value", s.labels_rejected_value),
        ("labels_rejected_duplicate", s.labels_rejected_duplicate),
        ("labels_rejected_too_many", s.labels_rejected_too_many),
        ("signals_stale", s.signals_stale),
        ("thread_frees_deferred", s.thread_frees_deferred),
    ] {
        d.set_item(k, v)?;
    }
    Ok(Some(d))
}

/// Samples the calling thread's CPU from now on (see `pyroscope_core::register_thread`).
#[pyfunction]
fn register_thread() {
    pyroscope_core::register_thread();
}

#[pyfunction]
fn add_thread_tag(key: String, value: String) {
    labels::add_thread_tag(key, value);
}

#[pyfunction]
fn remove_thread_tag(key: &str, value: &str) {
    labels::remove_thread_tag(key, value);
}

/// The labels in force on this thread (thread tags), sorted by name.
#[pyfunction]
fn thread_tags() -> Vec<(String, String)> {
    labels::thread_tags()
}

/// A registry entry with `pairs` over the labels of `parent` (0 = none).
#[pyfunction]
fn new_context(parent: u64, pairs: Vec<(String, String)>) -> labels::ContextHolder {
    labels::new_context(parent, &pairs)
}

/// What the resolver gets for (context key, thread ident): sorted pairs, or None.
#[pyfunction]
fn lookup(context_key: u64, thread_ident: u64) -> Option<Vec<(String, String)>> {
    labels::lookup(context_key, thread_ident).map(|s| s.labels())
}

#[pyfunction]
fn registry_len() -> usize {
    labels::registry_len()
}

#[pyfunction]
fn sweep_now() {
    labels::sweep_now();
}

/// The wall-clock sampler runs in this process (`configure(oncpu=False)`).
#[pyfunction]
fn wall_running() -> bool {
    wall::running()
}

/// Context labels are on samples (the CPython walker is registered).
#[pyfunction]
fn context_labels() -> bool {
    labels::CONTEXT_LABELS.load(Ordering::SeqCst)
}

/// Tests only: makes `tag_wrapper` use the context variable even without the walker.
#[pyfunction]
fn force_context_labels(on: bool) {
    labels::CONTEXT_LABELS.store(on, Ordering::SeqCst);
}

#[pyfunction]
#[pyo3(signature = (ident, name=None))]
fn set_thread_name(ident: u64, name: Option<String>) {
    labels::set_thread_name(ident, name);
}

#[pyfunction]
fn before_fork() {
    // The label registry's lock is held across fork by the core's own fork handlers (see
    // `PyResolver::prepare_fork`), in the order the collector takes it.
    agent::before_fork();
}

/// True in a child whose parent was profiling: the caller starts the child's own agent.
#[pyfunction]
fn after_fork(child: bool) -> bool {
    agent::after_fork(child)
}

/// The module `pyroscope._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ConfigError", m.py().get_type::<ConfigError>())?;
    m.add("GRACE_SECONDS", labels::GRACE.as_secs_f64())?;
    m.add_class::<labels::ContextHolder>()?;
    m.add_function(wrap_pyfunction!(set_label_var, m)?)?;
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(running, m)?)?;
    m.add_function(wrap_pyfunction!(flush, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(register_thread, m)?)?;
    m.add_function(wrap_pyfunction!(add_thread_tag, m)?)?;
    m.add_function(wrap_pyfunction!(remove_thread_tag, m)?)?;
    m.add_function(wrap_pyfunction!(thread_tags, m)?)?;
    m.add_function(wrap_pyfunction!(new_context, m)?)?;
    m.add_function(wrap_pyfunction!(lookup, m)?)?;
    m.add_function(wrap_pyfunction!(registry_len, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_now, m)?)?;
    m.add_function(wrap_pyfunction!(context_labels, m)?)?;
    m.add_function(wrap_pyfunction!(wall_running, m)?)?;
    m.add_function(wrap_pyfunction!(set_thread_name, m)?)?;
    m.add_function(wrap_pyfunction!(force_context_labels, m)?)?;
    m.add_function(wrap_pyfunction!(before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(after_fork, m)?)?;
    cpython::testing::register(m)?;
    memory::register(m)?;
    Ok(())
}
