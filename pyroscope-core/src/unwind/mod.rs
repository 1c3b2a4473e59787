//! Stack unwinding inside the signal handler: framehop over each loaded module's
//! `.eh_frame`, which handles both frame-pointer and frame-pointer-less code.
//!
//! The module list is built on the collector thread with `dl_iterate_phdr` (never in the
//! handler), copied into owned memory (so a `dlclose` cannot pull it away) and published as an
//! immutable [`Snapshot`] through an atomic pointer. Handlers count themselves in and out of
//! [`HANDLERS_ACTIVE`]; an old snapshot is freed only once that count has been seen at zero
//! after the swap, so no handler can still be reading it.

pub(crate) mod memory;

use crate::sys::CachePadded;
use std::ffi::CStr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

use framehop::{ExplicitModuleSectionInfo, Module, MustNotAllocateDuringUnwind, Unwinder};

#[cfg(target_arch = "x86_64")]
pub(crate) use framehop::x86_64::{
    CacheX86_64 as NativeCache, UnwindRegsX86_64 as NativeRegs, UnwinderX86_64 as NativeUnwinder,
};

/// A module's unwind section bytes: a copy, or, for an object that is never unloaded (the main
/// program and the libraries loaded with it, the object holding this code, objects linked
/// `-z nodelete` and what they need), the loaded bytes themselves, so that a large object's tables (Node's are 3.3 MB, its addon's 0.4 MB) cost
/// only the pages unwinding touches instead of a copy plus every page read to make it.
#[derive(Clone)]
pub(crate) enum SectionData {
    Copied(Arc<[u8]>),
    Loaded(&'static [u8]),
}

impl Default for SectionData {
    fn default() -> Self {
        SectionData::Loaded(&[])
    }
}

impl std::ops::Deref for SectionData {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SectionData::Copied(bytes) => bytes,
            SectionData::Loaded(bytes) => bytes,
        }
    }
}
pub(crate) type SignalUnwinder = NativeUnwinder<SectionData, MustNotAllocateDuringUnwind>;
pub(crate) type SignalCache = NativeCache<MustNotAllocateDuringUnwind>;

/// One executable segment of a loaded object, for the symbolizer: an object with several
/// executable segments (`-z separate-code`, linker scripts, Node's binary) has one entry per
/// segment.
#[derive(Clone, Debug)]
pub(crate) struct ModuleInfo {
    /// Path on disk; empty for objects without a file (vDSO).
    pub path: String,
    /// Runtime address range of the segment.
    pub text: std::ops::Range<u64>,
    /// Load bias: runtime address minus the address in the file.
    pub bias: u64,
}

/// An immutable view of the loaded modules.
pub(crate) struct Snapshot {
    pub unwinder: SignalUnwinder,
    pub modules: Vec<ModuleInfo>,
    /// `dlpi_adds` and `dlpi_subs` when it was taken, to notice dlopen/dlclose.
    pub generation: (u64, u64),
}

impl Snapshot {
    pub fn module_for(&self, addr: u64) -> Option<&ModuleInfo> {
        self.modules.iter().find(|m| m.text.contains(&addr))
    }
}

static CURRENT: AtomicPtr<Snapshot> = AtomicPtr::new(std::ptr::null_mut());
/// Signal handlers and allocation hooks currently between entry and exit: they may hold a
/// reference to a snapshot or a maps table. Both are freed only once this was seen at zero.
pub(crate) static HANDLERS_ACTIVE: Readers = Readers([const { CachePadded(AtomicUsize::new(0)) }; READER_STRIPES]);

const READER_STRIPES: usize = 16;

/// A count of readers split in stripes on separate cache lines: a thread that counts itself in
/// and out touches only its stripe's line, where one shared counter took a cache miss on each
/// side of every allocation sample once two threads sampled.
///
/// Freeing after [`Readers::idle`] is safe when the pointer was swapped out first: a reader
/// that enters a stripe after that stripe was seen at zero loads the new pointer.
pub(crate) struct Readers([CachePadded<AtomicUsize>; READER_STRIPES]);

impl Readers {
    /// Counts a reader in the stripe of `key` (any per-thread value); returns the stripe for
    /// [`Readers::exit`].
    ///
    /// # Signal safety
    /// One atomic add.
    pub(crate) fn enter(&self, key: usize) -> usize {
        let stripe = key % READER_STRIPES;
        self.0[stripe].fetch_add(1, Ordering::SeqCst);
        stripe
    }

    /// # Signal safety
    /// One atomic subtraction.
    pub(crate) fn exit(&self, stripe: usize) {
        self.0[stripe].fetch_sub(1, Ordering::SeqCst);
    }

    /// Every stripe seen at zero, one after the other.
    pub(crate) fn idle(&self) -> bool {
        self.0.iter().all(|c| c.load(Ordering::SeqCst) == 0)
    }

    /// Zeroes every stripe. Only in a forked child, where the one thread left is not a reader:
    /// the parent's threads that were inside a handler or hook at the fork do not exist here
    /// and will never count themselves out, and a stripe left busy would keep every retired
    /// snapshot, maps table and thread state from being freed.
    pub(crate) fn reset_after_fork(&self) {
        for c in &self.0 {
            c.store(0, Ordering::SeqCst);
        }
    }
}

/// The process's memory mappings, sorted, so a handler or hook can find the mapping that holds
/// its stack pointer without a syscall: reads between the stack pointer and the end of that
/// mapping are plain loads (the stack cannot go away while its own thread runs on it).
pub(crate) struct Maps {
    ranges: Vec<(u64, u64)>,
}

static MAPS: AtomicPtr<Maps> = AtomicPtr::new(std::ptr::null_mut());
static RETIRED_MAPS: crate::sync::Mutex<Vec<usize>> = crate::sync::Mutex::new(Vec::new());

/// `[sp, end of its mapping)`, or `(0, 0)` when unknown (a thread newer than the last refresh).
/// The caller must be counted in [`HANDLERS_ACTIVE`].
///
/// # Signal safety
/// One atomic load and a binary search over preallocated memory.
pub(crate) fn stack_window(sp: u64) -> (u64, u64) {
    // SAFETY: non-null pointers in MAPS come from Box::into_raw in `refresh_maps` and are freed
    // only after being swapped out and HANDLERS_ACTIVE was seen at zero; the caller is counted.
    let Some(maps) = (unsafe { MAPS.load(Ordering::Acquire).as_ref() }) else { return (0, 0) };
    let i = maps.ranges.partition_point(|(start, _)| *start <= sp);
    match i.checked_sub(1).map(|i| maps.ranges[i]) {
        Some((start, end)) if start <= sp && sp < end => (sp, end),
        _ => {
            STACKS_UNKNOWN.fetch_add(1, Ordering::Relaxed);
            (0, 0)
        }
    }
}

/// Stack pointers [`stack_window`] found outside every mapping of the last maps table (a
/// stack that grew or moved since): the collector reads the table again when this moves.
pub(crate) static STACKS_UNKNOWN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Re-reads /proc/self/maps and publishes it. Collector thread only.
pub(crate) fn refresh_maps() {
    let Ok(text) = std::fs::read_to_string("/proc/self/maps") else { return };
    crate::symbolize::note_mappings(&text);
    let mut ranges: Vec<(u64, u64)> = text
        .lines()
        .filter_map(|line| {
            let (a, b) = line.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .collect();
    ranges.sort_unstable();
    let old = MAPS.swap(Box::into_raw(Box::new(Maps { ranges })), Ordering::AcqRel);
    if !old.is_null() {
        RETIRED_MAPS.lock().push(old as usize);
    }
    reclaim();
}

/// Snapshots replaced but possibly still read by a handler that started before the swap.
static RETIRED: crate::sync::Mutex<Vec<usize>> = crate::sync::Mutex::new(Vec::new());

/// The current snapshot, valid while the caller is counted in [`HANDLERS_ACTIVE`] (handler)
/// or is the collector (which alone frees snapshots).
pub(crate) fn current() -> Option<&'static Snapshot> {
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: non-null pointers in CURRENT come from Box::into_raw in `refresh` and are freed
    // only by `reclaim` after being swapped out and after HANDLERS_ACTIVE was seen at zero.
    unsafe { p.as_ref() }
}

/// `dlpi_adds`/`dlpi_subs` now: changes whenever a library is loaded or unloaded.
pub(crate) fn loader_generation() -> (u64, u64) {
    let mut gen = (0u64, 0u64);
    unsafe extern "C" fn cb(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> i32 {
        // SAFETY: dl_iterate_phdr passes a valid info and our `data` pointer to a (u64, u64).
        unsafe {
            let out = &mut *(data as *mut (u64, u64));
            *out = ((*info).dlpi_adds, (*info).dlpi_subs);
        }
        1
    }
    // SAFETY: the callback matches dl_iterate_phdr's contract and `gen` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(cb), (&mut gen as *mut (u64, u64)).cast()) };
    gen
}

/// Rebuilds the snapshot if libraries were loaded or unloaded since the last one, then frees
/// retired snapshots no handler can see. Collector thread only.
pub(crate) fn refresh() {
    let gen = loader_generation();
    if current().is_some_and(|s| s.generation == gen) {
        reclaim();
        return;
    }
    let modules = collect_modules();
    let mut unwinder = SignalUnwinder::new();
    let mut infos = Vec::with_capacity(modules.len());
    for (info, module) in modules {
        if let Some(module) = module {
            unwinder.add_module(module);
        }
        infos.push(info);
    }
    let fresh = Box::into_raw(Box::new(Snapshot { unwinder, modules: infos, generation: gen }));
    let old = CURRENT.swap(fresh, Ordering::AcqRel);
    if !old.is_null() {
        RETIRED.lock().push(old as usize);
    }
    reclaim();
}

/// Frees retired snapshots if no handler is running now. A handler that starts after this
/// check loads CURRENT after the swap, so it cannot see a retired snapshot.
fn reclaim() {
    let mut retired = RETIRED.lock();
    let mut retired_maps = RETIRED_MAPS.lock();
    if (retired.is_empty() && retired_maps.is_empty()) || !HANDLERS_ACTIVE.idle() {
        return;
    }
    for p in retired.drain(..) {
        // SAFETY: `p` came from Box::into_raw, was swapped out of CURRENT before this point,
        // and no handler that could have loaded it is still running (count seen at zero).
        drop(unsafe { Box::from_raw(p as *mut Snapshot) });
    }
    for p in retired_maps.drain(..) {
        // SAFETY: as above, for MAPS.
        drop(unsafe { Box::from_raw(p as *mut Maps) });
    }
}

struct Found {
    path: String,
    bias: u64,
    /// Runtime ranges of the executable PT_LOAD segments, in program header order.
    texts: Vec<std::ops::Range<u64>>,
    eh_frame_hdr: Option<(u64, u64)>,
    /// The PT_LOAD segments, to bound the copy of `.eh_frame`.
    loads: Vec<(u64, u64)>,
    /// Copies of the unwind sections, taken inside dl_iterate_phdr's callback: the loader's
    /// lock is held there, so no dlclose can unmap them while we read.
    sections: Option<Sections>,
}

struct Sections {
    hdr_addr: u64,
    hdr: SectionData,
    eh_addr: u64,
    eh: SectionData,
}

/// Copies `.eh_frame_hdr` and `.eh_frame`, or refers to them for an object that is never
/// unloaded (`permanent`). Only inside dl_iterate_phdr's callback.
fn copy_sections(f: &Found, permanent: bool) -> Option<Sections> {
    let (hdr_addr, hdr_len) = f.eh_frame_hdr?;
    // SAFETY: PT_GNU_EH_FRAME describes mapped, readable bytes of an object that cannot be
    // unloaded while the loader runs our dl_iterate_phdr callback; a permanent object's stay
    // mapped for the life of the process, hence 'static.
    let hdr: &'static [u8] = unsafe { std::slice::from_raw_parts(hdr_addr as *const u8, hdr_len as usize) };
    // version 1, eh_frame_ptr encoded as pcrel|sdata4 (0x1b) in every toolchain we target.
    if hdr.len() < 8 || hdr[0] != 1 || hdr[1] != 0x1b {
        return None;
    }
    let rel = i32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as i64;
    let eh_addr = (hdr_addr as i64 + 4 + rel) as u64;
    let (_, seg_end) = *f.loads.iter().find(|(s, e)| *s <= eh_addr && eh_addr < *e)?;
    // SAFETY: [eh_addr, seg_end) lies inside one PT_LOAD segment of the same object, mapped for
    // the duration of the callback (for a permanent object, for good) as above.
    let eh: &'static [u8] = unsafe { std::slice::from_raw_parts(eh_addr as *const u8, (seg_end - eh_addr) as usize) };
    let data = |bytes: &'static [u8]| {
        if permanent {
            SectionData::Loaded(bytes)
        } else {
            SectionData::Copied(Arc::from(bytes))
        }
    };
    Some(Sections { hdr_addr, hdr: data(hdr), eh_addr, eh: data(eh) })
}

/// An address in the object that holds this code: that object is mapped as long as this code
/// can run at all.
fn own_code() -> u64 {
    own_code as fn() -> u64 as usize as u64
}

/// One entry of an ELF64 dynamic section (`Elf64_Dyn`).
#[repr(C)]
struct ElfDyn {
    tag: i64,
    value: u64,
}

/// What an object's dynamic section says about its unloading: whether it is marked
/// `DF_1_NODELETE` (`-z nodelete`, which the Node addon gets from napi-build: `dlclose` never
/// unloads it), its `DT_SONAME` and the names it needs (`DT_NEEDED`).
#[derive(Default)]
struct Dynamic {
    nodelete: bool,
    soname: Option<String>,
    needed: Vec<String>,
}

/// Reads an object's dynamic section; strings outside its loaded segments are left out.
///
/// # Safety
/// `dynamic` is the runtime address of a loaded object's `PT_DYNAMIC` and `loads` the runtime
/// ranges of its `PT_LOAD` segments, all mapped during the call (inside dl_iterate_phdr's
/// callback).
unsafe fn read_dynamic(dynamic: *const ElfDyn, bias: u64, loads: &[(u64, u64)]) -> Dynamic {
    const DT_NEEDED: i64 = 1;
    const DT_STRTAB: i64 = 5;
    const DT_SONAME: i64 = 14;
    const DT_FLAGS_1: i64 = 0x6fff_fffb;
    const DF_1_NODELETE: u64 = 0x8;
    let mut out = Dynamic::default();
    let (mut strtab, mut soname, mut needed) = (None, None, Vec::new());
    // Dynamic sections are short (tens of entries); the bound guards a malformed one.
    for i in 0..4096 {
        // SAFETY: PT_DYNAMIC is an array of entries ended by DT_NULL, mapped (caller's contract).
        let entry = unsafe { &*dynamic.add(i) };
        match entry.tag {
            0 => break,
            DT_NEEDED => needed.push(entry.value),
            DT_STRTAB => strtab = Some(entry.value),
            DT_SONAME => soname = Some(entry.value),
            DT_FLAGS_1 => out.nodelete = entry.value & DF_1_NODELETE != 0,
            _ => {}
        }
    }
    let Some(strtab) = strtab else { return out };
    // The loader relocates the section's addresses in place on most targets, not on all: an
    // address below the load bias is still the file's.
    let strtab = if strtab < bias { strtab.wrapping_add(bias) } else { strtab };
    let string = |offset: u64| -> Option<String> {
        let start = strtab.checked_add(offset)?;
        let &(_, end) = loads.iter().find(|(s, e)| *s <= start && start < *e)?;
        let len = (end - start).min(4096) as usize;
        // SAFETY: [start, start + len) lies inside a mapped PT_LOAD segment of the object.
        let bytes = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
        let name = &bytes[..bytes.iter().position(|&b| b == 0)?];
        std::str::from_utf8(name).ok().map(str::to_owned)
    };
    out.soname = soname.and_then(string);
    out.needed = needed.into_iter().filter_map(string).collect();
    out
}

/// Every loaded object, its unwind sections copied (or referred to) inside the loader's lock.
fn find_objects() -> Vec<Found> {
    struct State {
        found: Vec<Found>,
        /// Names needed by objects that are never unloaded, not matched to an object yet.
        needed: Vec<String>,
    }
    unsafe extern "C" fn cb(info: *mut libc::dl_phdr_info, _size: usize, data: *mut libc::c_void) -> i32 {
        // SAFETY: dl_iterate_phdr passes a valid info whose phdr array has dlpi_phnum entries,
        // and our `data` pointer to a State; the object (its PT_DYNAMIC included) stays mapped
        // while the callback runs.
        unsafe {
            let state = &mut *(data as *mut State);
            let info = &*info;
            let name =
                if info.dlpi_name.is_null() { "" } else { CStr::from_ptr(info.dlpi_name).to_str().unwrap_or("") };
            let bias = info.dlpi_addr;
            let mut found = Found {
                path: name.to_owned(),
                bias,
                texts: Vec::new(),
                eh_frame_hdr: None,
                loads: Vec::new(),
                sections: None,
            };
            let mut dynamic = None;
            for i in 0..info.dlpi_phnum as usize {
                let ph = &*info.dlpi_phdr.add(i);
                let start = bias.wrapping_add(ph.p_vaddr);
                let end = start + ph.p_memsz;
                match ph.p_type {
                    libc::PT_LOAD => {
                        found.loads.push((start, end));
                        if ph.p_flags & libc::PF_X != 0 {
                            found.texts.push(start..end);
                        }
                    }
                    libc::PT_GNU_EH_FRAME => found.eh_frame_hdr = Some((start, ph.p_memsz)),
                    libc::PT_DYNAMIC => dynamic = Some(start as *const ElfDyn),
                    _ => {}
                }
            }
            let dynamic = dynamic.map(|d| read_dynamic(d, bias, &found.loads)).unwrap_or_default();
            // The loader reports the main program first, then the objects loaded with it, each
            // after an object that needs it; glibc unloads only objects that dlopen loaded. An
            // object needed by one that is never unloaded is one of those loaded with the
            // program, or held by an object marked never to be unloaded: either way it stays.
            let main = state.found.is_empty();
            let base = name.rsplit('/').next().unwrap_or(name);
            let needed = state.needed.iter().position(|n| {
                dynamic.soname.as_deref() == Some(n.as_str()) || n == base || (n.starts_with('/') && n == name)
            });
            // A name stands for one object: the first one reported (a second namespace's copy
            // of a library may be unloaded).
            let needed = needed.map(|i| state.needed.swap_remove(i)).is_some();
            let own = found.loads.iter().any(|(s, e)| (*s..*e).contains(&own_code()));
            if main || needed || dynamic.nodelete {
                state.needed.extend(dynamic.needed);
            }
            found.sections = copy_sections(&found, main || needed || dynamic.nodelete || own);
            state.found.push(found);
        }
        0
    }
    let mut state = State { found: Vec::new(), needed: Vec::new() };
    // SAFETY: the callback matches dl_iterate_phdr's contract and `state` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(cb), (&mut state as *mut State).cast()) };
    state.found
}

fn collect_modules() -> Vec<(ModuleInfo, Option<Module<SectionData>>)> {
    let mut out = Vec::new();
    for (i, f) in find_objects().into_iter().enumerate() {
        let (Some(first), Some(last)) = (f.texts.iter().map(|t| t.start).min(), f.texts.iter().map(|t| t.end).max())
        else {
            continue;
        };
        let path = if i == 0 && f.path.is_empty() {
            std::fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
        } else if f.path.starts_with('/') {
            f.path.clone()
        } else {
            String::new() // the vDSO has no file
        };
        // The unwinder gets one module spanning every executable segment; the symbolizer one
        // entry per segment, so an address between segments belongs to none.
        let mut module = unwind_module(&f, &path, first..last);
        for text in &f.texts {
            let info = ModuleInfo { path: path.clone(), text: text.clone(), bias: f.bias };
            out.push((info, module.take()));
        }
    }
    out
}

/// Wraps a module's copied unwind sections for framehop.
fn unwind_module(f: &Found, path: &str, text: std::ops::Range<u64>) -> Option<Module<SectionData>> {
    let sec = f.sections.as_ref()?;
    let bias = f.bias;
    let section_info = ExplicitModuleSectionInfo {
        base_svma: 0,
        text_svma: Some(text.start - bias..text.end - bias),
        eh_frame_hdr_svma: Some(sec.hdr_addr - bias..sec.hdr_addr - bias + sec.hdr.len() as u64),
        eh_frame_hdr: Some(sec.hdr.clone()),
        eh_frame_svma: Some(sec.eh_addr - bias..sec.eh_addr - bias + sec.eh.len() as u64),
        eh_frame: Some(sec.eh.clone()),
        ..Default::default()
    };
    Some(Module::new(path.to_owned(), text, bias, section_info))
}

pub(crate) fn prepare_fork() {
    RETIRED.fork_hold();
    RETIRED_MAPS.fork_hold();
    crate::symbolize::prepare_fork();
}

pub(crate) fn after_fork() {
    crate::symbolize::after_fork();
    RETIRED_MAPS.fork_release();
    RETIRED.fork_release();
}

/// Snapshots and maps tables retired but not freed yet (test hooks).
#[cfg(feature = "test-hooks")]
pub(crate) fn retained() -> usize {
    RETIRED.lock().len() + RETIRED_MAPS.lock().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared libraries built with `gcc` in a fresh folder, removed on drop (loaded ones stay
    /// mapped).
    struct Fixtures {
        dir: std::path::PathBuf,
    }

    impl Fixtures {
        fn new() -> Fixtures {
            let dir = std::env::temp_dir().join(format!("pyroscope-unwind-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Fixtures { dir }
        }

        /// Builds `lib<name>.so` exporting `<name>_fn` with extra gcc arguments; returns its path.
        fn build(&self, name: &str, args: &[&str]) -> String {
            let src = self.dir.join(format!("{name}.c"));
            std::fs::write(&src, format!("int {name}_fn(int x) {{ return x * 7 + 3; }}\n")).unwrap();
            let path = self.dir.join(format!("lib{name}.so"));
            let out = std::process::Command::new("gcc")
                .args(["-O1", "-fPIC", "-shared", "-o"])
                .arg(&path)
                .arg(&src)
                .arg(format!("-Wl,-soname,lib{name}.so"))
                .args(["-L"])
                .arg(&self.dir)
                .arg(format!("-Wl,-rpath,{}", self.dir.display()))
                .args(args)
                .output()
                .expect("gcc must be installed to build the unwinder's fixtures");
            assert!(out.status.success(), "gcc: {}", String::from_utf8_lossy(&out.stderr));
            path.to_str().unwrap().to_owned()
        }
    }

    impl Drop for Fixtures {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn load(path: &str) {
        let c = std::ffi::CString::new(path).unwrap();
        // SAFETY: loads a fixture without constructors; never closed.
        assert!(!unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW) }.is_null(), "dlopen {path}");
    }

    /// Objects that are never unloaded are read in place; any other object's tables are copied,
    /// so that a `dlclose` cannot pull them from under a handler.
    #[test]
    fn only_objects_never_unloaded_are_read_in_place() {
        let fx = Fixtures::new();
        // Loaded by dlopen: `plain` and what it needs may be unloaded; `nodelete` and what it
        // needs never are.
        let plain_dep = fx.build("plaindep", &[]);
        let plain = fx.build("plain", &["-Wl,--no-as-needed", "-lplaindep"]);
        let kept_dep = fx.build("keptdep", &[]);
        let nodelete = fx.build("nodelete", &["-Wl,--no-as-needed", "-lkeptdep", "-Wl,-z,nodelete"]);
        load(&plain);
        load(&nodelete);
        let objects = find_objects();
        let loaded = |f: &Found| match &f.sections.as_ref().expect("unwind sections").eh {
            SectionData::Loaded(_) => true,
            SectionData::Copied(_) => false,
        };
        let by_path = |path: &str| {
            let names: Vec<&str> = objects.iter().map(|f| f.path.as_str()).collect();
            objects.iter().find(|f| f.path == path).unwrap_or_else(|| panic!("{path} not in {names:?}"))
        };
        assert!(loaded(&objects[0]), "the main program");
        let libc = objects.iter().find(|f| f.path.rsplit('/').next() == Some("libc.so.6"));
        assert!(loaded(libc.expect("libc")), "a library loaded with the program");
        let own = objects.iter().find(|f| f.loads.iter().any(|(s, e)| (*s..*e).contains(&own_code())));
        assert!(loaded(own.expect("the object holding this code")));
        assert!(loaded(by_path(&nodelete)), "an object linked -z nodelete");
        assert!(loaded(by_path(&kept_dep)), "an object a -z nodelete object needs");
        assert!(!loaded(by_path(&plain)), "an object dlclose may unload");
        assert!(!loaded(by_path(&plain_dep)), "an object needed by one dlclose may unload");
    }
}
