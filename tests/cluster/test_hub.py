"""The stats hub: top, the Prometheus exporter and the report recorder read one live stats
stream at the same time, each a real process, over loopback, with CurveZMQ keys on both
sides of the hub; a consumer without the key hears nothing."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tcpcopy.cluster.curve import KeyLayout, keygen
from tcpcopy.cluster.stats import StatsPublisher

PY = sys.executable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def keys(tmp_path) -> KeyLayout:
    keygen(str(tmp_path / "keys"))
    return KeyLayout(str(tmp_path / "keys"))


class Publishing:
    """An owner publishing its counters every 0.2 s from a thread, as a real owner does."""

    def __init__(self, endpoint: str, keys: KeyLayout):
        self.publisher = StatsPublisher(endpoint, "owner", "owner-0@online1",
                                        keys=keys.publisher_keys("online"), every=0.2)
        self.stop = threading.Event()
        self.requests = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            self.requests += 1
            self.publisher.publish({"engine": {"requests_sent": self.requests},
                                    "raw_send_failures": {"EPERM": 2}})
            time.sleep(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.publisher.close()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def wait_for(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        try:
            found = check()
            if found:
                return found
        except OSError:
            pass
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_top_exporter_and_recorder_read_one_stream_at_once(tmp_path, keys):
    stats, feed = f"tcp://127.0.0.1:{free_port()}", f"ipc://{tmp_path}/feed.sock"
    listen = f"127.0.0.1:{free_port()}"
    secret = keys.secret("stats")
    samples = tmp_path / "samples.jsonl"
    procs = []

    def start(*argv):
        procs.append(subprocess.Popen([PY, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
        return procs[-1]

    owner = None
    try:
        hub = start("tcpcopy.cluster.ops.hub", "--stats", stats, "--feed", feed, "--key", secret,
                    "--allow-keys", keys.allowed_publishers)
        exporter = start("tcpcopy.cluster.ops.metrics", "--hub", feed, "--key", secret, "--listen", listen)
        recorder = start("tcpcopy.cluster.ops.report", "record", "--hub", feed, "--key", secret,
                         "--out", str(samples), "--seconds", "6")
        owner = Publishing(stats, keys)
        # The hub publishes its own figures once a second, so they may come a second after
        # the owner's: wait for both, then judge the page.
        page = wait_for(lambda: (text := scrape(f"http://{listen}/metrics")) and
                        'tcpcopy_engine_requests_sent_total{host="online1"' in text and
                        "tcpcopy_forwarded_total" in text and text, 15,
                        "the exporter never showed both the owner and the hub")
        top = subprocess.run([PY, "-m", "tcpcopy.cluster.ops.top", "--hub", feed, "--key", secret, "--once", "--json"],
                             capture_output=True, text=True, timeout=30)
        keyless = subprocess.run([PY, "-m", "tcpcopy.cluster.ops.top", "--hub", feed, "--once", "--json"],
                                 capture_output=True, text=True, timeout=30)
        assert recorder.wait(timeout=20) == 0, recorder.stderr.read()
    finally:
        if owner is not None:
            owner.close()
        errors = [stop(proc) for proc in reversed(procs)]
    assert top.returncode == 0, top.stderr
    seen = {(row["role"], row["identity"]) for row in json.loads(top.stdout)["processes"]}
    assert ("owner", "owner-0@online1") in seen and ("hub", f"hub@{socket.gethostname()}") in seen
    assert 'tcpcopy_raw_send_failures_total{errno="EPERM",host="online1"' in page
    assert "tcpcopy_forwarded_total" in page        # the hub's own counts reach the exporter
    recorded = [json.loads(line) for line in samples.read_text().splitlines()]
    owners = [row for sample in recorded for row in sample["processes"] if row["role"] == "owner"]
    assert len(recorded) >= 5 and owners and owners[-1]["counters"]["engine.requests_sent"] > 1
    assert json.loads(keyless.stdout)["processes"] == []   # no stats.key_secret: nothing heard
    assert all(proc.returncode == 0 for proc in procs), errors


def test_a_second_consumer_binding_the_endpoint_is_told_to_use_the_hub(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"   # ipc:// would let the second bind take the path over
    first = subprocess.Popen([PY, "-m", "tcpcopy.cluster.ops.hub", "--stats", endpoint,
                              "--feed", f"ipc://{tmp_path}/feed.sock"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "feed.sock").exists(), 10, "the hub never bound its feed")
        second = subprocess.run([PY, "-m", "tcpcopy.cluster.ops.top", "--stats", endpoint, "--once"],
                                capture_output=True, text=True, timeout=30)
    finally:
        stop(first)
    assert second.returncode == 2 and "--hub" in second.stderr and "Traceback" not in second.stderr
