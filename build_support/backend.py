"""The package's PEP 517 build backend: setuptools' own, plus mypy as a build requirement
of a wheel when its hot path will be compiled (``buildmode``: TCPCOPY_MYPYC=1, or unset
on a host with a C compiler and Python's headers; see setup.py). An editable or a
pure-Python build needs nothing beyond setuptools."""

import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 (every hook not redefined here)

from buildmode import VARIABLE, missing_tools

MYPYC = "mypy>=1.11"   # mypyc ships inside mypy


def get_requires_for_build_wheel(config_settings=None):
    value = os.environ.get(VARIABLE, "")
    compiles = value == "1" or (value == "" and not missing_tools(need_mypyc=False))
    return _setuptools.get_requires_for_build_wheel(config_settings) + ([MYPYC] if compiles else [])
