"""Ahead-of-time compilation of the per-packet hot path with mypyc.

Everything else about the package is in pyproject.toml. A regular install compiles the
modules in HOT_PATH to C extensions, which Python imports in place of the .py files beside
them, when the host has a C compiler and Python's headers; otherwise, and for an editable
install, the package is pure Python (build_support/buildmode.py decides, TCPCOPY_MYPYC=1
insists on compiling, TCPCOPY_MYPYC=0 never compiles):

    pip install .                    # compiled where it can be
    TCPCOPY_MYPYC=0 pip install .    # pure Python

mypyc names a compiled module after its place in a package tree, and here the role folders
(capture/, session/, cluster/) install as tcpcopy.<role>. So the build copies them into
build/mypyc-src/tcpcopy/<role>/ first and compiles from there; the modules that are only
imported (for their types) are checked, not compiled.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.editable_wheel import editable_wheel

sys.path.insert(0, str(Path(__file__).resolve().parent / "build_support"))
from buildmode import VARIABLE, BuildModeError, check_value, decide, missing_tools  # noqa: E402

HOT_PATH = [
    "capture/packet.py",    # decode, checksums, the set_* rewrites, to_bytes
    "session/seqnum.py",
    "session/states.py",    # the engine's state and timer tables
    "session/stream.py",    # client stream order, the queued segment
    "session/rtt.py",
    "session/engine.py",
    "session/table.py",
    "session/ports.py",     # a client port for every new session
]
# The folders those modules import from, staged whole so mypy sees the real types.
STAGED_ROLES = ["capture", "session", "cluster"]
STAGE = Path("build/mypyc-src")
GROUP = "tcpcopy_hotpath"   # the shared library every compiled module lives in


def stage_sources() -> list[str]:
    """Copy the role folders under build/mypyc-src/tcpcopy/; return the staged HOT_PATH."""
    for role in STAGED_ROLES:
        target = STAGE / "tcpcopy" / role
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(role, target, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return [str(STAGE / "tcpcopy" / module) for module in HOT_PATH]


def hot_path_extensions() -> list:
    value = os.environ.get(VARIABLE, "")
    try:
        check_value(value)
        if any(command in sys.argv for command in ("egg_info", "dist_info", "--name", "--version")):
            return []   # metadata only: nothing is compiled (nor does mypy have to be there yet)
        compiled, note = decide(value, "editable_wheel" in sys.argv, missing_tools())
    except BuildModeError as exc:
        sys.exit(str(exc))
    if note:
        print(note, file=sys.stderr)
    if not compiled:
        return []
    from mypyc.build import mypycify
    hot = stage_sources()
    # With explicit package bases, mypy names each module by its path under MYPYPATH:
    # tcpcopy.<role>.<module>, as installed.
    os.environ["MYPYPATH"] = str(STAGE)
    return mypycify(["--explicit-package-bases", *hot], opt_level="3", group_name=GROUP)


def forget_earlier_builds() -> None:
    """setuptools packs whatever build/lib* holds: a module an earlier build copied there (a
    module since moved or removed, one compiled by a build since dropped from HOT_PATH, or a
    pure build after a compiled one) must not come along, so every build starts empty."""
    for lib in Path("build").glob("lib*"):
        shutil.rmtree(lib / "tcpcopy", ignore_errors=True)
        for path in lib.glob(f"{GROUP}__mypyc*"):
            path.unlink()


class editable_with_lab(editable_wheel):
    """An editable install (``pip install -e .``, what a checkout uses) also maps the lab
    (lab/) as tcpcopy.lab, so `python -m tcpcopy.lab.demo`, the benchmark and the tests find
    it. A wheel is built from pyproject.toml's package list alone, which leaves it out: no
    online host installs the namespace lab, the test servers or the benchmark."""

    def run(self):
        dist = self.distribution
        dist.packages = [*dist.packages, "tcpcopy.lab"]
        dist.package_dir = {**(dist.package_dir or {}), "tcpcopy.lab": "lab"}
        super().run()


forget_earlier_builds()
setup(ext_modules=hot_path_extensions(), cmdclass={"editable_wheel": editable_with_lab})
