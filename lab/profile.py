"""Profile the copier under a real load: where its CPU goes, per process.

It builds the four-host lab, starts nginx, intercept and tcpcopy as the live-copy tests do
(``LiveCopy``), offers one bounded load from the client host, and samples the owner (the
``tcpcopy`` process), its capture worker and intercept with py-spy while the load runs.
Each process gets a flame graph (SVG) and a text profile (the functions holding the most
samples, by own time and by time below), written into ``--out``. Only samples taken while
the process holds the GIL count (``py-spy --gil``), so waiting in poll or in libpcap does
not show as work:

    python -m tcpcopy.lab.profile [--load keepalive|short|redis] [--rate 5000]
                                     [--seconds 10] [--out bench/profile] [--native]

``--native`` adds the C frames (py-spy's own option): the functions of a mypyc-compiled hot
path, libpcap, ZeroMQ and the interpreter show by name instead of being counted in the
Python function that called them.

py-spy is a PyPI package (``pip install py-spy``; ``make profile`` installs it into the
venv). The lab is torn down afterwards, also on failure.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tcpcopy.lab import load
from tcpcopy.lab.netns import CLIENT, LabError, four_host
from tcpcopy.lab.livecopy import LiveCopy, LiveCopyError
from tcpcopy.lab.servers import ServerError

LOADS = ("keepalive", "short", "redis")
REDIS_PORT = 6379
SAMPLE_RATE = 250          # samples per second per process
TOP_FUNCTIONS = 25


class ProfileError(RuntimeError):
    """The profile could not be taken; the message says why and what to do."""


def py_spy() -> str:
    """The py-spy next to this interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise ProfileError("py-spy is missing: pip install py-spy (make profile installs it)")
    return found


def targets(copy: LiveCopy) -> dict[str, int]:
    """Role name -> pid of the processes to sample."""
    owner = psutil.Process(copy.tcpcopy.pid)
    found = {"owner": owner.pid, "intercept": copy.intercept.pid}
    for child in owner.children(recursive=True):
        if any("tcpcopy.capture.worker" in part for part in child.cmdline()):
            found["capture"] = child.pid
    return found


def start_sampling(pids: dict[str, int], seconds: float, out: Path,
                   native: bool = False) -> dict[str, subprocess.Popen]:
    """One ``py-spy record`` per process: a flame graph and a raw (collapsed stacks) file."""
    spy = py_spy()
    # Native stacks need the process paused while py-spy reads them (no --nonblocking).
    extra = ["--native"] if native else ["--nonblocking"]
    procs = {}
    for role, pid in pids.items():
        for fmt, suffix in (("flamegraph", "svg"), ("raw", "txt")):
            argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
                    "--rate", str(SAMPLE_RATE), "--gil", *extra, "--format", fmt,
                    "--output", str(out / f"{role}.{suffix}")]
            procs[f"{role}.{fmt}"] = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.PIPE, text=True)
    return procs


def wait_sampling(procs: dict[str, subprocess.Popen], timeout: float) -> list[str]:
    """Wait for every sampler; the problems of those that failed."""
    problems = []
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if proc.returncode:
            problems.append(f"{name}: {err.strip()[-300:]}")
    return problems


def summarize(raw: Path) -> str:
    """Text profile from py-spy's collapsed stacks ("frame;frame;... count" lines): the
    functions with the most samples on top of the stack (own) and anywhere in it (below)."""
    own: collections.Counter = collections.Counter()
    below: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            below[frame] += n
    if not total:
        return f"{raw.name}: no samples\n"
    lines = [f"{raw.stem}: {total} samples", "", "  own %  function"]
    lines += [f"  {100 * n / total:5.1f}  {name}" for name, n in own.most_common(TOP_FUNCTIONS)]
    lines += ["", "  total %  function (with what it calls)"]
    lines += [f"  {100 * n / total:7.1f}  {name}" for name, n in below.most_common(TOP_FUNCTIONS)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """py-spy's 'function (/path/to/session/engine.py:801)' as 'function (session/engine.py)':
    samples add up per function, not per line."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    parts = Path(path).parts[-2:] if path else ()
    return f"{name} ({'/'.join(parts)})" if parts else name


def offer_load(copy: LiveCopy, kind: str, rate: int, seconds: float) -> str:
    if kind == "short":
        result = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html", rate, seconds)
        return f"short connections: {result.summary.done} requests at {rate}/s"
    if kind == "keepalive":
        result = load.keepalive_for(copy.lab, CLIENT, f"{copy.url}/index.html", 100, seconds, rate=rate)
        return f"keep-alive: {result.summary.done} requests at {rate}/s on 100 connections"
    from tcpcopy.lab.kvstore import redis_benchmark
    requests = max(1000, int(rate * seconds))
    redis_benchmark(copy.lab, CLIENT, copy.online_address, REDIS_PORT, clients=100,
                    requests=requests, timeout_s=seconds + 60)
    return f"redis-benchmark: {requests} SET and GET on 100 connections"


def profile(kind: str, rate: int, seconds: float, out: Path, native: bool = False) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    with four_host() as lab:
        extra = {"redis_port": REDIS_PORT} if kind == "redis" else {}
        with LiveCopy(lab, **extra) as copy:
            procs = start_sampling(targets(copy), seconds + 2, out, native)
            time.sleep(0.5)
            said = offer_load(copy, kind, rate, seconds)
            problems = wait_sampling(procs, seconds + 30)
        copy.remove_dir()
    texts = [summarize(raw) for raw in sorted(out.glob("*.txt")) if not raw.name.endswith(".profile.txt")]
    for raw, text in zip(sorted(out.glob("*.txt")), texts):
        raw.with_suffix(".profile.txt").write_text(text)
    return [said, *problems, *texts]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tcpcopy.lab.profile",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", choices=LOADS, default="keepalive", help="the load to profile under (keepalive)")
    parser.add_argument("--rate", type=int, default=5000, help="requests per second offered (5000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the load and the sampling run (10)")
    parser.add_argument("--out", type=Path, default=Path("bench/profile"), help="output folder (bench/profile)")
    parser.add_argument("--native", action="store_true",
                        help="sample C frames too: compiled hot path, libpcap, ZeroMQ, the interpreter")
    args = parser.parse_args(argv)
    if not 1 <= args.rate <= 100_000 or not 1 <= args.seconds <= 120:
        parser.error("give --rate 1..100000 and --seconds 1..120")
    try:
        for text in profile(args.load, args.rate, args.seconds, args.out, args.native):
            print(text)
    except (ProfileError, LabError, ServerError, LiveCopyError, load.LoadError) as exc:
        print(f"profile: {exc}", file=sys.stderr)
        return 2
    print(f"flame graphs and profiles in {args.out}/ (owner, capture, intercept .svg and .profile.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
