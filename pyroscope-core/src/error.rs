//! The one public error type.

use std::time::Duration;

/// Everything that can go wrong at the API. Each variant carries the offending value so the
/// message tells the user exactly what to fix.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The application name is empty.
    #[error("application name is empty")]
    EmptyApplicationName,
    /// The application name has characters the server rejects (allowed: `[A-Za-z0-9_.\-/]`).
    #[error("invalid application name {name:?}: only letters, digits and `_ . - /` are allowed")]
    InvalidApplicationName {
        /// The rejected name.
        name: String,
    },
    /// The server address is not an absolute `http://` or `https://` URL.
    #[error("invalid server address {url:?}: {reason}")]
    InvalidServerAddress {
        /// The rejected address.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A label name is empty, too long or has characters outside `[A-Za-z0-9_.]`.
    #[error(
        "invalid label name {name:?}: must be 1-1024 chars of letters, digits, `_` or `.`, and not start with `__`"
    )]
    InvalidLabelName {
        /// The rejected name.
        name: String,
    },
    /// A label name starts with `__` or is one the server sets itself.
    #[error("label name {name:?} is reserved for the server")]
    ReservedLabelName {
        /// The rejected name.
        name: String,
    },
    /// A label value is empty, longer than 2048 bytes, or has control characters.
    #[error("invalid value {value:?} for label {name:?}: must be 1-2048 bytes without control characters")]
    InvalidLabelValue {
        /// The label's name.
        name: String,
        /// The rejected value.
        value: String,
    },
    /// A static tag's value is not a valid label value, or contains `,` `{` `}` `=`, which
    /// the `/ingest` series name `app{k=v,...}` cannot carry.
    #[error(
        "invalid value {value:?} for tag {name:?}: must be 1-2048 bytes without control characters or `, {{ }} =`"
    )]
    InvalidTagValue {
        /// The tag's name.
        name: String,
        /// The rejected value.
        value: String,
    },
    /// The same label name appears twice in one set.
    #[error("label {name:?} is given twice")]
    DuplicateLabel {
        /// The repeated name.
        name: String,
    },
    /// Too many labels: static tags for one series (the server allows 30 names in all), or
    /// dynamic labels for one sample.
    #[error("too many labels: {count} (at most {max})")]
    TooManyLabels {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The `PYROSCOPE_TAGS` style `k=v,k2=v2` string could not be parsed.
    #[error("invalid tags {input:?}: expected `key=value[,key=value...]`")]
    InvalidTagString {
        /// The rejected string.
        input: String,
    },
    /// The sample rate is zero or above the supported maximum.
    #[error("invalid sample rate {rate} Hz: must be 1..={max}")]
    InvalidSampleRate {
        /// The rejected rate.
        rate: u32,
        /// The maximum.
        max: u32,
    },
    /// The upload interval is outside the supported range.
    #[error("invalid upload interval {interval:?}: must be between 1 s and 1 h")]
    InvalidUploadInterval {
        /// The rejected interval.
        interval: Duration,
    },
    /// The allocation sampling interval is zero.
    #[error("invalid allocation sampling interval {bytes} bytes: must be above zero")]
    InvalidAllocSampleBytes {
        /// The rejected interval.
        bytes: u64,
    },
    /// The request timeout is zero.
    #[error("invalid request timeout {timeout:?}: must be above zero")]
    InvalidTimeout {
        /// The rejected timeout.
        timeout: Duration,
    },
    /// A header name or value cannot be sent.
    #[error("invalid HTTP header {name:?}")]
    InvalidHeader {
        /// The rejected header name.
        name: String,
    },
    /// Both basic auth and a bearer token are set.
    #[error("both basic auth and a bearer token are set; choose one")]
    ConflictingAuth,
    /// An environment variable holds a value that cannot be used.
    #[error("environment variable {var} has an invalid value {value:?}: {reason}")]
    InvalidEnv {
        /// The variable's name.
        var: &'static str,
        /// Its value (secrets are never echoed).
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The signal number cannot be used for sampling.
    #[error("invalid signal {signal}: use SIGPROF or a real-time signal")]
    InvalidSignal {
        /// The rejected signal number.
        signal: i32,
    },
    /// Another agent is already running in this process.
    #[error("a profiler agent is already running in this process")]
    AlreadyRunning,
    /// The operating system refused something the profiler needs.
    #[error("{what} failed: {errno}")]
    Os {
        /// The call that failed.
        what: &'static str,
        /// The OS error.
        errno: String,
    },
    /// The export folder cannot be created or written.
    #[error("export directory {path:?}: {reason}")]
    ExportDir {
        /// The folder.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// [`Agent::capture_cpu`](crate::Agent::capture_cpu) was asked for more than an hour.
    #[error("invalid capture duration {duration:?}: at most 1 h")]
    InvalidCaptureDuration {
        /// The rejected duration.
        duration: Duration,
    },
    /// [`Agent::capture_cpu`](crate::Agent::capture_cpu) found as many captures running as
    /// it allows at once.
    #[error("too many CPU captures at once (limit {limit})")]
    CaptureLimit {
        /// The limit.
        limit: usize,
    },
    /// The agent stopped (or is stopping, or this is a forked child) before a CPU capture
    /// could be built.
    #[error("the profiler agent stopped before the CPU capture ended")]
    CaptureStopped,
    /// [`LabelSet::new`](crate::LabelSet::new) found the live label sets at their cap; the
    /// new set was not interned (`tag_wrapper` and `push_labels` use the overflow set instead).
    #[error("too many label sets in use (limit {limit}); unused ones are reclaimed as windows close")]
    LabelSetLimit {
        /// The limit.
        limit: usize,
    },
}

impl Error {
    pub(crate) fn os(what: &'static str) -> Self {
        Error::Os { what, errno: std::io::Error::last_os_error().to_string() }
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
