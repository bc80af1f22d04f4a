"""The round-trip time estimator of one session (RFC 6298): the smoothed RTT, its variation,
and the retransmission timeout with its exponential backoff."""

from __future__ import annotations


class RttEstimator:
    """``rto`` is the timeout in force: ``restart`` sets it for a new SYN, ``back_off``
    doubles it after an expiry, ``update_rto`` sets it from the estimate when an ACK moves.
    Samples come only from segments sent once (Karn's algorithm is the caller's part)."""

    __slots__ = ("srtt", "rttvar", "rto", "initial_rto", "min_rto", "max_rto")

    def __init__(self, initial_rto: float, min_rto: float, max_rto: float):
        self.srtt: float | None = None   # None until the first sample
        self.rttvar = 0.0
        self.rto = initial_rto
        self.initial_rto = initial_rto
        self.min_rto = min_rto
        self.max_rto = max_rto

    def sample(self, rtt: float) -> None:
        """RFC 6298 §2: fold one measured round trip into the estimate."""
        if rtt < 0:
            return
        srtt = self.srtt
        if srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(srtt - rtt)
            self.srtt = 0.875 * srtt + 0.125 * rtt

    def update_rto(self) -> None:
        """RFC 6298 §2.2-2.4, bounded by min_rto and max_rto (the initial RTO before any sample)."""
        srtt = self.srtt
        if srtt is None:
            self.rto = self.initial_rto
            return
        rto = srtt + max(0.001, 4 * self.rttvar)
        self.rto = min(max(rto, self.min_rto), self.max_rto)

    def back_off(self) -> None:
        """RFC 6298 §5.5: double the timeout after an expiry, up to max_rto."""
        self.rto = min(self.rto * 2, self.max_rto)

    def restart(self) -> None:
        """A new SYN starts from the initial timeout (RFC 6298 §2.1)."""
        self.rto = self.initial_rto

    def smoothed_or(self, default: float) -> float:
        """The smoothed RTT, or ``default`` before the first sample."""
        srtt = self.srtt
        return srtt if srtt is not None else default
