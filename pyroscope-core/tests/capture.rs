//! CPU captures (`Agent::capture_cpu`): a profile of a stretch of time, taken beside the
//! regular windows, which go on being built and sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pyroscope_core::{decode_pprof, Agent, AgentBuilder, Error, FrameId, LabelSet};

use crate::util::*;

fn weight_of(flat: &[Flat], function: &str) -> i64 {
    flat.iter().filter(|f| f.stack.iter().any(|n| n == function)).map(|f| f.values[0]).sum()
}

fn agent(dir: &std::path::Path, interval: Duration) -> Agent {
    AgentBuilder::new("capture")
        .export_dir(dir)
        .memory(false)
        .upload_interval(interval)
        .shutdown_timeout(Duration::from_secs(30))
        .start()
        .unwrap()
}

#[test]
fn a_capture_gets_the_samples_of_its_time_while_windows_go_on() {
    let _g = crate::agent_lock();
    let dir = temp_dir("capture");
    let agent = agent(&dir, Duration::from_secs(1));
    let none = LabelSet::empty();
    let before = FrameId::new("before_capture", "capture.js", 1).unwrap();
    let during = FrameId::new("during_capture", "capture.js", 2).unwrap();
    let labels = LabelSet::new(&[("phase", "capture")]).unwrap();

    // Drained into a closed window before the capture is asked for.
    agent.add_cpu_sample(&[before], &none, 7);
    agent.flush();
    assert!(wait_until(Duration::from_secs(30), || agent.stats().windows >= 1), "{:?}", agent.stats());
    let windows_before = agent.stats().windows;

    let capture = agent.capture_cpu(Duration::from_millis(2500)).unwrap();
    let done = AtomicBool::new(false);
    let mut pushed = 0u64;
    let bytes = std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let bytes = capture.wait();
            done.store(true, Ordering::SeqCst);
            bytes
        });
        // Samples all through the capture, until it has ended.
        while !done.load(Ordering::SeqCst) {
            agent.add_cpu_sample(&[during], &labels, 1);
            pushed += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        waiter.join().unwrap()
    })
    .unwrap();

    let profile = decode_pprof(&bytes).unwrap();
    let s = |i: i64| profile.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = profile.sample_type.iter().map(|t| (s(t.r#type), s(t.unit))).collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(profile.period, 10_000_000);
    // Ended by the collector's first pass after 2.5 s: later by what a busy machine delays it.
    let took = Duration::from_nanos(profile.duration_nanos as u64);
    assert!(took >= Duration::from_millis(2500) && took < Duration::from_millis(5500), "lasted {took:?}");
    let flat = flatten(&profile);
    assert_eq!(weight_of(&flat, "before_capture"), 0, "a sample of before the capture is in it");
    let got = weight_of(&flat, "during_capture");
    assert!(got > 0 && got as u64 <= pushed, "{got} of {pushed}");
    assert!(
        flat.iter().filter(|f| f.stack.iter().any(|n| n == "during_capture")).all(|f| f.labels["phase"] == "capture"),
        "a sample lost its labels: {flat:?}"
    );

    // The regular windows went on meanwhile, with the same samples: one closed during the
    // capture (by its own end time), which 1 s windows do unless the collector is held 1.5 s.
    let stats = agent.stop();
    let cpu: Vec<_> = read_profiles(&dir).into_iter().filter(|(name, _)| name.contains(".process_cpu.")).collect();
    let capture_span = profile.time_nanos..profile.time_nanos + profile.duration_nanos;
    assert!(
        cpu.iter().any(|(_, p)| capture_span.contains(&(p.time_nanos + p.duration_nanos))),
        "no window closed during a 2.5 s capture at 1 s windows, {} after {windows_before}: {stats:?}",
        stats.windows
    );
    let written: i64 = cpu.iter().map(|(_, p)| weight_of(&flatten(p), "during_capture")).sum();
    assert_eq!(written as u64, pushed, "{stats:?}");
}

#[test]
fn captures_are_bounded_and_end_with_the_agent() {
    let _g = crate::agent_lock();
    let dir = temp_dir("capture-bounds");
    let agent = agent(&dir, Duration::from_secs(3600));
    let hour = Duration::from_secs(3600);
    assert_eq!(
        agent.capture_cpu(hour + Duration::from_secs(1)).unwrap_err(),
        Error::InvalidCaptureDuration { duration: hour + Duration::from_secs(1) }
    );
    // Zero-length captures end at once and give their place back.
    for _ in 0..10 {
        let p = decode_pprof(&agent.capture_cpu(Duration::ZERO).unwrap().wait().unwrap()).unwrap();
        assert!(p.duration_nanos < 3_000_000_000, "{}", p.duration_nanos);
    }
    let long: Vec<_> = (0..8).map(|_| agent.capture_cpu(hour).unwrap()).collect();
    assert_eq!(agent.capture_cpu(hour).unwrap_err(), Error::CaptureLimit { limit: 8 });
    // A window closed after the captures were asked for: the collector has begun them (it
    // takes new captures before it closes a window), so the next sample is in every one.
    let windows = agent.stats().windows;
    agent.flush();
    assert!(wait_until(Duration::from_secs(30), || agent.stats().windows > windows));
    let frame = FrameId::new("in_long_capture", "capture.js", 3).unwrap();
    agent.add_cpu_sample(&[frame], &LabelSet::empty(), 1);
    // Stopping ends every capture with what it has.
    agent.stop();
    for c in long {
        let p = decode_pprof(&c.wait().unwrap()).unwrap();
        assert!(p.duration_nanos < 3_600_000_000_000);
        assert_eq!(weight_of(&flatten(&p), "in_long_capture"), 1);
    }
}

#[test]
fn a_pull_only_agent_sends_and_writes_nothing_and_its_captures_get_the_samples() {
    let _g = crate::agent_lock();
    let dir = temp_dir("capture-pull-only");
    let agent = AgentBuilder::new("pull")
        .export_dir(&dir)
        .pull_only()
        .upload_interval(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_secs(30))
        .start()
        .unwrap();
    assert_eq!(agent.config().destination, pyroscope_core::Destination::Nowhere);
    assert!(!agent.config().memory, "a pull-only agent samples allocations no capture reads");
    let frame = FrameId::new("pulled", "capture.js", 4).unwrap();
    let capture = agent.capture_cpu(Duration::from_secs(3600)).unwrap();
    // A window closed after the capture was asked for: the collector has begun it.
    let windows = agent.stats().windows;
    agent.flush();
    assert!(wait_until(Duration::from_secs(30), || agent.stats().windows > windows), "{:?}", agent.stats());
    agent.add_cpu_sample(&[frame], &LabelSet::empty(), 3);
    let windows = agent.stats().windows;
    agent.flush();
    assert!(wait_until(Duration::from_secs(30), || agent.stats().windows > windows), "{:?}", agent.stats());
    let stats = agent.stop();
    assert_eq!(weight_of(&flatten(&decode_pprof(&capture.wait().unwrap()).unwrap()), "pulled"), 3);
    assert_eq!((stats.profiles, stats.uploads_sent), (0, 0), "{stats:?}");
    assert!(stats.samples >= 3, "{stats:?}");
    assert!(read_profiles(&dir).is_empty(), "a pull-only agent wrote files");
}
