"""Continuous profiling for Python: a drop-in for pyroscope-io on the pyroscope Rust core."""

from pyroscope._native import __version__

__all__ = ["__version__"]
