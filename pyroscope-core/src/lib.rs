//! # pyroscope-core
//!
//! An in-process continuous profiler. It samples where every thread of the process spends CPU,
//! tags each sample with the labels in force at that instant, and delivers pprof profiles to a
//! Grafana Pyroscope server or, with no server configured, to a folder of gzipped pprof files.
//!
//! ```no_run
//! use pyroscope_core::{AgentBuilder, tag_wrapper};
//!
//! let agent = AgentBuilder::new("rideshare")
//!     .server_address("http://localhost:4040") // omit: profiles go to ./profiles
//!     .tag("region", "eu-north")
//!     .start()?;
//! // Always runs the closure: bad labels are left out, counted in `Stats` and logged once.
//! tag_wrapper(&[("vehicle", "car")], || { /* every sample here carries vehicle=car */ });
//! agent.stop(); // or drop it: flushes the last window, at most 2 s
//! # Ok::<(), pyroscope_core::Error>(())
//! ```
//!
//! ## How it works, and what it guarantees
//! - One CPU-time timer per thread (`timer_create` on the thread's CPU clock), found by a scan
//!   of `/proc/self/task` every 100 ms; samples weighted by timer overruns, so attribution per
//!   thread is exact even above the kernel tick rate.
//! - The signal handler allocates nothing, takes no lock and formats nothing: it reads the
//!   thread's label id (one atomic load), unwinds with framehop over `.eh_frame` (code without
//!   frame pointers included) and writes one fixed-size record into a lock-free ring, or
//!   counts a drop.
//! - A collector thread drains the ring, aggregates per (stack, labels), symbolizes off the
//!   application's threads (demangled, with file:line and inlined frames) and closes a window
//!   every upload interval. An uploader thread sends it with retries, backoff and jitter;
//!   the queue is bounded and drops the oldest profile when full (counted in [`Stats`]).
//! - [`Agent::capture_cpu`] profiles the next N seconds on demand (pull mode, as Go's
//!   `/debug/pprof/profile`): the collector copies what it drains into the capture's own
//!   window, so the regular windows and uploads go on unchanged.
//! - Changing labels costs one thread-local atomic store with a pre-built [`LabelSet`]. Label
//!   sets no longer used are reclaimed as windows close; at 65,536 live sets new ones are
//!   recorded as `pyroscope_overflow="true"` (counted in [`Stats`]).
//! - [`Agent::stop`] and drop return within the shutdown timeout (default 2 s), even while a
//!   huge last window is being built or the server hangs; what could not be sent in time is
//!   counted in [`Stats`], as are lost samples and failed, retried and dropped uploads.
//!   Background failures are logged once per kind (`docs/lifecycle.md`).
//! - `Debug` output and error messages never show passwords, tokens, header values or a
//!   URL's user info.
//!
//! ## Caller's duties and limits
//! - Linux x86_64 only for now. SIGPROF is used by default; inside hosts that own SIGPROF pick
//!   a real-time signal with [`AgentBuilder::signal`].
//! - The handler runs on the interrupted thread's stack and may need up to ~32 KiB of it on an
//!   unwind-rule cache miss: threads with tiny stacks should not be profiled.
//! - After `fork()` the child is silent: it inherits no timers, and dropping the parent's
//!   [`Agent`] in the child sends nothing. Start a new agent in the child to profile it.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod agent;
mod aggregate;
mod alloc;
mod collector;
mod config;
mod error;
mod export;
pub mod fault;
mod interp;
pub mod jit;
mod labels;
mod ring;
mod sampler;
mod symbolize;
mod sync;
mod sys;
mod thread;
mod unwind;

// The pprof codec lives in its own crate so the report command can use it without the sampler.
use pyroscope_pprof as pprof;

/// Whether an agent (or the collector of one whose shutdown stopped waiting) holds the
/// process's agent slot; for tests that start agents one after another.
#[doc(hidden)]
pub use agent::running as agent_running;
pub use agent::{Agent, Capture, Stats};
pub use aggregate::{FrameId, HeapSample};
pub use alloc::{SamplingAllocator, DEFAULT_SAMPLE_BYTES};
pub use config::{env, parse_tags, validate_tag, AgentBuilder, Auth, Config, Destination, Protocol, MAX_SAMPLE_RATE};
pub use error::{Error, Result};
pub use interp::{set_interpreter, set_native_frames, NativeFrames, Resolver, WalkFn};
pub use labels::{
    current as current_labels, of_thread as labels_of_thread, push as push_labels, register_thread, sample_wall_time,
    tag_wrapper, validate_label, LabelGuard, LabelSet, LabelSlot, WithLabels,
};
pub use pprof::{decode as decode_pprof, encode_gzip, proto, DecodeError, ProfileBuilder};
pub use symbolize::{named_by_file_symbols, Symbol};
pub use thread::{mark_own as mark_own_thread, set_label_reader, LabelReadFn};

/// The allocation hooks the preload library calls from its `malloc`/`free`; not for programs,
/// which use [`SamplingAllocator`].
#[doc(hidden)]
pub use alloc::{alloc_is_sampled, countdown_expired, free_is_tracked, on_alloc, on_free, record_alloc, record_free};
/// The push API messages, for the test receiver.
#[doc(hidden)]
pub use export::http::push;
/// Delivery internals, public for tests; the agent picks its exporter from [`Config::destination`].
#[doc(hidden)]
pub use export::{ExportError, Exporter, Upload};

#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use sampler::{in_signal_handler, test_hooks};

use std::collections::HashSet;

/// A kind of failure on a background thread: each is logged once per process (the first
/// time), and counted where [`Stats`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FailureKind {
    /// The server answered this HTTP status.
    HttpStatus(u16),
    /// No HTTP answer came back.
    HttpTransport(Transport),
    /// The upload request could not be built.
    HttpRequest,
    /// A profile file could not be written.
    FileWrite,
}

/// Why a request got no HTTP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Transport {
    /// Connect, read or write timed out, or the body stalled.
    Timeout,
    /// No connection: refused, reset, unknown host.
    Connect,
    /// The TLS handshake or certificate check failed.
    Tls,
    /// The answer was not HTTP.
    Protocol,
    /// Anything else.
    Other,
}

static SEEN: sync::Mutex<Option<HashSet<FailureKind>>> = sync::Mutex::new(None);

pub(crate) fn log_prepare_fork() {
    SEEN.fork_hold();
}

pub(crate) fn log_after_fork() {
    SEEN.fork_release();
}

/// Logs `message` (a warning) if no failure of this kind was logged before in this process;
/// returns whether it did. Never from a signal handler or an allocation hook.
pub(crate) fn log_once(kind: FailureKind, message: &str) -> bool {
    let first = SEEN.lock().get_or_insert_with(HashSet::new).insert(kind);
    if first {
        log::warn!("pyroscope: {message}");
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_logged_once_whatever_the_text() {
        // Kinds no other unit test logs (the set is process-wide).
        let url = "http://localhost:4040/push.v1.PusherService/Push";
        assert!(log_once(FailureKind::HttpStatus(418), &format!("{url} answered 418: bad")));
        assert!(log_once(FailureKind::HttpStatus(599), &format!("{url} answered 599: oops")));
        assert!(!log_once(FailureKind::HttpStatus(418), &format!("{url} answered 418: other text")));
        assert!(log_once(FailureKind::HttpTransport(Transport::Timeout), &format!("sending to {url}: timeout")));
        assert!(log_once(FailureKind::HttpTransport(Transport::Connect), &format!("sending to {url}: refused")));
    }
}
