//! The workload with `SamplingAllocator<System>` and a running agent (CPU + memory).
#[global_allocator]
static GLOBAL: pyroscope_core::SamplingAllocator<std::alloc::System> =
    pyroscope_core::SamplingAllocator::new(std::alloc::System);

fn main() {
    alloc_bench::main_with(true);
}
