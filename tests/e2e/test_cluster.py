"""End to end: the sharded cluster under supervisord in the four-host lab, judged by the
servers' own logs.

Each test starts nginx online (port 80) and at the target (port 8080) and a cluster of
capture workers, session owners and intercepts from one TOML file, each role launched with
``tcpcopy-cluster start`` inside its host (``ClusterCopy``), drives real client traffic
from the client host with h2load, and checks what the online server and the target logged,
beside the programs' own counters where the scenario is about them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections import defaultdict

import psutil
import pytest

from tcpcopy.lab import accesslog, load
from tcpcopy.lab.clustercopy import ClusterCopy
from tcpcopy.lab.netns import CLIENT, CLIENT_ADDRESS, Lab
from tcpcopy.session.fanout import sampled_in

pytestmark = pytest.mark.lab

SETTLE_S = 0.5          # after a restarted process is RUNNING, before its traffic must be whole


# --------------------------------------------------------------------------- helpers


def assert_all_succeeded(*results) -> None:
    for result in results:
        s = result.summary
        assert s.all_succeeded, f"{type(result).__name__}: the client itself saw failures:\n{s.output}"


def finish(copy: ClusterCopy, expected: int, timeout: float = 30.0):
    """Wait for the target to log ``expected`` requests (or stop gaining), stop the cluster
    (the programs write their closing counters) and return its report."""
    copy.wait_for_target(expected, timeout)
    copy.stop()
    report = copy.report()
    print(report.render())
    return report


def paced_sessions(lab: Lab, url: str, rate: int, sessions: int, requests_per_session: int) -> load.H2loadSummary:
    """``sessions`` keep-alive connections opened at ``rate`` per second, each carrying
    ``requests_per_session`` GETs one after another before it closes (h2load's rate mode
    splits -n evenly over the -c connections)."""
    load.check_lab_url(url)
    per_period, period_ms = load.pacing(rate)
    argv = ["--h1", "-n", str(sessions * requests_per_session), "-c", str(sessions), "-t", "1",
            "-N", f"{load.INACTIVITY_TIMEOUT_S}s", "--rate", str(per_period), "--rate-period", f"{period_ms}ms", url]
    planned = sessions / (per_period * 1000 / period_ms)
    return load.run_h2load(lab, CLIENT, argv, planned + load.HARD_TIMEOUT_SLACK_S)


class Background:
    """A load running in a thread while the test does something else."""

    def __init__(self, func, *args, **kwargs):
        self.result, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=(func, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, func, args, kwargs):
        try:
            self.result = func(*args, **kwargs)
        except BaseException as exc:   # re-raised in join()
            self.error = exc

    def join(self, timeout: float):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"the load did not end within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


def overlapping_reuse(entries) -> list[tuple]:
    """Target connections from one client address:port that were open at the same time.

    Each connection is spanned from its first request's start (log time minus
    request_time) to its last request's end; connections of one peer are taken in nginx's
    accept order (the connection serial). A later connection starting before an earlier one
    of the same peer ended would be a port clash.
    """
    spans: dict[int, list] = {}
    for e in entries:
        start, end = e["time"] - e["request_time"], e["time"]
        span = spans.setdefault(e["connection"], [(e["remote_addr"], e["remote_port"]), start, end])
        span[1], span[2] = min(span[1], start), max(span[2], end)
    by_peer = defaultdict(list)
    for serial, (peer, start, end) in sorted(spans.items()):
        by_peer[peer].append((serial, start, end))
    clashes = []
    for peer, connections in by_peer.items():
        for (s1, _start1, end1), (s2, start2, _end2) in zip(connections, connections[1:]):
            if start2 < end1 - 0.001:   # $msec has millisecond resolution
                clashes.append((peer, s1, s2))
    return clashes


def reused_peers(entries) -> dict[tuple, list]:
    """Client address:port used by more than one connection -> (serial, start, end) of each."""
    return {peer: [(e["connection"], round(e["time"] - e["request_time"], 3), e["time"]) for e in logged]
            for peer, logged in peers_of(entries).items() if len({e["connection"] for e in logged}) > 1}


def peers_of(entries) -> dict[tuple, list]:
    """Client address:port -> the requests logged from it, in log order."""
    peers = defaultdict(list)
    for e in entries:
        peers[(e["remote_addr"], e["remote_port"])].append(e)
    return peers


# --------------------------------------------------------------------------- 1. 2x2x2 at 1,000/s


def test_two_workers_two_owners_two_intercepts_copy_1000_per_second_without_loss(cluster_copy) -> None:
    copy = cluster_copy(2, 2, 2)
    rows = copy.status("online") + copy.status("assistant")
    assert sorted(r.name for r in rows) == ["capture:capture-0", "capture:capture-1", "intercept:intercept-0",
                                            "intercept:intercept-1", "owner:owner-0", "owner:owner-1"]
    supervisords = set(copy.supervisord_pids().values())
    assert all(r.state == "RUNNING" and psutil.Process(r.pid).ppid() in supervisords for r in rows), \
        "every program must run as a child of the role's supervisord"

    result = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html", rate=1000, seconds=10)
    assert_all_succeeded(result)
    report = finish(copy, result.summary.done)

    assert report.online_requests == result.connections == 10_000
    assert report.target_requests == report.online_requests, report.render()
    assert report.loss_ratio == 0
    assert report.target_status == {200: 10_000}
    assert report.outcomes == {"closed:completed": 10_000}
    owners = report.owners
    assert [o.finished for o in owners] == [True, True], "an owner wrote no closing stats"
    started = [o.counters["started"] for o in owners]
    assert sum(started) == 10_000 and min(started) > 3_000, f"owners unbalanced: {started}"
    assert sorted(report.captures) == ["capture-0", "capture-1"]
    assert all(c["captured"] > 0 and c["dropped(owner full)"] == 0 for c in report.captures.values())
    assert sorted(report.intercepts) == ["intercept-0", "intercept-1"]
    registered = [c["registers"] for c in report.intercepts.values()]
    assert sum(registered) == 10_000 and min(registered) > 3_000, f"intercepts unbalanced: {registered}"
    assert all(c["sent"] > 0 and c["unroutable"] == 0 for c in report.intercepts.values())


# --------------------------------------------------------------------------- 2. copies = 3


@contextlib.contextmanager
def client_ports(lab: Lab, low: int, high: int, tw_reuse: int = 1):
    """The client host connects from ports ``low``..``high`` only (and reuses its own
    TIME_WAIT ports after a second), so a load of a few thousand connections reuses client
    ports within seconds, as busy clients and NAT gateways do. Restored afterwards."""
    keys = ("net.ipv4.ip_local_port_range", "net.ipv4.tcp_tw_reuse")
    before = [lab.run(CLIENT, ["sysctl", "-n", key]).stdout.split() for key in keys]
    lab.run(CLIENT, ["sysctl", "-q", "-w", f"{keys[0]}={low} {high}", f"{keys[1]}={tw_reuse}"])
    try:
        yield
    finally:
        lab.run(CLIENT, ["sysctl", "-q", "-w", f"{keys[0]}={' '.join(before[0])}", f"{keys[1]}={before[1][0]}"])


@pytest.mark.parametrize("ports", ["fresh", "reused"])
def test_three_copies_of_every_session_without_port_clashes(cluster_copy, ports: str) -> None:
    """``reused``: the client reuses each of its ports about three times in the 6 s and the
    server closes first, so the target holds every replayed 4-tuple in TIME_WAIT: a copy
    given a port still held there would clash (TCPCopy's -n RSTs)."""
    copy = cluster_copy(2, 2, 2, {"copies": 3})
    url = f"{copy.url}/index.html"
    if ports == "reused":
        with client_ports(copy.lab, 50_000, 51_999):
            result = load.short_connections(copy.lab, CLIENT, url, rate=500, seconds=6, server_closes=True)
    else:
        result = load.short_connections(copy.lab, CLIENT, url, rate=500, seconds=6)
    assert_all_succeeded(result)
    report = finish(copy, 3 * result.summary.done)
    online = copy.online.access_log_entries()
    target = copy.target.access_log_entries()

    assert report.online_requests == 3_000
    if ports == "reused":
        assert len(peers_of(online)) < 1_200, "the client did not reuse its ports: the scenario proves nothing"
    assert report.target_requests <= 3 * report.online_requests
    assert report.loss_ratio <= 1e-4, report.render()
    assert report.target_status == {200: report.target_requests}
    assert [o.counters["resp rst"] for o in report.owners] == [0, 0], report.render()
    assert set(report.outcomes) == {"closed:completed"}, report.outcomes
    assert sum(report.outcomes.values()) == 9_000
    assert sum(o.counters["refused"] for o in report.owners) == 0
    # one request per replayed connection, three connections per online one
    assert len(accesslog.by_connection(target)) == report.target_requests
    assert accesslog.match_by_sequence(online, target, copies=3).ok
    assert overlapping_reuse(target) == []
    if ports == "reused":
        # the target closed every connection first and keeps its 4-tuple for 60 s
        reused = reused_peers(target)
        assert reused == {}, f"copies reused 4-tuples the target holds in TIME_WAIT: {list(reused.items())[:3]}"


def test_client_reusing_its_ports_within_seconds_is_copied_whole(cluster_copy) -> None:
    copy = cluster_copy(2, 2, 2)
    with client_ports(copy.lab, 50_000, 51_999):
        result = load.short_connections(copy.lab, CLIENT, f"{copy.url}/index.html", rate=500, seconds=6)
    assert_all_succeeded(result)
    report = finish(copy, result.summary.done)
    online = copy.online.access_log_entries()

    assert len(peers_of(online)) < 1_200, "the client did not reuse its ports: the scenario proves nothing"
    assert report.loss_ratio == 0, report.render()
    assert report.outcomes == {"closed:completed": 3_000}


# --------------------------------------------------------------------------- 3. sampling


def test_half_of_the_sessions_are_copied_whole(cluster_copy) -> None:
    copy = cluster_copy(2, 2, 2, {"sample_percent": 50})
    summary = paced_sessions(copy.lab, f"{copy.url}/index.html", rate=500, sessions=2_400, requests_per_session=4)
    assert summary.all_succeeded, summary.output
    online = copy.online.access_log_entries()
    expected_sessions = [peer for peer in peers_of(online) if sampled_in(_packed(peer[0]), peer[1], 50)]
    report = finish(copy, 4 * len(expected_sessions))
    target = copy.target.access_log_entries()

    sessions = accesslog.client_connections(online)
    assert len(sessions) == 2_400 and all(len(s.requests) == 4 for s in sessions)
    copied = accesslog.client_connections(target)
    share = len(copied) / len(sessions)
    print(f"copied {len(copied)} of {len(sessions)} sessions: {share:.2%}")
    assert abs(share - 0.50) <= 0.03
    match = accesslog.match_by_peer(online, target)
    assert match.differing == () and match.unexpected == (), "a copied session is not whole"
    assert match.matched == len(copied)
    assert all(len(c.requests) == 4 for c in copied), "half a session reached the target"
    assert sorted(c.peer for c in copied) == sorted(expected_sessions), \
        "the sessions copied are not those -r 50 samples in"
    assert report.target_status == {200: 4 * len(copied)}


def _packed(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


# --------------------------------------------------------------------------- 4. two clusters


def test_two_clusters_copy_the_same_traffic_through_the_same_intercepts(cluster_copy) -> None:
    first = cluster_copy(2, 2, 2, {"port_offset": 0, "instances": 2}, name="a")
    second = cluster_copy(2, 2, 2, {"port_offset": 1, "instances": 2}, name="b",
                          start_intercepts=False, servers=first.servers, keys_dir=first.config.security.keys_dir)
    assert first.dir != second.dir
    result = load.short_connections(first.lab, CLIENT, f"{first.url}/index.html", rate=400, seconds=6)
    assert_all_succeeded(result)
    first.wait_for_target(2 * result.summary.done)
    second.stop()
    first.stop()
    online = first.online.access_log_entries()
    target = first.target.access_log_entries()
    a, b = first.report(copies=2), second.report(copies=2)
    print(a.render(), b.render(), sep="\n")

    assert len(online) == 2_400
    assert len(target) == 2 * len(online), a.render()
    assert accesslog.loss_ratio(len(online), len(target), 2) == 0
    assert accesslog.by_status(target) == {200: len(target)}
    assert a.outcomes == b.outcomes == {"closed:completed": 2_400}
    ports = {parity: [e for e in target if e["remote_port"] % 2 == parity] for parity in (0, 1)}
    assert len(ports[0]) == len(ports[1]) == 2_400, "instance F must use only client ports with port % 2 == F"
    assert overlapping_reuse(target) == []


# --------------------------------------------------------------------------- 5. a process dies


@pytest.mark.parametrize("victim", ["capture-1", "owner-1"])
def test_killed_process_is_restarted_and_the_copy_goes_on(cluster_copy, victim: str) -> None:
    copy = cluster_copy(2, 2, 2)
    rate, seconds = 300, 8
    run = Background(load.short_connections, copy.lab, CLIENT, f"{copy.url}/index.html?run=kill", rate, seconds)
    time.sleep(3.0)
    old_pid = copy.kill_program("online", victim, signal.SIGKILL)
    killed_at = time.time()
    row = copy.wait_restarted("online", victim, old_pid)
    settled_at = time.time() + SETTLE_S
    result = run.join(seconds + 20)
    assert_all_succeeded(result)
    assert settled_at < killed_at + 4.0, "the restart took longer than the test allows for"
    report = finish(copy, result.summary.done)
    online = copy.online.access_log_entries()
    target = copy.target.access_log_entries()

    assert row.state == "RUNNING" and row.pid != old_pid
    restarted = next(o for o in report.owners if f"owner-{o.shard}" == victim) if victim.startswith("owner") else None
    if restarted is not None:
        assert restarted.starts == 2, "the owner's log shows no second start"
    # Each owner logs each capture process that feeds it once: the restarted owner hears
    # both workers again (they repeat their HELLO), every owner hears a restarted worker.
    feeding = {f"owner-{o.shard}": o.feeding for o in report.owners}
    expected = {"owner-0": 3, "owner-1": 3} if victim.startswith("capture") else {"owner-0": 2, "owner-1": 4}
    assert feeding == expected, feeding
    print(f"{victim} killed (pid {old_pid}) at +{killed_at - online[0]['time']:.2f} s, running again as pid "
          f"{row.pid}; loss ratio {report.loss_ratio:.4f} ({report.online_requests - report.target_requests} "
          f"of {report.online_requests} requests)")
    assert report.online_requests == rate * seconds
    assert 0 <= report.loss_ratio <= 0.05, report.render()
    assert report.target_status == {200: report.target_requests}
    after = [e for e in online if e["time"] - e["request_time"] >= settled_at]
    assert len(after) > rate, "too little load after the restart to judge it"
    copied = peers_of(target)
    lost_after = [e for e in after if (e["remote_addr"], e["remote_port"]) not in copied]
    assert lost_after == [], f"{len(lost_after)} of {len(after)} requests made after the restart were not copied"
    assert {e["remote_addr"] for e in target} == {CLIENT_ADDRESS}
