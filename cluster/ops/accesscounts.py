"""Counting over parsed access-log entries: requests per kind, status, connection and
second, and the share lost on the way from the online server to the target.

Pure functions over the dicts a JSON access log's lines parse to. The run report reads
them (``cluster/ops/report.py``), and so do the lab's accounting (``lab/accesslog.py``)
and the end-to-end tests. Fields used: ``request_method``, ``uri``, ``status``, ``time``,
``connection`` (nginx's connection serial).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

Entry = Mapping[str, Any]


def by_request(entries: Iterable[Entry]) -> Counter[tuple[str, str]]:
    """Requests per ``(method, uri)``."""
    return Counter((e["request_method"], e["uri"]) for e in entries)


def by_status(entries: Iterable[Entry]) -> Counter[int]:
    """Requests per HTTP status."""
    return Counter(e["status"] for e in entries)


def by_connection(entries: Iterable[Entry]) -> Counter[int]:
    """Requests per connection (nginx's connection serial)."""
    return Counter(e["connection"] for e in entries)


def by_second(entries: Iterable[Entry], origin: float | None = None) -> dict[int, int]:
    """Requests per whole second since ``origin`` (default: the first request's time).

    Every second from the first to the last is present, with 0 where nothing was logged, so
    a gap in the load shows.
    """
    times = [e["time"] for e in entries]
    if not times:
        return {}
    start = min(times) if origin is None else origin
    counts = Counter(math.floor(t - start) for t in times)
    return {second: counts.get(second, 0) for second in range(min(counts), max(counts) + 1)}


def loss_ratio(online_requests: int, target_requests: int, copies: int = 1) -> float:
    """The share of expected target requests that did not arrive.

    Expected = ``online_requests * copies``; the ratio is (expected - target) / expected, 0
    when nothing was expected, negative when the target saw more than expected.
    """
    if online_requests < 0 or target_requests < 0:
        raise ValueError(f"request counts cannot be negative: online {online_requests}, target {target_requests}")
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    expected = online_requests * copies
    if expected == 0:
        return 0.0
    return (expected - target_requests) / expected
