"""Comparing the target's answers with the online server's, per request (pure)."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tcpcopy.session.compare import (
    BODY_DIFFERS, HEADERS_DIFFER, LENGTH_DIFFERS, NO_ANSWER, SAME, STATUS_DIFFERS, VERDICTS,
    Answer, AnswerStream, CompareConfig, Comparator, GateSpecError, MaskError, Reservoir,
    Sampler, evaluate_gate, parse_fail_on, request_key, view_of,
)
from tcpcopy.session.compare import _opcodes

GET = b"GET /items?page=2 HTTP/1.1\r\nHost: shop\r\n\r\n"
BODY = b'{"items": [1, 2, 3], "next": "/items?page=3"}'


def http(body: bytes = BODY, status: int = 200, headers=(), chunked: bool = False,
         coding: str | None = None, reason: str = "OK") -> bytes:
    """An HTTP/1.1 answer, framed and encoded as asked."""
    if coding == "gzip":
        body = gzip.compress(body)
    elif coding == "deflate":
        body = zlib.compress(body)
    elif coding == "raw-deflate":
        squeeze = zlib.compressobj(wbits=-15)
        body = squeeze.compress(body) + squeeze.flush()
    lines = [f"HTTP/1.1 {status} {reason}".encode()]
    lines += [f"{name}: {value}".encode() for name, value in headers]
    if coding:
        lines.append(b"Content-Encoding: " + (b"deflate" if "deflate" in coding else b"gzip"))
    if chunked:
        lines.append(b"Transfer-Encoding: chunked")
        payload = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                           for i in range(0, len(body), 7)) + b"0\r\nX-Trailer: t\r\n\r\n"
    else:
        lines.append(b"Content-Length: %d" % len(body))
        payload = body
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def whole(data: bytes) -> Answer:
    return Answer.whole(data)


def judge(online: bytes, target: bytes, config: CompareConfig = CompareConfig(),
          request: bytes = GET, baseline: bytes | None = None):
    comparator = Comparator(config)
    base = whole(baseline) if baseline is not None else None
    return comparator.record(request, whole(online), whole(target), base)


# ---------------------------------------------------------------------------------------
# Answer assembly


O_ISN = 0xFFFFFFF0          # the online server's ISN, close to the wrap


def test_answers_are_cut_at_request_boundaries_across_the_wrap():
    stream = AnswerStream()
    greeting, first, second = b"220 ready\r\n", b"250 ok\r\n", b"250 queued as 12\r\n"
    base = O_ISN + 1
    assert stream.begin(base, 0.0) is None                   # the handshake: request zero
    stream.add(base, greeting, 0.010)
    a0 = stream.begin((base + len(greeting)) & 0xFFFFFFFF, 0.100)
    stream.add((base + len(greeting)) & 0xFFFFFFFF, first, 0.130)
    a1 = stream.begin((base + len(greeting) + len(first)) & 0xFFFFFFFF, 0.200)
    stream.add((base + len(greeting) + len(first)) & 0xFFFFFFFF, second, 0.250)
    a2 = stream.finish()
    assert [a.data for a in (a0, a1, a2)] == [greeting, first, second]
    assert [a.length for a in (a0, a1, a2)] == [len(greeting), len(first), len(second)]
    assert [a.latency for a in (a0, a1, a2)] == pytest.approx([0.010, 0.030, 0.050])
    assert all(a.complete for a in (a0, a1, a2))
    assert stream.answers == 3 and stream.bytes_stray == 0


def test_out_of_order_and_repeated_segments_assemble_in_order():
    stream = AnswerStream()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    stream.begin(1000, 1.0)
    stream.add(1020, answer[20:], 1.3)
    stream.add(1000, answer[:10], 1.2)
    stream.add(1000, answer[:10], 1.4)                       # a repeat
    stream.add(1005, answer[5:25], 1.5)                      # an overlapping resend
    got = stream.begin(1000 + len(answer), 2.0)
    assert got.data == answer and got.complete
    assert got.latency == pytest.approx(0.2)                 # the earliest byte of it


def test_next_answer_bytes_that_come_before_the_boundary_stay_for_it():
    stream = AnswerStream()
    stream.begin(0, 0.0)
    stream.add(10, b"second", 0.5)                           # ahead of the boundary
    stream.add(0, b"first-ans!", 0.1)
    first = stream.begin(10, 0.4)
    assert first.data == b"first-ans!"
    assert stream.finish(16).data == b"second"


def test_bytes_past_max_bytes_are_cut_and_holes_are_missing():
    stream = AnswerStream(max_bytes=8)
    stream.begin(0, 0.0)
    stream.add(0, b"0123456789abcdef", 0.1)
    big = stream.begin(16, 0.2)
    assert (big.data, big.length, big.cut, big.missing) == (b"01234567", 16, 8, 0)
    stream.add(16, b"ab", 0.3)
    stream.add(20, b"ef", 0.3)                                # 18..19 never arrive
    holed = stream.finish(22)
    assert (holed.data, holed.length, holed.cut, holed.missing) == (b"ab", 6, 0, 4)
    assert not holed.complete
    assert stream.bytes_cut == 8 and stream.bytes_missing == 4


def test_stray_bytes_backward_boundaries_and_hold_bounds_are_counted():
    stream = AnswerStream(max_bytes=4, max_segments=2)
    stream.add(0, b"xx", 0.0)                                 # before any request
    stream.begin(2, 0.1)
    assert stream.bytes_stray == 2
    stream.add(2, b"ab", 0.2)
    stream.add(4, b"cd", 0.2)
    stream.add(6, b"ef", 0.2)                                 # a third segment: bound
    stream.add(100, b"far", 0.2)                              # far ahead: not held
    assert stream.segments_dropped == 1
    answer = stream.begin(6, 0.3)
    assert answer.data == b"abcd"
    stream.add(3, b"b", 0.4)                                  # a resend of a cut answer
    assert stream.bytes_stray == 3
    assert stream.begin(5, 0.5).length == 0                   # a boundary going back
    assert stream.boundaries_backwards == 1


def test_an_answer_that_never_comes_has_no_latency():
    stream = AnswerStream()
    stream.begin(0, 0.0)
    silent = stream.begin(0, 1.0)
    assert silent == Answer(b"", 0)
    assert stream.finish() == Answer(b"", 0)
    assert stream.finish() is None


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_assembly_matches_the_true_stream(data):
    """Whatever the order, repeats and boundaries, each answer is a prefix of the bytes the
    side sent there, its length is exact, and cut + missing + kept add up."""
    total = data.draw(st.integers(1, 300))
    sent = bytes((i * 37 + 11) & 0xFF for i in range(total))
    isn = data.draw(st.integers(0, 0xFFFFFFFF))
    cuts = sorted(data.draw(st.lists(st.integers(0, total), max_size=6)))
    segments = []
    for _ in range(data.draw(st.integers(0, 30))):
        start = data.draw(st.integers(0, total - 1))
        end = data.draw(st.integers(start + 1, min(total, start + 40)))
        segments.append((start, end))
    max_bytes = data.draw(st.integers(1, 64))
    stream = AnswerStream(max_bytes=max_bytes)
    stream.begin(isn, 0.0)
    order = data.draw(st.permutations(segments))
    answers = []
    for start, end in order:
        stream.add((isn + start) & 0xFFFFFFFF, sent[start:end], 0.0)
    for cut in cuts:
        answers.append(stream.begin((isn + cut) & 0xFFFFFFFF, 0.0))
    answers.append(stream.finish((isn + total) & 0xFFFFFFFF))
    bounds = [0] + cuts + [total]
    for answer, start, end in zip(answers, bounds, bounds[1:]):
        assert answer.length == end - start
        assert sent[start:end].startswith(answer.data)
        assert len(answer.data) + answer.cut + answer.missing == answer.length
        assert len(answer.data) <= max_bytes


# ---------------------------------------------------------------------------------------
# HTTP comparisons


def test_volatile_headers_do_not_count():
    online = http(headers=[("Date", "Mon, 01 Jan 2024 00:00:00 GMT"), ("Server", "nginx/1.22"),
                           ("Set-Cookie", "s=1"), ("ETag", '"a"'), ("X-Request-Id", "r1"),
                           ("Keep-Alive", "timeout=5, max=99"), ("Content-Type", "json")])
    target = http(headers=[("Date", "Tue, 02 Jan 2024 00:00:09 GMT"), ("Server", "nginx/1.25"),
                           ("Set-Cookie", "s=2"), ("ETag", '"b"'), ("X-Request-Id", "r2"),
                           ("Keep-Alive", "timeout=5, max=98"), ("content-type", "json")])
    assert judge(online, target).verdict == SAME


def test_a_different_status_is_reported_first():
    result = judge(http(), http(status=503, body=b"overloaded"))
    assert result.verdict == STATUS_DIFFERS
    assert result.differences[0] == "status: '200' != '503'"


def test_a_different_body_of_the_same_length():
    result = judge(http(), http(body=BODY.replace(b"3]", b"4]")))
    assert result.verdict == BODY_DIFFERS
    assert "body differs at byte" in result.differences[0]


def test_a_body_of_another_length():
    result = judge(http(), http(body=BODY + b" "))
    assert result.verdict == LENGTH_DIFFERS


def test_a_different_header_alone():
    result = judge(http(headers=[("Content-Type", "application/json")]),
                   http(headers=[("Content-Type", "text/html")]))
    assert result.verdict == HEADERS_DIFFER
    assert result.differences == ("header content-type: 'application/json' != 'text/html'",)
    missing = judge(http(headers=[("Cache-Control", "no-store")]), http())
    assert missing.differences == ("header cache-control: 'no-store' != (absent)",)


def test_only_the_configured_headers_are_compared():
    online = http(headers=[("Content-Type", "json"), ("X-Build", "41")])
    target = http(headers=[("Content-Type", "json"), ("X-Build", "42")])
    assert judge(online, target).verdict == HEADERS_DIFFER
    assert judge(online, target, CompareConfig(headers=frozenset({"Content-Type"}))).verdict == SAME
    ignoring = CompareConfig(ignore_headers=frozenset({"x-build"}))
    assert judge(online, target, ignoring).verdict == SAME


def test_chunked_and_content_length_with_the_same_body_are_the_same():
    assert judge(http(), http(chunked=True)).verdict == SAME
    assert judge(http(chunked=True), http()).verdict == SAME
    assert judge(http(chunked=True), http(body=BODY[:-1], chunked=True)).verdict == LENGTH_DIFFERS


def test_compressed_and_identity_with_the_same_body_are_the_same():
    for coding in ("gzip", "deflate", "raw-deflate"):
        assert judge(http(), http(coding=coding)).verdict == SAME, coding
    assert judge(http(coding="gzip", chunked=True), http(coding="deflate")).verdict == SAME
    changed = judge(http(), http(body=BODY.replace(b"1", b"7"), coding="gzip"))
    assert changed.verdict == BODY_DIFFERS


def test_interim_answers_head_and_bodiless_statuses():
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + http()
    assert judge(http(), interim).verdict == SAME
    head = b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
    no_body = b"HTTP/1.1 200 OK\r\nContent-Length: 46\r\n\r\n"
    assert judge(no_body, no_body, request=head).verdict == SAME
    not_modified = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 46\r\n\r\n"
    assert judge(not_modified, not_modified).verdict == SAME


def test_pipelined_answers_are_compared_message_by_message():
    online = http(body=b"one") + http(body=b"two")
    assert judge(online, http(body=b"one", chunked=True) + http(body=b"two")).verdict == SAME
    second_status = judge(online, http(body=b"one") + http(body=b"two", status=404))
    assert second_status.verdict == STATUS_DIFFERS
    assert second_status.differences == ("1:status: '200' != '404'",)


def test_a_close_delimited_body():
    online = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it"
    assert judge(online, online).verdict == SAME
    assert judge(online, online + b"!").verdict == LENGTH_DIFFERS


# ---------------------------------------------------------------------------------------
# Truncated and malformed answers


def test_answers_cut_short_are_compared_on_what_both_hold():
    big = bytes(range(256)) * 40
    online, target = http(body=big), http(body=big, chunked=True)
    stream = AnswerStream(max_bytes=2000)
    stream.begin(0, 0.0)
    stream.add(0, online, 0.0)
    cut_online = stream.finish(len(online))
    assert cut_online.cut > 0
    result = Comparator().record(GET, cut_online, whole(target))
    assert result.verdict == SAME
    assert any("first" in note for note in result.notes)
    changed = big[:100] + b"!" + big[101:]
    assert Comparator().record(GET, cut_online, whole(http(body=changed))).verdict == BODY_DIFFERS


@pytest.mark.parametrize("bad", [
    b"HTTP/1.1 200 OK\r\nContent-Le",                                   # head cut short
    b"HTTP/1.1 2000 OK\r\n\r\n",                                        # status line
    b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 2\r\n\r\nhi",  # header line
    b"HTTP/1.1 200 OK\r\nContent-Length: -4\r\n\r\nhi",                # content-length
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhi",      # cut in a chunk
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 4\r\n\r\nnope",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiGARBAGE",
    b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 5000 + b"\r\n",              # head too long
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 5000,
])
def test_malformed_answers_give_a_verdict_and_a_note_never_an_exception(bad):
    result = judge(http(), bad)
    assert result.verdict in (BODY_DIFFERS, LENGTH_DIFFERS, HEADERS_DIFFER)
    assert judge(bad, bad).verdict == SAME


def test_a_malformed_answer_against_a_good_one_is_body_differs_with_a_note():
    result = judge(http(), b"HTTP/1.1 xyz\r\n\r\n")
    assert result.verdict == BODY_DIFFERS
    assert any("malformed status line" in note for note in result.notes)
    assert judge(http(), b"-ERR not http\r\n").verdict == BODY_DIFFERS


def test_decompression_is_bounded_and_the_cut_counted():
    bomb = http(body=b"\0" * (4 << 20), coding="gzip")
    comparator = Comparator(CompareConfig(max_decoded_bytes=64 << 10))
    result = comparator.record(GET, whole(bomb), whole(bomb))
    assert result.verdict == SAME
    assert comparator.cuts.decoded == 2
    assert any("decoded body cut" in note for note in result.notes)
    view = view_of(whole(bomb), None, CompareConfig(max_decoded_bytes=64 << 10))
    assert len(view.body) == 64 << 10 and not view.complete


def test_header_and_message_bounds_are_counted():
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20)) + \
        b"Content-Length: 0\r\n\r\n"
    comparator = Comparator(CompareConfig(max_headers=5, max_messages=2))
    comparator.record(GET, whole(many), whole(many * 3))
    assert comparator.cuts.headers == 3 * 15       # Content-Length is kept: it frames
    assert comparator.cuts.messages == 1


def test_no_answer_and_empty_answers():
    assert judge(http(), b"").verdict == NO_ANSWER
    assert judge(b"", b"").verdict == SAME
    assert judge(b"", http()).verdict == LENGTH_DIFFERS


# ---------------------------------------------------------------------------------------
# Other protocols and masks


def test_other_protocols_compare_length_and_digest():
    redis_get = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"
    assert judge(b"$5\r\nvalue\r\n", b"$5\r\nvalue\r\n", request=redis_get).verdict == SAME
    assert judge(b"$5\r\nvalue\r\n", b"$5\r\nvalum\r\n", request=redis_get).verdict == BODY_DIFFERS
    assert judge(b"$5\r\nvalue\r\n", b"$-1\r\n", request=redis_get).verdict == LENGTH_DIFFERS
    assert request_key(redis_get) == "*2"


def test_masks_apply_to_headers_bodies_raw_bytes_and_keys():
    stamp = CompareConfig(masks=(r"\d{4}-\d\d-\d\dT[\d:]+Z", r"req-[0-9a-f]+"))
    online = http(body=b'{"at": "2024-01-01T10:00:00Z", "id": "req-a1"}',
                  headers=[("X-Trace", "req-ff00")])
    target = http(body=b'{"at": "2024-06-30T23:59:59Z", "id": "req-b2c3"}',
                  headers=[("X-Trace", "req-0a")])
    assert judge(online, target).verdict != SAME
    assert judge(online, target, stamp).verdict == SAME
    assert judge(b"+OK 2024-01-01T10:00:00Z\r\n", b"+OK 2025-02-02T11:11:11Z\r\n", stamp,
                 request=b"TIME\r\n").verdict == SAME
    ids = Comparator(CompareConfig(masks=(r"\d+",)))
    assert ids.record(b"GET /user/123 HTTP/1.1\r\n\r\n", whole(http()), whole(http())).key == \
        "GET /user/<masked>"


def test_bad_masks_are_refused_clearly():
    with pytest.raises(MaskError, match="not a valid regular expression"):
        Comparator(CompareConfig(masks=("([",)))
    with pytest.raises(MaskError, match="matches the empty string"):
        Comparator(CompareConfig(masks=("x*",)))


# ---------------------------------------------------------------------------------------
# Noise from a baseline


def api_body(token: str, path: str = "/items/7") -> bytes:
    return ('{"path": "%s", "request_token": "%s", "count": 3}' % (path, token)).encode()


def test_a_random_token_in_every_answer_is_noise_a_changed_path_is_not():
    comparator = Comparator()
    online, baseline = http(api_body("f3a9c1")), http(api_body("77d0e2b4"))
    same = comparator.record(GET, whole(online), whole(http(api_body("0b1c"))), whole(baseline))
    assert same.verdict == SAME and same.noise_ignored == 1
    moved = comparator.record(GET, whole(online), whole(http(api_body("9e9e", "/items/8"))),
                              whole(baseline))
    assert moved.verdict == BODY_DIFFERS
    assert "/items/7" in moved.differences[0]


def test_noise_is_remembered_per_request_key():
    comparator = Comparator()
    comparator.record(GET, whole(http(api_body("aa11"))), whole(http(api_body("bb22"))),
                      whole(http(api_body("cc33"))))
    # Later requests of the same key, without a baseline: the token is still noise.
    later = comparator.record(GET, whole(http(api_body("dd44", "/items/9"))),
                              whole(http(api_body("ee55", "/items/9"))))
    assert later.verdict == SAME
    moved = comparator.record(GET, whole(http(api_body("dd44", "/items/9"))),
                              whole(http(api_body("ee55", "/items/8"))))
    assert moved.verdict == BODY_DIFFERS
    longer = comparator.record(GET, whole(http(api_body("dd44", "/items/9"))),
                               whole(http(api_body("ee55", "/items/10"))))
    assert longer.verdict == LENGTH_DIFFERS
    # Another key learned nothing.
    other = b"GET /other HTTP/1.1\r\n\r\n"
    assert comparator.record(other, whole(http(api_body("aa11"))),
                             whole(http(api_body("bb22")))).verdict == BODY_DIFFERS


def test_noisy_headers_and_status_are_learned_by_name():
    comparator = Comparator()
    online = http(headers=[("X-Shard", "3"), ("Content-Type", "json")])
    baseline = http(headers=[("X-Shard", "5"), ("Content-Type", "json")])
    target = http(headers=[("X-Shard", "9"), ("Content-Type", "json")])
    assert comparator.record(GET, whole(online), whole(target), whole(baseline)).verdict == SAME
    retyped = http(headers=[("X-Shard", "9"), ("Content-Type", "html")])
    assert comparator.record(GET, whole(online), whole(retyped)).verdict == HEADERS_DIFFER
    flaky = Comparator()
    flaky.record(GET, whole(http()), whole(http()), whole(http(status=429, body=b"slow down")))
    assert flaky.record(GET, whole(http()), whole(http(status=429))).verdict == SAME
    # The failed baseline's body taught nothing: a changed body still counts.
    assert flaky.cuts.noise_bodies_skipped == 1
    assert flaky.record(GET, whole(http()), whole(http(body=b"{}"))).verdict == LENGTH_DIFFERS


def test_noise_keys_and_long_bodies_are_bounded():
    comparator = Comparator(CompareConfig(max_noise_keys=2, max_diff_tokens=8))
    for n in range(5):
        request = b"GET /k%d HTTP/1.1\r\n\r\n" % n
        comparator.record(request, whole(http(api_body("a"))), whole(http(api_body("b"))),
                          whole(http(api_body("c"))))
    assert len(comparator.noise) == 2 and comparator.cuts.noise_keys == 3
    assert comparator.cuts.noise_coarse == 5          # too many tokens: the body as a whole
    assert comparator.summary()["noise_keys"] == 2


def catalogue(token: str, changed: int | None = None) -> bytes:
    """A 28 KB JSON answer with a random token at each end."""
    items = ",".join('{"id": %d, "name": "item%s", "price": %d.5}'
                     % (i, "X" if i == changed else i, i) for i in range(600))
    return ('{"request_id": "%s", "items": [%s], "ts": "%s"}'
            % (token, items, token[::-1])).encode()


def test_noise_in_large_bodies():
    comparator = Comparator()
    online = whole(http(catalogue("on0001")))
    result = comparator.record(GET, online, whole(http(catalogue("tg000002"))),
                               whole(http(catalogue("bs3"))))
    assert result.verdict == SAME
    changed = comparator.record(GET, online, whole(http(catalogue("tg000002", changed=321))))
    assert changed.verdict == LENGTH_DIFFERS
    assert "'item321' != 'itemX'" in changed.differences[0]
    assert comparator.cuts.noise_coarse == 0


def test_a_baseline_unlike_the_online_answer_teaches_nothing_about_bodies():
    comparator = Comparator()
    online = whole(http(b" ".join(b"word%d" % i for i in range(100))))
    unlike = whole(http(b" ".join(b"other%d" % i for i in range(100))))
    comparator.record(GET, online, online, unlike)
    assert comparator.cuts.noise_bodies_skipped == 1
    edited = whole(http(b" ".join(b"word%d" % (i if i != 50 else 99) for i in range(100))))
    assert comparator.record(GET, online, edited).verdict == BODY_DIFFERS


def test_noise_on_bodies_cut_short():
    long_tail = b" pad" * 600
    stream_max = 1024

    def cut(data: bytes) -> Answer:
        return Answer(data[:stream_max], len(data), cut=max(0, len(data) - stream_max))

    comparator = Comparator()
    online, baseline = http(api_body("x1") + long_tail), http(api_body("y22") + long_tail)
    result = comparator.record(GET, cut(online), cut(http(api_body("z333") + long_tail)),
                               cut(baseline))
    assert result.verdict == SAME


# ---------------------------------------------------------------------------------------
# Sampling, bounds, counters and examples


def test_sampling_by_share_is_deterministic_per_seed_and_key():
    keys = [b"10.0.0.%d:%d" % (i % 250, 40000 + i) for i in range(4000)]
    first = [Sampler(share=0.25, seed=7).sampled(k) for k in keys]
    again = Sampler(share=0.25, seed=7)
    assert [again.sampled(k) for k in keys] == first
    assert again.offered == 4000 and again.chosen == sum(first)
    assert 0.22 < sum(first) / len(keys) < 0.28
    other = [Sampler(share=0.25, seed=8).sampled(k) for k in keys]
    assert other != first
    assert not any(Sampler(share=0.0).sampled(k) for k in keys[:50])
    assert all(Sampler(share=1.0).sampled(k) for k in keys[:50])


def test_sampling_every_nth_session():
    sampler = Sampler(every=4, seed=1)
    picks = [sampler.sampled(b"s%d" % i) for i in range(12)]
    assert picks == [False, False, False, True] * 3
    with pytest.raises(ValueError):
        Sampler(every=0)
    with pytest.raises(ValueError):
        Sampler(share=1.5)


def test_examples_are_bounded_per_verdict_and_json_ready():
    comparator = Comparator(CompareConfig(examples_per_verdict=2, example_bytes=32))
    for n in range(5):
        comparator.record(GET, whole(http()), whole(http(status=500 + n)))
        comparator.record(GET, whole(http()), whole(http()))
    examples = comparator.examples()
    assert [e["verdict"] for e in examples] == [STATUS_DIFFERS, STATUS_DIFFERS]
    assert comparator.cuts.examples == 3
    first = examples[0]
    assert first["key"] == "GET /items" and first["request"] == GET[:32].decode()
    assert first["online"]["length"] == len(http()) and len(first["target"]["first_bytes"]) <= 32
    assert first["differences"] == ["status: '200' != '500'"]
    for line in examples:
        json.loads(json.dumps(line))
    summary = json.loads(json.dumps(comparator.summary()))
    assert summary["counts"] == {**{v: 0 for v in VERDICTS}, SAME: 5, STATUS_DIFFERS: 5}
    assert summary["shares"][SAME] == 0.5 and summary["compared"] == 10


def test_answer_cuts_and_differences_are_counted():
    comparator = Comparator()
    online = Answer(b"abc", 10, cut=7)
    target = Answer(b"abd", 5, missing=2)
    comparator.record(b"PING\r\n", online, target)
    cuts = comparator.cuts
    assert (cuts.answer_bytes, cuts.missing_bytes, cuts.incomplete_answers) == (7, 2, 2)
    stream = AnswerStream()
    stream.add(5, b"stray", 0.0)
    stream.begin(10, 0.0)
    comparator.stream_closed(stream)
    assert comparator.cuts.stray_bytes == 5
    headers = [("X-%d" % i, "a") for i in range(30)]
    result = comparator.record(GET, whole(http(headers=headers)), whole(http()))
    assert result.verdict == HEADERS_DIFFER and len(result.differences) == 16
    assert result.differences_cut == 14 and comparator.cuts.differences == 14


def test_latency_percentiles_come_from_a_bounded_reservoir():
    comparator = Comparator(CompareConfig(reservoir_size=100, seed=3))
    for i in range(1, 1001):
        comparator.record(b"PING\r\n", Answer(b"+PONG\r\n", 7, latency=i / 1000),
                          Answer(b"+PONG\r\n", 7, latency=2 * i / 1000))
    latency = comparator.summary()["latency"]
    assert latency["online"]["samples"] == 1000 and latency["online"]["kept"] == 100
    assert 0.35 < latency["online"]["p50"] < 0.65
    assert 0.7 < latency["target"]["p50"] < 1.3
    assert latency["target"]["p99"] >= latency["target"]["p90"] >= latency["target"]["p50"]
    exact = Reservoir(size=10)
    for value in range(1, 11):
        exact.add(float(value))
    assert (exact.percentile(50), exact.percentile(90), exact.percentile(99)) == (5.0, 9.0, 10.0)
    assert Reservoir().percentile(50) is None


def test_config_bounds_are_checked():
    with pytest.raises(ValueError, match="max_decoded_bytes"):
        CompareConfig(max_decoded_bytes=0)
    with pytest.raises(ValueError):
        AnswerStream(max_bytes=0)


# ---------------------------------------------------------------------------------------
# The gate


def test_fail_on_specs_parse():
    thresholds = parse_fail_on("loss>0.001, body_differs>1%,status_differs>0,compared<100")
    assert [str(t) for t in thresholds] == [
        "loss>0.001", "body_differs>0.01", "status_differs>0", "compared<100"]


@pytest.mark.parametrize("spec, message", [
    ("", "empty specification"),
    ("loss>0.1,,status_differs>0", "empty threshold"),
    ("bodydiffers>0.1", "unknown metric 'bodydiffers'"),
    ("loss", "expected METRIC>LIMIT"),
    ("loss=0.1", "expected METRIC>LIMIT"),
    ("loss>abc", "'abc' is not a number"),
    ("loss>-1", "finite number >= 0"),
    ("loss>nan", "finite number >= 0"),
    ("body_differs>2", "share between 0 and 1"),
    ("compared<5%", "a count, not a share"),
    ("loss>0.1,loss>0.2", "given twice"),
    ("0.1>loss", "expected METRIC>LIMIT"),
])
def test_bad_fail_on_specs_are_refused_clearly(spec, message):
    with pytest.raises(GateSpecError, match=message):
        parse_fail_on(spec)


def test_the_gate_passes_and_fails():
    thresholds = parse_fail_on("loss>0.001,body_differs>0.01,status_differs>0")
    counts = {SAME: 990, BODY_DIFFERS: 10}
    passed = evaluate_gate(thresholds, counts, loss=0.0005)
    assert passed.passed and passed.describe() == "gate passed"
    failed = evaluate_gate(thresholds, {SAME: 980, BODY_DIFFERS: 19, STATUS_DIFFERS: 1},
                           loss=0.002)
    assert not failed.passed
    assert [c.threshold.metric for c in failed.crossed] == ["loss", "body_differs",
                                                           "status_differs"]
    assert "body_differs = 0.019 (body_differs>0.01 crossed)" in failed.describe()
    too_few = evaluate_gate(parse_fail_on("compared<100,differs>0.5"), {SAME: 10}, loss=0.0)
    assert [c.threshold.metric for c in too_few.crossed] == ["compared"]
    comparator = Comparator()
    comparator.record(GET, whole(http()), whole(http(status=500)))
    gate = evaluate_gate(parse_fail_on("status_differs>0"), comparator.counts, loss=0.0)
    assert not gate.passed and gate.values["status_differs"] == 1.0
    edge = evaluate_gate(parse_fail_on("differs>0.01"), {SAME: 99, BODY_DIFFERS: 1}, loss=0.0)
    assert edge.passed                                 # exactly at the limit: not crossed
    with pytest.raises(ValueError, match="loss ratio"):
        evaluate_gate(thresholds, counts, loss=float("nan"))


# ---------------------------------------------------------------------------------------
# Fuzz: random input never raises


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=600), st.booleans(), st.sampled_from([None, b"GET", b"HEAD"]))
def test_random_bytes_never_raise(tail, prefixed, method):
    data = (b"HTTP/1.1 " if prefixed else b"") + tail
    for answer in (whole(data), Answer(data, len(data) + 9, cut=9)):
        view = view_of(answer, method, CompareConfig(max_decoded_bytes=4096))
        assert len(view.body) <= max(len(data), 4096) * 2


@FUZZ
@given(st.lists(st.sampled_from([b"a", b"b", b"c", b"d", b" ", b"x1", b"y2"]), max_size=60),
       st.lists(st.sampled_from([b"a", b"b", b"c", b"d", b" ", b"x1", b"z3"]), max_size=60))
def test_the_body_diff_aligns_the_two_sides(a, b):
    """Between the differing regions the two token lists are equal, in order: the regions
    turn one into the other."""
    ops = _opcodes(a, b, complete=True)
    if ops is None:
        return
    rebuilt, i = [], 0
    for _, i1, i2, j1, j2 in ops:
        assert i <= i1 <= i2
        rebuilt += a[i:i1] + b[j1:j2]
        i = i2
    assert rebuilt + a[i:] == b


def _piece(draw) -> bytes:
    kind = draw(st.sampled_from(["status", "header", "blank", "chunk", "gzip", "bytes"]))
    if kind == "status":
        return b"HTTP/1.%d %d OK\r\n" % (draw(st.integers(0, 1)), draw(st.integers(99, 600)))
    if kind == "header":
        name = draw(st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Content-Encoding",
                                     b"Date", b"X"]))
        value = draw(st.sampled_from([b"chunked", b"gzip", b"deflate", b"5", b"0", b"x",
                                      b"gzip, deflate", b"99999999"]))
        return name + b": " + value + b"\r\n"
    if kind == "blank":
        return b"\r\n"
    if kind == "chunk":
        body = draw(st.binary(max_size=20))
        return b"%x\r\n%s\r\n" % (draw(st.integers(0, 40)), body)
    if kind == "gzip":
        return gzip.compress(draw(st.binary(max_size=50)))[:draw(st.integers(0, 80))]
    return draw(st.binary(max_size=30))


@FUZZ
@given(st.data())
def test_http_like_answers_never_raise(data):
    pieces = data.draw(st.lists(st.builds(lambda: None), min_size=1, max_size=14))
    online = b"".join(_piece(data.draw) for _ in pieces)
    target = b"".join(_piece(data.draw) for _ in pieces)
    config = CompareConfig(max_decoded_bytes=512, max_headers=4, max_messages=3,
                           max_diff_tokens=64, masks=(r"\d+",))
    comparator = Comparator(config)
    baseline = whole(online[::-1]) if data.draw(st.booleans()) else None
    for request in (GET, b"HEAD / HTTP/1.1\r\n\r\n", b"\x00\xff"):
        result = comparator.record(request, whole(online), Answer(target, len(target) + 3, cut=3),
                                   baseline)
        assert result.verdict in VERDICTS
    assert comparator.record(GET, whole(online), whole(online)).verdict == SAME
    json.dumps(comparator.summary())
    json.dumps(comparator.examples())
