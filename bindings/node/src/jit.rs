//! V8's JIT code events, named the way @pyroscope/nodejs (pprof-nodejs) names frames, into the
//! core's code map.
//!
//! V8 names a JavaScript function's code `JS:<tier><name> <script>:<line>:<column>` (tier `~`
//! interpreted, `^` baseline, `+` Maglev, `*` optimized; the name is empty for anonymous
//! functions) and other code `<Kind>:<name>` (`Builtin:`, `RegExp:`, `Stub:`, ...). A
//! function's frame is `<file>:<name>:<line>` with the file relative to the working
//! directory (`./app.js`) when it is under it, anonymous functions as
//! `(anonymous:L#<line>:C#<column>)`, in file `<script>` at `<line>`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

use pyroscope_core::FrameId;

#[cfg(pyroscope_node_shim)]
extern "C" {
    fn pyroscope_node_watch_code() -> i32;
    fn pyroscope_node_name_interpreted_frames();
}

/// Whether the addon was built with the shim (V8's JIT code events).
pub const AVAILABLE: bool = cfg!(pyroscope_node_shim);

/// The working directory when code was first watched, with a trailing `/`.
static CWD: OnceLock<String> = OnceLock::new();

pub(crate) fn cwd() -> &'static str {
    CWD.get_or_init(|| {
        let mut d = std::env::current_dir().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        if !d.ends_with('/') {
            d.push('/');
        }
        d
    })
}

/// Starts naming the calling thread's isolate's code; false when the thread has no isolate or
/// the addon has no shim.
pub fn watch() -> bool {
    cwd();
    #[cfg(pyroscope_node_shim)]
    // SAFETY: the shim only asks V8 for the calling thread's isolate and registers a callback
    // that lives as long as the process.
    return unsafe { pyroscope_node_watch_code() != 0 };
    #[cfg(not(pyroscope_node_shim))]
    false
}

/// Gives functions interpreted from now on a frame (and a code event) of their own; functions
/// interpreted before keep the interpreter's shared frame until V8 compiles them. Nothing
/// without the shim (fallback mode names frames from V8's own sampler).
pub fn name_interpreted_frames() {
    #[cfg(pyroscope_node_shim)]
    // SAFETY: the shim sets one V8 flag, which V8 allows at any time after its start.
    unsafe {
        pyroscope_node_name_interpreted_frames()
    };
}

/// A frame: (function, file, line).
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// Names the code V8 called `name`.
pub fn frame_of(name: &str, cwd: &str) -> Frame {
    let Some(js) = name.strip_prefix("JS:") else {
        return Frame { function: name.to_owned(), file: String::new(), line: 0 };
    };
    let js = js.strip_prefix(['~', '^', '+', '*']).unwrap_or(js);
    // `<name> <script>:<line>:<column>`: the script starts at the first ` /` or ` node:` (paths
    // may hold spaces, names rarely a slash), else after the last space.
    let split = js.find(" /").or_else(|| js.find(" node:")).or_else(|| js.rfind(' '));
    let (function, location) = match split {
        Some(i) => (&js[..i], &js[i + 1..]),
        None => (js, ""),
    };
    let mut parts = location.rsplitn(3, ':');
    let (column, line, script) = match (parts.next(), parts.next(), parts.next()) {
        (Some(c), Some(l), Some(s)) if c.parse::<u32>().is_ok() && l.parse::<u32>().is_ok() => {
            (c.parse::<u32>().unwrap_or(0), l.parse::<u32>().unwrap_or(0), s)
        }
        _ => (0, 0, location),
    };
    js_frame(function, script, line, column, cwd)
}

/// Names JavaScript function `function` (empty when anonymous) starting at `line`:`column`
/// (1-based) of `script`: how V8's JIT code names and its heap profiles both read. A script
/// with a source map in force is named from its source (see `sourcemaps.rs`).
pub fn js_frame(function: &str, script: &str, line: u32, column: u32, cwd: &str) -> Frame {
    if let Some(m) = crate::sourcemaps::lookup(script, line, column, function) {
        let name = m.name.as_deref().unwrap_or(function);
        return named(name, &m.file, m.line, m.column, cwd);
    }
    named(function, script, line, column, cwd)
}

fn named(function: &str, script: &str, line: u32, column: u32, cwd: &str) -> Frame {
    let function = if function.is_empty() { format!("(anonymous:L#{line}:C#{column})") } else { function.to_owned() };
    let shown = match script.strip_prefix(cwd) {
        Some(rel) if !cwd.is_empty() && cwd != "/" => format!("./{rel}"),
        _ => script.to_owned(),
    };
    Frame { function: format!("{shown}:{function}:{line}"), file: script.to_owned(), line }
}

/// Called by the shim for each code event of a watched isolate, on that isolate's thread.
/// kind 0: code added at `start` (`len` bytes) named `name`; kind 1: code moved to `new_start`.
///
/// # Safety
/// `name` points at `name_len` readable bytes (or is null with `name_len` 0).
#[no_mangle]
pub unsafe extern "C" fn pyroscope_node_code_event(
    kind: i32,
    start: u64,
    len: u64,
    new_start: u64,
    name: *const u8,
    name_len: usize,
) {
    // Never unwind into V8.
    let _ = catch_unwind(AssertUnwindSafe(|| match kind {
        0 if !name.is_null() => {
            // SAFETY: the caller passes V8's name buffer and its length, valid for this call.
            let bytes = unsafe { std::slice::from_raw_parts(name, name_len) };
            let f = frame_of(&String::from_utf8_lossy(bytes), cwd());
            if let Some(id) = FrameId::new(&f.function, &f.file, f.line) {
                pyroscope_core::jit::code_added(start, len, id);
            }
        }
        1 => pyroscope_core::jit::code_moved(start, new_start),
        _ => {}
    }));
}
