//! Delivery to a Pyroscope server (the loopback receiver): both endpoints, faults, shutdown.

use std::time::{Duration, Instant};

use pyroscope_core::{Agent, AgentBuilder, FrameId, LabelSet, Protocol};
use pyroscope_receiver::{Mode, Receiver};

use crate::util::*;

#[inline(never)]
fn serve_request(d: Duration) -> u64 {
    std::hint::black_box(spin_cpu(d))
}

/// Runs `ms` of CPU under `vehicle=scooter`; returns the thread's clocks over it.
fn run_labelled_work(ms: u64) -> Clock {
    let t = Clock::now();
    pyroscope_core::tag_wrapper(&[("vehicle", "scooter")], || serve_request(Duration::from_millis(ms)));
    t.elapsed()
}

/// Runs `ms` of labelled CPU work and adds one sample of its own: the window holds something
/// even when a busy machine delayed or lost the few timer expirations of so short a stretch
/// (the tests that use it are about delivery, not sampling).
fn work_for_the_window(agent: &Agent, ms: u64) {
    run_labelled_work(ms);
    let frame = FrameId::new("window_marker", "export.rs", 1).unwrap();
    agent.add_cpu_sample(&[frame], &LabelSet::empty(), 1);
}

#[test]
fn push_api_carries_series_labels_auth_and_sample_labels() {
    let _g = crate::agent_lock();
    let rx = Receiver::start(Mode::Normal);
    let agent = AgentBuilder::new("push-app")
        .server_address(rx.url())
        .tag("region", "ap-south")
        .basic_auth("123", "secret-token")
        .tenant_id("team-a")
        .header("X-Extra", "1")
        .sample_label("pid", "4242")
        .alloc_sample_bytes(4096)
        .start()
        .unwrap();
    let truth = run_labelled_work(300);
    // More than any interval left over from before the agent (mean 512 KiB) plus a few samples.
    let kept: Vec<Vec<u8>> = (0..1024).map(|i| vec![i as u8; 8192]).collect();
    let stats = agent.stop();
    drop(kept);
    // One CPU and one memory profile per window, however many windows a busy machine took.
    let got = rx.received();
    assert!(stats.uploads_sent >= 2 && stats.uploads_dropped == 0, "cpu and memory: {stats:?}");
    assert_eq!(got.len() as u64, stats.uploads_sent, "rejected: {:?}", rx.rejected());
    let mem: Vec<_> = got.iter().filter(|r| r.labels["__name__"] == "memory").collect();
    let cpu: Vec<_> = got.iter().filter(|r| r.labels["__name__"] == "process_cpu").collect();
    assert!(!mem.is_empty() && !cpu.is_empty(), "{:?}", got.iter().map(|r| &r.labels).collect::<Vec<_>>());
    for r in mem {
        assert_eq!(r.labels.get("__delta__").map(String::as_str), Some("false"), "memory values are per-window deltas");
        assert_eq!(r.labels["region"], "ap-south");
    }
    let mut flat = Vec::new();
    for r in cpu {
        assert_eq!(r.endpoint, "push");
        assert_eq!(r.labels["service_name"], "push-app");
        assert_eq!(r.labels["region"], "ap-south");
        assert!(!r.labels.contains_key("__delta__"), "CPU series are not memory series");
        assert_eq!(r.headers["authorization"], "Basic MTIzOnNlY3JldC10b2tlbg==");
        assert_eq!(r.headers["x-scope-orgid"], "team-a");
        assert_eq!(r.headers["x-extra"], "1");
        assert!(!r.headers.contains_key("content-encoding"), "the pprof inside is gzipped, the request is not");
        flat.extend(flatten(&r.profile));
    }
    let in_fn: Vec<_> = flat.iter().filter(|f| find(&f.stack, "serve_request").is_some()).collect();
    // 300 ms at 100 Hz: about 30 samples.
    check_cpu("serve_request", in_fn.iter().map(|f| f.values[1]).sum(), truth, Duration::from_millis(10), 0.67, 1.1);
    assert!(in_fn.iter().all(|f| f.labels.get("vehicle").map(String::as_str) == Some("scooter")));
    assert!(flat.iter().all(|f| !f.labels.contains_key("region")), "static tags go on the series, not samples");
    assert!(
        flat.iter().all(|f| f.labels.get("pid").map(String::as_str) == Some("4242")),
        "sample labels on every sample"
    );
}

#[test]
fn ingest_endpoint_gets_name_with_tags() {
    let _g = crate::agent_lock();
    let rx = Receiver::start(Mode::Normal);
    let agent = AgentBuilder::new("ingest-app")
        .memory(false)
        .server_address(rx.url())
        .protocol(Protocol::Ingest)
        .tag("region", "us-east")
        .auth_token("tok")
        .start()
        .unwrap();
    run_labelled_work(200);
    agent.stop();
    let got = rx.received();
    assert!(!got.is_empty() && rx.rejected().is_empty(), "rejected: {:?}", rx.rejected());
    for r in &got {
        assert_eq!(r.endpoint, "ingest");
        assert_eq!(r.query["name"], "ingest-app{region=us-east}");
        assert_eq!(r.query["format"], "pprof");
        assert_eq!(r.labels["service_name"], "ingest-app");
        assert_eq!(r.labels["region"], "us-east");
        assert_eq!(r.headers["authorization"], "Bearer tok");
        let from: u64 = r.query["from"].parse().unwrap();
        let until: u64 = r.query["until"].parse().unwrap();
        assert!(from <= until && until - from <= 11);
    }
}

#[test]
fn retries_503_then_delivers() {
    let _g = crate::agent_lock();
    let rx = Receiver::start(Mode::FailFirst(2, 503));
    let agent = AgentBuilder::new("retry-app")
        .memory(false)
        .server_address(rx.url())
        .shutdown_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    work_for_the_window(&agent, 100);
    let stats = agent.stop();
    // The first two requests fail, whichever window they carry; every window is delivered.
    assert_eq!(stats.upload_retries, 2, "{stats:?}");
    assert!(stats.uploads_sent >= 1 && stats.uploads_dropped == 0, "{stats:?}");
    assert_eq!(rx.requests(), stats.uploads_sent + 2, "{stats:?}");
    assert_eq!(rx.received().len() as u64, stats.uploads_sent);
}

#[test]
fn does_not_retry_400_or_oversize_429() {
    let _g = crate::agent_lock();
    let rx = Receiver::start(Mode::Status(400, "invalid_argument"));
    let agent = AgentBuilder::new("no-retry").memory(false).server_address(rx.url()).start().unwrap();
    work_for_the_window(&agent, 100);
    let stats = agent.stop();
    // One request per window, dropped at once.
    assert!(rx.requests() >= 1, "{stats:?}");
    assert_eq!((rx.requests(), stats.uploads_sent, stats.upload_retries), (stats.uploads_dropped, 0, 0), "{stats:?}");

    let rx = Receiver::start(Mode::Status(429, "message size 99 is larger than configured max 10"));
    let agent = AgentBuilder::new("no-retry").memory(false).server_address(rx.url()).start().unwrap();
    work_for_the_window(&agent, 100);
    let stats = agent.stop();
    assert!(rx.requests() >= 1, "{stats:?}");
    assert_eq!((rx.requests(), stats.upload_retries), (stats.uploads_dropped, 0), "{stats:?}");
}

#[test]
fn a_server_that_is_down_at_shutdown_is_not_waited_for() {
    let _g = crate::agent_lock();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let agent = AgentBuilder::new("down").memory(false).server_address(&url).start().unwrap();
    work_for_the_window(&agent, 50);
    let stats = agent.stop();
    // The last window's upload found nothing listening: dropped at once, not retried until
    // the deadline (which held the program's exit for up to 2 s).
    assert_eq!((stats.upload_retries, stats.uploads_dropped, stats.uploads_sent), (0, 1, 0), "{stats:?}");
}

#[test]
fn stop_is_bounded_when_server_is_down_slow_or_broken() {
    let _g = crate::agent_lock();
    // Down: a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let slow = Receiver::start(Mode::Slow(Duration::from_secs(8)));
    let garbage = Receiver::start(Mode::Garbage);
    let busy = Receiver::start(Mode::Status(429, "push rate limit exceeded"));
    // The bound is the shutdown timeout, plus 3 s for a busy machine (other tests of this binary
    // run meanwhile): well short of the slow server's 8 s.
    let timeout = Duration::from_millis(500);
    for server in [url, slow.url(), garbage.url(), busy.url()] {
        let agent =
            AgentBuilder::new("down").memory(false).server_address(&server).shutdown_timeout(timeout).start().unwrap();
        run_labelled_work(50);
        let t = Instant::now();
        let stats = agent.stop();
        let took = t.elapsed();
        assert!(took < timeout + Duration::from_secs(3), "{server}: stop took {took:?}");
        assert_eq!(stats.uploads_sent, 0, "{server}");
    }
}

#[test]
fn peer_sdk_uploads_are_accepted_and_decoded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/peer-uploads");
    for (req, bin) in [
        ("pyroscope-io-1.4.0-push.request", "pyroscope-io-1.4.0-push.bin"),
        ("nodejs-0.6.4-ingest.request", "nodejs-0.6.4-ingest.bin"),
    ] {
        let head = std::fs::read_to_string(dir.join(req)).unwrap();
        let body = std::fs::read(dir.join(bin)).unwrap();
        let mut lines = head.lines();
        let mut first = lines.next().unwrap().split(' ');
        let (method, path) = (first.next().unwrap(), first.next().unwrap());
        let headers: Vec<(&str, &str)> = lines.filter_map(|l| l.split_once(": ")).collect();
        let got = Receiver::check_replay(method, &format!("http://127.0.0.1{path}"), &headers, &body)
            .unwrap_or_else(|e| panic!("{req}: {e:?}"));
        let cpu_like: Vec<_> =
            got.iter().filter(|r| r.labels.get("__name__").is_none_or(|n| n == "process_cpu")).collect();
        assert!(!cpu_like.is_empty(), "{req}");
        let mut found = false;
        for r in cpu_like {
            assert_eq!(r.labels["region"], "eu-north", "{req}");
            for f in flatten(&r.profile) {
                // Python names are snake_case, JavaScript ones camelCase.
                let norm: Vec<String> = f.stack.iter().map(|n| n.to_lowercase().replace('_', "")).collect();
                let pos = |name: &str| norm.iter().position(|n| n.contains(name));
                if let (Some(i), Some(j)) = (pos("checkdriveravailability"), pos("mutexlock")) {
                    assert!(f.labels.contains_key("vehicle"), "{req}: {f:?}");
                    assert!(i < j, "{req}: {:?}", f.stack);
                    found = true;
                }
            }
        }
        assert!(found, "{req}: mutex_lock under check_driver_availability");
    }
}

#[test]
fn receiver_rejects_what_the_server_rejects() {
    let bad_names = ["", "my app{}", "app{bad-key=1}", "{region=x}"];
    for name in bad_names {
        let url = format!("http://127.0.0.1/ingest?format=pprof&name={}", urlencode(name));
        let e = Receiver::check("POST", &url, &[], b"x").unwrap_err();
        assert_eq!(e.0, 400, "{name}: {e:?}");
    }
    let e = Receiver::check("POST", "http://127.0.0.1/ingest?format=pprof&name=app", &[], b"not a pprof").unwrap_err();
    assert_eq!(e.0, 422);
    let e = Receiver::check(
        "POST",
        "http://127.0.0.1/push.v1.PusherService/Push",
        &[("content-type", "application/proto")],
        b"",
    )
    .unwrap_err();
    assert_eq!(e, (400, "no profiles received".into()));
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[test]
fn stop_counts_what_a_hanging_server_did_not_take() {
    let _g = crate::agent_lock();
    let rx = Receiver::start(Mode::Slow(Duration::from_secs(60)));
    let timeout = Duration::from_millis(500);
    let agent = AgentBuilder::new("hang")
        .memory(false)
        .server_address(rx.url())
        .request_timeout(Duration::from_secs(30))
        .shutdown_timeout(timeout)
        .start()
        .unwrap();
    // Three windows: the first hangs in flight, the others wait in the queue.
    for _ in 0..3 {
        let before = agent.stats().profiles;
        work_for_the_window(&agent, 30);
        agent.flush();
        assert!(wait_until(Duration::from_secs(20), || agent.stats().profiles > before), "{:?}", agent.stats());
    }
    assert!(wait_until(Duration::from_secs(20), || rx.requests() >= 1), "the first upload never reached the server");
    let t = Instant::now();
    let stats = agent.stop();
    let took = t.elapsed();
    eprintln!("stop took {took:?} (timeout {timeout:?}): {stats:?}");
    // 3 s for a busy machine beside the timeout: the server would hold it 60 s.
    assert!(took < timeout + Duration::from_secs(3), "stop took {took:?}");
    assert!(stats.profiles >= 3, "{stats:?}");
    assert_eq!(stats.uploads_sent, 0, "{stats:?}");
    assert_eq!(stats.uploads_dropped, stats.profiles, "everything not sent is counted when stop returns: {stats:?}");
    assert_eq!(stats.uploads_failed, 0, "{stats:?}");
}

/// Warnings the library logged in this process, captured by a logger installed once.
fn logged() -> Vec<String> {
    struct Capture;
    static LINES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            LINES.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&Capture).unwrap();
        log::set_max_level(log::LevelFilter::Warn);
    });
    LINES.lock().unwrap().clone()
}

#[test]
fn each_kind_of_failure_is_logged_once() {
    let _g = crate::agent_lock();
    logged();
    // Statuses no other test uses: each kind is logged once per process.
    let rx = Receiver::start(Mode::Status(403, "forbidden"));
    // Retries of a 500 run out after three upload intervals: 3 s.
    let agent = AgentBuilder::new("log-kinds")
        .memory(false)
        .server_address(rx.url())
        .upload_interval(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_secs(3))
        .start()
        .unwrap();
    for _ in 0..2 {
        let failed = agent.stats().uploads_failed;
        work_for_the_window(&agent, 30);
        agent.flush();
        assert!(wait_until(Duration::from_secs(20), || agent.stats().uploads_failed > failed), "{:?}", agent.stats());
    }
    rx.set_mode(Mode::Status(500, "internal"));
    work_for_the_window(&agent, 30);
    agent.flush();
    let count = |status: &str| logged().iter().filter(|l| l.contains(&format!("answered {status}"))).count();
    // Not stop at once: an attempt still in flight at the shutdown deadline would be dropped
    // at shutdown, not failed, and never logged.
    assert!(wait_until(Duration::from_secs(30), || count("500") >= 1), "500 never logged: {:?}", agent.stats());
    let stats = agent.stop();
    let lines = logged();
    assert_eq!((count("403"), count("500")), (1, 1), "same URL, two kinds, each logged once: {lines:?} {stats:?}");
}

#[test]
fn counters_follow_the_server() {
    let _g = crate::agent_lock();
    for mode in
        [Mode::Normal, Mode::FailFirst(1, 503), Mode::Status(400, "invalid_argument"), Mode::Status(502, "down")]
    {
        let rx = Receiver::start(mode.clone());
        // A 502 is retried until three upload intervals (3 s) have passed, long before the
        // shutdown deadline (20 s): an attempt still in flight at the deadline would count as
        // dropped at shutdown, not failed.
        let (interval, timeout) = match mode {
            Mode::Status(502, _) => (Duration::from_secs(1), Duration::from_secs(20)),
            _ => (Duration::from_secs(10), Duration::from_secs(3)),
        };
        let agent = AgentBuilder::new("counters")
            .memory(false)
            .server_address(rx.url())
            .upload_interval(interval)
            .shutdown_timeout(timeout)
            .start()
            .unwrap();
        work_for_the_window(&agent, 50);
        let s = agent.stop();
        assert!(s.samples >= 1 && s.profiles >= 1, "{mode:?}: {s:?}");
        assert_eq!(s.uploads_sent + s.uploads_dropped, s.profiles, "{mode:?}: {s:?}");
        let (sent, failed, retried) = (s.uploads_sent, s.uploads_failed, s.upload_retries);
        match mode {
            Mode::Normal => assert_eq!((sent, failed, retried), (s.profiles, 0, 0), "{s:?}"),
            Mode::FailFirst(..) => assert_eq!((sent, failed, retried), (s.profiles, 0, 1), "{s:?}"),
            // Refused: not retried, failed at once.
            Mode::Status(400, _) => assert_eq!((sent, failed, retried), (0, s.profiles, 0), "{s:?}"),
            // Retried with backoff until retries ran out, then failed.
            _ => assert!(sent == 0 && failed == s.profiles && retried >= 2, "{s:?}"),
        }
        assert_eq!(s.uploads_dropped, failed, "{mode:?}: nothing else was dropped: {s:?}");
        assert_eq!(rx.requests(), s.profiles + retried, "{mode:?}: {s:?}");
    }
}
