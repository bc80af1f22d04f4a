"""Watching a live copy: every process publishes its counters, `top --once --json` and
/metrics show them while the copy runs."""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import pytest

from tcpcopy.lab import load
from tcpcopy.lab.netns import CLIENT, ONLINE, ONLINE_CONTROL_SIDE

pytestmark = pytest.mark.lab

STATS = f"tcp://{ONLINE_CONTROL_SIDE}:36600"   # the online host's control-side address


def test_top_once_json_shows_every_process_of_a_running_copy(live_copy) -> None:
    copy = live_copy(tcpcopy_flags=["--stats", STATS], intercept_flags=["--stats", STATS])
    top = copy.lab.popen(ONLINE, [sys.executable, "-m", "tcpcopy.cluster.ops.top", "--stats", STATS,
                                  "--once", "--json"], stdout=-1, stderr=-1)
    load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html", rate=200, seconds=2)
    out, err = top.communicate(timeout=30)
    assert top.returncode == 0, err
    snapshot = json.loads(out)
    roles = {p["role"] for p in snapshot["processes"]}
    assert roles == {"owner", "capture", "intercept"}, snapshot
    owner = next(p for p in snapshot["processes"] if p["role"] == "owner")
    assert owner["counters"]["engine.established"] > 0
    assert owner["counters"]["rss_bytes"] > 0
    intercept = next(p for p in snapshot["processes"] if p["role"] == "intercept")
    assert intercept["counters"]["registered"] > 0 and intercept["counters"]["resp_records"] > 0


def test_metrics_endpoint_serves_the_copy_in_prometheus_text(live_copy) -> None:
    copy = live_copy(tcpcopy_flags=["--stats", STATS], intercept_flags=["--stats", STATS])
    metrics = copy.lab.popen(ONLINE, [sys.executable, "-m", "tcpcopy.cluster.ops.metrics", "--stats", STATS,
                                      "--listen", "127.0.0.1:9464"], stdout=-1, stderr=-1)
    try:
        load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html", rate=200, seconds=2)
        time.sleep(1.5)
        page = copy.lab.call(ONLINE, _scrape, "http://127.0.0.1:9464/metrics")
    finally:
        copy.lab.stop(metrics)
    lines = [line for line in page.splitlines() if line and not line.startswith("#")]
    established = [line for line in lines if line.startswith("tcpcopy_engine_established_total{")]
    assert established and float(established[0].rsplit(" ", 1)[1]) > 0, page[:2000]
    assert any(line.startswith('tcpcopy_up{') and 'role="intercept"' in line
               and float(line.rsplit(" ", 1)[1]) == 1 for line in lines), page[:2000]


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()
