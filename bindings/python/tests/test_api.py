"""The pyroscope-io 1.4.0 API surface: keywords, validation, deprecated names."""

import inspect

import pyroscope
import pytest

# configure()'s keywords in pyroscope-io 1.4.0 (pyroscope/__init__.py of the PyPI wheel), in order.
PYROSCOPE_IO_1_4_0_CONFIGURE = [
    "app_name",
    "application_name",
    "server_address",
    "basic_auth_username",
    "basic_auth_password",
    "enable_logging",
    "sample_rate",
    "oncpu",
    "native",
    "gil_only",
    "report_pid",
    "report_thread_id",
    "report_thread_name",
    "tags",
    "tenant_id",
    "http_headers",
    "line_no",
    "upload_interval",
    "mem_enabled",
    "mem_max_nframe",
    "mem_heap_sample_size",
    "mem_enable_mem_domain",
    "cpu_enabled",
    "cpu_implementation",
]
PYROSCOPE_IO_1_4_0_STACK_PROFILER = [
    "max_nframe",
    "max_threads",
    "adaptive_sampling",
    "adaptive_target_overhead",
    "adaptive_max_interval_us",
    "adaptive_baseline",
    "adaptive_p_stable_window_s",
    "adaptive_p_stable_percentile",
    "cpu_timer_enabled",
    "cpu_timer_interval_ms",
]
PYROSCOPE_IO_1_4_0_NAMES = [
    "LineNo",
    "ProfilerImplementation",
    "configure",
    "configure_experimental_stack_profiler",
    "shutdown",
    "add_thread_tag",
    "remove_thread_tag",
    "tag_wrapper",
    "stop",
    "change_name",
    "tag",
    "remove_tags",
    "build_summary",
    "test_logger",
    "runtime_name",
    "runtime_version",
]

# A valid value for every keyword (not the default, where one exists).
VALID = {
    "app_name": None,
    "application_name": "kw-app",
    "server_address": None,  # set to the receiver's URL by the test
    "basic_auth_username": "user",
    "basic_auth_password": "secret",
    "enable_logging": False,
    "sample_rate": 250,
    "oncpu": True,
    "native": False,
    "gil_only": False,
    "report_pid": True,
    "report_thread_id": True,
    "report_thread_name": True,
    "tags": {"region": "eu-north"},
    "tenant_id": "tenant-1",
    "http_headers": {"X-Extra": "1"},
    "line_no": "pyroscope.LineNo.First",
    "upload_interval": 2,
    "mem_enabled": False,
    "mem_max_nframe": 64,
    "mem_heap_sample_size": 1024 * 1024,
    "mem_enable_mem_domain": False,
    "cpu_enabled": True,
    "cpu_implementation": "pyroscope.ProfilerImplementation.Stack",
}


def keyword_names(fn):
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD]


def test_configure_has_every_pyroscope_io_1_4_0_keyword_in_order():
    assert keyword_names(pyroscope.configure) == PYROSCOPE_IO_1_4_0_CONFIGURE
    assert keyword_names(pyroscope.configure_experimental_stack_profiler) == PYROSCOPE_IO_1_4_0_STACK_PROFILER
    for name in PYROSCOPE_IO_1_4_0_NAMES:
        assert callable(getattr(pyroscope, name)), name
    assert [(m.name, int(m)) for m in pyroscope.LineNo] == [("LastInstruction", 0), ("First", 1), ("NoLine", 2)]
    assert [(m.name, int(m)) for m in pyroscope.ProfilerImplementation] == [("PySpy", 0), ("Stack", 1)]


def test_every_keyword_is_accepted(receiver, run_py):
    assert sorted(VALID) == sorted(PYROSCOPE_IO_1_4_0_CONFIGURE)
    r = receiver()
    calls = []
    for kw, value in VALID.items():
        if kw in ("app_name", "application_name", "server_address"):
            continue
        calls.append(f"({kw!r}, {value if isinstance(value, str) and value.startswith('pyroscope.') else repr(value)})")
    prog = f"""
        import pyroscope, warnings
        warnings.simplefilter("error")
        base = dict(application_name="kw-app", server_address={r.url!r}, upload_interval=1)
        for kw, value in [{", ".join(calls)}]:
            assert pyroscope.configure(**{{**base, kw: value}}) is True, kw
            assert pyroscope.shutdown() is True, kw
        # All at once, too.
        everything = dict(base, **{{kw: v for kw, v in [{", ".join(calls)}]}})
        assert pyroscope.configure(**everything) is True
        assert pyroscope.shutdown() is True
        print("ok")
    """
    out = run_py(prog)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n"


BAD = [
    (dict(application_name=""), "application_name is empty"),
    (dict(), "PYROSCOPE_APPLICATION_NAME"),
    (dict(application_name="my app"), 'invalid application name "my app"'),
    (dict(application_name="a", server_address="localhost:4040"), "invalid server address"),
    (dict(application_name="a", server_address="ftp://x"), "scheme must be http or https"),
    (dict(application_name="a", server_address="http://u:p@host"), "credentials"),
    (dict(application_name="a", sample_rate=0), "invalid sample rate 0 Hz"),
    (dict(application_name="a", sample_rate=-5), "invalid sample rate -5 Hz"),
    (dict(application_name="a", sample_rate=1_000_000), "invalid sample rate 1000000 Hz"),
    (dict(application_name="a", upload_interval=0), "invalid upload interval"),
    (dict(application_name="a", upload_interval=float("nan")), "invalid upload interval"),
    (dict(application_name="a", tags={"bad name": "x"}), 'invalid label name "bad name"'),
    (dict(application_name="a", tags={"__name__": "x"}), "__name__"),
    (dict(application_name="a", tags={"region": "a,b"}), 'invalid value "a,b" for tag "region"'),
    (dict(application_name="a", http_headers={"Bad Header": "x"}), 'invalid HTTP header "Bad Header"'),
    (dict(application_name="a", mem_heap_sample_size=0), "mem_heap_sample_size"),
    (dict(application_name="a", mem_max_nframe=0), "mem_max_nframe"),
]

BAD_TYPES = [
    (dict(application_name=5), "application_name must be a str, not int 5"),
    (dict(application_name="a", sample_rate="100"), "sample_rate must be an int, not str '100'"),
    (dict(application_name="a", sample_rate=True), "sample_rate must be an int"),
    (dict(application_name="a", tags={"k": 1}), "tags must map str to str"),
    (dict(application_name="a", tags=["k=v"]), "tags must be a dict"),
    (dict(application_name="a", upload_interval="10"), "upload_interval must be a number of seconds"),
    (dict(application_name="a", line_no=7), "line_no must be a pyroscope.LineNo"),
    (dict(application_name="a", report_pid="yes"), "report_pid must be a bool"),
]


@pytest.mark.parametrize("kwargs,message", BAD + BAD_TYPES, ids=[m for _, m in BAD + BAD_TYPES])
def test_bad_settings_raise_config_error_before_starting(kwargs, message, monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith("PYROSCOPE_"):
            monkeypatch.delenv(k)
    with pytest.raises(pyroscope.ConfigError) as e:
        pyroscope.configure(**kwargs)
    assert isinstance(e.value, ValueError)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    assert not pyroscope._native.running()


@pytest.mark.parametrize("kwargs,message", BAD_TYPES, ids=[m for _, m in BAD_TYPES])
def test_wrong_types_are_type_errors_too(kwargs, message):
    with pytest.raises(TypeError, match="must"):
        pyroscope.configure(**kwargs)


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected keyword argument 'detect_subprocesses'"):
        pyroscope.configure(application_name="a", detect_subprocesses=True)


@pytest.mark.parametrize(
    "var,value,message",
    [
        ("PYROSCOPE_SAMPLE_RATE", "fast", "PYROSCOPE_SAMPLE_RATE"),
        ("PYROSCOPE_TAGS", "region", "invalid tags"),
        ("PYROSCOPE_SERVER_ADDRESS", "nope", "invalid server address"),
        ("PYROSCOPE_UPLOAD_INTERVAL", "0", "PYROSCOPE_UPLOAD_INTERVAL"),
    ],
)
def test_bad_environment_raises_config_error(var, value, message, monkeypatch):
    monkeypatch.setenv(var, value)
    with pytest.raises(pyroscope.ConfigError, match=message):
        pyroscope.configure(application_name="env-bad")
    assert not pyroscope._native.running()


@pytest.mark.parametrize("name", ["stop", "change_name", "tag", "remove_tags", "build_summary", "test_logger"])
def test_deprecated_functions_warn_and_do_nothing(name):
    args = {"change_name": ("x",), "tag": ({"a": "b"},), "remove_tags": ("a",)}.get(name, ())
    with pytest.warns(DeprecationWarning):
        assert getattr(pyroscope, name)(*args) is None


def test_app_name_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="app_name is deprecated"):
        with pytest.raises(pyroscope.ConfigError, match='invalid application name "bad app"'):
            pyroscope.configure(app_name="bad app")


def test_thread_tag_calls_never_raise_for_bad_labels_but_check_types():
    assert pyroscope.add_thread_tag("bad key", "x") is False  # not running: False, as pyroscope-io
    assert pyroscope.add_thread_tag("ok", "") is False
    assert pyroscope.add_thread_tag("vehicle", "car") is False
    assert pyroscope._native.thread_tags() == [("vehicle", "car")]
    pyroscope.remove_thread_tag("bad key", "x")
    pyroscope.remove_thread_tag("ok", "")
    pyroscope.remove_thread_tag("vehicle", "car")
    assert pyroscope._native.thread_tags() == []
    with pytest.raises(TypeError):
        pyroscope.add_thread_tag("k", 1)
    with pytest.raises(TypeError):
        pyroscope.remove_thread_tag(1, "v")


def test_thread_tags_follow_pyroscope_io_semantics():
    t = pyroscope._native.thread_tags
    pyroscope.add_thread_tag("k", "a")
    pyroscope.add_thread_tag("k", "b")
    assert t() == [("k", "b")]  # the value added last
    pyroscope.remove_thread_tag("k", "b")
    assert t() == [("k", "a")]  # the other pair is still there
    pyroscope.remove_thread_tag("k", "zzz")  # not there: nothing changes
    assert t() == [("k", "a")]
    pyroscope.remove_thread_tag("k", "a")
    assert t() == []


def test_tag_wrapper_without_the_walker_is_per_thread_and_nests():
    t = pyroscope._native.thread_tags
    with pyroscope.tag_wrapper({"endpoint": "/a", "vehicle": "car"}):
        with pyroscope.tag_wrapper({"vehicle": "bike"}):
            assert t() == [("endpoint", "/a"), ("vehicle", "bike")]
        assert t() == [("endpoint", "/a"), ("vehicle", "car")]
    assert t() == []

    @pyroscope.tag_wrapper({"job": "nightly"})
    def work(x):
        return x, t()

    assert work(3) == (3, [("job", "nightly")])
    assert t() == []
    with pytest.raises(TypeError):
        pyroscope.tag_wrapper(["k", "v"])


def test_context_registry_merges_and_frees_after_the_grace_period():
    n = pyroscope._native
    outer = n.new_context(0, [("endpoint", "/a"), ("bad key", "x")])
    inner = n.new_context(outer.key, [("vehicle", "car"), ("endpoint", "/b")])
    assert outer.labels() == [("endpoint", "/a")]
    assert inner.labels() == [("endpoint", "/b"), ("vehicle", "car")]
    assert inner.key > outer.key > 0
    assert inner.key_bytes == inner.key.to_bytes(8, "little")
    assert n.lookup(inner.key, 1) == [("endpoint", "/b"), ("vehicle", "car")]
    assert n.lookup(0, 1) is None
    key = inner.key
    del inner
    n.sweep_now()
    # Still there during the grace period (samples of its last moments are in the ring)...
    assert n.lookup(key, 1) == [("endpoint", "/b"), ("vehicle", "car")]
    # The same labels share one entry (one per distinct set, however many wrappers)...
    again = n.new_context(0, [("endpoint", "/a")])
    assert again.key == outer.key
    # ...and a key, once freed, is never handed out again.
    other = n.new_context(0, [("endpoint", "/c")])
    assert other.key > key


def test_configure_twice_is_refused_and_shutdown_reports(receiver, run_py):
    r = receiver()
    out = run_py(f"""
        import pyroscope
        print(pyroscope.shutdown())
        print(pyroscope.configure(application_name="first", server_address={r.url!r}, upload_interval=1))
        print(pyroscope.configure(application_name="second", server_address={r.url!r}))
        x = 0
        for i in range(3_000_000):
            x += i
        print(pyroscope.shutdown(), pyroscope.shutdown())
        print(pyroscope.configure(application_name="third", server_address={r.url!r}))
        for i in range(3_000_000):
            x += i
        print(pyroscope.shutdown())
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "False", "True", "False", "True", "True"]
    r.wait_for(lambda p: p["labels"]["service_name"] == "first")
    r.wait_for(lambda p: p["labels"]["service_name"] == "third")
    assert not [p for p in r.profiles() if p["labels"]["service_name"] == "second"]


def test_keywords_win_over_environment_which_wins_over_defaults(receiver, run_py):
    r = receiver()
    env = {
        "PYROSCOPE_APPLICATION_NAME": "from-env",
        "PYROSCOPE_SERVER_ADDRESS": r.url,
        "PYROSCOPE_TAGS": "region=env,az=1",
        "PYROSCOPE_UPLOAD_INTERVAL": "1",
    }
    burn = "x = 0\nfor i in range(3_000_000): x += i\n"
    out = run_py("import pyroscope\npyroscope.configure()\n" + burn + "pyroscope.shutdown()\n", env=env)
    assert out.returncode == 0, out.stderr
    p = r.wait_for(lambda p: p["labels"]["service_name"] == "from-env")
    assert (p["labels"]["region"], p["labels"]["az"]) == ("env", "1")
    out = run_py(
        "import pyroscope\npyroscope.configure(application_name='from-kw', tags={'region': 'kw'})\n"
        + burn
        + "pyroscope.shutdown()\n",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    p = r.wait_for(lambda p: p["labels"]["service_name"] == "from-kw")
    assert (p["labels"]["region"], p["labels"]["az"]) == ("kw", "1")


def test_no_server_address_writes_profiles_to_the_default_folder(run_py, tmp_path):
    out = run_py(
        "import pyroscope\nassert pyroscope.configure(application_name='files', upload_interval=1)\n"
        # 0.3 s of the thread's CPU time: about 30 samples at 100 Hz.
        "import time\nend = time.thread_time() + 0.3\nx = 0\nwhile time.thread_time() < end: x += 1\n"
        "pyroscope.shutdown()\n"
    )
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "profiles").glob("*.pb.gz"))
    assert files, list(tmp_path.iterdir())
    assert any("cpu" in f.name for f in files), files


def test_python_stacks_are_on_after_configure(run_py):
    # The walker passes its self-test on every supported CPython: samples carry Python frames
    # and tag_wrapper's labels follow the running asyncio task.
    out = run_py("""
import pyroscope
pyroscope.configure(application_name="probe", server_address="http://127.0.0.1:9")
print(pyroscope._native.context_labels())
pyroscope.shutdown()
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True", out.stderr


def test_the_registry_holds_one_entry_per_distinct_label_set():
    # A busy service wraps every request: the registry must not grow with the request rate.
    n = pyroscope._native
    before = n.registry_len()
    holders = [n.new_context(0, [("vehicle", "car"), ("n", str(i % 3))]) for i in range(3000)]
    assert n.registry_len() - before <= 3
    assert len({h.key for h in holders}) == 3
