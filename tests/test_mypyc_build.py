"""The mypyc build (setup.py, build_support/buildmode.py): compiled by default where it can be, and what it refuses, saying what to do."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def setup_py(*args: str, mypyc: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TCPCOPY_MYPYC": mypyc}
    return subprocess.run([sys.executable, "setup.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_an_unknown_value_is_named_with_the_ones_that_work():
    done = setup_py("--name", mypyc="yes")
    assert done.returncode != 0
    assert "TCPCOPY_MYPYC='yes'" in done.stderr and "set it to 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_editable_compiled_install_is_refused_with_the_way_that_works():
    done = setup_py("editable_wheel", mypyc="1")
    assert done.returncode != 0
    assert "regular install only" in done.stderr and "pip install ." in done.stderr
    assert "Traceback" not in done.stderr


def test_without_the_variable_the_build_is_pure_python():
    done = setup_py("--name", mypyc="0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("tcpcopy")


# ---------------------------------------------------------------- the default: compile where it can

sys.path.insert(0, str(ROOT / "build_support"))
from buildmode import BuildModeError, decide, missing_tools  # noqa: E402


def test_a_regular_install_compiles_by_default_where_it_can():
    assert decide("", editable=False, missing=[]) == (True, "")
    assert decide("1", editable=False, missing=[]) == (True, "")


def test_without_a_compiler_the_default_build_is_pure_and_says_why():
    compiled, note = decide("", editable=False, missing=["a C compiler (cc)"])
    assert not compiled
    assert "pure Python" in note and "a C compiler (cc)" in note and "TCPCOPY_MYPYC=0" in note


def test_asking_for_the_compiled_build_without_a_compiler_names_what_is_missing():
    with pytest.raises(BuildModeError, match=r"missing a C compiler \(cc\)"):
        decide("1", editable=False, missing=["a C compiler (cc)"])


def test_an_editable_install_stays_pure_by_default_and_0_is_always_pure():
    assert decide("", editable=True, missing=[]) == (False, "")
    assert decide("0", editable=False, missing=[]) == (False, "")
    with pytest.raises(BuildModeError, match="regular install only"):
        decide("1", editable=True, missing=[])


def test_this_host_can_compile():
    """The lab host and CI build the compiled hot path (make test-compiled): gcc and Python's
    headers are among the Debian packages make deps installs."""
    assert missing_tools(need_mypyc=False) == []
