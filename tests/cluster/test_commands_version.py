"""Every command answers --version (and the C tool's -v) with its name and version."""

import subprocess
import sys

import pytest

COMMANDS = {"tcpcopy": "tcpcopy.session.main", "intercept": "tcpcopy.intercept.main",
            "tcpcopy-cluster": "tcpcopy.cluster.ops.main"}


@pytest.mark.parametrize("flag", ["--version", "-v"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_version(command, flag):
    done = subprocess.run([sys.executable, "-m", COMMANDS[command], flag], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{command} ") and "message format" in done.stdout
