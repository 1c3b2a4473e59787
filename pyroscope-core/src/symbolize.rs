//! PC -> function, file, line (inlined frames included), demangled. Collector thread only.
//!
//! One `addr2line::Loader` per module file, opened on first use; results cached per address
//! in a bounded map that is cleared when full (profiles revisit the same hot addresses, so a
//! clear costs one re-lookup each).

use std::collections::HashMap;
use std::sync::Arc;

use crate::unwind::Snapshot;

/// Most cached addresses before the cache is cleared.
const CACHE_CAP: usize = 64 * 1024;

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

#[derive(Default)]
pub(crate) struct Symbolizer {
    loaders: HashMap<String, Option<addr2line::Loader>>,
    cache: HashMap<u64, Symbols>,
    physical: HashMap<u64, Option<Arc<str>>>,
    /// Lookups that failed to open a module's file, per module (each is tried once).
    pub open_errors: u64,
}

impl Symbolizer {
    pub fn symbolize(&mut self, pc: u64, snapshot: Option<&Snapshot>) -> Symbols {
        if let Some(s) = self.cache.get(&pc) {
            return s.clone();
        }
        if self.cache.len() >= CACHE_CAP {
            self.cache.clear();
        }
        let symbols = self.lookup(pc, snapshot);
        self.cache.insert(pc, symbols.clone());
        symbols
    }

    /// The name of the function that physically contains `pc`, from the symbol table
    /// (reliable in release builds, where inlined frames carry short names only).
    pub fn physical_name(&mut self, pc: u64, snapshot: Option<&Snapshot>) -> Option<Arc<str>> {
        if let Some(n) = self.physical.get(&pc) {
            return n.clone();
        }
        if self.physical.len() >= CACHE_CAP {
            self.physical.clear();
        }
        let name = snapshot.and_then(|s| s.module_for(pc)).and_then(|module| {
            if module.path.is_empty() {
                return None;
            }
            let loader =
                self.loaders.entry(module.path.clone()).or_insert_with(|| addr2line::Loader::new(&module.path).ok());
            let raw = loader.as_ref()?.find_symbol(pc.wrapping_sub(module.bias))?;
            Some(Arc::from(clean(&addr2line::demangle_auto(raw.into(), None))))
        });
        self.physical.insert(pc, name.clone());
        name
    }

    fn lookup(&mut self, pc: u64, snapshot: Option<&Snapshot>) -> Symbols {
        let unknown = |file: &str, addr: u64| -> Symbols {
            let base = file.rsplit('/').next().unwrap_or(file);
            let function = if base.is_empty() { format!("0x{addr:x}") } else { format!("{base}+0x{addr:x}") };
            Arc::from(vec![Symbol { function: function.into(), file: file.into(), line: 0 }])
        };
        let Some(module) = snapshot.and_then(|s| s.module_for(pc)) else {
            return unknown("", pc);
        };
        let probe = pc.wrapping_sub(module.bias);
        if module.path.is_empty() {
            return unknown("[vdso]", probe);
        }
        let loader =
            self.loaders.entry(module.path.clone()).or_insert_with(|| addr2line::Loader::new(&module.path).ok());
        let Some(loader) = loader.as_ref() else {
            self.open_errors += 1;
            return unknown(&module.path, probe);
        };
        let mut out = Vec::new();
        if let Ok(mut frames) = loader.find_frames(probe) {
            while let Ok(Some(frame)) = frames.next() {
                let Some(name) = frame.function.as_ref().and_then(|f| f.demangle().ok()) else {
                    continue;
                };
                let (file, line) =
                    frame.location.map(|l| (l.file.unwrap_or(""), l.line.unwrap_or(0))).unwrap_or(("", 0));
                out.push(Symbol { function: clean(&name).into(), file: file.into(), line });
            }
        }
        if out.is_empty() {
            match loader.find_symbol(probe) {
                Some(raw) => {
                    let name = addr2line::demangle_auto(raw.into(), None);
                    out.push(Symbol { function: clean(&name).into(), file: module.path.as_str().into(), line: 0 });
                }
                None => return unknown(&module.path, probe),
            }
        }
        Arc::from(out)
    }
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
        let mut s = Symbolizer::default();
        let frames = s.symbolize(pc, crate::unwind::current());
        let top = frames.last().unwrap();
        assert!(top.function.ends_with("marker_function_for_symbolizer"), "{frames:?}");
        assert!(top.file.ends_with("symbolize.rs"), "{frames:?}");
        assert!(top.line > 0);
    }

    #[test]
    fn strips_legacy_hash() {
        assert_eq!(clean("foo::bar::h0123456789abcdef"), "foo::bar");
        assert_eq!(clean("foo::hash"), "foo::hash");
    }
}
