//! The agent's lifecycle: settings checked at start, bounded shutdown, counters, secrets.

use std::time::Duration;

use std::time::Instant;

use pyroscope_core::{Agent, AgentBuilder, Destination, Error, FrameId, LabelSet};

use crate::util::*;

#[test]
fn start_checks_a_config_changed_after_build() {
    let _g = crate::agent_lock();
    let dir = temp_dir("invalid-config");
    let good = AgentBuilder::new("valid").export_dir(&dir).build().unwrap();
    let server = AgentBuilder::new("valid").server_address("http://127.0.0.1:4040").build().unwrap();

    let mut c = good.clone();
    c.sample_rate = 0;
    assert!(matches!(Agent::start(c), Err(Error::InvalidSampleRate { rate: 0, .. })));
    let mut c = good.clone();
    c.application_name.clear();
    assert_eq!(Agent::start(c).unwrap_err(), Error::EmptyApplicationName);
    let mut c = good.clone();
    c.upload_interval = Duration::ZERO;
    assert!(matches!(Agent::start(c), Err(Error::InvalidUploadInterval { .. })));
    let mut c = server.clone();
    if let Destination::Server(url) = &mut c.destination {
        url.set_scheme("ftp").unwrap();
    }
    assert!(matches!(Agent::start(c), Err(Error::InvalidServerAddress { .. })));
    let mut c = good.clone();
    c.tags.insert("bad-name".into(), "x".into());
    assert!(matches!(Agent::start(c), Err(Error::InvalidLabelName { .. })));

    // None of them took the agent slot: a valid config starts.
    Agent::start(good).unwrap().stop();
}

/// Frames of `depth` taken from `frames` so that each `i` gives a different stack.
fn distinct_stack(frames: &[FrameId], i: usize, depth: usize) -> Vec<FrameId> {
    (0..depth).map(|j| frames[(i / frames.len().pow(j.min(2) as u32) + j * 7919) % frames.len()]).collect()
}

#[test]
fn stop_returns_within_the_timeout_while_a_huge_last_window_is_built() {
    let _g = crate::agent_lock();
    let dir = temp_dir("huge-window");
    let timeout = Duration::from_millis(300);
    let agent = AgentBuilder::new("huge")
        .export_dir(&dir)
        .memory(false)
        .upload_interval(Duration::from_secs(3600))
        .shutdown_timeout(timeout)
        .start()
        .unwrap();
    // The most distinct stacks a window keeps, each 256 frames deep: building, encoding and
    // compressing its profile takes seconds.
    let frames: Vec<FrameId> =
        (0..4096).map(|i| FrameId::new(&format!("huge_frame_{i}"), "huge.py", i).unwrap()).collect();
    let none = LabelSet::new::<&str, &str>(&[]).unwrap();
    for i in 0..50_000 {
        agent.add_cpu_sample(&distinct_stack(&frames, i, 256), none, 1);
    }
    let t = Instant::now();
    let stats = agent.stop();
    let took = t.elapsed();
    // The detached collector still holds the one-agent slot: poll until it frees it.
    let mut next = None;
    let freed = wait_until(Duration::from_secs(300), || match AgentBuilder::new("next").export_dir(&dir).start() {
        Ok(a) => {
            next = Some(a);
            true
        }
        Err(e) => {
            assert_eq!(e, Error::AlreadyRunning);
            false
        }
    });
    let collector_took = t.elapsed();
    assert!(freed, "the detached collector never finished");
    eprintln!("stop took {took:?}, the collector {collector_took:?}: {stats:?}");
    let bound = timeout + Duration::from_millis(1000);
    assert!(took < bound, "stop took {took:?}");
    assert!(collector_took > bound, "the window was built in {collector_took:?}: not huge enough to test the bound");
    assert_eq!(stats.windows_abandoned, 1, "{stats:?}");
    assert_eq!((stats.profiles, stats.uploads_sent), (0, 0), "{stats:?}");
    assert!(read_profiles(&dir).is_empty(), "the abandoned window is not written");
    next.unwrap().stop();
}
