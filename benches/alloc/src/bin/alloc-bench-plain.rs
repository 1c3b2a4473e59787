//! The workload with the system allocator and no profiler (or, under LD_PRELOAD of the preload
//! library, profiled by it).
fn main() {
    alloc_bench::main_with(false);
}
