//! Integration tests: one binary, one file per area. Each test that starts an agent takes the
//! process-wide agent slot, so they serialize on AGENT_LOCK.

mod util;

/// Every integration test runs under the sampling allocator.
#[global_allocator]
static GLOBAL: pyroscope_core::SamplingAllocator<std::alloc::System> =
    pyroscope_core::SamplingAllocator::new(std::alloc::System);

mod agent;
mod cpu;
mod export;
mod fork;
mod labels;
mod memory;
mod properties;
mod tasks;

pub static AGENT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn agent_lock() -> std::sync::MutexGuard<'static, ()> {
    AGENT_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
