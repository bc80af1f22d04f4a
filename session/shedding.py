"""Overload control: shed whole sessions when the owner falls behind its input.

A copier that is offered more than it can replay must not queue everything and starve
every session alike (all of them then break); it keeps copying as many whole sessions as
it can and skips the rest whole. The owner is overloaded when its input queue never runs
empty and the captured input it takes is older and older: the age of a packet when the
owner gets to it (its capture timestamp against the same host's clock) measures how far
behind it is. An owner that empties its queue is keeping up, whatever the age: then any
delay is before it (the capture worker's CPU, the kernel's buffer), and shedding sessions
here would not help. A burst (a 100 MB body taken in at veth speed) makes the owner busy and
behind for a few seconds and then passes; ``lag_high`` is set above that.

* Behind by more than ``lag_high``, its queue full for ``busy_for`` seconds without a
  break: new connections are shed (skipped whole, counted).
* Every ``step`` seconds while still behind and falling further behind, live sessions are
  shed too, the youngest first (they have the least copied work to lose), in proportion
  to the shortfall: if the age grew by g seconds per second, the owner works through
  1 - g seconds of input per second, so all but (1 - g) / ``headroom`` of the live
  sessions go (at most ``max_share`` of them in one step, at least one; the step after a
  shedding one only measures, since its span straddles the change). Skipping a shed
  session's packets costs little next to replaying them, so what is kept runs at about
  the owner's capacity: it neither sheds all nor keeps too many.
* Shedding stops once the age falls below ``lag_low`` (hysteresis, so the decision does not
  flap at the threshold) or the owner empties its queue.

Pure: the owner passes the observed age and ``now`` in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SheddingConfig:
    lag_high: float = 10.0   # seconds behind: start shedding
    lag_low: float = 2.0     # seconds behind: stop shedding
    step: float = 0.5        # seconds between shedding steps of live sessions
    headroom: float = 1.05   # keep this much less than the measured capacity
    # Of the live sessions shed in one step, at most. Each step later the owner is further
    # behind, and every packet in its queue of a session it then sheds was captured and
    # queued for nothing: half a step reaches the sustainable set in about half the steps
    # a 30% cap takes (peak lag 3.0-3.4 s instead of 5.0-5.4 s in tests/e2e/test_overload.py).
    max_share: float = 0.5
    busy_for: float = 1.0    # seconds the owner's queue must have stayed full before it sheds


class LoadShedder:
    def __init__(self, config: SheddingConfig = SheddingConfig()):
        self.config = config
        self.shedding = False
        self.lag = 0.0
        self.max_lag = 0.0
        self._step_at = 0.0                    # the last step (or the start of shedding)
        self._step_lag = 0.0                   # the age seen then
        self._settling = False                 # the last step shed: the next one only measures
        self._busy_since: float | None = None  # the queue has not run empty since then

    def observe(self, lag: float, now: float) -> None:
        """The age, at ``now``, of captured input the owner is about to process."""
        self.lag = lag
        if lag > self.max_lag:
            self.max_lag = lag
        if self._busy_since is None:
            self._busy_since = now
        if self.shedding:
            if lag < self.config.lag_low:
                self.shedding = False
        elif lag > self.config.lag_high and now - self._busy_since >= self.config.busy_for:
            self.shedding = True
            self._step_at, self._step_lag = now, lag

    def caught_up(self) -> None:
        """The owner found its input queue empty: it is not the one falling behind."""
        self.shedding = False
        self._busy_since = None

    def sessions_to_shed(self, now: float, live: Callable[[], int]) -> int:
        """How many live sessions to shed now (0 unless a step is due and the owner is
        still falling behind). ``live`` counts the live sessions; it is called only when a
        step is due, since counting walks the whole table."""
        cfg = self.config
        elapsed = now - self._step_at
        if not self.shedding or elapsed < cfg.step:
            return 0
        growth = (self.lag - self._step_lag) / elapsed
        self._step_at, self._step_lag = now, self.lag
        if self._settling:
            # What was measured spans the last shedding: judge from the next step on.
            self._settling = False
            return 0
        if growth <= 0 or self.lag <= cfg.lag_high:
            return 0
        live_now = live()
        if live_now == 0:
            return 0
        speed = max(0.0, 1.0 - growth)
        share = min(cfg.max_share, 1.0 - speed / cfg.headroom)
        self._settling = True
        return max(1, math.ceil(live_now * share))
