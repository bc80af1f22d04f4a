"""End to end: a copier offered more than it can copy degrades, it does not collapse.

Unthrottled keep-alive load (100 connections, as fast as the online nginx answers) is more
than one Python owner replays on this box. The copier must keep copying whole sessions at
its capacity and shed the rest whole: every request the target gets is complete, the
shedding is counted, memory stays within the budget, and the copy does not collapse: it
copies at least 90% as much per CPU second as when asked for a rate it sustains.

That last comparison is made per CPU second of the copier (capture worker and owner): on
a two-core box the load tool at its maximum rate takes CPU the copier would otherwise
have, so requests per wall-clock second fall for a reason that is not the copier's. What
shedding itself may waste (skipping the packets of shed sessions, work done on a session
before it was shed) shows as more CPU per copied request; shed connections are dropped in
the capture worker's kernel filter, so most of their packets cost nothing. The sustained run
goes at the rate the overloaded copy reached.

The figure is a ratio of two CPU measurements on a box the load tool shares, noisy by more
than ten points. It moved from 83-103% (median 86%) to 83-127% (median about 100%, nine runs
on two cores) when the kernel filter of skipped connections came to be swapped without a
gap (libpcap's own swap lost packets of live sessions, which then died of capture gaps) and
live sessions were shed up to half a step at a time (peak lag 2.4-3.4 s instead of 4-5.4 s,
so fewer queued packets of shed sessions were captured for nothing); and to 97-114% (median
110%, six runs) once pure client ACKs stayed in the kernel, which halved the packets a
keep-alive request costs the capture and the owner. The test fails below 80%, a floor under
that noise that still catches a copier whose shedding wastes its CPU; the printed figure is
the measurement.
"""

from __future__ import annotations

import json
import time

import pytest

from tcpcopy.lab import accesslog, load
from tcpcopy.lab.netns import CLIENT
from tcpcopy.lab.livecopy import LiveCopy

pytestmark = pytest.mark.lab

CONNECTIONS = 100
SECONDS = 8.0
BUDGET_MB = 256
# Seconds of lag before shedding: the default (10) sits above what a burst as short as this
# test's load builds up, and the load is kept short.
SHED_AFTER = 2.0


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
    copy = live_copy(tcpcopy_flags=["--buffer-budget", str(BUDGET_MB), "--shed-after", str(SHED_AFTER)])
    online, copied, _lag = run_keepalive(copy, None, "flood")
    copy.stop_tcpcopy()
    summary = json.loads(copy.summary_path.read_text())
    statuses = accesslog.by_status(copied)
    overload_rate = copy_rate(copied)
    table = summary["table"]
    shed = table["connections_shed"] + summary["owner"]["outcomes"].get("dropped:shed", 0)
    print(f"\nunthrottled: online {online} requests in {SECONDS:g} s ({online / SECONDS:.0f}/s); "
          f"target {len(copied)} at {overload_rate:.0f}/s; shed {shed} sessions "
          f"({table['connections_shed']} new), "
          f"skipped {table['packets_skipped']} packets in the owner, "
          f"{summary['owner']['kernel_skip_updates']} kernel skip lists sent; outcomes {summary['owner']['outcomes']}; "
          f"peak lag {summary['owner']['input_lag_max_ms']:.0f} ms; "
          f"buffers peak {summary['buffers']['peak_bytes'] >> 20} MiB")
    print(next((line for line in copy.log("tcpcopy").splitlines() if "capture: captured:" in line), ""))
    print("\n".join(line for line in copy.log("tcpcopy").splitlines() if "shed" in line or "behind" in line))
    rss = {f.name: f.peak_rss_mb for f in copy.figures.values()}
    print(f"peak RSS MB: {rss}")

    # Every copied request is whole: the target answered each with what online did.
    assert set(statuses) == {200}, statuses
    # Overload was real, and it was met by shedding whole sessions, counted.
    assert len(copied) < online
    assert shed > 0
    assert summary["buffers"]["peak_bytes"] <= BUDGET_MB << 20
    assert rss["tcpcopy"] < BUDGET_MB + 200, rss

    # The same copier at the rate it reached under overload, which it must sustain.
    cpu_over = copier_cpu(copy)
    copy.start_tcpcopy()
    probe_rate = max(CONNECTIONS, int(overload_rate / CONNECTIONS) * CONNECTIONS)
    online_probe, copied_probe, lag = run_keepalive(copy, probe_rate, "probe")
    copy.stop_tcpcopy()
    cpu_probe = copier_cpu(copy)
    kept_up = len(copied_probe) >= 0.99 * online_probe and lag < 5.0
    cost_over, cost_probe = cpu_over / len(copied) * 1e6, cpu_probe / len(copied_probe) * 1e6
    print(f"sustained run at {probe_rate}/s: online {online_probe}, target {len(copied_probe)}, "
          f"target finished {lag:.1f} s after the load; copier CPU per copied request: "
          f"{cost_over:.0f} us under overload, {cost_probe:.0f} us sustained "
          f"(overload copies {cost_probe / cost_over:.0%} as many per CPU second)")
    assert online_probe >= 0.9 * probe_rate * SECONDS, "the box could not even offer the sustained load"
    if kept_up:
        # At least 90% of the copying per CPU second it does when it keeps up, less the
        # measurement's noise (module docstring).
        assert cost_over <= cost_probe / 0.8, (
            f"overload copies {cost_probe / cost_over:.0%} as many per CPU second as a sustained run "
            "(target 90%): shedding wastes CPU")


def copier_cpu(copy: LiveCopy) -> float:
    """CPU seconds of the last tcpcopy process and its capture worker (measured when it stopped)."""
    return sum(copy.figures[name].cpu_seconds for name in ("tcpcopy", "tcpcopy/worker"))
