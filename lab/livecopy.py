"""A live copy in the four-host lab: real nginx on the online and target hosts, intercept on
the assistant, tcpcopy on the online host, and the numbers a user checks afterwards.

``LiveCopy`` starts and stops the two commands exactly as a user would (their console
entry points, their flags), measures each process with psutil, and collects the servers'
access logs; ``CopyReport`` turns all of it into the figures of a run report: requests seen
online and at the target, the loss ratio, session outcomes, CPU and memory per process.
With ``stats_endpoint`` both commands also publish their counters there (``--stats``) and a
recorder (``python -m tcpcopy.cluster.ops.report record``) bound in the online host keeps one
snapshot of them per second, for the run report's time series (:meth:`LiveCopy.samples`).
Used by the demo (``python -m tcpcopy.lab.demo``) and the end-to-end tests.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tcpcopy.lab import accesslog
from tcpcopy.cluster.ops.report import load_samples
from tcpcopy.lab.netns import (ASSISTANT, ASSISTANT_ADDRESS, ASSISTANT_V6, CLIENT, ONLINE, ONLINE_ADDRESS,
                                ONLINE_CONTROL_SIDE, ONLINE_V6, TARGET, TARGET_ADDRESS, TARGET_V6, Lab)
from tcpcopy.lab.kvstore import Redis
from tcpcopy.lab.rundirs import remove_run_dir
from tcpcopy.lab.servers import Greeter, Nginx

ONLINE_PORT = 80
TARGET_PORT = 8080
BASELINE_PORT = 8081   # the baseline nginx (the online build), beside the target on its host
READY_TIMEOUT = 10.0
# Where the copy's processes publish their stats: the online host's control-side address,
# reachable from the assistant (intercept) and bound by the recorder in the online host.
STATS_ENDPOINT = f"tcp://{ONLINE_CONTROL_SIDE}:36600"
RECORDER_GRACE = 5.0


class LiveCopyError(RuntimeError):
    """A command of the copy did not start or stop as it should; the message quotes its log."""


@dataclass
class ProcessFigures:
    name: str
    cpu_seconds: float
    peak_rss_mb: float


@dataclass
class CopyFigures:
    """What the servers' access logs and the owners' outcomes say of a copy; both reports
    (this module's and the cluster's) start with these lines."""

    online_requests: int
    target_requests: int
    copies: int
    loss_ratio: float
    target_status: dict
    outcomes: dict

    def request_lines(self) -> list[str]:
        return [
            f"requests online            {self.online_requests}",
            f"requests at the target     {self.target_requests}  (copies: {self.copies})",
            f"request loss ratio         {self.loss_ratio:.6f}   (online x copies - target) / (online x copies)",
            f"target status codes        {self.target_status}",
        ]


def process_lines(processes: list) -> list[str]:
    """The CPU seconds and peak RSS of every measured process, a line each."""
    return ["process                    CPU s    peak RSS MB",
            *(f"  {p.name:<24} {p.cpu_seconds:7.2f}  {p.peak_rss_mb:8.1f}" for p in processes)]


@dataclass
class CopyReport(CopyFigures):
    tcpcopy_summary: dict
    processes: list = field(default_factory=list)

    def render(self) -> str:
        engine = self.tcpcopy_summary.get("engine", {})
        table = self.tcpcopy_summary.get("table", {})
        lines = [
            *self.request_lines(),
            f"sessions started           {table.get('sessions_started', 0)}",
            f"sessions established       {engine.get('established', 0)}",
            f"session outcomes           {self.outcomes or 'none'}",
            f"fabricated SYNs            {engine.get('fabricated_syns', 0)}   reconnects {engine.get('reconnects', 0)}"
            f"   retransmits {engine.get('retransmits', 0)}",
            *process_lines(self.processes),
        ]
        return "\n".join(lines)


class LiveCopy:
    """nginx online and at the target, intercept, tcpcopy: started in order, stopped on exit.

    ``start_copy=False`` leaves tcpcopy to the caller (:meth:`start_tcpcopy`), so sessions can
    begin before the copy does. ``greeter_port`` adds a :class:`Greeter` (a server-first line
    protocol) on that port online and at the target, copied by a second ``-x`` mapping;
    ``redis_port`` likewise adds a :class:`Redis` (``online_redis``, ``target_redis``).
    ``stats_endpoint`` (e.g. :data:`STATS_ENDPOINT`) runs both commands with ``--stats`` and
    records their snapshots from before intercept starts until :meth:`stop_recorder`.
    ``online_files`` and ``target_files`` replace the site each nginx serves (the default
    site when None), e.g. to have the target answer some paths differently.
    ``target_upstream`` makes the target's nginx proxy its pages to that server (e.g. a
    :class:`~tcpcopy.lab.slowbackend.SlowBackend`) instead of serving them itself.
    ``baseline_files`` adds a baseline nginx serving them on the target host at
    :data:`BASELINE_PORT`, and tcpcopy replays compared sessions to it too (``--baseline``;
    the test passes ``--compare``). ``token`` makes every nginx put a random token of its own
    in each page where that text is (see :class:`~tcpcopy.lab.servers.Nginx`).
    ``ipv6`` (in a :func:`~tcpcopy.lab.netns.four_host_v6` lab) copies over IPv6: the
    servers listen on the hosts' IPv6 addresses, intercept listens on all addresses
    (dual-stack) and tcpcopy names it by its IPv6 one (``-s [2001:2:0:2::1]``).
    """

    def __init__(self, lab: Lab, tcpcopy_flags: list[str] = (), intercept_flags: list[str] = (),
                 copies: int = 1, target_files: dict | None = None, *, start_copy: bool = True,
                 greeter_port: int | None = None, stats_endpoint: str | None = None,
                 target_upstream: str | None = None, redis_port: int | None = None, ipv6: bool = False,
                 online_files: dict | None = None, baseline_files: dict | None = None,
                 token: str | None = None):
        if redis_port is not None and redis_port in (ONLINE_PORT, TARGET_PORT, greeter_port):
            raise ValueError(f"redis_port {redis_port} is taken by another copied service: pick another")
        self.lab = lab
        self.tcpcopy_flags = list(tcpcopy_flags)
        self.intercept_flags = list(intercept_flags)
        self.copies = copies
        self.start_copy = start_copy
        self.greeter_port = greeter_port
        self.dir = Path(tempfile.mkdtemp(prefix="tcpcopy-live-"))
        self.ipv6 = ipv6
        self.online_address = ONLINE_V6 if ipv6 else ONLINE_ADDRESS
        self.target_address = TARGET_V6 if ipv6 else TARGET_ADDRESS
        self.online = Nginx(lab, ONLINE, self.online_address, ONLINE_PORT, files=online_files, token=token)
        self.target = Nginx(lab, TARGET, self.target_address, TARGET_PORT, files=target_files,
                            upstream=target_upstream, token=token)
        self.baseline = (None if baseline_files is None else
                         Nginx(lab, TARGET, self.target_address, BASELINE_PORT, files=baseline_files, token=token))
        self.online_greeter: Greeter | None = None
        self.target_greeter: Greeter | None = None
        if greeter_port is not None:
            self.online_greeter = Greeter(lab, ONLINE, self.online_address, greeter_port)
            self.target_greeter = Greeter(lab, TARGET, self.target_address, greeter_port)
        self.redis_port = redis_port
        self.online_redis: Redis | None = None
        self.target_redis: Redis | None = None
        if redis_port is not None:
            self.online_redis = Redis(lab, ONLINE, self.online_address, redis_port)
            self.target_redis = Redis(lab, TARGET, self.target_address, redis_port)
        self.intercept: subprocess.Popen | None = None
        self.tcpcopy: subprocess.Popen | None = None
        self.summary_path = self.dir / "summary.json"
        self.stats_endpoint = stats_endpoint
        self.recorder: subprocess.Popen | None = None
        self.samples_path = self.dir / "samples.jsonl"
        self.figures: dict[str, ProcessFigures] = {}

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> "LiveCopy":
        for web in self._nginxes():
            web.start()
        for web in self._nginxes():
            web.wait_ready()
        for server in (*self._greeters(), *self._redis_servers()):
            server.start()
            server.wait_ready()
        if self.stats_endpoint:
            self.start_recorder()
        self.start_intercept()
        if self.start_copy:
            self.start_tcpcopy()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_tcpcopy()
        self.stop_intercept()
        self.stop_recorder()
        for web in self._nginxes():
            web.stop()
        for server in (*self._greeters(), *self._redis_servers()):
            server.stop()

    def _nginxes(self) -> list[Nginx]:
        return [web for web in (self.online, self.target, self.baseline) if web is not None]

    def _greeters(self) -> list[Greeter]:
        return [g for g in (self.online_greeter, self.target_greeter) if g is not None]

    def _redis_servers(self) -> list[Redis]:
        return [r for r in (self.online_redis, self.target_redis) if r is not None]

    @property
    def url(self) -> str:
        return f"http://{_bracketed(self.online_address)}:{ONLINE_PORT}"

    def start_intercept(self) -> None:
        targets = [target for _online, target in self._port_map()]
        if self.baseline is not None:
            targets.append(BASELINE_PORT)
        ports = " or ".join(f"src port {target}" for target in targets)
        argv = [sys.executable, "-m", "tcpcopy.intercept.main",
                "-i", self.lab.interface(ASSISTANT, TARGET),
                "-F", f"tcp and src host {self.target_address} and ({ports})",
                *self._bind_flags(), *self._stats_flags(), *self.intercept_flags]
        self.intercept = self._start(ASSISTANT, argv, "intercept", "listening on")

    def _bind_flags(self) -> list[str]:
        """IPv4: the control-side address. IPv6: none, so intercept listens on every address,
        IPv4 and IPv6 (its wildcard is dual-stack), and tcpcopy picks the IPv6 one."""
        return [] if self.ipv6 else ["-b", ASSISTANT_ADDRESS]

    @property
    def intercept_address(self) -> str:
        """What tcpcopy's ``-s`` names intercept by."""
        return f"[{ASSISTANT_V6}]" if self.ipv6 else ASSISTANT_ADDRESS

    def start_tcpcopy(self) -> None:
        target = _bracketed(self.target_address)
        argv = [sys.executable, "-m", "tcpcopy.session.main",
                "-x", ",".join(f"{o}-{target}:{t}" for o, t in self._port_map()), "-s", self.intercept_address,
                "-i", self.lab.interface(ONLINE, CLIENT), "--summary-json", str(self.summary_path),
                *self._stats_flags(), *self._baseline_flags(), *self.tcpcopy_flags]
        self.tcpcopy = self._start(ONLINE, argv, "tcpcopy", "copying")

    def _baseline_flags(self) -> list[str]:
        if self.baseline is None:
            return []
        return ["--baseline", f"{ONLINE_PORT}-{_bracketed(self.target_address)}:{BASELINE_PORT}"]

    def _stats_flags(self) -> list[str]:
        return ["--stats", self.stats_endpoint] if self.stats_endpoint else []

    def start_recorder(self) -> None:
        """Bind the stats endpoint in the online host and write one snapshot per second to
        :attr:`samples_path` (appending: a restart adds to what was recorded)."""
        argv = [sys.executable, "-m", "tcpcopy.cluster.ops.report", "record", "--stats", self.stats_endpoint,
                "--out", str(self.samples_path)]
        self.recorder = self._start(ONLINE, argv, "recorder", "recording")

    def stop_recorder(self) -> int | None:
        """Stop the recorder by PID (SIGTERM: it writes a last snapshot and exits)."""
        if self.recorder is None:
            return None
        code = self.lab.stop(self.recorder, RECORDER_GRACE)
        self.recorder = None
        return code

    def samples(self) -> list[dict]:
        """The recorded snapshots (``Aggregator.snapshot_json()``), oldest first."""
        return load_samples(self.samples_path)

    def _port_map(self) -> list[tuple[int, int]]:
        """(online port, target port) of every copied service."""
        ports = [(ONLINE_PORT, TARGET_PORT)]
        if self.greeter_port is not None:
            ports.append((self.greeter_port, self.greeter_port))
        if self.redis_port is not None:
            ports.append((self.redis_port, self.redis_port))
        return ports

    def _start(self, host: str, argv: list[str], name: str, ready_text: str) -> subprocess.Popen:
        log_path = self.dir / f"{name}.log"
        already = len(self.log(name))  # a restart appends: only what it writes counts
        with open(log_path, "ab") as log_file:
            proc = self.lab.popen(host, argv, stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if ready_text in self.log(name)[already:]:
                return proc
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        raise LiveCopyError(f"{name} did not start:\n{self.log(name)[-2000:]}")

    def remove_dir(self) -> None:
        """Remove the run's directory (logs, summary, samples) once they have been read
        (kept with ``TCPCOPY_KEEP_RUNS=1``: :mod:`tcpcopy.lab.rundirs`)."""
        remove_run_dir(self.dir)

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_tcpcopy(self) -> int | None:
        code = self._stop(self.tcpcopy, "tcpcopy")
        self.tcpcopy = None
        return code

    def stop_intercept(self) -> int | None:
        code = self._stop(self.intercept, "intercept")
        self.intercept = None
        return code

    def kill_intercept(self) -> None:
        """End intercept abruptly (SIGKILL): no BYE reaches the owners."""
        if self.intercept is not None:
            self.intercept.kill()
            self.intercept.wait(5)
            self.intercept = None

    def capture_worker_pid(self) -> int | None:
        """The pid of tcpcopy's capture worker (its child running tcpcopy.capture.worker)."""
        if self.tcpcopy is None:
            return None
        try:
            children = psutil.Process(self.tcpcopy.pid).children()
        except psutil.Error:
            return None
        return next((c.pid for c in children if _role(c) == "worker"), None)

    def _stop(self, proc: subprocess.Popen | None, name: str) -> int | None:
        if proc is None:
            return None
        self._measure(proc, name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def _measure(self, proc: subprocess.Popen, name: str) -> None:
        """CPU seconds and peak RSS of the process and its children (the capture worker)."""
        try:
            root = psutil.Process(proc.pid)
            members = [(name, root)] + [(f"{name}/{_role(c)}", c) for c in root.children(recursive=True)]
            for label, member in members:
                times = member.cpu_times()
                self.figures[label] = ProcessFigures(label, times.user + times.system,
                                                     _peak_rss_mb(member.pid))
        except psutil.Error:
            pass

    # ------------------------------------------------------------------ results

    def wait_for_target(self, expected: int, timeout: float = 10.0) -> int:
        """Wait until the target has logged ``expected`` requests (or stops gaining)."""
        return self.target.wait_for_requests(expected, timeout)

    def report(self) -> CopyReport:
        online = self.online.access_log_entries()
        target = self.target.access_log_entries()
        summary = json.loads(self.summary_path.read_text()) if self.summary_path.exists() else {}
        return CopyReport(
            online_requests=len(online), target_requests=len(target), copies=self.copies,
            loss_ratio=accesslog.loss_ratio(len(online), len(target), self.copies),
            target_status=dict(accesslog.by_status(target)), outcomes=summary.get("owner", {}).get("outcomes", {}),
            tcpcopy_summary=summary, processes=list(self.figures.values()))


def _bracketed(address: str) -> str:
    """An address as it goes before ``:port``: IPv6 in brackets."""
    return f"[{address}]" if ":" in address else address


def _role(proc: psutil.Process) -> str:
    try:
        cmdline = proc.cmdline()
    except psutil.Error:
        return str(proc.pid)
    for part in cmdline:
        if part.startswith("tcpcopy."):
            return part.rsplit(".", 1)[-1]
    return str(proc.pid)


def _peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set size the kernel recorded for the process."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
