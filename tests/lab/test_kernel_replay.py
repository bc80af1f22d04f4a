"""The engine against a real kernel: a recorded HTTP session replayed to nginx.

The copier namespace runs the engine behind a raw IP socket and reads the target's answers
with pcap; the target namespace runs nginx. Success is judged from nginx's own access log.
"""

from __future__ import annotations

import pytest

from tcpcopy.capture import packet as pk
from tcpcopy.lab.replay_demo import DEFAULT_PCAP, replay
from tests.fixtures.pcapfile import load_fixture, write_pcap

pytestmark = pytest.mark.lab


def assert_two_keepalive_requests(served: list[dict], client_ip: str) -> None:
    assert [(e["request_method"], e["request_uri"], e["status"]) for e in served] == [
        ("GET", "/index.html", 200), ("GET", "/index.html", 200)]
    assert {(e["remote_addr"], e["remote_port"]) for e in served} == {(client_ip, 40000)}
    assert len({e["connection"] for e in served}) == 1  # one keep-alive connection, as recorded
    assert [e["connection_requests"] for e in served] == [1, 2]


def test_recorded_session_is_replayed_to_nginx(lab_required):
    report = replay(DEFAULT_PCAP, "198.18.3.5")
    assert_two_keepalive_requests(report["target_log"], "198.18.3.5")
    copier = report["copier"]
    assert copier["outcomes"] == {"closed:completed": 1}
    assert copier["engine"]["retransmits"] == 0 and copier["engine"]["syn_retransmits"] == 0
    assert copier["raw_send_failures"] == {}


def test_session_joined_mid_stream_is_replayed_with_a_fabricated_syn(lab_required, tmp_path):
    frames = load_fixture("http_keepalive.pcap")
    first_data = next(i for i, (_, f) in enumerate(frames)
                      if (p := pk.decode_frame(f, pk.LINKTYPE_ETHERNET)).dport == 80 and p.payload_len)
    clipped = tmp_path / "mid_stream.pcap"
    write_pcap(clipped, frames[first_data:])  # no SYN, no handshake ACK
    report = replay(clipped, "198.18.3.6")
    assert_two_keepalive_requests(report["target_log"], "198.18.3.6")
    assert report["copier"]["engine"]["fabricated_syns"] == 1
    assert report["copier"]["outcomes"] == {"closed:completed": 1}
