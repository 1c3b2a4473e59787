//! `pyroscope-receiver`: the strict loopback receiver as a program, for tests in other languages.
//!
//! Prints its URL (`http://127.0.0.1:PORT`) on the first line of stdout, then one JSON object
//! per line (to stdout, or appended to `--out FILE`):
//! - per accepted profile: `{"endpoint", "labels" (series), "sample_types" [[type, unit]],
//!   "period_type", "period", "time_nanos", "duration_nanos", "samples": [{"frames": [{"function",
//!   "file", "line"}] leaf first, "labels": {..}, "values": [..]}], "headers": {"authorization",
//!   "x-scope-orgid"} (those sent)}`;
//! - per refused request: `{"rejected": status, "message": ...}`.
//!
//! `--mode status:CODE | slow:MS | garbage` answers every request that way. Stops at end of
//! stdin or on SIGTERM.
//!
//! `--decode FILE` prints one pprof file (gzipped or not) as a profile line with endpoint
//! `"file"`, or exits 1 with the decoding error (pull-mode tests: what an HTTP handler served).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use pyroscope_core::proto::Profile;
use pyroscope_receiver::{Mode, Received, Receiver};
use serde_json::{json, Value};

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s.split_once(':') {
        Some(("status", code)) => {
            let code: u16 = code.parse().map_err(|_| format!("bad status {code:?}"))?;
            Ok(Mode::Status(code, "receiver --mode status"))
        }
        Some(("slow", ms)) => Ok(Mode::Slow(Duration::from_millis(ms.parse().map_err(|_| format!("bad ms {ms:?}"))?))),
        None if s == "garbage" => Ok(Mode::Garbage),
        None if s == "normal" => Ok(Mode::Normal),
        _ => Err(format!("unknown mode {s:?}: status:CODE, slow:MS, garbage or normal")),
    }
}

fn string(p: &Profile, i: i64) -> String {
    usize::try_from(i).ok().and_then(|i| p.string_table.get(i)).cloned().unwrap_or_default()
}

/// The request headers that carry who sends: the credentials and the tenant.
const IDENTITY_HEADERS: [&str; 2] = ["authorization", "x-scope-orgid"];

fn profile_json(r: &Received) -> Value {
    let mut v = file_json(r.endpoint, &r.labels, &r.profile);
    let headers: BTreeMap<&str, &String> =
        IDENTITY_HEADERS.iter().filter_map(|&h| r.headers.get(h).map(|v| (h, v))).collect();
    v["headers"] = json!(headers);
    v
}

fn file_json(endpoint: &str, labels: &BTreeMap<String, String>, p: &Profile) -> Value {
    let functions: BTreeMap<u64, (String, String)> =
        p.function.iter().map(|f| (f.id, (string(p, f.name), string(p, f.filename)))).collect();
    let locations: BTreeMap<u64, Vec<Value>> = p
        .location
        .iter()
        .map(|l| {
            // pprof lists a location's inlined frames innermost first, as samples list locations.
            let frames = l
                .line
                .iter()
                .map(|line| {
                    let (function, file) = functions.get(&line.function_id).cloned().unwrap_or_default();
                    json!({"function": function, "file": file, "line": line.line})
                })
                .collect();
            (l.id, frames)
        })
        .collect();
    let samples: Vec<Value> = p
        .sample
        .iter()
        .map(|s| {
            let frames: Vec<Value> =
                s.location_id.iter().flat_map(|id| locations.get(id).cloned().unwrap_or_default()).collect();
            let labels: BTreeMap<String, Value> = s
                .label
                .iter()
                .map(|l| {
                    let v = if l.str != 0 { json!(string(p, l.str)) } else { json!(l.num) };
                    (string(p, l.key), v)
                })
                .collect();
            json!({"frames": frames, "labels": labels, "values": s.value})
        })
        .collect();
    let vt = |t: &pyroscope_core::proto::ValueType| json!([string(p, t.r#type), string(p, t.unit)]);
    json!({
        "endpoint": endpoint,
        "labels": labels,
        "sample_types": p.sample_type.iter().map(vt).collect::<Vec<_>>(),
        "period_type": p.period_type.as_ref().map(vt),
        "period": p.period,
        "time_nanos": p.time_nanos,
        "duration_nanos": p.duration_nanos,
        "samples": samples,
    })
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut mode, mut out_path) = (Mode::Normal, None);
    while let Some(a) = args.next() {
        let value = args.next();
        let parsed = match (a.as_str(), value) {
            ("--mode", Some(v)) => parse_mode(&v).map(|m| mode = m),
            ("--decode", Some(v)) => {
                let decoded = std::fs::read(&v)
                    .map_err(|e| e.to_string())
                    .and_then(|b| pyroscope_core::decode_pprof(&b).map_err(|e| e.to_string()));
                match decoded {
                    Ok(p) => println!("{}", file_json("file", &BTreeMap::new(), &p)),
                    Err(e) => {
                        eprintln!("--decode {v}: {e}");
                        std::process::exit(1);
                    }
                }
                std::process::exit(0);
            }
            ("--out", Some(v)) => {
                out_path = Some(v);
                Ok(())
            }
            _ => Err(format!(
                "usage: pyroscope-receiver [--mode status:CODE|slow:MS|garbage] [--out FILE] | --decode FILE ({a:?})"
            )),
        };
        if let Err(e) = parsed {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
    let receiver = Receiver::start(mode);
    let mut out: Box<dyn Write> = match &out_path {
        Some(path) => match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("--out {path}: {e}");
                std::process::exit(2);
            }
        },
        None => Box::new(std::io::stdout()),
    };
    println!("{}", receiver.url());
    let _ = std::io::stdout().flush();

    // End of stdin stops the receiver (SIGTERM's default action stops it too: every line is
    // written and flushed whole, so a reader never sees half of one).
    let (eof_tx, eof_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = eof_tx.send(());
    });
    let (mut printed, mut rejected) = (0usize, 0usize);
    loop {
        let stop =
            !matches!(eof_rx.recv_timeout(Duration::from_millis(20)), Err(std::sync::mpsc::RecvTimeoutError::Timeout));
        let received = receiver.received();
        for r in &received[printed.min(received.len())..] {
            let _ = writeln!(out, "{}", profile_json(r));
        }
        printed = received.len();
        let refused = receiver.rejected();
        for (status, message) in &refused[rejected.min(refused.len())..] {
            let _ = writeln!(out, "{}", json!({"rejected": status, "message": message}));
        }
        rejected = refused.len();
        let _ = out.flush();
        if stop {
            break;
        }
    }
}
