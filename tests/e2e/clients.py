"""Client programs h2load cannot play, run inside the lab's client host (``Lab.spawn``/``call``).

Each function runs in a forked child that has entered the client namespace; its return value
travels back pickled. Every one is bounded in time (socket timeouts, bounded waits).
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Sequence
from dataclasses import dataclass

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class HeldConnection:
    """What :func:`held_keepalive` did: its local port and the status of each request."""

    local_port: int
    before: tuple[int, ...]
    after: tuple[int, ...]


def _get(conn: http.client.HTTPConnection, path: str) -> int:
    conn.request("GET", path, headers={"User-Agent": "tcpcopy-e2e-held"})
    response = conn.getresponse()
    response.read()
    if response.will_close:
        raise RuntimeError(f"the server closed the keep-alive connection after {path}")
    return response.status


def held_keepalive(address: str, port: int, before: Sequence[str], after: Sequence[str],
                   go, wait_s: float = 30.0) -> HeldConnection:
    """One keep-alive connection: GET each of ``before``, wait for ``go`` (an Event), then GET
    each of ``after`` on the same connection, then close it."""
    conn = http.client.HTTPConnection(address, port, timeout=TIMEOUT_S)
    try:
        conn.connect()
        local_port = conn.sock.getsockname()[1]
        statuses_before = tuple(_get(conn, path) for path in before)
        if not go.wait(wait_s):
            raise RuntimeError(f"not told to go on within {wait_s} s")
        statuses_after = tuple(_get(conn, path) for path in after)
    finally:
        conn.close()
    return HeldConnection(local_port, statuses_before, statuses_after)


def greeter_sessions(address: str, port: int, connections: int, lines: int) -> list[list[str]]:
    """``connections`` greeter conversations, one after another: read the greeting, send
    ``lines`` lines (each answered before the next), then QUIT. Returns, per connection, the
    lines sent (QUIT included). Raises if an answer is not the one the protocol prescribes."""
    sent_all = []
    for c in range(connections):
        sent = [f"LINE c{c:03d} n{n:02d} {'x' * (c % 7)}" for n in range(1, lines + 1)] + ["QUIT"]
        with socket.create_connection((address, port), timeout=TIMEOUT_S) as sock:
            reader = sock.makefile("rb")
            greeting = reader.readline()
            if not greeting.startswith(b"220 "):
                raise RuntimeError(f"connection {c}: greeting {greeting!r}")
            for n, line in enumerate(sent, 1):
                sock.sendall(line.encode() + b"\r\n")
                answer = reader.readline()
                expected = b"221 bye\r\n" if line == "QUIT" else f"250 {n} {line}\r\n".encode()
                if answer != expected:
                    raise RuntimeError(f"connection {c}: sent {line!r}, got {answer!r}, expected {expected!r}")
            reader.close()
        sent_all.append(sent)
    return sent_all


def http_gets(address: str, port: int, paths: Sequence[str]) -> list[int]:
    """One new keep-alive connection carrying a GET of each of ``paths``; their statuses."""
    conn = http.client.HTTPConnection(address, port, timeout=TIMEOUT_S)
    try:
        return [_get(conn, path) for path in paths]
    finally:
        conn.close()
