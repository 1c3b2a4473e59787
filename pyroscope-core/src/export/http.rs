//! Pyroscope over HTTP: the Connect push API (default) or the legacy `/ingest`.

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use prost::Message;

use super::{ExportError, Exporter, Upload};
use crate::config::{Auth, Config, Protocol};
use crate::{FailureKind, Transport};

/// The push API messages (`push.v1`, `types.v1`).
#[allow(missing_docs)]
pub mod push {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub series: Vec<RawProfileSeries>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawProfileSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<LabelPair>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<RawSample>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawSample {
        #[prost(bytes = "vec", tag = "1")]
        pub raw_profile: Vec<u8>,
        #[prost(string, tag = "2")]
        pub id: String,
    }
}

/// URL, body and content headers of one upload.
type Request = (String, Vec<u8>, Vec<(&'static str, String)>);

pub(crate) const SPY_NAME: &str = "pyroscope-core";
const USER_AGENT: &str = concat!("pyroscope-core/", env!("CARGO_PKG_VERSION"));

pub(crate) struct HttpExporter {
    agent: ureq::Agent,
    base: String,
    protocol: Protocol,
    headers: Vec<(String, String)>,
    /// Credentials and header values, cut out of every message (a server may echo them).
    secrets: Vec<String>,
}

impl HttpExporter {
    pub fn new(config: &Config, base: &url::Url) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.request_timeout))
            .timeout_connect(Some(config.request_timeout.min(Duration::from_secs(5))))
            .http_status_as_error(false)
            // Redirects would strip Authorization; treat them as errors like pyroscope-go.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(USER_AGENT)
            .build()
            .into();
        let mut headers = Vec::new();
        match &config.auth {
            Auth::None => {}
            Auth::Basic { user, password } => {
                let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                headers.push(("Authorization".to_owned(), format!("Basic {token}")));
            }
            Auth::Bearer(token) => headers.push(("Authorization".to_owned(), format!("Bearer {token}"))),
        }
        if let Some(t) = &config.tenant_id {
            headers.push(("X-Scope-OrgID".to_owned(), t.clone()));
        }
        // Extra headers are applied last and may override the ones above.
        for (k, v) in &config.headers {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
            headers.push((k.clone(), v.clone()));
        }
        let mut secrets: Vec<String> = headers.iter().map(|(_, v)| v.clone()).collect();
        match &config.auth {
            Auth::Basic { password, .. } => secrets.push(password.clone()),
            Auth::Bearer(token) => secrets.push(token.clone()),
            Auth::None => {}
        }
        if let Some(token) = headers.iter().find_map(|(k, v)| v.strip_prefix("Basic ").filter(|_| k == "Authorization"))
        {
            secrets.push(token.to_owned());
        }
        // Every non-empty secret is cut, however short: a short one also cuts ordinary
        // letters out of messages, which is the lesser harm.
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a secret containing another is cut whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        HttpExporter {
            agent,
            base: base.as_str().trim_end_matches('/').to_owned(),
            protocol: config.protocol,
            headers,
            secrets,
        }
    }

    /// `message` with every secret replaced.
    fn scrub(&self, mut message: String) -> String {
        for secret in &self.secrets {
            if message.contains(secret.as_str()) {
                message = message.replace(secret.as_str(), "<redacted>");
            }
        }
        message
    }

    /// The labels of the upload's series, per PROTOCOL.md §3.3.
    pub fn series_labels(upload: &Upload) -> Vec<push::LabelPair> {
        let pair = |n: &str, v: &str| push::LabelPair { name: n.to_owned(), value: v.to_owned() };
        let mut labels = vec![
            pair("__name__", upload.profile_name),
            pair("service_name", &upload.application_name),
            pair("pyroscope_spy", SPY_NAME),
            pair("otel.scope.name", "com.grafana.pyroscope/pyroscope-core"),
            pair("otel.scope.version", env!("CARGO_PKG_VERSION")),
        ];
        if upload.profile_name == "memory" {
            // Values are per-window deltas already: v1 servers must not diff them again.
            labels.push(pair("__delta__", "false"));
        }
        for (k, v) in upload.tags.iter() {
            labels.retain(|l| &l.name != k);
            labels.push(pair(k, v));
        }
        labels
    }

    fn request(&self, upload: &Upload) -> Result<Request, ExportError> {
        match self.protocol {
            Protocol::Push => {
                let req = push::PushRequest {
                    series: vec![push::RawProfileSeries {
                        labels: Self::series_labels(upload),
                        samples: vec![push::RawSample { raw_profile: upload.pprof.clone(), id: String::new() }],
                    }],
                };
                // Not compressed again: the profile in it is gzipped already, and the rest is a
                // few labels (a second compressor would cost its 300 KB on this thread).
                let headers = vec![("Content-Type", "application/proto".to_owned())];
                Ok((format!("{}/push.v1.PusherService/Push", self.base), req.encode_to_vec(), headers))
            }
            Protocol::Ingest => {
                let secs = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let mut name = format!("{}{{", upload.application_name);
                let tags: Vec<String> = upload.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                name.push_str(&tags.join(","));
                name.push('}');
                let mut url = url::Url::parse(&format!("{}/ingest", self.base)).map_err(|e| ExportError {
                    retryable: false,
                    kind: FailureKind::HttpRequest,
                    message: format!("bad ingest URL: {e}"),
                })?;
                url.query_pairs_mut()
                    .append_pair("name", &name)
                    .append_pair("from", &secs(upload.start).to_string())
                    .append_pair("until", &secs(upload.end).to_string())
                    .append_pair("format", "pprof")
                    .append_pair("spyName", SPY_NAME);
                Ok((
                    url.to_string(),
                    upload.pprof.clone(),
                    vec![("Content-Type", "application/octet-stream".to_owned())],
                ))
            }
        }
    }
}

/// Whether a failed status is worth retrying (PROTOCOL.md §3.5, §7): 408, 429 (unless the
/// body says the message is too large), 499 and 5xx.
pub(crate) fn retryable_status(status: u16, body: &str) -> bool {
    match status {
        408 | 499 => true,
        429 => !body.contains("larger than configured max"),
        s => s >= 500,
    }
}

impl Exporter for HttpExporter {
    fn export(&self, upload: &Upload) -> Result<(), ExportError> {
        self.send(upload).map_err(|e| ExportError { message: self.scrub(e.message), ..e })
    }
}

impl HttpExporter {
    fn send(&self, upload: &Upload) -> Result<(), ExportError> {
        let (url, body, fixed) = self.request(upload)?;
        let mut req = self.agent.post(&url);
        for (k, v) in &fixed {
            req = req.header(*k, v);
        }
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        match req.send(&body[..]) {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                if (200..300).contains(&status) {
                    return Ok(());
                }
                let text = resp.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
                Err(ExportError {
                    retryable: retryable_status(status, &text),
                    kind: FailureKind::HttpStatus(status),
                    message: format!(
                        "{} answered {status}: {}",
                        redact(&url),
                        text.chars().take(200).collect::<String>()
                    ),
                })
            }
            Err(e) => Err(ExportError {
                retryable: true,
                kind: FailureKind::HttpTransport(transport_failure(&e)),
                message: format!("sending to {}: {e}", redact(&url)),
            }),
        }
    }
}

/// The class of a request that got no HTTP answer.
fn transport_failure(e: &ureq::Error) -> Transport {
    match e {
        ureq::Error::Timeout(_) | ureq::Error::BodyStalled => Transport::Timeout,
        ureq::Error::Io(_) | ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => Transport::Connect,
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) | ureq::Error::TlsRequired => Transport::Tls,
        ureq::Error::Protocol(_) | ureq::Error::Http(_) | ureq::Error::LargeResponseHeader(..) => Transport::Protocol,
        _ => Transport::Other,
    }
}

/// The URL without its query (tags; kept short) and without user info.
fn redact(url: &str) -> String {
    crate::config::redact_url(url.split('?').next().unwrap_or(url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Destination;

    #[test]
    fn messages_never_carry_secrets() {
        let config = crate::AgentBuilder::new("a")
            .server_address("http://127.0.0.1:1")
            .basic_auth("user", "pass-word-1")
            .header("X-Api-Key", "key-value-2")
            .build()
            .unwrap();
        let Destination::Server(url) = &config.destination else { unreachable!() };
        let ex = HttpExporter::new(&config, url);
        let basic = base64::engine::general_purpose::STANDARD.encode("user:pass-word-1");
        let echoed = format!("answered 401: got {basic} and pass-word-1 and key-value-2");
        let scrubbed = ex.scrub(echoed);
        for secret in ["pass-word-1", "key-value-2", basic.as_str()] {
            assert!(!scrubbed.contains(secret), "{scrubbed}");
        }
        assert!(scrubbed.starts_with("answered 401: got <redacted>"), "{scrubbed}");

        let short = crate::AgentBuilder::new("a")
            .server_address("http://127.0.0.1:1")
            .basic_auth("user", "p7")
            .tenant_id("t9")
            .build()
            .unwrap();
        let Destination::Server(url) = &short.destination else { unreachable!() };
        let scrubbed = HttpExporter::new(&short, url).scrub("answered 401: bad password p7 for t9".into());
        assert_eq!(scrubbed, "answered 401: bad password <redacted> for <redacted>");
    }

    #[test]
    fn retry_policy() {
        for s in [408, 429, 499, 500, 502, 503, 504] {
            assert!(retryable_status(s, ""), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!retryable_status(s, ""), "{s}");
        }
        assert!(!retryable_status(
            429,
            r#"{"code":"resource_exhausted","message":"message size 9 is larger than configured max 4"}"#
        ));
    }
}
