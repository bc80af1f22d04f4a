"""Answer comparison inside an owner: sampling, both streams cut at the engine's requests."""

from __future__ import annotations

import ipaddress

from tcpcopy.capture import packet as pk
from tcpcopy.session.comparing import CompareOptions, Comparing
from tcpcopy.session.engine import Endpoint, RequestSent

CLIENT, ONLINE = ipaddress.ip_address("198.18.0.5").packed, ipaddress.ip_address("198.18.1.2").packed
REPLAYED, TARGET = ipaddress.ip_address("198.18.3.5").packed, ipaddress.ip_address("198.18.2.2").packed
FLOW = (CLIENT, 40000, ONLINE, 80)
ENDPOINT = Endpoint(REPLAYED, 40000, TARGET, 8080)
ONLINE_ISN, TARGET_ISN = 1_000, 900_000


def http(body: bytes, status: bytes = b"200 OK") -> bytes:
    return b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def online(seq: int, payload: bytes) -> pk.Packet:
    return pk.build(ONLINE, CLIENT, 80, 40000, seq, 1, pk.ACK | pk.PSH, 500, payload=payload)


def target(seq: int, payload: bytes) -> pk.Packet:
    return pk.build(TARGET, REPLAYED, 8080, 40000, seq, 1, pk.ACK | pk.PSH, 500, payload=payload)


def request(comparing: Comparing, at: float, online_seq: int, target_seq: int, path: bytes) -> None:
    """The client's request captured (its ACK: where the online answer starts), then replayed."""
    head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    comparing.client_segment(FLOW, online_seq, head, at)
    comparing.request_sent(ENDPOINT, RequestSent(at, online_seq, target_seq, head))


def replay(comparing: Comparing, answers: list[tuple[bytes, bytes, bytes]]) -> None:
    """One keep-alive session: per request its path, the online and the target answer."""
    assert comparing.session_started(ENDPOINT, FLOW)
    on, tg = ONLINE_ISN, TARGET_ISN
    for i, (path, online_answer, target_answer) in enumerate(answers):
        request(comparing, i * 1.0, on, tg, path)
        comparing.online_answer(online(on, online_answer), i + 0.01)
        comparing.target_answer(target(tg, target_answer), i + 0.02)
        on, tg = on + len(online_answer), tg + len(target_answer)
    comparing.session_ended(ENDPOINT)


def test_each_request_is_judged_from_both_answers_and_only_differences_are_recorded():
    comparing = Comparing(CompareOptions(percent=100))
    replay(comparing, [(b"/same", http(b"hello"), http(b"hello")),
                       (b"/body", http(b"hello"), http(b"HELLO")),
                       (b"/status", http(b"hello"), http(b"hello", b"500 Internal Server Error")),
                       (b"/last", http(b"bye"), http(b"bye"))])
    summary = comparing.summary()
    assert summary["compared"] == 4
    assert summary["counts"]["same"] == 2
    assert summary["counts"]["body_differs"] == 1 and summary["counts"]["status_differs"] == 1
    records = comparing.take_records()
    assert [(r["verdict"], r["request"].split()[1]) for r in records] == [
        ("body_differs", "/body"), ("status_differs", "/status")]
    assert records[0]["session"] == "198.18.3.5:40000 > 198.18.2.2:8080"
    assert comparing.take_records() == []


def test_a_side_whose_bytes_never_arrived_is_not_judged_but_counted():
    """intercept without --answer-bytes: the target's answer length is known, its bytes are not."""
    comparing = Comparing(CompareOptions(percent=100))
    assert comparing.session_started(ENDPOINT, FLOW)
    request(comparing, 0.0, ONLINE_ISN, TARGET_ISN, b"/a")
    comparing.online_answer(online(ONLINE_ISN, http(b"hello")), 0.01)
    request(comparing, 1.0, ONLINE_ISN + len(http(b"hello")), TARGET_ISN + 40, b"/b")
    comparing.tick(2.0)
    assert comparing.summary()["not_captured"] == 0   # still waiting for the target's bytes
    comparing.tick(3.5)                                # the grace is over
    assert comparing.summary()["not_captured"] == 1 and comparing.summary()["compared"] == 0


def test_answers_that_arrive_after_the_next_request_still_belong_to_their_own():
    """The online answers come through the capture worker in batches of their own, and may
    reach the owner after the client's next request has been replayed."""
    comparing = Comparing(CompareOptions(percent=100))
    assert comparing.session_started(ENDPOINT, FLOW)
    first, second = http(b"one"), http(b"TWO")
    request(comparing, 0.0, ONLINE_ISN, TARGET_ISN, b"/1")
    comparing.target_answer(target(TARGET_ISN, first), 0.01)
    request(comparing, 0.1, ONLINE_ISN + len(first), TARGET_ISN + len(first), b"/2")
    comparing.online_answer(online(ONLINE_ISN, first), 0.2)             # late
    comparing.target_answer(target(TARGET_ISN + len(first), second), 0.2)
    comparing.online_answer(online(ONLINE_ISN + len(first), http(b"two")), 0.3)
    comparing.session_ended(ENDPOINT)
    summary = comparing.summary()
    assert summary["counts"]["same"] == 1 and summary["counts"]["body_differs"] == 1
    assert summary["not_captured"] == 0
    [record] = comparing.take_records()
    assert record["request"].startswith("GET /2 ")


def test_sessions_outside_the_sample_or_beyond_the_bound_are_not_compared():
    assert not Comparing(CompareOptions(percent=0)).session_started(ENDPOINT, FLOW)
    comparing = Comparing(CompareOptions(percent=100, max_sessions=1))
    assert comparing.session_started(ENDPOINT, FLOW)
    other = Endpoint(REPLAYED, 40001, TARGET, 8080)
    assert not comparing.session_started(other, (CLIENT, 40001, ONLINE, 80))
    assert comparing.counters.sessions_not_compared == 1


def test_difference_records_are_bounded_and_the_rest_counted():
    comparing = Comparing(CompareOptions(percent=100, max_records=1))
    replay(comparing, [(b"/a", http(b"x"), http(b"y")), (b"/b", http(b"x"), http(b"y"))])
    assert len(comparing.take_records()) == 1
    assert comparing.counters.records_dropped == 1


def test_the_online_side_is_cut_at_capture_however_far_the_replay_lags():
    """The client sent three requests (and the online server answered them) before the
    engine replayed the first: each online answer still pairs with its own request."""
    comparing = Comparing(CompareOptions(percent=100))
    assert comparing.session_started(ENDPOINT, FLOW)
    answers = [http(b"a" * 10), http(b"b" * 20), http(b"c" * 30)]
    on = ONLINE_ISN
    for i, answer in enumerate(answers):
        head = b"GET /%d HTTP/1.1\r\n\r\n" % i
        comparing.client_segment(FLOW, on, head, i * 0.01)
        comparing.online_answer(online(on, answer), i * 0.01 + 0.005)
        on += len(answer)
    tg = TARGET_ISN
    for i, answer in enumerate(answers):   # the replay, later
        comparing.request_sent(ENDPOINT, RequestSent(1.0 + i, 0, tg, b""))
        comparing.target_answer(target(tg, answer if i != 1 else http(b"B" * 20)), 1.5 + i)
        tg += len(answer)
    comparing.session_ended(ENDPOINT)
    summary = comparing.summary()
    assert summary["counts"]["same"] == 2 and summary["counts"]["body_differs"] == 1
    [record] = comparing.take_records()
    assert record["request"].startswith("GET /1 ")


def test_online_answers_that_come_before_their_session_are_kept_a_moment():
    comparing = Comparing(CompareOptions(percent=100))
    answer = http(b"early")
    comparing.online_answer(online(ONLINE_ISN, answer), 0.0)        # before the SYN reached the owner
    assert comparing.session_started(ENDPOINT, FLOW)
    request(comparing, 0.01, ONLINE_ISN, TARGET_ISN, b"/e")
    comparing.target_answer(target(TARGET_ISN, answer), 0.02)
    comparing.session_ended(ENDPOINT)
    assert comparing.summary()["counts"]["same"] == 1 and comparing.summary()["not_captured"] == 0


# ---------------------------------------------------------------- with a baseline server

BASELINE = Endpoint(REPLAYED, 44099, TARGET, 8081)
BASELINE_ISN = 500_000


def with_baseline() -> Comparing:
    return Comparing(CompareOptions(percent=100, baselines=frozenset({(TARGET, 8081)})))


def baseline_answer(seq: int, payload: bytes) -> pk.Packet:
    return pk.build(TARGET, REPLAYED, 8081, 44099, seq, 1, pk.ACK | pk.PSH, 500, payload=payload)


def token_page(token: bytes, text: bytes = b"the page") -> bytes:
    return http(text + b" token=" + token + b" end")


def replay_three(comparing: Comparing, answers: list[tuple[bytes, bytes, bytes, bytes]],
                 baseline_first: bool = False, end_baseline: bool = True) -> None:
    """One session replayed to the target and the baseline; per request its path and the
    online, target and baseline answers."""
    assert comparing.session_started(ENDPOINT, FLOW) and comparing.session_started(BASELINE, FLOW)
    on, tg, bs = ONLINE_ISN, TARGET_ISN, BASELINE_ISN
    for i, (path, online_answer, target_answer, base_answer) in enumerate(answers):
        head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        comparing.client_segment(FLOW, on, head, float(i))
        comparing.online_answer(online(on, online_answer), i + 0.01)
        comparing.request_sent(ENDPOINT, RequestSent(i + 0.1, on, tg, head))
        comparing.request_sent(BASELINE, RequestSent(i + 0.1, on, bs, head))
        if baseline_first:
            comparing.target_answer(baseline_answer(bs, base_answer), i + 0.15)
        comparing.target_answer(target(tg, target_answer), i + 0.2)
        if not baseline_first:
            comparing.target_answer(baseline_answer(bs, base_answer), i + 0.3)
        on, tg, bs = on + len(online_answer), tg + len(target_answer), bs + len(base_answer)
    comparing.session_ended(ENDPOINT, len(answers) + 0.5)
    if end_baseline:
        comparing.session_ended(BASELINE, len(answers) + 0.6)


def test_what_the_baseline_answers_differently_from_online_is_noise_and_only_the_rest_counts():
    """Every answer carries a random token; the target also changed /changed. Only that
    path is a difference, whichever of target and baseline answers first."""
    for baseline_first in (False, True):
        comparing = with_baseline()
        answers = [(b"/a", token_page(b"1111"), token_page(b"2222"), token_page(b"3333")),
                   (b"/changed", token_page(b"4444"), token_page(b"5555", b"the PAGE"),
                    token_page(b"6666")),
                   (b"/a", token_page(b"7777"), token_page(b"8888"), token_page(b"9999"))]
        replay_three(comparing, answers, baseline_first)
        summary = comparing.summary()
        assert summary["compared"] == 3, baseline_first
        assert summary["counts"]["same"] == 2 and summary["counts"]["body_differs"] == 1
        assert summary["baseline_sessions"] == 1 and summary["without_baseline"] == 0
        assert summary["noise_ignored"] >= 2
        [record] = comparing.take_records()
        assert record["request"].startswith("GET /changed ")


def test_without_a_baseline_the_same_tokens_are_differences():
    comparing = Comparing(CompareOptions(percent=100))
    replay(comparing, [(b"/a", token_page(b"1111"), token_page(b"2222"))])
    assert comparing.summary()["counts"]["body_differs"] == 1


def test_a_copy_that_ends_first_waits_for_the_baselines_last_answer():
    """The baseline's last answer closes only when its session ends, which may be after
    the target's: the copy's last request is judged with it, not without."""
    comparing = with_baseline()
    replay_three(comparing, [(b"/a", token_page(b"1111"), token_page(b"2222"), token_page(b"3333"))],
                 end_baseline=False)
    assert comparing.summary()["compared"] == 0          # waiting for the baseline
    comparing.session_ended(BASELINE, 1.7)
    summary = comparing.summary()
    assert summary["counts"]["same"] == 1 and summary["without_baseline"] == 0


def test_a_baseline_that_never_answers_holds_the_judgement_for_its_grace_only():
    comparing = with_baseline()
    assert comparing.session_started(ENDPOINT, FLOW) and comparing.session_started(BASELINE, FLOW)
    head = b"GET /a HTTP/1.1\r\n\r\n"
    comparing.client_segment(FLOW, ONLINE_ISN, head, 0.0)
    comparing.online_answer(online(ONLINE_ISN, token_page(b"1111")), 0.01)
    comparing.request_sent(ENDPOINT, RequestSent(0.1, ONLINE_ISN, TARGET_ISN, head))
    comparing.target_answer(target(TARGET_ISN, token_page(b"2222")), 0.2)
    comparing.session_ended(ENDPOINT, 0.5)
    comparing.tick(1.0)
    assert comparing.summary()["compared"] == 0
    comparing.tick(2.6)                                   # GRACE after the copy ended
    summary = comparing.summary()
    assert summary["compared"] == 1 and summary["without_baseline"] == 1
    assert summary["counts"]["body_differs"] == 1         # no noise known: the token differs
    comparing.finish_all()
    assert not comparing._by_flow and not comparing._baselines and not comparing._by_endpoint


def test_the_baseline_answer_serves_every_copy_and_is_then_forgotten():
    """-n 2: both copies are judged with the one baseline answer of each request."""
    comparing = with_baseline()
    second = Endpoint(REPLAYED, 44098, TARGET, 8080)
    assert comparing.session_started(ENDPOINT, FLOW) and comparing.session_started(second, FLOW)
    assert comparing.session_started(BASELINE, FLOW)
    head = b"GET /a HTTP/1.1\r\n\r\n"
    comparing.client_segment(FLOW, ONLINE_ISN, head, 0.0)
    comparing.online_answer(online(ONLINE_ISN, token_page(b"1111")), 0.01)
    comparing.request_sent(BASELINE, RequestSent(0.1, ONLINE_ISN, BASELINE_ISN, head))
    comparing.target_answer(baseline_answer(BASELINE_ISN, token_page(b"3333")), 0.15)
    for n, endpoint in enumerate((ENDPOINT, second)):
        comparing.request_sent(endpoint, RequestSent(0.1, ONLINE_ISN, TARGET_ISN, head))
        comparing.target_answer(pk.build(TARGET, REPLAYED, 8080, endpoint.client_port, TARGET_ISN, 1,
                                         pk.ACK | pk.PSH, 500, payload=token_page(b"222%d" % n)), 0.2)
    for endpoint in (ENDPOINT, second, BASELINE):
        comparing.session_ended(endpoint, 1.0)
    summary = comparing.summary()
    assert summary["counts"]["same"] == 2 and summary["without_baseline"] == 0
    assert not comparing._baselines and not comparing._by_flow


def test_when_the_owner_stops_the_copies_are_judged_with_the_baselines_last_answers():
    comparing = with_baseline()
    replay_three(comparing, [(b"/a", token_page(b"1111"), token_page(b"2222"), token_page(b"3333"))],
                 end_baseline=False)
    comparing.finish_all()
    summary = comparing.summary()
    assert summary["counts"]["same"] == 1 and summary["without_baseline"] == 0
