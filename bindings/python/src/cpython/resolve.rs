//! Names the frames [`walk`](super::walk) recorded. Collector thread, without the GIL.
//!
//! The words hold raw code-object addresses that may be stale by now (the code object freed,
//! its memory reused). Each is validated with guarded reads before a cache is used: its type is
//! `PyCode_Type`, its `co_firstlineno` is the one captured, its `co_qualname` pointer has the
//! 16-bit tag the walker recorded, and its `co_qualname`/`co_filename` pointers are the ones the
//! cache entry was built from. Frames that fail are dropped and
//! counted. Addresses are never INCREF'd (no GIL here, and the object may be gone).
//!
//! Names as pyroscope-io 1.4 sends them: function = `co_qualname` (`Thread.run`,
//! `main.<locals>.worker`), file = `co_filename` as is, line = the line of `lasti`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pyroscope_core::fault;
use pyroscope_core::{FrameId, LabelSet};
use rustc_hash::FxHashMap;

use super::linetable;
use super::offsets as off;
use super::walk::{name_tag, thread_ident, unpack, CODE_MASK, HEADER, RUN_END, TRUNCATED};
use super::Runtime;

pub use pyroscope_core::Resolver;

/// Longest string read (characters); longer names are cut.
const MAX_CHARS: usize = 1024;
/// Largest line table read.
const MAX_LINETABLE: usize = 1 << 20;
/// Entries kept per cache before it is cleared.
const MAX_ENTRIES: usize = 1 << 16;

/// Frames the resolver dropped because their code object failed validation, and frames named.
pub(crate) static DROPPED: AtomicU64 = AtomicU64::new(0);
pub(crate) static NAMED: AtomicU64 = AtomicU64::new(0);

/// One named frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Named {
    pub(crate) function: Arc<str>,
    pub(crate) file: Arc<str>,
    pub(crate) line: u32,
}

struct Code {
    qualname_ptr: usize,
    filename_ptr: usize,
    qualname: Arc<str>,
    filename: Arc<str>,
    linetable: Vec<u8>,
}

/// Turns walk words into frames and labels; see the module doc.
pub struct PyResolver {
    labels: fn(u64, u64) -> Option<LabelSet>,
    /// FxHash: keyed by addresses and small integers from our own walks, looked up for every
    /// frame of every sample (SipHash was most of the cost of naming a frame).
    codes: FxHashMap<(u64, i32), Code>,
    lines: FxHashMap<(u64, i32, i32), (u32, Option<FrameId>)>,
    /// Scratch for [`Resolver::resolve`], which does not need the runs.
    ends: Vec<usize>,
    /// The root frame of stacks the walker cut (`[truncated]`, as the core names native ones).
    truncated: Option<FrameId>,
}

impl PyResolver {
    /// `labels(context_key, thread_ident)` gives the labels of a sample (see `labels::lookup`).
    pub fn new(labels: fn(u64, u64) -> Option<LabelSet>) -> Self {
        PyResolver {
            labels,
            codes: FxHashMap::default(),
            lines: FxHashMap::default(),
            ends: Vec::new(),
            truncated: None,
        }
    }

    /// Names the frames in `words` (leaf first) into `out`, dropping those that fail validation.
    pub(crate) fn names(&mut self, words: &[u64], out: &mut Vec<Named>) {
        let Some(rt) = super::runtime() else {
            return;
        };
        for pair in words.get(HEADER..).unwrap_or(&[]).chunks_exact(2) {
            match self.frame(rt, pair[0], pair[1]) {
                Some((code, &mut (line, _))) => {
                    out.push(Named { function: code.qualname.clone(), file: code.filename.clone(), line })
                }
                None => {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// One frame: validates the code object, then finds it in the caches: its code entry and its
    /// (line, frame id) slot, the id made by the first caller that needs it.
    fn frame(&mut self, rt: &Runtime, tagged: u64, packed: u64) -> Option<(&Code, &mut (u32, Option<FrameId>))> {
        let (lasti, firstlineno) = unpack(packed);
        let code = tagged & CODE_MASK;
        let addr = code as usize;
        let o = rt.offsets;
        if fault::read_u64(addr + off::OB_TYPE).ok()? != rt.code_type as u64
            || fault::read_u32(addr + o.code_firstlineno).ok()? as i32 != firstlineno
        {
            return None;
        }
        let qualname_ptr = fault::read_u64(addr + o.code_qualname).ok()? as usize;
        if u64::from(name_tag(qualname_ptr)) != tagged >> 48 {
            return None; // another code object now lives at this address
        }
        let filename_ptr = fault::read_u64(addr + o.code_filename).ok()? as usize;
        let key = (code, firstlineno);
        let fresh =
            self.codes.get(&key).is_some_and(|c| c.qualname_ptr == qualname_ptr && c.filename_ptr == filename_ptr);
        if !fresh {
            let entry = read_code(rt, addr, qualname_ptr, filename_ptr)?;
            if self.codes.len() >= MAX_ENTRIES {
                self.codes.clear();
                self.lines.clear();
            }
            self.lines.retain(|k, _| (k.0, k.1) != key);
            self.codes.insert(key, entry);
        }
        let entry = self.codes.get(&key)?;
        if self.lines.len() >= MAX_ENTRIES {
            self.lines.clear();
        }
        let slot = self.lines.entry((code, firstlineno, lasti)).or_insert_with(|| {
            // `configure(line_no=LineNo...)`: the line running, the function's first, or none.
            let line = match crate::agent::LINE_NO.load(Ordering::Relaxed) {
                1 => u32::try_from(firstlineno).unwrap_or(0),
                2 => 0,
                _ => linetable::line_at(&entry.linetable, firstlineno, lasti).unwrap_or(0),
            };
            (line, None)
        });
        NAMED.fetch_add(1, Ordering::Relaxed);
        Some((entry, slot))
    }
}

impl Resolver for PyResolver {
    fn resolve(&mut self, words: &[u64], frames: &mut Vec<FrameId>) -> Option<LabelSet> {
        let mut ends = std::mem::take(&mut self.ends);
        ends.clear();
        let labels = self.resolve_runs(words, frames, &mut ends);
        self.ends = ends;
        labels
    }

    fn resolve_runs(&mut self, words: &[u64], frames: &mut Vec<FrameId>, ends: &mut Vec<usize>) -> Option<LabelSet> {
        if words.len() < HEADER {
            return None;
        }
        if let Some(rt) = super::runtime() {
            for pair in words[HEADER..].chunks_exact(2) {
                // After this frame (named or dropped), one eval-function call's run ends.
                let ends_run = pair[1] & RUN_END != 0;
                match self.frame(rt, pair[0], pair[1]) {
                    Some((code, (line, id))) => {
                        if id.is_none() {
                            *id = FrameId::new(&code.qualname, &code.filename, *line);
                        }
                        if let Some(id) = *id {
                            frames.push(id);
                        }
                    }
                    None => {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if ends_run {
                    ends.push(frames.len());
                }
            }
            if words[1] & TRUNCATED != 0 && !frames.is_empty() {
                if self.truncated.is_none() {
                    self.truncated = FrameId::new("[truncated]", "", 0);
                }
                frames.extend(self.truncated);
            }
        }
        (self.labels)(words[0], thread_ident(words[1]))
    }

    // `labels` takes the label registry's lock: held across fork in the core's order (after the
    // resolver's lock, before the label table's), so the child never inherits it held.
    fn prepare_fork(&mut self) {
        crate::labels::before_fork();
    }

    fn after_fork(&mut self, _child: bool) {
        crate::labels::after_fork();
    }
}

/// Reads a code object's names and line table, then checks the object still holds the same
/// name pointers (it was not freed and reused while we read).
fn read_code(rt: &Runtime, addr: usize, qualname_ptr: usize, filename_ptr: usize) -> Option<Code> {
    let o = rt.offsets;
    let qualname = read_str(rt, qualname_ptr)?;
    let filename = read_str(rt, filename_ptr)?;
    let table = fault::read_u64(addr + o.code_linetable).ok()? as usize;
    if fault::read_u64(table + off::OB_TYPE).ok()? as usize != rt.bytes_type {
        return None;
    }
    let len = fault::read_u64(table + off::OB_SIZE).ok()? as usize;
    if len > MAX_LINETABLE {
        return None;
    }
    let mut linetable = vec![0u8; len];
    fault::read_bytes(&mut linetable, table + off::BYTES_SVAL).ok()?;
    let still = fault::read_u64(addr + o.code_qualname).ok()? as usize == qualname_ptr
        && fault::read_u64(addr + o.code_filename).ok()? as usize == filename_ptr
        && fault::read_u64(addr + off::OB_TYPE).ok()? as usize == rt.code_type;
    still.then(|| Code { qualname_ptr, filename_ptr, qualname: qualname.into(), filename: filename.into(), linetable })
}

/// Reads a `str` object: compact ASCII, or compact with 1, 2 or 4 bytes per character.
/// At most [`MAX_CHARS`] characters.
pub(crate) fn read_str(rt: &Runtime, addr: usize) -> Option<String> {
    if fault::read_u64(addr + off::OB_TYPE).ok()? as usize != rt.unicode_type {
        return None;
    }
    let length = (fault::read_u64(addr + off::UNICODE_LENGTH).ok()? as usize).min(MAX_CHARS);
    let state = fault::read_u32(addr + off::UNICODE_STATE).ok()?;
    let (kind, compact, ascii) = ((state >> 2) & 7, state & 32 != 0, state & 64 != 0);
    if !compact {
        return None;
    }
    let o = rt.offsets;
    if ascii {
        let mut buf = vec![0u8; length];
        fault::read_bytes(&mut buf, addr + o.unicode_ascii_size).ok()?;
        return String::from_utf8(buf).ok();
    }
    let data = addr + o.unicode_compact_size;
    let width = match kind {
        1 | 2 | 4 => kind as usize,
        _ => return None,
    };
    let mut buf = vec![0u8; length * width];
    fault::read_bytes(&mut buf, data).ok()?;
    let chars = buf.chunks_exact(width).map(|c| match width {
        1 => u32::from(c[0]),
        2 => u32::from(u16::from_ne_bytes([c[0], c[1]])),
        _ => u32::from_ne_bytes([c[0], c[1], c[2], c[3]]),
    });
    Some(chars.map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER)).collect())
}
