"""The package's PEP 517 build backend: setuptools' own, plus mypy as a build requirement
of a wheel when its hot path will be compiled (``buildmode``: TCPCOPY_MYPYC=1, or unset
on a host with a C compiler and Python's headers; see setup.py). An editable or a
pure-Python build needs nothing beyond setuptools."""

import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 (every hook not redefined here)

from buildmode import VARIABLE, BuildModeError, decide, missing_tools

MYPYC = "mypy>=1.11"   # mypyc ships inside mypy


def get_requires_for_build_wheel(config_settings=None):
    """mypy when ``buildmode`` will compile, judged before mypy is there; what it refuses
    is left for setup.py to report."""
    try:
        compiles, _note = decide(os.environ.get(VARIABLE, ""), False, missing_tools(need_mypyc=False))
    except BuildModeError:
        compiles = False
    return _setuptools.get_requires_for_build_wheel(config_settings) + ([MYPYC] if compiles else [])
