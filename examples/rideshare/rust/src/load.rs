//! Load generator: `rideshare-load SECONDS RATE URL...` sends RATE requests per second to
//! each URL, cycling through /car, /bike and /scooter, for SECONDS, printing progress.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn get(base: &str, path: &str) -> bool {
    let hostport = base.trim_start_matches("http://").trim_end_matches('/');
    let Ok(mut s) = TcpStream::connect(hostport) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    s.read_to_string(&mut buf).is_ok() && buf.starts_with("HTTP/1.1 200")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: rideshare-load SECONDS RATE URL...");
        std::process::exit(2);
    }
    let (Ok(secs), Ok(rate)) = (args[0].parse::<u64>(), args[1].parse::<u64>()) else {
        eprintln!("rideshare-load: SECONDS and RATE must be whole numbers");
        std::process::exit(2);
    };
    let urls = args[2..].to_vec();
    let end = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = urls
        .into_iter()
        .map(|url| {
            std::thread::spawn(move || {
                let (mut ok, mut failed) = (0u64, 0u64);
                let paths = ["/car", "/bike", "/scooter"];
                let gap = Duration::from_millis(1000 / rate.max(1));
                let mut i = 0;
                while Instant::now() < end {
                    let t = Instant::now();
                    if get(&url, paths[i % 3]) {
                        ok += 1
                    } else {
                        failed += 1
                    }
                    i += 1;
                    std::thread::sleep(gap.saturating_sub(t.elapsed()));
                }
                (url, ok, failed)
            })
        })
        .collect();
    let start = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(5).min(end.saturating_duration_since(Instant::now())));
        eprint!("\rload: {:>3}/{secs} s", start.elapsed().as_secs());
    }
    eprintln!();
    for t in threads {
        if let Ok((url, ok, failed)) = t.join() {
            eprintln!("load: {url}: {ok} ok, {failed} failed");
        }
    }
}
