"""What the fault tests share: a steady client load with a unique URI per request, the
accounting of requests lost inside and outside a fault's window, and the target's TCP
connections as ``ss`` lists them.

The load runs in the client host (``Lab.spawn``): keep-alive connections that each send a
few paced GETs and then close (so connections begin and end all through a run, as real
clients' do), beside a stream of one-request connections. Every request names itself
(``?f=TAG&k=...``), so the online server's and the target's access logs pair up request by
request, whatever connection a copy used.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass

from tcpcopy.lab.netns import TARGET, Lab

TIMEOUT_S = 10.0
HALF_OPEN_STATES = ("ESTAB", "CLOSE-WAIT")


@dataclass(frozen=True)
class Traffic:
    """What :func:`steady_traffic` sent: per request its URI, status (0: failed) and start."""

    requests: tuple[tuple[str, int, float], ...]

    @property
    def failures(self) -> list[tuple[str, int, float]]:
        return [r for r in self.requests if r[1] != 200]


def steady_traffic(address: str, port: int, tag: str, seconds: float, *, keepalive: int = 8,
                   rate_per_connection: float = 10.0, requests_per_connection: int = 10,
                   short_rate: float = 40.0) -> Traffic:
    """For ``seconds``: ``keepalive`` threads each keeping one connection at a time that sends
    ``requests_per_connection`` GETs at ``rate_per_connection`` a second, then closes and
    opens the next; and one thread opening ``short_rate`` one-GET connections a second.
    Bounded: about keepalive x rate + short_rate requests a second, every socket timed out."""
    deadline = time.monotonic() + seconds
    done: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def record(uri: str, status: int, started: float) -> None:
        with lock:
            done.append((uri, status, started))

    def keepalive_loop(worker: int) -> None:
        serial = 0
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection(address, port, timeout=TIMEOUT_S)
            try:
                for n in range(requests_per_connection):
                    if time.monotonic() >= deadline:
                        break
                    uri = f"/index.html?f={tag}&k={worker}-{serial}-{n}"
                    record(uri, _get(conn, uri), time.time())
                    time.sleep(1.0 / rate_per_connection)
            finally:
                conn.close()
            serial += 1

    def short_loop() -> None:
        n = 0
        while time.monotonic() < deadline:
            uri = f"/index.html?f={tag}&s={n}"
            conn = http.client.HTTPConnection(address, port, timeout=TIMEOUT_S)
            try:
                record(uri, _get(conn, uri), time.time())
            finally:
                conn.close()
            n += 1
            time.sleep(1.0 / short_rate)

    threads = [threading.Thread(target=keepalive_loop, args=(w,)) for w in range(keepalive)]
    threads.append(threading.Thread(target=short_loop))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 2 * TIMEOUT_S)
    return Traffic(tuple(done))


def _get(conn: http.client.HTTPConnection, uri: str) -> int:
    try:
        conn.request("GET", uri)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        conn.close()
        return 0


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class Losses:
    """Online requests the target never logged, split by whether they began in the fault's
    window ``[start, end]`` (wall-clock seconds)."""

    online: int
    copied: int
    during: tuple[dict, ...]
    outside: tuple[dict, ...]
    start: float
    end: float

    def line(self, fault: str) -> str:
        return (f"{fault}: {len(self.during)} requests lost during the fault "
                f"({self.end - self.start:.1f} s window), {len(self.outside)} outside it; "
                f"{self.copied} of {self.online} copied")


def losses(online: list[dict], target: list[dict], start: float, end: float) -> Losses:
    """Pair requests by URI (each is unique in a :func:`steady_traffic` run); a request
    began at its log time minus its duration."""
    copied = Counter(e["request_uri"] for e in target)
    during, outside = [], []
    for entry in online:
        if copied[entry["request_uri"]] > 0:
            copied[entry["request_uri"]] -= 1
            continue
        began = entry["time"] - entry["request_time"]
        (during if start <= began <= end else outside).append(entry)
    return Losses(len(online), len(online) - len(during) - len(outside), tuple(during), tuple(outside), start, end)


def last_request_before(online: list[dict], moment: float) -> float:
    """When the last request that began before ``moment`` began (the fault then caught the
    ones in flight)."""
    return max((e["time"] - e["request_time"] for e in online if e["time"] - e["request_time"] < moment),
               default=moment)


# --------------------------------------------------------------------------- the target's sockets


def target_connections(lab: Lab, port: int) -> Counter:
    """The target's TCP connections on ``port`` (not the listener) by state, as ``ss`` says."""
    out = lab.run(TARGET, ["ss", "-Htan"]).stdout
    states: Counter = Counter()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] != "LISTEN" and fields[3].rsplit(":", 1)[-1] == str(port):
            states[fields[0]] += 1
    return states


def half_open(states: Counter) -> int:
    return sum(states[s] for s in HALF_OPEN_STATES)


def wait_half_open_gone(lab: Lab, port: int, timeout: float) -> Counter:
    """Poll the target's connections until none is half open or ``timeout`` passes; the
    last states seen."""
    deadline = time.monotonic() + timeout
    while True:
        states = target_connections(lab, port)
        if not half_open(states) or time.monotonic() >= deadline:
            return states
        time.sleep(0.5)

