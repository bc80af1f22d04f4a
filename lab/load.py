"""Bounded HTTP/1.1 load from inside a lab host, with h2load (Debian's ``nghttp2-client``).

Each function runs one h2load inside a lab host (:meth:`Lab.run`), bounded in count (a fixed
number of requests) and in time (h2load's own connection timeouts, and a hard timeout after
which the process is killed and :class:`LoadError` raised), then parses h2load's summary.
Only URLs whose host is a lab address are accepted.

* :func:`short_connections`: one request per connection, connections opened at a fixed rate.
* :func:`keepalive`: a few connections, many requests on each, one at a time.
* :func:`keepalive_for`: like keepalive, for a fixed time instead of a fixed count, at a
  given request rate or as fast as the server answers.
* :func:`pipelined`: like keepalive, with up to ``depth`` requests in flight per connection.
* :func:`upload`: POSTs of a fixed body (its SHA-256 is in the result, to check what the server
  kept, e.g. with :meth:`Nginx.received_bodies`).
* :func:`curl_upload`: one POST of such a body with curl, which asks with ``Expect:
  100-continue`` before it sends the body (h2load never does).

h2load's rate mode opens each period's connections in one burst (``-r`` per
``--rate-period``); :func:`pacing` picks a short period so that the connections come evenly.
Measured in the lab from nginx's log: 200/s for 3 s gave 600 requests over 2.994 s (200.1/s,
200 +- 1 in each second); 37/s gave 37.1/s; at 500/s (one connection per 2 ms) h2load's
timer falls about 3 % behind (486/s).
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from .netns import Lab, LabError, check_lab_address

H2LOAD = "h2load"
INACTIVITY_TIMEOUT_S = 5  # a connection silent this long is given up (h2load -N)
HARD_TIMEOUT_SLACK_S = 10.0  # beyond the planned time, before h2load is killed
MAX_REQUESTS = 200_000
MAX_CONNECTIONS = 100_000
MAX_SECONDS = 120.0  # one timed load at most
MAX_BODY_BYTES = 128 << 20
PACING_TOLERANCE = 0.005  # the rate may be off by 0.5 % to get a smoother (smaller) burst


class LoadError(RuntimeError):
    """h2load could not run, overran its time, or printed no summary; the message says which."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class H2loadSummary:
    """The numbers of h2load's closing summary."""

    total: int
    started: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status: Mapping[str, int]  # "2xx" .. "5xx"
    duration_s: float
    requests_per_s: float
    traffic_bytes: int
    output: str  # h2load's whole stdout, for reports

    @property
    def all_succeeded(self) -> bool:
        return self.succeeded == self.total and self.failed == self.errored == self.timeout == 0


@dataclass(frozen=True, slots=True)
class ShortConnectionsResult:
    """What :func:`short_connections` asked of h2load, and its summary."""

    url: str
    rate: int  # connections per second asked for
    seconds: float
    connections: int  # = requests: one each
    per_period: int  # h2load --rate
    period_ms: int  # h2load --rate-period
    summary: H2loadSummary

    @property
    def paced_rate(self) -> float:
        """The rate h2load was told to keep (``per_period`` per ``period_ms``)."""
        return self.per_period * 1000 / self.period_ms


@dataclass(frozen=True, slots=True)
class KeepaliveResult:
    """What :func:`keepalive` asked of h2load, and its summary."""

    url: str
    connections: int
    requests_per_connection: int
    summary: H2loadSummary


@dataclass(frozen=True, slots=True)
class TimedKeepaliveResult:
    """What :func:`keepalive_for` asked of h2load, and its summary."""

    url: str
    connections: int
    seconds: float
    rate: int | None  # requests per second asked for; None: as fast as served
    summary: H2loadSummary


@dataclass(frozen=True, slots=True)
class PipelinedResult:
    """What :func:`pipelined` asked of h2load, and its summary."""

    url: str
    connections: int
    requests_per_connection: int
    depth: int
    summary: H2loadSummary


@dataclass(frozen=True, slots=True)
class CurlUploadResult:
    """What :func:`curl_upload` sent, the final status, and whether a 100 Continue came first."""

    url: str
    body_bytes: int
    body_sha256: str
    status: int
    continued: bool
    output: str  # curl's verbose trace, for messages


@dataclass(frozen=True, slots=True)
class UploadResult:
    """What :func:`upload` sent (the body's SHA-256 included), and h2load's summary."""

    url: str
    body_bytes: int
    count: int
    connections: int
    body_sha256: str
    summary: H2loadSummary


# --------------------------------------------------------------------------- the loads


def short_connections(lab: Lab, host: str, url: str, rate: int, seconds: float, *, server_closes: bool = False,
                      timeout_s: float | None = None) -> ShortConnectionsResult:
    """``rate`` new connections per second for ``seconds``, one GET on each, closed after it.

    h2load closes each connection after its answer; with ``server_closes`` the request says
    ``Connection: close`` so the server closes first.
    """
    _check_positive(rate=rate, seconds=seconds)
    connections = round(rate * seconds)
    _check_positive(connections=connections)
    _check_bounds(connections, connections)
    per_period, period_ms = pacing(rate)
    extra = ["--rate", str(per_period), "--rate-period", f"{period_ms}ms"]
    if server_closes:
        extra += ["-H", "Connection: close"]
    argv = _argv(url, connections, connections, None, extra)
    planned_s = connections / (per_period * 1000 / period_ms)
    summary = run_h2load(lab, host, argv, timeout_s or planned_s + HARD_TIMEOUT_SLACK_S)
    return ShortConnectionsResult(url, rate, seconds, connections, per_period, period_ms, summary)


def keepalive(lab: Lab, host: str, url: str, connections: int, requests_per_connection: int, *,
              timeout_s: float = 30.0) -> KeepaliveResult:
    """``connections`` concurrent connections, each sending ``requests_per_connection`` GETs in turn."""
    _check_positive(connections=connections, requests_per_connection=requests_per_connection)
    total = connections * requests_per_connection
    _check_bounds(total, connections)
    summary = run_h2load(lab, host, _argv(url, total, connections, timeout_s), timeout_s)
    return KeepaliveResult(url, connections, requests_per_connection, summary)


def keepalive_for(lab: Lab, host: str, url: str, connections: int, seconds: float,
                  rate: int | None = None) -> TimedKeepaliveResult:
    """``connections`` concurrent connections sending GETs in turn for ``seconds`` (h2load
    ``-D``): bounded in time. With ``rate`` the connections together send that many requests
    per second (h2load ``--rps`` per connection, so a multiple of ``connections``); without
    it, as many as the servers answer."""
    _check_positive(connections=connections, seconds=seconds)
    if seconds > MAX_SECONDS:
        raise ValueError(f"{seconds} s is above the lab's bound of {MAX_SECONDS} s per load: split it")
    _check_bounds(connections, connections)
    extra = ["-D", f"{seconds:g}"]
    if rate is not None:
        _check_positive(rate=rate)
        extra += ["--rps", str(max(1, round(rate / connections)))]
    argv = _argv(url, connections, connections, None, extra)
    summary = run_h2load(lab, host, argv, seconds + HARD_TIMEOUT_SLACK_S)
    return TimedKeepaliveResult(url, connections, seconds, rate, summary)


def pipelined(lab: Lab, host: str, url: str, connections: int, requests_per_connection: int, depth: int, *,
              timeout_s: float = 30.0) -> PipelinedResult:
    """Like :func:`keepalive`, with up to ``depth`` requests in flight on each connection."""
    _check_positive(connections=connections, requests_per_connection=requests_per_connection, depth=depth)
    total = connections * requests_per_connection
    _check_bounds(total, connections)
    argv = _argv(url, total, connections, timeout_s, ["-m", str(depth)])
    summary = run_h2load(lab, host, argv, timeout_s)
    return PipelinedResult(url, connections, requests_per_connection, depth, summary)


def upload(lab: Lab, host: str, url: str, body_bytes: int, count: int, *, connections: int = 1,
           seed: int = 0, timeout_s: float = 30.0) -> UploadResult:
    """``count`` POSTs of the same ``body_bytes``-byte body (:func:`body_of`) over ``connections``.

    h2load sends one body at a time per connection (no pipelining with a body).
    """
    _check_positive(body_bytes=body_bytes, count=count, connections=connections)
    if body_bytes > MAX_BODY_BYTES:
        raise ValueError(f"body_bytes {body_bytes} above the lab's limit {MAX_BODY_BYTES}")
    _check_bounds(count, connections)
    body = body_of(body_bytes, seed)
    with tempfile.TemporaryDirectory(prefix=f"tcl-load-{lab.tag}-") as scratch:
        path = Path(scratch) / "body.bin"
        path.write_bytes(body)
        path.chmod(0o644)
        argv = _argv(url, count, connections, timeout_s, ["-d", str(path)])
        summary = run_h2load(lab, host, argv, timeout_s)
    return UploadResult(url, body_bytes, count, connections, hashlib.sha256(body).hexdigest(), summary)


def curl_upload(lab: Lab, host: str, url: str, body_bytes: int, *, seed: int = 0,
                timeout_s: float = 60.0) -> CurlUploadResult:
    """One POST of a ``body_bytes``-byte body (:func:`body_of`) with ``Expect: 100-continue``:
    curl sends the headers, waits for the server's 100 Continue (1 s at most), then the body."""
    _check_positive(body_bytes=body_bytes, timeout_s=timeout_s)
    if body_bytes > MAX_BODY_BYTES:
        raise ValueError(f"body_bytes {body_bytes} above the lab's limit {MAX_BODY_BYTES}")
    check_lab_url(url)
    body = body_of(body_bytes, seed)
    with tempfile.TemporaryDirectory(prefix=f"tcl-load-{lab.tag}-") as scratch:
        path = Path(scratch) / "body.bin"
        path.write_bytes(body)
        path.chmod(0o644)
        argv = ["curl", "-sS", "-v", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", f"{timeout_s:g}",
                "-H", "Expect: 100-continue", "-H", "Content-Type: application/octet-stream",
                "--data-binary", f"@{path}", url]
        try:
            done = lab.run(host, argv, check=False, timeout=timeout_s + HARD_TIMEOUT_SLACK_S)
        except LabError as exc:
            raise LoadError(f"curl in {host} killed: {exc}") from None
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise LoadError(f"curl in {host} exited with {done.returncode}: {done.stderr.strip()[-1500:]}")
    continued = re.search(r"^< HTTP/1\.1 100 ", done.stderr, re.M) is not None
    return CurlUploadResult(url, body_bytes, hashlib.sha256(body).hexdigest(), int(done.stdout), continued,
                            done.stderr)


def body_of(size: int, seed: int = 0) -> bytes:
    """A reproducible pseudo-random body (the same ``size`` and ``seed`` give the same bytes)."""
    return random.Random(seed).randbytes(size)


# --------------------------------------------------------------------------- h2load


def pacing(rate: int) -> tuple[int, int]:
    """``(per_period, period_ms)`` for h2load's ``--rate``/``--rate-period`` at ``rate`` per second.

    h2load opens each period's connections at once, so the smallest burst that keeps the
    rate within ``PACING_TOLERANCE`` wins; if none does, the closest rate.
    """
    _check_positive(rate=rate)
    candidates = []
    for period_ms in range(1, 1001):
        per_period = max(1, round(rate * period_ms / 1000))
        error = abs(per_period * 1000 / period_ms - rate) / rate
        candidates.append((error, per_period, period_ms))
    close = [c for c in candidates if c[0] <= PACING_TOLERANCE]
    if close:
        _error, per_period, period_ms = min(close, key=lambda c: (c[1], c[0], c[2]))
    else:
        _error, per_period, period_ms = min(candidates)
    return per_period, period_ms


def run_h2load(lab: Lab, host: str, argv: Sequence[str], timeout_s: float) -> H2loadSummary:
    """Run h2load (``argv`` after the program name) in ``host``; kill it after ``timeout_s``."""
    if shutil.which(H2LOAD) is None:
        raise LoadError("h2load is not installed: apt-get install nghttp2-client")
    try:
        done = lab.run(host, [H2LOAD, *argv], check=False, timeout=timeout_s)
    except LabError as exc:
        raise LoadError(f"h2load in {host} killed: {exc}") from None
    try:
        return parse_h2load_summary(done.stdout)
    except ValueError as exc:
        raise LoadError(f"h2load in {host} exited with {done.returncode} and {exc}: "
                        f"{(done.stderr or done.stdout).strip()[-1500:]}") from None


_REQUESTS_RE = re.compile(
    r"^requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout", re.M)
_STATUS_RE = re.compile(r"^status codes: (.*)$", re.M)
_FINISHED_RE = re.compile(r"^finished in (?P<value>[\d.]+)(?P<unit>us|ms|s), (?P<rps>[\d.]+) req/s", re.M)
_TRAFFIC_RE = re.compile(r"^traffic: \S+ \((?P<bytes>\d+)\) total", re.M)
_UNIT_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_h2load_summary(output: str) -> H2loadSummary:
    """The summary numbers of h2load's stdout; ValueError if its ``requests:`` line is missing."""
    requests = _REQUESTS_RE.search(output)
    if requests is None:
        raise ValueError("no 'requests:' summary line in h2load's output")
    counts = {key: int(value) for key, value in requests.groupdict().items()}
    status_line = _STATUS_RE.search(output)
    status = {kind: int(n) for n, kind in re.findall(r"(\d+) (\dxx)", status_line[1])} if status_line else {}
    finished = _FINISHED_RE.search(output)
    duration_s = float(finished["value"]) * _UNIT_S[finished["unit"]] if finished else 0.0
    traffic = _TRAFFIC_RE.search(output)
    return H2loadSummary(
        **counts,
        status=MappingProxyType(status),
        duration_s=duration_s,
        requests_per_s=float(finished["rps"]) if finished else 0.0,
        traffic_bytes=int(traffic["bytes"]) if traffic else 0,
        output=output,
    )


def _argv(url: str, requests: int, connections: int, hard_timeout_s: float | None,
          extra: Sequence[str] = ()) -> list[str]:
    """h2load's arguments: HTTP/1.1, one thread, bounded count and connection lifetimes.

    With ``hard_timeout_s``, connections are given up a little before the kill, so h2load
    still reports what it did.
    """
    check_lab_url(url)
    argv = ["--h1", "-n", str(requests), "-c", str(connections), "-t", "1", "-N", f"{INACTIVITY_TIMEOUT_S}s"]
    if hard_timeout_s is not None:
        argv += ["-T", f"{max(1, int(hard_timeout_s * 0.9))}s"]
    return [*argv, *extra, url]


def check_lab_url(url: str) -> None:
    """Raise ValueError unless ``url`` is http:// to a lab address (a literal IP, no names)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"url {url!r}: only http:// is supported (h2load --h1 in the lab)")
    try:
        ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        raise ValueError(f"url {url!r}: use a literal lab IP address as the host, not a name") from None
    check_lab_address(parts.hostname or "", what=f"host of {url!r}")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")


def _check_bounds(requests: int, connections: int) -> None:
    if requests > MAX_REQUESTS:
        raise ValueError(f"{requests} requests is above the lab's bound {MAX_REQUESTS}: split the load")
    if connections > MAX_CONNECTIONS:
        raise ValueError(f"{connections} connections is above the lab's bound {MAX_CONNECTIONS}")
    if connections > requests:
        raise ValueError(f"{connections} connections for {requests} requests: each connection needs one")
