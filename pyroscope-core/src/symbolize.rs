//! PC -> function, file, line (inlined frames included), demangled. Collector thread only.
//!
//! What stays resident is small and bounded, whatever the binaries carry:
//! - per module file, a compact index built once: its loadable segments and a sorted table of
//!   function ranges from `.symtab` and `.dynsym` (16 bytes a function; names stay in the file
//!   and are read on demand). The tables are read through a small buffer, never mapped: a
//!   large binary's (Node's are 4.4 MB) would otherwise count in the resident set while read.
//!   A module with more than [`STREAMED_ABOVE`] functions keeps no table: its symbol tables
//!   are read once per batch of addresses instead ([`Symbolizer::prefetch`]);
//! - a cache of resolved addresses, bounded in bytes ([`CACHE_BYTES`]), cleared when full
//!   (profiles revisit the same hot addresses, so a clear costs one re-lookup each).
//!
//! Debug info is parsed only for addresses not in the cache, over a read-only mapping of the
//! file that lives for one batch: the collector resolves a window's new addresses, then calls
//! [`Symbolizer::release`], which drops the parsed units and unmaps the file. A window with no
//! new address parses nothing.
//!
//! Addresses are found in the module table published by the unwinder (every executable
//! segment of every object the loader knows), then in the process's executable file mappings
//! (a file mapped again by the program itself, as Node maps part of its text a second time);
//! either way the file's own program headers give the address in the file.

mod dwarf;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};
use rustc_hash::{FxHashMap, FxHashSet};

use crate::unwind::Snapshot;

/// Bytes the cache of resolved addresses may hold before it is cleared.
const CACHE_BYTES: usize = 2 << 20;

/// The memory the symbolizer may hold between windows for a 35 MB binary with line tables:
/// module indexes and the cache, all modules together. A test checks it.
#[cfg(test)]
pub(crate) const BUDGET_BYTES: usize = 10 << 20;

/// Time for reading debug info that any symbolizer has, however young.
const DWARF_ALLOWANCE: Duration = Duration::from_millis(2);
/// And the share of its age it may spend on it besides: 1/100.
const DWARF_SHARE: u32 = 100;

/// Longest symbol name read from a file.
const MAX_NAME: usize = 4096;

/// One frame of a symbolized address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Symbol {
    /// Demangled function name.
    pub function: Arc<str>,
    /// Source file, or the module's path when there is no line information.
    pub file: Arc<str>,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// The frames at one address, innermost (most inlined) first.
pub type Symbols = Arc<[Symbol]>;

/// Where an address lies: a module file and the address's value in that file.
struct Place {
    path: Arc<str>,
    probe: u64,
}

pub(crate) struct Symbolizer {
    /// When this symbolizer was made: the debug info budget grows with the time since.
    born: Instant,
    /// The debug info budget at birth.
    allowance: Duration,
    /// Time spent reading debug info so far.
    dwarf_spent: Duration,
    /// Addresses named from the symbol table alone because the debug info budget was spent;
    /// they are not cached, so a later window gives them lines.
    pub deferred: u64,
    /// Per module file, built once (None: not an ELF file we can read).
    indexes: HashMap<Arc<str>, Option<FileIndex>>,
    /// Parsed debug info, for the current batch only (see [`Symbolizer::release`]).
    dwarf: HashMap<Arc<str>, Option<dwarf::DwarfFile>>,
    /// Executable file mappings of the process, read when an address is in no known module;
    /// for the current batch only.
    mappings: Option<[Vec<Mapping>; 2]>,
    cache: FxHashMap<u64, Symbols>,
    physical: FxHashMap<u64, Option<Arc<str>>>,
    /// Names and files shared by cached frames.
    strings: FxHashSet<Arc<str>>,
    /// Estimated bytes held by `cache`, `physical` and `strings`.
    cache_bytes: usize,
    /// Lookups that failed to open a module's file, per module (each is tried once).
    pub open_errors: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer {
            born: Instant::now(),
            allowance: DWARF_ALLOWANCE,
            dwarf_spent: Duration::ZERO,
            deferred: 0,
            indexes: HashMap::new(),
            dwarf: HashMap::new(),
            mappings: None,
            cache: FxHashMap::default(),
            physical: FxHashMap::default(),
            strings: FxHashSet::default(),
            cache_bytes: 0,
            open_errors: 0,
        }
    }
}

impl Symbolizer {
    pub fn symbolize(&mut self, pc: u64, snapshot: Option<&Snapshot>) -> Symbols {
        if let Some(s) = self.cache.get(&pc) {
            return s.clone();
        }
        let (symbols, complete) = self.lookup(pc, snapshot);
        if !complete {
            self.deferred += 1;
            return symbols;
        }
        self.make_room();
        self.cache_bytes += 64 + symbols.len() * std::mem::size_of::<Symbol>();
        self.cache.insert(pc, symbols.clone());
        symbols
    }

    /// The name of the function that physically contains `pc`, from the symbol table
    /// (reliable in release builds, where inlined frames carry short names only).
    pub fn physical_name(&mut self, pc: u64, snapshot: Option<&Snapshot>) -> Option<Arc<str>> {
        if let Some(n) = self.physical.get(&pc) {
            return n.clone();
        }
        let name = self.place(pc, snapshot).and_then(|place| self.symbol_name(&place));
        self.make_room();
        self.cache_bytes += 48;
        self.physical.insert(pc, name.clone());
        name
    }

    /// Starts a batch: notes the addresses about to be symbolized, so that each large module's
    /// symbol tables are read once for all of them (see [`Streamed`]).
    pub fn prefetch(&mut self, pcs: impl IntoIterator<Item = u64>, snapshot: Option<&Snapshot>) {
        let mut seen = FxHashSet::default();
        for pc in pcs {
            if self.cache.contains_key(&pc) || !seen.insert(pc) {
                continue;
            }
            let Some(place) = self.place(pc, snapshot) else { continue };
            if let Some(index) = self.index(&place.path) {
                index.note(place.probe);
            }
        }
        for index in self.indexes.values_mut().flatten() {
            index.resolve_pending();
        }
    }

    /// Ends a batch: drops the debug info parsed for it, unmaps the files and closes them.
    /// The collector calls it once a window's profiles are built.
    pub fn release(&mut self) {
        self.dwarf.clear();
        self.mappings = None;
        for index in self.indexes.values_mut().flatten() {
            index.release();
        }
    }

    /// Bytes held between batches: module indexes and the caches.
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        let indexes: usize = self.indexes.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, FileIndex::bytes)).sum();
        indexes + self.cache_bytes
    }

    /// Files whose debug info is parsed and mapped now (0 after [`Symbolizer::release`]).
    #[cfg(test)]
    pub fn dwarf_open(&self) -> usize {
        self.dwarf.values().flatten().count()
    }

    fn make_room(&mut self) {
        if self.cache_bytes >= CACHE_BYTES {
            self.cache.clear();
            self.physical.clear();
            self.strings.clear();
            self.cache_bytes = 0;
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strings.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.cache_bytes += s.len() + 32;
        self.strings.insert(a.clone());
        a
    }

    /// The module file holding `pc` and the address in that file.
    fn place(&mut self, pc: u64, snapshot: Option<&Snapshot>) -> Option<Place> {
        if let Some(module) = snapshot.and_then(|s| s.module_for(pc)) {
            if module.path.is_empty() {
                return None;
            }
            let path: Arc<str> = self.intern_path(&module.path);
            return Some(Place { path, probe: pc.wrapping_sub(module.bias) });
        }
        let m = self.mappings.get_or_insert_with(read_mappings).iter().find_map(|list| {
            let i = list.partition_point(|m| m.start <= pc);
            list[..i].iter().rev().take(4).find(|m| pc < m.end)
        })?;
        let (path, offset) = (m.path.clone(), pc - m.start + m.offset);
        let index = self.index(&path)?;
        let probe = index.vaddr_of_offset(offset)?;
        Some(Place { path, probe })
    }

    fn intern_path(&mut self, path: &str) -> Arc<str> {
        match self.indexes.get_key_value(path) {
            Some((k, _)) => k.clone(),
            None => Arc::from(path),
        }
    }

    fn index(&mut self, path: &Arc<str>) -> Option<&mut FileIndex> {
        if !self.indexes.contains_key(path) {
            let index = FileIndex::build(path);
            if index.is_none() {
                self.open_errors += 1;
            }
            self.indexes.insert(path.clone(), index);
        }
        self.indexes.get_mut(path)?.as_mut()
    }

    /// The symbol table's name for the function holding `place`, demangled.
    fn symbol_name(&mut self, place: &Place) -> Option<Arc<str>> {
        let index = self.index(&place.path)?;
        let f = index.function(place.probe)?;
        if let Some(name) = index.names.get(&f.name) {
            return Some(name.clone());
        }
        let raw = index.name_of(f)?;
        let name = self.intern(&clean(&addr2line::demangle_auto(Cow::Owned(raw), None)));
        let index = self.index(&place.path)?;
        if index.names.len() >= MAX_NAMES {
            index.names.clear();
        }
        index.names.insert(f.name, name.clone());
        Some(name)
    }

    /// A symbolizer with all the time it needs for debug info.
    #[cfg(test)]
    pub fn unhurried() -> Self {
        Symbolizer { allowance: Duration::from_secs(3600), ..Symbolizer::default() }
    }

    /// When reading debug info must stop for now: its budget is [`DWARF_ALLOWANCE`] plus
    /// [`DWARF_SHARE`] of the time since the symbolizer was made, less what was spent.
    fn dwarf_deadline(&self) -> Instant {
        let budget = self.allowance + self.born.elapsed() / DWARF_SHARE;
        Instant::now() + budget.saturating_sub(self.dwarf_spent)
    }

    /// The frames at `pc`, and whether they are complete (false: debug info was left unread
    /// for lack of time).
    fn lookup(&mut self, pc: u64, snapshot: Option<&Snapshot>) -> (Symbols, bool) {
        let unknown = |file: &str, addr: u64| -> (Symbols, bool) {
            let base = file.rsplit('/').next().unwrap_or(file);
            let function = if base.is_empty() { format!("0x{addr:x}") } else { format!("{base}+0x{addr:x}") };
            (Arc::from(vec![Symbol { function: function.into(), file: file.into(), line: 0 }]), true)
        };
        let in_vdso = snapshot.and_then(|s| s.module_for(pc)).is_some_and(|m| m.path.is_empty());
        let Some(place) = self.place(pc, snapshot) else {
            return match snapshot.and_then(|s| s.module_for(pc)) {
                Some(m) if in_vdso => unknown("[vdso]", pc.wrapping_sub(m.bias)),
                _ => unknown("", pc),
            };
        };
        if self.index(&place.path).is_none() {
            return unknown(&place.path, place.probe);
        }
        let deadline = self.dwarf_deadline();
        let Some(Some(index)) = self.indexes.get_mut(&place.path) else {
            return unknown(&place.path, place.probe);
        };
        let mut frames = Vec::new();
        let mut complete = true;
        if index.has_dwarf {
            let start = Instant::now();
            if start >= deadline {
                complete = false;
            } else {
                let dwarf = self.dwarf.entry(place.path.clone()).or_insert_with(|| dwarf::DwarfFile::open(&place.path));
                if let Some(dwarf) = dwarf {
                    let units = index.units.get_or_insert_with(|| dwarf.index());
                    match dwarf.frames(units, place.probe, deadline) {
                        Some(f) => frames = f,
                        None => complete = false,
                    }
                }
                self.dwarf_spent += start.elapsed();
            }
        }
        let mut out = Vec::with_capacity(frames.len().max(1));
        for frame in frames {
            let function = match frame.function {
                Some(raw) => self.intern(&clean(&addr2line::demangle_auto(Cow::Owned(raw), None))),
                None => match self.symbol_name(&place) {
                    Some(name) => name,
                    None => continue,
                },
            };
            let file = self.intern(if frame.file.is_empty() { &place.path } else { &frame.file });
            out.push(Symbol { function, file, line: frame.line });
        }
        if out.is_empty() {
            match self.symbol_name(&place) {
                Some(function) => {
                    let file = self.intern(&place.path);
                    out.push(Symbol { function, file, line: 0 });
                }
                None => return unknown(&place.path, place.probe),
            }
        }
        (Arc::from(out), complete)
    }
}

/// One function of a symbol table: `[start, start + size)` in the file's addresses; its name
/// is the NUL-terminated string at file offset `name`.
#[derive(Clone, Copy)]
struct Function {
    start: u64,
    size: u32,
    name: u32,
}

/// A loadable segment: file offset and size, address in the file.
#[derive(Clone, Copy)]
struct Load {
    offset: u64,
    size: u64,
    vaddr: u64,
}

/// An ELF symbol table section: where its entries and their names lie in the file.
struct SymbolTable {
    endian: object::Endianness,
    offset: u64,
    size: u64,
    /// File offset of the string table its names index.
    strings: u64,
}

type ElfSym = object::elf::Sym64<object::Endianness>;

/// Symbol entries read from a file at a time.
const SYMBOLS_CHUNK: usize = 2048;

impl SymbolTable {
    /// Calls `f` with each defined function of the table, in table order, reading the table
    /// through a buffer of [`SYMBOLS_CHUNK`] entries. None when the file cannot be read.
    fn each_function(&self, file: &File, mut f: impl FnMut(Function)) -> Option<()> {
        const ENTRY: usize = std::mem::size_of::<ElfSym>();
        let endian = self.endian;
        // u64 words: aligned for the entries.
        let mut words = vec![0u64; SYMBOLS_CHUNK * ENTRY / 8];
        let mut at = 0u64;
        while at + ENTRY as u64 <= self.size {
            let n = (((self.size - at) / ENTRY as u64) as usize).min(SYMBOLS_CHUNK);
            let bytes = &mut object::pod::bytes_of_slice_mut(&mut words)[..n * ENTRY];
            file.read_exact_at(bytes, self.offset + at).ok()?;
            let (syms, _) = object::pod::slice_from_bytes::<ElfSym>(bytes, n).ok()?;
            for sym in syms {
                let t = sym.st_type();
                let value = sym.st_value(endian);
                if (t != object::elf::STT_FUNC && t != object::elf::STT_GNU_IFUNC)
                    || sym.st_shndx(endian) == object::elf::SHN_UNDEF
                    || value == 0
                {
                    continue;
                }
                let Ok(name) = u32::try_from(self.strings + u64::from(sym.st_name(endian))) else { continue };
                let size = u32::try_from(sym.st_size(endian)).unwrap_or(u32::MAX);
                f(Function { start: value, size, name });
            }
            at += (n * ENTRY) as u64;
        }
        Some(())
    }
}

impl SymbolTable {
    /// The table's functions whose start is not in `known` (sorted by start), one per start
    /// (the table's first symbol there), sorted by start. Built in one vector of the exact
    /// size and sorted in place: a stable sort would take a scratch copy as large (Node's
    /// `.symtab` gives 1.4 MB of entries), so the table is read once more instead, to put the
    /// first symbol of each start that has several at the front of its run.
    fn new_functions(&self, file: &File, known: &[Function]) -> Option<Vec<Function>> {
        let is_new = |f: &Function| known.binary_search_by_key(&f.start, |k| k.start).is_err();
        let mut count = 0;
        self.each_function(file, |f| count += is_new(&f) as usize)?;
        let mut out = Vec::with_capacity(count);
        self.each_function(file, |f| {
            if out.len() < count && is_new(&f) {
                out.push(f);
            }
        })?;
        out.sort_unstable_by_key(|f| f.start);
        if out.windows(2).any(|w| w[0].start == w[1].start) {
            // One bit per entry: set once the front of its run holds the run's first symbol.
            let mut placed = vec![0u64; out.len().div_ceil(64)];
            self.each_function(file, |f| {
                let i = out.partition_point(|g| g.start < f.start);
                let run = out.get(i + 1).is_some_and(|g| g.start == f.start);
                if run && placed[i / 64] & (1 << (i % 64)) == 0 {
                    placed[i / 64] |= 1 << (i % 64);
                    out[i] = f;
                }
            })?;
            out.dedup_by_key(|f| f.start);
        }
        Some(out)
    }
}

/// Modules with more function symbols than this are not indexed: their tables are read
/// again for each batch of addresses ([`Streamed`]). 32768 entries are 512 KB of index.
const STREAMED_ABOVE: usize = 1 << 15;

/// A large module's symbol tables, read once per batch of addresses instead of kept as an
/// index (Node's would hold 1.3 MB for the life of the process): the batch's addresses are
/// noted first ([`Symbolizer::prefetch`]), then one pass over the tables finds the function
/// of each. A pass also tells, for each address, how far its answer holds (up to the next
/// symbol's start): those spans are kept across batches, so an address in a function met
/// before needs no pass, and a long-running program's windows, whose new addresses mostly
/// lie in functions already seen, seldom read the tables again. An address met outside a
/// batch and outside every span costs a pass of its own.
struct Streamed {
    tables: Vec<SymbolTable>,
    /// This batch's answers: the function holding each address noted, if any.
    found: FxHashMap<u64, Option<Function>>,
    /// Addresses noted for the next pass.
    pending: Vec<u64>,
    /// What earlier passes found, by the start of each span (see [`Span`]); at most
    /// `span_limit` ([`MAX_SPANS`]), emptied when full.
    spans: BTreeMap<u64, Span>,
    span_limit: usize,
    /// Passes over the tables so far.
    passes: u64,
}

/// Addresses from a span's start (its function's start, or 0 below every symbol) up to `end`
/// (the next symbol's start) all have the same greatest symbol start at or below them, so
/// one answer serves them all: `function` if the address lies within its size, else none.
#[derive(Clone, Copy)]
struct Span {
    end: u64,
    /// The symbol with the greatest start at or below the span's addresses, its size as the
    /// index reads it (a size-0 entry reaches to the next start).
    function: Option<Function>,
}

impl Span {
    fn answer(&self, probe: u64) -> Option<Function> {
        self.function.filter(|f| probe - f.start < u64::from(f.size))
    }
}

/// Spans kept per streamed module: 4096 are about 200 KB, more than the functions a
/// program's hot paths touch.
const MAX_SPANS: usize = 4096;

impl Streamed {
    /// The answer an earlier pass gives for `probe`, if a kept span covers it.
    fn known(&self, probe: u64) -> Option<Option<Function>> {
        let (_, span) = self.spans.range(..=probe).next_back()?;
        (probe < span.end).then(|| span.answer(probe))
    }

    /// The span of each of `probes` (sorted, distinct): the symbol holding it as the index of
    /// the same tables would give it (the entry with the greatest start at or below the
    /// address, the first table's, and within it the first symbol's, for a start several
    /// have; a size-0 entry reaching to the next start), and the next start above it. One
    /// pass over each table, remembering for each gap between two probes the greatest and
    /// the least start in it.
    fn resolve(&self, file: &File, probes: &[u64]) -> Option<Vec<(u64, Span)>> {
        let n = probes.len();
        // Gap i holds the starts in (probes[i - 1], probes[i]]; gap n those above the last.
        let mut best: Vec<Option<Function>> = vec![None; n];
        let mut least = vec![u64::MAX; n + 1];
        let mut last_start = 0;
        for table in &self.tables {
            table.each_function(file, |f| {
                last_start = last_start.max(f.start);
                let i = probes.partition_point(|p| *p < f.start);
                least[i] = least[i].min(f.start);
                if let Some(slot) = best.get_mut(i) {
                    if slot.is_none_or(|b| f.start > b.start) {
                        *slot = Some(f);
                    }
                }
            })?;
        }
        // The least start above probes[k] is the least of gaps k + 1 ..= n.
        let mut next_above = vec![u64::MAX; n];
        let mut m = u64::MAX;
        for k in (0..n).rev() {
            m = m.min(least[k + 1]);
            next_above[k] = m;
        }
        let mut holder: Option<Function> = None;
        let spans = best
            .into_iter()
            .zip(next_above)
            .map(|(gap, end)| {
                holder = gap.or(holder);
                let function = holder.map(|f| Function {
                    // A size-0 entry reaches to the next start, which lies above the span's
                    // addresses; the last entry of all covers its start alone.
                    size: match f.size {
                        0 if f.start < last_start => u32::MAX,
                        0 => 1,
                        size => size,
                    },
                    ..f
                });
                (function.map_or(0, |f| f.start), Span { end, function })
            })
            .collect();
        Some(spans)
    }
}

/// What is kept of one module file between batches.
struct FileIndex {
    path: Arc<str>,
    loads: Vec<Load>,
    /// Sorted by start, one per start; empty when the module is `streamed`.
    functions: Vec<Function>,
    streamed: Option<Streamed>,
    has_dwarf: bool,
    /// Which debug info unit covers which addresses, built on first use.
    units: Option<dwarf::UnitIndex>,
    /// Open during a batch, to read names; closed by [`Symbolizer::release`].
    file: Option<File>,
    /// Demangled names by their offset in the file (every address of a function met again
    /// is named without reading and demangling its name again); at most [`MAX_NAMES`],
    /// emptied when full.
    names: FxHashMap<u32, Arc<str>>,
}

/// Demangled names kept per module: 8192 are about 200 KB with their table.
const MAX_NAMES: usize = 8192;

impl FileIndex {
    /// Reads the file's headers and its function symbols. The symbol tables are streamed
    /// through a small buffer (Node's are 4.4 MB), not mapped, and the table is sized by a
    /// counting pass first: building an index adds no file pages and no spare capacity to the
    /// resident set.
    fn build(path: &Arc<str>) -> Option<FileIndex> {
        Self::build_with(path, STREAMED_ABOVE)
    }

    /// [`FileIndex::build`], streaming the tables when they hold more than `stream_above`
    /// function symbols.
    fn build_with(path: &Arc<str>, stream_above: usize) -> Option<FileIndex> {
        let cache = object::read::ReadCache::new(File::open(&**path).ok()?);
        let (loads, has_dwarf, tables) = {
            let data = &cache;
            let header = object::elf::FileHeader64::<object::Endianness>::parse(data).ok()?;
            let endian = header.endian().ok()?;
            let loads: Vec<Load> = header
                .program_headers(endian, data)
                .ok()?
                .iter()
                .filter(|p| p.p_type(endian) == object::elf::PT_LOAD)
                .map(|p| Load { offset: p.p_offset(endian), size: p.p_filesz(endian), vaddr: p.p_vaddr(endian) })
                .collect();
            let sections = header.sections(endian, data).ok()?;
            let has_dwarf = sections
                .section_by_name(endian, b".debug_info")
                .or_else(|| sections.section_by_name(endian, b".zdebug_info"))
                .is_some_and(|(_, s)| s.sh_type(endian) != object::elf::SHT_NOBITS && s.sh_size(endian) > 0);
            let tables: Vec<SymbolTable> = [object::elf::SHT_SYMTAB, object::elf::SHT_DYNSYM]
                .into_iter()
                .filter_map(|kind| {
                    let table = sections.iter().find(|s| s.sh_type(endian) == kind)?;
                    let strings = sections.section(table.link(endian)).ok()?;
                    Some(SymbolTable {
                        endian,
                        offset: table.sh_offset(endian),
                        size: table.sh_size(endian),
                        strings: strings.sh_offset(endian),
                    })
                })
                .collect();
            (loads, has_dwarf, tables)
        };
        let file = cache.into_inner();
        let mut count = 0;
        for table in &tables {
            table.each_function(&file, |_| count += 1)?;
        }
        if count > stream_above {
            let streamed = Streamed {
                tables,
                found: FxHashMap::default(),
                pending: Vec::new(),
                spans: BTreeMap::new(),
                span_limit: MAX_SPANS,
                passes: 0,
            };
            return Some(FileIndex {
                path: path.clone(),
                loads,
                functions: Vec::new(),
                streamed: Some(streamed),
                has_dwarf,
                units: None,
                file: Some(file),
                names: FxHashMap::default(),
            });
        }
        // One entry per start address; the first table wins (.symtab names local functions
        // too), and within a table the first symbol. Later tables add only new addresses.
        let mut functions: Vec<Function> = Vec::new();
        for table in &tables {
            let added = table.new_functions(&file, &functions)?;
            if functions.is_empty() {
                functions = added;
            } else if !added.is_empty() {
                // Every start is distinct now: an unstable sort keeps the same entries.
                functions.reserve_exact(added.len());
                functions.extend_from_slice(&added);
                functions.sort_unstable_by_key(|f| f.start);
            }
        }
        // A size-0 entry reaches to the next function.
        for i in 0..functions.len() {
            if functions[i].size == 0 {
                let next = functions.get(i + 1).map_or(functions[i].start + 1, |n| n.start);
                functions[i].size = u32::try_from(next - functions[i].start).unwrap_or(u32::MAX);
            }
        }
        // In place: shrinking a block does not move it.
        functions.shrink_to_fit();
        Some(FileIndex {
            path: path.clone(),
            loads,
            functions,
            streamed: None,
            has_dwarf,
            units: None,
            file: Some(file),
            names: FxHashMap::default(),
        })
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        std::mem::size_of::<FileIndex>()
            + self.loads.capacity() * std::mem::size_of::<Load>()
            + self.functions.capacity() * std::mem::size_of::<Function>()
            + self.units.as_ref().map_or(0, dwarf::UnitIndex::bytes)
            + self.streamed.as_ref().map_or(0, |s| s.spans.len() * (8 + std::mem::size_of::<Span>()))
            + self.names.capacity() * (4 + std::mem::size_of::<Arc<str>>())
    }

    /// The file address of a file offset, through the segment that loads it.
    fn vaddr_of_offset(&self, offset: u64) -> Option<u64> {
        let l = self.loads.iter().find(|l| l.offset <= offset && offset < l.offset + l.size)?;
        Some(offset - l.offset + l.vaddr)
    }

    /// Notes `probe` for the next pass over a streamed module's tables, unless a kept span
    /// answers it.
    fn note(&mut self, probe: u64) {
        if let Some(s) = &mut self.streamed {
            if !s.found.contains_key(&probe) && s.known(probe).is_none() {
                s.pending.push(probe);
            }
        }
    }

    /// Finds the functions of the addresses noted since the last pass (streamed modules).
    fn resolve_pending(&mut self) {
        let Some(s) = &mut self.streamed else { return };
        if s.pending.is_empty() {
            return;
        }
        let mut probes = std::mem::take(&mut s.pending);
        probes.sort_unstable();
        probes.dedup();
        if self.file.is_none() {
            self.file = File::open(&*self.path).ok();
        }
        s.passes += 1;
        let Some(spans) = self.file.as_ref().and_then(|file| s.resolve(file, &probes)) else {
            s.found.extend(probes.into_iter().map(|p| (p, None)));
            return;
        };
        if s.spans.len() + spans.len() > s.span_limit {
            s.spans.clear();
        }
        for (probe, (start, span)) in probes.into_iter().zip(spans) {
            s.found.insert(probe, span.answer(probe));
            if s.spans.len() < s.span_limit {
                s.spans.insert(start, span);
            }
        }
    }

    /// The function holding `probe`.
    fn function(&mut self, probe: u64) -> Option<Function> {
        if self.streamed.is_some() {
            self.note(probe);
            self.resolve_pending();
            let s = self.streamed.as_ref()?;
            return s.found.get(&probe).copied().or_else(|| s.known(probe)).flatten();
        }
        let i = self.functions.partition_point(|f| f.start <= probe).checked_sub(1)?;
        let f = self.functions[i];
        (probe - f.start < u64::from(f.size)).then_some(f)
    }

    /// Forgets what was found for the batch (streamed modules; the spans stay) and closes the
    /// file.
    fn release(&mut self) {
        self.file = None;
        if let Some(s) = &mut self.streamed {
            s.found = FxHashMap::default();
            s.pending = Vec::new();
        }
    }

    /// The raw (mangled) name of the function holding `probe`.
    #[cfg(test)]
    fn function_name(&mut self, probe: u64) -> Option<String> {
        let f = self.function(probe)?;
        self.name_of(f)
    }

    /// The raw (mangled) name of `f`, read from the file.
    fn name_of(&mut self, f: Function) -> Option<String> {
        if self.file.is_none() {
            self.file = File::open(&*self.path).ok();
        }
        let file = self.file.as_ref()?;
        let mut buf = vec![0u8; 256];
        loop {
            let n = file.read_at(&mut buf, u64::from(f.name)).ok()?;
            if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
                buf.truncate(end);
                return String::from_utf8(buf).ok();
            }
            if n < buf.len() || buf.len() >= MAX_NAME {
                return None;
            }
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// One executable file mapping from /proc/self/maps.
#[derive(Clone)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: Arc<str>,
}

/// Executable file mappings seen by the collector's periodic reads of /proc/self/maps, with
/// when each was last seen: a mapping gone by the end of a window (Node unmaps its second copy
/// of the builtins when its isolate is disposed, before the last window at exit) still names
/// the samples taken while it was there. Entries unseen for [`SEEN_FOR`] are dropped.
static SEEN: crate::sync::Mutex<Vec<(Mapping, Instant)>> = crate::sync::Mutex::new(Vec::new());

/// Most mappings kept in [`SEEN`].
const SEEN_CAP: usize = 4096;
/// How long a mapping no longer there is remembered (longer than any window).
const SEEN_FOR: Duration = Duration::from_secs(600);

/// Notes the executable file mappings of a /proc/self/maps text (collector thread).
pub(crate) fn note_mappings(maps: &str) {
    let now = Instant::now();
    let mut seen = SEEN.lock();
    for m in maps.lines().filter_map(parse_mapping) {
        let same = |s: &Mapping| s.start == m.start && s.end == m.end && s.offset == m.offset && s.path == m.path;
        if let Some((_, at)) = seen.iter_mut().find(|(s, _)| same(s)) {
            *at = now;
        } else if seen.len() < SEEN_CAP {
            seen.push((m, now));
        }
    }
    seen.retain(|(_, at)| now.duration_since(*at) < SEEN_FOR);
}

pub(crate) fn prepare_fork() {
    SEEN.fork_hold();
}

pub(crate) fn after_fork() {
    SEEN.fork_release();
}

/// The process's executable file mappings now, then those seen recently, each sorted by
/// address.
fn read_mappings() -> [Vec<Mapping>; 2] {
    let mut now: Vec<Mapping> = match std::fs::read_to_string("/proc/self/maps") {
        Ok(text) => text.lines().filter_map(parse_mapping).collect(),
        Err(_) => Vec::new(),
    };
    let mut seen: Vec<Mapping> = SEEN.lock().iter().map(|(m, _)| m.clone()).collect();
    now.sort_by_key(|m| m.start);
    seen.sort_by_key(|m| m.start);
    [now, seen]
}

/// Whether the code at `[start, end)` lies in one executable file mapping of this process whose
/// file has a non-empty `.symtab`: code the symbolizer names from that file's own symbols,
/// local functions included (a binding can then leave such code out of the JIT code map).
pub fn named_by_file_symbols(start: u64, end: u64) -> bool {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return false };
    let Some(mapping) = maps.lines().filter_map(parse_mapping).find(|m| m.start <= start && end <= m.end) else {
        return false;
    };
    let Ok(file) = File::open(&*mapping.path) else { return false };
    let cache = object::read::ReadCache::new(file);
    let data = &cache;
    let Ok(header) = object::elf::FileHeader64::<object::Endianness>::parse(data) else { return false };
    let Ok(endian) = header.endian() else { return false };
    let Ok(sections) = header.sections(endian, data) else { return false };
    sections.iter().any(|s| s.sh_type(endian) == object::elf::SHT_SYMTAB && s.sh_size(endian) > 0)
}

/// `start-end perms offset dev inode path`, kept when executable and backed by a file.
fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut fields = line.split_ascii_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let offset = fields.next()?;
    let (_dev, _inode) = (fields.next()?, fields.next()?);
    let path = fields.next()?;
    if !perms.contains('x') || !path.starts_with('/') || fields.next().is_some() {
        return None; // not executable, anonymous, or "(deleted)"
    }
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path: Arc::from(path),
    })
}

/// Drops the `::h0123456789abcdef` hash that legacy Rust mangling leaves on names.
fn clean(name: &str) -> String {
    match name.rfind("::h") {
        Some(i) if name.len() - i == 19 && name[i + 3..].bytes().all(|b| b.is_ascii_hexdigit()) => name[..i].to_owned(),
        _ => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn marker_function_for_symbolizer() -> u64 {
        marker_function_for_symbolizer as *const () as u64
    }

    #[test]
    fn symbolizes_own_function_with_file_and_line() {
        crate::unwind::refresh();
        let pc = marker_function_for_symbolizer() + 1;
        let mut s = Symbolizer::unhurried();
        let frames = s.symbolize(pc, crate::unwind::current());
        let top = frames.last().unwrap();
        assert!(top.function.ends_with("marker_function_for_symbolizer"), "{frames:?}");
        assert!(top.file.ends_with("symbolize.rs"), "{frames:?}");
        assert!(top.line > 0);
        let physical = s.physical_name(pc, crate::unwind::current()).unwrap();
        assert!(physical.ends_with("marker_function_for_symbolizer"), "{physical}");
    }

    /// Past its time budget, debug info is left for a later window: the address is named
    /// from the symbol table meanwhile and not cached, so it gets its line once time allows.
    #[test]
    fn debug_info_past_its_budget_is_deferred_not_lost() {
        crate::unwind::refresh();
        let pc = marker_function_for_symbolizer() + 1;
        let mut s =
            Symbolizer { allowance: Duration::ZERO, dwarf_spent: Duration::from_secs(3600), ..Symbolizer::default() };
        let frames = s.symbolize(pc, crate::unwind::current());
        assert!(frames[0].function.ends_with("marker_function_for_symbolizer"), "{frames:?}");
        assert_eq!((frames[0].line, s.deferred, s.dwarf_open()), (0, 1, 0), "{frames:?}");
        s.dwarf_spent = Duration::ZERO;
        s.allowance = Duration::from_secs(3600);
        let frames = s.symbolize(pc, crate::unwind::current());
        assert!(frames.last().unwrap().file.ends_with("symbolize.rs") && frames.last().unwrap().line > 0, "{frames:?}");
        assert_eq!(s.deferred, 1);
    }

    #[test]
    fn strips_legacy_hash() {
        assert_eq!(clean("foo::bar::h0123456789abcdef"), "foo::bar");
        assert_eq!(clean("foo::hash"), "foo::hash");
    }

    /// A C fixture in a fresh temporary folder: `lib.c` with one function in `.text` and one
    /// in a second executable segment far above it (a linker script, `-z separate-code`).
    struct Fixture {
        dir: std::path::PathBuf,
    }

    const FIXTURE_C: &str = "__attribute__((noinline)) int fixture_in_text(int x) { return x * 3 + 1; }\n\
        __attribute__((noinline, section(\".fartext\"))) int fixture_in_far_segment(int x) { return x * 5 + 2; }\n\
        #ifdef MAIN\nint main(void) { return fixture_in_text(1) + fixture_in_far_segment(2) > 1000; }\n#endif\n";
    const FAR_LD: &str =
        "SECTIONS { . = ALIGN(CONSTANT (MAXPAGESIZE)) + 0x200000; .fartext : { *(.fartext) } } INSERT AFTER .fini;\n";

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir = std::env::temp_dir().join(format!("pyroscope-symbols-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("lib.c"), FIXTURE_C).unwrap();
            std::fs::write(dir.join("far.ld"), FAR_LD).unwrap();
            Fixture { dir }
        }

        /// Runs gcc in the fixture's folder (a missing gcc fails the test: it is a build
        /// dependency of the test suite).
        fn gcc(&self, args: &[&str]) -> std::path::PathBuf {
            let out = std::process::Command::new("gcc")
                .current_dir(&self.dir)
                .args(["-O1", "-Wl,-z,separate-code", "-Wl,-T,far.ld", "lib.c"])
                .args(args)
                .output()
                .expect("gcc must be installed to build the symbolizer's fixtures");
            assert!(out.status.success(), "gcc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            self.dir.join(args[args.iter().position(|a| *a == "-o").unwrap() + 1])
        }

        /// The file's PT_LOAD segments: (file offset, file size, address, executable).
        fn loads(path: &std::path::Path) -> Vec<(u64, u64, u64, bool)> {
            let data = std::fs::read(path).unwrap();
            let header = object::elf::FileHeader64::<object::Endianness>::parse(&*data).unwrap();
            let endian = header.endian().unwrap();
            header
                .program_headers(endian, &*data)
                .unwrap()
                .iter()
                .filter(|p| p.p_type(endian) == object::elf::PT_LOAD)
                .map(|p| {
                    (
                        p.p_offset(endian),
                        p.p_filesz(endian),
                        p.p_vaddr(endian),
                        p.p_flags(endian).contains(object::elf::PF_X),
                    )
                })
                .collect()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Maps the executable segments of `path` at addresses the kernel picks, as a program
    /// that maps a file itself does; returns (address in file, address mapped) per segment.
    fn map_executable_segments(path: &std::path::Path) -> Vec<(u64, u64)> {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        let mut out = Vec::new();
        for (offset, size, vaddr, exec) in Fixture::loads(path) {
            if !exec {
                continue;
            }
            let page = offset & !0xfff;
            // SAFETY: a fresh private read-only mapping the test leaks (it stays valid for the
            // rest of the test process); nothing else uses that range.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    (size + offset - page) as usize,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE,
                    file.as_raw_fd(),
                    page as i64,
                )
            };
            assert_ne!(p, libc::MAP_FAILED);
            out.push((vaddr - (offset - page), p as u64));
        }
        out
    }

    fn function_at(s: &mut Symbolizer, pc: u64) -> Symbols {
        s.symbolize(pc, crate::unwind::current())
    }

    /// A shared library (PIE) loaded by the loader, with two executable segments, with and
    /// without debug info: both functions are named, with file and line when it has them.
    #[test]
    fn names_every_executable_segment_of_a_loaded_library() {
        let fx = Fixture::new("dlopen");
        for (lib, debug) in [("plain.so", false), ("debug.so", true)] {
            let mut args = vec!["-fPIC", "-shared", "-o", lib];
            if debug {
                args.push("-g");
            }
            let path = fx.gcc(&args);
            let segments = Fixture::loads(&path).iter().filter(|l| l.3).count();
            assert_eq!(segments, 2, "fixture must have two executable segments");
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: loads our fixture, which has no constructors; never closed.
            let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW) };
            assert!(!handle.is_null());
            crate::unwind::refresh();
            let mut s = Symbolizer::unhurried();
            for name in ["fixture_in_text", "fixture_in_far_segment"] {
                let sym = std::ffi::CString::new(name).unwrap();
                // SAFETY: a valid handle and a NUL-terminated name.
                let addr = unsafe { libc::dlsym(handle, sym.as_ptr()) } as u64;
                assert_ne!(addr, 0);
                let frames = function_at(&mut s, addr + 1);
                assert_eq!(&*frames[0].function, name, "{lib}: {frames:?}");
                if debug {
                    assert!(
                        frames[0].file.ends_with("lib.c")
                            && frames[0].line == 1 + (name == "fixture_in_far_segment") as u32,
                        "{frames:?}"
                    );
                }
            }
        }
    }

    /// The same file mapped a second time by the program (as Node maps part of its text
    /// again), PIE and non-PIE: addresses in the second mapping are named from the file.
    #[test]
    fn names_a_file_mapped_again_pie_and_non_pie() {
        let fx = Fixture::new("mapped");
        let pie = fx.gcc(&["-fPIC", "-shared", "-o", "pie.so"]);
        let exe = fx.gcc(&["-DMAIN", "-no-pie", "-fno-pie", "-o", "exe"]);
        let status = std::process::Command::new(&exe).status().unwrap();
        assert!(status.success(), "the non-PIE fixture runs");
        for path in [pie, exe] {
            let mut s = Symbolizer::unhurried();
            let funcs = FileIndex::build(&Arc::from(path.to_str().unwrap())).unwrap();
            let mapped = map_executable_segments(&path);
            crate::unwind::refresh();
            for (name, f) in ["fixture_in_text", "fixture_in_far_segment"]
                .iter()
                .map(|n| (n, funcs.functions.iter().find(|f| function_name_of(&funcs, f) == *n).unwrap()))
            {
                let (vaddr, addr) = *mapped.iter().filter(|(v, _)| *v <= f.start).max_by_key(|(v, _)| *v).unwrap();
                let pc = addr + (f.start - vaddr) + 1;
                let frames = function_at(&mut s, pc);
                assert_eq!(&*frames[0].function, *name, "{path:?}: {frames:?}");
                assert_eq!(s.physical_name(pc, crate::unwind::current()).as_deref(), Some(*name));
            }
        }
    }

    /// A mapping seen by the collector's periodic read of /proc/self/maps and gone by the time
    /// the window is named (Node unmaps its second copy of the builtins before the last
    /// window at exit) still names its addresses.
    #[test]
    fn names_a_mapping_gone_before_the_window_closes() {
        let fx = Fixture::new("gone");
        let path = fx.gcc(&["-fPIC", "-shared", "-o", "gone.so"]);
        let index = FileIndex::build(&Arc::from(path.to_str().unwrap())).unwrap();
        let f = *index.functions.iter().find(|f| function_name_of(&index, f) == "fixture_in_far_segment").unwrap();
        let (vaddr, addr) =
            *map_executable_segments(&path).iter().filter(|(v, _)| *v <= f.start).max_by_key(|(v, _)| *v).unwrap();
        note_mappings(&std::fs::read_to_string("/proc/self/maps").unwrap());
        // SAFETY: unmaps the page this test mapped (the far segment is under one page).
        assert_eq!(unsafe { libc::munmap(addr as *mut libc::c_void, 4096) }, 0);
        crate::unwind::refresh();
        let mut s = Symbolizer::unhurried();
        let frames = function_at(&mut s, addr + (f.start - vaddr) + 1);
        assert_eq!(&*frames[0].function, "fixture_in_far_segment", "{frames:?}");
    }

    /// Code of a file with a symbol table is found named by it; memory that is no file's code
    /// is not.
    #[test]
    fn tells_code_named_by_its_files_symbols() {
        let pc = marker_function_for_symbolizer();
        assert!(named_by_file_symbols(pc, pc + 1), "the test binary has a .symtab");
        let heap = Box::new(0u64);
        let at = &*heap as *const u64 as u64;
        assert!(!named_by_file_symbols(at, at + 8), "heap memory is no file's code");
        let fx = Fixture::new("stripped");
        let path = fx.gcc(&["-fPIC", "-shared", "-s", "-o", "stripped.so"]);
        let (_, addr) = map_executable_segments(&path)[0];
        assert!(!named_by_file_symbols(addr, addr + 1), "a stripped file has no .symtab");
    }

    /// The streamed index holds what reading both symbol tables whole gives: every defined
    /// function, one per start address, the first table's (and within it the first) symbol
    /// winning, size-0 entries reaching to the next function.
    #[test]
    fn streamed_index_matches_the_whole_symbol_tables() {
        let path = std::env::current_exe().unwrap();
        let data = std::fs::read(&path).unwrap();
        let header = object::elf::FileHeader64::<object::Endianness>::parse(&*data).unwrap();
        let endian = header.endian().unwrap();
        let sections = header.sections(endian, &*data).unwrap();
        let mut expected = Vec::new();
        for kind in [object::elf::SHT_SYMTAB, object::elf::SHT_DYNSYM] {
            let Ok(table) = sections.symbols(endian, &*data, kind) else { continue };
            let strings = sections.section(table.string_section()).unwrap().sh_offset(endian);
            for sym in table.symbols() {
                let t = sym.st_type();
                let value = sym.st_value(endian);
                if (t == object::elf::STT_FUNC || t == object::elf::STT_GNU_IFUNC)
                    && sym.st_shndx(endian) != object::elf::SHN_UNDEF
                    && value != 0
                {
                    let name = strings + u64::from(sym.st_name(endian));
                    expected.push((value, sym.st_size(endian), name));
                }
            }
        }
        expected.sort_by_key(|f| f.0);
        expected.dedup_by_key(|f| f.0);
        for i in 0..expected.len() {
            if expected[i].1 == 0 {
                expected[i].1 = expected.get(i + 1).map_or(1, |n| n.0 - expected[i].0);
            }
        }
        let index = FileIndex::build_with(&Arc::from(path.to_str().unwrap()), usize::MAX).unwrap();
        let got: Vec<(u64, u64, u64)> =
            index.functions.iter().map(|f| (f.start, u64::from(f.size), u64::from(f.name))).collect();
        assert!(expected.len() > 1000, "{}", expected.len());
        assert!(got == expected, "{} functions streamed, {} expected", got.len(), expected.len());
    }

    /// A module whose tables are read per batch names every address as its index would:
    /// starts, insides, last bytes, the bytes past each function, batched or one at a time.
    #[test]
    fn streamed_tables_find_what_the_index_finds() {
        let path: Arc<str> = Arc::from(std::env::current_exe().unwrap().to_str().unwrap());
        let mut index = FileIndex::build_with(&path, usize::MAX).unwrap();
        let mut streamed = FileIndex::build_with(&path, 0).unwrap();
        assert!(index.streamed.is_none() && streamed.streamed.is_some() && streamed.functions.is_empty());
        let mut probes: Vec<u64> = index
            .functions
            .iter()
            .step_by(7)
            .flat_map(|f| {
                let size = u64::from(f.size);
                [f.start, f.start + size / 2, f.start + size.saturating_sub(1), f.start + size, f.start.wrapping_sub(1)]
            })
            .collect();
        probes.push(0);
        probes.push(u64::MAX);
        let expected: Vec<Option<(u64, String)>> =
            probes.iter().map(|&p| index.function(p).map(|f| (f.start, index.function_name(p).unwrap()))).collect();
        assert!(expected.iter().filter(|e| e.is_none()).count() > 2, "some probes lie outside every function");
        // One batch, all its spans kept.
        streamed.streamed.as_mut().unwrap().span_limit = usize::MAX;
        for &p in &probes {
            streamed.note(p);
        }
        streamed.resolve_pending();
        let batched: Vec<_> =
            probes.iter().map(|p| streamed.streamed.as_ref().unwrap().found.get(p).copied()).collect();
        assert!(batched.iter().all(Option::is_some), "every noted address was looked up");
        let got: Vec<_> = probes
            .iter()
            .map(|&p| streamed.function(p).map(|f| (f.start, streamed.function_name(p).unwrap())))
            .collect();
        assert!(got == expected, "batched answers differ from the index's");
        // One at a time, after the batch is forgotten: the spans kept answer them, and other
        // addresses of the same functions, without another pass.
        streamed.release();
        let passes = |s: &FileIndex| s.streamed.as_ref().unwrap().passes;
        assert_eq!(passes(&streamed), 1);
        for (&p, want) in probes.iter().zip(&expected).step_by(97) {
            assert_eq!(streamed.function(p).map(|f| (f.start, streamed.function_name(p).unwrap())), *want, "{p:#x}");
        }
        let insides: Vec<u64> = index.functions.iter().step_by(7).map(|f| f.start + u64::from(f.size) / 3).collect();
        for &p in &insides {
            let want = index.function(p).map(|f| f.start);
            assert_eq!(streamed.function(p).map(|f| f.start), want, "{p:#x}");
        }
        assert_eq!(passes(&streamed), 1, "addresses inside functions found before need no pass");
        // A function no probe came near needs a pass, and is named as the index names it.
        let far = index.functions.iter().skip(3).step_by(7).find(|f| f.size > 2).unwrap();
        let p = far.start + 1;
        assert_eq!(streamed.function(p).map(|f| f.start), Some(far.start));
        assert_eq!(passes(&streamed), 2);
    }

    /// Kept spans stay within their limit, and what a full set forgets is found again.
    #[test]
    fn kept_spans_are_bounded() {
        let path: Arc<str> = Arc::from(std::env::current_exe().unwrap().to_str().unwrap());
        let index = FileIndex::build_with(&path, usize::MAX).unwrap();
        let mut streamed = FileIndex::build_with(&path, 0).unwrap();
        streamed.streamed.as_mut().unwrap().span_limit = 8;
        let probes: Vec<u64> = index.functions.iter().step_by(11).take(100).map(|f| f.start).collect();
        for batch in probes.chunks(5) {
            for &p in batch {
                streamed.note(p);
            }
            streamed.resolve_pending();
            streamed.release();
            assert!(streamed.streamed.as_ref().unwrap().spans.len() <= 8);
        }
        for &p in &probes {
            assert_eq!(streamed.function(p).map(|f| f.start), Some(p), "{p:#x}");
            streamed.release();
        }
    }

    fn function_name_of(index: &FileIndex, f: &Function) -> String {
        let mut index = FileIndex {
            path: index.path.clone(),
            loads: Vec::new(),
            functions: vec![*f],
            streamed: None,
            has_dwarf: false,
            units: None,
            file: None,
            names: FxHashMap::default(),
        };
        index.function_name(f.start).unwrap()
    }

    /// Addresses spread over this test binary (full debug info, many units): a few per
    /// function, inside the function.
    fn own_addresses(step: usize) -> (Arc<str>, u64, Vec<u64>) {
        crate::unwind::refresh();
        let here = marker_function_for_symbolizer();
        let module = crate::unwind::current().unwrap().module_for(here).unwrap().clone();
        let path: Arc<str> = Arc::from(module.path.as_str());
        let index = FileIndex::build_with(&path, usize::MAX).unwrap();
        let pcs = index
            .functions
            .iter()
            .step_by(step)
            .flat_map(|f| [f.start, f.start + u64::from(f.size) / 2, f.start + u64::from(f.size).saturating_sub(1)])
            .map(|probe| probe + module.bias)
            .filter(|pc| module.text.contains(pc))
            .collect();
        (path, module.bias, pcs)
    }

    /// Our per-unit reading of the debug info names what addr2line's whole-file parse names:
    /// the same inlined frames, demangled functions, files and lines.
    #[test]
    fn frames_match_addr2line() {
        let (path, bias, pcs) = own_addresses(7);
        assert!(pcs.len() > 1000, "{}", pcs.len());
        let loader = addr2line::Loader::new(&*path).unwrap();
        let mut s = Symbolizer::unhurried();
        let (mut same, mut inlined, mut total) = (0, 0, 0);
        let mut differ = Vec::new();
        for (n, pc) in pcs.into_iter().enumerate() {
            let mut expected = Vec::new();
            let mut frames = loader.find_frames(pc - bias).unwrap();
            while let Ok(Some(f)) = frames.next() {
                let Some(name) = f.function.as_ref().and_then(|f| f.demangle().ok()) else { continue };
                let (file, line) = f.location.map(|l| (l.file.unwrap_or(""), l.line.unwrap_or(0))).unwrap_or(("", 0));
                // Where the debug info names no file, we give the module's path.
                let file = if file.is_empty() { &*path } else { file };
                expected.push((clean(&name), file.to_owned(), line));
            }
            if expected.is_empty() {
                continue;
            }
            total += 1;
            inlined += (expected.len() > 1) as usize;
            let got: Vec<(String, String, u32)> = s
                .symbolize(pc, crate::unwind::current())
                .iter()
                .map(|f| (f.function.to_string(), f.file.to_string(), f.line))
                .collect();
            if got == expected {
                same += 1;
            } else if differ.len() < 5 {
                let short = |v: &[(String, String, u32)]| -> Vec<String> {
                    v.iter()
                        .map(|(f, file, l)| {
                            format!("{} {}:{l}", &f[..f.len().min(50)], file.rsplit('/').next().unwrap_or(""))
                        })
                        .collect()
                };
                differ.push((pc - bias, short(&got), short(&expected)));
            }
            if n % 500 == 0 {
                s.release();
            }
        }
        assert!(inlined > 100, "addresses in inlined code: {inlined}");
        assert_eq!(same, total, "{same} of {total} match; first differences: {differ:#?}");
    }

    /// KiB of a /proc/self/status field.
    fn status_kib(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    const RSS_CHILD: &str = "PYROSCOPE_TEST_SYMBOLS_RSS_CHILD";

    /// Run by [`symbolizer_rss_stays_within_budget`] in a process of its own: names every
    /// function of this test binary (full debug info) in batches, as windows do, and prints
    /// the peak resident memory this added.
    #[test]
    #[ignore = "run by symbolizer_rss_stays_within_budget in a child process"]
    fn symbolizer_rss_child() {
        if std::env::var_os(RSS_CHILD).is_none() {
            return;
        }
        let (_, _, mut pcs) = own_addresses(1);
        // A fixed workload (about the test binary's function count when the budget was set):
        // the binary grows with the crate, and the budget is for a given amount of naming.
        pcs.truncate(90_000);
        // Reset the peak to the resident set now (proc(5), clear_refs).
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = status_kib("VmRSS:");
        let mut s = Symbolizer::unhurried();
        for batch in pcs.chunks(2000) {
            for &pc in batch {
                std::hint::black_box(s.symbolize(pc, crate::unwind::current()));
            }
            s.release();
        }
        assert_eq!(s.dwarf_open(), 0);
        let peak = status_kib("VmHWM:");
        println!(
            "symbolized={} added_kib={} held_bytes={} rss_now_kib={} anon_kib={} file_kib={}",
            pcs.len(),
            peak.saturating_sub(before),
            s.held_bytes(),
            status_kib("VmRSS:").saturating_sub(before),
            status_kib("RssAnon:"),
            status_kib("RssFile:")
        );
    }

    /// The memory budget: naming every function of a binary with debug info, window after
    /// window, adds at most [`BUDGET_BYTES`] to the process's peak resident memory, and what
    /// stays held between windows is within it too.
    #[test]
    fn symbolizer_rss_stays_within_budget() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "symbolize::tests::symbolizer_rss_child",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(RSS_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let field = |name: &str| -> usize {
            let at = stdout.find(name).unwrap_or_else(|| panic!("no {name} in {stdout}")) + name.len();
            stdout[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        };
        eprintln!("{}", stdout.lines().find(|l| l.contains("added_kib")).unwrap_or(""));
        assert!(field("symbolized=") > 10_000);
        assert!(field("added_kib=") * 1024 <= BUDGET_BYTES, "{stdout}");
        assert!(field("held_bytes=") <= BUDGET_BYTES, "{stdout}");
    }

    #[test]
    fn parses_executable_file_mappings_only() {
        let m = parse_mapping("7f10da600000-7f10da792000 r-xp 014c4000 fe:00 247580   /usr/bin/node").unwrap();
        assert_eq!((m.start, m.end, m.offset, &*m.path), (0x7f10da600000, 0x7f10da792000, 0x14c4000, "/usr/bin/node"));
        assert!(parse_mapping("00400000-00b6f000 r--p 00000000 fe:00 247580 /usr/bin/node").is_none());
        assert!(parse_mapping("7f10e194d000-7f10e194f000 r-xp 00000000 00:00 0 [vdso]").is_none());
        assert!(parse_mapping("7f10e194d000-7f10e194f000 r-xp 00000000 00:00 0").is_none());
        assert!(parse_mapping("7f1-7f2 r-xp 00000000 fe:00 1 /tmp/x (deleted)").is_none());
    }
}
