"""The session engine is sans-IO: no sockets, no clocks, no capture, no messaging."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
PURE_MODULES = [ROOT / "session" / "engine.py", ROOT / "session" / "seqnum.py",
                ROOT / "capture" / "packet.py", ROOT / "session" / "compare.py",
                ROOT / "session" / "shedding.py", ROOT / "session" / "table.py",
                ROOT / "session" / "orphans.py", ROOT / "session" / "comparing.py",
                ROOT / "session" / "failedpcap.py",
                ROOT / "session" / "kernelskip.py", ROOT / "cluster" / "shard.py",
                ROOT / "cluster" / "progress.py", ROOT / "session" / "states.py",
                ROOT / "session" / "stream.py", ROOT / "session" / "rtt.py",
                ROOT / "capture" / "icmp.py", ROOT / "session" / "fanout.py",
                ROOT / "session" / "ports.py", ROOT / "intercept" / "routes.py",
                ROOT / "cluster" / "wire.py", ROOT / "cluster" / "options.py",
                ROOT / "cluster" / "config.py", ROOT / "cluster" / "ops" / "accesscounts.py"]
BANNED = {"socket", "zmq", "pcap", "psutil", "time", "datetime", "select", "selectors",
          "asyncio", "threading", "multiprocessing", "subprocess", "os", "random", "scapy"}


def imported_names(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_modules_import_no_io_or_clock():
    for path in PURE_MODULES:
        assert imported_names(path) & BANNED == set(), path


def test_importing_the_engine_loads_no_io_module():
    """Modules the interpreter loads at start-up (os, and time for its own use) are not
    counted: only what importing the engine adds."""
    probe = ("import sys; before = set(sys.modules); import tcpcopy.session.engine; "
             f"print(sorted((set(sys.modules) - before) & set({sorted(BANNED)!r})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
