"""End to end over IPv6: live copies in the dual-stack four-host lab, control channel included.

The client talks to the online server over IPv6, tcpcopy replays to the target's IPv6
address, the target's answers go to the assistant by its IPv6 route, and tcpcopy reaches
intercept by the assistant's IPv6 address (``-s [2001:2:0:2::1]``; intercept listens on all
addresses, dual-stack). Each test judges the copy by the servers' own access logs, and checks
that the control channel ran over IPv6 and that the assistant stayed silent (no ICMPv6
errors, no failed neighbour discovery).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tcpcopy.lab import accesslog, load
from tcpcopy.lab.netns import (ASSISTANT, ASSISTANT_TARGET_SIDE_V6, CLIENT, CLIENT_NET_V6, CLIENT_V6,
                                FAKE_CLIENT_NET_V6, ONLINE, ONLINE_CONTROL_SIDE_V6, TARGET, TARGET_V6, Lab,
                                four_host_v6)
from tcpcopy.lab.livecopy import LiveCopy
from tcpcopy.lab.servers import UPLOAD_STATUS
from tests.e2e.conftest import module_lab
from tests.e2e.test_live_copy import assert_all_succeeded, finish

pytestmark = pytest.mark.lab

# Counters of /proc/net/snmp6 that say a host sent, or tried to send, an ICMPv6 error.
ICMP6_ERRORS_OUT = ("Icmp6OutErrors", "Icmp6OutDestUnreachs", "Ip6OutNoRoutes")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """An up dual-stack four-host lab for this module (it stands in for conftest's ``lab``,
    so ``live_copy`` starts its copies here), torn down after the module."""
    yield from module_lab(four_host_v6)


# --------------------------------------------------------------------------- helpers


def assert_copied_whole(copy: LiveCopy, expected: int) -> None:
    """Loss 0 by the servers' own logs, every request from the client's IPv6 address."""
    report = copy.report()
    online = copy.online.access_log_entries()
    target = copy.target.access_log_entries()
    assert report.online_requests == expected, report.render()
    assert report.target_requests == report.online_requests, report.render()
    assert report.loss_ratio == 0, report.render()
    match = accesslog.match_by_sequence(online, target)
    assert match.ok, f"missing {match.missing[:3]} unexpected {match.unexpected[:3]}"
    assert {e["remote_addr"] for e in online} == {CLIENT_V6}
    assert {e["remote_addr"] for e in target} == {CLIENT_V6}, "the target saw non-IPv6 client addresses"


def assert_control_channel_over_ipv6(copy: LiveCopy) -> None:
    """tcpcopy reached intercept by its IPv6 address, and never lost it; no raw send failed."""
    unreachable = [line for line in copy.log("tcpcopy").splitlines() if "unreachable" in line]
    assert unreachable == [], f"tcpcopy lost intercept: {unreachable}"
    connected = [line for line in copy.log("intercept").splitlines() if "connected from" in line]
    assert connected and all(line.endswith(f"from {ONLINE_CONTROL_SIDE_V6}") for line in connected), \
        f"the owner did not connect over IPv6: {connected or copy.log('intercept')[-2000:]}"
    summary = json.loads(copy.summary_path.read_text())
    assert summary["raw_send_failures"] == {}, summary["raw_send_failures"]


def snmp6(lab: Lab, host: str) -> dict[str, int]:
    """The IPv6 counters of ``host``'s namespace (/proc/net/snmp6)."""
    lines = lab.run(host, ["cat", "/proc/net/snmp6"]).stdout.splitlines()
    return {name: int(value) for name, value in (line.split() for line in lines if line.strip())}


def assert_assistant_silent(lab: Lab) -> None:
    """The assistant dropped the target's answers without a word, and neighbour discovery
    found every peer it was asked for (the counters run since the lab came up)."""
    counters = snmp6(lab, ASSISTANT)
    assert {key: counters[key] for key in ICMP6_ERRORS_OUT} == dict.fromkeys(ICMP6_ERRORS_OUT, 0)
    assert snmp6(lab, TARGET)["Icmp6InDestUnreachs"] == 0
    for host in (ONLINE, TARGET, ASSISTANT):
        neighbours = lab.run(host, ["ip", "-6", "neigh", "show"]).stdout.splitlines()
        failed = [n for n in neighbours if "FAILED" in n or "INCOMPLETE" in n]
        assert failed == [], f"neighbour discovery failed in {host}: {failed}"


def check_copy(copy: LiveCopy, expected: int) -> None:
    assert_copied_whole(copy, expected)
    assert_control_channel_over_ipv6(copy)
    assert_assistant_silent(copy.lab)


# --------------------------------------------------------------------------- the lab


def test_dual_stack_lab_routes_answers_to_a_silent_assistant(lab: Lab) -> None:
    assert lab.address(TARGET, 6) == TARGET_V6 and lab.address(CLIENT, 6) == CLIENT_V6
    target_routes = lab.run(TARGET, ["ip", "-6", "route"]).stdout
    for prefix in (CLIENT_NET_V6, FAKE_CLIENT_NET_V6):
        assert f"{prefix} via {ASSISTANT_TARGET_SIDE_V6} " in target_routes, target_routes
    assistant_routes = lab.run(ASSISTANT, ["ip", "-6", "route"]).stdout
    for prefix in (CLIENT_NET_V6, FAKE_CLIENT_NET_V6):
        assert f"blackhole {prefix} " in assistant_routes, assistant_routes
    for host in (CLIENT, ONLINE, TARGET, ASSISTANT):
        assert "default" not in lab.run(host, ["ip", "-6", "route"]).stdout, host
    for host in (ONLINE, ASSISTANT):
        assert lab.run(host, ["sysctl", "-n", "net.ipv6.conf.all.forwarding"]).stdout.split() == ["0"], host


# --------------------------------------------------------------------------- the copies


def test_short_connections_over_ipv6_lose_nothing(live_copy) -> None:
    copy = live_copy(ipv6=True)
    assert copy.url.startswith("http://[2001:2:")
    result = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html?load=short", rate=250, seconds=4)
    assert_all_succeeded(result)
    finish(copy, result.summary.done)

    check_copy(copy, 1000)
    target = copy.target.access_log_entries()
    assert accesslog.by_status(target) == {200: 1000}
    assert len(accesslog.by_connection(target)) == 1000  # one request per connection


def test_keepalive_connections_over_ipv6_arrive_complete_and_in_order(live_copy) -> None:
    copy = live_copy(ipv6=True)
    result = load.keepalive(copy.lab, CLIENT, f"{copy.url}/index.html?load=keepalive", 20, 50)
    assert_all_succeeded(result)
    finish(copy, result.summary.done)

    check_copy(copy, 1000)
    target = copy.target.access_log_entries()
    assert accesslog.by_status(target) == {200: 1000}
    assert len(accesslog.by_connection(target)) == 20
    assert accesslog.order_faults(target) == []


def test_uploads_over_ipv6_reach_the_target_byte_for_byte(live_copy) -> None:
    copy = live_copy(ipv6=True)
    result = load.upload(copy.lab, CLIENT, f"{copy.url}/upload/1m", 1 << 20, 3, connections=3, seed=6)
    assert_all_succeeded(result)
    finish(copy, 3)

    check_copy(copy, 3)
    sent = [("/upload/1m", 1 << 20, result.body_sha256)] * 3
    assert copy.online.received_bodies() == sent
    assert copy.target.received_bodies() == sent, "the target kept other bytes than the client sent"
    assert accesslog.by_status(copy.target.access_log_entries()) == {UPLOAD_STATUS: 3}
