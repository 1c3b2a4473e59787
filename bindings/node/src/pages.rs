//! The pages of node's own file that V8's walk for existing code reads once, given back after it.
//!
//! To name the code that existed before the watch began, V8 computes each function's line, and
//! for that reads the whole source of its script once. Node's own modules have their sources in
//! the node executable's read-only data, so the walk maps some 0.9 MiB of the file into the
//! process (the kernel maps 64 KiB around each page read) that node itself never reads again.
//! They are clean pages of a private read-only file mapping: dropping them from the process
//! (`MADV_DONTNEED`) leaves them in the page cache and changes nothing of what the process
//! reads; a page read again is mapped again by a minor fault.
//!
//! Only pages that the walk brought in are dropped: present after it and not before, backed by
//! the file (never a private copy), in a read-only private mapping of the executable.

use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;
/// `/proc/self/pagemap`: the page is present.
const PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap`: the page is a file page or shared anonymous (not a private copy).
const FILE_PAGE: u64 = 1 << 61;

/// The read-only private mappings of the executable, and which of their pages were present.
pub struct Resident {
    pagemap: File,
    mappings: Vec<(usize, Vec<u64>)>,
}

/// The read-only private mappings of file `path`, `(start, end)`.
fn readonly_mappings(path: &str) -> Vec<(usize, usize)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Vec::new() };
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let _offset_device_inode = fields.nth(2)?;
            if perms != "r--p" || fields.next() != Some(path) || fields.next().is_some() {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

fn entries(pagemap: &File, start: usize, end: usize) -> Option<Vec<u64>> {
    let pages = (end - start) / PAGE;
    let mut bytes = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut bytes, (start / PAGE * 8) as u64).ok()?;
    Some(bytes.chunks_exact(8).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default())).collect())
}

/// Which pages of the executable's read-only mappings are present now; None when that cannot
/// be read (the walk then keeps what it maps).
pub fn resident() -> Option<Resident> {
    let exe = std::fs::read_link("/proc/self/exe").ok()?;
    resident_of(&exe.to_string_lossy())
}

fn resident_of(path: &str) -> Option<Resident> {
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let mappings = readonly_mappings(path)
        .into_iter()
        .filter_map(|(start, end)| Some((start, entries(&pagemap, start, end)?)))
        .collect::<Vec<_>>();
    (!mappings.is_empty()).then_some(Resident { pagemap, mappings })
}

/// Drops the file pages of those mappings that became present since `before`. The bytes
/// returned to the system, for the logs.
pub fn release_new(before: Resident) -> usize {
    let mut released = 0;
    for (start, was) in &before.mappings {
        let Some(now) = entries(&before.pagemap, *start, start + was.len() * PAGE) else { continue };
        let new = |i: usize| now[i] & (PRESENT | FILE_PAGE) == PRESENT | FILE_PAGE && was[i] & PRESENT == 0;
        let mut i = 0;
        while i < now.len() {
            if !new(i) {
                i += 1;
                continue;
            }
            let first = i;
            while i < now.len() && new(i) {
                i += 1;
            }
            let (addr, len) = (start + first * PAGE, (i - first) * PAGE);
            // SAFETY: `[addr, addr + len)` lies in a private read-only mapping of the executable
            // and holds only file pages (no private copy): dropping them loses nothing, and a
            // later read maps the same bytes from the page cache again.
            if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) } == 0 {
                released += len;
            }
        }
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn pages_read_since_are_given_back_and_read_again_alike() {
        let path = std::env::temp_dir().join(format!("pyroscope-node-pages-{}", std::process::id()));
        let bytes: Vec<u8> = (0..64 * PAGE).map(|i| (i / PAGE) as u8 ^ i as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: a new private read-only mapping of a file of that length, unmapped below.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), bytes.len(), libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0)
        };
        assert_ne!(base, libc::MAP_FAILED);
        let read = |page: usize| -> Vec<u8> {
            // SAFETY: within the mapping made above, alive until the munmap below.
            unsafe { std::slice::from_raw_parts((base as *const u8).add(page * PAGE), PAGE) }.to_vec()
        };
        let present = |r: &Resident, page: usize| r.mappings[0].1[page] & PRESENT != 0;
        let path_str = path.to_string_lossy().into_owned();

        assert_eq!(read(0), bytes[..PAGE]);
        let before = resident_of(&path_str).expect("pagemap");
        assert!(present(&before, 0));
        let untouched =
            (1..64).find(|&p| !present(&before, p)).expect("the kernel mapped every page at the first read");
        assert_eq!(read(untouched), bytes[untouched * PAGE..(untouched + 1) * PAGE]);
        let released = release_new(before);
        assert!(released >= PAGE, "released {released} bytes");
        let after = resident_of(&path_str).expect("pagemap");
        assert!(present(&after, 0), "a page present before was dropped");
        assert!(!present(&after, untouched), "a page read since is still mapped");
        assert_eq!(read(untouched), bytes[untouched * PAGE..(untouched + 1) * PAGE]);

        // SAFETY: the mapping made above, no longer read.
        unsafe { libc::munmap(base, bytes.len()) };
        let _ = std::fs::remove_file(&path);
    }
}
