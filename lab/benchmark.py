"""The benchmark suite: a live copy in the four-host lab at fixed offered loads, by the C
TCPCopy and by this project on the same topology in the same run, judged against the
project's targets (ratios to the C tool where CPU is concerned), written as tables and a
JSON file.

    python -m tcpcopy.lab.benchmark [--repeat 3] [--seconds 10] [--only short-2500,redis]
                                       [--no-c] [--c-dir /tmp/c-tcpcopy] [--shape 1,1,1]
                                       [--json bench/results.json]
    python -m tcpcopy.lab.benchmark --soak 600      # RSS over a long copy

The C tool (tcpcopy 1.3.0 + intercept 1.0.0) is built once from the source archives beside
the project (``lab/ctool.py``); without a compiler, or with ``--no-c``, the suite measures
this project alone and says so. For every scenario and every repeat both tools run, one
after the other (C first on odd repeats, this project first on even ones), each in a fresh
lab (so no TIME_WAIT of an earlier run narrows the client's ports) with fresh servers:
nginx online (port 80) and at the target (8080), and for the key-value scenarios Redis on
both (6379). This project runs as a cluster of the given shape under supervisord
(``ClusterCopy``: K capture workers, M session owners, I intercepts; the Redis scenarios
pass it the Redis mapping); the C tool as its documentation says (``CCopy``). The client
host offers one load for a fixed time or count, the suite waits until the target stops
gaining, and reads:

- what online and the target served, from the servers' own records: access-log requests
  (HTTP), ``INFO commandstats`` SET and GET calls (Redis), bodies kept whole by SHA-256
  (uploads); their rates, and the loss ratio ``(online x copies - target) / (online x copies)``;
- CPU-microseconds per copied request (command, body) of the online host's copier processes
  together (this project's owners + capture workers; the C tcpcopy) and of the intercepts,
  from the change of each process's user + system time over the run, and their ratio, this
  project over the C tool;
- peak RSS (VmHWM) of the copier (summed over its processes) and of the intercepts;
- the box: the mean and highest busy percentage of all cores sampled each second, the
  1-minute load average, and the busy CPU-seconds left to everything but the copy (servers,
  load generator, the kernel, and whatever else runs on the machine), so a box saturated by
  other work shows as such (the box's total comes from the kernel's tick-sampled
  accounting: at low load it can read below the sum of the copy's own processes, and what
  is left is then shown as 0);
- what each copier counted on its way: this project's capture drops (owner queue full,
  kernel) and sessions that ended abnormally, the C tool's closing counters (JSON only).
- the cost of comparing answers (``compare-off``, ``compare-10``, ``compare-100``: one
  keep-alive load with the cluster's ``[compare] percent`` at 0, 10 and 100, this project
  only, the three interleaved run by run on the same topology): the copier's and the
  intercepts' CPU per copied request with comparison on, as a ratio to comparison off,
  and the share of requests compared.

The tables show medians over the repeats and the verdict of each target. Progress goes to
stderr (a line before each run: run i/N, the scenario, time elapsed and about how long is
left; in the soak a line every 30 s with the time left and each process's RSS), the results
to stdout.
Everything shares one machine: the figures are a floor for a copier on hosts of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tcpcopy.cluster.progress import about_left, duration
from tcpcopy.lab import accesslog, ctool, load
from tcpcopy.lab.clustercopy import ClusterCopy, ClusterCopyError
from tcpcopy.lab.ctool import CCopy, CTool, CToolError
from tcpcopy.lab.kvstore import MAX_SECONDS as KV_MAX_SECONDS
from tcpcopy.lab.kvstore import KvLoadError, Redis, redis_benchmark, wait_until_quiet
from tcpcopy.lab.netns import (CLIENT, ONLINE, ONLINE_ADDRESS, TARGET, TARGET_ADDRESS, LabError,
                                four_host)
from tcpcopy.lab.livecopy import ONLINE_PORT, TARGET_PORT
from tcpcopy.lab.servers import Nginx, ServerError

# What a run can fail with: the suite names it, goes on with the next run and keeps the rest.
RUN_ERRORS = (load.LoadError, KvLoadError, ClusterCopyError, CToolError, LabError, ServerError)

CLIENT_PORTS = "1024 65535"
KEEPALIVE_CONNECTIONS = 100
DEFAULT_SECONDS = 10.0
DEFAULT_REPEAT = 3
RUN_OVERHEAD_S = 20.0     # lab, servers, copier up and down, the drain: for the first estimate
OURS, C = "ours", "c"
TOOL_NAMES = {OURS: "ours", C: "C"}
COPIER_PREFIXES = ("online/owner-", "online/capture-", "online/tcpcopy")
INTERCEPT_PREFIXES = ("assistant/intercept",)
REDIS_PORT = 6379
REDIS_CLIENTS = 100
REDIS_KEYSPACE = 100_000
REDIS_COMMANDS = ("set", "get")
MIB = 1 << 20
UPLOAD_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0
REACHED = 0.95            # the load generator delivered at least this share of the offered rate
KEPT_UP = 0.95            # the target was served at least this share of the online rate x copies
TARGET_QUIET_S = 3.0      # the target gained nothing this long: the copy is over
SOAK_SAMPLE_S = 5.0
SOAK_CHUNK_S = 30.0
SOAK_RATE = 1000
SOAK_WARMUP_S = 60.0      # RSS growth is measured from here to the end
SOAK_GROWTH_OK_MB = 4.0
COMPARE_RATE = 2000       # keep-alive requests/s of the comparison scenarios
COMPARE_CONNECTIONS = 200 # many connections, so a 10% sample of them is near 10%
COMPARE_SECONDS = 5.0     # their load time at most (they add little to the suite's time)
COMPARE_REFERENCE = "compare-off"


# ---------------------------------------------------------------------- scenarios and targets

@dataclass(frozen=True)
class Scenario:
    """One load: ``short`` connections (one request each) at ``rate`` per second;
    ``keepalive`` connections sending ``rate`` requests per second together (0: as fast as
    the servers answer); ``redis``: redis-benchmark's SET then GET, ``requests`` of each on
    ``connections`` connections with ``pipeline`` commands in flight, as fast as the server
    answers; ``upload``: ``uploads`` POSTs of ``upload_mb`` MiB, one after the other, each on
    a connection of its own. ``copies`` is the copier's -n."""

    name: str
    kind: str            # "short" | "keepalive" | "redis" | "upload"
    rate: int = 0        # offered requests per second; 0: as fast as served
    copies: int = 1
    connections: int = KEEPALIVE_CONNECTIONS   # keepalive and redis
    requests: int = 0    # redis: commands per test
    pipeline: int = 1    # redis
    uploads: int = 0     # upload
    upload_mb: int = 0   # upload
    compare: int | None = None   # [compare] percent of this project's cluster (None: not set; 0: off)
    max_seconds: float = 0.0     # the load runs at most this long (0: --seconds)
    family: str = ""             # scenarios of one family run interleaved, repeat by repeat

    @property
    def unit(self) -> str:
        """What the loss and CPU figures count."""
        return {"redis": "command", "upload": "body"}.get(self.kind, "request")

    @property
    def ours_only(self) -> bool:
        """The C tool has nothing to compare with: it does not compare answers."""
        return self.compare is not None

    def load_seconds(self, seconds: float) -> float:
        return min(seconds, self.max_seconds) if self.max_seconds else seconds


SCENARIOS = (
    Scenario("short-1000", "short", 1000),
    Scenario("short-2500", "short", 2500),
    Scenario("short-5000", "short", 5000),
    Scenario("keepalive-10000", "keepalive", 10000),
    Scenario("keepalive-max", "keepalive", 0),
    Scenario("n3-1000", "short", 1000, copies=3),
    Scenario("redis", "redis", connections=REDIS_CLIENTS, requests=100_000),
    Scenario("redis-p16", "redis", connections=REDIS_CLIENTS, requests=200_000, pipeline=16),
    Scenario("upload", "upload", uploads=4, upload_mb=20),
    # The cost of comparing: the same keep-alive load with comparison off, on for a tenth
    # of the sessions and for all of them; short loads, this project only.
    *(Scenario(f"compare-{'off' if percent == 0 else percent}", "keepalive", COMPARE_RATE,
               connections=COMPARE_CONNECTIONS, compare=percent, max_seconds=COMPARE_SECONDS, family="compare")
      for percent in (0, 10, 100)),
)
# Not in the default run: more points on the rate curves.
EXTRA_SCENARIOS = (
    Scenario("short-2000", "short", 2000),
    Scenario("short-3000", "short", 3000),
    Scenario("keepalive-15000", "keepalive", 15000),
    Scenario("keepalive-20000", "keepalive", 20000),
    Scenario("n3-500", "short", 500, copies=3),
)


@dataclass(frozen=True)
class Target:
    """``figure`` of ``scenario`` (the median over repeats) must be at most ``limit``; with
    ``versus`` "ratio" the figure is this project's over the C tool's (measured in the same
    run), with "or-c" it may also be as high as the C tool's own."""

    scenario: str
    figure: str
    limit: float
    text: str
    versus: str = ""     # "" | "ratio" | "or-c"


TARGETS = (
    Target("short-2500", "loss_ratio", 1e-4, "short connections at 2,500/s: loss <= 1e-4"),
    Target("keepalive-max", "loss_ratio", 1e-3, "keep-alive unthrottled: loss <= 1e-3 or <= C's", "or-c"),
    Target("redis", "loss_ratio", 1e-4, "key-value (Redis, 100 connections): loss <= 1e-4"),
    Target("redis-p16", "loss_ratio", 1e-4, "key-value pipelined (-P 16): loss <= 1e-4"),
    Target("n3-1000", "loss_ratio", 1e-4, "-n 3 at 1,000/s: loss <= 1e-4"),
    Target("short-2500", "copier_us", 2.0, "copier CPU per short request <= 2 x C", "ratio"),
    Target("keepalive-10000", "copier_us", 2.0, "copier CPU per keep-alive request <= 2 x C", "ratio"),
    Target("short-2500", "intercept_us", 2.0, "intercept CPU per short request <= 2 x C", "ratio"),
    Target("keepalive-10000", "intercept_us", 2.0, "intercept CPU per keep-alive request <= 2 x C", "ratio"),
)


# ---------------------------------------------------------------------- one run

@dataclass
class Run:
    scenario: str
    shape: str
    seconds: float
    copies: int                   # -n
    offered_rps: float            # 0: as fast as served (keep-alive, Redis) or bounded in count
    h2load_done: int              # what the client saw succeed (h2load, redis-benchmark, uploads)
    h2load_failed: int
    online_requests: int          # requests, commands or whole bodies, in ``unit``
    target_requests: int
    online_rps: float
    target_rps: float
    loss_ratio: float
    copier_cpu_s: float           # owners + capture workers (the C tcpcopy), over the run
    intercept_cpu_s: float
    copier_us: float              # CPU-microseconds per copied request
    intercept_us: float
    owner_rss_mb: float           # the largest of each kind (VmHWM)
    capture_rss_mb: float
    intercept_rss_mb: float
    box_busy_s: float             # all cores, over the run
    other_busy_s: float           # box_busy_s minus the copier's and intercept's share
    box_cpu_mean: float           # % of all cores, sampled each second during the load
    box_cpu_max: float
    loadavg_1m: float
    capture_drops: int            # owner queue full + kernel drops, all capture workers
    sessions_dropped: int         # sessions that ended abnormally (owners' outcomes)
    restarts: int                 # processes whose pid changed during the run
    outcomes: dict = field(default_factory=dict)
    tool: str = OURS              # OURS | C
    unit: str = "request"         # what the counts and per-copy figures count
    copier_rss_mb: float = 0.0    # the copier's processes together (VmHWM)
    counters: dict = field(default_factory=dict)   # each process's closing counters
    compare_percent: int | None = None   # [compare] percent (None: not a comparison scenario)
    compared: int = 0             # requests the owners compared
    compare_differs: int = 0      # ... judged different (0 when the sites are the same)

    @property
    def offered_reached(self) -> bool:
        if not self.offered_rps:
            return self.h2load_failed == 0
        return self.online_rps >= REACHED * self.offered_rps and self.h2load_failed == 0

    @property
    def kept_up(self) -> bool:
        """The target was served at the online rate times the copies: the copy did not fall
        behind (in a short run it still loses nothing, but it could not go on like that)."""
        return self.target_rps >= KEPT_UP * self.online_rps * self.copies


class BoxSampler:
    """The box's busy % once a second (psutil), and its busy CPU-seconds from start to stop."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._start_times = psutil.cpu_times()
        psutil.cpu_percent(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(1.0):
            self.samples.append(psutil.cpu_percent(None))

    def stop_sampling(self) -> tuple[float, float]:
        """(mean, max) busy % while the load ran."""
        self._stop.set()
        self._thread.join(5)
        if not self.samples:
            return 0.0, 0.0
        return statistics.fmean(self.samples), max(self.samples)

    def busy_seconds(self) -> float:
        """CPU-seconds all cores spent busy since the sampler started."""
        return _busy(psutil.cpu_times()) - _busy(self._start_times)


def _busy(times) -> float:
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class Services:
    """The servers of a run inside the lab: nginx online and at the target, and for the
    key-value scenarios Redis on both; started on enter (each ready), stopped on exit."""

    def __init__(self, lab, scenario: Scenario):
        self.online = Nginx(lab, ONLINE, ONLINE_ADDRESS, ONLINE_PORT)
        self.target = Nginx(lab, TARGET, TARGET_ADDRESS, TARGET_PORT)
        self.redis: tuple[Redis, ...] = ()
        if scenario.kind == "redis":
            self.redis = (Redis(lab, ONLINE, ONLINE_ADDRESS, REDIS_PORT), Redis(lab, TARGET, TARGET_ADDRESS, REDIS_PORT))
        self._stack = ExitStack()

    def __enter__(self) -> "Services":
        with ExitStack() as stack:
            for server in (self.online, self.target, *self.redis):
                stack.enter_context(server)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def url(self) -> str:
        return f"http://{ONLINE_ADDRESS}:{ONLINE_PORT}"


def copied_ports(scenario: Scenario) -> list[tuple[int, int]]:
    """(online port, target port) that the copier copies in this scenario."""
    return [(REDIS_PORT, REDIS_PORT)] if scenario.kind == "redis" else [(ONLINE_PORT, TARGET_PORT)]


def copier(lab, scenario: Scenario, shape: tuple[int, int, int], services: Services,
           c_tool: CTool | None = None):
    """The copy of a run (a context manager): the C tool, or this project's cluster."""
    if c_tool is not None:
        return CCopy(lab, c_tool, copied_ports(scenario), scenario.copies)
    options: dict[str, Any] = {"copies": scenario.copies} if scenario.copies > 1 else {}
    if scenario.kind == "redis":
        options["mappings"] = [f"{o}-{TARGET_ADDRESS}:{t}" for o, t in copied_ports(scenario)]
    workers, owners, intercepts = shape
    compare = {"percent": scenario.compare} if scenario.compare else None
    return ClusterCopy(lab, workers, owners, intercepts, options, name="bench", servers=(services.online, services.target),
                       compare=compare)


@dataclass
class Offered:
    """What the client sent: ``done`` requests (commands, bodies) it saw succeed, ``failed``
    others, the load's start (monotonic) and wall time; ``sent`` names each upload's body."""

    done: int
    failed: int
    started: float
    seconds: float
    sent: list = field(default_factory=list)   # upload: (uri, size, sha256)


@dataclass
class Tally:
    """What online and the target served, from their own records."""

    online: int
    target: int
    online_rps: float
    target_rps: float
    loss_ratio: float


def offer_http(lab, scenario: Scenario, services: Services, seconds: float) -> Offered:
    """Run the scenario's h2load from the client host."""
    started = time.monotonic()
    url = f"{services.url}/index.html"
    seconds = scenario.load_seconds(seconds)
    if scenario.kind == "keepalive":
        summary = load.keepalive_for(lab, CLIENT, url, scenario.connections, seconds, scenario.rate or None).summary
    else:
        # h2load falls behind its schedule on a busy box: give it room, the rates are measured
        summary = load.short_connections(lab, CLIENT, url, scenario.rate, seconds, timeout_s=seconds * 4 + 15).summary
    return Offered(summary.done, summary.failed + summary.errored + summary.timeout, started,
                   time.monotonic() - started)


def offer_redis(lab, scenario: Scenario, services: Services, seconds: float) -> Offered:
    """redis-benchmark from the client host against the online Redis (bounded in count)."""
    started = time.monotonic()
    result = redis_benchmark(lab, CLIENT, ONLINE_ADDRESS, REDIS_PORT, clients=scenario.connections,
                             requests=scenario.requests, pipeline=scenario.pipeline, tests=REDIS_COMMANDS,
                             keyspace=REDIS_KEYSPACE, timeout_s=KV_MAX_SECONDS)
    return Offered(result.total_requests, 0, started, result.seconds)


def offer_upload(lab, scenario: Scenario, services: Services, seconds: float) -> Offered:
    """The uploads from the client host, one after the other, each on a connection of its own."""
    started = time.monotonic()
    offered = Offered(0, 0, started, 0.0)
    for i in range(scenario.uploads):
        uri = f"/upload/b{i}"
        sent = load.upload(lab, CLIENT, f"{services.url}{uri}", scenario.upload_mb * MIB, 1, seed=i,
                           timeout_s=UPLOAD_TIMEOUT_S)
        ok = sent.summary.all_succeeded
        offered.done, offered.failed = offered.done + ok, offered.failed + (not ok)
        offered.sent.append((uri, sent.body_bytes, sent.body_sha256))
    offered.seconds = time.monotonic() - started
    return offered


def count_http(scenario: Scenario, services: Services, offered: Offered) -> Tally:
    """Requests in the servers' access logs, once the target stopped gaining."""
    services.target.wait_for_requests(offered.done * scenario.copies, timeout=DRAIN_TIMEOUT_S, quiet=TARGET_QUIET_S)
    online, target = services.online.access_log_entries(), services.target.access_log_entries()
    return Tally(len(online), len(target), rate_of(online), rate_of(target),
                 accesslog.loss_ratio(len(online), len(target), scenario.copies))


def count_redis(scenario: Scenario, services: Services, offered: Offered) -> Tally:
    """SET and GET calls of each Redis (``INFO commandstats``), once the target's stopped changing."""
    online_redis, target_redis = services.redis
    online = _commands(online_redis)
    target, settled = drain_redis(target_redis)
    return Tally(online, target, online / max(offered.seconds, 1e-3),
                 target / max(settled - offered.started, 1e-3),
                 accesslog.loss_ratio(online, target, scenario.copies))


def _commands(redis: Redis) -> int:
    stats = redis.command_stats()
    return sum(stats.get(name, 0) for name in REDIS_COMMANDS)


def drain_redis(redis: Redis, timeout: float = DRAIN_TIMEOUT_S, quiet: float = TARGET_QUIET_S) -> tuple[int, float]:
    """The SET and GET calls once they stopped changing, and when they last changed."""
    return wait_until_quiet(lambda: _commands(redis), timeout, quiet)


def count_upload(scenario: Scenario, services: Services, offered: Offered) -> Tally:
    """Bodies each nginx kept whole (size and SHA-256 as sent), once the target logged them
    all or the time a copy of that many bytes may take has passed."""
    megabytes = scenario.uploads * scenario.upload_mb
    wait = 10 + megabytes * 0.4
    services.target.wait_for_requests(offered.done * scenario.copies, timeout=wait, quiet=wait)
    online = whole_bodies(services.online.received_bodies(), offered.sent)
    target = whole_bodies(services.target.received_bodies(), offered.sent)
    seconds = max(time.monotonic() - offered.started, 1e-3)
    return Tally(online, target, online / max(offered.seconds, 1e-3), target / seconds,
                 accesslog.loss_ratio(online, target, scenario.copies))


def whole_bodies(kept, sent: list) -> int:
    """How many of the ``sent`` (uri, size, sha256) bodies a server kept byte for byte."""
    expected = {(uri, size, sha) for uri, size, sha in sent}
    return sum(1 for body in kept if (body.uri, body.length, body.sha256) in expected)


OFFER = {"short": offer_http, "keepalive": offer_http, "redis": offer_redis, "upload": offer_upload}
COUNT = {"short": count_http, "keepalive": count_http, "redis": count_redis, "upload": count_upload}


def one_run(scenario: Scenario, shape: tuple[int, int, int], seconds: float, c_tool: CTool | None = None) -> Run:
    """One run of ``scenario`` in a fresh lab: this project's copy, or with ``c_tool`` the C tool's."""
    with four_host() as lab:
        # every connection from a port of its own, reused only after TIME_WAIT's first second
        lab.run(CLIENT, ["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={CLIENT_PORTS}",
                         "net.ipv4.tcp_tw_reuse=1"])
        with Services(lab, scenario) as services, copier(lab, scenario, shape, services, c_tool) as copy:
            pids = _pids(copy)
            before = copy.measure()
            box = BoxSampler()
            try:
                offered = OFFER[scenario.kind](lab, scenario, services, seconds)
            finally:
                cpu_mean, cpu_max = box.stop_sampling()
            tally = COUNT[scenario.kind](scenario, services, offered)
            if isinstance(copy, CCopy):
                copy.check_running()
            after = copy.measure()
            box_busy = box.busy_seconds()
            restarts = sum(1 for name, pid in _pids(copy).items() if pids.get(name) != pid)
            loadavg = os.getloadavg()[0]
            copy.stop()
            details = copier_details(copy)
    copy.remove_dir()
    copier_cpu = _cpu_delta(before, after, COPIER_PREFIXES)
    intercept_cpu = _cpu_delta(before, after, INTERCEPT_PREFIXES)
    copied = max(tally.target, 1)
    return Run(
        scenario=scenario.name, shape=",".join(map(str, shape)), seconds=seconds,
        copies=scenario.copies, offered_rps=float(scenario.rate), h2load_done=offered.done,
        h2load_failed=offered.failed, online_requests=tally.online, target_requests=tally.target,
        online_rps=tally.online_rps, target_rps=tally.target_rps, loss_ratio=tally.loss_ratio,
        copier_cpu_s=copier_cpu, intercept_cpu_s=intercept_cpu,
        copier_us=copier_cpu / copied * 1e6, intercept_us=intercept_cpu / copied * 1e6,
        owner_rss_mb=_rss(after, ("online/owner-", "online/tcpcopy")), capture_rss_mb=_rss(after, ("online/capture-",)),
        intercept_rss_mb=_rss(after, INTERCEPT_PREFIXES), copier_rss_mb=_rss(after, COPIER_PREFIXES, sum),
        box_busy_s=box_busy, other_busy_s=max(0.0, box_busy - copier_cpu - intercept_cpu),
        box_cpu_mean=cpu_mean, box_cpu_max=cpu_max, loadavg_1m=loadavg, restarts=restarts,
        tool=C if c_tool else OURS, unit=scenario.unit, compare_percent=scenario.compare, **details)


def copier_details(copy) -> dict:
    """What the stopped copier counted: this project's capture drops, sessions ended
    abnormally and outcomes, the requests its owners compared, every process's closing
    counters (the C tool's too)."""
    if isinstance(copy, CCopy):
        return {"capture_drops": 0, "sessions_dropped": 0, "outcomes": {}, "counters": copy.counters()}
    report = copy.report()
    captures = report.captures.values()
    compared = copy.compare_totals() if copy.compare else {"compared": 0, "differs": 0}
    return {
        "compared": compared["compared"], "compare_differs": compared["differs"],
        "capture_drops": sum(c.get("dropped(owner full)", 0) + c.get("kernel drop", 0) for c in captures),
        "sessions_dropped": sum(n for kind, n in report.outcomes.items() if kind.startswith("dropped")),
        "outcomes": report.outcomes,
        "counters": {"owners": {f"owner-{o.shard}": o.counters for o in report.owners},
                     "intercepts": report.intercepts, "captures": report.captures},
    }


def _pids(copy) -> dict[str, int]:
    if isinstance(copy, CCopy):
        return {name: proc.pid for name, proc in copy.procs.items()}
    return {row.name: row.pid for role in ("online", "assistant") for row in copy.status(role)}


def _cpu_delta(before: dict, after: dict, prefixes: tuple[str, ...]) -> float:
    """CPU-seconds that the processes named ``prefixes`` spent between the two measurements
    (a process that was restarted counts from zero)."""
    total = 0.0
    for name, figures in after.items():
        if name.startswith(prefixes):
            start = before.get(name)
            spent = figures.cpu_seconds - (start.cpu_seconds if start else 0.0)
            total += figures.cpu_seconds if spent < 0 else spent
    return total


def _rss(figures: dict, prefixes: tuple[str, ...], combine=max) -> float:
    """The peak RSS of the processes named ``prefixes``: the largest, or with ``sum`` together."""
    return combine([f.peak_rss_mb for name, f in figures.items() if name.startswith(prefixes)] or [0.0])


def rate_of(entries) -> float:
    """Requests per second over the span between the first and last logged request."""
    times = [e["time"] for e in entries]
    if len(times) < 2 or max(times) == min(times):
        return 0.0
    return (len(times) - 1) / (max(times) - min(times))


# ---------------------------------------------------------------------- summaries and verdicts

MEDIAN_FIGURES = ("online_rps", "target_rps", "loss_ratio", "copier_us", "intercept_us",
                  "owner_rss_mb", "capture_rss_mb", "intercept_rss_mb", "copier_rss_mb", "box_cpu_mean",
                  "box_cpu_max", "loadavg_1m", "box_busy_s", "copier_cpu_s", "intercept_cpu_s",
                  "other_busy_s")


def summarize(runs: list[Run], tool: str = OURS) -> dict[str, dict]:
    """Per scenario of ``tool``'s runs, in run order: the median of each figure over its
    runs, the worst loss, and whether every run reached its load and kept up."""
    by_scenario: dict[str, list[Run]] = {}
    for run in runs:
        if run.tool == tool:
            by_scenario.setdefault(run.scenario, []).append(run)
    summary = {}
    for name, group in by_scenario.items():
        row = {figure: statistics.median(getattr(r, figure) for r in group) for figure in MEDIAN_FIGURES}
        row.update(tool=tool, unit=group[0].unit, runs=len(group), worst_loss=max(r.loss_ratio for r in group),
                   online_requests=sum(r.online_requests for r in group),
                   target_requests=sum(r.target_requests for r in group),
                   capture_drops=sum(r.capture_drops for r in group),
                   sessions_dropped=sum(r.sessions_dropped for r in group),
                   restarts=sum(r.restarts for r in group),
                   offered_rps=group[0].offered_rps,
                   compare_percent=group[0].compare_percent,
                   compared=sum(r.compared for r in group),
                   compare_differs=sum(r.compare_differs for r in group),
                   load_reached=all(r.offered_reached for r in group),
                   kept_up=all(r.kept_up for r in group))
        summary[name] = row
    return summary


def ratio(ours: float | None, c: float | None) -> float | None:
    """This project's figure over the C tool's; None when either is missing or C's is not
    positive (a C run that copied nothing has no cost to compare with)."""
    if ours is None or c is None or c <= 0:
        return None
    return ours / c


COMPARED = (("loss_ratio", "loss"), ("online_rps", "online_rps"), ("copier_us", "copier_us"),
            ("intercept_us", "intercept_us"), ("copier_rss_mb", "copier_mb"), ("intercept_rss_mb", "intercept_mb"))


def compare(ours: dict[str, dict], c: dict[str, dict]) -> dict[str, dict]:
    """Per scenario either tool ran: each compared figure of both (None: not run) and the
    ratios ours / C of the CPU per copied request."""
    result = {}
    for name in dict.fromkeys([*ours, *c]):
        mine, theirs = ours.get(name), c.get(name)
        row = {"unit": (mine or theirs)["unit"]}
        for figure, key in COMPARED:
            row[f"{key}_ours"] = mine[figure] if mine else None
            row[f"{key}_c"] = theirs[figure] if theirs else None
        row["copier_ratio"] = ratio(row["copier_us_ours"], row["copier_us_c"])
        row["intercept_ratio"] = ratio(row["intercept_us_ours"], row["intercept_us_c"])
        result[name] = row
    return result


def judge(target: Target, measured: float | None, c_value: float | None) -> bool | None:
    """Whether ``measured`` (a ratio for "ratio" targets) meets ``target``; None: not measured."""
    if measured is None:
        return None
    if measured <= target.limit:
        return True
    return target.versus == "or-c" and c_value is not None and measured <= c_value


def verdicts(summary: dict[str, dict], c_summary: dict[str, dict] | None = None, targets=TARGETS) -> list[dict]:
    """Each target with the scenario it was judged on, this project's median, the C tool's,
    what was measured against the limit (the ratio, for "ratio" targets) and whether it was
    met (None: the scenario was not run, or the C tool was not, for a ratio)."""
    results = []
    for target in targets:
        row, c_row = summary.get(target.scenario), (c_summary or {}).get(target.scenario)
        ours = None if row is None else row[target.figure]
        theirs = None if c_row is None else c_row[target.figure]
        measured = ratio(ours, theirs) if target.versus == "ratio" else ours
        results.append({"target": target.text, "scenario": target.scenario, "figure": target.figure,
                        "limit": target.limit, "versus": target.versus, "ours": ours, "c": theirs,
                        "measured": measured, "met": judge(target, measured, theirs)})
    return results


HEADER = (f"{'scenario':<15} {'tool':<4} {'runs':>4} {'offered':>7} {'online/s':>8} {'target/s':>8} "
          f"{'loss':>9} {'worst':>9} {'copier us':>9} {'icpt us':>7} {'copier MB':>9} {'icpt MB':>7} "
          f"{'box% mean/max':>13} {'load1':>5} {'other cpu s':>11}  notes")


def table_row(name: str, row: dict) -> str:
    notes = [text for fault, text in ((not row["load_reached"], "load not reached"),
                                      (not row["kept_up"], "copy fell behind"),
                                      (row["capture_drops"], f"capture drops {row['capture_drops']}"),
                                      (row["sessions_dropped"], f"sessions dropped {row['sessions_dropped']}"),
                                      (row["restarts"], f"restarts {row['restarts']}")) if fault]
    offered = f"{row['offered_rps']:.0f}" if row["offered_rps"] else "max"
    tool = TOOL_NAMES.get(row.get("tool", OURS), "?")
    return (f"{name:<15} {tool:<4} {row['runs']:>4} {offered:>7} {row['online_rps']:>8.0f} {row['target_rps']:>8.0f} "
            f"{row['loss_ratio']:>9.2e} {row['worst_loss']:>9.2e} {row['copier_us']:>9.0f} "
            f"{row['intercept_us']:>7.0f} {row.get('copier_rss_mb', 0.0):>9.1f} {row['intercept_rss_mb']:>7.1f} "
            f"{row['box_cpu_mean']:>6.0f}/{row['box_cpu_max']:<6.0f} "
            f"{row['loadavg_1m']:>5.2f} {row['other_busy_s']:>11.1f}  {', '.join(notes) or 'ok'}")


COMPARE_HEADER = (f"{'scenario':<15} {'per':<7} {'online/s ours':>13} {'C':>7}  {'loss ours':>9} {'C':>9}  "
                  f"{'copier us ours':>14} {'C':>6} {'ratio':>6}  {'icpt us ours':>12} {'C':>6} {'ratio':>6}  "
                  f"{'copier MB ours':>14} {'C':>6}  {'icpt MB ours':>12} {'C':>6}")


def compare_row(name: str, row: dict) -> str:
    """One scenario of the comparison table; "-" where a tool has no run."""
    def cell(value, width: int, fmt: str) -> str:
        return f"{'-' if value is None else format(value, fmt):>{width}}"

    def times(value) -> str:
        return f"{'-' if value is None else f'{value:.2f}x':>6}"

    return (f"{name:<15} {row['unit']:<7} {cell(row['online_rps_ours'], 13, '.0f')} {cell(row['online_rps_c'], 7, '.0f')}  "
            f"{cell(row['loss_ours'], 9, '.2e')} {cell(row['loss_c'], 9, '.2e')}  "
            f"{cell(row['copier_us_ours'], 14, '.0f')} {cell(row['copier_us_c'], 6, '.0f')} {times(row['copier_ratio'])}  "
            f"{cell(row['intercept_us_ours'], 12, '.0f')} {cell(row['intercept_us_c'], 6, '.0f')} "
            f"{times(row['intercept_ratio'])}  {cell(row['copier_mb_ours'], 14, '.1f')} {cell(row['copier_mb_c'], 6, '.1f')}  "
            f"{cell(row['intercept_mb_ours'], 12, '.1f')} {cell(row['intercept_mb_c'], 6, '.1f')}")


def compare_cost(summary: dict[str, dict], reference: str = COMPARE_REFERENCE) -> dict[str, dict]:
    """Per comparison scenario (this project's medians): the share of copied requests
    compared, CPU-us per copied request of the copier and of the intercepts, and each as a
    ratio to ``reference`` (comparison off, same load and topology, same run; None when
    that scenario was not run)."""
    base = summary.get(reference)
    rows = {}
    for name, row in summary.items():
        if row.get("compare_percent") is None:
            continue
        copied = max(row["target_requests"], 1)
        rows[name] = {"percent": row["compare_percent"], "compared_share": row["compared"] / copied,
                      "compare_differs": row["compare_differs"],
                      "copier_us": row["copier_us"], "intercept_us": row["intercept_us"],
                      "copier_ratio": ratio(row["copier_us"], base["copier_us"]) if base else None,
                      "intercept_ratio": ratio(row["intercept_us"], base["intercept_us"]) if base else None,
                      "kept_up": row["kept_up"], "loss_ratio": row["loss_ratio"]}
    return rows


COMPARE_COST_HEADER = (f"{'scenario':<15} {'compare':>7} {'compared':>8} {'copier us':>9} {'ratio':>6}  "
                       f"{'icpt us':>7} {'ratio':>6}  {'loss':>9}  notes")


def compare_cost_row(name: str, row: dict) -> str:
    def times(value) -> str:
        return f"{'-' if value is None else f'{value:.2f}x':>6}"

    notes = [text for fault, text in ((not row["kept_up"], "copy fell behind"),
                                      (row["compare_differs"], f"{row['compare_differs']} judged different")) if fault]
    return (f"{name:<15} {row['percent']:>6}% {row['compared_share']:>8.1%} {row['copier_us']:>9.0f} "
            f"{times(row['copier_ratio'])}  {row['intercept_us']:>7.0f} {times(row['intercept_ratio'])}  "
            f"{row['loss_ratio']:>9.2e}  {', '.join(notes) or 'ok'}")


def verdict_lines(results: list[dict]) -> list[str]:
    lines = []
    for v in results:
        state = {True: "MET", False: "MISSED", None: "not run"}[v["met"]]
        if v["met"] is None and v["ours"] is not None:
            state = "no C"
        lines.append(f"  {state:<7} {v['target']:<50} {v['scenario']:<16} {_measured(v)}")
    return lines


def _measured(v: dict) -> str:
    """The verdict's figures in words: the ratio and both medians, or the median (and C's)."""
    def num(value) -> str:
        return "-" if value is None else f"{value:.3g}"

    if v["versus"] == "ratio":
        shown = "-" if v["measured"] is None else f"{v['measured']:.2f}x"
        return f"ours/C {shown} (ours {num(v['ours'])}, C {num(v['c'])}; limit {v['limit']:g}x)"
    also = f", C {num(v['c'])}" if v["versus"] == "or-c" else ""
    return f"measured {num(v['measured'])}{also} (limit {v['limit']:g})"


# ---------------------------------------------------------------------- soak: RSS over time

@dataclass
class SoakResult:
    seconds: float
    rate: int
    online_requests: int
    target_requests: int
    loss_ratio: float
    samples: list = field(default_factory=list)   # [elapsed_s, {process: rss_mb}]
    growth_mb: dict = field(default_factory=dict)  # process -> RSS at the end - RSS after warm-up

    @property
    def steady(self) -> bool:
        return all(growth <= SOAK_GROWTH_OK_MB for growth in self.growth_mb.values())


def soak(seconds: float, shape: tuple[int, int, int], rate: int = SOAK_RATE) -> SoakResult:
    """A copy of ``rate`` short connections per second for ``seconds`` (h2load in chunks of
    SOAK_CHUNK_S), sampling each process's RSS every SOAK_SAMPLE_S."""
    workers, owners, intercepts = shape
    samples: list = []
    with four_host() as lab, ClusterCopy(lab, workers, owners, intercepts, name="soak") as copy:
        lab.run(CLIENT, ["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={CLIENT_PORTS}",
                         "net.ipv4.tcp_tw_reuse=1"])
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_rss, args=(copy, samples, stop), daemon=True)
        sampler.start()
        started = time.monotonic()
        done = 0
        try:
            while (left := seconds - (time.monotonic() - started)) > 1:
                chunk = min(SOAK_CHUNK_S, left)
                done += load.short_connections(lab, CLIENT, f"{copy.url}/index.html", rate, chunk,
                                               timeout_s=chunk * 4 + 15).summary.done
                progress(soak_progress(time.monotonic() - started, seconds, done, samples))
        finally:
            stop.set()
            sampler.join(10)
        progress(f"soak: load done, waiting until the target has all {done:,} requests (at most 60 s)")
        copy.wait_for_target(done, timeout=60, quiet=TARGET_QUIET_S)
        copy.stop()
        report = copy.report()
    copy.remove_dir()
    return SoakResult(seconds, rate, report.online_requests, report.target_requests, report.loss_ratio,
                      samples, rss_growth(samples))


def soak_progress(elapsed: float, seconds: float, requests: int, samples: list) -> str:
    """Where the soak stands: time spent and left, requests so far, each process's RSS now."""
    rss = ", ".join(f"{name} {mb:.1f}" for name, mb in sorted(samples[-1][1].items())) if samples else "not sampled yet"
    return (f"soak: {duration(elapsed)} of {duration(seconds)}, {about_left(max(0.0, seconds - elapsed))}; "
            f"{requests:,} requests; RSS MB: {rss}")


def progress(line: str) -> None:
    """A progress line on stderr (the results go to stdout)."""
    print(line, file=sys.stderr, flush=True)


def _sample_rss(copy: ClusterCopy, samples: list, stop: threading.Event) -> None:
    started = time.monotonic()
    while not stop.wait(SOAK_SAMPLE_S):
        rss = {}
        for role in ("online", "assistant"):
            for row in copy.status(role):
                try:
                    rss[row.name.partition(":")[2]] = psutil.Process(row.pid).memory_info().rss / 2**20
                except psutil.Error:
                    continue
        samples.append([round(time.monotonic() - started, 1), rss])


def rss_growth(samples: list, warmup: float = SOAK_WARMUP_S) -> dict[str, float]:
    """Per process: RSS at the last sample minus the first sample after ``warmup`` seconds
    (start-up and the first batches of sessions fill pools that are then reused)."""
    steady = [(t, rss) for t, rss in samples if t >= warmup]
    if len(steady) < 2:
        return {}
    first, last = steady[0][1], steady[-1][1]
    return {name: round(last[name] - first[name], 2) for name in last if name in first}


def soak_lines(result: SoakResult) -> list[str]:
    lines = [f"soak: {result.rate} short connections/s for {result.seconds:.0f} s: online "
             f"{result.online_requests}, target {result.target_requests}, loss {result.loss_ratio:.2e}",
             f"RSS growth from {SOAK_WARMUP_S:.0f} s to the end (MB, limit {SOAK_GROWTH_OK_MB:g}):"]
    for name, growth in sorted(result.growth_mb.items()):
        first = next((rss[name] for t, rss in result.samples if t >= SOAK_WARMUP_S and name in rss), 0.0)
        lines.append(f"  {name:<14} {first:7.1f} -> {first + growth:7.1f}  ({growth:+.2f})")
    lines.append(f"  {'MET' if result.steady else 'MISSED'}  no growth of RSS over a "
                 f"{result.seconds / 60:.0f}-minute run")
    return lines


# ---------------------------------------------------------------------- command

def _shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give K,M,I (capture workers, owners, intercepts), e.g. 1,1,1")
    return tuple(int(p) for p in parts)


def _scenarios(text: str) -> list[Scenario]:
    known = {s.name: s for s in (*SCENARIOS, *EXTRA_SCENARIOS)}
    chosen = []
    for name in filter(None, (part.strip() for part in text.split(","))):
        if name not in known:
            raise argparse.ArgumentTypeError(f"unknown scenario {name!r}: choose from {', '.join(known)}")
        chosen.append(known[name])
    if not chosen:
        raise argparse.ArgumentTypeError("name at least one scenario")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tcpcopy.lab.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=_scenarios, default=list(SCENARIOS), metavar="NAMES",
                        help=f"comma-separated scenarios (default: {', '.join(s.name for s in SCENARIOS)}; "
                             f"also {', '.join(s.name for s in EXTRA_SCENARIOS)})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT,
                        help=f"runs per scenario and tool ({DEFAULT_REPEAT})")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help=f"load time per HTTP run ({DEFAULT_SECONDS:g}; Redis and uploads are bounded in count)")
    parser.add_argument("--no-c", action="store_true", help="measure this project alone, without the C tool")
    parser.add_argument("--c-dir", default=str(ctool.DEFAULT_DIR), metavar="DIR",
                        help=f"where the C tool is built, or reused when already built ({ctool.DEFAULT_DIR})")
    parser.add_argument("--shape", type=_shape, default=(1, 1, 1), metavar="K,M,I",
                        help="capture workers, owners, intercepts of this project's cluster (1,1,1)")
    parser.add_argument("--json", default="bench/results.json", help="where to write every run and the verdicts")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="instead: one copy of 1,000 short connections/s for SECONDS, RSS sampled")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat < 1 or not 1 <= args.seconds <= load.MAX_SECONDS:
        build_parser().error(f"--repeat must be >= 1 and --seconds within 1..{load.MAX_SECONDS:g}")
    if os.geteuid() != 0:
        print("the benchmark builds network namespaces: run it as root", file=sys.stderr)
        return 2
    started = time.monotonic()
    box = box_now()
    print(f"{os.cpu_count()} CPUs; the servers, the load generator and the copy share them; {box_line(box)}",
          flush=True)
    if args.soak:
        return _soak_command(args)
    c_tool, c_note = (None, "--no-c: measuring this project alone") if args.no_c else prepare_c(Path(args.c_dir))
    print(c_note, flush=True)
    runs, failures = run_all(args.only, args.repeat, args.shape, args.seconds, c_tool)
    ours, theirs = summarize(runs), summarize(runs, C)
    comparison, results, costs = compare(ours, theirs), verdicts(ours, theirs), compare_cost(ours)
    print_tables(args, ours, theirs, comparison, results, c_tool is not None, costs)
    box_after = box_now()
    print(f"took {time.monotonic() - started:.0f} s; {box_line(box_after)}")
    for failure in failures:
        print(f"FAILED  {failure['scenario']} {TOOL_NAMES[failure['tool']]} run {failure['run']}: {failure['error']}")
    _write(args.json, {"cpus": os.cpu_count(), "shape": args.shape, "seconds": args.seconds,
                       "repeat": args.repeat, "c_tool": {"used": c_tool is not None, "note": c_note},
                       "box_before": box, "box_after": box_after, "summary": {OURS: ours, C: theirs},
                       "comparison": comparison, "verdicts": results, "compare_cost": costs,
                       "runs": [asdict(r) for r in runs], "failures": failures})
    return 1 if failures else 0


def prepare_c(directory: Path) -> tuple[CTool | None, str]:
    """The C tool, built or reused, and a line saying which; None and why when it cannot be had."""
    print(f"the C tool: building or reusing it in {directory} ...", flush=True)
    try:
        tool = ctool.build(directory)
    except CToolError as exc:
        return None, f"the C tool is not available, measuring this project alone: {exc}"
    return tool, f"the C tool: {tool.tcpcopy} and {tool.intercept} (tcpcopy 1.3.0, intercept 1.0.0)"


def box_now() -> dict:
    """The machine's load right now: load averages and the busy % of all cores over a second
    (other work on the box, e.g. someone's tests, shows here)."""
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "busy_pct": psutil.cpu_percent(interval=1.0)}


def box_line(box: dict) -> str:
    one, five, fifteen = box["loadavg"]
    return f"box load average {one:.2f} {five:.2f} {fifteen:.2f}, {box['busy_pct']:.0f}% busy"


def print_tables(args, ours: dict, theirs: dict, comparison: dict, results: list, with_c: bool,
                 costs: dict | None = None) -> None:
    print(f"\nshape {','.join(map(str, args.shape))}, {args.seconds:g} s per HTTP run, medians of up to "
          f"{args.repeat} runs per tool:")
    print(HEADER)
    for name in comparison:
        for summary in (theirs, ours):
            if name in summary:
                print(table_row(name, summary[name]))
    print(f"\nthis project (ours) and the C tool{'' if with_c else ' (not run)'}: CPU-us per copied request "
          "(command, body) of the copier and of intercept, their ratio ours/C, peak RSS:")
    print(COMPARE_HEADER)
    for name, row in comparison.items():
        print(compare_row(name, row))
    if costs:
        print(f"\nthe cost of comparing answers ([compare] percent; {COMPARE_RATE:,} keep-alive requests/s on "
              f"{COMPARE_CONNECTIONS} connections): the share of copied requests compared, CPU-us per copied "
              f"request of the copier and of intercept, and their ratio to {COMPARE_REFERENCE}:")
        print(COMPARE_COST_HEADER)
        for name, row in costs.items():
            print(compare_cost_row(name, row))
    print("targets:")
    print("\n".join(verdict_lines(results)))


def plan(scenarios, repeat: int, with_c: bool) -> list[tuple[Scenario, int, str]]:
    """Every run in order, (scenario, repeat, tool): both tools back to back for each repeat
    of each scenario, the C tool first on odd repeats and this project first on even ones,
    so neither always runs on a box the other just warmed. Scenarios of one family (the
    comparison's) take turns, repeat by repeat, so the box drifts alike for each; the C tool
    runs none that it cannot (``ours_only``)."""
    blocks: list[list[Scenario]] = []
    for scenario in scenarios:
        if scenario.family and blocks and blocks[-1][0].family == scenario.family:
            blocks[-1].append(scenario)
        else:
            blocks.append([scenario])
    order = []
    for block in blocks:
        for attempt in range(1, repeat + 1):
            for scenario in block:
                tools = ((C, OURS) if attempt % 2 else (OURS, C)) if with_c and not scenario.ours_only else (OURS,)
                order.extend((scenario, attempt, tool) for tool in tools)
    return order


def time_left(durations: list[float], remaining: int, seconds: float) -> float:
    """Seconds the ``remaining`` runs will take: the mean of the runs so far, or a guess."""
    each = statistics.fmean(durations) if durations else seconds + RUN_OVERHEAD_S
    return each * remaining


def run_all(scenarios, repeat: int, shape, seconds: float, c_tool: CTool | None = None) -> tuple[list[Run], list[dict]]:
    """Every run of every scenario, by both tools (this project alone without ``c_tool``); a
    run that fails is named and the suite goes on, and Ctrl-C ends it with the runs done so
    far (the lab of the run it cut is torn down)."""
    runs, failures, durations = [], [], []
    order = plan(scenarios, repeat, c_tool is not None)
    started = time.monotonic()
    try:
        for i, (scenario, attempt, tool) in enumerate(order, 1):
            left = time_left(durations, len(order) - i + 1, seconds)
            label = f"{scenario.name} run {attempt} {TOOL_NAMES[tool]}"
            progress(f"run {i}/{len(order)}: {label}, {duration(time.monotonic() - started)} elapsed, "
                     f"{about_left(left)}")
            began = time.monotonic()
            try:
                run = one_run(scenario, shape, seconds, c_tool) if tool == C else one_run(scenario, shape, seconds)
            except RUN_ERRORS as exc:
                failures.append({"scenario": scenario.name, "tool": tool, "run": attempt, "error": str(exc)[-2000:]})
                print(f"  {label}: failed: {str(exc)[-500:]}", flush=True)
                continue
            finally:
                durations.append(time.monotonic() - began)
            runs.append(run)
            print(f"  {label}: online {run.online_requests} ({run.online_rps:.0f}/s) target {run.target_requests} "
                  f"loss {run.loss_ratio:.2e} copier {run.copier_us:.0f} us intercept {run.intercept_us:.0f} us "
                  f"per {run.unit}, box {run.box_cpu_mean:.0f}% load {run.loadavg_1m:.2f}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: reporting the runs done so far", flush=True)
    return runs, failures


def _soak_command(args) -> int:
    try:
        result = soak(args.soak, args.shape)
    except RUN_ERRORS as exc:
        print(f"the soak failed: {exc}", file=sys.stderr)
        return 1
    print("\n".join(soak_lines(result)))
    _write(args.json, {"soak": asdict(result) | {"steady": result.steady}})
    return 0 if result.steady else 1


def _write(path: str, document: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
