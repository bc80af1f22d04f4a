"""tcpcopy's capture worker, the child process that feeds the owner, and what happens when it dies.

A copier whose capture is gone must not run on copying nothing. A worker that something
killed (the OOM killer, an operator's signal) is started again, at most ``RESTARTS`` times
within ``RESTART_WINDOW`` seconds, as long as a new one can take over where the old one
stopped: a live capture opened by this process before it dropped any privilege. Otherwise,
and when the worker exits on its own with an error (its message says why), ``failure``
names the fault and the fix, and the owner stops with it (tcpcopy exits 1).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence

log = logging.getLogger("tcpcopy")

RESTARTS = 3
RESTART_WINDOW = 60.0
STOP_GRACE = 5.0


class RestartBudget:
    """At most ``limit`` restarts within any ``window`` seconds (pure: time passed in)."""

    def __init__(self, limit: int = RESTARTS, window: float = RESTART_WINDOW):
        self.limit, self.window = limit, window
        self._times: deque[float] = deque(maxlen=limit)

    def take(self, now: float) -> bool:
        """Spend one restart at ``now``; False when ``limit`` were spent within the window."""
        if len(self._times) == self.limit and now - self._times[0] < self.window:
            return False
        self._times.append(now)
        return True


class CaptureChild:
    """The capture worker process. ``not_restartable``: why a killed worker cannot be
    replaced (None: it can)."""

    def __init__(self, argv: Sequence[str], not_restartable: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.argv = list(argv)
        self.not_restartable = not_restartable
        self.clock = clock
        self.budget = RestartBudget()
        self.restarts = 0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.argv, start_new_session=True)

    def failure(self) -> str | None:
        """None while the worker runs (or was just replaced); else why the copy must stop.
        For ``Owner.watch``: called every loop turn."""
        code = self.proc.poll()
        if code is None or code == 0:   # 0: an offline file ended, the owner was told (BYE)
            return None
        if code > 0:
            return f"the capture worker exited with status {code} (see its message above)"
        killed = f"the capture worker (pid {self.proc.pid}) was killed by {_signal_name(-code)}"
        if self.not_restartable:
            return f"{killed}; {self.not_restartable}"
        if not self.budget.take(self.clock()):
            return (f"{killed}, the {RESTARTS + 1}th time within {RESTART_WINDOW:.0f} s: stopping "
                    "(is the OOM killer ending it? see the kernel log)")
        self.proc = self._spawn()
        self.restarts += 1
        log.warning("%s: started a new one (pid %d; %d restarts allowed within %.0f s); what the "
                    "clients sent meanwhile was not captured", killed, self.proc.pid, RESTARTS, RESTART_WINDOW)
        return None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE seconds."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def not_restartable_reason(offline: bool, user) -> str | None:
    """Why tcpcopy could not replace a killed capture worker, with the fix; None if it can."""
    if offline:
        return "a pcap file cannot be resumed where it stopped: run tcpcopy --offline again"
    if user:
        return ("after dropping to --user tcpcopy cannot open a capture again: start tcpcopy again "
                "(a service manager's restart on failure does)")
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
