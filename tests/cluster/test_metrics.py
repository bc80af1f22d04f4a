"""/metrics: the Prometheus exposition of the cluster's stats (prometheus_client, a custom collector).

The page is parsed by prometheus_client's own parser, and line by line as a strict scraper would (``# HELP``/``# TYPE`` before a family's
samples, metric and label names from the allowed alphabets, quoted and escaped label
values, one sample per series), on a page rendered from a snapshot and on one scraped over
HTTP from 127.0.0.1 while real publishers send stats over ipc://.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tcpcopy.cluster import wire
from prometheus_client.parser import text_string_to_metric_families

from tcpcopy.cluster.ops.metrics import listen_address, main, render_metrics, sanitize, series_for, serve_metrics
from tcpcopy.cluster.ops.aggregator import Aggregator
from tcpcopy.cluster.stats import StatsPublisher

METRIC = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\["\\n])*)"'
SAMPLE = re.compile(rf"^({METRIC})(?:\{{({LABEL}(?:,{LABEL})*)\}})? (\S+)$")
VALUE = re.compile(r"^[+-]?(\d+(\.\d*)?([eE][+-]?\d+)?|Inf|NaN)$")


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def parse(page: str) -> dict:
    """{(metric, ((label, value), ...)): float}, failing on anything a scraper would reject."""
    assert page.endswith("\n")
    assert list(text_string_to_metric_families(page))   # Prometheus's own parser takes it
    types, helps, samples = {}, set(), {}
    for line in page.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(METRIC, name) and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert re.fullmatch(METRIC, name) and name not in types, line
            assert kind in ("counter", "gauge"), line
            types[name] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.group(1), match.group(2) or "", match.group(len(match.groups()))
            assert name in types, f"{name} has no # TYPE before it"
            assert not types[name] == "counter" or name.endswith("_total"), name
            assert VALUE.match(value), line
            pairs = tuple(sorted(re.findall(LABEL, labels)))
            assert len({k for k, _ in pairs}) == len(pairs), line
            assert (name, pairs) not in samples, f"duplicate series {line!r}"
            samples[(name, pairs)] = float(value)
    return samples


def labels(role: str, identity: str, host: str = "", shard: str = "", **more: str) -> tuple:
    """A series' labels as ``parse`` keys them: sorted by name, as the page lists them."""
    return tuple(sorted({"role": role, "identity": identity, "host": host, "shard": shard, **more}.items()))


def kind_of(name: str) -> tuple[str, str]:
    series = series_for(name)
    return series.metric, series.kind


def feed(aggregator: Aggregator, role: str, identity: str, **counters) -> None:
    assert aggregator.ingest(wire.encode_stats(role, identity, counters))


# ---------------------------------------------------------------- pure

@pytest.mark.parametrize("name, expected", [
    ("captured", "captured"), ("outcomes.closed:completed", "outcomes_closed_completed"),
    ("raw_send_failures.EPERM", "raw_send_failures_EPERM"), ("a--b..c", "a_b_c"), ("::", "unnamed")])
def test_figure_names_become_metric_names(name, expected):
    assert sanitize(name) == expected


def test_counters_gauges_and_resource_figures_get_their_types_units_and_labels():
    assert kind_of("requests_sent") == ("tcpcopy_requests_sent", "counter")
    assert kind_of("sessions_active") == ("tcpcopy_sessions_active", "gauge")
    assert kind_of("held_now") == ("tcpcopy_held_now", "gauge")
    assert kind_of("done_total") == ("tcpcopy_done", "counter")      # no _total_total
    cpu = series_for("cpu_user_s")
    assert (cpu.metric, cpu.kind, cpu.labels) == ("tcpcopy_process_cpu_seconds", "counter", {"mode": "user"})
    assert kind_of("rss_bytes") == ("tcpcopy_process_resident_memory_bytes", "gauge")
    lag = series_for("owner.input_lag_ms")
    assert (lag.metric, lag.kind, lag.scale) == ("tcpcopy_owner_input_lag_seconds", "gauge", 0.001)
    assert series_for("owner.outcomes.dropped:syn_timeout").labels == {"outcome": "dropped", "reason": "syn_timeout"}
    assert series_for("engine.closed.completed").metric == "tcpcopy_engine_session_outcomes"
    assert series_for("raw_send_failures.EPERM").labels == {"errno": "EPERM"}


def test_a_rendered_page_parses_and_carries_every_figure(tmp_path):
    clock = Clock()
    aggregator = Aggregator(f"ipc://{tmp_path}/stats", clock=clock)
    try:
        feed(aggregator, "owner", 'owner-0@on"line', pid=7, published_at=1.0, requests_sent=12,
             sessions_active=4, outcomes={"dropped:syn_timeout": 2}, rtt=0.125, cpu_user_s=1.5,
             client_content_packets=100, content_packets_sent=99)
        feed(aggregator, "intercept", "intercept-2@assist1", pid=8, published_at=1.0,
             routes=3, resp_records=40, num_fds=12)
        samples = parse(render_metrics(aggregator.snapshot_json()))
    finally:
        aggregator.close()
    owner = labels("owner", 'owner-0@on\\"line', 'on\\"line', "0")
    intercept = labels("intercept", "intercept-2@assist1", "assist1", "2")
    assert samples[("tcpcopy_requests_sent_total", owner)] == 12
    assert samples[("tcpcopy_sessions_active", owner)] == 4
    outcome = labels("owner", 'owner-0@on\\"line', 'on\\"line', "0", outcome="dropped", reason="syn_timeout")
    assert samples[("tcpcopy_session_outcomes_total", outcome)] == 2
    assert samples[("tcpcopy_rtt_total", owner)] == 0.125
    assert samples[("tcpcopy_process_cpu_seconds_total", labels("owner", 'owner-0@on\\"line', 'on\\"line', "0", mode="user"))] == 1.5
    assert samples[("tcpcopy_routes", intercept)] == 3
    assert samples[("tcpcopy_process_open_fds", intercept)] == 12
    assert samples[("tcpcopy_up", owner)] == 1
    assert samples[("tcpcopy_content_loss_ratio", ())] == pytest.approx(0.01)
    assert not any(name in ("tcpcopy_pid_total", "tcpcopy_pid", "tcpcopy_published_at")
                   for name, _ in samples)


def test_names_that_collide_after_sanitizing_still_give_one_series(tmp_path):
    aggregator = Aggregator(f"ipc://{tmp_path}/stats", clock=Clock())
    try:
        feed(aggregator, "owner", "owner-0", **{"a.b": 1, "a_b": 2, "a:b": 3})
        samples = parse(render_metrics(aggregator.snapshot_json()))
    finally:
        aggregator.close()
    assert [v for (name, _), v in samples.items() if name == "tcpcopy_a_b_total"] == [2]


@pytest.mark.parametrize("text, expected", [("127.0.0.1:9108", ("127.0.0.1", 9108)),
                                            ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80))])
def test_listen_addresses(text, expected):
    assert listen_address(text) == expected


@pytest.mark.parametrize("text", ["9108", "::1:9108", "host:99999", "host:"])
def test_bad_listen_addresses_say_how_to_write_one(text):
    with pytest.raises(ValueError, match="--listen"):
        listen_address(text)


# ---------------------------------------------------------------- over HTTP

def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


def test_metrics_scraped_over_http_equal_the_published_counters(tmp_path):
    endpoint = f"ipc://{tmp_path}/stats"
    clock = Clock()
    aggregator = Aggregator(endpoint, clock=clock)
    owner = StatsPublisher(endpoint, "owner", "owner-1@online1")
    capture = StatsPublisher(endpoint, "capture", "capture-0@online1")
    server = serve_metrics(aggregator, "127.0.0.1", 0)
    try:
        for publisher, counters in ((owner, {"requests_sent": 1234, "sessions_active": 56,
                                             "raw_send_failures": {"EPERM": 3}}),
                                    (capture, {"captured": 98765, "kernel_dropped": 0})):
            key = (publisher.role, publisher.identity)
            deadline = time.monotonic() + 3
            while key not in aggregator.processes:
                assert time.monotonic() < deadline, f"{key} never arrived"
                publisher.publish(counters)
                aggregator.poll(0.02)
            if publisher is owner:
                clock.now += 3.5     # the owner has now been silent for 3.5 s
        content_type, page = scrape(server.url)
        assert content_type.startswith("text/plain; version=")
        samples = parse(page)
        o = labels("owner", "owner-1@online1", "online1", "1")
        c = labels("capture", "capture-0@online1", "online1", "0")
        assert samples[("tcpcopy_requests_sent_total", o)] == 1234
        assert samples[("tcpcopy_sessions_active", o)] == 56
        assert samples[("tcpcopy_raw_send_failures_total", labels("owner", "owner-1@online1", "online1", "1", errno="EPERM"))] == 3
        assert samples[("tcpcopy_captured_total", c)] == 98765
        assert samples[("tcpcopy_kernel_dropped_total", c)] == 0
        assert samples[("tcpcopy_process_resident_memory_bytes", c)] > 0
        assert samples[("tcpcopy_up", c)] == 1 and samples[("tcpcopy_up", o)] == 0
        assert samples[("tcpcopy_stats_age_seconds", o)] == 3.5
        with pytest.raises(urllib.error.HTTPError) as error:
            scrape(server.url.replace("/metrics", "/"))
        assert error.value.code == 404
    finally:
        server.close()
        owner.close()
        capture.close()
        aggregator.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_command_serves_until_terminated(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tcpcopy.cluster.ops.metrics", "--stats",
                             f"ipc://{tmp_path}/stats", "--listen", f"127.0.0.1:{port}"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _, page = scrape(f"http://127.0.0.1:{port}/metrics")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.05)
        assert ("tcpcopy_stats_messages_total", ()) in parse(page)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=5)
    assert proc.returncode == 0


def test_the_command_refuses_a_bad_listen_address(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--stats", "ipc:///nonexistent/x", "--listen", "9108"])
    assert exit_.value.code == 2 and "HOST:PORT" in capsys.readouterr().err


# ---------------------------------------------------------------- idle and excess connections

def handler_threads() -> int:
    import threading
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("Thread-"))


def closed_by_server(conn: socket.socket, timeout: float) -> bool:
    conn.settimeout(timeout)
    try:
        return conn.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_time_out_so_threads_do_not_pile_up(tmp_path, monkeypatch):
    from tcpcopy.cluster.ops import metrics
    monkeypatch.setattr(metrics._Handler, "timeout", 0.5)
    aggregator = Aggregator(f"ipc://{tmp_path}/stats")
    server = serve_metrics(aggregator, "127.0.0.1", 0)
    before = handler_threads()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]
    try:
        idle[0].sendall(b"GET /metr")                 # a request that never ends
        time.sleep(0.2)
        assert handler_threads() > before             # each connection holds a thread ...
        assert all(closed_by_server(conn, 5.0) for conn in idle)   # ... until it times out
        deadline = time.monotonic() + 3
        while handler_threads() > before:
            assert time.monotonic() < deadline, "handler threads stayed"
            time.sleep(0.05)
        assert scrape(server.url)[1].startswith("# HELP")
    finally:
        for conn in idle:
            conn.close()
        server.close()
        aggregator.close()


def test_connections_beyond_the_cap_are_closed_at_once(tmp_path, monkeypatch):
    from tcpcopy.cluster.ops import metrics
    monkeypatch.setattr(metrics, "MAX_CONNECTIONS", 3)
    aggregator = Aggregator(f"ipc://{tmp_path}/stats")
    server = serve_metrics(aggregator, "127.0.0.1", 0)
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(("127.0.0.1", server.port))
        assert closed_by_server(extra, 2.0) and handler_threads() <= 3
        extra.close()
        for conn in held:
            conn.close()
        deadline = time.monotonic() + 3
        while True:                                  # slots come back as the held ones end
            try:
                assert scrape(server.url)[1].startswith("# HELP")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for conn in held:
            conn.close()
        server.close()
        aggregator.close()


def test_the_comparison_is_a_labelled_counter_by_verdict_and_latency_gauges_per_side(tmp_path):
    """What an owner that compares publishes (Comparing.stats_figures of a real comparison)
    becomes tcpcopy_compare_requests_total{verdict} and tcpcopy_compare_latency_seconds{side,
    quantile}, in seconds."""
    from tcpcopy.capture import packet as pk
    from tcpcopy.session.comparing import CompareOptions, Comparing
    from tcpcopy.session.engine import Endpoint, RequestSent

    client, online, replayed, target = (bytes([198, 18, n, 5]) for n in (0, 1, 3, 2))
    comparing = Comparing(CompareOptions(percent=100))
    endpoint, flow = Endpoint(replayed, 40000, target, 8080), (client, 40000, online, 80)
    assert comparing.session_started(endpoint, flow)
    on, tg = 1000, 900_000
    for i, (online_body, target_body) in enumerate([(b"a", b"a"), (b"b", b"B"), (b"c", b"c")]):
        answer = [b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + body for body in (online_body, target_body)]
        head = b"GET /%d HTTP/1.1\r\n\r\n" % i
        comparing.client_segment(flow, on, head, 10.0 + i, 500.0 + i)
        comparing.request_sent(endpoint, RequestSent(10.0 + i, on, tg, head))
        comparing.online_answer(pk.build(online, client, 80, 40000, on, 1, pk.ACK, 500, payload=answer[0]),
                                10.5 + i, 500.25 + i)                 # 250 ms between the captures
        comparing.target_answer(pk.build(target, replayed, 8080, 40000, tg, 1, pk.ACK, 500, payload=answer[1]),
                                10.004 + i)                           # 4 ms on the owner's clock
        on, tg = on + len(answer[0]), tg + len(answer[1])
    comparing.session_ended(endpoint)
    aggregator = Aggregator(f"ipc://{tmp_path}/stats", clock=Clock())
    try:
        feed(aggregator, "owner", "owner-0@online1", pid=7, published_at=1.0, compare=comparing.stats_figures())
        samples = parse(render_metrics(aggregator.snapshot_json()))
    finally:
        aggregator.close()

    def verdict(name: str) -> float:
        return samples[("tcpcopy_compare_requests_total", labels("owner", "owner-0@online1", "online1", "0",
                                                                 verdict=name))]

    assert (verdict("same"), verdict("body_differs"), verdict("status_differs"), verdict("not_captured")) == (2, 1, 0, 0)
    for side, seconds in (("online", 0.25), ("target", 0.004)):
        for quantile in ("0.5", "0.9", "0.99"):
            key = ("tcpcopy_compare_latency_seconds",
                   labels("owner", "owner-0@online1", "online1", "0", side=side, quantile=quantile))
            assert samples[key] == pytest.approx(seconds)
        assert samples[("tcpcopy_compare_latency_samples_total",
                        labels("owner", "owner-0@online1", "online1", "0", side=side))] == 3
    assert not any("shares" in name or "latency_online" in name for name, _ in samples)
