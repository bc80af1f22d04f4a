"""End to end: Redis, small commands on persistent connections, copied command for command.

Each test starts a real redis-server on the online host and on the target (port 6379, beside
the usual nginx: ``LiveCopy(redis_port=...)``), intercept and tcpcopy, drives redis-benchmark
from the client host against the online server (100 connections, 50,000 SETs then 50,000
GETs on random keys, as fast as the online server answers, one command in flight per
connection or 16 pipelined), waits until the target's counters stop growing, and checks what
a user would check with ``INFO commandstats`` and ``DBSIZE`` on both servers: every SET and
GET that reached the online server reached the target, and the target holds as many keys.
"""

from __future__ import annotations

import json
import time

import pytest

from tcpcopy.lab.kvstore import Redis, redis_benchmark, wait_until_quiet
from tcpcopy.lab.netns import CLIENT, ONLINE_ADDRESS
from tcpcopy.lab.livecopy import LiveCopy

pytestmark = pytest.mark.lab

REDIS_PORT = 6379
CLIENTS = 100
REQUESTS = 50_000  # per command: SET then GET, each on 100 fresh connections
KEYSPACE = 100_000
LOAD_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0
QUIET_S = 3.0
COMMANDS = ("set", "get")


def copied_counts(redis: Redis) -> dict[str, int]:
    stats = redis.command_stats()
    return {name: stats.get(name, 0) for name in COMMANDS}


def drain(redis: Redis, timeout: float = DRAIN_TIMEOUT_S, quiet: float = QUIET_S) -> tuple[dict[str, int], float]:
    """The target's SET and GET calls once they stopped changing, and when they last changed."""
    return wait_until_quiet(lambda: copied_counts(redis), timeout, quiet)


def copier_summary(copy: LiveCopy) -> dict:
    """tcpcopy's ``--summary-json`` (written when it stops)."""
    return json.loads(copy.summary_path.read_text()) if copy.summary_path.exists() else {}


def copier_figures(summary: dict) -> str:
    """What tcpcopy's summary says of the sessions and of drops, for failure messages."""
    keep = {key: summary.get(key) for key in ("owner", "table", "engine", "capture", "stop_reason") if key in summary}
    return json.dumps(keep, indent=1, sort_keys=True)[-4000:]


def run_copied_benchmark(live_copy, pipeline: int) -> None:
    copy = live_copy(redis_port=REDIS_PORT)
    copy.online_redis.flush()
    copy.target_redis.flush()

    result = redis_benchmark(copy.lab, CLIENT, ONLINE_ADDRESS, REDIS_PORT, clients=CLIENTS, requests=REQUESTS,
                             pipeline=pipeline, tests=COMMANDS, keyspace=KEYSPACE, timeout_s=LOAD_TIMEOUT_S)
    load_done = time.monotonic()
    online = copied_counts(copy.online_redis)
    target, settled = drain(copy.target_redis)
    online_keys, target_keys = copy.online_redis.key_count(), copy.target_redis.key_count()
    copy.stop_tcpcopy()
    copy.stop_intercept()

    summary = copier_summary(copy)
    owner = summary.get("owner", {})
    rates = ", ".join(f"{name.upper()} {rate:,.0f}/s" for name, rate in result.rates.items())
    print(f"\nredis -P {pipeline}: online {online} keys {online_keys}; target {target} keys {target_keys}; "
          f"online rate {rates} ({result.total_requests} commands in {result.seconds:.2f} s); "
          f"copier lag {max(0.0, settled - load_done):.2f} s after the load; "
          f"owner input lag max {owner.get('input_lag_max_ms')} ms; outcomes {owner.get('outcomes')}")
    assert online == {name: REQUESTS for name in COMMANDS}, f"the online server did not see the load:\n{result.output}"
    figures = copier_figures(summary)
    for name in COMMANDS:
        assert target[name] == online[name], \
            f"{name.upper()}: online {online[name]}, target {target[name]}; tcpcopy summary:\n{figures}"
    assert target_keys == online_keys, f"keys: online {online_keys}, target {target_keys}; tcpcopy summary:\n{figures}"


def test_set_and_get_on_100_connections_reach_the_target(live_copy) -> None:
    run_copied_benchmark(live_copy, pipeline=1)


def test_pipelined_set_and_get_reach_the_target(live_copy) -> None:
    run_copied_benchmark(live_copy, pipeline=16)
