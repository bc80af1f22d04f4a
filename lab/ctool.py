"""NetEase's C TCPCopy (tcpcopy 1.3.0 + intercept 1.0.0) in the four-host lab, for measuring
this project beside it on the same topology in the same run.

The C tool is built from the public source archives kept beside the project
(``../shared/anchors/build-c-tcpcopy.sh``; :func:`build`) and only ever run, never imported.
:class:`CCopy` starts it the way its documentation says, inside the lab's hosts
(:meth:`Lab.popen`): intercept on the assistant first, capturing the target's answers on its
target-facing veth, then tcpcopy on the online host (it captures with a raw socket and sends
with ``IP_HDRINCL``, IPv4 only), and stops both by PID (SIGINT, on which each writes its
closing counters to its log). It measures them like the project's own processes: CPU
seconds (user + system) from psutil and the kernel's peak RSS (VmHWM), keyed
``online/tcpcopy`` and ``assistant/intercept``.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from tcpcopy.lab.netns import ASSISTANT, ASSISTANT_ADDRESS, ONLINE, TARGET, TARGET_ADDRESS, Lab
from tcpcopy.lab.livecopy import ProcessFigures, _peak_rss_mb
from tcpcopy.lab.rundirs import remove_run_dir

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "build-c-tcpcopy.sh"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "c-tcpcopy"
BUILD_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0
INTERCEPT_READY = "pcap open"
TCPCOPY_READY = "connect to remote server"
INTERCEPT_LINK = "it adds fd"        # intercept accepted one of tcpcopy's connections
STOP_MARK = re.compile(r"\[\w+\] sig \d+ received")
_FIELD_RE = re.compile(r"^\s*([A-Za-z][A-Za-z -]*?)\s*:\s*(\d+)\s*$")


class CToolError(RuntimeError):
    """The C tool could not be built, started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class CTool:
    """The two C binaries."""

    tcpcopy: Path
    intercept: Path


# ---------------------------------------------------------------------- building

def build(dest: Path = DEFAULT_DIR, script: Path = BUILD_SCRIPT) -> CTool:
    """Build (or reuse) the C tool in ``dest`` with the anchors script; CToolError if that is
    impossible here (no script, no compiler, a failed build)."""
    dest = Path(dest)
    ready = CTool(dest / "tcpcopy", dest / "intercept")
    if all(_executable(path) for path in (ready.tcpcopy, ready.intercept)):
        return ready
    if not script.is_file():
        raise CToolError(f"no build script at {script}: the C tool's sources (shared/anchors/) are not beside "
                         "this project")
    missing = [tool for tool in ("gcc", "make") if shutil.which(tool) is None]
    if missing:
        raise CToolError(f"building the C tool needs {' and '.join(missing)}: apt-get install build-essential")
    try:
        done = subprocess.run(["bash", str(script), str(dest)], capture_output=True, text=True,
                              errors="replace", timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CToolError(f"building the C tool took more than {BUILD_TIMEOUT_S:g} s") from None
    if done.returncode != 0 or not all(_executable(p) for p in (ready.tcpcopy, ready.intercept)):
        raise CToolError(f"building the C tool failed ({script} exited with {done.returncode}):\n"
                         f"{(done.stderr or done.stdout).strip()[-1500:]}")
    return ready


def _executable(path: Path) -> bool:
    return path.is_file() and path.stat().st_mode & 0o111 != 0


# ---------------------------------------------------------------------- the closing counters

def parse_counters(log: str) -> dict[str, int]:
    """The counters a C tool writes to its log when it stops (``conns:5000,resp:25007``,
    ``send syn:5000, fin:5000,reset:0``, ``session dropped:0,all sessions:5000``), from the
    last stop on; without a stop mark, the last value of every counter in the log."""
    lines = log.splitlines()
    marks = [i for i, line in enumerate(lines) if STOP_MARK.search(line)]
    counters: dict[str, int] = {}
    for line in lines[marks[-1] + 1:] if marks else lines:
        _, tag, text = line.partition("] ")
        if not tag:
            continue
        for part in text.split(","):
            match = _FIELD_RE.match(part)
            if match:
                counters[match[1]] = int(match[2])
    return counters


# ---------------------------------------------------------------------- a copy

class CCopy:
    """The C intercept on the assistant and the C tcpcopy on the online host, copying each
    ``(online port, target port)`` of ``ports`` to the target; a context manager. The
    servers are the caller's."""

    def __init__(self, lab: Lab, tool: CTool, ports: list[tuple[int, int]], copies: int = 1):
        self.lab = lab
        self.tool = tool
        self.ports = list(ports)
        self.copies = copies
        self.dir = Path(tempfile.mkdtemp(prefix=f"tcl-ctool-{lab.tag}-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.figures: dict[str, ProcessFigures] = {}
        self._stopped = False
        lab.add_cleanup(self._kill)   # also on a lab teardown by signal or at exit

    def __enter__(self) -> "CCopy":
        try:
            self._start("intercept", ASSISTANT, self.intercept_argv(), INTERCEPT_READY)
            links = self.log("intercept").count(INTERCEPT_LINK)
            self._start("tcpcopy", ONLINE, self.tcpcopy_argv(), TCPCOPY_READY)
            self._wait_log("intercept", INTERCEPT_LINK, links + 1)
        except BaseException:
            self._kill()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def intercept_argv(self) -> list[str]:
        ports = " or ".join(f"src port {target}" for _online, target in self.ports)
        return [str(self.tool.intercept), "-i", self.lab.interface(ASSISTANT, TARGET),
                "-F", f"tcp and ({ports})", "-l", str(self.dir / "intercept.log")]

    def tcpcopy_argv(self) -> list[str]:
        mappings = ",".join(f"{online}-{TARGET_ADDRESS}:{target}" for online, target in self.ports)
        argv = [str(self.tool.tcpcopy), "-x", mappings, "-s", ASSISTANT_ADDRESS, "-l", str(self.dir / "tcpcopy.log")]
        return argv + (["-n", str(self.copies)] if self.copies > 1 else [])

    def _start(self, name: str, host: str, argv: list[str], ready: str) -> None:
        with open(self.dir / f"{name}.out", "ab") as out:
            self.procs[name] = self.lab.popen(host, argv, stdout=out, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL)
        self._wait_log(name, ready, 1)

    def _wait_log(self, name: str, text: str, count: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.log(name).count(text) >= count:
                return
            if self.procs[name].poll() is not None:
                raise CToolError(f"the C {name} exited with {self.procs[name].returncode} at start:\n"
                                 f"{self.diagnostics(name)}")
            time.sleep(0.05)
        raise CToolError(f"the C {name} was not ready after {READY_TIMEOUT_S:g} s (no {text!r} in its log):\n"
                         f"{self.diagnostics(name)}")

    def check_running(self) -> None:
        """CToolError if either process has exited (a copy that died mid-run measures nothing)."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise CToolError(f"the C {name} exited with {proc.returncode} during the run:\n"
                                 f"{self.diagnostics(name)}")

    def measure(self) -> dict[str, ProcessFigures]:
        """CPU seconds and peak RSS of each running process, keyed ``online/tcpcopy`` and
        ``assistant/intercept``."""
        figures = {}
        for name, host in (("tcpcopy", "online"), ("intercept", "assistant")):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                times = psutil.Process(proc.pid).cpu_times()
            except psutil.Error:
                continue
            label = f"{host}/{name}"
            figures[label] = ProcessFigures(label, times.user + times.system, _peak_rss_mb(proc.pid))
        self.figures = figures
        return figures

    def stop(self) -> None:
        """Measure, then stop tcpcopy and then intercept by PID (SIGINT: each writes its
        counters; SIGKILL after a grace period)."""
        if self._stopped:
            return
        self._stopped = True
        self.measure()
        for name in ("tcpcopy", "intercept"):
            if name in self.procs:
                self.lab.stop(self.procs[name], STOP_GRACE_S, signal.SIGINT)

    def _kill(self) -> None:
        """At a failure or lab teardown: both processes by PID, at once."""
        self._stopped = True
        for proc in self.procs.values():
            self.lab.stop(proc, 1.0)

    def counters(self) -> dict[str, dict[str, int]]:
        """The closing counters of each process's log (after :meth:`stop`)."""
        return {name: parse_counters(self.log(name)) for name in ("tcpcopy", "intercept")}

    def log(self, name: str) -> str:
        try:
            return (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self, name: str, tail: int = 1500) -> str:
        """The tail of a process's log and console output, and where they are."""
        out = self.dir / f"{name}.out"
        text = self.log(name) + (out.read_text(errors="replace") if out.exists() else "")
        return f"{text.strip()[-tail:] or '(no output)'}\n(logs in {self.dir})"

    def remove_dir(self) -> None:
        """Remove the run's directory once read (kept with ``TCPCOPY_KEEP_RUNS=1``)."""
        remove_run_dir(self.dir)
