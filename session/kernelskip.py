"""Which skipped connections an owner asks its capture workers to drop in the kernel.

An owner skips the rest of every connection whose session it shed or lost (session/table.py).
Skipping in the owner still costs the whole capture path: every packet of such a connection is
read from the ring, batched, sent over ZeroMQ and looked up, and under overload most of the
input belongs to shed sessions. The capture worker's kernel filter can drop them before any
of that (``cluster.shard.skip_flows_filter``), all but their SYN, FIN and RST, which still
reach the owner and end the skipping as they do now.

A classic BPF program is bounded (4,096 instructions) and libpcap's optimizer takes time
that grows with the square of its length, so the kernel gets the busiest connections only,
at most ``capacity`` of them, chosen again every ``every`` seconds: a connection the owner
skipped at least ``min_packets`` times in that period may take a free place. A connection
leaves the kernel filter when the owner stops skipping it (its FIN, RST or a new SYN came
through, or the skip list forgot it), or, once it has been there ``hold`` seconds, to make
room for a busier one (a connection that went quiet without a FIN would otherwise keep its
place for ever). Pure: the owner passes the time in.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Container


@dataclass(frozen=True, slots=True)
class KernelSkipConfig:
    capacity: int = 128        # connections in the kernel filter (about 600 BPF instructions)
    every: float = 1.0         # seconds between choices (a filter change costs a compile)
    min_packets: int = 8       # packets skipped in one period that earn a place
    hold: float = 30.0         # seconds after which a place may go to a busier connection
    resend_every: float = 5.0  # the list again, unchanged, so a lost message heals


class KernelSkips:
    """The connections currently handed to the kernel filter, and when each went there."""

    def __init__(self, config: KernelSkipConfig = KernelSkipConfig()):
        self.config = config
        self.chosen: dict[bytes, float] = {}
        self.changes = 0          # lists announced because they changed
        self._next_choice = 0.0
        self._last_sent: float | None = None
        self._admitted = False

    def admit(self, flow_keys: list[bytes], now: float) -> None:
        """Sessions were just shed: their connections were live and busy, and every packet of
        theirs still captured is wasted work, so they take free places at once, without
        waiting for their packets to be counted, and the list goes out on the next update."""
        for key in flow_keys:
            if len(self.chosen) >= self.config.capacity:
                break
            if key not in self.chosen:
                self.chosen[key] = now
                self._admitted = True
        if self._admitted:
            self._next_choice = min(self._next_choice, now)

    def due(self, now: float) -> bool:
        """Whether ``update`` would choose now (the caller counts hits until then)."""
        return now >= self._next_choice

    def update(self, skipping: Container[bytes], hits: dict[bytes, int], now: float) -> list[bytes] | None:
        """The list to announce to the capture workers now, or None (not due, no change).

        ``skipping``: the flow keys the owner skips; ``hits``: packets skipped per key since
        the last call (the caller starts a new count after each call)."""
        if now < self._next_choice:
            return None
        self._next_choice = now + self.config.every
        changed, self._admitted = self._admitted, False
        changed |= self._release_ended(skipping)
        changed |= self._admit_busiest(skipping, hits, now)
        resend_due = self._last_sent is not None and now - self._last_sent >= self.config.resend_every
        if not (changed or (self.chosen and resend_due)):
            return None
        if changed:
            self.changes += 1
        self._last_sent = now
        return list(self.chosen)

    def current(self) -> list[bytes]:
        """The list as it stands (for a capture worker that just connected)."""
        return list(self.chosen)

    def _release_ended(self, skipping: Container[bytes]) -> bool:
        ended = [key for key in self.chosen if key not in skipping]
        for key in ended:
            del self.chosen[key]
        return bool(ended)

    def _admit_busiest(self, skipping: Container[bytes], hits: dict[bytes, int], now: float) -> bool:
        floor = self.config.min_packets
        waiting = [(count, key) for key, count in hits.items()
                   if count >= floor and key not in self.chosen and key in skipping]
        if not waiting:
            return False
        room = self.config.capacity - len(self.chosen)
        if room < len(waiting):
            room += self._release_oldest(len(waiting) - room, now)
        for _count, key in heapq.nlargest(room, waiting):
            self.chosen[key] = now
        return room > 0

    def _release_oldest(self, wanted: int, now: float) -> int:
        """Free up to ``wanted`` places held at least ``hold`` seconds, the oldest first."""
        expired = [key for key, since in self.chosen.items() if now - since >= self.config.hold]
        for key in expired[:wanted]:
            del self.chosen[key]
        return min(wanted, len(expired))
