"""Whether a build compiles the hot path with mypyc (pure: no I/O but what ``missing`` reads).

TCPCOPY_MYPYC picks: "1" compiles or fails saying why, "0" builds pure Python, unset (or
empty) compiles when it can, which is the default: a regular install on a host with a C
compiler and Python's headers gets the compiled hot path (half the CPU per packet, or
less), any other stays pure Python and says so. An editable install (a checkout's
``pip install -e .``) stays pure in that case: compiled modules beside the sources would
hide later edits of the .py files.
"""

from __future__ import annotations

import importlib.util
import shutil
import sysconfig
from pathlib import Path

VARIABLE = "TCPCOPY_MYPYC"
VALUES = ("", "0", "1")


class BuildModeError(ValueError):
    """The variable or the build cannot be what was asked; the message says what to do."""


def check_value(value: str) -> None:
    if value not in VALUES:
        raise BuildModeError(f"{VARIABLE}={value!r}: set it to 1 to compile the hot path with mypyc, "
                             "0 for a pure-Python install, or leave it unset to compile where a C "
                             "compiler is present")


def missing_tools(need_mypyc: bool = True) -> list[str]:
    """What this host lacks to compile: a C compiler, Python's headers, mypyc."""
    missing = []
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        missing.append(f"a C compiler ({compiler})")
    include = sysconfig.get_paths().get("include", "")
    if not Path(include, "Python.h").exists():
        missing.append(f"Python's headers ({include}/Python.h; Debian: python3-dev)")
    if need_mypyc and importlib.util.find_spec("mypyc") is None:
        missing.append("mypyc (pip install mypy)")
    return missing


def decide(value: str, editable: bool, missing: list[str]) -> tuple[bool, str]:
    """(compile?, a note for the build log, "" when none). Raises BuildModeError when
    TCPCOPY_MYPYC=1 asks for what cannot be done."""
    check_value(value)
    if value == "0":
        return False, ""
    if editable:
        if value == "1":
            raise BuildModeError(f"{VARIABLE}=1 builds a regular install only: an editable one would put "
                                 "the compiled modules beside the sources, where they hide later edits "
                                 "of the .py files. Use `pip install .` (without -e), e.g. in a venv of "
                                 "its own.")
        return False, ""
    if missing:
        if value == "1":
            raise BuildModeError(f"{VARIABLE}=1 cannot compile the hot path here: missing "
                                 + ", ".join(missing) + " (pip's isolated build, the default, brings mypy)")
        return False, ("tcpcopy: building pure Python, the hot path is not compiled (missing "
                       + ", ".join(missing) + f"); {VARIABLE}=0 builds pure Python without this note")
    return True, ""
