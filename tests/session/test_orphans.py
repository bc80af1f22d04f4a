"""The reset of a dead owner's connections, driven by hand: probe, answer, RST, give up."""

from __future__ import annotations

import ipaddress

from tcpcopy.capture import packet as pk
from tcpcopy.session.orphans import OrphanReaper


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


CLIENT, TARGET = ip("198.18.1.2"), ip("198.18.0.2")
A = (CLIENT, 40000, TARGET, 8080)
B = (CLIENT, 40002, TARGET, 8080)
V6 = (ip("2001:2::5"), 40000, ip("2001:2::2"), 8080)


def answer(endpoint, flags: int, seq: int = 7000, ack: int = 123456) -> pk.Packet:
    """The target's answer to a packet on ``endpoint`` (addresses and ports reversed)."""
    client_ip, client_port, target_ip, target_port = endpoint
    return pk.build(target_ip, client_ip, target_port, client_port, seq, ack, flags, 501)


def decoded(packets: list[bytes]) -> list[pk.Packet]:
    return [pk.decode(raw) for raw in packets]


def test_each_orphan_is_probed_then_reset_at_the_number_the_target_gave():
    reaper = OrphanReaper()
    reaper.adopt([A, B, A], now=0.0)
    assert len(reaper) == 2 and reaper.next_deadline() == 0.0
    reaper.run_timers(0.0)
    probes = decoded(reaper.take_packets())
    assert [(p.sport, p.dport, p.flags) for p in probes] == [(40000, 8080, pk.ACK), (40002, 8080, pk.ACK)]
    assert all(p.src == CLIENT and p.dst == TARGET and pk.tcp_checksum_ok(p) for p in probes)

    assert reaper.answer(answer(A, pk.ACK, ack=123456))            # the target's dup ACK
    (rst,) = decoded(reaper.take_packets())
    assert (rst.flags, rst.seq, rst.sport, rst.dport) == (pk.RST, 123456, 40000, 8080)
    assert reaper.answer(answer(B, pk.RST | pk.ACK))               # nothing was left there
    assert reaper.take_packets() == []
    assert sorted(reaper.take_done()) == [A, B] and len(reaper) == 0
    assert (reaper.stats.reset, reaper.stats.already_closed, reaper.stats.probes_sent) == (1, 1, 2)
    assert not reaper.answer(answer(A, pk.ACK)), "a finished orphan's later answers are not its"


def test_an_unanswered_orphan_is_probed_a_few_times_then_given_up():
    reaper = OrphanReaper(probes=3, interval=1.0)
    reaper.adopt([V6], now=10.0)
    seqs = []
    for now in (10.0, 11.0, 12.0):
        reaper.run_timers(now)
        (probe,) = decoded(reaper.take_packets())
        seqs.append(probe.seq)
    assert len(set(seqs)) == 3, "each probe tries another sequence number"
    reaper.run_timers(12.5)
    assert reaper.take_packets() == [] and len(reaper) == 1
    reaper.run_timers(13.0)
    assert reaper.take_done() == [V6] and reaper.stats.unanswered == 1 and reaper.next_deadline() is None


def test_an_endpoint_a_session_takes_over_is_left_to_it_and_the_bound_holds():
    reaper = OrphanReaper(max_orphans=1)
    reaper.adopt([A, B], now=0.0)
    assert reaper.stats.refused == 1 and B not in reaper
    reaper.taken_by_session(A)
    reaper.run_timers(5.0)
    assert reaper.take_packets() == [] and reaper.take_done() == []
    assert reaper.stats.taken_by_session == 1
    assert not reaper.answer(answer(A, pk.ACK))
