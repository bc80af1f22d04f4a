"""End to end: the copier compares what the target answered with what the online server
answered, request by request, and gates on it.

The online nginx and the target nginx serve the same site but for two paths: one whose body
changed (same status, same length) and one the target no longer has (404). Every request
to those two paths, and only those, must be reported, each under its verdict; the JSON-lines
file names them; and ``--fail-on`` turns a difference into exit status 3. With identical
sites, thousands of keep-alive requests compare without a single difference. A Redis target
with other values for some keys is caught by the byte comparison.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tcpcopy.lab import load
from tcpcopy.lab.kvstore import wait_until_quiet
from tcpcopy.lab.netns import CLIENT, ONLINE_ADDRESS
from tcpcopy.lab.servers import default_site

pytestmark = pytest.mark.lab

SAME, CHANGED, GONE = "/same.html", "/changed.html", "/gone.html"
ONLINE_SITE = {**default_site(), "same.html": b"the same page\n" * 40,
               "changed.html": b"version one\n" * 40, "gone.html": b"still here\n"}
TARGET_SITE = {**default_site(), "same.html": b"the same page\n" * 40,
               "changed.html": b"version two\n" * 40}
INTERCEPT = ["--answer-bytes", "65536"]
REDIS_PORT = 6379


def compared_run(live_copy, tmp_path, online_site, target_site, loads, fail_on: str):
    """A copy comparing every session; ``loads``: (path, connections, requests each).
    Returns (tcpcopy's exit status, its summary, the difference records, online requests)."""
    log = tmp_path / "differences.jsonl"
    copy = live_copy(online_files=online_site, target_files=target_site, intercept_flags=INTERCEPT,
                     tcpcopy_flags=["--compare", "100", "--compare-log", str(log), "--fail-on", fail_on])
    online, target_before = 0, copy.target.access_log_count()
    for path, connections, requests in loads:
        result = load.keepalive(copy.lab, CLIENT, f"{copy.url}{path}", connections, requests)
        assert result.summary.done == connections * requests, result.summary.output
        online += connections * requests
    copy.wait_for_target(target_before + online, timeout=60)
    time.sleep(3)
    code = copy.stop_tcpcopy()
    summary = json.loads(copy.summary_path.read_text())
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return code, summary, records, online


def test_exactly_the_requests_answered_differently_are_reported_and_fail_the_gate(live_copy, tmp_path):
    loads = [(SAME, 10, 100), (CHANGED, 5, 20), (GONE, 5, 10)]
    code, summary, records, online = compared_run(live_copy, tmp_path, ONLINE_SITE, TARGET_SITE, loads,
                                                  "differs>0")
    compare = summary["compare"]
    print(f"\ncompared {compare['compared']} of {online} requests: {compare['counts']}; "
          f"not captured {compare['not_captured']}; latency {compare['latency']}")
    assert compare["counts"]["body_differs"] == 100
    assert compare["counts"]["status_differs"] == 50
    assert compare["counts"]["same"] == 1000
    assert compare["compared"] == online and compare["not_captured"] == 0
    by_path = {}
    for record in records:
        path = record["request"].split()[1]
        by_path.setdefault(path, set()).add(record["verdict"])
    assert by_path == {CHANGED: {"body_differs"}, GONE: {"status_differs"}}
    assert len(records) == 150
    assert code == 3, "a difference past --fail-on differs>0 must fail the run"


def test_identical_sites_compare_without_a_difference_and_pass_the_gate(live_copy, tmp_path):
    site = {**default_site(), "same.html": b"the same page\n" * 40}
    code, summary, records, online = compared_run(live_copy, tmp_path, site, site,
                                                  [(SAME, 20, 250), ("/index.html", 20, 250)], "differs>0")
    compare = summary["compare"]
    print(f"\ncompared {compare['compared']} of {online} requests: {compare['counts']}; "
          f"not captured online {compare['online_not_captured']}, target {compare['target_not_captured']}")
    assert compare["compared"] == online == 10_000
    assert compare["counts"]["same"] == online and records == []
    assert code == 0


def test_a_redis_target_holding_other_values_is_caught_by_the_byte_comparison(live_copy, tmp_path):
    """Not HTTP: the answers are compared as bytes. The target holds another value for ten
    of a hundred keys; each GET of those ten, and only those, is reported."""
    log = tmp_path / "differences.jsonl"
    copy = live_copy(redis_port=REDIS_PORT, intercept_flags=INTERCEPT,
                     tcpcopy_flags=["--compare", "100", "--compare-log", str(log)])
    for redis in (copy.online_redis, copy.target_redis):
        redis.flush()
    for i in range(100):
        copy.online_redis.cli("SET", f"k:{i}", "same!")
        copy.target_redis.cli("SET", f"k:{i}", "diff!" if i < 10 else "same!")
    for i in range(100):   # one connection a command, as a simple client does it
        copy.lab.run(CLIENT, ["redis-cli", "-h", ONLINE_ADDRESS, "-p", str(REDIS_PORT), "GET", f"k:{i}"],
                     timeout=10)
    wait_until_quiet(lambda: copy.target_redis.command_stats().get("get", 0), 20, 2.0)
    time.sleep(2)
    copy.stop_tcpcopy()
    compare = json.loads(copy.summary_path.read_text())["compare"]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    print(f"\nredis: compared {compare['compared']}: {compare['counts']}")
    assert compare["compared"] == 100 and compare["counts"]["same"] == 90
    assert sorted(int(re.search(r"k:(\d+)", r["request"])[1]) for r in records) == list(range(10))
    assert {r["verdict"] for r in records} == {"body_differs"}
