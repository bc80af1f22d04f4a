"""End to end: the target gets what the online server got, with large bodies and a slow target.

* Large bodies: uploads of 1, 20 and 100 MiB (h2load, one POST on a connection of its own)
  and one of 20 MiB sent with ``Expect: 100-continue`` (curl). The target's nginx must keep
  every body whole (the SHA-256 of the bytes the online nginx kept) and answer it with the
  same status.
* Slow target: the target's nginx proxies to a backend that answers after 100-300 ms, while
  the online nginx answers at once. The copier must hold each client's FIN and next request
  until the slow answer has come: every online request reaches the target, and the target's
  nginx logs no 499 (the client closed before the answer) and no 5xx.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from tcpcopy.lab import accesslog, load
from tcpcopy.lab.netns import CLIENT, TARGET
from tcpcopy.lab.livecopy import LiveCopy
from tcpcopy.lab.servers import UPLOAD_STATUS, ReceivedBody
from tcpcopy.lab.slowbackend import SlowBackend

pytestmark = pytest.mark.lab

MIB = 1 << 20
# (name, size, seed, sent with Expect: 100-continue)
UPLOADS = (
    ("1m", 1 * MIB, 11, False),
    ("20m", 20 * MIB, 12, False),
    ("100m", 100 * MIB, 13, False),
    ("20m-expect", 20 * MIB, 14, True),
)
SLOW_DELAY = (0.1, 0.3)
SHORT_RATE, SHORT_SECONDS = 50, 6            # 300 short connections
KEEPALIVE_CONNECTIONS, KEEPALIVE_REQUESTS = 20, 10


# --------------------------------------------------------------------------- helpers


@dataclass
class Upload:
    """One upload as the client sent it and as the two servers logged and kept it."""

    name: str
    size: int
    sha256: str
    client_status: int
    online: dict | None = None
    target: dict | None = None
    online_body: ReceivedBody | None = None
    target_body: ReceivedBody | None = None

    @property
    def uri(self) -> str:
        return f"/upload/{self.name}"

    def faults(self) -> list[str]:
        """What differs from a whole copy, in words (empty: copied whole)."""
        faults = []
        if self.online is None or self.online["status"] != UPLOAD_STATUS or self.client_status != UPLOAD_STATUS:
            faults.append(f"online answered {self.client_status}, logged {_status(self.online)}")
        if not _whole(self.online_body, self.size, self.sha256):
            faults.append(f"online kept {_body(self.online_body)}")
        if self.target is None:
            faults.append("the target logged no request")
            return faults
        if self.target["status"] != _status(self.online):
            faults.append(f"target status {self.target['status']}, online {_status(self.online)}")
        if not _whole(self.target_body, self.size, self.sha256):
            faults.append(f"target kept {_body(self.target_body)} "
                          f"(request_length {self.target['request_length']})")
        return faults

    def line(self) -> str:
        lag = (f"{self.target['time'] - self.online['time']:.2f} s after online"
               if self.target and self.online else "never")
        return (f"{self.name:>11}: {self.size:>9} B  online {_status(self.online)} {_body(self.online_body)}"
                f"  target {_status(self.target)} {_body(self.target_body)}  target done {lag}")


def _status(entry: dict | None) -> int | None:
    return None if entry is None else entry["status"]


def _whole(body: ReceivedBody | None, size: int, sha256: str) -> bool:
    return body is not None and body.length == size and body.sha256 == sha256


def _body(body: ReceivedBody | None) -> str:
    return "no body" if body is None else f"{body.length} B sha256 {body.sha256[:12]}"


def send_upload(copy: LiveCopy, name: str, size: int, seed: int, expect: bool) -> Upload:
    """One POST of a ``size``-byte body on a connection of its own, from the client host."""
    url = f"{copy.url}/upload/{name}"
    if expect:
        sent = load.curl_upload(copy.lab, CLIENT, url, size, seed=seed)
        assert sent.continued, f"curl did not wait for a 100 Continue: the case would prove nothing\n{sent.output}"
        return Upload(name, size, sent.body_sha256, sent.status)
    sent = load.upload(copy.lab, CLIENT, url, size, 1, seed=seed, timeout_s=60)
    assert sent.summary.all_succeeded, f"the client itself saw failures:\n{sent.summary.output}"
    return Upload(name, size, sent.body_sha256, UPLOAD_STATUS)


def wait_for_uri(copy: LiveCopy, uri: str, timeout: float) -> bool:
    """Whether the target logged a request for ``uri`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(e["uri"] == uri for e in copy.target.access_log_entries()):
            return True
        time.sleep(0.2)
    return False


def by_uri(entries: list) -> dict:
    return {e["uri"]: e for e in entries}


def finish(copy: LiveCopy, expected: int, timeout: float) -> None:
    """Wait for ``expected`` target requests (or none for a while), then stop the copy."""
    copy.wait_for_target(expected, timeout)
    copy.stop_tcpcopy()
    copy.stop_intercept()


def copier_summary(copy: LiveCopy) -> str:
    """The copy's report, its drop and close reasons and its capture counters, for messages."""
    report = copy.report()
    engine = report.tcpcopy_summary.get("engine", {})
    capture = [line for line in copy.log("tcpcopy").splitlines() if "capture:" in line]
    return (f"{report.render()}\nclosed {engine.get('closed')} dropped {engine.get('dropped')}\n"
            + "\n".join(capture) + f"\n(logs and summary in {copy.dir})")


# --------------------------------------------------------------------------- A. large bodies


def test_large_uploads_reach_the_target_whole(live_copy) -> None:
    copy = live_copy()
    uploads = []
    for name, size, seed, expect in UPLOADS:
        uploads.append(send_upload(copy, name, size, seed, expect))
        wait_for_uri(copy, uploads[-1].uri, timeout=10 + size / MIB * 0.4)
    finish(copy, len(UPLOADS), timeout=5)
    online, target = by_uri(copy.online.access_log_entries()), by_uri(copy.target.access_log_entries())
    online_bodies = {b.uri: b for b in copy.online.received_bodies()}
    target_bodies = {b.uri: b for b in copy.target.received_bodies()}
    for each in uploads:
        each.online, each.target = online.get(each.uri), target.get(each.uri)
        each.online_body, each.target_body = online_bodies.get(each.uri), target_bodies.get(each.uri)
    print("\n" + "\n".join(each.line() for each in uploads))

    faults = [f"{each.name}: {fault}" for each in uploads for fault in each.faults()]
    assert not faults, "\n".join(faults) + "\n" + copier_summary(copy)


# --------------------------------------------------------------------------- B. slow target


def test_slow_target_answers_every_request_before_the_client_moves_on(live_copy, lab) -> None:
    with SlowBackend(lab, TARGET, delay=SLOW_DELAY) as backend:
        copy = live_copy(target_upstream=backend.upstream)
        short = load.short_connections(lab, CLIENT, f"{copy.url}/index.html?load=short", SHORT_RATE, SHORT_SECONDS)
        kept = load.keepalive(lab, CLIENT, f"{copy.url}/index.html?load=keepalive", KEEPALIVE_CONNECTIONS,
                              KEEPALIVE_REQUESTS)
        for result in (short, kept):
            assert result.summary.all_succeeded, f"the client itself saw failures:\n{result.summary.output}"
        finish(copy, short.summary.done + kept.summary.done, timeout=30)
    online = copy.online.access_log_entries()
    target = copy.target.access_log_entries()
    print(f"\nonline {len(online)} requests, slowest {max(e['request_time'] for e in online):.3f} s; "
          f"target {len(target)} {dict(accesslog.by_status(target))}, "
          f"fastest {min((e['request_time'] for e in target), default=0):.3f} s; "
          f"backend answered {len(backend.answers())}\n{copier_summary(copy)}")

    requests = SHORT_RATE * SHORT_SECONDS + KEEPALIVE_CONNECTIONS * KEEPALIVE_REQUESTS
    connections = SHORT_RATE * SHORT_SECONDS + KEEPALIVE_CONNECTIONS
    assert len(online) == requests and accesslog.by_status(online) == {200: requests}
    closed_early = [e for e in target if e["status"] == 499]
    server_errors = [e for e in target if e["status"] >= 500]
    assert not closed_early, f"{len(closed_early)} target requests ended 499 (client gone first): {closed_early[:2]}"
    assert not server_errors, f"{len(server_errors)} target requests ended 5xx: {server_errors[:2]}"
    answered = [e["request_time"] for e in target if e["status"] == 200]
    assert min(answered, default=0) >= SLOW_DELAY[0], "the target answered fast: the case would prove nothing"
    match = accesslog.match_by_sequence(online, target)
    assert match.ok and match.matched == connections, (
        f"matched {match.matched} of {connections} connections; missing {len(match.missing)} {match.missing[:2]}, "
        f"unexpected {len(match.unexpected)} {match.unexpected[:2]}\n{copier_summary(copy)}")
    assert accesslog.by_status(target) == accesslog.by_status(online)
