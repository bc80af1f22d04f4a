"""tcpcopy's capture worker dies: a killed one is replaced within a budget, else the copy
stops naming why. Real child processes (``sleep``, ``sh``) stand in for the worker."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tcpcopy.session.capturechild import RESTARTS, CaptureChild, RestartBudget, not_restartable_reason


def test_the_restart_budget_allows_a_few_restarts_a_minute():
    budget = RestartBudget(limit=3, window=60.0)
    assert [budget.take(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert not budget.take(59.0), "a fourth restart within the minute"
    assert budget.take(60.5), "the first restart has left the window"
    assert not budget.take(60.9), "three within the minute again (1.0, 2.0, 60.5)"


def killed(child: CaptureChild) -> int:
    pid = child.proc.pid
    os.kill(pid, signal.SIGKILL)
    child.proc.wait(5)
    return pid


@pytest.fixture
def children():
    made = []
    yield made
    for child in made:
        child.stop()


def test_a_killed_worker_is_replaced_until_the_budget_is_spent(children, caplog):
    now = [100.0]
    child = CaptureChild(["sleep", "30"], clock=lambda: now[0])
    children.append(child)
    for n in range(RESTARTS):
        old = killed(child)
        assert child.failure() is None
        assert child.proc.pid != old and child.proc.poll() is None and child.restarts == n + 1
    assert "killed by SIGKILL: started a new one" in caplog.text
    killed(child)
    reason = child.failure()
    assert reason is not None and "killed by SIGKILL" in reason and "OOM" in reason


@pytest.mark.parametrize("offline, user, fix", [(True, None, "--offline again"),
                                                (False, "nobody", "--user")])
def test_a_killed_worker_that_cannot_be_replaced_stops_the_copy_naming_why(children, offline, user, fix):
    child = CaptureChild(["sleep", "30"], not_restartable_reason(offline, user))
    children.append(child)
    killed(child)
    reason = child.failure()
    assert "killed by SIGKILL" in reason and fix in reason and child.restarts == 0


def test_a_worker_that_fails_on_its_own_is_not_restarted(children):
    child = CaptureChild(["sh", "-c", "exit 2"])
    children.append(child)
    deadline = time.monotonic() + 5
    while child.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert child.failure() == "the capture worker exited with status 2 (see its message above)"
    assert not_restartable_reason(False, None) is None
