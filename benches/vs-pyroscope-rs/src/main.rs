//! The benchmark workload under the `pyroscope` crate 2.x with its pprof-rs backend, the way
//! its README tags code: `tag_wrapper()`'s add/remove closures around each slice.
//! Usage (by pyroscope-bench): `vs-pyroscope-rs --child pyroscope-rs SWITCH_US ITERS_PER_US`.

use std::time::Instant;

use bench_workload::{run, settle};
use pyroscope::backend::{pprof_backend, BackendConfig, PprofConfig};
use pyroscope::pyroscope::PyroscopeAgentBuilder;

const THREADS: usize = 2;
const SECONDS: f64 = 5.0;

struct Untag<'a, F: Fn(String, String) -> pyroscope::Result<()>>(&'a F, String);
impl<F: Fn(String, String) -> pyroscope::Result<()>> Drop for Untag<'_, F> {
    fn drop(&mut self) {
        let _ = (self.0)("endpoint".into(), std::mem::take(&mut self.1));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let switch_us: u64 = args[3].parse().expect("switch");
    let ipu: f64 = args[4].parse().expect("ipu");
    let iters = (switch_us as f64 * ipu) as u64;
    let switches = (SECONDS * 1e6 / switch_us as f64) as u64;
    // Nobody listens there: uploads fail fast, as with a server that is down.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let agent = PyroscopeAgentBuilder::new(&url, "bench", 100, "pyroscope-rs", "2", pprof_backend(PprofConfig::default(), BackendConfig::default()))
        .build()
        .expect("build");
    let agent = agent.start().expect("start");
    settle();
    let (add, remove) = agent.tag_wrapper();
    let mut m = run(THREADS, switches, iters, |_, i| {
        let v = format!("/e{}", i % 4);
        let _ = add("endpoint".into(), v.clone());
        Untag(&remove, v)
    });
    let t = Instant::now();
    if let Ok(ready) = agent.stop() {
        ready.shutdown();
    }
    m.stop = t.elapsed().as_secs_f64();
    println!("{} {} {} {}", m.cpu, m.wall, m.max_rss_kib, m.stop);
}
