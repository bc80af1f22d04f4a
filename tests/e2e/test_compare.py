"""End to end: the copier compares what the target answered with what the online server
answered, request by request, and gates on it.

The online nginx and the target nginx serve the same site but for two paths: one whose body
changed (same status, same length) and one the target no longer has (404). Every request
to those two paths, and only those, must be reported, each under its verdict; the JSON-lines
file names them; and ``--fail-on`` turns a difference into exit status 3. With identical
sites, thousands of keep-alive requests compare without a single difference. A Redis target
with other values for some keys is caught by the byte comparison. With a baseline beside the
target, a random token in every page is noise and only a real change is reported. Both
sides' latency is measured, and a path the online server answers slowly reads slow on the
online side only; the run report built from tcpcopy's summary has the comparison section.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tcpcopy.cluster.ops.report import build_report
from tcpcopy.lab import load
from tcpcopy.lab.kvstore import wait_until_quiet
from tcpcopy.lab.netns import CLIENT, ONLINE, ONLINE_ADDRESS
from tcpcopy.lab.servers import default_site
from tcpcopy.lab.slowbackend import SlowBackend
from tests.e2e.sites import CHANGED, GONE, ONLINE_SITE, SAME, TARGET_SITE

pytestmark = pytest.mark.lab

INTERCEPT = ["--answer-bytes", "65536"]
REDIS_PORT = 6379


def compared_run(live_copy, tmp_path, online_site, target_site, loads, fail_on: str, **copy_options):
    """A copy comparing every session; ``loads``: (path, connections, requests each).
    Returns (tcpcopy's exit status, its summary, the difference records, online requests)."""
    log = tmp_path / "differences.jsonl"
    copy = live_copy(online_files=online_site, target_files=target_site, intercept_flags=INTERCEPT,
                     tcpcopy_flags=["--compare", "100", "--compare-log", str(log), "--fail-on", fail_on],
                     **copy_options)
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


TOKEN = "PAGE_TOKEN"
TOKEN_SITE = {**default_site(), "a.html": b"<p>your token: PAGE_TOKEN</p>\n" + b"the same text\n" * 30,
              "b.html": b"<form><input name=csrf value=PAGE_TOKEN></form>\n" * 3,
              "changed.html": b"<p>PAGE_TOKEN</p> version one\n"}
CANDIDATE_SITE = {**TOKEN_SITE, "changed.html": b"<p>PAGE_TOKEN</p> version two\n"}


def test_with_a_baseline_random_tokens_are_noise_and_only_the_changed_path_is_reported(live_copy, tmp_path):
    """Online, baseline and candidate nginx each put a random token in every page (nginx's
    $request_id); the candidate also changed one page. Without the baseline every answer
    would differ; with it, only the changed page's requests are reported."""
    loads = [("/a.html", 5, 40), ("/b.html", 5, 40), ("/changed.html", 5, 10), ("/a.html", 20, 1)]
    code, summary, records, online = compared_run(
        live_copy, tmp_path, TOKEN_SITE, CANDIDATE_SITE, loads, "body_differs>0.5",
        baseline_files=TOKEN_SITE, token=TOKEN)
    compare = summary["compare"]
    print(f"\ncompared {compare['compared']} of {online} requests: {compare['counts']}; baseline sessions "
          f"{compare['baseline_sessions']}, noise ignored {compare['noise_ignored']}, judged without "
          f"the baseline {compare['without_baseline']}")
    assert compare["compared"] == online and compare["not_captured"] == 0
    assert compare["baseline_sessions"] == 35 and compare["without_baseline"] == 0
    assert compare["counts"]["body_differs"] == 50
    assert compare["counts"]["same"] == online - 50
    assert {record["request"].split()[1] for record in records} == {"/changed.html"}
    assert compare["noise_ignored"] >= online - 50   # in every answer judged the same, a token was ignored
    assert code == 0, "a 5% difference share is below --fail-on body_differs>0.5"


SLOW = "/slow.html"
SLOW_DELAY = (0.2, 0.3)   # seconds the online server's backend waits before each answer of SLOW


def test_both_latencies_are_measured_a_slow_online_path_reads_slow_and_the_report_has_the_section(
        lab, live_copy, tmp_path):
    """The online nginx answers SLOW through a backend that waits 0.2-0.3 s, the target
    serves it at once (another version of it: its requests are reported with both
    latencies). The online latency comes from capture times, so it is the online server's
    own: at least the backend's delay on SLOW, a few ms elsewhere; the target's is measured
    for every request too, and stays well below the slow path's."""
    online_site = {**default_site(), "same.html": b"the same page\n" * 40}
    target_site = {**online_site, "slow.html": b"slow page, version two\n" * 20}
    with SlowBackend(lab, ONLINE, files={"slow.html": b"slow page, version one\n" * 20}, delay=SLOW_DELAY) as backend:
        code, summary, records, online = compared_run(
            live_copy, tmp_path, online_site, target_site, [(SAME, 5, 40), (SLOW, 2, 10)], "differs>0.5",
            online_proxied={SLOW: backend.upstream})
    compare = summary["compare"]
    latency = compare["latency"]
    print(f"\ncompared {compare['compared']} of {online}: {compare['counts']}; latency {latency}")
    assert compare["compared"] == online == 220 and compare["not_captured"] == 0
    assert compare["counts"]["body_differs"] == 20 and compare["counts"]["same"] == 200
    for side in ("online", "target"):
        figures = latency[side]
        assert figures["samples"] == online, f"{side}: not every answer's latency was measured"
        assert 0 < figures["p50"] <= figures["p90"] <= figures["p99"] < 3.0, (side, figures)
    assert latency["online"]["p50"] < 0.05               # the fast path, as the online server answered it
    assert latency["online"]["p99"] >= SLOW_DELAY[0]     # the slow one
    slow = [r for r in records if r["request"].split()[1] == SLOW]
    assert len(slow) == 20 and {r["verdict"] for r in records} == {"body_differs"}
    assert all(r["online"]["latency"] >= SLOW_DELAY[0] for r in slow), [r["online"]["latency"] for r in slow]
    target_slow = sorted(r["target"]["latency"] for r in slow)
    assert 0 < target_slow[len(target_slow) // 2] < SLOW_DELAY[0] / 2, target_slow
    assert code == 0, "differs>0.5 is not crossed by a tenth of the requests differing"

    paths = build_report([], [], [], 1, [], tmp_path / "report", tcpcopy_summary=summary)
    section = json.loads(paths.json.read_text())["comparison"]
    shares = {v["verdict"]: v["share"] for v in section["verdicts"]}
    assert shares["body_differs"] == pytest.approx(20 / 220) and shares["same"] == pytest.approx(200 / 220)
    assert [e["request"].split()[1] for e in section["examples"]["body_differs"]] == [SLOW] * 3
    assert section["latency"]["online"]["p99"] == latency["online"]["p99"]
    page = paths.html.read_text()
    assert '<section id="comparison">' in page and "first examples: body_differs" in page
