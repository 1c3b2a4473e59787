//! Delivery of finished profiles: the [`Exporter`] trait, the bounded queue and the uploader
//! thread with retry, exponential backoff and jitter.

pub(crate) mod file;
pub(crate) mod http;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::sync::{Condvar, Mutex};

/// One finished profile window, ready to send.
#[derive(Clone, Debug)]
pub struct Upload {
    /// `__name__` of the series: `process_cpu`, `memory`, ...
    pub profile_name: &'static str,
    /// Gzipped pprof.
    pub pprof: Vec<u8>,
    /// Window start.
    pub start: SystemTime,
    /// Window end.
    pub end: SystemTime,
    /// Static series labels (application name not included).
    pub tags: Arc<BTreeMap<String, String>>,
    /// Application name.
    pub application_name: Arc<str>,
    /// Hash of the static tags (file naming).
    pub tags_hash: u64,
}

/// How an export attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    /// Worth trying again (connection errors, timeouts, 408, 429 rate limits, 5xx).
    pub retryable: bool,
    /// Which kind of failure (logged once per kind).
    pub(crate) kind: crate::FailureKind,
    /// What happened (never includes credentials).
    pub message: String,
}

/// Somewhere profiles go.
pub trait Exporter: Send + Sync {
    /// Delivers one profile, or says whether trying again could help.
    fn export(&self, upload: &Upload) -> Result<(), ExportError>;
}

/// The exporter of [`Destination::Nowhere`](crate::Destination::Nowhere), whose collector
/// queues nothing: delivers nothing.
pub(crate) struct Discard;

impl Exporter for Discard {
    fn export(&self, _upload: &Upload) -> Result<(), ExportError> {
        Ok(())
    }
}

/// Counters of the delivery path.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Profiles accepted into the queue.
    pub queued: AtomicU64,
    /// Profiles delivered.
    pub sent: AtomicU64,
    /// Profiles dropped because the queue was full (oldest first).
    pub dropped_queue_full: AtomicU64,
    /// Profiles dropped after a non-retryable error or when retries ran out.
    pub dropped_failed: AtomicU64,
    /// Attempts that failed and were retried.
    pub retries: AtomicU64,
    /// Profiles still queued when shutdown's deadline passed.
    pub dropped_at_shutdown: AtomicU64,
}

struct QueueState {
    items: VecDeque<Upload>,
    closing: Option<Instant>,
    /// Shutdown has begun: the last window is being closed (or is queued), and a server that
    /// refuses connections is not waited for.
    stopping: bool,
    /// The uploader holds an upload it took from `items`.
    in_flight: bool,
    /// Shutdown gave up: everything queued or in flight was counted as dropped at shutdown,
    /// and nothing more is queued, sent or counted.
    abandoned: bool,
}

/// The bounded queue between the collector and the uploader thread.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    cv: Condvar,
    capacity: usize,
    pub stats: Arc<ExportStats>,
}

impl Queue {
    pub fn new(capacity: usize, stats: Arc<ExportStats>) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                closing: None,
                stopping: false,
                in_flight: false,
                abandoned: false,
            }),
            cv: Condvar::new(),
            capacity: capacity.max(1),
            stats,
        }
    }

    /// Adds an upload, counted in `queued`; drops the oldest when full. Never blocks on the
    /// network. Refuses it (false, counted nowhere) once shutdown has closed the queue: the
    /// collector closed its last window before that, unless shutdown stopped waiting for it.
    /// Counting under the lock keeps `queued == sent + dropped` whenever nothing is queued
    /// or in flight, even against a concurrent [`abandon`](Queue::abandon).
    pub fn push(&self, upload: Upload) -> bool {
        let mut s = self.state.lock();
        if s.abandoned || s.closing.is_some() {
            return false;
        }
        while s.items.len() >= self.capacity {
            s.items.pop_front();
            self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
        s.items.push_back(upload);
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        self.cv.notify_one();
        true
    }

    /// Shutdown has begun (before the collector closes the last window): from here an upload
    /// that finds nothing listening is dropped instead of retried.
    pub fn stopping(&self) {
        self.state.lock().stopping = true;
        self.cv.notify_all();
    }

    /// Asks the uploader to send what is queued and stop by `deadline`.
    pub fn close(&self, deadline: Instant) {
        let mut s = self.state.lock();
        s.closing = Some(deadline);
        s.stopping = true;
        drop(s);
        self.cv.notify_all();
    }

    /// Gives up on delivery (shutdown's deadline passed): what is queued or in flight is
    /// counted as dropped at shutdown now, so the counters are final when shutdown returns. An
    /// upload in flight may still reach the server; it stays counted as dropped.
    pub fn abandon(&self) {
        let mut s = self.state.lock();
        Self::abandon_locked(&mut s, &self.stats);
        self.cv.notify_all();
    }

    fn abandon_locked(s: &mut QueueState, stats: &ExportStats) {
        if !s.abandoned {
            s.abandoned = true;
            let left = s.items.len() as u64 + u64::from(s.in_flight);
            s.items.clear();
            stats.dropped_at_shutdown.fetch_add(left, Ordering::Relaxed);
        }
    }

    /// Runs the uploader until closed: sends in order, retrying with backoff. `max_retry`
    /// bounds how long one upload may be retried before it is dropped.
    pub fn run(&self, exporter: &dyn Exporter, max_retry: Duration) {
        let mut rng = seed();
        loop {
            let upload = {
                let mut s = self.state.lock();
                loop {
                    if s.abandoned {
                        return;
                    }
                    if s.closing.is_some_and(|d| Instant::now() >= d) {
                        Self::abandon_locked(&mut s, &self.stats);
                        return;
                    }
                    if let Some(u) = s.items.pop_front() {
                        s.in_flight = true;
                        break u;
                    }
                    if s.closing.is_some() {
                        return;
                    }
                    s = self.cv.wait(s);
                }
            };
            let give_up = Instant::now() + max_retry;
            let mut backoff = Duration::from_millis(250);
            loop {
                let result = exporter.export(&upload);
                let mut s = self.state.lock();
                if s.abandoned {
                    // Counted when shutdown gave up on it.
                    return;
                }
                match result {
                    Ok(()) => {
                        s.in_flight = false;
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        let stop_at = s.closing.map_or(give_up, |d| d.min(give_up));
                        // Full jitter: sleep a random time in [backoff/2, backoff].
                        rng = xorshift(rng);
                        let sleep = backoff / 2 + Duration::from_nanos(rng % (backoff.as_nanos() as u64 / 2 + 1));
                        // Shutting down and nothing listens: waiting for it to come back would
                        // only hold the program's exit until the deadline.
                        let gone = s.stopping && e.kind == crate::FailureKind::HttpTransport(crate::Transport::Connect);
                        if !e.retryable || gone || Instant::now() + sleep >= stop_at {
                            s.in_flight = false;
                            self.stats.dropped_failed.fetch_add(1, Ordering::Relaxed);
                            drop(s);
                            crate::log_once(e.kind, &e.message);
                            break;
                        }
                        self.stats.retries.fetch_add(1, Ordering::Relaxed);
                        // Sleep, but wake early when shutdown starts or gives up (the deadline
                        // is re-read after the next attempt).
                        let until = Instant::now() + sleep.min(stop_at.saturating_duration_since(Instant::now()));
                        while !s.abandoned && Instant::now() < until {
                            let (closing, stopping) = (s.closing, s.stopping);
                            s = self.cv.wait_for(s, until.saturating_duration_since(Instant::now()));
                            if s.closing != closing || s.stopping != stopping {
                                break;
                            }
                        }
                        if s.abandoned {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
    }
}

fn seed() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flaky {
        fail_first: u64,
        calls: AtomicU64,
        retryable: bool,
    }
    impl Exporter for Flaky {
        fn export(&self, _: &Upload) -> Result<(), ExportError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if n < self.fail_first {
                Err(ExportError {
                    retryable: self.retryable,
                    kind: crate::FailureKind::HttpRequest,
                    message: "boom".into(),
                })
            } else {
                Ok(())
            }
        }
    }

    fn upload() -> Upload {
        Upload {
            profile_name: "process_cpu",
            pprof: vec![],
            start: SystemTime::now(),
            end: SystemTime::now(),
            tags: Default::default(),
            application_name: "a".into(),
            tags_hash: 0,
        }
    }

    #[test]
    fn retries_then_succeeds_and_drops_oldest_when_full() {
        let q = Queue::new(2, Default::default());
        for _ in 0..3 {
            q.push(upload());
        }
        assert_eq!(q.stats.dropped_queue_full.load(Ordering::SeqCst), 1);
        q.close(Instant::now() + Duration::from_secs(10));
        let ex = Flaky { fail_first: 2, calls: AtomicU64::new(0), retryable: true };
        q.run(&ex, Duration::from_secs(10));
        assert_eq!(q.stats.sent.load(Ordering::SeqCst), 2);
        assert_eq!(q.stats.retries.load(Ordering::SeqCst), 2);
        assert_eq!(q.stats.queued.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_closed_queue_refuses_and_counts_nothing() {
        let q = Queue::new(4, Default::default());
        assert!(q.push(upload()));
        q.close(Instant::now() + Duration::from_secs(10));
        assert!(!q.push(upload()), "pushed after close");
        q.abandon();
        assert!(!q.push(upload()), "pushed after abandon");
        let s = &q.stats;
        assert_eq!(s.queued.load(Ordering::SeqCst), 1);
        assert_eq!(s.dropped_at_shutdown.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn non_retryable_is_dropped_at_once() {
        let q = Queue::new(4, Default::default());
        q.push(upload());
        q.close(Instant::now() + Duration::from_secs(10));
        let ex = Flaky { fail_first: 100, calls: AtomicU64::new(0), retryable: false };
        q.run(&ex, Duration::from_secs(10));
        assert_eq!(ex.calls.load(Ordering::SeqCst), 1);
        assert_eq!(q.stats.dropped_failed.load(Ordering::SeqCst), 1);
    }
}
