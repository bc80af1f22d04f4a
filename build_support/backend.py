"""The package's PEP 517 build backend: setuptools' own, plus mypy as a build requirement
when TCPCOPY_MYPYC=1 asks for the compiled hot path (see setup.py). A plain build needs
nothing beyond setuptools."""

import os

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 (every hook not redefined here)

MYPYC = "mypy>=1.11"   # mypyc ships inside mypy


def get_requires_for_build_wheel(config_settings=None):
    wanted = [MYPYC] if os.environ.get("TCPCOPY_MYPYC") == "1" else []
    return _setuptools.get_requires_for_build_wheel(config_settings) + wanted
