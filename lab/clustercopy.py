"""A sharded copy cluster in the four-host lab, launched through supervisord as a user would.

``ClusterCopy`` writes one cluster TOML (``deploy/cluster-sample.toml`` explains every key)
into a temporary directory of its own, starts the assistant role (the intercepts) with
``python -m tcpcopy.cluster.ops.main start CONFIG --role assistant`` inside the assistant host
and then the online role (session owners and capture workers) inside the online host, and
waits until the capture is live: every process RUNNING and every owner told by each capture
worker that it is feeding it. Beside nginx online (port 80) and at the target (port 8080),
like :class:`~tcpcopy.lab.livecopy.LiveCopy`.

Afterwards it reads what a user reads: ``status`` of each role, the programs' logs under
``<supervisor.dir>/<role>/`` (the owners' final stats line and outcomes, the intercepts' and
capture workers' closing counters), psutil's CPU seconds and the kernel's peak RSS (VmHWM)
of every program, and the servers' access logs.

Several clusters may copy the same traffic in one lab (``port_offset``/``instances``): the
first starts the intercepts and the servers, the others share them::

    with ClusterCopy(lab, 2, 2, 2, {"port_offset": 0, "instances": 2}, name="a") as a, \\
         ClusterCopy(lab, 2, 2, 2, {"port_offset": 1, "instances": 2}, name="b",
                     start_intercepts=False, servers=a.servers) as b:
        ...

With ``compare`` (the ``[compare]`` keys) the owners compare the target's answers with the
online server's; ``stop`` keeps what ``tcpcopy-cluster stop --role online`` printed and its
exit status (3: a ``fail_on`` threshold was crossed), and ``compare_totals`` and
``differences`` read the owners' files.

Everything it started stops on exit, also on failure: each role through
``tcpcopy-cluster stop``, and should that fail, supervisord and its programs by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tcpcopy.cluster.ops import supervisor
from tcpcopy.cluster.config import load_config
from tcpcopy.lab import accesslog
from tcpcopy.lab.netns import (ASSISTANT, ASSISTANT_ADDRESS, CLIENT, ONLINE, ONLINE_ADDRESS, TARGET,
                                TARGET_ADDRESS, Lab, LabError)
from tcpcopy.lab.livecopy import (ONLINE_PORT, TARGET_PORT, CopyFigures, ProcessFigures, _peak_rss_mb,
                                     process_lines)
from tcpcopy.lab.rundirs import remove_run_dir
from tcpcopy.lab.servers import Nginx
from tcpcopy.session import comparefiles

BASE_PORT = 36524
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 45.0
ROLES = ("online", "assistant")
GATE_FAILED = 3           # tcpcopy-cluster stop: a [compare] fail_on threshold was crossed
FEEDING = "a capture worker is feeding it"
INTERCEPT_READY = "listening on"

_STATS_RE = re.compile(r"([A-Za-z][A-Za-z ()-]*?):(\d+)")
_OWNER_STOPPED_RE = re.compile(r" INFO stopped: (?P<reason>.*?); outcomes (?P<outcomes>\{.*\})\s*$")


class ClusterCopyError(RuntimeError):
    """The cluster did not start, stop or restart as it should; the message quotes its logs."""


@dataclass
class OwnerSummary:
    """What one owner's log says: its last stats line and outcomes (the last run that ended)."""

    shard: int
    counters: dict[str, int]          # "started", "conns", "resp rst", ... from the "active:" line
    outcomes: dict[str, int]          # "closed:completed": n, ...
    stop_reason: str
    starts: int                       # "ready on" lines: 1 + restarts
    feeding: int                      # HELLOs from capture workers, all runs together
    finished: bool                    # a final "stopped:" line was written


@dataclass
class ClusterReport(CopyFigures):
    owners: list = field(default_factory=list)
    intercepts: dict = field(default_factory=dict)
    captures: dict = field(default_factory=dict)
    processes: list = field(default_factory=list)

    def render(self) -> str:
        lines = [*self.request_lines(), f"session outcomes           {self.outcomes or 'none'}"]
        for owner in self.owners:
            c = owner.counters
            lines.append(f"owner {owner.shard}: started {c.get('started', 0)} conns {c.get('conns', 0)} "
                         f"resp rst {c.get('resp rst', 0)} retransmit {c.get('retransmit', 0)} "
                         f"refused {c.get('refused', 0)} starts {owner.starts} stop: {owner.stop_reason or '-'}")
        for name, counters in self.intercepts.items():
            lines.append(f"{name}: routes registered {counters.get('registers', 0)} answers sent "
                         f"{counters.get('sent', 0)} unroutable {counters.get('unroutable', 0)}")
        for name, counters in self.captures.items():
            lines.append(f"{name}: captured {counters.get('captured', 0)} dropped(owner full) "
                         f"{counters.get('dropped(owner full)', 0)} kernel drop {counters.get('kernel drop', 0)}")
        lines += process_lines(self.processes)
        return "\n".join(lines)


class ClusterCopy:
    """nginx online and at the target, and a (workers, owners, intercepts) cluster copying
    port 80 to the target's 8080, under supervisord. A context manager.

    ``copy_options``: further ``[copy]`` keys (copies, sample_percent, port_offset,
    instances, client_pool, ...); ``compare``: the ``[compare]`` keys (percent, masks,
    fail_on, ...). ``start_intercepts=False`` uses the intercepts another cluster of the lab
    started (same base port); ``servers=(online, target)`` uses nginx servers another
    cluster started instead of starting its own; ``online_files`` and ``target_files`` are
    the sites of the servers it starts.
    """

    def __init__(self, lab: Lab, workers: int = 1, owners: int = 1, intercepts: int = 1,
                 copy_options: dict | None = None, name: str = "a", *, start_intercepts: bool = True,
                 servers: tuple[Nginx, Nginx] | None = None, base_port: int = BASE_PORT,
                 target_files: dict | None = None, ready_timeout: float = READY_TIMEOUT,
                 keys_dir: str | None = None, compare: dict | None = None, online_files: dict | None = None):
        if not re.fullmatch(r"[a-z0-9]{1,8}", name):
            raise ValueError(f"name {name!r}: use 1-8 characters [a-z0-9]")
        self.lab = lab
        self.keys_dir = keys_dir   # [security] keys_dir: another cluster's, to share its intercepts
        self.workers, self.owners, self.intercepts = workers, owners, intercepts
        self.copy_options = dict(copy_options or {})
        self.compare = dict(compare or {})
        self.name = name
        self.start_intercepts = start_intercepts
        self.base_port = base_port
        self.ready_timeout = ready_timeout
        self.copies = int(self.copy_options.get("copies", 1))
        self.own_servers = servers is None
        if servers is None:
            self.online = Nginx(lab, ONLINE, ONLINE_ADDRESS, ONLINE_PORT, files=online_files)
            self.target = Nginx(lab, TARGET, TARGET_ADDRESS, TARGET_PORT, files=target_files)
        else:
            self.online, self.target = servers
        self.dir = Path(tempfile.mkdtemp(prefix=f"tcl-cluster-{lab.tag}-{name}-"))
        self.config_path = self.dir / "cluster.toml"
        self.config_path.write_text(self.render_config())
        self.config = load_config(self.config_path)   # the product's own check of what we wrote
        self.started_roles: list[str] = []
        self.figures: dict[str, ProcessFigures] = {}
        self._known_pids: dict[str, set[int]] = {role: set() for role in ROLES}
        self._supervisord_pids: dict[str, int] = {}
        self._stopped = False
        self.stopped: dict[str, tuple[int, str]] = {}   # role -> exit status and output of `stop`
        lab.add_cleanup(self._emergency_stop)   # also on a lab teardown by signal or at exit

    # ------------------------------------------------------------------ config

    @property
    def servers(self) -> tuple[Nginx, Nginx]:
        return self.online, self.target

    @property
    def url(self) -> str:
        return f"http://{ONLINE_ADDRESS}:{ONLINE_PORT}"

    def render_config(self) -> str:
        intercepts = [f"{ASSISTANT_ADDRESS}:{self.base_port + i}" for i in range(self.intercepts)]
        copy = {"mappings": [f"{ONLINE_PORT}-{TARGET_ADDRESS}:{TARGET_PORT}"], "intercepts": intercepts,
                **self.copy_options}
        sections = {
            "copy": copy,
            "capture": {"workers": self.workers, "interface": self.lab.interface(ONLINE, CLIENT)},
            "owners": {"count": self.owners, "run_dir": str(self.dir / "run")},
            "intercept": {"count": self.intercepts, "interface": self.lab.interface(ASSISTANT, TARGET),
                          "bind": ASSISTANT_ADDRESS, "base_port": self.base_port},
            "supervisor": {"dir": str(self.dir / "sv")},
        }
        if self.keys_dir:
            sections["security"] = {"keys_dir": self.keys_dir}
        if self.compare:
            sections["compare"] = self.compare
        lines = [f"# written by tcpcopy.lab.clustercopy for cluster {self.name!r} in lab {self.lab.tag}"]
        for section, keys in sections.items():
            lines.append(f"\n[{section}]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in keys.items())
        return "\n".join(lines) + "\n"

    def role_dir(self, role: str) -> Path:
        return Path(self.config.role_dir(role))

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> "ClusterCopy":
        try:
            if self.own_servers:
                self.online.start()
                self.target.start()
                self.online.wait_ready()
                self.target.wait_ready()
            if self.start_intercepts:
                self._start_role("assistant")
                self.wait_ready("assistant")
            self._start_role("online")
            self.wait_ready("online")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            if self.own_servers:
                self.online.stop()
                self.target.stop()

    def _host(self, role: str) -> str:
        return ONLINE if role == "online" else ASSISTANT

    def cli(self, action: str, role: str, *extra: str, check: bool = True, timeout: float = 30.0):
        """``python -m tcpcopy.cluster.ops.main ACTION CONFIG --role ROLE`` inside the role's host."""
        argv = [sys.executable, "-m", "tcpcopy.cluster.ops.main", action, str(self.config_path), "--role", role, *extra]
        return self.lab.run(self._host(role), argv, check=check, timeout=timeout)

    def _start_role(self, role: str) -> None:
        self.started_roles.append(role)   # a failed start is still stopped on exit
        try:
            self.cli("start", role)
        except LabError as exc:
            raise ClusterCopyError(f"cluster {self.name}: start of the {role} role failed: {exc}\n"
                                   f"{self.diagnostics(role)}") from None
        pid_file = self.role_dir(role) / "supervisord.pid"
        try:
            self._supervisord_pids[role] = int(pid_file.read_text())
        except (OSError, ValueError):
            pass

    def wait_ready(self, role: str, timeout: float | None = None) -> None:
        """Every process of ``role`` RUNNING and ready: intercepts listening; every owner fed
        by every capture worker (its HELLO: the capture is open, nothing is missed from now)."""
        deadline = time.monotonic() + (timeout or self.ready_timeout)
        while time.monotonic() < deadline:
            rows = self.status(role)
            if rows and all(row.state == "RUNNING" for row in rows) and self._ready_in_logs(role):
                return
            time.sleep(0.1)
        raise ClusterCopyError(f"cluster {self.name}: the {role} role is not ready after "
                               f"{timeout or self.ready_timeout:g} s\n{self.diagnostics(role)}")

    def _ready_in_logs(self, role: str) -> bool:
        if role == "assistant":
            return all(INTERCEPT_READY in self.log(role, f"intercept-{i}") for i in range(self.intercepts))
        return all(self.log(role, f"owner-{n}").count(FEEDING) >= self.workers for n in range(self.owners))

    def status(self, role: str = "online") -> list[supervisor.ProgramStatus]:
        """supervisord's view of every process of ``role`` (state, pid, uptime)."""
        rows = supervisor.status(self.config, role)
        self._known_pids[role].update(row.pid for row in rows if row.pid)
        return rows

    def process(self, role: str, name: str) -> supervisor.ProgramStatus:
        """The status row of one process: ``owner-1`` or ``owner:owner-1``."""
        for row in self.status(role):
            if name in (row.name, row.name.partition(":")[2]):
                return row
        raise ClusterCopyError(f"cluster {self.name}: no process {name!r} in the {role} role")

    def kill_program(self, role: str, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send ``sig`` to one process by the pid supervisord reports; returns that pid."""
        row = self.process(role, name)
        if row.state != "RUNNING" or not row.pid:
            raise ClusterCopyError(f"cluster {self.name}: {row.name} is {row.state}, not RUNNING")
        os.kill(row.pid, sig)
        return row.pid

    def wait_restarted(self, role: str, name: str, old_pid: int, timeout: float = 20.0) -> supervisor.ProgramStatus:
        """Wait until supervisord runs ``name`` again under a new pid (RUNNING: it stayed up
        for startsecs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.process(role, name)
            if row.state == "RUNNING" and row.pid and row.pid != old_pid and not supervisor.pid_alive(old_pid):
                return row
            time.sleep(0.05)
        raise ClusterCopyError(f"cluster {self.name}: {name} (pid {old_pid}) was not restarted within "
                               f"{timeout:g} s: now {self.process(role, name)}\n{self.diagnostics(role)}")

    def stop(self) -> None:
        """Measure every process, then stop the online role and the assistant role (the
        capture first, so the owners see the last packets, and the intercepts last)."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self.measure()
        except Exception:   # measuring must never keep the cluster running
            pass
        failures = []
        for role in ("online", "assistant"):
            if role not in self.started_roles:
                continue
            try:
                done = self.cli("stop", role, timeout=STOP_TIMEOUT, check=False)
            except LabError as exc:
                failures.append(f"{role}: {exc}")
                self._kill_role(role)
                continue
            self.stopped[role] = (done.returncode, done.stdout)
            if done.returncode not in (0, GATE_FAILED):
                failures.append(f"{role}: exit status {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}")
                self._kill_role(role)
        if failures:
            raise ClusterCopyError(f"cluster {self.name}: stop failed, killed by pid instead: {failures}")

    def _emergency_stop(self) -> None:
        """At lab teardown: whatever still runs is stopped, by PID if supervisord is mute."""
        if not self._stopped:
            self._stopped = True
            for role in ("online", "assistant"):
                if role in self.started_roles:
                    self._kill_role(role)

    def _kill_role(self, role: str) -> None:
        """supervisord of the role (from its pid file) and every program pid it reported:
        SIGTERM, then SIGKILL. Only processes whose command line names this cluster."""
        pids = set(self._known_pids[role])
        if role in self._supervisord_pids:
            pids.add(self._supervisord_pids[role])
        mine = [pid for pid in pids if str(self.dir) in _cmdline(pid)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in mine:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5.0
            while any(supervisor.pid_alive(pid) for pid in mine) and time.monotonic() < deadline:
                time.sleep(0.05)

    def supervisord_pids(self) -> dict[str, int]:
        """role -> the pid of the supervisord that runs it (from its pid file)."""
        return dict(self._supervisord_pids)

    def supervisord_alive(self) -> list[int]:
        """The supervisord pids of this cluster still running (should be none after stop)."""
        return [pid for pid in self._supervisord_pids.values() if supervisor.pid_alive(pid)]

    # ------------------------------------------------------------------ measuring

    def measure(self) -> dict[str, ProcessFigures]:
        """CPU seconds (user + system) and peak RSS (VmHWM) of every running process of the
        started roles, and of their supervisord, keyed ``role/process``."""
        figures: dict[str, ProcessFigures] = {}
        for role in self.started_roles:
            members = [(f"{role}/{row.name.partition(':')[2]}", row.pid) for row in self.status(role) if row.pid]
            if role in self._supervisord_pids:
                members.append((f"{role}/supervisord", self._supervisord_pids[role]))
            for label, pid in members:
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.Error:
                    continue
                figures[label] = ProcessFigures(label, times.user + times.system, _peak_rss_mb(pid))
        self.figures = figures
        return figures

    # ------------------------------------------------------------------ logs

    def log(self, role: str, process: str, stream: str = "err") -> str:
        """A process's log (``owner-0``, ``capture-1``, ``intercept-0``); its stderr by default,
        where the programs log."""
        path = self.role_dir(role) / f"{process}.{stream}.log"
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    def diagnostics(self, role: str, tail: int = 1500) -> str:
        """Status and the tails of every log of ``role``, for failure messages."""
        parts = []
        try:
            parts.append("\n".join(f"  {r.name} {r.state} pid {r.pid} {r.description}" for r in self.status(role)))
        except Exception as exc:
            parts.append(f"  status unavailable: {exc}")
        directory = self.role_dir(role)
        for path in sorted(directory.glob("*.log")) if directory.exists() else ():
            text = path.read_text(errors="replace").strip()
            if text:
                parts.append(f"----- {path} (tail) -----\n{text[-tail:]}")
        return "\n".join(parts)

    def owner_summaries(self) -> list[OwnerSummary]:
        """Per owner: the last stats line ("active:...") and outcomes its log holds."""
        summaries = []
        for shard in range(self.owners):
            text = self.log("online", f"owner-{shard}")
            counters, outcomes, reason, finished = {}, {}, "", False
            for line in text.splitlines():
                if " INFO active:" in line:
                    counters = {key.strip(): int(value) for key, value in
                                _STATS_RE.findall(line.partition(" INFO ")[2])}
                match = _OWNER_STOPPED_RE.search(line)
                if match:
                    reason, finished = match["reason"], True
                    outcomes = json.loads(match["outcomes"])
            summaries.append(OwnerSummary(shard, counters, outcomes, reason, text.count(" ready on "),
                                          text.count(FEEDING), finished))
        return summaries

    def intercept_summaries(self) -> dict[str, dict[str, int]]:
        """Per intercept: the counters of its last "stats:" line (written when it stops)."""
        result = {}
        for i in range(self.intercepts):
            lines = [line for line in self.log("assistant", f"intercept-{i}").splitlines() if " stats: " in line]
            if lines:
                fields = lines[-1].partition(" stats: ")[2].split()
                result[f"intercept-{i}"] = {k: int(v) for k, _, v in (f.partition("=") for f in fields)}
        return result

    def capture_summaries(self) -> dict[str, dict[str, int]]:
        """Per capture worker: the counters of its last "capture: captured:..." line (at exit)."""
        result = {}
        for k in range(self.workers):
            lines = [line for line in self.log("online", f"capture-{k}").splitlines()
                     if line.startswith("capture: captured:")]
            if lines:
                result[f"capture-{k}"] = {key.strip(): int(v) for key, v in
                                          _STATS_RE.findall(lines[-1].partition("capture: ")[2])}
        return result

    # ------------------------------------------------------------------ results

    def wait_for_target(self, expected: int, timeout: float = 20.0, quiet: float = 3.0) -> int:
        """Wait until the target has logged ``expected`` requests (or gained none for ``quiet`` s)."""
        return self.target.wait_for_requests(expected, timeout, quiet)

    def report(self, copies: int | None = None) -> ClusterReport:
        """The run's figures from the servers' access logs and the programs' logs."""
        copies = copies or self.copies
        online = self.online.access_log_entries()
        target = self.target.access_log_entries()
        owners = self.owner_summaries()
        outcomes: Counter[str] = Counter()
        for owner in owners:
            outcomes.update(owner.outcomes)
        return ClusterReport(
            online_requests=len(online), target_requests=len(target), copies=copies,
            loss_ratio=accesslog.loss_ratio(len(online), len(target), copies),
            target_status=dict(accesslog.by_status(target)), outcomes=dict(outcomes), owners=owners,
            intercepts=self.intercept_summaries() if "assistant" in self.started_roles else {},
            captures=self.capture_summaries(), processes=list(self.figures.values()))

    def compare_totals(self) -> dict:
        """The comparison over every owner process, from the summaries they wrote."""
        return comparefiles.totals(comparefiles.read_summaries(self.config.compare_dir()))

    def differences(self) -> dict[int, list[dict]]:
        """Owner shard -> the differing requests it wrote, in order."""
        found = {}
        for shard in range(self.owners):
            path = Path(self.config.compare_dir()) / comparefiles.DIFFERENCES.format(shard=shard)
            if path.exists():
                found[shard] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return found

    def remove_dir(self) -> None:
        """Remove the run's directory once read (kept with ``TCPCOPY_KEEP_RUNS=1``)."""
        remove_run_dir(self.dir)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)   # a TOML basic string is a JSON string for these values
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} into the cluster TOML")


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""
