//! Source maps: frames of transpiled or bundled code (TypeScript, esbuild, webpack) named after
//! their sources, as @pyroscope/nodejs's `SourceMapper` names them.
//!
//! `SourceMapper.create(dirs)` (lib/sourcemapper.js) finds and reads the `.map` files; this
//! module parses them (the `sourcemap` crate, regular and index maps) into a [`SourceMaps`]
//! keyed by the generated file each one describes. `init({ sourceMapper })` makes that set the
//! process's ([`activate`]): from then on a JavaScript function whose script has a map is named
//! from its mapped position where V8 reports its code (`jit.rs`) and in heap profiles
//! (`heap.rs`): the original file, line, and name when the map has one.
//!
//! V8 places a function at its parameter list's `(`, 1-based. The map's token there gives the
//! source file and line; its name is rarely set there (tsc writes none; minifiers name the
//! identifier before the `(`), so when V8's own name is the identifier that ends at the `(` and
//! the token that starts it carries a name, that name is the function's (`a` in a minified
//! bundle is `findNearestVehicle` again).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use napi_derive::napi;
use sourcemap::{DecodedMap, SourceMap};

/// The maps in force (`activate`), read wherever a frame is named.
static ACTIVE: RwLock<Option<Arc<Maps>>> = RwLock::new(None);

/// Parsed maps by the absolute path of the generated file they describe.
#[derive(Default)]
struct Maps {
    by_generated: HashMap<String, Entry>,
}

struct Entry {
    map: SourceMap,
    /// The map file's directory: relative sources resolve against it.
    dir: PathBuf,
}

/// A generated location mapped back to its source.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapped {
    /// The source file, absolute when the map names it relative to itself.
    pub file: String,
    /// 1-based.
    pub line: u32,
    /// 1-based.
    pub column: u32,
    /// The source's name of the function, when the map has one.
    pub name: Option<String>,
}

impl Maps {
    /// The source position of `script`'s `line`:`column` (1-based, as V8 reports a function's
    /// start), given V8's name for the function there (empty when anonymous).
    fn lookup(&self, script: &str, line: u32, column: u32, v8_name: &str) -> Option<Mapped> {
        let entry = self.by_generated.get(script)?;
        let (line0, col0) = (line.checked_sub(1)?, column.saturating_sub(1));
        let token = if column == 0 {
            // No column (a line-only position): the line's first mapping.
            entry.map.tokens().find(|t| t.get_dst_line() == line0)?
        } else {
            entry.map.lookup_token(line0, col0)?
        };
        // A token on an earlier line maps some other code: none here, as source-map's
        // `originalPositionFor` answers.
        if token.get_dst_line() != line0 {
            return None;
        }
        let source = token.get_source()?;
        let mut name = token.get_name().map(str::to_owned);
        if name.is_none() && !v8_name.is_empty() {
            // The identifier V8 named the function after, when it ends at the `(`.
            let start = col0.checked_sub(v8_name.len() as u32);
            if let Some(ident) = start.and_then(|start| entry.map.lookup_token(line0, start)) {
                if ident.get_dst_line() == line0 && Some(ident.get_dst_col()) == start {
                    name = ident.get_name().map(str::to_owned);
                }
            }
        }
        Some(Mapped {
            file: resolve(&entry.dir, source),
            line: token.get_src_line() + 1,
            column: token.get_src_col() + 1,
            name,
        })
    }
}

/// `source` as a path: relative ones against the map's directory, normalized; URLs
/// (`webpack://...`) and absolute paths as they are.
fn resolve(dir: &Path, source: &str) -> String {
    if source.contains("://") || source.starts_with('/') {
        return source.to_owned();
    }
    let mut out = PathBuf::new();
    for part in dir.join(source).components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out.to_string_lossy().into_owned()
}

/// The maps in force map `script`'s `line`:`column` (see [`Maps::lookup`]).
pub(crate) fn lookup(script: &str, line: u32, column: u32, v8_name: &str) -> Option<Mapped> {
    let active = ACTIVE.read().unwrap_or_else(|e| e.into_inner());
    active.as_ref()?.lookup(script, line, column, v8_name)
}

/// One source map as `SourceMapper.create` found it.
#[napi(object)]
pub struct MapFile {
    /// The generated file it describes (absolute), when a `sourceMappingURL` annotation in
    /// that file named it; else the map's `file`, or the map's own path without `.map`,
    /// whichever exists.
    pub generated: Option<String>,
    /// The absolute path of the `.map` file (for an inline map, of the generated file): its
    /// directory is where relative sources resolve.
    pub path: String,
    pub text: String,
}

/// A mapped location, as @pyroscope/nodejs's `SourceMapper.mappingInfo` returns it.
#[napi(object)]
pub struct MappedLocation {
    pub file: String,
    pub line: u32,
    pub column: u32,
    pub name: Option<String>,
}

/// A set of parsed source maps (the native side of a `SourceMapper`).
#[napi]
pub struct SourceMaps {
    maps: Arc<Maps>,
    errors: Vec<String>,
}

fn decode(text: &str) -> std::result::Result<SourceMap, String> {
    match sourcemap::decode_slice(text.as_bytes()) {
        Ok(DecodedMap::Regular(map)) => Ok(map),
        Ok(DecodedMap::Index(index)) => index.flatten().map_err(|e| e.to_string()),
        // React Native's Hermes maps: not code Node runs.
        Ok(DecodedMap::Hermes(_)) => Err("a Hermes source map".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

#[napi]
impl SourceMaps {
    /// Parses `files` in order; a generated file keeps the first map found for it. A map that
    /// does not parse, or whose generated file is not there, is left out with a line in
    /// `errors`.
    #[napi(factory)]
    pub fn parse(files: Vec<MapFile>) -> SourceMaps {
        let mut maps = Maps::default();
        let mut errors = Vec::new();
        for f in files {
            let map = match decode(&f.text) {
                Ok(map) => map,
                Err(e) => {
                    errors.push(format!("{}: not a source map: {e}", f.path));
                    continue;
                }
            };
            let dir = Path::new(&f.path).parent().unwrap_or(Path::new("/")).to_path_buf();
            let generated = f.generated.or_else(|| {
                let named = map.get_file().filter(|file| !file.is_empty()).map(|file| resolve(&dir, file));
                let beside = f.path.strip_suffix(".map").map(str::to_owned);
                named.into_iter().chain(beside).find(|g| Path::new(g).is_file())
            });
            let Some(generated) = generated else {
                errors.push(format!("{}: the generated file it describes is not there", f.path));
                continue;
            };
            maps.by_generated.entry(generated).or_insert(Entry { map, dir });
        }
        SourceMaps { maps: Arc::new(maps), errors }
    }

    /// The files that could not be parsed, one line each.
    #[napi(getter)]
    pub fn errors(&self) -> Vec<String> {
        self.errors.clone()
    }

    /// The generated files the maps describe (absolute paths).
    #[napi]
    pub fn generated_files(&self) -> Vec<String> {
        let mut files: Vec<String> = self.maps.by_generated.keys().cloned().collect();
        files.sort();
        files
    }

    /// `file`:`line`:`column` (1-based) mapped to its source; `name` is V8's name of a function
    /// starting there (empty when anonymous). None when no map covers it.
    #[napi]
    pub fn lookup(&self, file: String, line: u32, column: u32, name: Option<String>) -> Option<MappedLocation> {
        let m = self.maps.lookup(&file, line, column, name.as_deref().unwrap_or(""))?;
        Some(MappedLocation { file: m.file, line: m.line, column: m.column, name: m.name })
    }

    /// Makes these maps the process's: frames named from now on are mapped.
    #[napi]
    pub fn activate(&self) {
        *ACTIVE.write().unwrap_or_else(|e| e.into_inner()) = Some(self.maps.clone());
    }
}
