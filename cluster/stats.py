"""The stats channel's publishing side: every process publishes its counters.

Each process owns a ``StatsPublisher``: a ZeroMQ PUB socket that *connects* to the
aggregator's endpoint and, at most every ``every`` seconds (one by default), sends one STATS
message (``wire.encode_stats(role, identity, figures)``). The figures are the process's own
counters, flattened to ``name -> number`` ("outcomes.closed:completed"), plus its resource
figures from psutil and a monotonic ``published_at``. The socket keeps a few messages at most and lingers
for none, so a missing aggregator costs nothing: stats are the one channel allowed to lose.

The reading side (the aggregator, the hub, top, the exporter, the report) is an operator
tool: ``cluster/ops/aggregator.py``.
"""

from __future__ import annotations

import math
import time

import psutil
import zmq

from tcpcopy.cluster import wire
from tcpcopy.cluster.curve import ClientKeys, connect_with_keys

PUBLISH_EVERY = 1.0
PUB_HWM = 4              # messages a publisher queues while the aggregator is away
MAX_DEPTH = 8            # levels of groups flattened; deeper ones are counted as too_deep


def number(value) -> int | float | None:
    """``value`` as a finite int or float (bools count as 0/1), else None."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def flatten(counters: dict, prefix: str = "") -> dict:
    """Nested dicts joined with dots, ``{"outcomes": {"closed:completed": 3}}`` ->
    ``{"outcomes.closed:completed": 3}``; values that are not numbers (a stop reason, a
    list) and groups nested deeper than MAX_DEPTH are left out."""
    return flatten_counted(counters, prefix)[0]


def flatten_counted(counters: dict, prefix: str = "") -> tuple[dict, int, int]:
    """(figures, values left out as not numbers, groups left out as deeper than MAX_DEPTH).

    Walks with its own stack, never recursing, so a message nested as deep as msgpack
    allows costs a count, not a RecursionError; figures keep their depth-first order."""
    flat: dict = {}
    not_numbers = too_deep = 0
    stack = [(prefix, iter(counters.items()))]
    while stack:
        group_prefix, items = stack[-1]
        for key, value in items:
            name = f"{group_prefix}{key}"
            if isinstance(value, dict):
                if len(stack) >= MAX_DEPTH:
                    too_deep += 1
                    continue
                stack.append((name + ".", iter(value.items())))
                break
            if (figure := number(value)) is not None:
                flat[name] = figure
            else:
                not_numbers += 1
        else:
            stack.pop()
    return flat, not_numbers, too_deep


def process_figures(process: psutil.Process) -> dict:
    """CPU seconds, resident memory, threads and open descriptors of ``process``."""
    figures = {"pid": process.pid}
    try:
        with process.oneshot():
            cpu = process.cpu_times()
            figures.update(cpu_user_s=cpu.user, cpu_system_s=cpu.system,
                           rss_bytes=process.memory_info().rss, num_threads=process.num_threads(),
                           num_fds=process.num_fds())
    except (psutil.Error, AttributeError):
        pass  # num_fds does not exist everywhere; what was read is still sent
    return figures


# ---------------------------------------------------------------------- publishing

class StatsPublisher:
    """One process's side of the stats channel."""

    def __init__(self, endpoint: str, role: str, identity: str, every: float = PUBLISH_EVERY,
                 context: zmq.Context | None = None, clock=time.monotonic, keys: ClientKeys | None = None):
        if role not in wire.ROLES:
            raise ValueError(f"stats role {role!r} is not one of {', '.join(wire.ROLES)}")
        self.role, self.identity, self.every = role, identity, every
        self.clock = clock
        self.sent = 0
        self.unsent = 0        # the aggregator was away and the queue full, or unencodable
        self._last: float | None = None
        self._process = psutil.Process()
        self.socket = (context or zmq.Context.instance()).socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, PUB_HWM)
        self.socket.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            connect_with_keys(self.socket, keys)
        self.socket.connect(endpoint)

    def maybe_publish(self, now: float, counters_fn) -> bool:
        """Publish ``counters_fn()`` if ``every`` seconds have passed since the last time."""
        if self._last is not None and now - self._last < self.every:
            return False
        self._last = now
        self.publish(counters_fn())
        return True

    def publish(self, counters: dict) -> None:
        figures = {**flatten(counters), **process_figures(self._process),
                   "published_at": self.clock()}
        try:
            self.socket.send(wire.encode_stats(self.role, self.identity, figures), zmq.NOBLOCK)
            self.sent += 1
        except (zmq.Again, ValueError, OverflowError, TypeError):
            self.unsent += 1

    def close(self) -> None:
        self.socket.close(linger=0)
