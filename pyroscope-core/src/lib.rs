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
//! tag_wrapper(&[("vehicle", "car")], || { /* every sample here carries vehicle=car */ })?;
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
//! - Changing labels costs one thread-local atomic store with a pre-built [`LabelSet`].
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
mod config;
mod error;
mod export;
mod labels;
mod pprof;
mod ring;
mod sampler;
mod symbolize;
mod sync;
mod sys;
mod thread;
mod unwind;

pub use agent::{Agent, AgentBuilder, Stats};
pub use aggregate::FrameId;
pub use alloc::{
    alloc_is_sampled, countdown_expired, free_is_tracked, on_alloc, on_free, record_alloc, record_free,
    SamplingAllocator, DEFAULT_SAMPLE_BYTES,
};
pub use config::{env, parse_tags, Auth, Config, Destination, Protocol, MAX_SAMPLE_RATE};
pub use error::{Error, Result};
pub use export::http::push;
pub use export::{ExportError, Exporter, Upload};
pub use labels::{
    current as current_labels, push as push_labels, register_thread, tag_wrapper, LabelGuard, LabelSet, WithLabels,
};
pub use pprof::{decode as decode_pprof, encode_gzip, proto, DecodeError, ProfileBuilder};
pub use symbolize::Symbol;

#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use sampler::{in_signal_handler, test_hooks};

use std::collections::HashSet;

/// Logs a background failure once per kind (its first 48 characters), never from a hot path.
static SEEN: sync::Mutex<Option<HashSet<String>>> = sync::Mutex::new(None);

pub(crate) fn log_prepare_fork() {
    SEEN.fork_hold();
}

pub(crate) fn log_after_fork() {
    SEEN.fork_release();
}

pub(crate) fn log_once(message: &str) {
    let key: String = message.chars().take(48).collect();
    if SEEN.lock().get_or_insert_with(HashSet::new).insert(key) {
        log::warn!("pyroscope: {message}");
    }
}
