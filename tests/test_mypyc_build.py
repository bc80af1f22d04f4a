"""The opt-in mypyc build (setup.py) refuses what it cannot do well, and says what to do."""

import os
import subprocess
import sys
from pathlib import Path

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
