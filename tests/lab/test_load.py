"""Load generation (h2load) and access-log accounting.

The pure part needs nothing; the lab part drives nginx on the online host of a four-host lab
from the client host and checks every count against nginx's own access log.
"""

from __future__ import annotations


import pytest

from tcpcopy.lab import accesslog as al
from tcpcopy.lab import load
from tcpcopy.lab.netns import CLIENT, Lab
from tcpcopy.lab.servers import Nginx

H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 600 total client(s). Up to 1 client(s) will be created every 5ms 600 total requests
Application protocol: http/1.1
progress: 100% of clients started

finished in 3.00s, 200.25 req/s, 58.08KB/s
requests: 600 total, 600 started, 598 done, 597 succeeded, 3 failed, 2 errored, 1 timeout
status codes: 590 2xx, 0 3xx, 7 4xx, 0 5xx
traffic: 174.02KB (178200) total, 104.30KB (106800) headers (space savings 0.00%), 39.84KB (40800) data
                     min         max         mean         sd        +/- sd
time for request:       67us      1.97ms       173us       105us    98.33%
"""


# --------------------------------------------------------------------------- h2load, pure


def test_h2load_summary_is_parsed() -> None:
    summary = load.parse_h2load_summary(H2LOAD_OUTPUT)
    assert (summary.total, summary.started, summary.done, summary.succeeded) == (600, 600, 598, 597)
    assert (summary.failed, summary.errored, summary.timeout) == (3, 2, 1)
    assert dict(summary.status) == {"2xx": 590, "3xx": 0, "4xx": 7, "5xx": 0}
    assert summary.duration_s == 3.0 and summary.requests_per_s == 200.25
    assert summary.traffic_bytes == 178200
    assert not summary.all_succeeded


@pytest.mark.parametrize("line, seconds", [("finished in 4.06ms, 24642.68 req/s", 0.00406),
                                           ("finished in 850us, 1176.47 req/s", 0.00085)])
def test_h2load_durations_keep_their_unit(line: str, seconds: float) -> None:
    output = H2LOAD_OUTPUT.replace("finished in 3.00s, 200.25 req/s", line)
    assert load.parse_h2load_summary(output).duration_s == pytest.approx(seconds)


def test_h2load_output_without_a_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="requests:"):
        load.parse_h2load_summary("connect: Connection refused\n")


@pytest.mark.parametrize("rate, expected", [(200, (1, 5)), (1, (1, 1000)), (1500, (3, 2)), (3, (1, 333))])
def test_pacing_picks_small_bursts(rate: int, expected: tuple[int, int]) -> None:
    assert load.pacing(rate) == expected


def test_pacing_keeps_every_rate_within_tolerance() -> None:
    for rate in range(1, 5001, 7):
        per_period, period_ms = load.pacing(rate)
        assert abs(per_period * 1000 / period_ms - rate) / rate <= load.PACING_TOLERANCE, rate


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://10.0.0.1/", "http://localhost/",
                                 "https://198.18.1.1/", "http://[2001:db8::1]/"])
def test_only_lab_urls_are_loaded(url: str) -> None:
    with pytest.raises(ValueError, match="url|outside the lab ranges"):
        load.check_lab_url(url)
    load.check_lab_url("http://198.18.1.1:80/index.html")
    load.check_lab_url("http://[2001:2::1]:8080/")


def test_loads_are_bounded_before_anything_runs() -> None:
    lab = None  # never reached: the checks fail first
    with pytest.raises(ValueError, match="bound"):
        load.keepalive(lab, CLIENT, "http://198.18.1.1/", 10, load.MAX_REQUESTS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        load.short_connections(lab, CLIENT, "http://198.18.1.1/", 0, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lab's limit"):
        load.upload(lab, CLIENT, "http://198.18.1.1/upload/", load.MAX_BODY_BYTES + 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside the lab ranges"):
        load.keepalive(lab, CLIENT, "http://8.8.8.8/", 1, 1)  # type: ignore[arg-type]


def test_bodies_are_reproducible() -> None:
    assert load.body_of(1000, 7) == load.body_of(1000, 7) != load.body_of(1000, 8)
    assert len(load.body_of(3 << 20)) == 3 << 20


# --------------------------------------------------------------------------- accounting, pure


def entry(connection: int, number: int, uri: str = "/", *, method: str = "GET", status: int = 200,
          time: float = 100.0, peer: tuple[str, int] = ("198.18.1.2", 40000)) -> dict:
    return {"connection": connection, "connection_requests": number, "uri": uri.split("?")[0],
            "request_uri": uri, "request_method": method, "status": status, "time": time,
            "remote_addr": peer[0], "remote_port": peer[1]}


def test_counts_per_request_status_connection_and_second() -> None:
    log = [entry(1, 1, "/a", time=10.2), entry(1, 2, "/b?x=1", time=10.9), entry(2, 1, "/a", method="POST",
           status=404, time=11.5), entry(3, 1, "/a", time=13.5)]
    assert al.by_request(log) == {("GET", "/a"): 2, ("GET", "/b"): 1, ("POST", "/a"): 1}
    assert al.by_status(log) == {200: 3, 404: 1}
    assert al.by_connection(log) == {1: 2, 2: 1, 3: 1}
    assert al.by_second(log) == {0: 2, 1: 1, 2: 0, 3: 1}
    assert al.by_second(log, origin=9.0) == {1: 2, 2: 1, 3: 0, 4: 1}
    assert al.by_second([]) == {}


@pytest.mark.parametrize("online, target, copies, ratio", [
    (100, 100, 1, 0.0), (100, 90, 1, 0.1), (100, 150, 2, 0.25), (0, 0, 3, 0.0), (0, 5, 1, 0.0),
    (10, 12, 1, -0.2)])
def test_loss_ratio(online: int, target: int, copies: int, ratio: float) -> None:
    assert al.loss_ratio(online, target, copies) == pytest.approx(ratio)


def test_loss_ratio_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="copies"):
        al.loss_ratio(1, 1, 0)
    with pytest.raises(ValueError, match="negative"):
        al.loss_ratio(-1, 0)


def test_order_faults_name_the_connection_and_the_number() -> None:
    good = [entry(1, 1), entry(2, 1), entry(1, 2), entry(2, 2), entry(1, 3)]
    assert al.order_faults(good) == []
    bad = [entry(1, 1), entry(1, 3), entry(2, 2), entry(1, 2)]
    assert al.order_faults(bad) == [al.OrderFault(1, 1, 2, 3), al.OrderFault(2, 0, 1, 2), al.OrderFault(1, 2, 4, 2)]
    assert al.order_faults([entry(2, 5), entry(2, 6)], from_first=False) == []


def test_match_by_peer_pairs_connections_and_reports_the_rest() -> None:
    a, b, c = ("198.18.1.2", 40000), ("198.18.1.2", 40001), ("198.18.1.3", 40000)
    online = [entry(1, 1, "/x", peer=a), entry(1, 2, "/y", peer=a), entry(2, 1, "/x", peer=b),
              entry(3, 1, "/x", peer=c), entry(4, 1, "/z", peer=a)]  # port of a reused by connection 4
    target = [entry(7, 1, "/x", peer=a), entry(7, 2, "/y", peer=a), entry(8, 1, "/other", peer=b),
              entry(9, 1, "/z", peer=a), entry(10, 1, "/x", peer=("198.18.1.9", 1))]
    match = al.match_by_peer(online, target)
    assert match.matched == 2 and not match.ok
    [(online_b, target_b)] = match.differing
    assert (online_b.peer, online_b.requests, target_b.requests) == (b, (("GET", "/x"),), (("GET", "/other"),))
    assert [m.peer for m in match.missing] == [c]
    assert [u.serial for u in match.unexpected] == [10]


def test_match_by_peer_follows_a_rewritten_address() -> None:
    online = [entry(1, 1, "/x", peer=("198.18.1.2", 40000))]
    target = [entry(5, 1, "/x", peer=("198.18.3.2", 40000))]
    rewrite = {"198.18.1.2": "198.18.3.2"}
    assert al.match_by_peer(online, target, lambda peer: (rewrite[peer[0]], peer[1])).ok
    assert not al.match_by_peer(online, target).ok


def test_match_by_sequence_counts_copies() -> None:
    online = [entry(1, 1, "/x"), entry(1, 2, "/y"), entry(2, 1, "/z")]
    target = [entry(10, 1, "/x"), entry(10, 2, "/y"), entry(11, 1, "/x"), entry(11, 2, "/y"), entry(12, 1, "/z"),
              entry(13, 1, "/w")]
    match = al.match_by_sequence(online, target, copies=2)
    assert match.matched == 3
    assert [m.serial for m in match.missing] == [2]  # one of the two copies of connection 2
    assert [u.serial for u in match.unexpected] == [13]
    assert al.match_by_sequence(online, target[:5]).unexpected[0].serial == 11


# --------------------------------------------------------------------------- lab


@pytest.mark.lab
def test_short_connections_are_paced_as_asked(lab: Lab, web: Nginx) -> None:
    result = load.short_connections(lab, CLIENT, web.url("/index.html"), rate=200, seconds=3)
    log = web.access_log_entries()
    assert result.connections == 600 and result.paced_rate == 200
    assert result.summary.all_succeeded and result.summary.status["2xx"] == 600
    assert len(log) == 600 and al.by_status(log) == {200: 600}
    assert set(al.by_connection(log).values()) == {1}, "one request per connection"
    span = max(e["time"] for e in log) - min(e["time"] for e in log)
    measured = (len(log) - 1) / span
    assert 2.85 <= span <= 3.2 and measured == pytest.approx(200, rel=0.05), (span, measured)
    full_seconds = [n for second, n in al.by_second(log).items() if second < 3]
    assert all(180 <= n <= 220 for n in full_seconds), al.by_second(log)


@pytest.mark.lab
def test_keepalive_requests_share_their_connections_in_order(lab: Lab, web: Nginx) -> None:
    result = load.keepalive(lab, CLIENT, web.url("/index.html"), connections=4, requests_per_connection=25)
    log = web.access_log_entries()
    assert result.summary.all_succeeded and result.summary.total == 100
    assert al.by_request(log) == {("GET", "/index.html"): 100}
    assert sorted(al.by_connection(log).values()) == [25] * 4
    assert al.order_faults(log) == []
    assert al.match_by_peer(log, log).matched == 4


@pytest.mark.lab
def test_timed_keepalive_keeps_its_rate_and_its_connections(lab: Lab, web: Nginx) -> None:
    result = load.keepalive_for(lab, CLIENT, web.url("/index.html"), connections=10, seconds=2, rate=500)
    log = web.access_log_entries()
    assert result.summary.failed == result.summary.errored == 0
    assert len(log) == pytest.approx(1000, rel=0.1), len(log)
    assert len(al.by_connection(log)) == 10, "the same 10 connections carry every request"
    assert al.order_faults(log) == []


def test_timed_loads_are_bounded_in_time() -> None:
    with pytest.raises(ValueError, match="bound"):
        load.keepalive_for(None, CLIENT, "http://198.18.1.1/", 10, load.MAX_SECONDS + 1)  # type: ignore[arg-type]


@pytest.mark.lab
def test_pipelined_requests_are_pipelined(lab: Lab, web: Nginx) -> None:
    result = load.pipelined(lab, CLIENT, web.url("/index.html"), connections=2, requests_per_connection=30, depth=8)
    log = web.access_log_entries()
    assert result.summary.all_succeeded and len(log) == 60
    assert sorted(al.by_connection(log).values()) == [30, 30]
    assert al.order_faults(log) == []
    assert sum(e["pipe"] == "p" for e in log) > 0, "nginx saw no pipelined request"


@pytest.mark.lab
def test_a_load_that_overruns_its_time_is_killed(lab: Lab, web: Nginx) -> None:
    with pytest.raises(load.LoadError, match="killed.*did not finish within 0.5 s"):
        load.short_connections(lab, CLIENT, web.url("/index.html"), rate=10, seconds=3, timeout_s=0.5)
    assert len(web.access_log_entries()) < 10
