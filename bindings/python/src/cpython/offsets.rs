//! Byte offsets into CPython's internal structures, per minor version (x86_64, default build,
//! no free threading). Measured with `offsetof` against each version's headers compiled with
//! `-DPy_BUILD_CORE` (PYTHON-FACTS §1) and re-checked at start-up: by the self-test walk on
//! every version, and against `_PyRuntime.debug_offsets` on 3.13.
//!
//! These layouts are only stable across the patch releases of one minor version; an unknown
//! minor gets no table (no Python stacks rather than a guess).

/// Where the walker finds things in one CPython minor version.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Offsets {
    pub(crate) minor: u32,
    /// 3.11/3.12: `PyThreadState.cframe`, then `_PyCFrame.current_frame`.
    pub(crate) tstate_cframe: Option<usize>,
    pub(crate) cframe_current_frame: usize,
    /// 3.13: `PyThreadState.current_frame` (used when `tstate_cframe` is `None`).
    pub(crate) tstate_current_frame: usize,
    pub(crate) tstate_thread_id: usize,
    pub(crate) tstate_native_thread_id: usize,
    pub(crate) tstate_context: usize,
    /// `PyInterpreterState.threads.head`: the interpreter's thread states, linked by
    /// [`TSTATE_NEXT`] (the wall-clock sampler's list; checked against
    /// `PyInterpreterState_ThreadHead`/`PyThreadState_Next` at init).
    pub(crate) interp_threads_head: usize,
    /// `_PyInterpreterFrame.f_code` (3.11/3.12) or `.f_executable` (3.13).
    pub(crate) frame_code: usize,
    pub(crate) frame_previous: usize,
    /// `.prev_instr` (3.11/3.12) or `.instr_ptr` (3.13).
    pub(crate) frame_instr: usize,
    /// `.owner` (a `char`).
    pub(crate) frame_owner: usize,
    /// 3.11: `_PyInterpreterFrame.is_entry` (a `bool`): the frame is the first one a call of
    /// the eval function ran (3.12+ mark that with a shim frame below it instead).
    pub(crate) frame_is_entry: Option<usize>,
    /// `FRAME_OWNED_BY_CSTACK`, the C-entry shim frames (3.12+): skipped.
    pub(crate) owner_cstack: Option<u8>,
    pub(crate) code_firstlineno: usize,
    pub(crate) code_filename: usize,
    pub(crate) code_qualname: usize,
    pub(crate) code_linetable: usize,
    pub(crate) code_firsttraceable: usize,
    pub(crate) code_adaptive: usize,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's characters start.
    pub(crate) unicode_ascii_size: usize,
    /// `sizeof(PyCompactUnicodeObject)`: where a compact non-ASCII string's characters start.
    pub(crate) unicode_compact_size: usize,
}

/// `PyThreadState.next` and `.interp` (all three versions).
pub(crate) const TSTATE_NEXT: usize = 8;
pub(crate) const TSTATE_INTERP: usize = 16;

/// `FRAME_OWNED_BY_GENERATOR` (all three versions).
pub(crate) const OWNER_GENERATOR: u8 = 1;

// The same in 3.11, 3.12 and 3.13.
/// `PyObject.ob_type`.
pub(crate) const OB_TYPE: usize = 8;
/// `PyVarObject.ob_size`.
pub(crate) const OB_SIZE: usize = 16;
/// `PyTypeObject.tp_name` (a `const char *`).
pub(crate) const TYPE_NAME: usize = 24;
/// `PyASCIIObject.length` (code points) and `.state` (bit fields: interned 2, kind 3, compact 1,
/// ascii 1).
pub(crate) const UNICODE_LENGTH: usize = 16;
pub(crate) const UNICODE_STATE: usize = 32;
/// `PyBytesObject.ob_sval`.
pub(crate) const BYTES_SVAL: usize = 32;
/// `PyTupleObject.ob_item`.
pub(crate) const TUPLE_ITEM: usize = 24;
/// `PyContext.ctx_vars` (a `PyHamtObject *`).
pub(crate) const CONTEXT_VARS: usize = 24;
/// `PyContextVar.var_hash` (a `Py_hash_t`).
pub(crate) const VAR_HASH: usize = 56;
/// `PyHamtObject.h_root`.
pub(crate) const HAMT_ROOT: usize = 16;
/// `PyHamtNode_Bitmap` (a var object: `ob_size` = entries in `b_array`): `b_bitmap`, `b_array`.
pub(crate) const BITMAP_BITMAP: usize = 24;
pub(crate) const BITMAP_ARRAY: usize = 32;
/// `PyHamtNode_Array.a_array` (32 node pointers).
pub(crate) const ARRAY_ARRAY: usize = 16;
/// `PyHamtNode_Collision` (a var object: `ob_size` = entries in `c_array`): `c_array`.
pub(crate) const COLLISION_ARRAY: usize = 32;

static V3_11: Offsets = Offsets {
    minor: 11,
    tstate_cframe: Some(56),
    cframe_current_frame: 8,
    tstate_current_frame: 0,
    tstate_thread_id: 152,
    tstate_native_thread_id: 160,
    tstate_context: 224,
    interp_threads_head: 16,
    frame_code: 32,
    frame_previous: 48,
    frame_instr: 56,
    frame_owner: 69,
    frame_is_entry: Some(68),
    owner_cstack: None,
    code_firstlineno: 72,
    code_filename: 112,
    code_qualname: 128,
    code_linetable: 136,
    code_firsttraceable: 168,
    code_adaptive: 184,
    unicode_ascii_size: 48,
    unicode_compact_size: 72,
};

static V3_12: Offsets = Offsets {
    minor: 12,
    tstate_cframe: Some(56),
    cframe_current_frame: 0,
    tstate_current_frame: 0,
    tstate_thread_id: 136,
    tstate_native_thread_id: 144,
    tstate_context: 208,
    interp_threads_head: 72,
    frame_code: 0,
    frame_previous: 8,
    frame_instr: 56,
    frame_owner: 70,
    frame_is_entry: None,
    owner_cstack: Some(3),
    code_firstlineno: 68,
    code_filename: 112,
    code_qualname: 128,
    code_linetable: 136,
    code_firsttraceable: 176,
    code_adaptive: 192,
    unicode_ascii_size: 40,
    unicode_compact_size: 56,
};

static V3_13: Offsets = Offsets {
    minor: 13,
    tstate_cframe: None,
    cframe_current_frame: 0,
    tstate_current_frame: 72,
    tstate_thread_id: 152,
    tstate_native_thread_id: 160,
    tstate_context: 208,
    interp_threads_head: 7344,
    frame_code: 0,
    frame_previous: 8,
    frame_instr: 56,
    frame_owner: 70,
    frame_is_entry: None,
    owner_cstack: Some(3),
    code_firstlineno: 68,
    code_filename: 112,
    code_qualname: 128,
    code_linetable: 136,
    code_firsttraceable: 184,
    code_adaptive: 200,
    unicode_ascii_size: 40,
    unicode_compact_size: 56,
};

/// The table for CPython 3.`minor`, if this build knows it.
pub(crate) fn for_minor(minor: u32) -> Option<&'static Offsets> {
    match minor {
        11 => Some(&V3_11),
        12 => Some(&V3_12),
        13 => Some(&V3_13),
        _ => None,
    }
}

/// Where 3.13.x's `_Py_DebugOffsets` (the first member of `_PyRuntime`) keeps the fields we
/// use, with the value our table has for each (offsets into `_Py_DebugOffsets` measured with
/// `offsetof` on the 3.13.0 headers).
pub(crate) fn debug_offsets_3_13(o: &Offsets) -> [(&'static str, usize, usize); 16] {
    [
        ("interpreter_state.threads_head", 72, o.interp_threads_head),
        ("thread_state.next", 168, TSTATE_NEXT),
        ("thread_state.interp", 176, TSTATE_INTERP),
        ("thread_state.current_frame", 184, o.tstate_current_frame),
        ("thread_state.thread_id", 192, o.tstate_thread_id),
        ("thread_state.native_thread_id", 200, o.tstate_native_thread_id),
        ("interpreter_frame.previous", 232, o.frame_previous),
        ("interpreter_frame.executable", 240, o.frame_code),
        ("interpreter_frame.instr_ptr", 248, o.frame_instr),
        ("interpreter_frame.owner", 264, o.frame_owner),
        ("code_object.filename", 280, o.code_filename),
        ("code_object.qualname", 296, o.code_qualname),
        ("code_object.linetable", 304, o.code_linetable),
        ("code_object.firstlineno", 312, o.code_firstlineno),
        ("code_object.co_code_adaptive", 344, o.code_adaptive),
        ("unicode_object.asciiobject_size", 560, o.unicode_ascii_size),
    ]
}
