//! CPython 3.11–3.13 stacks, read from inside the sampled thread's signal handler. ⚠
//!
//! - [`walk`] (the core's `WalkFn`) reads the calling thread's interpreter frames and the value
//!   of the package's label ContextVar in the running Context, with guarded reads
//!   (`pyroscope_core::fault`): a torn stack gives fewer frames, never a crash.
//! - [`PyResolver`] names the frames on the collector thread (no GIL), validating each code
//!   object first.
//! - [`init`] picks the offsets for this minor version, learns the addresses of the types it
//!   checks against, and proves the walker on the calling thread before enabling it: walk vs
//!   `sys._getframe()`, label lookup vs `ContextVar.get()`, and on 3.13 the offsets vs
//!   `_PyRuntime.debug_offsets`. Any mismatch: `Err`, and `walk` stays off (returns 0).
//!
//! Design and evidence: PYTHON-FACTS §1, §2, §4, §7(a), §10.

mod linetable;
mod offsets;
mod resolve;
pub(crate) mod testing;
mod walk;
pub(crate) mod wall;

use std::ffi::{c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyroscope_core::fault;

// `Resolver` is for lib.rs (the integrator's `set_interpreter` call).
#[allow(unused_imports)]
pub use resolve::{PyResolver, Resolver};
pub use walk::walk;

/// Words a walk may write (header and every frame kept).
pub(crate) fn walk_words() -> usize {
    walk::HEADER + 2 * walk::MAX_FRAMES
}

use offsets::Offsets;

/// What the walker needs, fixed at init: offsets and the addresses it compares against.
pub(crate) struct Runtime {
    offsets: &'static Offsets,
    get_tstate: unsafe extern "C" fn() -> *mut c_void,
    /// The label ContextVar (a reference is leaked so it lives forever) and its HAMT hash.
    label_var: usize,
    var_hash: u32,
    code_type: usize,
    bytes_type: usize,
    tuple_type: usize,
    unicode_type: usize,
    context_type: usize,
    bitmap_type: usize,
    array_type: usize,
    /// 0 when it could not be learned (lookups through a collision node then fail, counted).
    collision_type: usize,
    /// The interpreter whose thread list the wall-clock sampler reads, or why it cannot.
    wall_interp: Result<usize, String>,
}

impl Runtime {
    /// The interpreter for the wall-clock sampler (`configure(oncpu=False)`).
    ///
    /// # Errors
    /// Why its thread list cannot be read (a self-test mismatch at init).
    pub(crate) fn wall_interp(&self) -> Result<usize, &str> {
        self.wall_interp.as_ref().copied().map_err(String::as_str)
    }

    pub(crate) fn offsets(&self) -> &'static Offsets {
        self.offsets
    }
}

/// The published runtime (a leaked Box, never freed: a handler may hold it).
static RUNTIME: AtomicPtr<Runtime> = AtomicPtr::new(std::ptr::null_mut());

/// # Signal safety
/// One atomic load.
pub(crate) fn runtime() -> Option<&'static Runtime> {
    // SAFETY: RUNTIME is null or a leaked, never-freed, never-mutated Box<Runtime>.
    unsafe { RUNTIME.load(Ordering::Acquire).as_ref() }
}

const SELF_TEST_KEY: u64 = 0x0123_4567_89ab_cdef;

/// Python helpers for init: contexts with the label var set in the three kinds of HAMT node,
/// including a collision node (a ContextVar whose hash equals the label var's, made with a
/// `str` subclass name whose `__hash__` cancels the address part of ContextVar's hash).
const PROBE: &CStr = cr#"
import contextvars, sys

M = (1 << 64) - 1

def colliding(var):
    target = hash(var) & M
    cell = [0]
    class _Name(str):
        def __hash__(self):
            return cell[0]
    name = _Name("_pyroscope_collide")
    for _ in range(500):
        p = contextvars.ContextVar("_pyroscope_probe")
        a = id(p)
        del p
        w = (target ^ (((a >> 4) | (a << 60)) & M)) & M
        if w >= 1 << 63:
            w -= 1 << 64
        if w in (-1, -2):
            continue
        cell[0] = w
        v = contextvars.ContextVar(name)
        if hash(v) & M == target:
            return v
    return None

def contexts(var, value):
    empty = contextvars.Context()
    small = contextvars.Context()
    small.run(var.set, value)
    fillers = [contextvars.ContextVar("_pyroscope_fill_%d" % i) for i in range(64)]
    def fill():
        for f in fillers:
            f.set(1)
        var.set(value)
    deep = contextvars.Context()
    deep.run(fill)
    other = colliding(var)
    coll = None
    if other is not None:
        def both():
            other.set(1)
            var.set(value)
        coll = contextvars.Context()
        coll.run(both)
    return empty, small, deep, coll, (fillers, other)

def frames():
    f = sys._getframe(1)
    out = []
    while f is not None:
        out.append((id(f.f_code), f.f_lineno or 0, f.f_code.co_qualname, f.f_code.co_filename))
        f = f.f_back
    return out
"#;

/// Enables Python stacks for this interpreter: picks the offsets, learns type addresses, and
/// self-tests the walker on the calling thread (frames vs `sys._getframe()`, the label lookup vs
/// `label_var`, 3.13 offsets vs `_PyRuntime.debug_offsets`). Call with the GIL, from Python code.
///
/// # Errors
/// One sentence saying why Python stacks are not available (unsupported version, a mismatch);
/// [`walk`] then returns 0.
pub fn init(py: Python<'_>, label_var: &Bound<'_, PyAny>) -> Result<(), String> {
    let fail = |what: &str| format!("Python stacks are disabled: {what}");
    let version = py.version_info();
    let offsets = offsets::for_minor(u32::from(version.minor)).filter(|_| version.major == 3).ok_or_else(|| {
        fail(&format!("CPython {}.{} is not supported (3.11 to 3.13 are)", version.major, version.minor))
    })?;
    fault::install().map_err(|e| fail(&format!("the SIGSEGV/SIGBUS guard could not be installed ({e})")))?;
    if offsets.minor == 13 {
        check_debug_offsets(offsets).map_err(|e| fail(&e))?;
    }
    let get_tstate = symbol(c"PyGILState_GetThisThreadState")
        .ok_or_else(|| fail("PyGILState_GetThisThreadState was not found in the process"))?;
    // SAFETY: the exported function `PyThreadState *PyGILState_GetThisThreadState(void)`.
    let get_tstate: unsafe extern "C" fn() -> *mut c_void = unsafe { std::mem::transmute(get_tstate) };

    let probe = PyModule::from_code(py, PROBE, c"<pyroscope walker init>", c"_pyroscope_walker_probe")
        .map_err(|e| fail(&format!("the self-test could not run ({e})")))?;
    let context_var_type =
        py.import("contextvars").and_then(|m| m.getattr("ContextVar")).map_err(|e| fail(&e.to_string()))?;
    if !label_var.is_instance(&context_var_type).unwrap_or(false) {
        return Err(fail("the label variable is not a contextvars.ContextVar"));
    }
    let addr = |o: &Bound<'_, PyAny>| o.as_ptr() as usize;
    let code_type = py.eval(c"type((lambda: 0).__code__)", None, None).map_err(|e| fail(&e.to_string()))?;
    let context_type = py.eval(c"__import__('contextvars').Context", None, None).map_err(|e| fail(&e.to_string()))?;
    let raw_hash =
        fault::read_u64(addr(label_var) + offsets::VAR_HASH).map_err(|_| fail("the ContextVar hash is unreadable"))?;
    let folded = (raw_hash as u32 ^ (raw_hash >> 32) as u32) as i32;
    let var_hash = if folded == -1 { -2 } else { folded } as u32;

    let value = (pyo3::types::PyBytes::new(py, &SELF_TEST_KEY.to_le_bytes()), py.None());
    let contexts = probe
        .getattr("contexts")
        .and_then(|f| f.call1((label_var, value)))
        .map_err(|e| fail(&format!("the self-test contexts could not be made ({e})")))?;
    let contexts = contexts.cast_into::<PyTuple>().map_err(|e| fail(&e.to_string()))?;
    let item = |i: usize| contexts.get_item(i).map_err(|e| fail(&e.to_string()));
    let (empty, small, deep, coll) = (item(0)?, item(1)?, item(2)?, item(3)?);

    let bitmap_type = root_type(addr(&small)).ok_or_else(|| fail("a Context's HAMT root is unreadable"))?;
    let array_type = root_type(addr(&deep)).ok_or_else(|| fail("a Context's HAMT root is unreadable"))?;
    if type_name(bitmap_type).as_deref() != Some("hamt_bitmap_node")
        || type_name(array_type).as_deref() != Some("hamt_array_node")
    {
        return Err(fail("the HAMT node types of Contexts are not the expected ones"));
    }
    let wall_interp = (0..3)
        .map(|_| check_thread_list(py, offsets, get_tstate))
        .find(Result::is_ok)
        .unwrap_or_else(|| check_thread_list(py, offsets, get_tstate))
        .map_err(|e| format!("wall-clock sampling is disabled: {e}"));
    let mut rt = Runtime {
        offsets,
        get_tstate,
        label_var: addr(label_var),
        var_hash,
        code_type: addr(&code_type),
        bytes_type: addr(&py.get_type::<pyo3::types::PyBytes>()),
        tuple_type: addr(&py.get_type::<PyTuple>()),
        unicode_type: addr(&py.get_type::<pyo3::types::PyString>()),
        context_type: addr(&context_type),
        bitmap_type,
        array_type,
        collision_type: 0,
        wall_interp,
    };
    if !coll.is_none() {
        rt.collision_type = collision_type(&rt, addr(&coll)).unwrap_or(0);
    }
    // Keep the label var alive forever: the walker compares HAMT keys with its address.
    std::mem::forget(label_var.clone().unbind());

    let previous = RUNTIME.swap(Box::into_raw(Box::new(rt)), Ordering::AcqRel);
    let tested = self_test(py, &probe, &[(&empty, 0), (&small, SELF_TEST_KEY), (&deep, SELF_TEST_KEY)], &coll);
    if let Err(e) = tested {
        // Leave the old runtime published (or none); the new one is leaked, a handler may hold it.
        RUNTIME.store(previous, Ordering::Release);
        return Err(fail(&e));
    }
    Ok(())
}

/// Frames and label lookups on the calling thread against what Python says.
fn self_test(
    py: Python<'_>,
    probe: &Bound<'_, PyModule>,
    contexts: &[(&Bound<'_, PyAny>, u64)],
    coll: &Bound<'_, PyAny>,
) -> Result<(), String> {
    let here = pyo3::wrap_pyfunction!(testing::context_key_here, py).map_err(|e| e.to_string())?;
    for (i, (ctx, want)) in contexts.iter().enumerate() {
        let got: u64 = ctx.call_method1("run", (&here,)).and_then(|v| v.extract()).map_err(|e| e.to_string())?;
        if got != *want {
            return Err(format!("the label lookup in test context {i} gave {got:#x}, expected {want:#x}"));
        }
    }
    if !coll.is_none() && runtime().is_some_and(|rt| rt.collision_type != 0) {
        let got: u64 = coll.call_method1("run", (&here,)).and_then(|v| v.extract()).map_err(|e| e.to_string())?;
        if got != SELF_TEST_KEY {
            return Err(format!("the label lookup through a HAMT collision node gave {got:#x}"));
        }
    }
    // The walk starts at the innermost Python frame: `frames()`'s caller is the same frame as
    // `init`'s caller, walked while `init` runs.
    let mut words = [0u64; 256];
    // SAFETY: walk has no preconditions; all its reads are guarded.
    let n = unsafe { walk(&mut words) };
    let expected = probe.getattr("frames").and_then(|f| f.call0()).map_err(|e| e.to_string())?;
    let expected = expected.cast_into::<PyList>().map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("the walk of the calling thread found no Python frames (thread state or native id mismatch)".into());
    }
    let ident: u64 = py
        .import("threading")
        .and_then(|t| t.call_method0("get_ident"))
        .and_then(|v| v.extract())
        .map_err(|e| e.to_string())?;
    if walk::thread_ident(words[1]) != ident {
        return Err(format!("the walk read thread id {:#x}, threading.get_ident() is {ident:#x}", words[1]));
    }
    let mut named = Vec::new();
    let mut resolver = PyResolver::new(|_, _| None);
    resolver.names(&words[..n], &mut named);
    let walked: Vec<u64> = words[walk::HEADER..n].chunks_exact(2).map(|p| p[0] & walk::CODE_MASK).collect();
    if walked.len() != expected.len() || named.len() != expected.len() {
        return Err(format!(
            "the walk found {} frames ({} named), sys._getframe() has {}",
            walked.len(),
            named.len(),
            expected.len()
        ));
    }
    for (i, ((code, named), want)) in walked.iter().zip(&named).zip(expected.iter()).enumerate() {
        let (want_code, want_line, want_name, want_file) =
            want.extract::<(u64, u32, String, String)>().map_err(|e| e.to_string())?;
        if *code != want_code || named.line != want_line || *named.function != *want_name || *named.file != *want_file {
            return Err(format!(
                "frame {i}: walked {}:{} line {}, sys._getframe() has {want_name}:{want_file} line {want_line}",
                named.function, named.file, named.line
            ));
        }
    }
    Ok(())
}

/// The current interpreter, once its thread list read through our offsets
/// ([`wall::for_each_thread`]) is the one CPython's accessors give, holds the calling thread's
/// state, and has a state for every running `threading` thread (by native id). Call with the GIL.
fn check_thread_list(
    py: Python<'_>,
    o: &'static Offsets,
    get_tstate: unsafe extern "C" fn() -> *mut c_void,
) -> Result<usize, String> {
    type Step = unsafe extern "C" fn(*mut c_void) -> *mut c_void;
    let head = symbol(c"PyInterpreterState_ThreadHead").ok_or("PyInterpreterState_ThreadHead was not found")?;
    let next = symbol(c"PyThreadState_Next").ok_or("PyThreadState_Next was not found")?;
    // SAFETY: the exported functions `PyThreadState *PyInterpreterState_ThreadHead(PyInterpreterState *)`
    // and `PyThreadState *PyThreadState_Next(PyThreadState *)`.
    let (head, next): (Step, Step) =
        unsafe { (std::mem::transmute::<usize, Step>(head), std::mem::transmute::<usize, Step>(next)) };
    // SAFETY: called with the GIL (we hold `py`): the current interpreter, never NULL.
    let interp = unsafe { pyo3::ffi::PyInterpreterState_Get() } as usize;
    // SAFETY: as in `walk`: the calling thread's own state.
    let me = unsafe { get_tstate() } as usize;
    if fault::read_u64(me + offsets::TSTATE_INTERP).ok() != Some(interp as u64) {
        return Err("the thread state's interpreter field is not the current interpreter".into());
    }
    let mut theirs = Vec::new();
    // SAFETY: with the GIL, walking the list with CPython's own accessors.
    let mut t = unsafe { head(interp as *mut c_void) };
    while !t.is_null() && theirs.len() <= wall::MAX_THREADS {
        theirs.push(t as usize);
        // SAFETY: as above; `t` is a state of the list.
        t = unsafe { next(t) };
    }
    let mut ours = Vec::new();
    wall::for_each_thread(interp, o, |t| ours.push(t));
    if ours != theirs || !ours.contains(&me) {
        return Err(format!(
            "the thread list read with our offsets ({} states) is not CPython's ({} states)",
            ours.len(),
            theirs.len()
        ));
    }
    let natives: Vec<u64> = py
        .eval(c"[t.native_id for t in __import__('threading').enumerate() if t.native_id]", None, None)
        .and_then(|v| v.extract())
        .map_err(|e| e.to_string())?;
    for id in natives {
        if !ours.iter().any(|t| fault::read_u64(t + o.tstate_native_thread_id).ok() == Some(id)) {
            return Err(format!("no thread state has native id {id}, a running threading.Thread's"));
        }
    }
    Ok(interp)
}

/// On 3.13, `_PyRuntime.debug_offsets` must agree with our table.
fn check_debug_offsets(o: &Offsets) -> Result<(), String> {
    let runtime = symbol(c"_PyRuntime").ok_or("_PyRuntime was not found in the process")?;
    let cookie = fault::read_u64(runtime).map_err(|_| "_PyRuntime is unreadable")?;
    let version = fault::read_u64(runtime + 8).map_err(|_| "_PyRuntime is unreadable")?;
    if cookie.to_ne_bytes() != *b"xdebugpy" || (version >> 16) != 0x030d {
        return Err(format!("_PyRuntime.debug_offsets is not 3.13's (version {version:#x})"));
    }
    for (name, at, ours) in offsets::debug_offsets_3_13(o) {
        let theirs = fault::read_u64(runtime + at).map_err(|_| "_PyRuntime is unreadable")?;
        if theirs != ours as u64 {
            return Err(format!("_PyRuntime.debug_offsets.{name} is {theirs}, this build expects {ours}"));
        }
    }
    Ok(())
}

/// The address of an exported symbol of the process (libpython or the python executable).
fn symbol(name: &CStr) -> Option<usize> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no other precondition.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p as usize)
}

/// The type of a Context's HAMT root node.
fn root_type(ctx: usize) -> Option<usize> {
    let vars = fault::read_u64(ctx + offsets::CONTEXT_VARS).ok()? as usize;
    let root = fault::read_u64(vars + offsets::HAMT_ROOT).ok()? as usize;
    fault::read_u64(root + offsets::OB_TYPE).ok().map(|t| t as usize)
}

/// A type object's `tp_name` (at most 63 bytes).
fn type_name(ty: usize) -> Option<String> {
    let name = fault::read_u64(ty + offsets::TYPE_NAME).ok()? as usize;
    let mut buf = Vec::new();
    for i in 0..64 {
        let mut b = [0u8; 1];
        fault::read_bytes(&mut b, name + i).ok()?;
        if b[0] == 0 {
            return String::from_utf8(buf).ok();
        }
        buf.push(b[0]);
    }
    None
}

/// In a Context holding the label var and another var with the same hash, the root bitmap's
/// entry for that hash is a collision node: its type, checked by name.
fn collision_type(rt: &Runtime, ctx: usize) -> Option<usize> {
    let vars = fault::read_u64(ctx + offsets::CONTEXT_VARS).ok()? as usize;
    let root = fault::read_u64(vars + offsets::HAMT_ROOT).ok()? as usize;
    if fault::read_u64(root + offsets::OB_TYPE).ok()? as usize != rt.bitmap_type {
        return None;
    }
    let bitmap = fault::read_u32(root + offsets::BITMAP_BITMAP).ok()?;
    let bit = 1u32 << (rt.var_hash & 31);
    let index = (bitmap & bit.wrapping_sub(1)).count_ones() as usize;
    let entry = root + offsets::BITMAP_ARRAY + 16 * index;
    if bitmap & bit == 0 || fault::read_u64(entry).ok()? != 0 {
        return None;
    }
    let node = fault::read_u64(entry + 8).ok()? as usize;
    let ty = fault::read_u64(node + offsets::OB_TYPE).ok()? as usize;
    (type_name(ty).as_deref() == Some("hamt_collision_node")).then_some(ty)
}
