"""``python -m pyroscope run app.py [args...]`` / ``python -m pyroscope run -m module [args...]``:
profiles a program without changing it. Settings come from the ``PYROSCOPE_*`` environment
variables (see ``pyroscope.configure``); without ``PYROSCOPE_APPLICATION_NAME`` the application
is named after the script or module. The program runs as ``__main__``, with its own
``sys.argv``, and its exit status is the command's."""

import os
import re
import runpy
import sys

USAGE = """usage: python -m pyroscope run app.py [args...]
       python -m pyroscope run -m module [args...]

Profiles the program with settings from the PYROSCOPE_* environment variables
(PYROSCOPE_APPLICATION_NAME, PYROSCOPE_SERVER_ADDRESS, PYROSCOPE_TAGS, ...)."""


def _default_name(target):
    base = os.path.basename(target)
    if base.endswith(".py"):
        base = base[:-3]
    if base == "__main__":
        base = os.path.basename(os.path.dirname(os.path.abspath(target))) or "python"
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", base) or "python"


def main(argv):
    if len(argv) < 2 or argv[0] != "run" or argv[1] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if argv[:1] != ["run"] or len(argv) < 2 else sys.stdout)
        return 2 if len(argv) < 2 or argv[0] != "run" else 0
    module = argv[1] == "-m"
    if module and len(argv) < 3:
        print(USAGE, file=sys.stderr)
        return 2
    target = argv[2] if module else argv[1]
    rest = argv[3:] if module else argv[2:]

    import pyroscope

    name = None if os.environ.get("PYROSCOPE_APPLICATION_NAME", "").strip() else _default_name(target)
    try:
        if name is None:
            pyroscope.configure()
        else:
            pyroscope.configure(application_name=name)
    except pyroscope.ConfigError as e:
        print(f"pyroscope: {e}", file=sys.stderr)
        return 2

    if module:
        sys.argv = [target, *rest]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [target, *rest]
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
