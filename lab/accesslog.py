"""Accounting over parsed access-log entries (the dicts :meth:`Nginx.access_log_entries` returns).

Pure functions, so end-to-end tests can state outcomes in the servers' own terms: how many
requests of each kind arrived, on which connections, in what order, how many were lost on
the way from the online server to the target, and whether each client connection's requests
reached the target in the same sequence.

Fields used: ``request_method``, ``uri``, ``request_uri``, ``status``, ``time``,
``remote_addr``, ``remote_port``, ``connection`` (nginx's connection serial) and
``connection_requests`` (the request's number on its connection, from 1).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tcpcopy.cluster.ops.accesscounts import by_connection, by_request, by_second, by_status, loss_ratio

Entry = Mapping[str, Any]
Request = tuple[str, str]  # (method, request_uri)
Peer = tuple[str, int]  # (remote_addr, remote_port)

# The counts are the run report's too, so they live beside it; the lab names them here.
__all__ = ["by_request", "by_status", "by_connection", "by_second", "loss_ratio", "OrderFault",
           "order_faults", "ClientConnection", "client_connections", "SequenceMatch",
           "match_by_peer", "match_by_sequence"]


# --------------------------------------------------------------------------- order on a connection


@dataclass(frozen=True, slots=True)
class OrderFault:
    """On ``connection``, the request logged at ``position`` (0-based, in that connection's log
    order) had number ``got`` where ``expected`` was due."""

    connection: int
    position: int
    expected: int
    got: int


def order_faults(entries: Iterable[Entry], *, from_first: bool = True) -> list[OrderFault]:
    """Connections whose requests are not numbered 1, 2, 3... in log order.

    nginx handles a connection's requests one after another and logs each when it ends, so
    ``connection_requests`` must rise by one along the log. With ``from_first`` false (a
    slice of a log), a connection may start at any number.
    """
    faults = []
    last: dict[int, int] = {}
    position: Counter[int] = Counter()
    for entry in entries:
        connection, number = entry["connection"], entry["connection_requests"]
        if connection in last:
            expected = last[connection] + 1
        else:
            expected = 1 if from_first else number
        if number != expected:
            faults.append(OrderFault(connection, position[connection], expected, number))
        last[connection] = number
        position[connection] += 1
    return faults


# --------------------------------------------------------------------------- online vs target


@dataclass(frozen=True, slots=True)
class ClientConnection:
    """One client connection as a server logged it: its peer, nginx's serial, its requests."""

    peer: Peer
    serial: int
    requests: tuple[Request, ...]


def client_connections(entries: Iterable[Entry]) -> list[ClientConnection]:
    """The connections of ``entries``, in order of their first request, requests in log order."""
    peers: dict[int, Peer] = {}
    requests: dict[int, list[Request]] = defaultdict(list)
    for entry in entries:
        serial = entry["connection"]
        peers.setdefault(serial, (entry["remote_addr"], entry["remote_port"]))
        requests[serial].append((entry["request_method"], entry["request_uri"]))
    return [ClientConnection(peer, serial, tuple(requests[serial])) for serial, peer in peers.items()]


@dataclass(frozen=True, slots=True)
class SequenceMatch:
    """How the target's client connections compare with the online server's.

    ``matched``: target connections whose request sequence equals their online counterpart's;
    ``differing``: (online, target) pairs whose sequences differ; ``missing``: online
    connections without a target counterpart; ``unexpected``: target connections without an
    online counterpart.
    """

    matched: int
    differing: tuple[tuple[ClientConnection, ClientConnection], ...] = ()
    missing: tuple[ClientConnection, ...] = ()
    unexpected: tuple[ClientConnection, ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.differing or self.missing or self.unexpected)


def match_by_peer(online: Iterable[Entry], target: Iterable[Entry],
                  peer_map: Callable[[Peer], Peer] | None = None) -> SequenceMatch:
    """Pair connections by client address and port (mapped by ``peer_map`` when the copier
    rewrites them); the k-th connection of a peer pairs with the k-th of its counterpart, so a
    reused port does not confuse two connections."""
    mapping = peer_map or (lambda peer: peer)
    waiting: dict[Peer, list[ClientConnection]] = defaultdict(list)
    for connection in client_connections(target):
        waiting[connection.peer].append(connection)
    matched, differing, missing = 0, [], []
    for connection in client_connections(online):
        candidates = waiting.get(mapping(connection.peer))
        if not candidates:
            missing.append(connection)
            continue
        counterpart = candidates.pop(0)
        if counterpart.requests == connection.requests:
            matched += 1
        else:
            differing.append((connection, counterpart))
    unexpected = [c for left in waiting.values() for c in left]
    return SequenceMatch(matched, tuple(differing), tuple(missing), tuple(unexpected))


def match_by_sequence(online: Iterable[Entry], target: Iterable[Entry], copies: int = 1) -> SequenceMatch:
    """Compare the multisets of per-connection request sequences, ignoring peers.

    For when addresses or ports were rewritten beyond mapping (-c pools, -n copies): each
    online connection's sequence is expected ``copies`` times among the target's
    connections. Pairs are unknown here, so nothing is reported as ``differing``; an online
    connection is listed in ``missing`` once per copy that did not arrive.
    """
    if copies < 1:
        raise ValueError(f"copies must be at least 1, got {copies}")
    expected: dict[tuple[Request, ...], list[ClientConnection]] = defaultdict(list)
    for connection in client_connections(online):
        expected[connection.requests].extend([connection] * copies)
    matched, unexpected = 0, []
    for connection in client_connections(target):
        owed = expected.get(connection.requests)
        if owed:
            owed.pop()
            matched += 1
        else:
            unexpected.append(connection)
    missing = tuple(c for owed in expected.values() for c in owed)
    return SequenceMatch(matched, (), missing, tuple(unexpected))
