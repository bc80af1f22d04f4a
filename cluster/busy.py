"""How busy a process's loop is: the share of wall time it works rather than waits (pure).

A copier near its limit shows it here before it sheds: a loop that never waits in its poll
has no headroom left. Each loop reports the time it waited (``waited``) and publishes the
share of the last window (``sample``, read with the stats, about once a second). Times are
passed in: ``time.monotonic()`` values of the caller.
"""

from __future__ import annotations

WINDOW = 1.0   # seconds a share is taken over, at least


class LoopMeter:
    __slots__ = ("_idle", "_since", "percent")

    def __init__(self, now: float):
        self._idle = 0.0
        self._since = now
        self.percent = 0.0   # busy share of the last full window, 0-100

    def waited(self, seconds: float) -> None:
        """The loop waited this long for work (in poll or select)."""
        self._idle += seconds

    def sample(self, now: float) -> float:
        """The busy percentage of the window that ended at ``now``, once a window is full
        (the last one until then)."""
        span = now - self._since
        if span >= WINDOW:
            busy = 1.0 - self._idle / span
            self.percent = round(100.0 * min(1.0, max(0.0, busy)), 1)
            self._idle, self._since = 0.0, now
        return self.percent
