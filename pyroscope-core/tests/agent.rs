//! The agent's lifecycle: settings checked at start, bounded shutdown, counters, secrets.

use std::time::Duration;

use std::time::Instant;

use pyroscope_core::{test_hooks, Agent, AgentBuilder, Destination, Error, FrameId, LabelSet};

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

#[test]
fn stop_returns_within_the_timeout_while_the_last_window_is_built() {
    let _g = crate::agent_lock();
    let dir = temp_dir("held-window");
    let timeout = Duration::from_millis(300);
    let agent = AgentBuilder::new("held")
        .export_dir(&dir)
        .memory(false)
        .upload_interval(Duration::from_secs(3600))
        .shutdown_timeout(timeout)
        .start()
        .unwrap();
    let frame = FrameId::new("last_window", "held.py", 1).unwrap();
    agent.add_cpu_sample(&[frame], &LabelSet::new::<&str, &str>(&[]).unwrap(), 1);
    // The collector builds the last window's profile, then stays there until released.
    let held = HeldCollector::hold();
    let t = Instant::now();
    let stats = agent.stop();
    let took = t.elapsed();
    assert!(test_hooks::collector_held(), "stop returned before the collector built the last window: {stats:?}");
    eprintln!("stop took {took:?}: {stats:?}");
    // 3 s for a busy machine beside the timeout: the collector is held until released.
    let bound = timeout + Duration::from_secs(3);
    assert!(took < bound, "stop took {took:?}");
    assert_eq!(stats.windows_abandoned, 1, "{stats:?}");
    assert_eq!((stats.profiles, stats.uploads_sent), (0, 0), "{stats:?}");
    // The detached collector holds the one-agent slot until it ends.
    assert_eq!(AgentBuilder::new("next").export_dir(&dir).start().unwrap_err(), Error::AlreadyRunning);
    drop(held);
    next_agent(&dir).stop();
    assert!(read_profiles(&dir).is_empty(), "the abandoned window is not written");
}

/// The weight (first value) of the samples whose leaf is the function `name`.
fn leaf_weight(p: &pyroscope_core::proto::Profile, name: &str) -> i64 {
    let Some(name_id) = p.string_table.iter().position(|s| s == name) else { return 0 };
    let funcs: Vec<u64> = p.function.iter().filter(|f| f.name == name_id as i64).map(|f| f.id).collect();
    let locs: std::collections::HashSet<u64> = p
        .location
        .iter()
        .filter(|l| l.line.iter().any(|line| funcs.contains(&line.function_id)))
        .map(|l| l.id)
        .collect();
    p.sample.iter().filter(|s| s.location_id.first().is_some_and(|l| locs.contains(l))).map(|s| s.value[0]).sum()
}

#[inline(never)]
fn allocate_small(n: usize) -> usize {
    (0..n).map(|i| std::hint::black_box(Box::new([i as u8; 64]))[0] as usize).sum()
}

#[test]
fn dropped_allocation_records_are_not_lost_cpu_samples() {
    let _g = crate::agent_lock();
    let dir = temp_dir("alloc-drops");
    let agent = AgentBuilder::new("alloc-drops")
        .export_dir(&dir)
        .sample_rate(1)
        .alloc_sample_bytes(1)
        .upload_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_secs(120))
        .start()
        .unwrap();
    // Hold the collector inside a window close while every allocation is sampled: the ring
    // (4,096 records) fills and the rest of the allocation records are dropped. This thread's
    // countdown may still be one drawn at an earlier agent's rate (512 KiB), so allocate in
    // rounds until the ring has overflowed (bounded).
    let held = flush_and_hold(&agent);
    let before = test_hooks::alloc_records_dropped();
    for _ in 0..200 {
        allocate_small(20_000);
        if test_hooks::alloc_records_dropped() - before >= 1_000 {
            break;
        }
    }
    drop(held);
    let stats = agent.stop();
    eprintln!("{stats:?}");
    assert!(stats.alloc_samples_lost >= 1000, "the test did not overflow the ring: {stats:?}");
    let lost_in_cpu: i64 = read_profiles(&dir)
        .iter()
        .filter(|(name, _)| name.contains(".process_cpu."))
        .map(|(_, p)| leaf_weight(p, "[lost samples]"))
        .sum();
    assert_eq!(lost_in_cpu as u64, stats.samples_lost, "[lost samples] holds lost CPU samples only: {stats:?}");
    // At 1 Hz the CPU timers write a handful of records in those seconds.
    assert!(stats.samples_lost < 50, "{stats:?}");
}

/// Holds the collector before it queues a window's profile (test hooks); lets it go when
/// dropped, even when the test fails.
struct HeldCollector;

impl HeldCollector {
    fn hold() -> Self {
        test_hooks::hold_collector();
        HeldCollector
    }
}

impl Drop for HeldCollector {
    fn drop(&mut self) {
        test_hooks::release_collector();
    }
}

/// Starts an agent without allocation sampling as soon as the detached collector of a stopped
/// one has freed the agent slot.
fn next_agent(dir: &std::path::Path) -> Agent {
    let mut next = None;
    let freed =
        wait_until(Duration::from_secs(60), || match AgentBuilder::new("next").export_dir(dir).memory(false).start() {
            Ok(a) => {
                next = Some(a);
                true
            }
            Err(e) => {
                assert_eq!(e, Error::AlreadyRunning);
                false
            }
        });
    assert!(freed, "the detached collector never finished");
    next.unwrap()
}

/// A window of one external CPU sample, flushed; returns once the collector is held before
/// queueing its profile.
fn flush_and_hold(agent: &Agent) -> HeldCollector {
    let held = HeldCollector::hold();
    let frame = FrameId::new("held_window", "held.py", 1).unwrap();
    agent.add_cpu_sample(&[frame], &LabelSet::new::<&str, &str>(&[]).unwrap(), 1);
    agent.flush();
    assert!(
        wait_until(Duration::from_secs(30), test_hooks::collector_held),
        "the collector never closed the flushed window: {:?}",
        agent.stats()
    );
    held
}

#[test]
fn allocation_sampling_stops_when_stop_times_out() {
    let _g = crate::agent_lock();
    let dir = temp_dir("alloc-off-after-timeout");
    let agent = AgentBuilder::new("alloc-off")
        .export_dir(&dir)
        .alloc_sample_bytes(1)
        .upload_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_millis(100))
        .start()
        .unwrap();
    // This thread's countdown may still be one drawn at the default rate (512 KiB).
    let before = test_hooks::alloc_samples();
    let sampled = (0..100).any(|_| {
        allocate_small(10_000);
        test_hooks::alloc_samples() > before
    });
    assert!(sampled, "allocations are sampled while the agent runs");
    allocate_small(1000);
    let held = flush_and_hold(&agent);
    let stats = agent.stop();
    assert_eq!(stats.windows_abandoned, 1, "{stats:?}");
    let before = test_hooks::alloc_samples();
    allocate_small(1000);
    assert_eq!(test_hooks::alloc_samples(), before, "allocations sampled after stop returned");
    // The detached collector ends without closing a last window.
    drop(held);
    let next = next_agent(&dir);
    let before = test_hooks::alloc_samples();
    allocate_small(1000);
    assert_eq!(test_hooks::alloc_samples(), before, "allocations sampled after the collector ended");
    next.stop();
}

#[test]
fn a_window_built_after_a_timed_out_stop_is_counted_once() {
    let _g = crate::agent_lock();
    let dir = temp_dir("abandoned-counters");
    let agent = AgentBuilder::new("abandoned")
        .export_dir(&dir)
        .memory(false)
        .upload_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_millis(100))
        .start()
        .unwrap();
    let held = flush_and_hold(&agent);
    let stats = agent.stop();
    assert_eq!(stats.windows_abandoned, 1, "{stats:?}");
    assert_eq!(stats.profiles, stats.uploads_sent + stats.uploads_dropped, "{stats:?}");
    // Let the collector queue the profile it built: the closed queue refuses it.
    drop(held);
    next_agent(&dir).stop();
    assert!(
        read_profiles(&dir).iter().all(|(name, _)| !name.contains("abandoned")),
        "the abandoned window was written"
    );
}

#[test]
fn secrets_never_appear_in_debug_output_or_errors() {
    let _g = crate::agent_lock();
    const SECRETS: [&str; 6] =
        ["pw-0xSECRET", "tok-0xSECRET", "hdr-0xSECRET", "userinfo-0xSECRET", "query-0xSECRET", "tenant-0xSECRET"];
    let [password, token, header, userinfo, query, tenant] = SECRETS;
    let mut printed = Vec::new();
    let shown = |e: Error| [e.to_string(), format!("{e:?}")];

    let with_secrets = |b: AgentBuilder| b.basic_auth("user", password).header("X-Api-Key", header);
    for address in [
        format!("http://admin:{userinfo}@127.0.0.1:4040"),
        format!("http://admin:{userinfo}@bad host"),
        format!("admin:{userinfo}@127.0.0.1:4040"),
        format!("http://127.0.0.1:4040/?token={query}"),
        // Unencoded `#`, `/` or `?` in the password: the URL does not parse.
        format!("http://user:pa#{userinfo}@127.0.0.1:4040"),
        format!("http://user:p/{userinfo}@127.0.0.1:4040"),
        format!("http://u:a?{userinfo}@127.0.0.1:4040"),
    ] {
        let b = with_secrets(AgentBuilder::new("s")).server_address(&address);
        printed.push(format!("{b:?}"));
        printed.extend(shown(b.build().unwrap_err()));
    }
    for address in [format!("http://u:{userinfo}@h:4040"), format!("http://u:x#{userinfo}@h:4040")] {
        let vars = [
            (pyroscope_core::env::SERVER_ADDRESS, address),
            (pyroscope_core::env::AUTH_TOKEN, token.to_string()),
            (pyroscope_core::env::APPLICATION_NAME, "s".to_string()),
        ];
        let b = AgentBuilder::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()));
        printed.push(format!("{b:?}"));
        printed.extend(shown(b.build().unwrap_err()));
    }

    // A valid config, then one changed after build.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let config =
        with_secrets(AgentBuilder::new("s")).server_address(&url).auth_token(token).tenant_id(tenant).build().unwrap();
    printed.push(format!("{config:?}"));
    let mut changed = config.clone();
    if let Destination::Server(u) = &mut changed.destination {
        u.set_password(Some(userinfo)).unwrap();
    }
    printed.push(format!("{changed:?}"));
    printed.extend(shown(Agent::start(changed).unwrap_err()));
    let agent = Agent::start(config).unwrap();
    printed.push(format!("{agent:?}"));
    agent.stop();

    assert!(printed.iter().any(|p| p.contains("X-Api-Key")), "header names stay visible: {printed:#?}");
    for text in &printed {
        for secret in SECRETS {
            assert!(!text.contains(secret), "{secret} leaked in: {text}");
        }
    }
}

#[test]
fn a_thread_with_a_32_kib_stack_registers_itself() {
    // Node's inspector thread has 32 KiB of stack; the unwind cache a registering thread gets
    // is built by value (about 100 KiB of stack unoptimized), on a stack of its own.
    let _g = crate::agent_lock();
    let dir = crate::util::temp_dir("small-stack");
    let agent = pyroscope_core::AgentBuilder::new("small-stack").export_dir(&dir).memory(false).start().unwrap();
    let t = std::thread::Builder::new()
        .stack_size(32 * 1024)
        .spawn(|| {
            pyroscope_core::register_thread();
            let _l = pyroscope_core::push_labels(&[("stack", "small")]);
            crate::util::spin_cpu(std::time::Duration::from_millis(100));
        })
        .unwrap();
    t.join().unwrap();
    agent.stop();
}
