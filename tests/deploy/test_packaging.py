"""The wheel as a user installs it.

``test_the_wheel_holds_the_runtime_and_no_lab``: ``pip wheel . --no-deps`` without build
isolation (setuptools and wheel come with the test extra), so it needs no network and runs
in ``make test``: the wheel holds the runtime packages and the operator tools, never the lab,
the benchmark or the tests.

The rest install that wheel in a fresh venv (its dependencies from PyPI): the three commands
answer --version, the sample config is in the package, matplotlib, supervisor and
prometheus_client come only with the extras, and each command that needs an extra says
which one. They need PyPI and a few minutes (pypcap builds from source): marked
``packaging``, run by ``make test-packaging`` and in CI, not by ``make test``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("tcpcopy", "intercept", "tcpcopy-cluster")
EXTRAS_ONLY = ("matplotlib", "supervisor", "prometheus_client")
RUNTIME = ("capture", "cluster", "cluster/ops", "session", "intercept")
# What a checkout holds beside the sources: never copied into the build.
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "build", "*.egg-info", "__pycache__",
                                     ".hypothesis", ".pytest_cache", "*.so")


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of this checkout's sources (so an earlier build's leftovers
    in build/ cannot slip in, and the checkout itself is not written to)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                 "-w", work / "wheels", source])
    assert built.returncode == 0, built.stderr
    found, = (work / "wheels").glob("tcpcopy-*.whl")
    return found


def test_the_wheel_holds_the_runtime_and_no_lab(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    modules = {name for name in names if name.endswith(".py")}
    folders = {name.rsplit("/", 1)[0].removeprefix("tcpcopy/") for name in modules}
    assert folders == set(RUNTIME) | {"deploy"}, folders
    for folder in RUNTIME:        # every module of the runtime folders, nothing else
        expected = {f"tcpcopy/{folder}/{path.name}" for path in (ROOT / folder).glob("*.py")}
        assert {m for m in modules if m.rsplit("/", 1)[0] == f"tcpcopy/{folder}"} == expected
    assert modules & {f"tcpcopy/deploy/{m}" for m in ("netns.py", "benchmark.py", "demo.py")} == set()
    assert "tcpcopy/deploy/__init__.py" in modules and "tcpcopy/deploy/cluster-sample.toml" in names
    assert not [name for name in names if "/lab/" in name or "bench" in name or "test" in name]


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel built from this checkout, without extras."""
    work = tmp_path_factory.mktemp("packaging")
    made = run([sys.executable, "-m", "venv", work / "venv"])
    assert made.returncode == 0, made.stderr
    installed = run([work / "venv" / "bin" / "pip", "install", "-q", wheel])
    assert installed.returncode == 0, installed.stderr
    return work / "venv"


@pytest.mark.packaging
def test_the_three_commands_answer_version(venv):
    for command in COMMANDS:
        answer = run([venv / "bin" / command, "--version"])
        assert answer.returncode == 0 and answer.stdout.startswith(command), (command, answer.stderr)


@pytest.mark.packaging
def test_matplotlib_supervisor_and_prometheus_client_only_with_extras(venv):
    code = f"import importlib.util as u; print([m for m in {EXTRAS_ONLY!r} if u.find_spec(m)])"
    assert run([venv / "bin" / "python", "-c", code]).stdout.strip() == "[]"


@pytest.mark.packaging
def test_the_sample_config_is_in_the_package(venv):
    code = "from tcpcopy.cluster.config import SAMPLE; print(SAMPLE)"
    sample = Path(run([venv / "bin" / "python", "-c", code]).stdout.strip())
    assert str(sample).startswith(str(venv)) and "[stats]" in sample.read_text()


@pytest.mark.packaging
def test_each_command_that_needs_an_extra_names_it(venv, tmp_path):
    env = {**os.environ, "PATH": str(venv / "bin")}      # no supervisord of the system's
    config = tmp_path / "cluster.toml"
    config.write_text(run([venv / "bin" / "python", "-c",
                           "from tcpcopy.cluster.config import SAMPLE; print(open(SAMPLE).read())"]).stdout)
    start = run([venv / "bin" / "tcpcopy-cluster", "start", config, "--role", "online"], env=env)
    assert start.returncode == 2 and "pip install 'tcpcopy[cluster]'" in start.stderr, start.stderr
    assert not (tmp_path / "keys").exists()
    metrics = run([venv / "bin" / "tcpcopy-metrics", "--hub", f"ipc://{tmp_path}/feed", "--listen", "127.0.0.1:0"])
    assert metrics.returncode == 2 and "pip install 'tcpcopy[metrics]'" in metrics.stderr, metrics.stderr
    report = run([venv / "bin" / "python", "-m", "tcpcopy.cluster.ops.report", "build", "--out-dir", tmp_path / "r"])
    assert report.returncode == 0 and "pip install 'tcpcopy[report]'" in report.stderr, report.stderr
    assert "tcpcopy[report]" in (tmp_path / "r" / "report.html").read_text()
    assert not (tmp_path / "r" / "report.png").exists()
    for output in (start, metrics, report):
        assert "Traceback" not in output.stderr
