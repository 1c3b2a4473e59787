//! A loopback Pyroscope receiver for tests.
//!
//! Implements `POST /push.v1.PusherService/Push` and `POST /ingest` strictly per PROTOCOL.md:
//! it rejects what the real server rejects (missing `__name__`, invalid label names, bad
//! service names, malformed pprof, `prev_profile`) with the server's status codes and Connect
//! JSON error bodies, and records every accepted profile. Fault modes stand in for a server
//! that is down, slow, overloaded or broken. It listens on 127.0.0.1 only.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prost::Message;
use pyroscope_core::proto::Profile;
use pyroscope_core::push::PushRequest;

/// How the receiver answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Validate strictly and accept what is valid.
    Normal,
    /// Answer every request with this status (and a Connect error body).
    Status(u16, &'static str),
    /// Answer this status to the first N requests, then behave normally.
    FailFirst(u64, u16),
    /// Wait this long before answering normally.
    Slow(Duration),
    /// Answer with bytes that are not HTTP.
    Garbage,
}

/// One accepted profile.
#[derive(Clone, Debug)]
pub struct Received {
    /// `push` or `ingest`.
    pub endpoint: &'static str,
    /// Series labels (push) or the parsed `name` labels plus `__name__`-free app (ingest).
    pub labels: BTreeMap<String, String>,
    /// Request headers, lower-cased names.
    pub headers: BTreeMap<String, String>,
    /// Query parameters (ingest).
    pub query: BTreeMap<String, String>,
    /// The decoded pprof.
    pub profile: Profile,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    state: Arc<State>,
}

struct State {
    mode: Mutex<Mode>,
    received: Mutex<Vec<Received>>,
    requests: AtomicU64,
    rejected: Mutex<Vec<(u16, String)>>,
    stop: AtomicBool,
}

impl Receiver {
    /// Starts on an ephemeral 127.0.0.1 port.
    pub fn start(mode: Mode) -> Receiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let addr = server.server_addr().to_ip().expect("ip listener");
        let state = Arc::new(State {
            mode: Mutex::new(mode),
            received: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            rejected: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let (srv, st) = (server.clone(), state.clone());
        let thread = std::thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match srv.recv_timeout(Duration::from_millis(50)) {
                    Ok(Some(req)) => {
                        let st = st.clone();
                        std::thread::spawn(move || handle(&st, req));
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        });
        Receiver { addr, server, thread: Some(thread), state }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how later requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Profiles accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Requests seen so far (accepted or not).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// (status, message) of each rejected request.
    pub fn rejected(&self) -> Vec<(u16, String)> {
        self.state.rejected.lock().unwrap().clone()
    }

    /// Validates a request as the server would, without a network round trip:
    /// returns the accepted profiles or (status, message).
    pub fn check(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<Received>, (u16, String)> {
        validate(method, url, &lower_headers(headers), body, true)
    }

    /// As [`check`](Self::check) for a recorded request replayed later: every rule except the
    /// server's ingestion time window (1 h back), which a recording outlives.
    pub fn check_replay(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Vec<Received>, (u16, String)> {
        validate(method, url, &lower_headers(headers), body, false)
    }
}

fn lower_headers(headers: &[(&str, &str)]) -> BTreeMap<String, String> {
    headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.to_string())).collect()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connect_error(status: u16, message: &str) -> String {
    let code = match status {
        400 | 422 => "invalid_argument",
        401 => "unauthenticated",
        429 => "resource_exhausted",
        503 => "unavailable",
        _ => "internal",
    };
    format!(r#"{{"code":"{code}","message":"{}"}}"#, message.replace('"', "'"))
}

fn handle(st: &State, mut req: tiny_http::Request) {
    let n = st.requests.fetch_add(1, Ordering::SeqCst);
    let mode = st.mode.lock().unwrap().clone();
    let mut body = Vec::new();
    let _ = req.as_reader().take(64 << 20).read_to_end(&mut body);
    let respond = |req: tiny_http::Request, status: u16, text: String| {
        let resp = tiny_http::Response::from_string(text).with_status_code(status);
        let _ = req.respond(resp);
    };
    match mode {
        Mode::Status(code, msg) => return respond(req, code, connect_error(code, msg)),
        Mode::FailFirst(k, code) if n < k => return respond(req, code, connect_error(code, "try again")),
        Mode::Slow(d) => std::thread::sleep(d),
        Mode::Garbage => {
            let mut w = req.into_writer();
            let _ = w.write_all(b"\x00\x01garbage, not http\r\n\r\n");
            return;
        }
        _ => {}
    }
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|h| (h.field.as_str().as_str().to_ascii_lowercase(), h.value.as_str().to_owned()))
        .collect();
    let url = format!("http://127.0.0.1{}", req.url());
    match validate(req.method().as_str(), &url, &headers, &body, true) {
        Ok(profiles) => {
            st.received.lock().unwrap().extend(profiles);
            respond(req, 200, String::new());
        }
        Err((status, msg)) => {
            st.rejected.lock().unwrap().push((status, msg.clone()));
            respond(req, status, connect_error(status, &msg));
        }
    }
}

use std::io::Write;

fn validate(
    method: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    window: bool,
) -> Result<Vec<Received>, (u16, String)> {
    let url = url::Url::parse(url).map_err(|e| (400, format!("bad url: {e}")))?;
    let path = url.path().trim_start_matches("/pyroscope");
    if method != "POST" {
        return Err((405, "method not allowed".into()));
    }
    match path {
        "/push.v1.PusherService/Push" => push(headers, body, window),
        "/ingest" => ingest(&url, headers, body),
        _ => Err((404, format!("no route {path}"))),
    }
}

fn gunzip_if(body: &[u8]) -> Result<Vec<u8>, String> {
    if body.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(body).read_to_end(&mut out).map_err(|e| e.to_string())?;
        Ok(out)
    } else {
        Ok(body.to_vec())
    }
}

fn push(headers: &BTreeMap<String, String>, body: &[u8], window: bool) -> Result<Vec<Received>, (u16, String)> {
    let ct = headers.get("content-type").map(String::as_str).unwrap_or("");
    if ct != "application/proto" {
        return Err((415, format!("unsupported content type {ct:?} (this receiver speaks application/proto)")));
    }
    let raw = match headers.get("content-encoding").map(String::as_str) {
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body).read_to_end(&mut out).map_err(|e| (400, format!("bad gzip: {e}")))?;
            out
        }
        None | Some("identity") => body.to_vec(),
        Some(other) => return Err((415, format!("unsupported encoding {other}"))),
    };
    let req = PushRequest::decode(&raw[..]).map_err(|e| (400, format!("bad PushRequest: {e}")))?;
    if req.series.is_empty() || req.series.iter().all(|s| s.samples.is_empty()) {
        return Err((400, "no profiles received".into()));
    }
    let mut out = Vec::new();
    for series in &req.series {
        let mut labels = BTreeMap::new();
        for l in &series.labels {
            if l.name.is_empty() {
                return Err((400, "invalid label name".into()));
            }
            if l.name.len() > 1024 || l.value.len() > 2048 {
                return Err((400, format!("label {} too long", l.name)));
            }
            if labels.insert(l.name.clone(), l.value.clone()).is_some() {
                return Err((400, format!("duplicate_label_names: {}", l.name)));
            }
        }
        if labels.is_empty() {
            return Err((400, "missing_labels".into()));
        }
        if labels.get("__name__").is_none_or(String::is_empty) {
            return Err((400, "invalid metric name".into()));
        }
        if labels.len() > 30 {
            return Err((400, format!("max label names per series exceeded: {}", labels.len())));
        }
        for s in &series.samples {
            let profile =
                pyroscope_core::decode_pprof(&s.raw_profile).map_err(|e| (400, format!("malformed_profile: {e}")))?;
            if window {
                check_window(&profile).map_err(|m| (400, m))?;
            }
            out.push(Received {
                endpoint: "push",
                labels: labels.clone(),
                headers: headers.clone(),
                query: BTreeMap::new(),
                profile,
            });
        }
    }
    Ok(out)
}

fn check_window(p: &Profile) -> Result<(), String> {
    if p.sample.len() > 16_000 {
        return Err("too many samples".into());
    }
    if p.time_nanos != 0 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        let hour = 3_600_000_000_000i64;
        if p.time_nanos < now - hour || p.time_nanos > now + hour / 6 {
            return Err("profile outside ingestion window".into());
        }
    }
    Ok(())
}

/// Parses `app{k=v,...}` per the server's state machine (PROTOCOL.md §2.2).
pub fn parse_name(name: &str) -> Result<(String, BTreeMap<String, String>), String> {
    let (app, rest) = match name.find('{') {
        Some(i) => (name[..i].trim(), &name[i + 1..]),
        None => (name.trim(), "}"),
    };
    if app.is_empty() {
        return Err("service name is required".into());
    }
    if !app.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b)) {
        return Err("invalid service name".into());
    }
    let inner = rest.strip_suffix('}').ok_or("missing closing brace")?;
    let mut labels = BTreeMap::new();
    for item in inner.split(',').filter(|s| !s.trim().is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            continue;
        }; // dangling key: dropped
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.') {
            return Err(format!("invalid label name {k:?}"));
        }
        if k.starts_with("__") {
            continue;
        }
        labels.insert(k.to_owned(), v.to_owned());
    }
    Ok((app.to_owned(), labels))
}

fn ingest(url: &url::Url, headers: &BTreeMap<String, String>, body: &[u8]) -> Result<Vec<Received>, (u16, String)> {
    let query: BTreeMap<String, String> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let name = query.get("name").ok_or((400, "service name is required".to_string()))?;
    let (app, mut labels) = parse_name(name).map_err(|m| (400, m))?;
    let ct = headers.get("content-type").map(String::as_str).unwrap_or("");
    let profile_bytes = if query.get("format").map(String::as_str) == Some("pprof") {
        body.to_vec()
    } else if ct.contains("multipart/form-data") {
        let parts = multipart(ct, body).map_err(|m| (422, m))?;
        if parts.iter().any(|(n, d)| n == "prev_profile" && !d.is_empty()) {
            return Err((422, "unsupported client version".into()));
        }
        match parts.into_iter().find(|(n, _)| n == "profile") {
            Some((_, d)) => d,
            None => return Err((422, "no profile part".into())),
        }
    } else {
        return Err((422, "this receiver only takes pprof bodies (format=pprof or multipart)".into()));
    };
    if profile_bytes.is_empty() {
        return Ok(Vec::new());
    }
    gunzip_if(&profile_bytes).map_err(|e| (422, e))?;
    let profile = pyroscope_core::decode_pprof(&profile_bytes).map_err(|e| (422, e.to_string()))?;
    labels.entry("service_name".into()).or_insert(app);
    let spy = query.get("spyName").cloned().unwrap_or_else(|| "unknown".into());
    labels.insert("pyroscope_spy".into(), spy);
    Ok(vec![Received { endpoint: "ingest", labels, headers: headers.clone(), query, profile }])
}

/// Minimal multipart/form-data reader: (field name, bytes) per part.
fn multipart(ct: &str, body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let boundary = ct.split("boundary=").nth(1).ok_or("no boundary")?.trim_matches('"');
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(i) = find(rest, delim.as_bytes()) {
        rest = &rest[i + delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").ok_or("bad part")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let data_start = head_end + 4;
        let next = find(&rest[data_start..], delim.as_bytes()).ok_or("unterminated part")?;
        let data =
            rest[data_start..data_start + next].strip_suffix(b"\r\n").unwrap_or(&rest[data_start..data_start + next]);
        let name = head.split("name=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("").to_owned();
        parts.push((name, data.to_vec()));
        rest = &rest[data_start..];
    }
    Ok(parts)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
