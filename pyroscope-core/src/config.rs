//! Settings, their validation, and the `PYROSCOPE_*` environment variables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::labels::{validate_name, validate_tag_value};

/// Highest supported sample rate. CPU-time timers are tick-bound (often 250 Hz), so higher
/// rates mostly add overrun weight, not resolution.
pub const MAX_SAMPLE_RATE: u32 = 10_000;

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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A Pyroscope server (base URL, without the endpoint path).
    Server(url::Url),
    /// The embedded default: gzipped pprof files in a folder.
    Directory(PathBuf),
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

/// A validated configuration. Build it with [`crate::AgentBuilder`].
#[derive(Clone, Debug)]
pub struct Config {
    /// Application (service) name.
    pub application_name: String,
    /// Where profiles go.
    pub destination: Destination,
    /// Static tags, on the series.
    pub tags: BTreeMap<String, String>,
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
    /// Memory profiles (when a sampling allocator or the preload library is in place).
    pub memory: bool,
    /// Mean bytes between allocation samples.
    pub alloc_sample_bytes: u64,
    /// Seed of the allocation sampling RNG (fixed for reproducible tests).
    pub alloc_seed: Option<u64>,
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
    let bad = |reason: &str| Error::InvalidServerAddress { url: s.to_owned(), reason: reason.to_owned() };
    let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
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
    Ok(url)
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
}
