//! Line info and inlined frames from a module's DWARF, parsed one compilation unit at a time.
//!
//! Kept per module file between batches: [`UnitIndex`], which unit covers which addresses
//! (from `.debug_aranges`, else from each unit's root entry, read once), 16 bytes a range.
//! Held for one batch only ([`DwarfFile`]): a read-only mapping of the file and the decoded
//! units the batch's addresses fell in (line rows and function ranges, 16 bytes each), at most
//! [`UNITS_BYTES`] of them; the mapping's pages are given back to the kernel after each unit
//! is decoded, so what a batch keeps resident is its decoded units, not the file.
//!
//! The lookups follow what addr2line does (rows per sequence, the innermost inlined call
//! containing the address, names from linkage names through abstract origins), without
//! parsing every unit of the file up front.

use std::sync::Arc;
use std::time::Instant;

use addr2line::gimli;
use object::{Object, ObjectSection};

type R = gimli::EndianSlice<'static, gimli::RunTimeEndian>;

/// Bytes of decoded units one batch may keep; the least recently used goes first.
const UNITS_BYTES: usize = 2 << 20;

/// Entries or rows decoded between two hand-backs of the mapping's pages and two looks at
/// the clock.
const PAGES_EVERY: usize = 1024;

/// Deepest nesting of lexical blocks (and other entries) looked through for an inlined call.
const MAX_NESTING: usize = 256;

/// Deepest chain of abstract origins or inlined calls followed.
const MAX_DEPTH: usize = 16;

/// Where an inlined call was made: (file index, line).
type Call = (u32, u32);

/// Called with each unit and its offset in `.debug_info`.
type RootVisitor<'a> = dyn FnMut(&gimli::Unit<R>, u32) + 'a;

/// Decoding stopped at the caller's deadline.
pub(super) struct OutOfTime;

/// One frame found in debug info: function name as written (mangled or not), file, line.
pub(super) struct Frame {
    pub function: Option<String>,
    pub file: String,
    pub line: u32,
}

#[derive(Clone, Copy)]
struct UnitRange {
    start: u64,
    len: u32,
    /// The unit's offset in `.debug_info`.
    unit: u32,
}

/// Which compilation unit covers which addresses; built once per module file.
pub(super) struct UnitIndex {
    ranges: Vec<UnitRange>,
    /// Every unit's offset in `.debug_info`, sorted: to find the unit of a reference into
    /// another unit. Read on the first such reference when `.debug_aranges` made `ranges`
    /// (reading it touches every unit header of the file).
    units: std::cell::OnceCell<Vec<u32>>,
}

impl UnitIndex {
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.ranges.capacity() * std::mem::size_of::<UnitRange>() + self.units.get().map_or(0, |u| u.capacity() * 4)
    }

    fn find(&self, probe: u64) -> Option<u32> {
        let i = self.ranges.partition_point(|r| r.start <= probe);
        // Ranges rarely overlap; look back a little for one that holds the address.
        self.ranges[..i].iter().rev().take(8).find(|r| probe - r.start < u64::from(r.len)).map(|r| r.unit)
    }
}

/// Decoded lines and function ranges of one unit.
struct UnitData {
    offset: u32,
    unit: gimli::Unit<R>,
    /// Function ranges sorted by start: (start, length, entry offset in the unit).
    functions: Vec<(u64, u32, u32)>,
    /// Rows sorted by address; a row with `file == u32::MAX` ends a sequence.
    rows: Vec<Row>,
    files: Vec<Arc<str>>,
    bytes: usize,
}

#[derive(Clone, Copy)]
struct Row {
    address: u64,
    file: u32,
    line: u32,
}

/// A module's debug info, for one batch: the mapping and the units decoded so far.
/// `dwarf` borrows `_owned` and `map`; it is declared first, so it is dropped before them.
pub(super) struct DwarfFile {
    dwarf: gimli::Dwarf<R>,
    units: Vec<UnitData>,
    units_bytes: usize,
    _owned: Vec<Box<[u8]>>,
    map: memmap2::Mmap,
}

impl DwarfFile {
    pub fn open(path: &str) -> Option<DwarfFile> {
        let file = std::fs::File::open(path).ok()?;
        // SAFETY: a read-only private mapping; the slices made from it live in `dwarf`, which
        // is dropped before the mapping (field order), and nothing writes through it.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        // SAFETY: the mapped bytes stay at this address until `map` is dropped, and every
        // reference made from this slice is held by `dwarf`, dropped first.
        let data: &'static [u8] = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        let object = object::File::parse(data).ok()?;
        let endian = if object.is_little_endian() { gimli::RunTimeEndian::Little } else { gimli::RunTimeEndian::Big };
        let mut owned: Vec<Box<[u8]>> = Vec::new();
        let dwarf = gimli::Dwarf::load(|id| -> Result<R, gimli::Error> {
            let bytes: &'static [u8] = match object.section_by_name(id.name()).map(|s| s.uncompressed_data()) {
                Some(Ok(std::borrow::Cow::Borrowed(b))) => b,
                Some(Ok(std::borrow::Cow::Owned(v))) => {
                    let b = v.into_boxed_slice();
                    // SAFETY: the box's heap bytes do not move when the box moves into
                    // `owned`, which is dropped after `dwarf`.
                    let s: &'static [u8] = unsafe { std::slice::from_raw_parts(b.as_ptr(), b.len()) };
                    owned.push(b);
                    s
                }
                _ => &[],
            };
            Ok(gimli::EndianSlice::new(bytes, endian))
        })
        .ok()?;
        Some(DwarfFile { dwarf, units: Vec::new(), units_bytes: 0, _owned: owned, map })
    }

    /// Hands the mapping's pages back to the kernel (they are re-read from the page cache if
    /// touched again), so the file's bytes do not stay in the process's resident set.
    fn drop_pages(&self) {
        // SAFETY: MADV_DONTNEED on a private read-only file mapping only drops its page table
        // entries; the contents read later are the file's, unchanged.
        unsafe { libc::madvise(self.map.as_ptr() as *mut libc::c_void, self.map.len(), libc::MADV_DONTNEED) };
    }

    /// Builds the unit index: from `.debug_aranges` when the file has them, else from every
    /// unit's root entry.
    pub fn index(&self) -> UnitIndex {
        let mut ranges = Vec::new();
        let mut aranges = self.dwarf.debug_aranges.headers();
        while let Ok(Some(header)) = aranges.next() {
            let Ok(unit) = u32::try_from(header.debug_info_offset().0) else { continue };
            let mut entries = header.entries();
            while let Ok(Some(e)) = entries.next() {
                push_range(&mut ranges, e.address(), e.length(), unit);
            }
        }
        let units = std::cell::OnceCell::new();
        if ranges.is_empty() {
            let _ = units.set(self.unit_offsets(Some(&mut |unit, off| {
                let Ok(mut it) = self.dwarf.unit_ranges(unit) else { return };
                while let Ok(Some(r)) = it.next() {
                    push_range(&mut ranges, r.begin, r.end.saturating_sub(r.begin), off);
                }
            })));
        }
        ranges.sort_unstable_by_key(|r| r.start);
        ranges.shrink_to_fit();
        UnitIndex { ranges, units }
    }

    /// Every unit's offset, sorted, from one pass over the unit headers (its pages handed back
    /// as it goes); `root`, when given, gets each unit parsed (its root entry).
    fn unit_offsets(&self, mut root: Option<&mut RootVisitor<'_>>) -> Vec<u32> {
        let mut units = Vec::new();
        let mut headers = self.dwarf.units();
        while let Ok(Some(header)) = headers.next() {
            let Some(off) = header.debug_info_offset().and_then(|o| u32::try_from(o.0).ok()) else { continue };
            units.push(off);
            if units.len() % 16 == 0 {
                self.drop_pages();
            }
            if let Some(root) = root.as_mut() {
                if let Ok(unit) = self.dwarf.unit(header) {
                    root(&unit, off);
                }
            }
        }
        units.sort_unstable();
        units.dedup();
        units.shrink_to_fit();
        self.drop_pages();
        units
    }

    /// The frames at `probe`, innermost first; empty when the debug info does not cover it;
    /// None when decoding its unit would run past `deadline`.
    pub fn frames(&mut self, index: &UnitIndex, probe: u64, deadline: Instant) -> Option<Vec<Frame>> {
        let Some(offset) = index.find(probe) else { return Some(Vec::new()) };
        let i = match self.unit_data(offset, deadline) {
            Ok(Some(i)) => i,
            Ok(None) => return Some(Vec::new()),
            Err(OutOfTime) => return None,
        };
        // Most recently used last.
        let data = self.units.remove(i);
        let frames = self.lookup(index, &data, probe).unwrap_or_default();
        self.units.push(data);
        self.drop_pages();
        Some(frames)
    }

    fn unit_data(&mut self, offset: u32, deadline: Instant) -> Result<Option<usize>, OutOfTime> {
        if let Some(i) = self.units.iter().position(|u| u.offset == offset) {
            return Ok(Some(i));
        }
        let data = self.decode(offset, deadline);
        self.drop_pages();
        let Some(data) = data? else { return Ok(None) };
        while self.units_bytes + data.bytes > UNITS_BYTES && !self.units.is_empty() {
            let old = self.units.remove(0);
            self.units_bytes -= old.bytes;
        }
        self.units_bytes += data.bytes;
        self.units.push(data);
        Ok(Some(self.units.len() - 1))
    }

    fn decode(&self, offset: u32, deadline: Instant) -> Result<Option<UnitData>, OutOfTime> {
        let Ok(header) = self.dwarf.debug_info.header_from_offset(gimli::DebugInfoOffset(offset as usize)) else {
            return Ok(None);
        };
        let Ok(unit) = self.dwarf.unit(header) else { return Ok(None) };
        let mut functions = Vec::new();
        let mut entries = unit.entries();
        let mut n = 0usize;
        while let Ok(Some(entry)) = entries.next_dfs() {
            n += 1;
            if n % PAGES_EVERY == 0 {
                self.drop_pages();
                if Instant::now() > deadline {
                    return Err(OutOfTime);
                }
            }
            if entry.tag() != gimli::DW_TAG_subprogram {
                continue;
            }
            let Ok(die) = u32::try_from(entry.offset().0) else { continue };
            let Ok(mut ranges) = self.dwarf.die_ranges(&unit, entry) else { continue };
            while let Ok(Some(r)) = ranges.next() {
                if r.end > r.begin {
                    functions.push((r.begin, u32::try_from(r.end - r.begin).unwrap_or(u32::MAX), die));
                }
            }
        }
        functions.sort_unstable_by_key(|f| f.0);
        let mut rows = Vec::new();
        let mut files: Vec<Arc<str>> = Vec::new();
        if let Some(program) = unit.line_program.clone() {
            // Rows of each sequence in one vector; sequences put in address order after.
            let mut sequences: Vec<(u64, usize, usize)> = Vec::new();
            let mut start = 0;
            let mut it = program.rows();
            while let Ok(Some((_, row))) = it.next_row() {
                if rows.len() % PAGES_EVERY == PAGES_EVERY - 1 {
                    self.drop_pages();
                    if Instant::now() > deadline {
                        return Err(OutOfTime);
                    }
                }
                if row.end_sequence() {
                    if rows.get(start).is_some_and(|first: &Row| first.address < row.address()) {
                        rows.push(Row { address: row.address(), file: u32::MAX, line: 0 });
                        sequences.push((rows[start].address, start, rows.len()));
                    } else {
                        rows.truncate(start);
                    }
                    start = rows.len();
                    continue;
                }
                let r = Row {
                    address: row.address(),
                    file: u32::try_from(row.file_index()).unwrap_or(0),
                    line: row.line().map_or(0, |l| u32::try_from(l.get()).unwrap_or(0)),
                };
                let open = rows.len() > start;
                match rows.last_mut() {
                    Some(last) if open && last.address == r.address => *last = r,
                    _ => rows.push(r),
                }
            }
            rows.truncate(start);
            if !sequences.is_sorted_by_key(|s| s.0) {
                sequences.sort_unstable_by_key(|s| s.0);
                rows = sequences.iter().flat_map(|&(_, a, b)| rows[a..b].iter().copied()).collect();
            }
            let header = it.header();
            let mut i = 0;
            loop {
                match header.file(i) {
                    Some(file) => files.push(Arc::from(self.render_file(&unit, file, header).unwrap_or_default())),
                    None if i == 0 => files.push(Arc::from("")),
                    None => break,
                }
                i += 1;
            }
        }
        rows.shrink_to_fit();
        functions.shrink_to_fit();
        let bytes = std::mem::size_of::<UnitData>()
            + functions.capacity() * 16
            + rows.capacity() * std::mem::size_of::<Row>()
            + files.iter().map(|f| f.len() + 32).sum::<usize>();
        Ok(Some(UnitData { offset, unit, functions, rows, files, bytes }))
    }

    fn render_file(
        &self,
        unit: &gimli::Unit<R>,
        file: &gimli::FileEntry<R>,
        header: &gimli::LineProgramHeader<R>,
    ) -> Option<String> {
        let mut path = unit.comp_dir.map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
        if file.directory_index() != 0 {
            if let Some(dir) = file.directory(header) {
                path_push(&mut path, &self.dwarf.attr_string(unit, dir).ok()?.to_string_lossy());
            }
        }
        path_push(&mut path, &self.dwarf.attr_string(unit, file.path_name()).ok()?.to_string_lossy());
        Some(path)
    }

    fn lookup(&self, index: &UnitIndex, data: &UnitData, probe: u64) -> Option<Vec<Frame>> {
        let unit = &data.unit;
        let location = |file: u32, line: u32| -> (String, u32) {
            (data.files.get(file as usize).map_or(String::new(), |f| f.to_string()), line)
        };
        let i = data.rows.partition_point(|r| r.address <= probe);
        let here = i.checked_sub(1).map(|i| data.rows[i]).filter(|r| r.file != u32::MAX);
        let (mut file, mut line) = here.map_or((String::new(), 0), |r| location(r.file, r.line));
        let f = data.functions.partition_point(|f| f.0 <= probe);
        let function = data.functions[..f].iter().rev().take(4).find(|f| probe - f.0 < u64::from(f.1));
        let Some(&(_, _, die)) = function else {
            return here.map(|_| vec![Frame { function: None, file, line }]);
        };
        // The subprogram, then each inlined call that contains `probe`, outermost first.
        let mut chain: Vec<(Option<String>, Option<Call>)> = Vec::new();
        let mut offset = gimli::UnitOffset(die as usize);
        for _ in 0..MAX_DEPTH * 4 {
            let mut tree = unit.entries_tree(Some(offset)).ok()?;
            let node = tree.root().ok()?;
            if chain.is_empty() {
                chain.push((self.name(index, unit, node.entry(), MAX_DEPTH), None));
            }
            let next = self.inlined_call(index, unit, node, probe, MAX_NESTING);
            if let Some((name, call, _)) = &next {
                chain.push((name.clone(), Some(*call)));
            }
            match next {
                Some((_, _, o)) => offset = o,
                None => break,
            }
        }
        // Innermost first: each frame's location is where the next inner one was called.
        let mut frames = Vec::with_capacity(chain.len());
        for (name, call) in chain.into_iter().rev() {
            frames.push(Frame { function: name, file: std::mem::take(&mut file), line });
            if let Some((f, l)) = call {
                (file, line) = location(f, l);
            }
        }
        Some(frames)
    }

    /// The inlined call under `node` that contains `probe`, looking through lexical blocks
    /// and other entries but not into nested functions: (name, (call file, call line), entry).
    fn inlined_call(
        &self,
        index: &UnitIndex,
        unit: &gimli::Unit<R>,
        node: gimli::EntriesTreeNode<'_, '_, R>,
        probe: u64,
        depth: usize,
    ) -> Option<(Option<String>, Call, gimli::UnitOffset)> {
        let mut children = node.children();
        while let Ok(Some(child)) = children.next() {
            let entry = child.entry();
            match entry.tag() {
                gimli::DW_TAG_subprogram => continue,
                gimli::DW_TAG_inlined_subroutine => {
                    if !self.contains(unit, entry, probe) {
                        continue;
                    }
                    let call_file = match entry.attr_value(gimli::DW_AT_call_file) {
                        Some(gimli::AttributeValue::FileIndex(i)) => u32::try_from(i).ok(),
                        Some(v) => v.udata_value().and_then(|i| u32::try_from(i).ok()),
                        None => None,
                    };
                    let call_line = entry
                        .attr_value(gimli::DW_AT_call_line)
                        .and_then(|v| v.udata_value())
                        .and_then(|l| u32::try_from(l).ok())
                        .unwrap_or(0);
                    let name = self.name(index, unit, entry, MAX_DEPTH);
                    return Some((name, (call_file.unwrap_or(0), call_line), entry.offset()));
                }
                _ if depth > 0 => {
                    if let Some(found) = self.inlined_call(index, unit, child, probe, depth - 1) {
                        return Some(found);
                    }
                }
                _ => {}
            }
        }
        None
    }

    fn contains(&self, unit: &gimli::Unit<R>, entry: &gimli::DebuggingInformationEntry<R>, probe: u64) -> bool {
        let Ok(mut ranges) = self.dwarf.die_ranges(unit, entry) else { return false };
        while let Ok(Some(r)) = ranges.next() {
            if r.begin <= probe && probe < r.end {
                return true;
            }
        }
        false
    }

    /// An entry's name: its linkage name, else its name, else its abstract origin's or
    /// specification's.
    fn name(
        &self,
        index: &UnitIndex,
        unit: &gimli::Unit<R>,
        entry: &gimli::DebuggingInformationEntry<R>,
        depth: usize,
    ) -> Option<String> {
        let string = |v| self.dwarf.attr_string(unit, v).ok().map(|s| s.to_string_lossy().into_owned());
        for at in [gimli::DW_AT_linkage_name, gimli::DW_AT_MIPS_linkage_name, gimli::DW_AT_name] {
            if let Some(name) = entry.attr_value(at).and_then(string) {
                return Some(name);
            }
        }
        if depth == 0 {
            return None;
        }
        for at in [gimli::DW_AT_abstract_origin, gimli::DW_AT_specification] {
            match entry.attr_value(at) {
                Some(gimli::AttributeValue::UnitRef(off)) => {
                    let e = unit.entry(off).ok()?;
                    return self.name(index, unit, &e, depth - 1);
                }
                Some(gimli::AttributeValue::DebugInfoRef(off)) => {
                    let target = u32::try_from(off.0).ok()?;
                    let units = index.units.get_or_init(|| self.unit_offsets(None));
                    let i = units.partition_point(|u| *u <= target).checked_sub(1)?;
                    let header =
                        self.dwarf.debug_info.header_from_offset(gimli::DebugInfoOffset(units[i] as usize)).ok()?;
                    let other = self.dwarf.unit(header).ok()?;
                    let e = other.entry(off.to_unit_offset(&other.header)?).ok()?;
                    return self.name(index, &other, &e, depth - 1);
                }
                _ => {}
            }
        }
        None
    }
}

fn push_range(ranges: &mut Vec<UnitRange>, start: u64, len: u64, unit: u32) {
    if len > 0 && start > 0 {
        ranges.push(UnitRange { start, len: u32::try_from(len).unwrap_or(u32::MAX), unit });
    }
}

fn path_push(path: &mut String, p: &str) {
    if p.starts_with('/') {
        *path = p.to_owned();
    } else {
        if !path.is_empty() && !path.ends_with('/') {
            path.push('/');
        }
        path.push_str(p);
    }
}
