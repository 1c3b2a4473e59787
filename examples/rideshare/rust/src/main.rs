//! The rideshare story service (Rust): `GET /car`, `/bike`, `/scooter`.
//!
//! `REGION` (us-east, eu-north, ap-south) is a static tag; `vehicle` is set per request with
//! `tag_wrapper` inside `find_nearest_vehicle`. Only eu-north busy-waits in `mutex_lock`; only
//! us-east's worker pool leaks memory in `do_work`. Profiling is configured entirely by the
//! `PYROSCOPE_*` environment variables; SIGTERM/SIGINT flush the last window and exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyroscope_core::{AgentBuilder, SamplingAllocator};

/// Memory profiles: every allocation goes through the sampling allocator.
#[global_allocator]
static GLOBAL: SamplingAllocator<std::alloc::System> = SamplingAllocator::new(std::alloc::System);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

/// Burns CPU for about `d` of wall time.
#[inline(never)]
fn burn(d: Duration) -> u64 {
    let start = Instant::now();
    let mut x = 0x9e37_79b9u64;
    while start.elapsed() < d {
        for i in 0..2_000u64 {
            x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x100_0000_01b3);
        }
    }
    x
}

#[inline(never)]
fn mutex_lock(d: Duration) -> u64 {
    // A lock held too long elsewhere: spin until it "frees". The work after the call keeps
    // the compiler from turning it into a tail jump, which would drop this frame.
    std::hint::black_box(burn(d)) ^ 1
}

#[inline(never)]
fn check_driver_availability(region: &str, d: Duration) -> u64 {
    let mut x = burn(d / 2);
    if region == "eu-north" {
        x ^= mutex_lock(d * 4);
    }
    std::hint::black_box(x)
}

#[inline(never)]
fn find_nearest_vehicle(region: &str, vehicle: &str, d: Duration) -> u64 {
    pyroscope_core::tag_wrapper(&[("vehicle", vehicle)], || {
        let x = burn(d);
        std::hint::black_box(x ^ check_driver_availability(region, d))
    })
}

/// One unit of background work: a scratch buffer in every region; in us-east it also keeps
/// a copy of each job's result that nobody ever frees.
#[inline(never)]
fn do_work(region: &str) -> u64 {
    let scratch = vec![7u8; 16 * 1024];
    let x = burn(Duration::from_millis(2)) ^ scratch[100] as u64;
    if region == "us-east" {
        RESULTS.lock().unwrap_or_else(|e| e.into_inner()).push(vec![x as u8; 32 * 1024]);
    }
    x
}

/// The leak: results kept "for later", never read, never freed.
static RESULTS: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn worker_pool(region: String) {
    for i in 0..2 {
        let region = region.clone();
        let _ = std::thread::Builder::new().name(format!("worker-{i}")).spawn(move || {
            while !STOP.load(Ordering::Relaxed) {
                std::hint::black_box(do_work(&region));
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
}

fn main() {
    let region = std::env::var("REGION").unwrap_or_else(|_| "us-east".into());
    let port: u16 = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5000);
    let app = std::env::var("PYROSCOPE_APPLICATION_NAME").unwrap_or_else(|_| "ride-sharing-app".into());
    let agent = match AgentBuilder::from_env().application_name(app).tag("region", &region).start() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rideshare: cannot start profiling: {e}");
            std::process::exit(2);
        }
    };
    // SAFETY: `on_term` only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_term as *const () as libc::sighandler_t);
    }
    let server = match tiny_http::Server::http(("127.0.0.1", port)) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("rideshare: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(2);
        }
    };
    eprintln!(
        "rideshare: region={region} listening on http://127.0.0.1:{port} (profiles: {:?})",
        agent.config().destination
    );
    worker_pool(region.clone());
    let handlers: Vec<_> = (0..4)
        .map(|_| {
            let (server, region) = (server.clone(), region.clone());
            std::thread::spawn(move || {
                while !STOP.load(Ordering::Relaxed) {
                    let Ok(Some(req)) = server.recv_timeout(Duration::from_millis(100)) else {
                        continue;
                    };
                    let vehicle = req.url().trim_start_matches('/').split('?').next().unwrap_or("").to_owned();
                    let resp = match vehicle.as_str() {
                        "car" | "bike" | "scooter" => {
                            find_nearest_vehicle(&region, &vehicle, Duration::from_millis(10));
                            tiny_http::Response::from_string(format!("{vehicle} found in {region}\n"))
                        }
                        _ => tiny_http::Response::from_string("try /car, /bike or /scooter\n").with_status_code(404),
                    };
                    let _ = req.respond(resp);
                }
            })
        })
        .collect();
    for h in handlers {
        let _ = h.join();
    }
    let stats = agent.stop();
    eprintln!(
        "rideshare: region={region} stopped; {} samples, {} profiles delivered",
        stats.samples, stats.uploads_sent
    );
}
