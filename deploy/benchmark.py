"""The benchmark suite: a live copy in the four-host lab at fixed offered loads, judged
against the project's targets, written as a table and a JSON file.

    python -m tcpcopy.deploy.benchmark [--repeat 3] [--seconds 15] [--only short-2500,n3-1000]
                                       [--shape 1,1,1] [--json bench/results.json]
    python -m tcpcopy.deploy.benchmark --soak 600      # RSS over a long copy

Every run builds a fresh lab (so no TIME_WAIT of an earlier run narrows the client's ports)
and a copy cluster of the given shape under supervisord (``ClusterCopy``: K capture workers,
M session owners, I intercepts, nginx online and at the target), offers one load from the
client host with h2load for a fixed time, waits until the target stops gaining, and reads:

- requests online and at the target from the servers' own access logs, their rates, and the
  loss ratio ``(online x copies - target) / (online x copies)``;
- CPU-microseconds per copied request (a request the target logged) of the online host's
  copier processes together (owners + capture workers) and of the intercepts, from the
  change of each process's user + system time over the run;
- peak RSS (VmHWM) of the largest owner, capture worker and intercept;
- the box: the mean and highest busy percentage of all cores sampled each second, the
  1-minute load average, and the busy CPU-seconds left to everything but the copy (nginx x2,
  h2load, the kernel), so a box saturated by the servers and the load generator shows as
  such (the box's total comes from the kernel's tick-sampled accounting: at low load it can
  read below the sum of the copy's own processes, and what is left is then shown as 0);
- what the copier counted as lost on its way: capture drops (owner queue full, kernel) and
  sessions that ended abnormally.

Each scenario runs ``--repeat`` times; the table shows medians and the verdict of each target.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from tcpcopy.deploy import load
from tcpcopy.deploy.clustercopy import ClusterCopy, ClusterCopyError
from tcpcopy.deploy.lab import CLIENT, LabError, four_host
from tcpcopy.deploy.servers import ServerError

# What a run can fail with: the suite names it, goes on with the next run and keeps the rest.
RUN_ERRORS = (load.LoadError, ClusterCopyError, LabError, ServerError)

CLIENT_PORTS = "1024 65535"
KEEPALIVE_CONNECTIONS = 100
DEFAULT_SECONDS = 15.0
DEFAULT_REPEAT = 3
REACHED = 0.95            # the load generator delivered at least this share of the offered rate
KEPT_UP = 0.95            # the target was served at least this share of the online rate x copies
TARGET_QUIET_S = 3.0      # the target gained nothing this long: the copy is over
SOAK_SAMPLE_S = 5.0
SOAK_CHUNK_S = 30.0
SOAK_RATE = 1000
SOAK_WARMUP_S = 60.0      # RSS growth is measured from here to the end
SOAK_GROWTH_OK_MB = 4.0


# ---------------------------------------------------------------------- scenarios and targets

@dataclass(frozen=True)
class Scenario:
    """One load: ``short`` connections (one request each) at ``rate`` per second, or
    ``keepalive`` connections sending ``rate`` requests per second together (0: as fast as
    the servers answer); ``copies`` is the copier's -n."""

    name: str
    kind: str            # "short" | "keepalive"
    rate: int = 0        # offered requests per second; 0 only for keepalive
    copies: int = 1
    connections: int = KEEPALIVE_CONNECTIONS   # keepalive only


SCENARIOS = (
    Scenario("short-1000", "short", 1000),
    Scenario("short-2000", "short", 2000),
    Scenario("short-2500", "short", 2500),
    Scenario("short-3000", "short", 3000),
    Scenario("short-5000", "short", 5000),
    Scenario("keepalive-10000", "keepalive", 10000),
    Scenario("keepalive-15000", "keepalive", 15000),
    Scenario("keepalive-20000", "keepalive", 20000),
    Scenario("n3-500", "short", 500, copies=3),
    Scenario("n3-1000", "short", 1000, copies=3),
)
# Not in the default run: keep-alive as fast as nginx answers, far beyond what the copy can
# follow on the same two cores; it shows where the copy's drops are counted.
EXTRA_SCENARIOS = (
    Scenario("keepalive-max", "keepalive", 0),
)
KEEPALIVE_BEST = "keepalive-best"   # in TARGETS: the fastest keep-alive scenario sustained


@dataclass(frozen=True)
class Target:
    """``figure`` of ``scenario`` (the median over repeats) must be at most ``limit``."""

    scenario: str
    figure: str
    limit: float
    text: str


# The C tcpcopy + intercept on the same kind of 2-core lab: short connections 160-180 us
# (tcpcopy) and 70-90 us (intercept) per copied request; keep-alive 26 us and 14 us.
TARGETS = (
    Target("short-2500", "loss_ratio", 1e-4, "short connections at 2,500/s: loss <= 1e-4"),
    Target(KEEPALIVE_BEST, "loss_ratio", 2e-4, "keep-alive at the box's maximum rate: loss <= 2e-4"),
    Target("n3-1000", "loss_ratio", 1e-4, "-n 3 at 1,000/s: loss <= 1e-4"),
    Target("short-2500", "copier_us", 360, "copier CPU per short request <= 2 x C (180 us)"),
    Target("short-2500", "intercept_us", 180, "intercept CPU per short request <= 2 x C (90 us)"),
    Target(KEEPALIVE_BEST, "copier_us", 52, "copier CPU per keep-alive request <= 2 x C (26 us)"),
    Target(KEEPALIVE_BEST, "intercept_us", 28, "intercept CPU per keep-alive request <= 2 x C (14 us)"),
)


# ---------------------------------------------------------------------- one run

@dataclass
class Run:
    scenario: str
    shape: str
    seconds: float
    copies: int                   # -n
    offered_rps: float            # 0: keep-alive as fast as served
    h2load_done: int
    h2load_failed: int
    online_requests: int
    target_requests: int
    online_rps: float
    target_rps: float
    loss_ratio: float
    copier_cpu_s: float           # owners + capture workers, over the run
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


def offer(lab, scenario: Scenario, url: str, seconds: float):
    """Run the scenario's load from the client host; h2load's summary."""
    if scenario.kind == "keepalive":
        return load.keepalive_for(lab, CLIENT, f"{url}/index.html", scenario.connections, seconds,
                                  scenario.rate or None).summary
    # h2load falls behind its schedule on a busy box: give it room, the rates are measured
    result = load.short_connections(lab, CLIENT, f"{url}/index.html", scenario.rate, seconds,
                                    timeout_s=seconds * 4 + 15)
    return result.summary


def one_run(scenario: Scenario, shape: tuple[int, int, int], seconds: float) -> Run:
    workers, owners, intercepts = shape
    options = {"copies": scenario.copies} if scenario.copies > 1 else {}
    with four_host() as lab, ClusterCopy(lab, workers, owners, intercepts, options, name="bench") as copy:
        # every connection from a port of its own, reused only after TIME_WAIT's first second
        lab.run(CLIENT, ["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={CLIENT_PORTS}",
                         "net.ipv4.tcp_tw_reuse=1"])
        pids = _pids(copy)
        before = copy.measure()
        box = BoxSampler()
        try:
            summary = offer(lab, scenario, copy.url, seconds)
        finally:
            cpu_mean, cpu_max = box.stop_sampling()
        copy.wait_for_target(summary.done * scenario.copies, timeout=60, quiet=TARGET_QUIET_S)
        after = copy.measure()
        box_busy = box.busy_seconds()
        restarts = sum(1 for name, pid in _pids(copy).items() if pids.get(name) != pid)
        loadavg = os.getloadavg()[0]
        copy.stop()
        report = copy.report()
        online = copy.online.access_log_entries()
        target = copy.target.access_log_entries()
    copy.remove_dir()
    copier_cpu = _cpu_delta(before, after, ("online/owner-", "online/capture-"))
    intercept_cpu = _cpu_delta(before, after, ("assistant/intercept-",))
    copied = max(len(target), 1)
    captures = report.captures.values()
    return Run(
        scenario=scenario.name, shape=",".join(map(str, shape)), seconds=seconds,
        copies=scenario.copies, offered_rps=float(scenario.rate), h2load_done=summary.done,
        h2load_failed=summary.failed + summary.errored + summary.timeout,
        online_requests=len(online), target_requests=len(target),
        online_rps=rate_of(online), target_rps=rate_of(target), loss_ratio=report.loss_ratio,
        copier_cpu_s=copier_cpu, intercept_cpu_s=intercept_cpu,
        copier_us=copier_cpu / copied * 1e6, intercept_us=intercept_cpu / copied * 1e6,
        owner_rss_mb=_rss(after, "online/owner-"), capture_rss_mb=_rss(after, "online/capture-"),
        intercept_rss_mb=_rss(after, "assistant/intercept-"),
        box_busy_s=box_busy, other_busy_s=max(0.0, box_busy - copier_cpu - intercept_cpu),
        box_cpu_mean=cpu_mean, box_cpu_max=cpu_max, loadavg_1m=loadavg,
        capture_drops=sum(c.get("dropped(owner full)", 0) + c.get("kernel drop", 0) for c in captures),
        sessions_dropped=sum(n for kind, n in report.outcomes.items() if kind.startswith("dropped")),
        restarts=restarts, outcomes=report.outcomes)


def _pids(copy: ClusterCopy) -> dict[str, int]:
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


def _rss(figures: dict, prefix: str) -> float:
    return max((f.peak_rss_mb for name, f in figures.items() if name.startswith(prefix)), default=0.0)


def rate_of(entries) -> float:
    """Requests per second over the span between the first and last logged request."""
    times = [e["time"] for e in entries]
    if len(times) < 2 or max(times) == min(times):
        return 0.0
    return (len(times) - 1) / (max(times) - min(times))


# ---------------------------------------------------------------------- summaries and verdicts

MEDIAN_FIGURES = ("online_rps", "target_rps", "loss_ratio", "copier_us", "intercept_us",
                  "owner_rss_mb", "capture_rss_mb", "intercept_rss_mb", "box_cpu_mean",
                  "box_cpu_max", "loadavg_1m", "box_busy_s", "copier_cpu_s", "intercept_cpu_s",
                  "other_busy_s")


def summarize(runs: list[Run]) -> dict[str, dict]:
    """Per scenario, in run order: the median of each figure over its runs, the worst loss,
    and whether every run reached its load and kept up."""
    by_scenario: dict[str, list[Run]] = {}
    for run in runs:
        by_scenario.setdefault(run.scenario, []).append(run)
    summary = {}
    for name, group in by_scenario.items():
        row = {figure: statistics.median(getattr(r, figure) for r in group) for figure in MEDIAN_FIGURES}
        row.update(runs=len(group), worst_loss=max(r.loss_ratio for r in group),
                   online_requests=sum(r.online_requests for r in group),
                   target_requests=sum(r.target_requests for r in group),
                   capture_drops=sum(r.capture_drops for r in group),
                   sessions_dropped=sum(r.sessions_dropped for r in group),
                   restarts=sum(r.restarts for r in group),
                   offered_rps=group[0].offered_rps,
                   load_reached=all(r.offered_reached for r in group),
                   kept_up=all(r.kept_up for r in group))
        summary[name] = row
    return summary


def sustained(row: dict) -> bool:
    """Every run of the scenario reached its offered load and the copy kept up with it."""
    return row["load_reached"] and row["kept_up"]


def best_keepalive(summary: dict[str, dict]) -> str | None:
    """The keep-alive scenario with the highest offered rate that was sustained: the box's
    maximum rate for a copy, as far as the suite measured it."""
    candidates = [(row["offered_rps"], name) for name, row in summary.items()
                  if name.startswith("keepalive-") and row["offered_rps"] and sustained(row)]
    return max(candidates)[1] if candidates else None


def verdicts(summary: dict[str, dict], targets=TARGETS) -> list[dict]:
    """Each target with the scenario it was judged on, the measured median and whether it
    was met (None: the scenario was not run, or no keep-alive rate was sustained)."""
    results = []
    for target in targets:
        scenario = best_keepalive(summary) if target.scenario == KEEPALIVE_BEST else target.scenario
        row = summary.get(scenario) if scenario else None
        value = None if row is None else row[target.figure]
        met = None if value is None else value <= target.limit
        results.append({"target": target.text, "scenario": scenario or target.scenario,
                        "figure": target.figure, "limit": target.limit, "measured": value, "met": met})
    return results


HEADER = (f"{'scenario':<15} {'runs':>4} {'offered':>7} {'online/s':>8} {'target/s':>8} {'loss':>9} "
          f"{'worst':>9} {'copier us':>9} {'icpt us':>7} {'owner MB':>8} {'capt MB':>7} {'icpt MB':>7} "
          f"{'box% mean/max':>13} {'load1':>5} {'other cpu s':>11}  notes")


def table_row(name: str, row: dict) -> str:
    notes = [text for fault, text in ((not row["load_reached"], "load not reached"),
                                      (not row["kept_up"], "copy fell behind"),
                                      (row["capture_drops"], f"capture drops {row['capture_drops']}"),
                                      (row["sessions_dropped"], f"sessions dropped {row['sessions_dropped']}"),
                                      (row["restarts"], f"restarts {row['restarts']}")) if fault]
    offered = f"{row['offered_rps']:.0f}" if row["offered_rps"] else "max"
    return (f"{name:<15} {row['runs']:>4} {offered:>7} {row['online_rps']:>8.0f} {row['target_rps']:>8.0f} "
            f"{row['loss_ratio']:>9.2e} {row['worst_loss']:>9.2e} {row['copier_us']:>9.0f} "
            f"{row['intercept_us']:>7.0f} {row['owner_rss_mb']:>8.1f} {row['capture_rss_mb']:>7.1f} "
            f"{row['intercept_rss_mb']:>7.1f} {row['box_cpu_mean']:>6.0f}/{row['box_cpu_max']:<6.0f} "
            f"{row['loadavg_1m']:>5.2f} {row['other_busy_s']:>11.1f}  {', '.join(notes) or 'ok'}")


def verdict_lines(results: list[dict]) -> list[str]:
    lines = []
    for v in results:
        state = {True: "MET", False: "MISSED", None: "not run"}[v["met"]]
        measured = "-" if v["measured"] is None else f"{v['measured']:.3g}"
        lines.append(f"  {state:<7} {v['target']:<56} {v['scenario']:<16} measured {measured} "
                     f"(limit {v['limit']:g})")
    return lines


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
        finally:
            stop.set()
            sampler.join(10)
        copy.wait_for_target(done, timeout=60, quiet=TARGET_QUIET_S)
        copy.stop()
        report = copy.report()
    copy.remove_dir()
    return SoakResult(seconds, rate, report.online_requests, report.target_requests, report.loss_ratio,
                      samples, rss_growth(samples))


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
    parser = argparse.ArgumentParser(prog="python -m tcpcopy.deploy.benchmark",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=_scenarios, default=list(SCENARIOS), metavar="NAMES",
                        help=f"comma-separated scenarios (default: {', '.join(s.name for s in SCENARIOS)}; "
                             f"also {', '.join(s.name for s in EXTRA_SCENARIOS)})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="runs per scenario (3)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="load time per run (15)")
    parser.add_argument("--shape", type=_shape, default=(1, 1, 1), metavar="K,M,I",
                        help="capture workers, owners, intercepts (1,1,1)")
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
    print(f"{os.cpu_count()} CPUs; h2load, nginx x2 and the copy share them", flush=True)
    if args.soak:
        return _soak_command(args)
    runs, failures = run_all(args.only, args.repeat, args.shape, args.seconds)
    summary = summarize(runs)
    results = verdicts(summary)
    print(f"\nshape {','.join(map(str, args.shape))}, {args.seconds:g} s per run, medians of {args.repeat}:")
    print(HEADER)
    for name, row in summary.items():
        print(table_row(name, row))
    print("targets:")
    print("\n".join(verdict_lines(results)))
    print(f"took {time.monotonic() - started:.0f} s")
    for failure in failures:
        print(f"FAILED  {failure['scenario']} run {failure['run']}: {failure['error']}")
    _write(args.json, {"cpus": os.cpu_count(), "shape": args.shape, "seconds": args.seconds,
                       "repeat": args.repeat, "summary": summary, "verdicts": results,
                       "runs": [asdict(r) for r in runs], "failures": failures})
    return 1 if failures else 0


def run_all(scenarios, repeat: int, shape, seconds: float) -> tuple[list[Run], list[dict]]:
    """Every run of every scenario; a run that fails is named and the suite goes on, and
    Ctrl-C ends it with the runs done so far (the lab of the run it cut is torn down)."""
    runs, failures = [], []
    try:
        for scenario in scenarios:
            for attempt in range(1, repeat + 1):
                try:
                    run = one_run(scenario, shape, seconds)
                except RUN_ERRORS as exc:
                    failures.append({"scenario": scenario.name, "run": attempt, "error": str(exc)[-2000:]})
                    print(f"  {scenario.name} run {attempt}: failed: {str(exc)[-500:]}", flush=True)
                    continue
                runs.append(run)
                print(f"  {scenario.name} run {attempt}: online {run.online_requests} ({run.online_rps:.0f}/s) "
                      f"target {run.target_requests} loss {run.loss_ratio:.2e} copier {run.copier_us:.0f} us "
                      f"intercept {run.intercept_us:.0f} us box {run.box_cpu_mean:.0f}%", flush=True)
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
