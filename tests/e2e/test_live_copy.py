"""End to end: live copies in the four-host lab, judged by the servers' own logs.

Each test starts nginx on the online host (port 80) and on the target (port 8080), intercept
on the assistant and tcpcopy on the online host (``LiveCopy``), drives real client traffic
from the client host, and then checks what a user would check: what the online server and
the target logged (requests, statuses, bodies, order on each connection, client addresses),
beside the copier's own counters where the scenario is about them.
"""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
import time
from collections import Counter, defaultdict

import pytest

from tcpcopy.lab import accesslog, load
from tcpcopy.lab.netns import (ASSISTANT_TARGET_SIDE, CLIENT, CLIENT_ADDRESS, FAKE_CLIENT_NET,
                                ONLINE_ADDRESS, TARGET)
from tcpcopy.lab.livecopy import ONLINE_PORT, LiveCopy
from tcpcopy.lab.servers import BIG_BIN_SIZE, UPLOAD_STATUS
from tests.e2e import clients

pytestmark = pytest.mark.lab

GREETER_PORT = 2525


# --------------------------------------------------------------------------- helpers


def finish(copy: LiveCopy, expected: int, timeout: float = 20.0) -> int:
    """Wait until the target logged ``expected`` requests (or stopped gaining), then stop
    tcpcopy (which writes its summary) and intercept. Returns the target's count."""
    count = copy.wait_for_target(expected, timeout)
    copy.stop_tcpcopy()
    copy.stop_intercept()
    return count


def summary(copy: LiveCopy) -> dict:
    return json.loads(copy.summary_path.read_text())


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def uris(entries) -> list[str]:
    return [e["request_uri"] for e in entries]


def unreachable_lines(log_text: str) -> list[str]:
    """tcpcopy's log lines that say an intercept cannot be reached."""
    return [line for line in log_text.splitlines() if "intercept" in line and "unreachable" in line]


def assert_all_succeeded(*results) -> None:
    for result in results:
        s = result.summary
        assert s.all_succeeded, f"{type(result).__name__}: the client itself saw failures:\n{s.output}"


# --------------------------------------------------------------------------- 1. short connections


def test_short_connections_1000_per_second_lose_nothing(live_copy) -> None:
    copy = live_copy()
    result = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html", rate=1000, seconds=10)
    assert_all_succeeded(result)
    finish(copy, result.summary.done, timeout=30)
    report = copy.report()

    assert report.online_requests == result.connections == 10_000
    assert report.target_requests == report.online_requests, report.render()
    assert report.loss_ratio == 0, report.render()
    assert report.target_status == {200: report.online_requests}, report.render()
    target = copy.target.access_log_entries()
    assert len(accesslog.by_connection(target)) == report.online_requests  # one request per connection
    # The lab's links offload checksums as real hosts do: what was captured was partial,
    # and was completed before it was sent.
    assert summary(copy)["table"]["checksums_completed"] > 0


# --------------------------------------------------------------------------- 2. keep-alive, pipelining


def test_keepalive_and_pipelined_requests_arrive_complete_and_in_order(live_copy) -> None:
    copy = live_copy()
    keepalive = load.keepalive(copy.lab, CLIENT, f"{copy.url}/index.html?load=keepalive", 20, 100)
    pipelined = load.pipelined(copy.lab, CLIENT, f"{copy.url}/index.html?load=pipelined", 10, 50, depth=8)
    assert_all_succeeded(keepalive, pipelined)
    total = keepalive.summary.done + pipelined.summary.done
    finish(copy, total)
    online = copy.online.access_log_entries()
    target = copy.target.access_log_entries()

    assert len(online) == total == 2500
    assert len(target) == len(online), copy.report().render()
    assert accesslog.by_status(target) == {200: total}
    assert accesslog.order_faults(target) == []
    match = accesslog.match_by_sequence(online, target)
    assert match.ok, f"missing {match.missing[:3]} unexpected {match.unexpected[:3]}"
    assert match.matched == 30
    pipes = Counter(e["pipe"] for e in online if "pipelined" in e["request_uri"])
    assert pipes["p"] > 0, "the client did not pipeline: the scenario would prove nothing"


# --------------------------------------------------------------------------- 3. big bodies both ways


def test_large_request_bodies_and_large_responses_are_copied_whole(live_copy) -> None:
    copy = live_copy()
    small = load.upload(copy.lab, CLIENT, f"{copy.url}/upload/150k", 150_000, 20, connections=4, seed=1)
    large = load.upload(copy.lab, CLIENT, f"{copy.url}/upload/1m", 1 << 20, 5, connections=1, seed=2)
    big = load.keepalive(copy.lab, CLIENT, f"{copy.url}/big.bin", 3, 10)
    assert_all_succeeded(small, large, big)
    finish(copy, 55)

    sent = Counter({("/upload/150k", 150_000, small.body_sha256): 20, ("/upload/1m", 1 << 20, large.body_sha256): 5})
    online_bodies = Counter(copy.online.received_bodies())
    target_bodies = Counter(copy.target.received_bodies())
    assert online_bodies == sent
    assert target_bodies == online_bodies, f"target kept {target_bodies}"

    online = copy.online.access_log_entries()
    target = copy.target.access_log_entries()
    target_uploads = [e for e in target if e["uri"].startswith("/upload/")]
    assert [e["status"] for e in target_uploads] == [UPLOAD_STATUS] * 25

    online_big = [e for e in online if e["uri"] == "/big.bin"]
    target_big = [e for e in target if e["uri"] == "/big.bin"]
    assert len(online_big) == 30 and all(e["body_bytes_sent"] == BIG_BIN_SIZE for e in online_big)
    assert len(target_big) == 30, copy.report().render()
    full_response = {e["bytes_sent"] for e in online_big}
    assert len(full_response) == 1
    for entry in target_big:
        assert entry["status"] == 200
        assert entry["body_bytes_sent"] == BIG_BIN_SIZE, entry
        assert entry["bytes_sent"] in full_response, entry
    assert accesslog.order_faults(target) == []


# --------------------------------------------------------------------------- 4. mid-stream join


def _held_connection_run(live_copy, tcpcopy_flags: list[str]):
    """A keep-alive connection that sends a request before tcpcopy starts and five after it;
    then two requests on a new connection. Returns the copy (stopped) and the URIs."""
    copy = live_copy(tcpcopy_flags=tcpcopy_flags, start_copy=False)
    before = ["/index.html?held=before-1"]
    after = [f"/index.html?held=after-{i}" for i in range(1, 6)]
    fresh = ["/index.html?fresh=1", "/index.html?fresh=2"]
    go = multiprocessing.get_context("fork").Event()
    call = copy.lab.spawn(CLIENT, clients.held_keepalive, ONLINE_ADDRESS, ONLINE_PORT, before, after, go)
    try:
        assert wait_until(lambda: uris(copy.online.access_log_entries()) == before, 10), \
            "the request before the copy did not reach the online server"
        copy.start_tcpcopy()
    finally:
        go.set()
    held = call.result(30)
    assert held.before == (200,) and held.after == (200,) * 5
    assert copy.lab.call(CLIENT, clients.http_gets, ONLINE_ADDRESS, ONLINE_PORT, fresh, timeout=30) == [200, 200]
    return copy, before, after, fresh


def test_session_started_before_tcpcopy_is_joined_mid_stream(live_copy) -> None:
    copy, before, after, fresh = _held_connection_run(live_copy, [])
    finish(copy, len(after) + len(fresh))
    target = copy.target.access_log_entries()

    held_at_target = [e for e in target if "held=" in e["request_uri"]]
    assert uris(held_at_target) == after, "the later requests of the held connection were not copied in order"
    assert len(accesslog.by_connection(held_at_target)) == 1
    assert sorted(uris(e for e in target if "fresh=" in e["request_uri"])) == fresh
    assert accesslog.by_status(target) == {200: len(target)}
    assert summary(copy)["engine"]["fabricated_syns"] >= 1


def test_only_full_sessions_skips_the_session_joined_mid_stream(live_copy) -> None:
    copy, before, after, fresh = _held_connection_run(live_copy, ["-O"])
    copy.wait_for_target(len(fresh))
    time.sleep(1.0)  # room for a wrongly copied held request to show up
    finish(copy, len(fresh))
    target = copy.target.access_log_entries()

    assert [e for e in target if "held=" in e["request_uri"]] == []
    assert uris(target) == fresh
    assert summary(copy)["engine"]["fabricated_syns"] == 0


# --------------------------------------------------------------------------- 5. server-first protocol


def _conversations(entries) -> dict[str, list[str]]:
    lines: dict[str, list[str]] = defaultdict(list)
    for entry in entries:
        if entry.event == "line":
            lines[entry.connection].append(entry.text)
    return dict(lines)


def test_server_first_protocol_is_copied_line_by_line(live_copy) -> None:
    copy = live_copy(greeter_port=GREETER_PORT)
    sent = copy.lab.call(CLIENT, clients.greeter_sessions, ONLINE_ADDRESS, GREETER_PORT, 20, 5, timeout=60)

    def closed(greeter) -> int:
        return sum(1 for e in greeter.log_entries() if e.event == "close")

    assert wait_until(lambda: closed(copy.target_greeter) >= 20, 20), \
        f"target greeter closed {closed(copy.target_greeter)} of 20 conversations"
    copy.stop_tcpcopy()
    copy.stop_intercept()
    online = copy.online_greeter.log_entries()
    target = copy.target_greeter.log_entries()

    assert sorted(_conversations(online).values()) == sorted(sent)
    assert sorted(_conversations(target).values()) == sorted(sent)
    target_closes = [e for e in target if e.event == "close"]
    assert [e.text for e in target_closes] == ["server"] * 20, "QUIT was not answered on every copied connection"
    assert {e.peer_addr for e in target} == {CLIENT_ADDRESS}


# --------------------------------------------------------------------------- 6. -c client addresses


def test_client_addresses_rewritten_into_the_pool_the_target_routes(live_copy) -> None:
    copy = live_copy(tcpcopy_flags=["-c", "198.18.3.x"])
    routes = copy.lab.run(TARGET, ["ip", "-4", "route", "show"]).stdout.splitlines()
    assert [r.split()[:3] for r in routes if r.startswith("198.18.3.")] == \
        [[FAKE_CLIENT_NET, "via", ASSISTANT_TARGET_SIDE]], "the target must have one route for the -c pool"

    short = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html?load=short", 200, 2)
    keepalive = load.keepalive(copy.lab, CLIENT, f"{copy.url}/index.html?load=keepalive", 10, 20)
    assert_all_succeeded(short, keepalive)
    finish(copy, short.summary.done + keepalive.summary.done)
    report = copy.report()
    online = copy.online.access_log_entries()
    target = copy.target.access_log_entries()

    assert report.online_requests == 600
    assert report.loss_ratio == 0, report.render()
    pool = ipaddress.ip_network(FAKE_CLIENT_NET)
    outside = [e["remote_addr"] for e in target if ipaddress.ip_address(e["remote_addr"]) not in pool]
    assert outside == []
    assert len({e["remote_addr"] for e in target}) == 1, "one client must be pinned to one pool address"
    assert {e["remote_addr"] for e in online} == {CLIENT_ADDRESS}
    assert accesslog.match_by_sequence(online, target).ok


# --------------------------------------------------------------------------- 7. intercept dies


def test_tcpcopy_stops_when_intercept_is_killed(live_copy) -> None:
    copy = live_copy()
    before = load.keepalive(copy.lab, CLIENT, f"{copy.url}/index.html?phase=before", 5, 20)
    assert_all_succeeded(before)
    assert copy.wait_for_target(100) == 100

    killed_at = time.monotonic()
    copy.kill_intercept()
    try:
        code = copy.tcpcopy.wait(15)
    except Exception:
        pytest.fail("tcpcopy kept running 15 s after intercept was killed (without -L)")
    took = time.monotonic() - killed_at
    log_text = copy.log("tcpcopy")

    assert took < 8.0, f"tcpcopy took {took:.1f} s to stop"
    assert code != 0
    assert unreachable_lines(log_text), f"no log line says intercept is unreachable:\n{log_text[-2000:]}"
    assert "no intercept is reachable" in summary(copy)["stop_reason"]
    copy.stop_tcpcopy()
    target = copy.target.access_log_entries()
    assert len(target) == 100 and accesslog.by_status(target) == {200: 100}


def test_lonely_tcpcopy_survives_intercept_restart_and_copies_again(live_copy) -> None:
    copy = live_copy(tcpcopy_flags=["-L"])
    before = load.keepalive(copy.lab, CLIENT, f"{copy.url}/index.html?phase=before", 5, 20)
    assert_all_succeeded(before)
    assert copy.wait_for_target(100) == 100

    copy.kill_intercept()
    assert wait_until(lambda: unreachable_lines(copy.log("tcpcopy")), 10), copy.log("tcpcopy")[-2000:]
    time.sleep(1.0)
    assert copy.tcpcopy.poll() is None, "tcpcopy -L stopped when intercept went away"

    copy.start_intercept()
    assert wait_until(lambda: "reachable again" in copy.log("tcpcopy"), 10), copy.log("tcpcopy")[-2000:]
    after = load.keepalive(copy.lab, CLIENT, f"{copy.url}/index.html?phase=after", 5, 20)
    short = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html?phase=after-short", 100, 1)
    assert_all_succeeded(after, short)
    copy.wait_for_target(300)
    assert copy.tcpcopy.poll() is None
    code = copy.stop_tcpcopy()
    copy.stop_intercept()
    target = copy.target.access_log_entries()

    assert code == 0
    phases = Counter(e["request_uri"].split("phase=")[1] for e in target)
    assert phases == {"before": 100, "after": 100, "after-short": 100}, copy.report().render()
