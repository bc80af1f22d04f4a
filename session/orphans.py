"""Connections a dead owner left open on the target, reset by its replacement (pure).

When a session owner is killed, the connections it replayed stay open on the target: no FIN
or RST will ever come for them, so the target holds them ESTABLISHED (or CLOSE-WAIT) until
its own timeouts, minutes later, with their memory, file descriptors and per-client limits.
intercept knows the dead owner's routes and hands them to the owner that replaced it (same
identity, ``wire.HANDOVER``); this module resets them.

The replacement knows the endpoints but not their sequence numbers, and a RST is taken only
at the exact next sequence number the target expects (RFC 5961 §3.2). So each orphan is first
probed with a pure ACK whose sequence number lies outside the target's window: the target
must answer it with an ACK carrying its own next expected number (RFC 9293 §3.10.7.4), and
that answer, routed back by intercept, is reset at exactly that number. A target that holds
no such connection answers the probe with a RST: nothing to do. A probe that gets no answer
is repeated ``probes`` times, ``interval`` apart (Linux rate-limits such answers to one per
half second per connection), then given up, counted.

An endpoint a live session of the new owner takes over (the client went on talking on that
connection) is left to that session: its SYN meets the old connection's challenge ACK, which
the engine resets the same way before it reconnects.

No socket, no clock: time is passed in, packets are collected with ``take_packets`` and the
endpoints whose route can go with ``take_done``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from tcpcopy.capture import packet as pk

Endpoint = tuple[bytes, int, bytes, int]   # (client_ip, client_port, target_ip, target_port)

DEFAULT_MAX_ORPHANS = 262_144   # as many routes as intercept lets one owner hold
PROBE_WINDOW = 0xFFFF


@dataclass(slots=True)
class OrphanStats:
    adopted: int = 0          # endpoints handed over to be reset
    refused: int = 0          # not adopted: the bound was reached
    probes_sent: int = 0
    reset: int = 0            # RST sent at the target's own sequence number
    already_closed: int = 0   # the target answered the probe with a RST
    taken_by_session: int = 0 # a live session of this owner took the endpoint over
    unanswered: int = 0       # probes got no answer: given up


class OrphanReaper:
    def __init__(self, max_orphans: int = DEFAULT_MAX_ORPHANS, probes: int = 3, interval: float = 1.0,
                 random32: Callable[[], int] | None = None):
        """``random32``: 32-bit random numbers for the probes (the owner passes its own
        generator; by default a fixed sequence, for tests)."""
        self.max_orphans = max_orphans
        self.probes = probes
        self.interval = interval
        self.stats = OrphanStats()
        self._random32 = random32 or _Sequence()
        self._orphans: dict[Endpoint, int] = {}        # endpoint -> probes sent
        self._due: list[tuple[float, Endpoint]] = []    # (when, endpoint) heap
        self._packets: list[bytes] = []
        self._done: list[Endpoint] = []

    def __len__(self) -> int:
        return len(self._orphans)

    def __contains__(self, endpoint: Endpoint) -> bool:
        return endpoint in self._orphans

    def adopt(self, endpoints, now: float) -> None:
        """Reset these endpoints' connections on the target, starting at ``now``."""
        for endpoint in endpoints:
            if endpoint in self._orphans:
                continue
            if len(self._orphans) >= self.max_orphans:
                self.stats.refused += 1
                continue
            self._orphans[endpoint] = 0
            heapq.heappush(self._due, (now, endpoint))
            self.stats.adopted += 1

    def taken_by_session(self, endpoint: Endpoint) -> None:
        """A session of this owner replays on ``endpoint`` now: it deals with the old one."""
        if self._orphans.pop(endpoint, None) is not None:
            self.stats.taken_by_session += 1

    def answer(self, pkt: pk.Packet) -> bool:
        """The target's answer for an endpoint no session holds; True if it was an orphan's."""
        endpoint = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        if endpoint not in self._orphans:
            return False
        if pkt.flags & pk.RST:
            self.stats.already_closed += 1
        elif pkt.flags & pk.ACK:
            self._packets.append(_segment(endpoint, pkt.ack, pk.RST, ack=0).to_bytes())
            self.stats.reset += 1
        else:
            return True   # neither: wait for the answer to a probe
        del self._orphans[endpoint]
        self._done.append(endpoint)
        return True

    def run_timers(self, now: float) -> None:
        while self._due and self._due[0][0] <= now:
            _when, endpoint = heapq.heappop(self._due)
            sent = self._orphans.get(endpoint)
            if sent is None:
                continue   # reset, closed or taken over meanwhile
            if sent >= self.probes:
                del self._orphans[endpoint]
                self._done.append(endpoint)
                self.stats.unanswered += 1
                continue
            self._orphans[endpoint] = sent + 1
            self._packets.append(self._probe(endpoint).to_bytes())
            self.stats.probes_sent += 1
            heapq.heappush(self._due, (now + self.interval, endpoint))

    def _probe(self, endpoint: Endpoint) -> pk.Packet:
        """A pure ACK at a random sequence number: outside the target's window but for a
        chance of 2^-16, and then the next probe tries another."""
        return _segment(endpoint, self._random32(), pk.ACK, ack=self._random32())

    def next_deadline(self) -> float | None:
        return self._due[0][0] if self._due else None

    def take_packets(self) -> list[bytes]:
        packets, self._packets = self._packets, []
        return packets

    def take_done(self) -> list[Endpoint]:
        """Endpoints finished with (reset, closed or given up): their routes can go."""
        done, self._done = self._done, []
        return done


class _Sequence:
    """Numbers that look random enough for a probe (a 32-bit LCG), with no import of random."""

    def __init__(self, seed: int = 0x2545F491):
        self._state = seed

    def __call__(self) -> int:
        self._state = (self._state * 1664525 + 1013904223) & 0xFFFFFFFF
        return self._state


def _segment(endpoint: Endpoint, seq: int, flags: int, ack: int) -> pk.Packet:
    client_ip, client_port, target_ip, target_port = endpoint
    return pk.build(client_ip, target_ip, client_port, target_port, seq, ack, flags, PROBE_WINDOW)
