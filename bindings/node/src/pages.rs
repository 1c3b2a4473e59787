//! File pages mapped into the process by reads that happen once, given back after them.
//!
//! The kernel maps the 64 KiB around each page of a file read through a mapping (fault-around),
//! so reads made once leave far more of a file resident than they used. Three such moments are
//! ours:
//! - loading the addon: the loader resolves its imports (Node-API, V8) in node's own dynamic
//!   symbol tables, some 1.3 MiB of them mapped for ~100 lookups;
//! - the addon's own start-up code, and the read-only data the loader reads to relocate it;
//! - V8's walk for the code that existed before the watch began: it computes each function's
//!   line, for which it reads the source of its script once, and Node's own modules have their
//!   sources in the node executable's read-only data.
//!
//! The pages are clean pages of private read-only file mappings: dropping them from the
//! process (`MADV_DONTNEED`) leaves them in the page cache and changes nothing of what the
//! process reads; a page read again is mapped again by a minor fault. A page that is a private
//! copy (relocated data the loader made read-only afterwards) is never dropped: it holds bytes
//! the file does not.

use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;
/// `/proc/self/pagemap`: the page is present.
const PRESENT: u64 = 1 << 63;
/// `/proc/self/pagemap`: the page is a file page or shared anonymous (not a private copy).
const FILE_PAGE: u64 = 1 << 61;

/// One line of `/proc/self/maps`.
struct Mapping {
    start: usize,
    end: usize,
    perms: String,
    /// Device and inode: the file, however its path reads.
    file: (String, String),
    #[cfg_attr(not(any(pyroscope_node_shim, test)), allow(dead_code))]
    path: String,
}

fn mappings() -> Vec<Mapping> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return Vec::new() };
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(6, ' ');
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?.to_owned();
            let _offset = fields.next()?;
            let file = (fields.next()?.to_owned(), fields.next()?.to_owned());
            let path = fields.next().unwrap_or("").trim_start().to_owned();
            let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
            Some(Mapping { start, end, perms, file, path })
        })
        .collect()
}

fn entries(pagemap: &File, start: usize, end: usize) -> Option<Vec<u64>> {
    let pages = (end - start) / PAGE;
    let mut bytes = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut bytes, (start / PAGE * 8) as u64).ok()?;
    Some(bytes.chunks_exact(8).map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default())).collect())
}

/// Which pages of some read-only private file mappings were present at one instant.
pub struct Resident {
    pagemap: File,
    mappings: Vec<(usize, Vec<u64>)>,
}

impl Resident {
    /// The executable's read-only private mappings now; None when that cannot be read (the
    /// pages read then stay mapped). (The walk that needs it is the shim's.)
    #[cfg(pyroscope_node_shim)]
    pub fn executable() -> Option<Resident> {
        let exe = std::fs::read_link("/proc/self/exe").ok()?;
        Self::of_path(&exe.to_string_lossy())
    }

    #[cfg(any(pyroscope_node_shim, test))]
    fn of_path(path: &str) -> Option<Resident> {
        let pagemap = File::open("/proc/self/pagemap").ok()?;
        let mappings = mappings()
            .into_iter()
            .filter(|m| m.perms == "r--p" && m.path == path)
            .filter_map(|m| Some((m.start, entries(&pagemap, m.start, m.end)?)))
            .collect::<Vec<_>>();
        (!mappings.is_empty()).then_some(Resident { pagemap, mappings })
    }

    /// Entries read by someone else (JavaScript, before the addon was loaded): each mapping's
    /// start and its pages' `/proc/self/pagemap` entries. Mappings that are not, now, one
    /// read-only private mapping of that length are left out.
    pub fn from_entries(taken: Vec<(usize, Vec<u64>)>) -> Option<Resident> {
        let pagemap = File::open("/proc/self/pagemap").ok()?;
        let now = mappings();
        let mappings = taken
            .into_iter()
            .filter(|(start, was)| {
                now.iter().any(|m| m.start == *start && m.end == start + was.len() * PAGE && m.perms == "r--p")
            })
            .collect::<Vec<_>>();
        (!mappings.is_empty()).then_some(Resident { pagemap, mappings })
    }

    /// Drops the file pages of those mappings that became present since. The bytes returned to
    /// the system, for the logs.
    pub fn release_new(self) -> usize {
        let mut released = 0;
        for (start, was) in &self.mappings {
            let Some(now) = entries(&self.pagemap, *start, start + was.len() * PAGE) else { continue };
            released += drop_runs(*start, |i| was[i] & PRESENT == 0 && is_file_page(now[i]), now.len());
        }
        released
    }
}

fn is_file_page(entry: u64) -> bool {
    entry & (PRESENT | FILE_PAGE) == PRESENT | FILE_PAGE
}

/// `MADV_DONTNEED` on the runs of pages `i < pages` from `start` for which `drop(i)`; only
/// for present file pages of read-only private mappings. The bytes dropped.
fn drop_runs(start: usize, drop: impl Fn(usize) -> bool, pages: usize) -> usize {
    let mut released = 0;
    let mut i = 0;
    while i < pages {
        if !drop(i) {
            i += 1;
            continue;
        }
        let first = i;
        while i < pages && drop(i) {
            i += 1;
        }
        let (addr, len) = (start + first * PAGE, (i - first) * PAGE);
        // SAFETY: the callers pass only present file pages (no private copy) of private
        // read-only mappings: dropping them loses nothing, and a later read or execution maps
        // the same bytes from the page cache again.
        if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) } == 0 {
            released += len;
        }
    }
    released
}

/// Drops the file pages of the read-only mappings of the object that holds `addr` (this
/// addon): what its loading and start-up read, and the 64 KiB around each. The code it runs
/// from now on is mapped again as it runs. The bytes returned to the system.
pub fn release_object_at(addr: usize) -> usize {
    let all = mappings();
    let Some(object) = all.iter().find(|m| m.start <= addr && addr < m.end && m.file.1 != "0") else { return 0 };
    let Ok(pagemap) = File::open("/proc/self/pagemap") else { return 0 };
    all.iter()
        .filter(|m| m.file == object.file && m.perms.ends_with('p') && !m.perms.contains('w'))
        .filter_map(|m| {
            let now = entries(&pagemap, m.start, m.end)?;
            Some(drop_runs(m.start, |i| is_file_page(now[i]), now.len()))
        })
        .sum()
}

/// [`release_object_at`] for this addon.
pub fn release_own_pages() -> usize {
    release_object_at(release_own_pages as fn() -> usize as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A file of 64 pages, each page's bytes its own, mapped privately.
    struct Mapped {
        path: std::path::PathBuf,
        bytes: Vec<u8>,
        base: *mut libc::c_void,
    }

    impl Mapped {
        fn new(name: &str, prot: i32) -> Mapped {
            let path = std::env::temp_dir().join(format!("pyroscope-node-pages-{name}-{}", std::process::id()));
            let bytes: Vec<u8> = (0..64 * PAGE).map(|i| (i / PAGE) as u8 ^ i as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            let file = File::open(&path).unwrap();
            // SAFETY: a new private mapping of a file of that length, unmapped in drop.
            let base =
                unsafe { libc::mmap(std::ptr::null_mut(), bytes.len(), prot, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
            assert_ne!(base, libc::MAP_FAILED);
            Mapped { path, bytes, base }
        }

        fn addr(&self, page: usize) -> usize {
            self.base as usize + page * PAGE
        }

        fn read(&self, page: usize) -> Vec<u8> {
            // SAFETY: within the mapping, alive until drop.
            unsafe { std::slice::from_raw_parts(self.addr(page) as *const u8, PAGE) }.to_vec()
        }

        fn file(&self, page: usize) -> &[u8] {
            &self.bytes[page * PAGE..(page + 1) * PAGE]
        }

        fn entries(&self) -> Vec<u64> {
            entries(&File::open("/proc/self/pagemap").unwrap(), self.addr(0), self.addr(64)).expect("pagemap")
        }
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            // SAFETY: the mapping made in new, no longer read.
            unsafe { libc::munmap(self.base, self.bytes.len()) };
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn pages_read_since_are_given_back_and_read_again_alike() {
        let m = Mapped::new("since", libc::PROT_READ);
        let present = |r: &Resident, page: usize| r.mappings[0].1[page] & PRESENT != 0;

        assert_eq!(m.read(0), m.file(0));
        let before = Resident::of_path(&m.path.to_string_lossy()).expect("pagemap");
        assert!(present(&before, 0));
        let untouched =
            (1..64).find(|&p| !present(&before, p)).expect("the kernel mapped every page at the first read");
        assert_eq!(m.read(untouched), m.file(untouched));
        let released = before.release_new();
        assert!(released >= PAGE, "released {released} bytes");
        let after = Resident::of_path(&m.path.to_string_lossy()).expect("pagemap");
        assert!(present(&after, 0), "a page present before was dropped");
        assert!(!present(&after, untouched), "a page read since is still mapped");
        assert_eq!(m.read(untouched), m.file(untouched));
    }

    #[test]
    fn entries_read_elsewhere_name_only_mappings_that_are_still_there() {
        let m = Mapped::new("elsewhere", libc::PROT_READ);
        let taken = m.entries();
        assert!(Resident::from_entries(vec![(m.addr(0), taken[..32].to_vec())]).is_none(), "another length");
        assert!(Resident::from_entries(vec![(m.addr(1), taken[1..].to_vec())]).is_none(), "another start");
        let before = Resident::from_entries(vec![(m.addr(0), taken.clone())]).expect("the mapping");
        let page = (0..64).find(|&p| taken[p] & PRESENT == 0).expect("a page not read yet");
        assert_eq!(m.read(page), m.file(page));
        assert!(before.release_new() >= PAGE);
        assert_eq!(m.entries()[page] & PRESENT, 0, "a page read since is still mapped");
    }

    #[test]
    fn an_objects_file_pages_are_given_back_and_its_private_copies_kept() {
        // As the loader leaves relocated data: written (a private copy), then made read-only.
        let m = Mapped::new("object", libc::PROT_READ | libc::PROT_WRITE);
        let copy = vec![0xa5u8; PAGE];
        // SAFETY: page 3 of the writable mapping.
        unsafe { std::ptr::copy_nonoverlapping(copy.as_ptr(), m.addr(3) as *mut u8, PAGE) };
        // SAFETY: the whole mapping, made read-only.
        assert_eq!(unsafe { libc::mprotect(m.base, 64 * PAGE, libc::PROT_READ) }, 0);
        assert_eq!(m.read(40), m.file(40));
        assert!(m.entries()[40] & PRESENT != 0);

        let released = release_object_at(m.addr(40));
        assert!(released >= PAGE, "released {released} bytes");
        let now = m.entries();
        assert_eq!(now[40] & PRESENT, 0, "a file page is still mapped");
        assert!(now[3] & PRESENT != 0, "the private copy was dropped");
        assert_eq!(m.read(3), copy);
        assert_eq!(m.read(40), m.file(40));
    }
}
