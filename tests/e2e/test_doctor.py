"""End to end: ``tcpcopy --check`` in the four-host lab, all hops working, then each broken.

One lab and one set of servers serve the module: nginx online (port 80) and at the target
(198.18.0.2:8080), intercept on the assistant started as a live copy starts it. Each test
runs the doctor as a user would, inside the online host, and reads its ``--json`` steps.
A test that breaks a hop (a stopped server, a deleted route, a sysctl) restores it in its
own ``finally``; the ``healthy`` fixture puts the lab back to its known state before every
test anyway, so the tests stay independent in any order.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import zmq

from tcpcopy.lab.netns import (ASSISTANT, ASSISTANT_ADDRESS, ASSISTANT_TARGET_SIDE, CLIENT, FAKE_CLIENT_NET,
                                ONLINE, ONLINE_ADDRESS, TARGET, TARGET_ADDRESS, Lab)
from tcpcopy.lab.livecopy import ONLINE_PORT, TARGET_PORT, LiveCopy

pytestmark = pytest.mark.lab

MAPPING = f"{ONLINE_PORT}-{TARGET_ADDRESS}:{TARGET_PORT}"
POOL = "198.18.3.x"                 # FAKE_CLIENT_NET: the target routes it via the assistant
PROBE_CLIENT = "198.18.3.1"         # the first -c address, the probe's source
TARGET_ONLINE_DEV = "to-online"     # the target's interface facing the online host
DOCTOR_TIMEOUT = 30.0


@dataclass
class Checked:
    code: int
    steps: list
    stdout: str
    stderr: str

    def step(self, prefix: str) -> dict:
        for step in self.steps:
            if step["step"].startswith(prefix):
                return step
        raise AssertionError(f"no step {prefix!r} in {self.explain()}")

    def statuses(self) -> dict:
        return {step["step"]: step["status"] for step in self.steps}

    def first_failure(self) -> dict:
        failed = [step for step in self.steps if step["status"] == "FAIL"]
        assert failed, f"no step failed: {self.explain()}"
        return failed[0]

    def explain(self) -> str:
        return f"exit {self.code}\n{json.dumps(self.steps, indent=2)}\nstderr: {self.stderr[-2000:]}"


def check(lab: Lab, *flags: str, intercept: str = ASSISTANT_ADDRESS, json_output: bool = True) -> Checked:
    """``tcpcopy --check`` in the online host, with the copy's flags plus ``flags``."""
    argv = [sys.executable, "-m", "tcpcopy.session.main", "--check", "-x", MAPPING, "-s", intercept, *flags]
    if json_output:
        argv.append("--json")
    done = lab.run(ONLINE, argv, check=False, timeout=DOCTOR_TIMEOUT)
    steps = json.loads(done.stdout) if json_output and done.stdout.strip().startswith("[") else []
    return Checked(done.returncode, steps, done.stdout, done.stderr)


def no_probe_left(lab: Lab) -> bool:
    """No connection (SYN-RECV included) from the probe's client address on the target."""
    return lab.run(TARGET, ["ss", "-Htan", "dst", PROBE_CLIENT]).stdout.strip() == ""


def set_sysctl(lab: Lab, host: str, key: str, value: int) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    lab.run(host, ["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", str(value), path])


def get_sysctl(lab: Lab, host: str, key: str) -> str:
    return lab.run(host, ["cat", "/proc/sys/" + key.replace(".", "/")]).stdout.strip()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def servers(lab: Lab, request) -> Iterator[LiveCopy]:
    """nginx online and at the target, intercept on the assistant (no tcpcopy). Its run
    folder goes with it unless a test of the module failed."""
    failed_before = request.session.testsfailed
    copy = LiveCopy(lab, start_copy=False)
    copy.__enter__()
    try:
        yield copy
    finally:
        copy.__exit__(None, None, None)
        if request.session.testsfailed == failed_before:
            copy.remove_dir()


@pytest.fixture
def healthy(lab: Lab, servers: LiveCopy, request) -> Iterator[LiveCopy]:
    """The lab as built, before each test: servers up, the target's route to the -c pool via
    the assistant, rp_filter off on the target, ip_forward=0 on the assistant."""
    if servers.intercept is None or servers.intercept.poll() is not None:
        servers.intercept = None
        servers.start_intercept()
    if not servers.target.running:
        servers.target.stop()
        servers.target.start()
        servers.target.wait_ready()
    lab.run(TARGET, ["ip", "route", "replace", FAKE_CLIENT_NET, "via", ASSISTANT_TARGET_SIDE])
    set_sysctl(lab, TARGET, f"net.ipv4.conf.{TARGET_ONLINE_DEV}.rp_filter", 0)
    set_sysctl(lab, ASSISTANT, "net.ipv4.ip_forward", 0)
    yield servers
    report = getattr(request.node, "e2e_report_call", None)
    if report is not None and report.failed:
        print(f"----- intercept log ({servers.dir}/intercept.log), tail -----")
        print(servers.log("intercept")[-3000:])


@pytest.fixture
def client_traffic(lab: Lab) -> Iterator[None]:
    """Real client requests to the online server, a few per second, bounded (at most 150)."""
    loop = (f"i=0; while [ $i -lt 150 ]; do curl -s -o /dev/null -m 1 http://{ONLINE_ADDRESS}:{ONLINE_PORT}/; "
            "i=$((i+1)); sleep 0.1; done")
    proc = lab.popen(CLIENT, ["sh", "-c", loop], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        lab.stop(proc)


# --------------------------------------------------------------------------- all hops ok


def test_all_hops_ok(lab, healthy, client_traffic) -> None:
    done = check(lab, "-i", lab.interface(ONLINE, CLIENT), "-c", POOL)
    assert done.code == 0, done.explain()
    assert [s["step"].split()[0] for s in done.steps] == ["capture", "intercept", "probe", "assistant", "cleanup"]
    assert set(done.statuses().values()) == {"ok"}, done.explain()
    assert "SYN-ACK came back through intercept" in done.step("probe")["detail"]
    assert PROBE_CLIENT in done.step("probe")["detail"]
    assert "RST sent" in done.step("cleanup")["detail"]
    assert no_probe_left(lab), "the probe's RST should have freed its half-open connection on the target"

    # Without -c the probe uses the captured client's own address (the target routes the
    # client network via the assistant too); the text output names each step.
    text = check(lab, "-i", lab.interface(ONLINE, CLIENT), json_output=False)
    assert text.code == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert lines[-1] == "result: ok, every hop works"
    assert [line.split()[0] for line in lines[:-1]] == ["ok"] * 5, text.stdout
    assert "from 198.18.1.2:" in next(line for line in lines if line.startswith("ok   probe")), text.stdout


def test_without_traffic_the_capture_step_only_warns(lab, healthy) -> None:
    done = check(lab, "-i", lab.interface(ONLINE, CLIENT), "-c", POOL, "--check-no-traffic")
    assert done.code == 0, done.explain()
    assert done.step("capture")["status"] == "warn"
    assert "no client traffic seen (skipped" in done.step("capture")["detail"]
    assert all(s["status"] == "ok" for s in done.steps[1:]), done.explain()

    # ... and without -c, nothing says which client address to probe from.
    done = check(lab, "-i", lab.interface(ONLINE, CLIENT), "--check-no-traffic")
    assert done.code == 1
    assert done.first_failure()["step"] == "probe"
    assert "--check-client-ip" in done.first_failure()["detail"]


# --------------------------------------------------------------------------- 1. capture


def test_wrong_interface_fails_the_capture_step(lab, healthy, client_traffic) -> None:
    wrong = lab.interface(ONLINE, ASSISTANT)   # up, but no client traffic arrives there
    done = check(lab, "-i", wrong, "-c", POOL, "--check-wait", "2")
    assert done.code == 1, done.explain()
    assert len(done.steps) == 1, done.explain()   # the first failing hop ends the check
    failure = done.first_failure()
    assert failure["step"] == f"capture {wrong}"
    assert f"capture sees nothing on {wrong} for -x {MAPPING}" in failure["detail"]
    assert "pick the right -i" in failure["detail"]

    done = check(lab, "-i", "tcl-nodev", "-c", POOL)
    assert done.code == 1
    assert done.first_failure()["step"] == "capture tcl-nodev"
    assert "cannot capture on interface 'tcl-nodev'" in done.first_failure()["detail"]


# --------------------------------------------------------------------------- 2. intercept


def test_intercept_not_running_fails_the_intercept_step(lab, healthy) -> None:
    healthy.stop_intercept()
    try:
        done = check(lab, "-c", POOL, "--check-no-traffic")
    finally:
        healthy.start_intercept()
    assert done.code == 1, done.explain()
    failure = done.first_failure()
    assert failure["step"] == f"intercept {ASSISTANT_ADDRESS}:36524"
    assert f"intercept {ASSISTANT_ADDRESS}:36524 does not answer" in failure["detail"]
    assert "is intercept running there and the port open?" in failure["detail"]


def _foreign_router(endpoint: str, ready, seconds: float) -> int:
    """In the assistant: a ZeroMQ ROUTER that answers whatever it gets with bytes that are no
    tcpcopy message; returns how many messages it answered."""
    context = zmq.Context()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 200)
    sock.bind(endpoint)
    ready.set()
    answered = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not answered:
        if sock.poll(100):
            routing_id, _frame = sock.recv_multipart()
            sock.send_multipart([routing_id, b"\xc1 not a tcpcopy message"])
            answered += 1
    time.sleep(0.2)
    sock.close()
    context.term()
    return answered


def test_something_else_on_the_intercept_port(lab, healthy) -> None:
    port = 36600
    ready = multiprocessing.get_context("fork").Event()
    call = lab.spawn(ASSISTANT, _foreign_router, f"tcp://{ASSISTANT_ADDRESS}:{port}", ready, 10.0)
    assert ready.wait(5), "the foreign ROUTER did not start"
    done = check(lab, "-c", POOL, "--check-no-traffic", intercept=f"{ASSISTANT_ADDRESS}:{port}")
    assert call.result(15) == 1
    assert done.code == 1, done.explain()
    failure = done.first_failure()
    assert failure["step"] == f"intercept {ASSISTANT_ADDRESS}:{port}"
    assert f"something else listens on {ASSISTANT_ADDRESS}:{port}" in failure["detail"]


# --------------------------------------------------------------------------- 3. the probe


def test_nothing_listening_on_the_target_port(lab, healthy) -> None:
    healthy.target.stop()
    try:
        done = check(lab, "-c", POOL, "--check-no-traffic")
    finally:
        healthy.target.start()
        healthy.target.wait_ready()
    assert done.code == 1, done.explain()
    failure = done.first_failure()
    assert failure["step"] == f"probe {TARGET_ADDRESS}:{TARGET_PORT}"
    assert f"the target answered RST: nothing listens on {TARGET_ADDRESS}:{TARGET_PORT}" in failure["detail"]
    assert "RST sent" in done.step("cleanup")["detail"]


def test_target_without_the_route_to_the_clients(lab, healthy) -> None:
    lab.run(TARGET, ["ip", "route", "del", FAKE_CLIENT_NET, "via", ASSISTANT_TARGET_SIDE])
    try:
        done = check(lab, "-c", POOL, "--check-no-traffic")
    finally:
        lab.run(TARGET, ["ip", "route", "replace", FAKE_CLIENT_NET, "via", ASSISTANT_TARGET_SIDE])
    assert done.code == 1, done.explain()
    failure = done.first_failure()
    detail = failure["detail"]
    assert failure["step"] == f"probe {TARGET_ADDRESS}:{TARGET_PORT}"
    assert "between the SYN leaving here and intercept" in detail
    assert "the target's SYN-ACK never reached intercept" in detail
    assert f"(1) on the target, route {FAKE_CLIENT_NET} via the assistant (ip route add {FAKE_CLIENT_NET} via" in detail
    assert "rp_filter" in detail and "ip_forward=0" in detail and f"src port {TARGET_PORT}" in detail
    assert "RST sent" in done.step("cleanup")["detail"]


def test_strict_rp_filter_on_the_target(lab, healthy) -> None:
    key = f"net.ipv4.conf.{TARGET_ONLINE_DEV}.rp_filter"
    set_sysctl(lab, TARGET, key, 1)
    try:
        done = check(lab, "-c", POOL, "--check-no-traffic")
    finally:
        set_sysctl(lab, TARGET, key, 0)
    assert done.code == 1, done.explain()
    failure = done.first_failure()
    detail = failure["detail"]
    assert failure["step"] == f"probe {TARGET_ADDRESS}:{TARGET_PORT}"
    # Seen from the online host a SYN dropped by rp_filter and a SYN-ACK without a route
    # look the same: nothing comes back anywhere. The diagnosis names both, in order.
    assert f"the SYN from {PROBE_CLIENT}:" in detail and "the SYN was dropped at the target (not answered)" in detail
    assert "(2) on the target, turn rp_filter off" in detail


# --------------------------------------------------------------------------- 4. the assistant


def test_assistant_forwarding(lab, healthy) -> None:
    set_sysctl(lab, ASSISTANT, "net.ipv4.ip_forward", 1)
    try:
        done = check(lab, "-c", POOL, "--check-no-traffic")
    finally:
        set_sysctl(lab, ASSISTANT, "net.ipv4.ip_forward", 0)
    assert get_sysctl(lab, ASSISTANT, "net.ipv4.ip_forward") == "0"
    assert done.code == 1, done.explain()
    # What ip_forward=1 changes in this lab: nothing intercept sees. intercept captures the
    # SYN-ACK on arrival, before the kernel tries to forward it; the assistant has no route to
    # the clients, so the answer then dies there (its ICMP net unreachable has no route back
    # to the target either). The probe itself works ...
    assert done.step("probe")["status"] == "ok", done.explain()
    assert no_probe_left(lab)
    # ... and the assistant step catches the forwarding host.
    failure = done.first_failure()
    assert failure["step"] == f"assistant {ASSISTANT_ADDRESS}"
    assert "forwards packets instead of dropping them (ip_forward=1)" in failure["detail"]
    assert "net unreachable" in failure["detail"]
    assert "set net.ipv4.ip_forward=0 on the assistant" in failure["detail"]
