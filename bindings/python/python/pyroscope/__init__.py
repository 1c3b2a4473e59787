"""Continuous profiling for Python: a drop-in for pyroscope-io on the pyroscope Rust core.

The API is pyroscope-io 1.4.0's: ``configure(...)``, ``tag_wrapper``, ``add_thread_tag``,
``remove_thread_tag``, ``shutdown``, ``LineNo``, ``ProfilerImplementation`` and the deprecated
no-ops. Differences, all documented on the functions:

- Settings left out of ``configure`` come from the ``PYROSCOPE_*`` environment variables, then
  from the defaults; without a server address profiles go to ``./profiles`` (gzipped pprof files).
- A bad setting raises ``ConfigError`` (a ``ValueError``) before anything starts.
- Memory profiling is on by default (``mem_enabled=True``).
- ``tag_wrapper`` labels follow the current ``contextvars`` context: an asyncio task's labels
  hold across its awaits and never leak into other tasks. It also works as a decorator, on
  plain and ``async`` functions.
- The last window is sent at interpreter exit even without ``shutdown()``.
"""

import atexit
import contextvars
import enum
import functools
import inspect
import itertools
import logging
import math
import os
import sys
import threading
import warnings

from pyroscope import _native
from pyroscope._native import ConfigError, __version__

__all__ = [
    "ConfigError",
    "LineNo",
    "ProfilerImplementation",
    "__version__",
    "add_thread_tag",
    "build_summary",
    "change_name",
    "configure",
    "configure_experimental_stack_profiler",
    "remove_tags",
    "remove_thread_tag",
    "shutdown",
    "stop",
    "tag",
    "tag_wrapper",
    "test_logger",
]

LOGGER = logging.getLogger(__name__)
LOGGER.disabled = True


class LineNo(enum.IntEnum):
    """Which line a Python frame is reported at (pyroscope-io's values)."""

    LastInstruction = 0
    First = 1
    NoLine = 2


class ProfilerImplementation(enum.IntEnum):
    """pyroscope-io's choice of sampler. Accepted for compatibility: this package has one
    sampler (per-thread CPU timers in the process), which is what both names get."""

    PySpy = 0
    Stack = 1


class _ConfigTypeError(ConfigError, TypeError):
    """A setting of the wrong type: a ConfigError that is also a TypeError, as pyroscope-io
    raised TypeError for these."""


_ConfigTypeError.__name__ = _ConfigTypeError.__qualname__ = "ConfigError"
_ConfigTypeError.__module__ = "pyroscope"


_UNSET = object()

# The context variable behind tag_wrapper: (8-byte little-endian key, holder) or None.
# The CPython walker reads the key of the sampled thread's current context.
_LABELS = contextvars.ContextVar("pyroscope_labels", default=None)
_native.set_label_var(_LABELS)

# (parent key, items) -> holder, so entering the same labels again reuses the entry: a dict
# lookup per enter instead of a registry round trip (and its lock, which the collector takes
# too) each time a label set's last wrapper exits and the next one enters. The holders keep
# their entries alive; the cache starts over past _HOLDERS_MAX distinct sets (per-request
# values), after which dropped entries go at the end of their grace period.
_HOLDERS = {}
_HOLDERS_MAX = 1024
_ENTERS = itertools.count()

_state = {"atexit": False, "threads": False, "stack_options": None, "settings": None, "args": None}

_BOOL_SETTINGS = (
    "oncpu",
    "gil_only",
    "report_pid",
    "report_thread_id",
    "report_thread_name",
    "enable_logging",
    "mem_enabled",
    "mem_enable_mem_domain",
    "cpu_enabled",
)


def _type_error(name, value, expected):
    raise _ConfigTypeError(f"{name} must be {expected}, not {type(value).__name__} {value!r}")


def _str_pairs(name, mapping):
    if mapping is None:
        return []
    if not hasattr(mapping, "items"):
        _type_error(name, mapping, "a dict of str to str")
    pairs = []
    for k, v in mapping.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise _ConfigTypeError(f"{name} must map str to str: {k!r}: {v!r} is not")
        pairs.append((k, v))
    return pairs


def _runtime_version():
    vinfo = sys.implementation.version
    if vinfo.releaselevel == "final" and not vinfo.serial:
        vinfo = vinfo[:3]
    return ".".join(map(str, vinfo))


def _runtime_tags():
    # The series labels pyroscope-io 1.4.0 sends besides service_name and the tags.
    return [
        ("otel.scope.name", "com.grafana.pyroscope/python"),
        ("otel.scope.version", __version__),
        ("process.runtime.name", sys.implementation.name),
        ("process.runtime.version", _runtime_version()),
    ]


def configure(
    app_name=None,
    application_name=_UNSET,
    server_address=_UNSET,
    basic_auth_username=_UNSET,
    basic_auth_password=_UNSET,
    enable_logging=False,
    sample_rate=_UNSET,
    oncpu=True,
    native=None,
    gil_only=True,
    report_pid=False,
    report_thread_id=False,
    report_thread_name=False,
    tags=None,
    tenant_id=_UNSET,
    http_headers=None,
    line_no=LineNo.LastInstruction,
    upload_interval=_UNSET,
    mem_enabled=_UNSET,
    mem_max_nframe=128,
    mem_heap_sample_size=_UNSET,
    mem_enable_mem_domain=True,
    cpu_enabled=True,
    cpu_implementation=ProfilerImplementation.PySpy,
    **kwargs,
):
    """Starts profiling this process. Same keywords as pyroscope-io 1.4.0.

    Keywords left out take the ``PYROSCOPE_*`` environment variables (``APPLICATION_NAME``,
    ``SERVER_ADDRESS``, ``TAGS``, ``SAMPLE_RATE``, ``UPLOAD_INTERVAL`` in seconds,
    ``BASIC_AUTH_USER``/``PASSWORD``, ``AUTH_TOKEN``, ``TENANT_ID``, ``MEMORY``,
    ``ALLOC_SAMPLE_BYTES``, ``EXPORT_DIR``), then the defaults: 100 Hz, 10 s windows, memory
    profiles on, and without a server address gzipped pprof files in ``./profiles``.

    Returns True once started. A second call while profiling is refused and returns False
    (pyroscope-io does the same; the first configuration keeps running): call ``shutdown()``
    first to change settings. A bad setting raises ``ConfigError`` (a ``ValueError``; for a
    wrong type also a ``TypeError``) and starts nothing.

    ``oncpu=False`` (pyroscope-io's "include idle threads") adds a ``wall`` profile: wall-clock
    time of every Python thread, idle ones included (sleeping, blocked in I/O, waiting for the
    GIL), sampled at ``sample_rate`` by a thread of the profiler's that reads the other threads'
    stacks without signalling them; the ``process_cpu`` profile stays CPU time. ``gil_only`` is accepted:
    CPU-time sampling already skips threads waiting for the GIL. ``native=True`` merges the native
    frames of extension modules and C libraries into the Python stacks, where the interpreter
    calls them (py-spy's ``--native``); it is off by default. ``cpu_implementation`` and ``mem_max_nframe`` are
    accepted and have no effect. ``cpu_enabled=False`` with ``mem_enabled=False`` starts nothing.
    """
    shutdown_timeout = kwargs.pop("_shutdown_timeout", None)
    if kwargs:
        name = next(iter(kwargs))
        raise TypeError(f"configure() got an unexpected keyword argument '{name}'")
    if app_name is not None:
        warnings.warn("app_name is deprecated, use application_name", DeprecationWarning, stacklevel=2)
        if application_name is _UNSET or application_name is None:
            application_name = app_name

    given = lambda v: v is not _UNSET and v is not None  # noqa: E731
    for name, value in (
        ("application_name", application_name),
        ("server_address", server_address),
        ("basic_auth_username", basic_auth_username),
        ("basic_auth_password", basic_auth_password),
        ("tenant_id", tenant_id),
    ):
        if given(value) and not isinstance(value, str):
            _type_error(name, value, "a str")
    settings = locals()
    for name in _BOOL_SETTINGS:
        value = settings[name]
        if value is _UNSET:
            continue
        if not isinstance(value, (bool, int)) or (isinstance(value, int) and value not in (0, 1)):
            _type_error(name, value, "a bool")
    if native is not None and not isinstance(native, (bool, int)):
        _type_error("native", native, "a bool or None")
    for name, value in (
        ("sample_rate", sample_rate),
        ("mem_heap_sample_size", mem_heap_sample_size),
        ("mem_max_nframe", mem_max_nframe),
    ):
        if given(value) and (isinstance(value, bool) or not isinstance(value, int)):
            _type_error(name, value, "an int")
    if given(upload_interval):
        if isinstance(upload_interval, bool) or not isinstance(upload_interval, (int, float)):
            _type_error("upload_interval", upload_interval, "a number of seconds")
        if not math.isfinite(upload_interval):
            raise ConfigError(f"invalid upload interval {upload_interval} s: must be between 1 s and 1 h")
    try:
        line_no = LineNo(line_no)
    except (ValueError, TypeError):
        raise _ConfigTypeError(f"line_no must be a pyroscope.LineNo, not {line_no!r}") from None
    try:
        ProfilerImplementation(cpu_implementation)
    except (ValueError, TypeError):
        raise _ConfigTypeError(
            f"cpu_implementation must be a pyroscope.ProfilerImplementation, not {cpu_implementation!r}"
        ) from None
    if given(mem_max_nframe) and mem_max_nframe <= 0:
        raise ConfigError(f"invalid mem_max_nframe {mem_max_nframe}: must be above zero")
    if given(application_name) and application_name == "":
        raise ConfigError("application_name is empty: pass configure(application_name=...)")
    tag_pairs = _str_pairs("tags", tags)
    header_pairs = _str_pairs("http_headers", http_headers)

    user = basic_auth_username if given(basic_auth_username) else ""
    password = basic_auth_password if given(basic_auth_password) else ""
    # pyroscope-io uses basic auth only when both are set.
    basic_auth = (user, password) if user and password else None

    LOGGER.disabled = not enable_logging
    log_level = LOGGER.getEffectiveLevel() if enable_logging else None
    args = dict(
        application_name=application_name if given(application_name) else None,
        server_address=server_address if given(server_address) else None,
        basic_auth=basic_auth,
        tenant_id=tenant_id if given(tenant_id) and tenant_id else None,
        tags=tag_pairs,
        runtime_tags=_runtime_tags(),
        http_headers=header_pairs,
        sample_rate=sample_rate if given(sample_rate) else None,
        upload_interval=float(upload_interval) if given(upload_interval) else None,
        cpu=None if cpu_enabled else False,
        memory=bool(mem_enabled) if given(mem_enabled) else None,
        mem_domain=bool(mem_enable_mem_domain),
        alloc_sample_bytes=mem_heap_sample_size if given(mem_heap_sample_size) else None,
        shutdown_timeout=shutdown_timeout,
        line_no=int(line_no),
        native=bool(native),
        report_pid=bool(report_pid),
        report_thread_id=bool(report_thread_id),
        report_thread_name=bool(report_thread_name),
        log_level=log_level,
        wall=not oncpu,
    )
    _native.start(check_only=True, **args)  # raises ConfigError before anything changes

    if not cpu_enabled:
        if given(mem_enabled) and not mem_enabled:
            LOGGER.warning("cpu_enabled=False and mem_enabled=False: nothing to profile")
            return True
    if report_thread_name:
        _install_thread_names()
    _state["settings"] = dict(
        gil_only=bool(gil_only),
        native=bool(native),
        line_no=line_no,
        mem_max_nframe=mem_max_nframe,
        mem_enable_mem_domain=bool(mem_enable_mem_domain),
        cpu_implementation=ProfilerImplementation(cpu_implementation),
    )
    started = _native.start(**args)
    if started:
        _state["args"] = args
        _install_thread_registration()
    if not started:
        LOGGER.warning("pyroscope is already configured: call shutdown() before configure() again")
        return False
    if not _state["atexit"]:
        atexit.register(_at_exit)
        _state["atexit"] = True
    return True


def configure_experimental_stack_profiler(
    max_nframe=128,
    max_threads=25,
    adaptive_sampling=True,
    adaptive_target_overhead=0.01,
    adaptive_max_interval_us=100000,
    adaptive_baseline=0.0,
    adaptive_p_stable_window_s=600,
    adaptive_p_stable_percentile=95.0,
    cpu_timer_enabled=True,
    cpu_timer_interval_ms=10,
):
    """pyroscope-io's options of its stack sampler. Accepted for compatibility: this package
    always samples with per-thread CPU timers (at ``configure(sample_rate=...)``), so the
    options have no effect. As in pyroscope-io, only the first call before profiling starts
    is taken (returns True); later calls return False."""
    if _state["stack_options"] is not None or _native.running():
        return False
    _state["stack_options"] = dict(
        max_nframe=max_nframe,
        max_threads=max_threads,
        adaptive_sampling=adaptive_sampling,
        adaptive_target_overhead=adaptive_target_overhead,
        adaptive_max_interval_us=adaptive_max_interval_us,
        adaptive_baseline=adaptive_baseline,
        adaptive_p_stable_window_s=adaptive_p_stable_window_s,
        adaptive_p_stable_percentile=adaptive_p_stable_percentile,
        cpu_timer_enabled=cpu_timer_enabled,
        cpu_timer_interval_ms=cpu_timer_interval_ms,
    )
    return True


def shutdown():
    """Stops profiling and sends the last window (waits at most the shutdown timeout, 2 s,
    whatever the server does). Returns True if profiling was running, else False, as
    pyroscope-io 1.4.0. ``configure()`` may be called again afterwards."""
    stopped = _native.stop()
    if stopped:
        LOGGER.info("Pyroscope Agent successfully shutdown")
    else:
        LOGGER.warning("Pyroscope Agent shutdown failed")
    return stopped


def _at_exit():
    # The last window, when the program ends without shutdown().
    _native.stop()


def _check_tag(key, value):
    if not isinstance(key, str):
        raise TypeError(f"'{type(key).__name__}' object is not an instance of 'str'")
    if not isinstance(value, str):
        raise TypeError(f"'{type(value).__name__}' object is not an instance of 'str'")


def add_thread_tag(key, value):
    """Adds label ``key=value`` to this OS thread's samples until ``remove_thread_tag(key,
    value)``. A name's value is the one added last. A bad name or value is left out (counted
    and logged once), never raised. Returns True while profiling runs, else False (the tag is
    kept for when it starts), as pyroscope-io."""
    _check_tag(key, value)
    _native.add_thread_tag(key, value)
    return _native.running()


def remove_thread_tag(key, value):
    """Removes the label ``key=value`` added by ``add_thread_tag`` on this thread."""
    _check_tag(key, value)
    _native.remove_thread_tag(key, value)
    return _native.running()


def _items(tags):
    if not hasattr(tags, "items"):
        raise TypeError(f"tag_wrapper() takes a dict of labels, not {type(tags).__name__}")
    items = tuple(tags.items())
    for k, v in items:
        _check_tag(k, v)
    return items


def _holder(parent, items):
    """(key bytes, holder) of the labels `items` over those of entry `parent`."""
    cache_key = (parent, items)
    kh = _HOLDERS.get(cache_key)
    if kh is None:
        # Two threads missing at once both get the registry's one entry for the labels.
        h = _native.new_context(parent, list(items))
        kh = (h.key_bytes, h)
        if len(_HOLDERS) >= _HOLDERS_MAX:
            _HOLDERS.clear()
        _HOLDERS[cache_key] = kh
    return kh


class tag_wrapper:
    """Labels every sample taken in its scope: ``with tag_wrapper({"vehicle": "car"}): ...``,
    or as a decorator on a function or an ``async`` function.

    The labels belong to the current ``contextvars`` context: they hold across the awaits of
    the coroutine that entered them, never in other asyncio tasks, and nested wrappers add to
    the outer labels (the inner value wins for a name both have). Threads started inside do not
    inherit them (pyroscope-io: per thread). Bad names or values are left out, never raised.
    Until Python stacks are sampled (the CPython walker), the labels are per OS thread, as in
    pyroscope-io.
    """

    __slots__ = ("_items", "_entered", "__weakref__")

    def __init__(self, tags):
        self._items = _items(tags)
        # id(value set) -> token, for each enter not yet exited (one instance may be entered
        # by several tasks at once).
        self._entered = {}

    def __enter__(self):
        if _native.context_labels():
            current = _LABELS.get()
            parent = current[1].key if current is not None else 0
            key_bytes, h = _holder(parent, self._items)
            # A tuple of its own per enter: `_entered` tells enters apart by its id.
            value = (key_bytes, h)
            token = _LABELS.set(value)
            self._entered[id(value)] = (value, token)
        else:
            for k, v in self._items:
                _native.add_thread_tag(k, v)
            self._entered[("thread", next(_ENTERS))] = None
        return self

    def __exit__(self, *exc):
        current = _LABELS.get()
        entry = self._entered.pop(id(current), None) if current is not None else None
        if entry is None:
            # A thread-tag enter, or an exit out of order: take the latest enter.
            if not self._entered:
                return False
            key = next(reversed(self._entered))
            entry = self._entered.pop(key)
        if entry is None:
            for k, v in self._items:
                _native.remove_thread_tag(k, v)
            return False
        _value, token = entry
        try:
            _LABELS.reset(token)
        except ValueError:
            # Reset from another context than the one that entered (a generator resumed
            # elsewhere): put back what was there before.
            old = token.old_value
            _LABELS.set(None if old is contextvars.Token.MISSING else old)
        return False

    def __call__(self, fn):
        tags = dict(self._items)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                with tag_wrapper(tags):
                    return await fn(*args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with tag_wrapper(tags):
                return fn(*args, **kwargs)

        return wrapper


def _install_thread_registration():
    # Each new threading.Thread is sampled from its first instruction: a thread per request
    # (socketserver's ThreadingMixIn, Flask's development server) often ends before the core's
    # next scan of the process's threads (every 100 ms) would have found it. `_set_native_id`
    # runs on the new thread as it starts and returns before `run()`: no frame of ours stays
    # on the thread's stack.
    if _state.get("registration"):
        return
    _state["registration"] = True
    orig_set_native_id = threading.Thread._set_native_id

    def _set_native_id(self):
        orig_set_native_id(self)
        try:
            _native.register_thread()
        except Exception:
            pass

    threading.Thread._set_native_id = _set_native_id


def _install_thread_names():
    # Names for the thread_name label: each thread's name as it starts and when renamed.
    if _state["threads"]:
        return
    _state["threads"] = True
    Thread = threading.Thread
    orig_set_native_id = Thread._set_native_id
    name_prop = Thread.name

    def _set_native_id(self):
        # On the new thread as it starts (an ident reused by a later thread gets its name then).
        orig_set_native_id(self)
        try:
            _native.set_thread_name(threading.get_ident(), self.name)
        except Exception:
            pass

    def _set_name(self, name):
        name_prop.fset(self, name)
        if self.ident is not None and self.is_alive():
            _native.set_thread_name(self.ident, str(name))

    Thread._set_native_id = _set_native_id
    Thread.name = property(name_prop.fget, _set_name, doc=name_prop.__doc__)
    for t in threading.enumerate():
        if t.ident is not None:
            _native.set_thread_name(t.ident, t.name)


def _after_fork_in_child():
    # A forked child (gunicorn worker, multiprocessing "fork", os.fork) profiles itself: the
    # parent's agent is let go without sending anything, and a new one starts with the same
    # settings (its own pid, none of the parent's samples).
    if not _native.after_fork(True) or _state["args"] is None:
        return
    try:
        _native.start(**_state["args"])
    except Exception as e:  # never raise into the child
        LOGGER.warning("pyroscope: profiling could not restart in the forked child: %s", e)
        return


class _MultiprocessingExit:
    # multiprocessing ends its children with os._exit(), after its own exit hooks but without
    # atexit. A child clears the finalizers it inherits, then runs its after-fork callbacks:
    # this one registers the finalizer that sends the child's last window.
    registered = False

    @staticmethod
    def after_fork(_self):
        sys.modules["multiprocessing.util"].Finalize(None, _native.stop, exitpriority=-1000)


_MP_EXIT = _MultiprocessingExit()


def _before_fork():
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None and not _MultiprocessingExit.registered and _state["args"] is not None:
        mp_util.register_after_fork(_MP_EXIT, _MultiprocessingExit.after_fork)
        _MultiprocessingExit.registered = True
    _native.before_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=lambda: _native.after_fork(False),
        after_in_child=_after_fork_in_child,
    )


def stop():
    warnings.warn("deprecated, no longer applicable", DeprecationWarning, stacklevel=2)


def change_name(name):
    warnings.warn("deprecated, no longer applicable", DeprecationWarning, stacklevel=2)


def tag(tags):
    warnings.warn("deprecated, use tag_wrapper function", DeprecationWarning, stacklevel=2)


def remove_tags(*keys):
    warnings.warn("deprecated, no longer applicable", DeprecationWarning, stacklevel=2)


def build_summary():
    warnings.warn("deprecated, no longer applicable", DeprecationWarning, stacklevel=2)


def test_logger():
    warnings.warn("deprecated, no longer applicable", DeprecationWarning, stacklevel=2)


# pyroscope-io's helpers, kept for code that imported them.
runtime_name = lambda: sys.implementation.name  # noqa: E731
runtime_version = _runtime_version
