//! Settings, their validation, and the `PYROSCOPE_*` environment variables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::labels::{validate_name, validate_tag_value};

/// Highest supported sample rate. CPU-time timers are tick-bound (often 250 Hz), so higher
/// rates mostly add overrun weight, not resolution.
pub const MAX_SAMPLE_RATE: u32 = 10_000;

/// Records of the sample ring by default: room for bursts of sampled allocations.
pub(crate) const DEFAULT_RING_RECORDS: usize = 4096;

/// Which endpoint carries the profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    /// `POST /push.v1.PusherService/Push` (Connect, protobuf, gzip). The default.
    #[default]
    Push,
    /// The legacy `POST /ingest?name=app{tags}&format=pprof`.
    Ingest,
}

/// Where profiles go.
#[derive(Clone, PartialEq, Eq)]
pub enum Destination {
    /// A Pyroscope server (base URL, without the endpoint path).
    Server(url::Url),
    /// The embedded default: gzipped pprof files in a folder.
    Directory(PathBuf),
    /// Nowhere: windows are closed and dropped unbuilt, and only captures
    /// ([`Agent::capture_cpu`](crate::Agent::capture_cpu)) read the samples. Pull mode without
    /// uploads ([`AgentBuilder::pull_only`]).
    Nowhere,
}

/// HTTP authentication.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Auth {
    /// None (OSS server default).
    #[default]
    None,
    /// `Authorization: Basic base64(user:password)` (Grafana Cloud).
    Basic {
        /// User (the stack / tenant id on Grafana Cloud).
        user: String,
        /// Password (an access-policy token on Grafana Cloud).
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials are never printed.
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { user, .. } => {
                write!(f, "Basic {{ user: {user:?}, password: <redacted> }}")
            }
            Auth::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// A validated configuration. Build it with [`AgentBuilder::build`]; [`crate::Agent::start`]
/// checks it again ([`Config::validate`]), so no setting reaches the agent unchecked. Its
/// `Debug` output never shows credentials, header values or a URL's user info.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// Application (service) name.
    pub application_name: String,
    /// Where profiles go.
    pub destination: Destination,
    /// Static tags, on the series.
    pub tags: BTreeMap<String, String>,
    /// Labels on every sample of this process (pyroscope-io's `report_pid` puts `pid` there),
    /// under the sample's own labels of the same name.
    pub sample_labels: BTreeMap<String, String>,
    /// CPU samples per second per thread.
    pub sample_rate: u32,
    /// Length of one profile window.
    pub upload_interval: Duration,
    /// Authentication.
    pub auth: Auth,
    /// `X-Scope-OrgID`, for multi-tenant servers.
    pub tenant_id: Option<String>,
    /// Extra headers, applied last.
    pub headers: BTreeMap<String, String>,
    /// Timeout of one HTTP request.
    pub request_timeout: Duration,
    /// Push API or `/ingest`.
    pub protocol: Protocol,
    /// Signal used for CPU samples.
    pub signal: i32,
    /// Run the signal handler on the thread's alternate signal stack (`SA_ONSTACK`): required
    /// inside Go programs (cgo), whose goroutine stacks are too small; the alternate stack must
    /// have 32 KiB or more.
    pub signal_on_alt_stack: bool,
    /// Upper bound on `stop()`/drop: flushing the last window never takes longer.
    pub shutdown_timeout: Duration,
    /// Most profiles waiting for upload; when full the oldest is dropped (and counted).
    pub queue_capacity: usize,
    /// CPU profiles (default on); off, no timer is armed and no signal is sent.
    pub cpu: bool,
    /// Memory profiles (when a sampling allocator or the preload library is in place).
    pub memory: bool,
    /// Mean bytes between allocation samples.
    pub alloc_sample_bytes: u64,
    /// Seed of the allocation sampling RNG (fixed for reproducible tests).
    pub alloc_seed: Option<u64>,
    /// Records the sample ring holds between two drains of the collector (its memory is about
    /// 2 KiB a record, resident as it fills). The ring is made once per process, by the first
    /// agent: a later agent's setting has no effect.
    pub ring_records: usize,
}

/// Collects settings; [`build`](AgentBuilder::build) validates them all into a [`Config`], and
/// [`start`](AgentBuilder::start) starts profiling with it.
#[derive(Clone)]
#[must_use]
pub struct AgentBuilder {
    /// Every setting but where profiles go, unchecked until [`build`](AgentBuilder::build).
    config: Config,
    server_address: Option<String>,
    export_dir: Option<PathBuf>,
    pull_only: bool,
    env_error: Option<Error>,
}

impl AgentBuilder {
    /// Defaults: 100 Hz, 10 s windows, push API, profiles to `./profiles` unless a server is set.
    pub fn new(application_name: impl Into<String>) -> Self {
        AgentBuilder {
            config: Config {
                application_name: application_name.into(),
                destination: Destination::Directory(PathBuf::from("./profiles")),
                tags: BTreeMap::new(),
                sample_labels: BTreeMap::new(),
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
                ring_records: DEFAULT_RING_RECORDS,
                cpu: true,
                memory: true,
                alloc_sample_bytes: crate::alloc::DEFAULT_SAMPLE_BYTES,
                alloc_seed: None,
            },
            server_address: None,
            export_dir: None,
            pull_only: false,
            env_error: None,
        }
    }

    /// Starts from the `PYROSCOPE_*` environment variables (see [`crate::env`]); later calls
    /// override them. A malformed variable is reported by `start()`.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading each `PYROSCOPE_*` variable through `lookup`
    /// instead of the process environment (a binding's own settings map, or a test).
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
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
            match parse_tags(&v) {
                Ok(t) => b2.config.tags = t.into_iter().collect(),
                Err(e) => fail(e),
            }
        }
        match env_number::<u32>(env::SAMPLE_RATE, var(env::SAMPLE_RATE), "not a whole number of Hz") {
            Ok(Some(r)) => b2.config.sample_rate = r,
            Ok(None) => {}
            Err(e) => fail(e),
        }
        if let Some(v) = var(env::UPLOAD_INTERVAL) {
            match parse_seconds(env::UPLOAD_INTERVAL, &v) {
                Ok(d) => b2.config.upload_interval = d,
                Err(e) => fail(e),
            }
        }
        if let Some(t) = var(env::AUTH_TOKEN) {
            b2.config.auth = Auth::Bearer(t);
        }
        if let Some(user) = var(env::BASIC_AUTH_USER) {
            if matches!(b2.config.auth, Auth::Bearer(_)) {
                fail(Error::ConflictingAuth);
            }
            b2.config.auth = Auth::Basic { user, password: var(env::BASIC_AUTH_PASSWORD).unwrap_or_default() };
        }
        if let Some(t) = var(env::TENANT_ID) {
            b2.config.tenant_id = Some(t);
        }
        match env_number::<u64>(env::ALLOC_SAMPLE_BYTES, var(env::ALLOC_SAMPLE_BYTES), "not a whole number of bytes") {
            Ok(Some(n)) => b2.config.alloc_sample_bytes = n,
            Ok(None) => {}
            Err(e) => fail(e),
        }
        for (name, field) in [(env::CPU, &mut b2.config.cpu), (env::MEMORY, &mut b2.config.memory)] {
            if let Some(v) = var(name) {
                match v.trim().to_ascii_lowercase().as_str() {
                    "1" | "true" | "yes" | "on" => *field = true,
                    "0" | "false" | "no" | "off" => *field = false,
                    _ => fail(Error::InvalidEnv { var: name, value: v, reason: "use true or false".into() }),
                }
            }
        }
        b2.env_error = env_error;
        b2
    }

    /// Application (service) name, `[A-Za-z0-9_.\-/]+`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.config.application_name = name.into();
        self
    }
    /// Pyroscope server base URL (`http://localhost:4040`). Without it, profiles go to files.
    pub fn server_address(mut self, url: impl Into<String>) -> Self {
        self.server_address = Some(url.into());
        self
    }
    /// Uploads nothing and writes no files, whatever the server address or folder: profiles
    /// are only pulled, through captures ([`Destination::Nowhere`]), which are CPU profiles, so
    /// allocations are not sampled (`memory` is off).
    pub fn pull_only(mut self) -> Self {
        self.pull_only = true;
        self
    }
    /// Folder for the embedded default (used when no server address is set).
    pub fn export_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.export_dir = Some(dir.into());
        self
    }
    /// Adds a static tag (on every series), e.g. `region`.
    pub fn tag(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.tags.insert(name.into(), value.into());
        self
    }
    /// Adds a label to every sample (not to the series), e.g. `pid`.
    pub fn sample_label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.sample_labels.insert(name.into(), value.into());
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
        self.config.sample_rate = hz;
        self
    }
    /// Window length (default 10 s).
    pub fn upload_interval(mut self, interval: Duration) -> Self {
        self.config.upload_interval = interval;
        self
    }
    /// HTTP basic auth.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.auth = Auth::Basic { user: user.into(), password: password.into() };
        self
    }
    /// Bearer token.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.config.auth = Auth::Bearer(token.into());
        self
    }
    /// `X-Scope-OrgID`.
    pub fn tenant_id(mut self, tenant: impl Into<String>) -> Self {
        self.config.tenant_id = Some(tenant.into());
        self
    }
    /// An extra HTTP header, applied after the others.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.headers.insert(name.into(), value.into());
        self
    }
    /// Timeout of one HTTP request (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }
    /// Push API (default) or `/ingest`.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.config.protocol = protocol;
        self
    }
    /// The signal for CPU samples (default SIGPROF; use a real-time signal inside hosts that
    /// own SIGPROF).
    pub fn signal(mut self, signal: i32) -> Self {
        self.config.signal = signal;
        self
    }
    /// Runs the CPU signal handler on the thread's alternate signal stack (`SA_ONSTACK`), as Go
    /// requires of every handler in a cgo program. Only for hosts whose alternate stacks have
    /// 32 KiB or more (Go's have); Rust's own are smaller, so the default is off.
    pub fn signal_on_alt_stack(mut self, on: bool) -> Self {
        self.config.signal_on_alt_stack = on;
        self
    }
    /// Longest `stop()`/drop may take (default 2 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// CPU profiles on (default) or off (memory profiles only: no timer, no signal).
    pub fn cpu(mut self, enabled: bool) -> Self {
        self.config.cpu = enabled;
        self
    }

    /// Memory profiles on (default) or off. They need a [`crate::SamplingAllocator`] as the
    /// global allocator, or the preload library.
    pub fn memory(mut self, enabled: bool) -> Self {
        self.config.memory = enabled;
        self
    }
    /// Mean bytes between allocation samples (default 512 KiB).
    pub fn alloc_sample_bytes(mut self, bytes: u64) -> Self {
        self.config.alloc_sample_bytes = bytes;
        self
    }
    /// Fixes the allocation sampling RNG's seed, for reproducible tests.
    pub fn alloc_seed(mut self, seed: u64) -> Self {
        self.config.alloc_seed = Some(seed);
        self
    }

    /// Records the sample ring holds (default 4,096, about 8 MiB, resident as it fills): bursts
    /// of sampled allocations need that (at 2,048 the preload library's allocation test lost
    /// most of a burst); CPU and wall samples alone (a runtime without allocation hooks) fit in
    /// 512 at 1 kHz. At least 256. The first agent of a process makes the ring.
    pub fn ring_records(mut self, records: usize) -> Self {
        self.config.ring_records = records.max(256);
        self
    }

    /// Validates every setting.
    pub fn build(self) -> Result<Config> {
        if let Some(e) = self.env_error {
            return Err(e);
        }
        let mut config = self.config;
        validate_application_name(&config.application_name)?;
        config.destination = match self.server_address {
            Some(s) => Destination::Server(parse_server_address(&s)?),
            None => Destination::Directory(self.export_dir.unwrap_or_else(|| PathBuf::from("./profiles"))),
        };
        if self.pull_only {
            config.destination = Destination::Nowhere;
            config.memory = false;
        }
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Checks every setting, as [`AgentBuilder::build`] does; [`crate::Agent::start`] calls it
    /// too, so a `Config` changed after it was built is checked again before it is used.
    pub fn validate(&self) -> Result<()> {
        validate_application_name(&self.application_name)?;
        if let Destination::Server(url) = &self.destination {
            check_server_url(url)?;
        }
        for (k, v) in &self.tags {
            validate_tag(k, v)?;
        }
        for (k, v) in &self.sample_labels {
            crate::labels::validate_label(k, v)?;
        }
        // The server allows 30 label names per series; we add up to 6 of our own.
        if self.tags.len() > 24 {
            return Err(Error::TooManyLabels { count: self.tags.len(), max: 24 });
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
        Ok(())
    }
}

/// A whole number from the environment: None when unset or blank, a typed error when malformed.
fn env_number<T: std::str::FromStr>(var: &'static str, value: Option<String>, reason: &str) -> Result<Option<T>> {
    match value {
        Some(v) => v.trim().parse().map(Some).map_err(|_| Error::InvalidEnv { var, value: v, reason: reason.into() }),
        None => Ok(None),
    }
}

/// Shown instead of a secret.
const REDACTED: &str = "<redacted>";

/// `s` (a URL, or text meant to be one) without the user info of its authority and without
/// its query, which may carry credentials: for messages and `Debug` output. A password may
/// hold `/`, `?` or `#` (unencoded, which the URL parser refuses), so when an `@` follows the
/// scheme anywhere, everything up to the last `@` is redacted: too much rather than a secret.
pub(crate) fn redact_url(s: &str) -> String {
    let (scheme, rest) = match s.find("://") {
        Some(i) => s.split_at(i + 3),
        None => ("", s),
    };
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => (format!("{REDACTED}@"), &rest[at + 1..]),
        None => (String::new(), rest),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let tail = match tail.find('?') {
        Some(q) => {
            let fragment = tail[q..].find('#').map_or("", |f| &tail[q + f..]);
            format!("{}?{REDACTED}{fragment}", &tail[..q])
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{userinfo}{authority}{tail}")
}

/// Header names with their values redacted.
struct HeaderNames<'a>(&'a BTreeMap<String, String>);

impl std::fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, REDACTED))).finish()
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Server(url) => f.debug_tuple("Server").field(&redact_url(url.as_str())).finish(),
            Destination::Directory(dir) => f.debug_tuple("Directory").field(dir).finish(),
            Destination::Nowhere => f.write_str("Nowhere"),
        }
    }
}

impl Config {
    /// Every setting but the destination, secrets redacted.
    fn debug_settings(&self, d: &mut std::fmt::DebugStruct<'_, '_>) {
        d.field("application_name", &self.application_name)
            .field("tags", &self.tags)
            .field("sample_labels", &self.sample_labels)
            .field("sample_rate", &self.sample_rate)
            .field("upload_interval", &self.upload_interval)
            .field("auth", &self.auth)
            // Sent as the X-Scope-OrgID header: a header value, redacted like the others.
            .field("tenant_id", &self.tenant_id.as_ref().map(|_| REDACTED))
            .field("headers", &HeaderNames(&self.headers))
            .field("request_timeout", &self.request_timeout)
            .field("protocol", &self.protocol)
            .field("signal", &self.signal)
            .field("signal_on_alt_stack", &self.signal_on_alt_stack)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("cpu", &self.cpu)
            .field("memory", &self.memory)
            .field("alloc_sample_bytes", &self.alloc_sample_bytes)
            .field("alloc_seed", &self.alloc_seed);
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Config");
        d.field("destination", &self.destination);
        self.debug_settings(&mut d);
        d.finish()
    }
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("AgentBuilder");
        d.field("server_address", &self.server_address.as_deref().map(redact_url))
            .field("export_dir", &self.export_dir);
        self.config.debug_settings(&mut d);
        d.field("env_error", &self.env_error).finish()
    }
}

/// The environment variables every binding understands.
pub mod env {
    /// Server base URL; without it profiles go to the export folder.
    pub const SERVER_ADDRESS: &str = "PYROSCOPE_SERVER_ADDRESS";
    /// Application name.
    pub const APPLICATION_NAME: &str = "PYROSCOPE_APPLICATION_NAME";
    /// Static tags, `k=v,k2=v2`.
    pub const TAGS: &str = "PYROSCOPE_TAGS";
    /// Samples per second.
    pub const SAMPLE_RATE: &str = "PYROSCOPE_SAMPLE_RATE";
    /// Seconds per window, fractions allowed.
    pub const UPLOAD_INTERVAL: &str = "PYROSCOPE_UPLOAD_INTERVAL";
    /// Bearer token.
    pub const AUTH_TOKEN: &str = "PYROSCOPE_AUTH_TOKEN";
    /// Basic auth user.
    pub const BASIC_AUTH_USER: &str = "PYROSCOPE_BASIC_AUTH_USER";
    /// Basic auth password.
    pub const BASIC_AUTH_PASSWORD: &str = "PYROSCOPE_BASIC_AUTH_PASSWORD";
    /// `X-Scope-OrgID`.
    pub const TENANT_ID: &str = "PYROSCOPE_TENANT_ID";
    /// Folder of the embedded default (default `./profiles`).
    pub const EXPORT_DIR: &str = "PYROSCOPE_EXPORT_DIR";
    /// Mean bytes between allocation samples (default 524288).
    pub const ALLOC_SAMPLE_BYTES: &str = "PYROSCOPE_ALLOC_SAMPLE_BYTES";
    /// `false` turns memory profiles off.
    pub const MEMORY: &str = "PYROSCOPE_MEMORY";
    /// `false` turns CPU profiles off.
    pub const CPU: &str = "PYROSCOPE_CPU";
}

/// Checks an application name: non-empty, `[A-Za-z0-9_.\-/]`.
pub fn validate_application_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::EmptyApplicationName);
    }
    if name.len() > 2048 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b)) {
        return Err(Error::InvalidApplicationName { name: name.to_owned() });
    }
    Ok(())
}

/// Parses and checks a server address: absolute `http`/`https` URL with a host, no query.
pub fn parse_server_address(s: &str) -> Result<url::Url> {
    let url =
        url::Url::parse(s).map_err(|e| Error::InvalidServerAddress { url: redact_url(s), reason: e.to_string() })?;
    check_server_url(&url)?;
    Ok(url)
}

fn check_server_url(url: &url::Url) -> Result<()> {
    let bad = |reason: &str| Error::InvalidServerAddress { url: redact_url(url.as_str()), reason: reason.to_owned() };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(bad("scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("put credentials in basic auth settings, not in the URL"));
    }
    Ok(())
}

/// Checks a static tag.
pub fn validate_tag(name: &str, value: &str) -> Result<()> {
    validate_name(name)?;
    validate_tag_value(name, value)
}

/// Parses `k=v,k2=v2` (spaces around items allowed, empty string = no tags).
pub fn parse_tags(s: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| Error::InvalidTagString { input: s.to_owned() })?;
        let (k, v) = (k.trim(), v.trim());
        validate_tag(k, v)?;
        out.push((k.to_owned(), v.to_owned()));
    }
    Ok(out)
}

/// Parses seconds with an optional fraction (`10`, `0.5`).
pub fn parse_seconds(var: &'static str, s: &str) -> Result<Duration> {
    let secs: f64 = s.trim().parse().map_err(|_| Error::InvalidEnv {
        var,
        value: s.to_owned(),
        reason: "not a number of seconds".into(),
    })?;
    if !secs.is_finite() || secs <= 0.0 || secs > 3600.0 {
        return Err(Error::InvalidEnv { var, value: s.to_owned(), reason: "must be above 0 and at most 3600".into() });
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert!(parse_server_address("http://localhost:4040").is_ok());
        assert!(parse_server_address("https://profiles-prod.grafana.net/").is_ok());
        for bad in ["", "localhost:4040", "ftp://x", "http://", "http://u:p@h", "http://h?x=1", "not a url"] {
            assert!(matches!(parse_server_address(bad), Err(Error::InvalidServerAddress { .. })), "{bad}");
        }
    }

    #[test]
    fn tags_and_names() {
        assert_eq!(
            parse_tags(" region=eu-north, az=1 ").unwrap(),
            vec![("region".into(), "eu-north".into()), ("az".into(), "1".into())]
        );
        assert_eq!(parse_tags("").unwrap(), vec![]);
        assert!(matches!(parse_tags("region"), Err(Error::InvalidTagString { .. })));
        assert!(matches!(parse_tags("re gion=x"), Err(Error::InvalidLabelName { .. })));
        assert!(matches!(validate_application_name(""), Err(Error::EmptyApplicationName)));
        assert!(matches!(validate_application_name("my app"), Err(Error::InvalidApplicationName { .. })));
        assert!(validate_application_name("ride-share/api.v2").is_ok());
        assert_eq!(parse_seconds("X", "0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_seconds("X", "0").is_err());
        assert!(parse_seconds("X", "abc").is_err());
    }

    #[test]
    fn settings_from_a_lookup() {
        let vars: BTreeMap<&str, &str> = [
            (env::APPLICATION_NAME, "env-app"),
            (env::SERVER_ADDRESS, "http://127.0.0.1:4040"),
            (env::TAGS, "region=eu-north"),
            (env::SAMPLE_RATE, " 250 "),
            (env::MEMORY, "off"),
        ]
        .into();
        let c = AgentBuilder::from_vars(|k| vars.get(k).map(|v| v.to_string())).build().unwrap();
        assert_eq!((c.application_name.as_str(), c.sample_rate, c.memory), ("env-app", 250, false));
        let bad = AgentBuilder::from_vars(|k| (k == env::SAMPLE_RATE).then(|| "fast".to_string())).build();
        assert!(matches!(bad, Err(Error::InvalidEnv { var: env::SAMPLE_RATE, .. })), "{bad:?}");
    }

    #[test]
    fn urls_lose_user_info_and_query() {
        for (input, shown) in [
            ("http://u:pw@host:4040/x", "http://<redacted>@host:4040/x"),
            ("https://pw@host", "https://<redacted>@host"),
            ("u:pw@host:4040", "<redacted>@host:4040"),
            ("http://h:1/p?token=pw#f", "http://h:1/p?<redacted>#f"),
            ("http://a b:pw@h", "http://<redacted>@h"),
            ("http://localhost:4040", "http://localhost:4040"),
            // Unencoded `#`, `/`, `?` in a password: everything up to the last `@` goes.
            ("http://user:pa#ss@host", "http://<redacted>@host"),
            ("http://user:p/w@host", "http://<redacted>@host"),
            ("http://u:a?b@host", "http://<redacted>@host"),
        ] {
            assert_eq!(redact_url(input), shown, "{input}");
        }
    }
}
