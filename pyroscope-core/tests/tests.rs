//! Integration tests: one binary, one file per area. Each test that starts an agent takes the
//! process-wide agent slot, so they serialize on AGENT_LOCK.

mod util;

/// Every integration test runs under the sampling allocator.
#[global_allocator]
static GLOBAL: pyroscope_core::SamplingAllocator<std::alloc::System> =
    pyroscope_core::SamplingAllocator::new(std::alloc::System);

mod agent;
mod capture;
mod cpu;
mod export;
mod fork;
mod heap;
mod interp;
mod labels;
mod memory;
mod properties;
mod tasks;
mod wall;

pub static AGENT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the agent slot for one test: also waits (bounded) for the collector of an earlier
/// test whose shutdown stopped waiting at its timeout, as happens on a loaded machine.
pub fn agent_lock() -> std::sync::MutexGuard<'static, ()> {
    let guard = AGENT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    util::wait_until(std::time::Duration::from_secs(60), || !pyroscope_core::agent_running());
    guard
}
