"""Whole answers of watched routes: WATCH in, ANSWERS out, beside the usual RESPONSES.

In process: a Worker on an ipc:// ROUTER with ``answer_bytes`` set, a real DEALER as the
owner, decoded answers fed to ``on_packet`` and a hand-driven clock. The lab test at the end
runs the real ``intercept`` command capturing a real server's answers.
"""

from __future__ import annotations

import logging
import shutil
import tempfile

import pytest
import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.cluster import wire
from tcpcopy.intercept.worker import ANSWER_BATCH_BYTES, HEADER_SNAPLEN, Worker, WorkerConfig
from tests.intercept.test_worker import Clock, answer, endpoint, header_length, hello_from, pump, receive

ANSWER_BYTES = 1000


def owner_socket(context: zmq.Context, worker: Worker) -> zmq.Socket:
    """A DEALER that takes what a comparing owner takes, greeted by the worker."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(wire.OWNER_COMPARING_TAKES_FROM_INTERCEPT))
    sock.connect(worker.socket.getsockopt_string(zmq.LAST_ENDPOINT))
    sock.send(hello_from())
    pump(worker)
    assert receive(sock)[0] == wire.HELLO
    return sock


@pytest.fixture
def make_rig():
    """make_rig(answer_bytes=..., watch_max=...) -> (worker, owner DEALER, clock)."""
    made, path = [], tempfile.mkdtemp(prefix="icpa-")
    context = zmq.Context()

    def make(**config):
        clock = Clock()
        worker = Worker(WorkerConfig(endpoint=f"ipc://{path}/intercept-{len(made)}.ipc", **config),
                        clock=clock, context=context)
        worker.bind()
        owner = owner_socket(context, worker)
        made.append((worker, owner))
        return worker, owner, clock

    yield make
    for worker, owner in made:
        worker.close()
        owner.close(linger=0)
    context.term()
    shutil.rmtree(path, ignore_errors=True)


def register_and_watch(worker: Worker, owner: zmq.Socket, registered: list, watched: list) -> None:
    owner.send(wire.encode_register(registered))
    owner.send(wire.encode_watch(watched))
    pump(worker)


def sent_to(owner: zmq.Socket) -> dict[int, list]:
    """Every record the owner received so far, by message kind."""
    got: dict[int, list] = {wire.RESPONSES: [], wire.ANSWERS: []}
    while (message := receive(owner, 0.2)) is not None:
        if message[0] in got:
            got[message[0]].extend(message[1])
    return got


def test_a_watched_answer_goes_whole_besides_its_header_and_another_only_as_header(make_rig):
    worker, owner, clock = make_rig(answer_bytes=ANSWER_BYTES)
    register_and_watch(worker, owner, [endpoint(40000), endpoint(40001)], [endpoint(40000)])
    body = bytes(range(256)) * 2
    watched = [answer(40000, "SA", seq=4999), answer(40000, "PA", payload=body),
               answer(40000, "FA", seq=5512)]
    other = answer(40001, "PA", payload=body)
    for raw in (*watched, other):
        worker.on_packet(pk.decode(raw), clock.now)
    worker.flush_all()
    got = sent_to(owner)
    assert got[wire.RESPONSES] == [raw[:header_length(raw)] for raw in (*watched, other)]
    assert got[wire.ANSWERS] == [watched[1]], "only the watched answer that carries payload, whole"
    stats = worker.stats()
    assert (stats["watched_routes"], stats["answer_records"], stats["answer_bytes"],
            stats["answer_packs"]) == (1, 1, len(watched[1]), 1)


def test_an_answer_is_cut_at_answer_bytes_of_payload_and_says_how_long_it_was(make_rig):
    worker, owner, clock = make_rig(answer_bytes=ANSWER_BYTES)
    register_and_watch(worker, owner, [endpoint(40000)], [endpoint(40000)])
    raw = answer(40000, "PA", payload=bytes(1400))
    worker.on_packet(pk.decode(raw), clock.now)
    worker.flush_all()
    [record] = sent_to(owner)[wire.ANSWERS]
    assert record == raw[:header_length(raw) + ANSWER_BYTES]
    assert pk.decode(record, headers_only=True).payload_len == 1400   # the IP length is left whole


@pytest.mark.parametrize(("answer_bytes", "kept"), [(65536, 60000), (2000, 2000)])
def test_a_gro_super_packet_goes_whole_or_cut_as_its_capture_holds_it(make_rig, answer_bytes, kept):
    """A 60,000-byte GRO answer: the snaplen holds it all, or only what answer_bytes asks."""
    worker, owner, clock = make_rig(answer_bytes=answer_bytes)
    assert worker.config.snaplen == HEADER_SNAPLEN + answer_bytes
    register_and_watch(worker, owner, [endpoint(40000)], [endpoint(40000)])
    body = bytes(i % 251 for i in range(60000))
    raw = answer(40000, "PA", payload=body)
    captured = raw[:worker.config.snaplen]                 # what the kernel hands over (no link header)
    worker.on_packet(pk.decode(captured, headers_only=True), clock.now)
    worker.flush_all()
    got = sent_to(owner)
    assert got[wire.RESPONSES] == [raw[:header_length(raw)]]
    assert got[wire.ANSWERS] == [raw[:header_length(raw) + kept]]


def test_the_snaplen_is_capped_at_the_wire_limit():
    config = WorkerConfig(answer_bytes=wire.ANSWER_RECORD_MAX_BYTES)
    assert config.snaplen == wire.ANSWER_RECORD_MAX_BYTES
    assert WorkerConfig(payload=64).snaplen == HEADER_SNAPLEN + 64
    with pytest.raises(ValueError):
        WorkerConfig(answer_bytes=wire.ANSWER_RECORD_MAX_BYTES + 1)


def test_answers_are_batched_by_records_and_bytes_and_leave_after_the_batch_delay(make_rig):
    worker, owner, clock = make_rig(answer_bytes=ANSWER_BYTES)
    register_and_watch(worker, owner, [endpoint(40000)], [endpoint(40000)])
    small = pk.decode(answer(40000, "PA", payload=b"x"))
    for _ in range(wire.ANSWERS_MAX_RECORDS + 1):
        worker.on_packet(small, clock.now)
    answers = [m for m in iter(lambda: receive(owner, 0.2), None) if m[0] == wire.ANSWERS]
    assert [len(body) for _, body in answers] == [wire.ANSWERS_MAX_RECORDS]   # full: at once
    clock.now += 0.001
    worker.step(max_wait=0)
    answers = [m for m in iter(lambda: receive(owner, 0.2), None) if m[0] == wire.ANSWERS]
    assert [len(body) for _, body in answers] == [1]                          # due: then
    big = pk.decode(answer(40000, "PA", payload=bytes(ANSWER_BYTES)))
    per_message = -(-ANSWER_BATCH_BYTES // len(big.buf))
    for _ in range(per_message):
        worker.on_packet(big, clock.now)
    answers = [m for m in iter(lambda: receive(owner, 0.2), None) if m[0] == wire.ANSWERS]
    assert [len(body) for _, body in answers] == [per_message]


def test_watch_without_answer_bytes_is_refused_counted_and_logged_once(make_rig, caplog):
    caplog.set_level(logging.WARNING, logger="tcpcopy.intercept")
    worker, owner, clock = make_rig()
    register_and_watch(worker, owner, [endpoint(40000), endpoint(40001)], [endpoint(40000)])
    owner.send(wire.encode_watch([endpoint(40001)]))
    pump(worker)
    worker.on_packet(pk.decode(answer(40000, "PA", payload=b"hello")), clock.now)
    worker.flush_all()
    assert sent_to(owner)[wire.ANSWERS] == []
    stats = worker.stats()
    assert (stats["watch_off"], stats["watch_refused"], stats["watched_routes"]) == (2, 2, 0)
    lines = [r.getMessage() for r in caplog.records if "WATCH" in r.getMessage()]
    assert len(lines) == 1 and "--answer-bytes" in lines[0]


def test_watch_of_no_route_another_owners_route_or_past_watch_max_is_refused(make_rig, caplog):
    caplog.set_level(logging.WARNING, logger="tcpcopy.intercept")
    worker, owner, clock = make_rig(answer_bytes=ANSWER_BYTES, watch_max=1)
    other = owner_socket(owner.context, worker)
    other.send(wire.encode_register([endpoint(41000)]))
    pump(worker)
    register_and_watch(worker, owner, [endpoint(40000), endpoint(40001)],
                       [endpoint(40000), endpoint(40001), endpoint(42000), endpoint(41000)])
    stats = worker.stats()
    assert (stats["watches"], stats["watch_over_quota"], stats["watch_unknown"], stats["watch_taken"],
            stats["watch_refused"]) == (1, 1, 1, 1, 3)
    worker.on_packet(pk.decode(answer(41000, "PA", payload=b"not yours")), clock.now)
    worker.flush_all()
    assert sent_to(owner)[wire.ANSWERS] == [] and sent_to(other)[wire.ANSWERS] == []
    lines = [r.getMessage() for r in caplog.records if "WATCH refused" in r.getMessage()]
    assert len(lines) == 3 and any("--watch-max" in line for line in lines)
    other.close(linger=0)


def test_a_watch_ends_with_its_route_and_an_unsent_batch_of_a_leaving_owner_is_counted(make_rig):
    worker, owner, clock = make_rig(answer_bytes=ANSWER_BYTES)
    register_and_watch(worker, owner, [endpoint(40000), endpoint(40001)], [endpoint(40000), endpoint(40001)])
    owner.send(wire.encode_unregister([endpoint(40000)]))
    pump(worker)
    assert worker.stats()["watched_routes"] == 1
    owner.send(wire.encode_register([endpoint(40000)]))
    pump(worker)
    worker.on_packet(pk.decode(answer(40000, "PA", payload=b"again")), clock.now)
    worker.on_packet(pk.decode(answer(40001, "PA", payload=b"still watched")), clock.now)
    owner.send(wire.encode_bye("done"))
    pump(worker)
    stats = worker.stats()
    assert (stats["watched_routes"], stats["answer_drops"], stats["answer_records"]) == (0, 1, 0)



def test_the_command_takes_answer_bytes_and_watch_max_from_flags_or_the_cluster_config(tmp_path):
    from tcpcopy.intercept import main as intercept_main
    config = intercept_main.config_from(intercept_main.parse_args(
        ["-F", "tcp", "--answer-bytes", "4096", "--watch-max", "10"]))
    assert (config.answer_bytes, config.watch_max, config.snaplen) == (4096, 10, HEADER_SNAPLEN + 4096)
    assert intercept_main.config_from(intercept_main.parse_args(["-F", "tcp"])).answer_bytes == 0
    toml = tmp_path / "cluster.toml"
    toml.write_text('[copy]\nmappings = ["80-198.18.0.2:8080"]\nintercepts = ["198.18.2.1:36524"]\n'
                    "[intercept]\nanswer_bytes = 65536\nwatch_max = 100\n[security]\ncurve = false\n")
    config = intercept_main.config_from(intercept_main.parse_args(["--config", str(toml), "--shard", "0"]))
    assert (config.answer_bytes, config.watch_max) == (65536, 100)
