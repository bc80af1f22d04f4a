"""How many short connections per second a sharded cluster copies without loss, and at what cost.

Run by hand, as root (it builds the four-host lab), from the checkout:

    .venv/bin/python bench/cluster_rate.py [--configs 1,1,1 2,2,2] [--rates 1000,1500,...]
                                           [--seconds 10] [--json bench/cluster_rate.json]

For each cluster shape (K capture workers, M owners, I intercepts) and each offered rate, a
fresh lab and cluster (``ClusterCopy``: supervisord, nginx online and at the target) copies
h2load's short connections (one GET each) for ``--seconds``, shortened at high rates to the
lab's 20,000 connections per h2load run (the client connects from ports 1024-65535, each kept
in TIME_WAIT, so a fresh lab per run starts with all of them free). Reported per run, from
the servers' access logs and psutil:

- online and target requests/s (requests over the span between the first and last logged),
- the loss ratio (online - target) / online,
- CPU seconds per 1,000 copied requests of the online host's copier processes together
  (owners + capture workers) and of the intercepts, from the change of each process's
  user + system time over the run (start of load until the target stopped gaining),
- peak RSS (VmHWM) of the largest owner, capture worker and intercept,
- the box: CPU busy % (psutil, sampled each second during the load: mean and max) and the
  1-minute load average at the end.

Then the highest offered rate per shape that was sustained: loss <= 1e-4, the offered rate
reached online (95 %), and the target served within 5 % of the online rate (a copy that
falls behind still loses nothing in a short run, but could not go on like that).

Everything runs on this one machine: h2load and both nginx compete with the copier for the
same cores, so the figures are a floor for what the copier would do on hosts of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from tcpcopy.deploy import load
from tcpcopy.deploy.clustercopy import ClusterCopy
from tcpcopy.deploy.lab import CLIENT, four_host

LOSS_OK = 1e-4
REACHED = 0.95
DEFAULT_RATES = (1000, 1500, 2000, 2500, 3000, 4000)
DEFAULT_CONFIGS = ((1, 1, 1), (2, 2, 2))
CLIENT_PORTS = "1024 65535"


@dataclass
class Run:
    workers: int
    owners: int
    intercepts: int
    offered: int
    seconds: float
    h2load_done: int
    h2load_failed: int
    online_requests: int
    target_requests: int
    online_rps: float
    target_rps: float
    loss_ratio: float
    online_cpu_s: float          # owners + capture workers, over the run
    intercept_cpu_s: float
    online_cpu_per_1k: float     # per 1,000 requests copied (at the target)
    intercept_cpu_per_1k: float
    owner_rss_mb: float          # the largest of each kind
    capture_rss_mb: float
    intercept_rss_mb: float
    box_cpu_mean: float          # % of all cores, during the load
    box_cpu_max: float
    loadavg_1m: float
    restarts: int                # processes whose pid changed during the run (should be 0)
    outcomes: dict

    @property
    def shape(self) -> str:
        return f"({self.workers},{self.owners},{self.intercepts})"

    @property
    def offered_reached(self) -> bool:
        """The load generator delivered (nearly) the offered rate to the online server."""
        return self.online_rps >= REACHED * self.offered and self.h2load_failed == 0

    @property
    def kept_up(self) -> bool:
        """The target was served at (nearly) the online rate: the copy did not fall behind."""
        return self.target_rps >= REACHED * self.online_rps

    @property
    def sustained(self) -> bool:
        return self.loss_ratio <= LOSS_OK and self.offered_reached and self.kept_up


class BoxSampler:
    """psutil.cpu_percent once a second in a thread, while the load runs."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        psutil.cpu_percent(None)   # start the interval
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.wait(1.0):
            self.samples.append(psutil.cpu_percent(None))

    def stop(self) -> tuple[float, float]:
        self._stop.set()
        self.thread.join(5)
        if not self.samples:
            return 0.0, 0.0
        return sum(self.samples) / len(self.samples), max(self.samples)


def rate_of(entries) -> float:
    times = [e["time"] for e in entries]
    if len(times) < 2 or max(times) == min(times):
        return 0.0
    return (len(times) - 1) / (max(times) - min(times))


def cpu_of(figures: dict, prefixes: tuple[str, ...]) -> float:
    return sum(f.cpu_seconds for name, f in figures.items() if name.startswith(prefixes))


def rss_of(figures: dict, prefix: str) -> float:
    return max((f.peak_rss_mb for name, f in figures.items() if name.startswith(prefix)), default=0.0)


def one_run(shape: tuple[int, int, int], rate: int, seconds: float) -> Run:
    """A fresh lab per run: no TIME_WAIT of an earlier run narrows the client's ports."""
    workers, owners, intercepts = shape
    with four_host() as lab, ClusterCopy(lab, workers, owners, intercepts, name="bench") as copy:
        # every connection of the run from its own port (the client keeps each in TIME_WAIT)
        lab.run(CLIENT, ["sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range={CLIENT_PORTS}"])
        pids = {row.name: row.pid for role in ("online", "assistant") for row in copy.status(role)}
        before = copy.measure()
        box = BoxSampler()
        try:
            # h2load falls behind its schedule on a busy box: give it room, the rates are measured
            results = [load.short_connections(lab, CLIENT, f"{copy.url}/index.html", rate, seconds,
                                              timeout_s=seconds * 4 + 15)]
        finally:
            box_mean, box_max = box.stop()
        done = sum(r.summary.done for r in results)
        failed = sum(r.summary.failed + r.summary.errored + r.summary.timeout for r in results)
        copy.wait_for_target(done, timeout=60, quiet=3.0)
        after = copy.measure()
        now = {row.name: row.pid for role in ("online", "assistant") for row in copy.status(role)}
        loadavg = os.getloadavg()[0]
        copy.stop()
        report = copy.report()
        online = copy.online.access_log_entries()
        target = copy.target.access_log_entries()
    copy.remove_dir()

    def delta(prefixes):
        return max(0.0, cpu_of(after, prefixes) - cpu_of(before, prefixes))

    online_cpu = delta(("online/owner-", "online/capture-"))
    intercept_cpu = delta(("assistant/intercept-",))
    copied_k = max(len(target), 1) / 1000
    return Run(workers, owners, intercepts, rate, seconds, done, failed,
               len(online), len(target), rate_of(online), rate_of(target), report.loss_ratio,
               online_cpu, intercept_cpu, online_cpu / copied_k, intercept_cpu / copied_k,
               rss_of(after, "online/owner-"), rss_of(after, "online/capture-"),
               rss_of(after, "assistant/intercept-"), box_mean, box_max, loadavg,
               sum(1 for name, pid in pids.items() if now.get(name) != pid), report.outcomes)


HEADER = (f"{'shape':<9} {'offered':>7} {'secs':>4} {'online/s':>8} {'target/s':>8} {'loss':>9} "
          f"{'cpu/1k onl':>10} {'cpu/1k icp':>10} {'owner MB':>8} {'capt MB':>7} {'icpt MB':>7} "
          f"{'box cpu% mean/max':>17} {'load1':>5} {'h2 fail':>7} {'restarts':>8}  verdict")


def row(r: Run) -> str:
    faults = [text for fault, text in ((not r.offered_reached, "load not reached"),
                                       (r.loss_ratio > LOSS_OK, "loss"), (not r.kept_up, "copy fell behind")) if fault]
    verdict = ", ".join(faults) or "sustained"
    return (f"{r.shape:<9} {r.offered:>7} {r.seconds:>4.0f} {r.online_rps:>8.0f} {r.target_rps:>8.0f} {r.loss_ratio:>9.2e} "
            f"{r.online_cpu_per_1k:>10.3f} {r.intercept_cpu_per_1k:>10.3f} {r.owner_rss_mb:>8.1f} "
            f"{r.capture_rss_mb:>7.1f} {r.intercept_rss_mb:>7.1f} "
            f"{r.box_cpu_mean:>8.0f}/{r.box_cpu_max:<8.0f} {r.loadavg_1m:>5.2f} {r.h2load_failed:>7} {r.restarts:>8}  {verdict}")


def best_rates(runs: list[Run]) -> dict[str, int | None]:
    best: dict[str, int | None] = {}
    for r in runs:
        best.setdefault(r.shape, None)
        if r.sustained and (best[r.shape] or 0) < r.offered:
            best[r.shape] = r.offered
    return best


def _shape(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give K,M,I, e.g. 2,2,2")
    return tuple(int(p) for p in parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", type=_shape, default=list(DEFAULT_CONFIGS),
                        metavar="K,M,I", help="cluster shapes (default: 1,1,1 2,2,2)")
    parser.add_argument("--rates", default=",".join(map(str, DEFAULT_RATES)),
                        help="offered short connections per second, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="load duration per run (10)")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")), help="where to write the runs")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    print(f"{os.cpu_count()} CPUs; h2load, nginx x2 and the cluster share them", flush=True)
    print(HEADER, flush=True)
    runs: list[Run] = []
    started = time.monotonic()
    for shape in args.configs:
        for rate in rates:
            # at most the lab's bound of connections per h2load run: shorter runs at high rates
            r = one_run(shape, rate, min(args.seconds, load.MAX_CONNECTIONS / rate))
            runs.append(r)
            print(row(r), flush=True)
    best = best_rates(runs)
    for shape, rate in best.items():
        print(f"highest offered rate sustained (loss <= {LOSS_OK:g}, load reached, target within "
              f"{1 - REACHED:.0%} of the online rate): {shape} {rate if rate else 'none'}")
    print(f"took {time.monotonic() - started:.0f} s")
    Path(args.json).write_text(json.dumps({
        "cpus": os.cpu_count(), "seconds": args.seconds, "loss_ok": LOSS_OK,
        "best": best, "runs": [asdict(r) | {"shape": r.shape, "offered_reached": r.offered_reached,
                                                     "kept_up": r.kept_up, "sustained": r.sustained} for r in runs]}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
