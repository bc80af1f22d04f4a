"""The lab Redis's readings and redis-benchmark's bounds, without a lab: what ``INFO
commandstats`` and ``--csv`` output parse to, and which loads are refused before anything runs."""

from __future__ import annotations

import pytest

from tcpcopy.lab import kvstore

COMMANDSTATS = (
    "# Commandstats\r\n"
    "cmdstat_set:calls=50000,usec=61234,usec_per_call=1.22,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_get:calls=49999,usec=40000,usec_per_call=0.80,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_config|resetstat:calls=1,usec=20,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n"
)

CSV = ('"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
       '"p99_latency_ms","max_latency_ms"\n'
       '"SET","36832.41","1.421","0.248","1.351","2.119","2.879","7.431"\n'
       '"GET","35026.27","1.503","0.256","1.439","2.215","3.031","6.903"\n')


def test_commandstats_give_calls_per_command() -> None:
    assert kvstore.parse_command_stats(COMMANDSTATS) == {"set": 50000, "get": 49999, "config|resetstat": 1}
    assert kvstore.parse_command_stats("# Commandstats\r\n") == {}


def test_a_commandstats_line_without_calls_is_an_error() -> None:
    with pytest.raises(ValueError, match="without a number of calls"):
        kvstore.parse_command_stats("cmdstat_set:usec=3\n")


def test_benchmark_csv_gives_the_rate_of_each_test() -> None:
    assert kvstore.parse_benchmark_csv(CSV) == {"set": 36832.41, "get": 35026.27}
    assert kvstore.parse_benchmark_csv("Could not connect to Redis at 198.18.1.1:6379\n") == {}


@pytest.mark.parametrize("address, message", [
    ("10.0.0.1", "outside the lab ranges"),
    ("redis.example", "literal lab IP address"),
    ("2001:db8::1", "outside the lab ranges"),
])
def test_loads_aim_at_lab_addresses_only(address: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kvstore.redis_benchmark(None, "client", address, 6379, requests=10)


@pytest.mark.parametrize("kwargs, message", [
    ({"requests": 0}, "requests must be in"),
    ({"requests": 10_000_000}, "requests must be in"),
    ({"clients": 5000}, "clients must be in"),
    ({"pipeline": 0}, "pipeline must be in"),
    ({"timeout_s": 3600}, "timeout_s must be in"),
    ({"keyspace": 0}, "keyspace must be positive"),
    ({"tests": ("set", "flushall")}, "redis-benchmark's own names"),
    ({"tests": ()}, "redis-benchmark's own names"),
])
def test_loads_are_bounded_and_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kvstore.redis_benchmark(None, "client", "198.18.1.1", 6379, **kwargs)


def test_a_redis_server_listens_on_lab_addresses_only() -> None:
    with pytest.raises(ValueError, match="outside the lab ranges"):
        kvstore.Redis(None, "online", "192.0.2.1", 6379)
    with pytest.raises(ValueError, match="out of range"):
        kvstore.Redis(None, "online", "198.18.1.1", 70000)


def test_a_live_copy_refuses_a_redis_port_another_service_has() -> None:
    from tcpcopy.lab.livecopy import ONLINE_PORT, LiveCopy
    with pytest.raises(ValueError, match="taken by another copied service"):
        LiveCopy(None, redis_port=ONLINE_PORT)
