"""End to end: a live copy whose processes run as ``nobody``, judged by the servers' logs.

tcpcopy, its capture worker and intercept start as root with ``--user nobody``, open their
raw sockets and captures, and drop. The test reads each one's /proc/PID/status as an
operator would (uid, capabilities), sends SIGHUP to each in the middle of the load (log
rotation must not stop a copy), and checks that the target logged every request the online
server did.
"""

from __future__ import annotations

import json
import pwd
import signal

import psutil
import pytest

from tcpcopy.cluster.privileges import CAP_NET_RAW, read_credentials
from tcpcopy.lab import load
from tcpcopy.lab.netns import CLIENT
from tests.e2e.test_live_copy import assert_all_succeeded, finish

pytestmark = pytest.mark.lab

NOBODY = pwd.getpwnam("nobody").pw_uid


def python_process(pid: int, module: str) -> psutil.Process:
    """The process running ``python -m module`` at ``pid`` or below it."""
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        if module in " ".join(proc.cmdline()):
            return proc
    raise AssertionError(f"no {module} process under pid {pid}")


def test_a_copy_run_as_nobody_keeps_only_cap_net_raw_survives_sighup_and_loses_nothing(live_copy) -> None:
    copy = live_copy(tcpcopy_flags=["--user", "nobody"], intercept_flags=["--user", "nobody"])
    tcpcopy = python_process(copy.tcpcopy.pid, "tcpcopy.session.main")
    capture = python_process(tcpcopy.pid, "tcpcopy.capture.worker")
    intercept = python_process(copy.intercept.pid, "tcpcopy.intercept.main")
    for name, proc in (("tcpcopy", tcpcopy), ("capture worker", capture), ("intercept", intercept)):
        creds = read_credentials(proc.pid)
        assert set(creds.uids) == {NOBODY}, f"{name} runs as {creds.uids}"
        assert creds.effective == creds.permitted == 1 << CAP_NET_RAW, f"{name}: CapEff {creds.effective:x}"
        assert creds.bounding == 1 << CAP_NET_RAW and creds.no_new_privs, name
    assert "running as user nobody" in copy.log("tcpcopy") and "running as user nobody" in copy.log("intercept")

    first = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html?part=1", rate=200, seconds=3)
    for proc in (tcpcopy, capture, intercept):
        proc.send_signal(signal.SIGHUP)
    second = load.keepalive(copy.lab, CLIENT, f"{copy.url}/index.html?part=2", 10, 50)
    assert_all_succeeded(first, second)
    assert all(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE for proc in (tcpcopy, capture, intercept)), \
        "SIGHUP stopped a process:\n" + copy.log("tcpcopy")[-2000:] + copy.log("intercept")[-2000:]

    total = first.summary.done + second.summary.done
    finish(copy, total, timeout=30)
    report = copy.report()
    assert report.online_requests == total == 600 + 500
    assert report.target_requests == report.online_requests, report.render()
    assert report.target_status == {200: total}, report.render()
    # Written at the end, after the drop, into the copy's directory that only root may enter.
    assert json.loads(copy.summary_path.read_text())["raw_sent"] > 0
