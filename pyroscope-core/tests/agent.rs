//! The agent's lifecycle: settings checked at start, bounded shutdown, counters, secrets.

use std::time::Duration;

use pyroscope_core::{Agent, AgentBuilder, Destination, Error};

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
