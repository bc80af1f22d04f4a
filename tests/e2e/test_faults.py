"""End to end: every role of the copy crashes or restarts under load, and the copy survives.

Each test runs a steady, modest client load (:func:`tests.e2e.faults.steady_traffic`: paced
keep-alive connections and one-request connections, about 120 requests a second, every
request with its own URI) against the online nginx while one role fails: a session owner of
the cluster is killed (supervisord starts a new one), intercept is killed and started again,
the target's nginx restarts, the single-process tcpcopy's capture worker is killed. Then it
judges the run from the servers' access logs: the requests lost while the fault lasted are
printed, and none may be lost outside that window; and from the target's ``ss``: no
replayed connection may stay half open (ESTABLISHED or CLOSE-WAIT with no copier behind it).
Only processes the test started are signalled, by PID.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tcpcopy.lab.netns import CLIENT, ONLINE_ADDRESS
from tcpcopy.lab.livecopy import ONLINE_PORT, TARGET_PORT
from tests.e2e import faults

pytestmark = pytest.mark.lab

LOAD_S = 9.0
FAULT_AT_S = 3.0
SETTLE_S = 1.0          # after a role is back, before its traffic must be whole again
HALF_OPEN_WAIT_S = 10.0


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


class Load:
    """:func:`faults.steady_traffic` from the client host, in a thread."""

    def __init__(self, lab, tag: str, seconds: float = LOAD_S):
        self.started_at = time.time()
        self.call = lab.spawn(CLIENT, faults.steady_traffic, ONLINE_ADDRESS, ONLINE_PORT, tag, seconds)
        self.seconds = seconds

    def result(self) -> faults.Traffic:
        traffic = self.call.result(self.seconds + 40)
        assert not traffic.failures, f"the online server failed requests: {traffic.failures[:5]}"
        return traffic


def judge(fault: str, online: list[dict], target: list[dict], start: float, end: float,
          states) -> faults.Losses:
    """Print the fault's line of the report; assert nothing was lost outside its window and
    no replayed connection was left half open."""
    result = faults.losses(online, target, start, end)
    print(f"\n{result.line(fault)}; target connections left: {dict(states)} "
          f"(half open: {faults.half_open(states)})")
    assert result.online > 500, "too little load to judge the fault"
    assert len([e for e in online if e["time"] - e["request_time"] > end]) > 100, \
        "too little load after the fault to judge the recovery"
    assert result.outside == (), f"{len(result.outside)} requests lost outside the fault's window: " \
                                 f"{[e['request_uri'] for e in result.outside[:5]]}"
    assert faults.half_open(states) == 0, f"replayed connections left half open on the target: {dict(states)}"
    return result


# --------------------------------------------------------------------------- 1. an owner dies


def test_killed_owner_is_replaced_and_its_connections_are_reset_on_the_target(cluster_copy) -> None:
    copy = cluster_copy(2, 2, 2)
    load = Load(copy.lab, "owner")
    time.sleep(FAULT_AT_S)
    old_pid = copy.kill_program("online", "owner-1", signal.SIGKILL)
    killed_at = time.time()
    copy.wait_restarted("online", "owner-1", old_pid)
    back_at = time.time() + SETTLE_S
    load.result()
    copy.wait_for_target(len(copy.online.access_log_entries()), timeout=20)
    states = faults.wait_half_open_gone(copy.lab, TARGET_PORT, HALF_OPEN_WAIT_S)
    copy.stop()
    online = copy.online.access_log_entries()
    judge("SIGKILL of a session owner", online, copy.target.access_log_entries(),
          faults.last_request_before(online, killed_at), back_at, states)
    handed = [int(line.split(" connections of a dead predecessor")[0].rsplit(" ", 1)[1])
              for line in copy.log("online", "owner-1").splitlines() if "of a dead predecessor handed over" in line]
    print(f"intercept handed the replacement {sum(handed)} connections of the dead owner to reset")
    assert sum(handed) > 0, "intercept handed the replacement none of the dead owner's connections"


# --------------------------------------------------------------------------- 2. intercept dies


def test_intercept_killed_and_restarted_live_sessions_re_register_and_complete(live_copy) -> None:
    copy = live_copy(tcpcopy_flags=["-L"])
    load = Load(copy.lab, "intercept")
    time.sleep(FAULT_AT_S)
    copy.kill_intercept()
    killed_at = time.time()
    time.sleep(1.0)
    copy.start_intercept()
    assert wait_until(lambda: "registered" in copy.log("tcpcopy").partition("restarted")[2], 10), \
        f"tcpcopy did not register its live endpoints again:\n{copy.log('tcpcopy')[-2000:]}"
    back_at = time.time() + SETTLE_S
    load.result()
    copy.wait_for_target(len(copy.online.access_log_entries()), timeout=20)
    states = faults.wait_half_open_gone(copy.lab, TARGET_PORT, HALF_OPEN_WAIT_S)
    assert copy.tcpcopy.poll() is None, "tcpcopy -L stopped while intercept was away"
    copy.stop_tcpcopy()
    copy.stop_intercept()
    online = copy.online.access_log_entries()
    result = judge("SIGKILL and restart of intercept (-L)", online, copy.target.access_log_entries(),
                   faults.last_request_before(online, killed_at), back_at, states)
    assert len(result.during) <= len(online) // 20, "most of the requests made while intercept was away were lost"


# --------------------------------------------------------------------------- 3. the target restarts


def test_target_server_restarted_mid_copy(live_copy) -> None:
    copy = live_copy()
    load = Load(copy.lab, "target")
    time.sleep(FAULT_AT_S)
    stopped_at = time.time()
    copy.target.restart(down_s=0.5)
    back_at = time.time() + SETTLE_S
    load.result()
    copy.wait_for_target(len(copy.online.access_log_entries()), timeout=20)
    states = faults.wait_half_open_gone(copy.lab, TARGET_PORT, HALF_OPEN_WAIT_S)
    assert copy.tcpcopy.poll() is None, "tcpcopy stopped when the target restarted"
    copy.stop_tcpcopy()
    copy.stop_intercept()
    online = copy.online.access_log_entries()
    judge("restart of the target server", online, copy.target.access_log_entries(),
          faults.last_request_before(online, stopped_at), back_at, states)


# --------------------------------------------------------------------------- 4. the capture worker dies


def test_killed_capture_worker_of_tcpcopy_is_restarted(live_copy) -> None:
    copy = live_copy()
    load = Load(copy.lab, "capture")
    time.sleep(FAULT_AT_S)
    old_pid = copy.capture_worker_pid()
    assert old_pid is not None, "tcpcopy runs no capture worker"
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.time()
    assert wait_until(lambda: copy.capture_worker_pid() not in (None, old_pid), 5), \
        f"no new capture worker:\n{copy.log('tcpcopy')[-2000:]}"
    assert wait_until(lambda: copy.log("tcpcopy").count("copying") >= 2, 5), copy.log("tcpcopy")[-2000:]
    back_at = time.time() + SETTLE_S
    load.result()
    copy.wait_for_target(len(copy.online.access_log_entries()), timeout=20)
    running = faults.target_connections(copy.lab, TARGET_PORT)
    assert copy.tcpcopy.poll() is None, f"tcpcopy stopped:\n{copy.log('tcpcopy')[-2000:]}"
    assert "was killed by SIGKILL: started a new one" in copy.log("tcpcopy")
    copy.stop_tcpcopy()
    copy.stop_intercept()
    # Sessions whose client closed while nothing was captured never saw the FIN: their
    # copies stay open until the target's keep-alive timeout or the copier's idle timeout
    # (-k) ends them, or the copier stops, which resets every live session.
    print(f"\nbefore tcpcopy stopped, its live sessions held {faults.half_open(running)} target connections "
          "whose client closed in the capture gap")
    states = faults.wait_half_open_gone(copy.lab, TARGET_PORT, HALF_OPEN_WAIT_S)
    online = copy.online.access_log_entries()
    judge("SIGKILL of tcpcopy's capture worker", online, copy.target.access_log_entries(),
          faults.last_request_before(online, killed_at), back_at, states)
