"""The stats channel's reading side: one aggregator keeps what every process publishes.

Each process owns a ``StatsPublisher`` (``cluster/stats.py``): a ZeroMQ PUB socket that *connects* to the
aggregator's endpoint and, at most every ``every`` seconds (one by default), sends one STATS
message (``wire.encode_stats(role, identity, figures)``). The figures are the process's own
counters, flattened to ``name -> number`` ("outcomes.closed:completed"), plus its resource
figures from psutil and a monotonic ``published_at``. The socket keeps a few messages at most and lingers
for none, so a missing aggregator costs nothing: stats are the one channel allowed to lose.

The ``Aggregator`` binds a SUB socket, keeps the latest snapshots of each (role, identity)
with the time they arrived, and answers what the dashboard (``cluster/ops/top.py``), the
Prometheus endpoint (``cluster/ops/metrics.py``) and scripts ask: rates, totals per role, the
copier's own loss estimate, one JSON-able snapshot. Every figure it reports is a number: a
process heard from only once has rates of 0.0, a silent one is listed as stale with its age.

Names the aggregator reads (a figure may also sit under one group, "engine.requests_sent"):

- gauges, current sizes rather than counts: ``GAUGES`` and any name ending in ``_now``;
- owners: ``client_content_packets``, ``segments_split``, ``client_retransmits_skipped``,
  ``content_packets_sent``, ``requests_sent``, ``responses_completed``, ``sessions_active``,
  session outcomes as ``outcomes.closed:REASON`` / ``outcomes.dropped:REASON`` (or the
  engine's ``closed.REASON`` / ``dropped.REASON``);
- capture workers: ``packets_dropped_full``, ``kernel_dropped``;
- owners that compare answers (``tcpcopy --compare``): ``compare.counts.VERDICT``,
  ``compare.not_captured``, ``compare.latency.SIDE.p50`` / ``p90`` / ``p99`` (seconds, gauges)
  and ``compare.latency.SIDE.samples`` (``compare_totals``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from tcpcopy.cluster import wire
from tcpcopy.cluster.curve import STATS_DOMAIN, ClientKeys, KeyGate, ServerKeys, connect_with_keys, listen_with_keys
from tcpcopy.cluster.stats import flatten_counted
from tcpcopy.session.compare import VERDICTS

STALE_AFTER = 3.0        # seconds without a STATS message before a process is stale
SUB_HWM = 1000
HISTORY = 16             # snapshots kept per process, for rates over a window
MAX_PROCESSES = 1024     # beyond this the longest-silent process is forgotten
MAX_FIGURES = wire.STATS_MAX_FIGURES   # figures kept from one message; the rest are counted as bad

GAUGES = frozenset({"pid", "published_at", "rss_bytes", "num_threads", "num_fds",
                    "sessions_active", "routes", "owners",
                    "input_lag_ms", "input_lag_max_ms", "shedding",          # an owner's load
                    "loop_busy_percent",                                     # any loop's
                    "budget_bytes", "used_bytes", "peak_bytes",              # its buffer budget
                    "p50", "p90", "p99"})      # latency percentiles (compare.latency.SIDE.pNN)
NOT_SUMMED = frozenset({"pid", "published_at"})


def is_gauge(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in GAUGES or leaf.endswith("_now")


def split_identity(identity: str) -> tuple[str, str]:
    """(host, shard) from an identity such as "owner-3@online1" -> ("online1", "3");
    either is "" when the identity does not say."""
    name, _, host = identity.partition("@")
    shard = re.search(r"-(\d+)$", name)
    return host, shard.group(1) if shard else ""


# ---------------------------------------------------------------------- aggregating

@dataclass(frozen=True, slots=True)
class Snapshot:
    figures: dict
    arrived: float


@dataclass
class ProcessStats:
    role: str
    identity: str
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY))

    @property
    def latest(self) -> Snapshot:
        return self.history[-1]


class Aggregator:
    """The latest STATS of every process that publishes to ``endpoint``.

    It binds ``endpoint`` (then it is the only consumer), or with ``hub`` connects to a stats
    hub's feed there, which any number of consumers may read (``hub_keys``: its CURVE keys).
    ``clock`` is the aggregator's own monotonic clock (arrival times, ages); tests pass their
    own. ``poll`` and the readers may run in different threads. With ``keys`` it admits
    only the publishers whose public keys are listed (CURVE); refusals are in ``counts``.
    """

    def __init__(self, endpoint: str, clock=time.monotonic, context: zmq.Context | None = None,
                 stale_after: float = STALE_AFTER, keys: ServerKeys | None = None, *,
                 hub: bool = False, hub_keys: ClientKeys | None = None):
        self.endpoint = endpoint
        self.clock = clock
        self.stale_after = stale_after
        self.processes: dict[tuple[str, str], ProcessStats] = {}
        self.counts = {"messages": 0, "wire_errors": 0, "unexpected": 0, "bad_figures": 0,
                       "too_deep": 0, "forgotten": 0, "duplicates": 0}
        self.last_error = ""
        self._lock = threading.Lock()
        self.socket = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, SUB_HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(wire.AGGREGATOR_TAKES))
        self.socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.gate = None
        if hub:
            self._connect_hub(hub_keys)
            return
        try:
            if keys is not None:
                listen_with_keys(self.socket, keys, STATS_DOMAIN)
                self.gate = KeyGate(self.socket, keys, STATS_DOMAIN, "stats listener")
            self.socket.bind(endpoint)
        except (zmq.ZMQError, RuntimeError):
            self.close()
            raise

    def _connect_hub(self, keys: ClientKeys | None) -> None:
        """Read a stats hub's feed (cluster/hub.py) instead of binding the endpoint, so any
        number of aggregators hear the same processes."""
        if keys is not None:
            connect_with_keys(self.socket, keys)
        self.socket.connect(self.endpoint)

    def close(self) -> None:
        if self.gate is not None:
            self.gate.close()
        self.socket.close(linger=0)

    def refused(self) -> int:
        """Publishers refused for their keys, or for having none (0 without keys)."""
        gate = self.gate.counts if self.gate is not None else {}
        return sum(value for name, value in gate.items() if name.startswith("refused"))

    # -- input

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for STATS, then take all that wait; how many."""
        taken = 0
        if not self.socket.poll(int(timeout * 1000)):
            return 0
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return taken
            taken += self.ingest(frames[0] if len(frames) == 1 else b"")

    def ingest(self, frame: bytes, now: float | None = None) -> bool:
        """Keep one STATS frame; anything else is counted (never raised). True if kept."""
        now = self.clock() if now is None else now
        try:
            kind, body = wire.decode(frame)
        except wire.WireError as exc:
            return self._reject("wire_errors", str(exc))
        if kind != wire.STATS:
            return self._reject("unexpected", f"{wire.KIND_NAMES[kind]} message on the stats channel")
        role, identity, counters = body
        with self._lock:
            self._keep(role, identity, self._figures(counters), now)
        return True

    def _reject(self, what: str, why: str) -> bool:
        with self._lock:
            self.counts[what] += 1
            self.last_error = why
        return False

    def _figures(self, counters: dict) -> dict:
        """The figures of one message, at most MAX_FIGURES; what is left out is counted."""
        figures, bad, too_deep = flatten_counted(counters)
        self.counts["too_deep"] += too_deep
        if len(figures) > MAX_FIGURES:
            bad += len(figures) - MAX_FIGURES
            figures = dict(sorted(figures.items())[:MAX_FIGURES])
        self.counts["bad_figures"] += bad
        return figures

    def _keep(self, role: str, identity: str, figures: dict, now: float) -> None:
        self.counts["messages"] += 1
        key = (role, identity)
        process = self.processes.get(key)
        if process is None:
            self._make_room()
            process = self.processes[key] = ProcessStats(role, identity)
        elif process.latest.figures.get("pid") != figures.get("pid"):
            process.history.clear()  # restarted: its counters began again
        elif "published_at" in figures and process.latest.figures.get("published_at") == figures["published_at"]:
            self.counts["duplicates"] += 1  # the same message again: nothing new to measure
            return
        process.history.append(Snapshot(figures, now))

    def _make_room(self) -> None:
        if len(self.processes) >= MAX_PROCESSES:
            oldest = min(self.processes, key=lambda k: self.processes[k].latest.arrived)
            del self.processes[oldest]
            self.counts["forgotten"] += 1

    # -- readers

    def age(self, process: ProcessStats, now: float) -> float:
        return max(0.0, now - process.latest.arrived)

    def rates(self, window: float | None = None) -> dict:
        """{(role, identity): {counter: per second}} between the latest snapshot and the
        one before it (or the oldest one within ``window`` seconds); 0.0 for a process heard
        from once and for a stale one (nothing heard, no rate claimed)."""
        with self._lock:
            now = self.clock()
            return {key: self._rates(p, window, now) for key, p in self.processes.items()}

    def _rates(self, process: ProcessStats, window: float | None, now: float) -> dict:
        latest = process.latest.figures
        counters = [name for name in latest if not is_gauge(name)]
        older = _baseline(process.history, window)
        if older is None or self.age(process, now) > self.stale_after:
            return dict.fromkeys(counters, 0.0)
        return rates_between(older, process.latest, counters)

    def totals_by_role(self) -> dict:
        """{role: {figure: sum over its processes' latest snapshots}}, stale ones included
        (their counters are what they did), plus ``processes`` and ``stale`` counts."""
        with self._lock:
            return self._totals(self.clock())

    def _totals(self, now: float) -> dict:
        totals: dict[str, dict] = {}
        for process in self.processes.values():
            role = totals.setdefault(process.role, {"processes": 0, "stale": 0})
            role["processes"] += 1
            role["stale"] += self.age(process, now) > self.stale_after
            for name, value in process.latest.figures.items():
                if name not in NOT_SUMMED:
                    role[name] = role.get(name, 0) + value
        return totals

    def loss_estimate(self) -> dict:
        with self._lock:
            return self._loss()

    def _loss(self) -> dict:
        def latest(role: str) -> list[dict]:
            return [p.latest.figures for p in self.processes.values() if p.role == role]
        return loss_estimate(latest("owner"), latest("capture"))

    def snapshot_json(self, window: float | None = None) -> dict:
        """Everything the dashboard shows, as plain JSON-able values."""
        with self._lock:
            now = self.clock()
            rows = [self._row(p, window, now) for p in
                    sorted(self.processes.values(), key=lambda p: (p.role, p.identity))]
            return {"time": time.time(), "endpoint": self.endpoint, "stale_after": self.stale_after,
                    "aggregator": {**self.counts, "refused_peers": self.refused()},
                    "last_error": self.last_error,
                    "processes": rows, "totals": self._totals(now),
                    "rates": _rates_by_role(rows), "loss": self._loss(),
                    "compare": compare_totals([p.latest.figures for p in self.processes.values()
                                               if p.role == "owner"])}

    def _row(self, process: ProcessStats, window: float | None, now: float) -> dict:
        figures = process.latest.figures
        rates = self._rates(process, window, now)
        host, shard = split_identity(process.identity)
        age = self.age(process, now)
        return {"role": process.role, "identity": process.identity, "host": host, "shard": shard,
                "pid": int(figures.get("pid", 0)), "age": round(age, 3),
                "stale": age > self.stale_after,
                "cpu_percent": 100.0 * (rates.get("cpu_user_s", 0.0) + rates.get("cpu_system_s", 0.0)),
                "counters": dict(figures), "rates": rates}


def _baseline(history: deque, window: float | None) -> Snapshot | None:
    """The snapshot rates are measured from: the one before the latest, or with ``window``
    the oldest one that arrived within ``window`` seconds of the latest."""
    if len(history) < 2:
        return None
    latest = history[-1].arrived
    if window is not None:
        for snapshot in history:
            if snapshot is not history[-1] and latest - snapshot.arrived <= window:
                return snapshot
    return history[-2]


def rates_between(older: Snapshot, newer: Snapshot, names) -> dict:
    """Per-second growth of each counter; the interval is the publisher's own (published_at)
    when both snapshots carry it, else the arrival times. A counter that went down was reset,
    so it grew by its whole new value (as Prometheus reads resets)."""
    interval = newer.figures.get("published_at", 0) - older.figures.get("published_at", 0)
    if interval <= 0:
        interval = newer.arrived - older.arrived
    if interval <= 0:
        return dict.fromkeys(names, 0.0)
    rates = {}
    for name in names:
        value = newer.figures[name]
        delta = value - older.figures.get(name, 0)
        rates[name] = (value if delta < 0 else delta) / interval
    return rates


def _rates_by_role(rows: list) -> dict:
    by_role: dict[str, dict] = {}
    for row in rows:
        role = by_role.setdefault(row["role"], {})
        for name, rate in row["rates"].items():
            role[name] = role.get(name, 0.0) + rate
    return by_role


# ---------------------------------------------------------------------- the loss estimate

def figure(figures: dict, name: str) -> int | float:
    """``name`` in one process's figures (or rates): top level, or under one group
    ("engine.NAME"), or else the sum of a group of that name ("raw_send_failures.EPERM");
    0 when the process does not publish it."""
    if name in figures:
        return figures[name]
    leaf = "." + name
    found = next((k for k in sorted(figures) if k.endswith(leaf)), None)
    if found is not None:
        return figures[found]
    group = name + "."
    return sum(v for k, v in figures.items() if k.startswith(group) or "." + group in k)


def outcomes(figures: dict, kind: str) -> int:
    """Sessions of one owner that ended ``kind`` ("closed" or "dropped"), summed over
    reasons: ``outcomes.KIND:REASON`` if published, else the engine's ``KIND.REASON``."""
    owner = [v for k, v in figures.items() if re.search(rf"(^|\.)outcomes\.{kind}:", k)]
    if owner:
        return sum(owner)
    return sum(v for k, v in figures.items() if re.search(rf"(^|\.){kind}\.[^.]+$", k))


def ratio(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def loss_estimate(owners: list[dict], captures: list[dict] = ()) -> dict:
    """The copier's own view of what it failed to replay, from the owners' latest counters.

    Content segments (the C tool's ``send content`` against ``clt cont``)::

        expected     = client_content_packets + segments_split - client_retransmits_skipped
        content_loss = max(0, expected - content_packets_sent) / expected     (0.0 if none)

    ``client_content_packets`` is counted by each copy's engine, so -n copies are already in
    both terms; split adds the extra pieces of segments cut to the MTU; client
    retransmissions are captured but not replayed. Sessions::

        session_drop_ratio = dropped / (closed + dropped)       over ended sessions

    Limits: these are segments, not requests (a request can span many segments, and the
    request loss users quote is counted in the servers' access logs); while copying, the
    segments still queued behind a response in progress count as missing, so the figure
    is exact only once sessions have ended; a client SYN retransmission is counted among the
    skipped retransmissions, so it lowers ``expected`` by one it never added; packets lost
    before an owner (capture queue full, kernel drops) are not in ``expected`` and are
    reported beside it as ``capture_dropped``.
    """
    def total(name: str) -> int | float:
        return sum(figure(f, name) for f in owners)

    expected = max(0, total("client_content_packets") + total("segments_split")
                   - total("client_retransmits_skipped"))
    sent = total("content_packets_sent")
    closed = sum(outcomes(f, "closed") for f in owners)
    dropped = sum(outcomes(f, "dropped") for f in owners)
    return {
        "content_loss": ratio(max(0, expected - sent), expected),
        "expected_content": expected,
        "content_packets_sent": sent,
        "client_content_packets": total("client_content_packets"),
        "requests_sent": total("requests_sent"),
        "responses_completed": total("responses_completed"),
        "sessions_closed": closed,
        "sessions_dropped": dropped,
        "session_drop_ratio": ratio(dropped, closed + dropped),
        "capture_dropped": sum(figure(f, "packets_dropped_full") + figure(f, "kernel_dropped")
                               for f in captures),
        "owners": len(owners),
    }


# ---------------------------------------------------------------------- the comparison

SIDES = ("online", "target")
PERCENTILES = ("p50", "p90", "p99")


def compare_totals(owners: list[dict]) -> dict | None:
    """The answer comparison over the owners that compare (None when none does).

    ``counts``: requests by verdict summed over owners, ``not_captured`` beside them (never
    judged); ``compared``: the judged ones, and ``shares`` of it per verdict, from the sums.
    ``latency``: per side, the samples summed and each percentile the highest among the
    owners (percentiles of separate owners do not add up: the slowest owner's stands for
    the copy, an upper bound of the whole's)."""
    comparing = [f for f in owners if any(name.startswith("compare.") for name in f)]
    if not comparing:
        return None
    counts = {v: sum(f.get(f"compare.counts.{v}", 0) for f in comparing) for v in VERDICTS}
    compared = sum(counts.values())
    latency = {}
    for side in SIDES:
        figures = {p: max((f[f"compare.latency.{side}.{p}"] for f in comparing
                           if f"compare.latency.{side}.{p}" in f), default=None) for p in PERCENTILES}
        figures["samples"] = sum(f.get(f"compare.latency.{side}.samples", 0) for f in comparing)
        latency[side] = figures
    return {"owners": len(comparing), "compared": compared, "counts": counts,
            "shares": {v: ratio(n, compared) for v, n in counts.items()},
            "not_captured": sum(f.get("compare.not_captured", 0) for f in comparing),
            "latency": latency}
