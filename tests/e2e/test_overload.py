"""End to end: a copier offered more than it can copy degrades, it does not collapse.

Unthrottled keep-alive load (100 connections, as fast as the online nginx answers) is more
than one Python owner replays on this box. The copier must keep copying whole sessions at
its capacity and shed the rest whole: every request the target gets is complete, the
shedding is counted, memory stays within the budget, and the rate it copies at under
overload is at least 90% of the best rate it sustains when asked for less.

"Best sustained" is probed once: a rate-limited run at 1/0.9 of the overloaded copy rate.
If the copier kept up with that, its best is above what it managed under overload by more
than 10%, and the overloaded copy wasted capacity.
"""

from __future__ import annotations

import json
import time

import pytest

from tcpcopy.deploy import accesslog, load
from tcpcopy.deploy.lab import CLIENT
from tcpcopy.deploy.livecopy import LiveCopy

pytestmark = pytest.mark.lab

CONNECTIONS = 100
SECONDS = 8.0
BUDGET_MB = 256


def copy_rate(entries: list[dict]) -> float:
    """Requests per second over the span the target logged them in."""
    times = sorted(e["time"] for e in entries)
    if len(times) < 2:
        return 0.0
    return len(times) / max(times[-1] - times[0], 1e-3)


def run_keepalive(copy: LiveCopy, rate: int | None, tag: str) -> tuple[int, list[dict], float]:
    """The load, then the target given time to drain; (online requests, target entries of
    this run, seconds the target took after the load ended)."""
    online_before = copy.online.access_log_count()
    target_before = copy.target.access_log_count()
    result = load.keepalive_for(copy.lab, CLIENT, f"{copy.url}/index.html?run={tag}", CONNECTIONS,
                                SECONDS, rate=rate)
    ended = time.monotonic()
    online = copy.online.access_log_count() - online_before
    copy.wait_for_target(target_before + online, timeout=60, )
    lag = time.monotonic() - ended
    entries = [e for e in copy.target.access_log_entries()[target_before:]
               if f"run={tag}" in e["request_uri"]]
    assert result.summary.done > 0, result.summary.output
    return online, entries, lag


def test_unthrottled_keepalive_sheds_whole_sessions_and_copies_at_capacity(live_copy) -> None:
    copy = live_copy(tcpcopy_flags=["--buffer-budget", str(BUDGET_MB)])
    online, copied, _lag = run_keepalive(copy, None, "flood")
    copy.stop_tcpcopy()
    summary = json.loads(copy.summary_path.read_text())
    statuses = accesslog.by_status(copied)
    overload_rate = copy_rate(copied)
    table = summary["table"]
    print(f"\nunthrottled: online {online} requests in {SECONDS:g} s ({online / SECONDS:.0f}/s); "
          f"target {len(copied)} at {overload_rate:.0f}/s; shed {table['sessions_shed']}, "
          f"skipped {table['packets_skipped']} packets; outcomes {summary['owner']['outcomes']}; "
          f"peak lag {summary['owner']['input_lag_max_ms']:.0f} ms; "
          f"buffers peak {summary['buffers']['peak_bytes'] >> 20} MiB")
    rss = {f.name: f.peak_rss_mb for f in copy.figures.values()}
    print(f"peak RSS MB: {rss}")

    # Every copied request is whole: the target answered each with what online did.
    assert set(statuses) == {200}, statuses
    # Overload was real, and it was met by shedding whole sessions, counted.
    assert len(copied) < online
    assert table["sessions_shed"] > 0
    assert summary["buffers"]["peak_bytes"] <= BUDGET_MB << 20
    assert rss["tcpcopy"] < BUDGET_MB + 200, rss

    # The probe: can the copier sustain 1/0.9 of what it copied under overload?
    copy.start_tcpcopy()
    probe_rate = int(overload_rate / 0.9 / CONNECTIONS + 1) * CONNECTIONS
    online_probe, copied_probe, lag = run_keepalive(copy, probe_rate, "probe")
    kept_up = len(copied_probe) >= 0.99 * online_probe and lag < 5.0
    print(f"probe at {probe_rate}/s: online {online_probe}, target {len(copied_probe)}, "
          f"target finished {lag:.1f} s after the load")
    assert online_probe >= 0.9 * probe_rate * SECONDS, "the box could not even offer the probe load"
    assert not kept_up, (f"under overload the copier copied {overload_rate:.0f}/s, but it sustains "
                         f"{probe_rate}/s when asked: shedding wasted more than 10% of its capacity")
