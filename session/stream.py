"""The client's byte stream put in order: what a captured segment is to the stream (new,
a retransmission, or ahead of a capture gap), and the segments held behind a gap.

Sequence numbers are unwrapped (``seqnum``) against the next expected byte, so the stream
needs no wrap-around cases. The session owns what happens next (queueing, charging the
buffer budget, the gap timer); this unit only keeps the order.
"""

from __future__ import annotations

from typing import Final

from tcpcopy.capture import packet as pk
from tcpcopy.session.seqnum import unwrap

# Where a captured segment falls against the next expected byte.
IN_ORDER: Final = 0   # it carries the next expected byte (possibly overlapping what came before)
OLD: Final = 1        # everything in it came before: a client retransmission
AHEAD: Final = 2      # it starts past the next expected byte: a capture gap precedes it


class Segment:
    """One captured client segment, queued for the target (and kept until acknowledged)."""

    __slots__ = ("pkt", "start", "end", "data_len", "fin", "captured_ack", "sent_at",
                 "retransmitted")

    def __init__(self, pkt: pk.Packet, start: int):
        self.pkt = pkt
        self.start = start
        self.data_len = pkt.payload_len
        self.fin = bool(pkt.flags & pk.FIN)
        self.end = start + self.data_len + self.fin
        self.captured_ack = pkt.ack
        self.sent_at: float | None = None
        self.retransmitted = False

    def head(self, limit: int) -> bytes:
        """The first ``limit`` bytes of the payload."""
        pkt = self.pkt
        return bytes(pkt.buf[pkt.payload_off:pkt.payload_off + min(pkt.payload_len, limit)])


class ClientStream:
    """``next_expected`` is the next client byte accepted in order, None until a SYN or the
    first captured data sets it; ``held`` keeps segments that start past it, by start."""

    __slots__ = ("next_expected", "held")

    def __init__(self) -> None:
        self.next_expected: int | None = None
        self.held: dict[int, Segment] = {}

    def unwrap(self, seq: int) -> int:
        """A captured 32-bit sequence number as a position in the stream."""
        expected = self.next_expected
        assert expected is not None   # set by the SYN or the mid-stream start
        return unwrap(seq, expected)

    def place(self, seg: Segment) -> int:
        """IN_ORDER, OLD or AHEAD: what ``seg`` is to the stream."""
        expected = self.next_expected
        assert expected is not None
        if seg.start > expected:
            return AHEAD
        if seg.end <= expected:
            return OLD
        return IN_ORDER

    def hold(self, seg: Segment) -> bool:
        """Keep a segment that is AHEAD; False if one with that start is already held."""
        if seg.start in self.held:
            return False
        self.held[seg.start] = seg
        return True

    def take_reached(self) -> list[Segment]:
        """Remove and return, in stream order, the held segments the stream has reached."""
        expected = self.next_expected
        assert expected is not None   # segments are held only behind a known position
        ready = sorted(start for start in self.held if start <= expected)
        return [self.held.pop(start) for start in ready]
