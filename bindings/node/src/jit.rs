//! V8's JIT code events, named the way @pyroscope/nodejs (pprof-nodejs) names frames, into the
//! core's code map.
//!
//! V8 names a JavaScript function's code `JS:<tier><name> <script>:<line>:<column>` (tier `~`
//! interpreted, `^` baseline, `+` Maglev, `*` optimized; the name is empty for anonymous
//! functions) and other code `<Kind>:<name>` (`Builtin:`, `RegExp:`, `Stub:`, ...). A
//! function's frame is `<file>:<name>:<line>` with the file relative to the working
//! directory (`./app.js`) when it is under it, anonymous functions as
//! `(anonymous:L#<line>:C#<column>)`, in file `<script>` at `<line>`. @pyroscope/nodejs's
//! `shortenPaths` and `stripFilenames` change that for files under `node_modules/` (see
//! [`set_paths`]).

#[cfg(pyroscope_node_shim)]
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
#[cfg(pyroscope_node_shim)]
use std::sync::Mutex;
use std::sync::OnceLock;

use napi::sys;
use pyroscope_core::FrameId;

#[cfg(pyroscope_node_shim)]
extern "C" {
    fn pyroscope_node_isolate() -> *mut c_void;
    fn pyroscope_node_embedded_code(isolate: *mut c_void, start: *mut u64, len: *mut u64);
    fn pyroscope_node_watch_code(isolate: *mut c_void, existing: i32);
    fn pyroscope_node_request_existing_code(isolate: *mut c_void);
    fn pyroscope_node_name_interpreted_frames();
}

/// Whether the addon was built with the shim (V8's JIT code events).
pub const AVAILABLE: bool = cfg!(pyroscope_node_shim);

/// The thread CPU time after which an isolate reports the code it had before it was watched.
/// V8 walks its heap for that and reports some 2,500 pieces of code (a few milliseconds): its
/// builtins, left to the symbol table when [`EMBEDDED`] says so, and the functions of Node's
/// startup. A process that is short-lived or mostly idle never pays for it. Code compiled after
/// the watch began is named as it comes.
#[cfg(pyroscope_node_shim)]
const EXISTING_CODE_AFTER_NS: i64 = 500_000_000;

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

/// How frames show their scripts: [`SHORTEN_PATHS`], [`STRIP_ALL`], [`STRIP_DEPENDENCIES`].
static PATHS: AtomicU8 = AtomicU8::new(0);
/// A script under `node_modules/` shows as its path in its package (`express/lib/router.js`).
const SHORTEN_PATHS: u8 = 1;
/// No frame carries its script as its file (the function's name keeps it).
const STRIP_ALL: u8 = 2;
/// Frames of scripts under `node_modules/` carry no file.
const STRIP_DEPENDENCIES: u8 = 4;

/// Where a dependency's own path starts in `script`: after its last `node_modules/` directory.
fn dependency_path(script: &str) -> Option<usize> {
    const DIR: &str = "node_modules/";
    match script.rfind("/node_modules/") {
        Some(i) => Some(i + 1 + DIR.len()),
        None => script.starts_with(DIR).then_some(DIR.len()),
    }
}

/// Sets @pyroscope/nodejs's `stripFilenames` (`"all"`, `"dependencies"` or none) and
/// `shortenPaths`, which make profiles smaller: they apply to the code named from now on, in
/// every thread (code named before keeps its names).
pub fn set_paths(strip: Option<&str>, shorten: bool) {
    let strip = match strip {
        Some("all") => STRIP_ALL,
        Some("dependencies") => STRIP_DEPENDENCIES,
        _ => 0,
    };
    PATHS.store(strip | if shorten { SHORTEN_PATHS } else { 0 }, Ordering::Relaxed);
}

/// V8's embedded builtins and bytecode handlers, `[start, end)`, when the file that carries
/// them has a symbol table: their code events are left out of the code map, and the core's
/// symbolizer names them from the file (`Builtins_InterpreterEntryTrampoline`), as it names
/// V8's second copy of them (which no code event reports). `None`: they are mapped as any code.
static EMBEDDED: OnceLock<Option<(u64, u64)>> = OnceLock::new();

/// An isolate whose code events come in.
#[cfg(pyroscope_node_shim)]
struct Watched {
    /// The `v8::Isolate`, alive as long as it is listed (its environment's teardown unlists it).
    isolate: usize,
    /// Its thread's CPU clock.
    clock: libc::clockid_t,
    /// Whether it was asked for the code it had before.
    asked: bool,
}

#[cfg(pyroscope_node_shim)]
static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());

#[cfg(pyroscope_node_shim)]
fn watched() -> std::sync::MutexGuard<'static, Vec<Watched>> {
    WATCHED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts naming the calling thread's isolate's code (`env` is the call's environment): new
/// code from now on, the code it has already once the thread has used
/// [`EXISTING_CODE_AFTER_NS`] of CPU time. False when the thread has no isolate or the addon
/// has no shim.
pub fn watch(env: sys::napi_env) -> bool {
    cwd();
    #[cfg(pyroscope_node_shim)]
    return watch_isolate(env);
    #[cfg(not(pyroscope_node_shim))]
    {
        let _ = env;
        false
    }
}

#[cfg(pyroscope_node_shim)]
fn watch_isolate(env: sys::napi_env) -> bool {
    // SAFETY: asks V8 for the calling thread's isolate.
    let isolate = unsafe { pyroscope_node_isolate() };
    if isolate.is_null() {
        return false;
    }
    EMBEDDED.get_or_init(|| {
        let (mut start, mut len) = (0u64, 0u64);
        // SAFETY: `isolate` is the calling thread's, alive during this call; the shim writes
        // the two words.
        unsafe { pyroscope_node_embedded_code(isolate, &mut start, &mut len) };
        let end = start.saturating_add(len);
        (len > 0 && pyroscope_core::named_by_file_symbols(start, end)).then_some((start, end))
    });
    let mut list = watched();
    if list.iter().any(|w| w.isolate == isolate as usize) {
        // Watched since an earlier start: its events never stopped.
        return true;
    }
    let mut clock: libc::clockid_t = 0;
    // SAFETY: `pthread_self()` is the calling thread, alive; `clock` is written on success.
    let have_clock = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0;
    // The list may hold the isolate only while it lives: its environment's teardown, which comes
    // before the isolate's, takes it out.
    // SAFETY: `env` is the environment of the call in progress; the hook gets the isolate's
    // address as its argument, a plain value.
    let hooked =
        have_clock && unsafe { sys::napi_add_env_cleanup_hook(env, Some(unwatch), isolate) } == sys::Status::napi_ok;
    if hooked {
        list.push(Watched { isolate: isolate as usize, clock, asked: false });
        pyroscope_core::jit::set_poll(poll);
    }
    drop(list);
    // Unlisted (no teardown hook), the isolate reports its code at once.
    // SAFETY: `isolate` is the calling thread's; the handler lives as long as the process.
    unsafe { pyroscope_node_watch_code(isolate, i32::from(!hooked)) };
    true
}

/// An environment's teardown: its isolate is no longer asked for anything.
///
/// # Safety
/// Node calls it with the argument it was registered with (the isolate's address, only
/// compared here).
#[cfg(pyroscope_node_shim)]
unsafe extern "C" fn unwatch(isolate: *mut c_void) {
    watched().retain(|w| w.isolate != isolate as usize);
}

/// On the collector thread: asks each isolate whose thread has used enough CPU time for the
/// code it had before it was watched (on its own thread, at its next interrupt check).
#[cfg(pyroscope_node_shim)]
fn poll() {
    let _ = catch_unwind(|| {
        for w in watched().iter_mut().filter(|w| !w.asked) {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: `ts` is a valid timespec to fill; a clock of a thread that has ended
            // fails, and is retried until the environment's teardown unlists the isolate.
            if unsafe { libc::clock_gettime(w.clock, &mut ts) } != 0 {
                continue;
            }
            if ts.tv_sec * 1_000_000_000 + ts.tv_nsec >= EXISTING_CODE_AFTER_NS {
                w.asked = true;
                // SAFETY: a listed isolate is alive (its teardown unlists it under the same
                // lock, before V8 frees it); RequestInterrupt may be called from any thread.
                unsafe { pyroscope_node_request_existing_code(w.isolate as *mut c_void) };
            }
        }
    });
}

/// Called by the shim around V8's walk for the code an isolate had before it was watched, on
/// that isolate's thread (`begins` 1, then 0): the pages of node's own file that the walk read
/// are given back after it (see `pages.rs`).
#[cfg(pyroscope_node_shim)]
#[no_mangle]
pub extern "C" fn pyroscope_node_existing_code_walk(begins: i32) {
    thread_local! {
        static BEFORE: std::cell::RefCell<Option<crate::pages::Resident>> = const { std::cell::RefCell::new(None) };
    }
    // Never unwind into V8.
    let _ = catch_unwind(|| {
        if begins != 0 {
            BEFORE.set(crate::pages::Resident::executable());
        } else if let Some(before) = BEFORE.take() {
            before.release_new();
            crate::pages::release_own_pages();
        }
    });
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
    let paths = PATHS.load(Ordering::Relaxed);
    let dependency = dependency_path(script);
    let shown = match (dependency.filter(|_| paths & SHORTEN_PATHS != 0), script.strip_prefix(cwd)) {
        (Some(start), _) => script[start..].to_owned(),
        (None, Some(rel)) if !cwd.is_empty() && cwd != "/" => format!("./{rel}"),
        _ => script.to_owned(),
    };
    let strip = paths & STRIP_ALL != 0 || (paths & STRIP_DEPENDENCIES != 0 && dependency.is_some());
    let file = if strip { String::new() } else { script.to_owned() };
    Frame { function: format!("{shown}:{function}:{line}"), file, line }
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
            if let Some(Some((lo, hi))) = EMBEDDED.get() {
                if *lo <= start && start.saturating_add(len) <= *hi {
                    return;
                }
            }
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

#[cfg(test)]
mod tests {
    use super::dependency_path;

    #[test]
    fn a_dependency_is_a_file_under_a_node_modules_directory() {
        fn of(script: &str) -> Option<&str> {
            dependency_path(script).map(|i| &script[i..])
        }
        assert_eq!(of("/srv/app/node_modules/express/lib/router.js"), Some("express/lib/router.js"));
        assert_eq!(of("/srv/node_modules/a/node_modules/b/index.js"), Some("b/index.js"));
        assert_eq!(of("node_modules/dep/index.js"), Some("dep/index.js"));
        assert_eq!(of("/srv/my_node_modules/x.js"), None);
        assert_eq!(of("/srv/app/routes/car.js"), None);
    }
}
