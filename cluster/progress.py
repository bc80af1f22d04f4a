"""Progress lines for long work: how far, how fast, how long is left.

Pure: the caller passes the time and the stream's ``write``. Who prints where:

- ``tcpcopy --offline`` (its capture worker): :class:`ReplayProgress`, a line every few
  seconds on stderr while stderr is a terminal; quiet otherwise (a script, a test or a log
  file gets only the lines that matter, and a daemon has no terminal).
- the benchmark and the soak (``lab/benchmark.py``): a line per run, and one every 30 s
  of the soak, on stderr whatever it is: they are long lab jobs whose logs are read
  afterwards, and a line that seldom is no noise there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import PurePath


def duration(seconds: float) -> str:
    """``45 s``, ``3 min 05 s``, ``1 h 02 min``: what a person reads at a glance."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def time_left(fraction_done: float, elapsed: float) -> float | None:
    """Seconds still to go at the pace so far; None before there is a pace to go by."""
    if fraction_done < 0.01 or elapsed <= 0:
        return None
    return elapsed * (1 - min(fraction_done, 1.0)) / fraction_done


def about_left(seconds: float | None) -> str:
    return "time left not known yet" if seconds is None else f"about {duration(seconds)} left"


class ReplayProgress:
    """Where an offline replay stands: packets read, how much of the file (all rounds of
    ``-T`` together), packets read per second since the last line, and time left. A line
    every ``every`` seconds from :meth:`update`, and a last one from :meth:`finish`."""

    def __init__(self, path: str, size: int, rounds: int, now: float, write: Callable[[str], object],
                 every: float = 5.0):
        self.name = PurePath(path).name
        self.size, self.rounds, self.every, self.write = max(size, 1), max(rounds, 1), every, write
        self.started = now
        self._due = now + every
        self._last = (now, 0)

    def update(self, packets: int, position: int, round_no: int, now: float) -> None:
        """``packets`` read in all, ``position`` bytes into the file in round ``round_no``
        (from 0); writes a line when one is due."""
        if now < self._due:
            return
        self._due = now + self.every
        done = (round_no + min(position, self.size) / self.size) / self.rounds
        then, packets_then = self._last
        rate = (packets - packets_then) / (now - then) if now > then else 0.0
        self._last = (now, packets)
        of = f"{done:.0%} of {self.name}"
        if self.rounds > 1:
            of += f" (round {round_no + 1} of {self.rounds})"
        self.write(f"replay: {packets:,} packets read, {of}, {rate:,.0f} packets/s, "
                   f"{about_left(time_left(done, now - self.started))}\n")

    def finish(self, packets: int, now: float, stopped: bool = False) -> None:
        how = "stopped" if stopped else f"read all of {self.name}" + (f" {self.rounds} times" if self.rounds > 1 else "")
        self.write(f"replay: {how}: {packets:,} packets in {duration(now - self.started)}\n")
