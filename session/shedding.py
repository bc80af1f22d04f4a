"""Overload control: shed whole sessions when the owner falls behind its input.

A copier that is offered more than it can replay must not queue everything and starve
every session alike (all of them then break); it keeps copying as many whole sessions as
it can and skips the rest whole. The measure of "behind" is the age of captured input when
the owner gets to it (its capture timestamp against the same host's clock): queues in front
of the owner fill, the age grows.

* Behind by more than ``lag_high``: new connections are shed (skipped whole, counted).
* Still behind ``patience`` seconds later: live sessions are shed as well, a ``share`` of
  them (at least one) every ``patience`` seconds, the youngest first (they have the least
  copied work to lose).
* Both stop once the age falls below ``lag_low`` (hysteresis, so the decision does not
  flap at the threshold).

Pure: the owner passes the observed age and ``now`` in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SheddingConfig:
    lag_high: float = 1.0    # seconds behind: start shedding new connections
    lag_low: float = 0.25    # seconds behind: stop shedding
    patience: float = 1.0    # seconds between shedding steps of live sessions
    share: float = 0.1       # of the live sessions shed at each step


class LoadShedder:
    def __init__(self, config: SheddingConfig = SheddingConfig()):
        self.config = config
        self.shedding = False
        self.lag = 0.0
        self.max_lag = 0.0
        self._next_step: float | None = None   # when live sessions are shed next

    def observe(self, lag: float, now: float) -> None:
        """The age, at ``now``, of captured input the owner is about to process."""
        self.lag = lag
        if lag > self.max_lag:
            self.max_lag = lag
        if self.shedding:
            if lag < self.config.lag_low:
                self.shedding = False
                self._next_step = None
        elif lag > self.config.lag_high:
            self.shedding = True
            self._next_step = now + self.config.patience

    def sessions_to_shed(self, now: float, live: int) -> int:
        """How many live sessions to shed now (0 unless a step is due)."""
        if not self.shedding or self._next_step is None or now < self._next_step or live == 0:
            return 0
        self._next_step = now + self.config.patience
        return max(1, math.ceil(live * self.config.share))
