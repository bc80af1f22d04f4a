"""Whole answers of watched routes: WATCH in, ANSWERS out, beside the usual RESPONSES.

In process: a Worker on an ipc:// ROUTER with ``answer_bytes`` set, a real DEALER as the
owner, decoded answers fed to ``on_packet`` and a hand-driven clock. The lab test at the end
runs the real ``intercept`` command capturing a real server's answers.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest
import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.cluster import wire
from tcpcopy.cluster.options import InterceptAddress
from tcpcopy.intercept.worker import ANSWER_BATCH_BYTES, HEADER_SNAPLEN, Worker, WorkerConfig
from tcpcopy.session import intercepts as intercepts_module
from tcpcopy.session.intercepts import InterceptLinks
from tcpcopy.lab.netns import Host, Lab, Route, Topology, link
from tests.intercept.test_worker import (ASSISTANT_IP, TARGET_IP, TARGET_PORT, Clock, Intercept, answer,
                                         endpoint, header_length, hello_from, pump, receive)
from tests.lab.conftest import lab_unavailable_reason

ANSWER_BYTES = 1000
ETHERNET = bytes(6) + bytes(range(1, 7)) + b"\x08\x00"   # a link header: MACs and IPv4's type


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
    captured = (ETHERNET + raw)[:worker.config.snaplen]     # what the kernel hands over
    worker.on_frame(captured, pk.LINKTYPE_ETHERNET, clock.now)
    worker.flush_all()
    got = sent_to(owner)
    assert got[wire.RESPONSES] == [raw[:header_length(raw)]]
    assert got[wire.ANSWERS] == [raw[:header_length(raw) + kept]]


def test_frames_of_unwatched_routes_are_decoded_from_their_head_only(make_rig):
    worker, owner, clock = make_rig(answer_bytes=65536, payload=16)
    register_and_watch(worker, owner, [endpoint(40000), endpoint(40001)], [endpoint(40000)])
    raw = answer(40001, "PA", payload=bytes(range(200)) * 300)
    worker.on_frame(ETHERNET + raw, pk.LINKTYPE_ETHERNET, clock.now)
    worker.on_frame(ETHERNET + b"\x45", pk.LINKTYPE_ETHERNET, clock.now)   # truncated IP header
    worker.flush_all()
    got = sent_to(owner)
    assert got == {wire.RESPONSES: [raw[:header_length(raw) + 16]], wire.ANSWERS: []}
    assert worker.stats()["malformed"] == 1


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


# -- the owner's side: InterceptLinks


def links_to(worker: Worker, context: zmq.Context, comparing: bool) -> InterceptLinks:
    """An owner's InterceptLinks connected to ``worker`` (bound on tcp://127.0.0.1) and greeted."""
    port = int(worker.socket.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
    links = InterceptLinks(context, [InterceptAddress("127.0.0.1", port)], "owner-0@test", comparing=comparing)
    deadline = time.monotonic() + 5
    while not links.links[0].up:             # a DEALER drops what it sends before it connects
        assert time.monotonic() < deadline, "the owner never heard the intercept's HELLO"
        links.say_hello()
        pump(worker)
        links.receive(links.links[0].socket, 0.0, list)
    return links


@pytest.fixture
def tcp_worker():
    context = zmq.Context()
    clock = Clock()
    worker = Worker(WorkerConfig(endpoint="tcp://127.0.0.1:*", answer_bytes=ANSWER_BYTES), clock=clock,
                    context=context)
    worker.bind()
    yield worker, context, clock
    worker.close()
    context.destroy(linger=0)


def drain(worker: Worker, links: InterceptLinks, wait: float = 0.3) -> list[bytes]:
    """The header records the owner receives within ``wait`` seconds."""
    records, deadline = [], time.monotonic() + wait
    while time.monotonic() < deadline:
        pump(worker, 1)
        records += links.receive(links.links[0].socket, 0.0, list)
    return records


def test_a_comparing_owner_watches_after_registering_and_takes_headers_and_whole_answers(tcp_worker):
    worker, context, clock = tcp_worker
    links = links_to(worker, context, comparing=True)
    assert links.links[0].socket.getsockopt(zmq.MAXMSGSIZE) == wire.max_frame(
        wire.OWNER_COMPARING_TAKES_FROM_INTERCEPT)
    links.watch(endpoint(40000))            # queued first, yet sent after the REGISTER
    links.register(endpoint(40000))
    links.register(endpoint(40001))
    links.flush()
    drain(worker, links)
    assert worker.routes.watched == {endpoint(40000): next(iter(worker.owners))}
    watched, other = answer(40000, "PA", payload=b"compared"), answer(40001, "PA", payload=b"not")
    for raw in (watched, other):
        worker.on_packet(pk.decode(raw), clock.now)
    worker.flush_all()
    assert drain(worker, links) == [watched[:header_length(watched)], other[:header_length(other)]]
    assert links.take_answers() == [watched] and links.take_answers() == []
    assert (links.stats.watched, links.stats.answers) == (1, 1)


def test_an_owner_that_does_not_compare_keeps_the_small_limit_cannot_watch_and_ignores_answers(tcp_worker):
    worker, context, clock = tcp_worker
    links = links_to(worker, context, comparing=False)
    sock = links.links[0].socket
    assert sock.getsockopt(zmq.MAXMSGSIZE) == wire.max_frame(wire.OWNER_TAKES_FROM_INTERCEPT)
    with pytest.raises(ValueError, match="comparing=True"):
        links.watch(endpoint(40000))
    links.register(endpoint(40000))
    links.flush()
    sock.send(wire.encode_watch([endpoint(40000)]))   # as if it had watched: small answers pass
    drain(worker, links)
    raw = answer(40000, "PA", payload=b"small")
    worker.on_packet(pk.decode(raw), clock.now)
    worker.flush_all()
    assert drain(worker, links) == [raw[:header_length(raw)]]
    assert links.take_answers() == [] and links.stats.answers_ignored == 1


def test_answers_waiting_for_take_answers_are_bounded_and_drops_counted(tcp_worker, monkeypatch):
    monkeypatch.setattr(intercepts_module, "ANSWERS_KEPT", 3)
    worker, context, clock = tcp_worker
    links = links_to(worker, context, comparing=True)
    links.register(endpoint(40000))
    links.watch(endpoint(40000))
    links.flush()
    drain(worker, links)
    for seq in range(5000, 5005):
        worker.on_packet(pk.decode(answer(40000, "PA", seq=seq, payload=b"x")), clock.now)
    worker.flush_all()
    assert len(drain(worker, links)) == 5
    assert [pk.decode(r).seq for r in links.take_answers()] == [5000, 5001, 5002]
    assert (links.stats.answers, links.stats.answers_dropped) == (3, 2)


def test_a_restarted_intercept_is_told_the_watches_again_after_the_registrations(tcp_worker):
    """A hand-played intercept ROUTER: HELLO from a new instance makes the owner say HELLO,
    REGISTER its live endpoints and WATCH those still watched, in that order."""
    _worker, context, _clock = tcp_worker
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.RCVTIMEO, 2000)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    links = InterceptLinks(context, [InterceptAddress("127.0.0.1", port)], "owner-0@test", comparing=True)
    for _ in range(50):                     # a DEALER drops what it sends before it connects
        links.say_hello()
        if router.poll(100):
            break
    routing_id, frame = router.recv_multipart()
    assert wire.decode(frame)[0] == wire.HELLO
    while router.poll(100):                 # further HELLOs sent while connecting
        router.recv_multipart()
    live = [endpoint(40000), endpoint(40001)]
    for each in live:
        links.register(each)
    links.watch(endpoint(40000))
    links.watch(endpoint(40001))
    links.unregister(endpoint(40001))          # its session ended: not watched any more
    links.flush()
    sent = [wire.decode(router.recv_multipart()[1])[0] for _ in range(3)]
    assert sent == [wire.UNREGISTER, wire.REGISTER, wire.WATCH]
    sock = links.links[0].socket
    for instance in ("first", "second"):
        router.send_multipart([routing_id, wire.encode_hello(wire.Hello("intercept", "i", instance))])
        assert sock.poll(2000)
        links.receive(sock, 0.0, lambda: live[:1])
    links.flush()
    kinds, bodies = zip(*(wire.decode(router.recv_multipart()[1]) for _ in range(3)))
    assert kinds == (wire.HELLO, wire.REGISTER, wire.WATCH)
    assert bodies[1] == [endpoint(40000)] and bodies[2] == [endpoint(40000)]
    links.close("done")
    router.close(linger=0)


# -- the lab: the real intercept command, a real server's answers

LAB_CLIENT_IP = "198.18.3.5"      # a replayed client address, on the assistant itself here
BODY_BYTES = 300_000


@pytest.fixture(scope="module")
def lab():
    """target 198.18.0.2 routes 198.18.3.0/24 via the assistant 198.18.2.1, which also holds
    198.18.3.5: a real client there gets the target's answers while intercept captures them
    on the same veth (GRO on, so they come as super-packets)."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    topology = Topology(
        hosts=(Host("target", routes=(Route("198.18.3.0/24", ASSISTANT_IP),)),
               Host("assistant")),
        links=(link("target", f"{TARGET_IP}/16", "assistant", (f"{ASSISTANT_IP}/16", f"{LAB_CLIENT_IP}/16")),))
    with Lab(topology) as up:
        yield up


SERVER = f"""
import socket
body = bytes(i % 251 for i in range({BODY_BYTES}))
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("{TARGET_IP}", {TARGET_PORT}))
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    request = b""
    while not request.endswith(b"\\n"):
        request += conn.recv(100)
    conn.sendall(request + body)
    conn.close()
"""


def comparing_owner(port: int, watched_port: int, other_port: int) -> dict:
    """In the assistant: an owner's InterceptLinks (comparing) registers two client
    endpoints and watches one, then real clients on them ask the target; what the clients
    received, the header records and the whole answers come back."""
    context = zmq.Context()
    links = InterceptLinks(context, [InterceptAddress(ASSISTANT_IP, port)], "owner-lab", comparing=True)
    sock = links.links[0].socket
    try:
        deadline = time.monotonic() + 10
        while not links.links[0].up and time.monotonic() < deadline:
            links.say_hello()
            sock.poll(100)
            links.receive(sock, 0.0, list)
        links.register(endpoint(watched_port, LAB_CLIENT_IP))
        links.register(endpoint(other_port, LAB_CLIENT_IP))
        links.watch(endpoint(watched_port, LAB_CLIENT_IP))
        links.flush()
        time.sleep(0.3)                      # no acknowledgement exists: let them arrive first
        received = {client_port: ask_target(client_port, b"request %d\n" % client_port)
                    for client_port in (watched_port, other_port)}
        headers, answers = [], []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            if sock.poll(100):
                headers += links.receive(sock, 0.0, list)
            answers += links.take_answers()
        return {"received": received, "headers": headers, "answers": answers,
                "stats": links.stats}
    finally:
        links.close("done")
        context.destroy(linger=0)


def ask_target(client_port: int, request: bytes) -> bytes:
    with socket.socket() as client:
        client.bind((LAB_CLIENT_IP, client_port))
        client.settimeout(10)
        client.connect((TARGET_IP, TARGET_PORT))
        client.sendall(request)
        got = b""
        while chunk := client.recv(1 << 16):
            got += chunk
        return got


def stream_of(records: list[bytes], client_port: int) -> bytes:
    """The payload bytes of one connection's records, put in sequence order (repeats once)."""
    pieces = {}
    for record in records:
        pkt = pk.decode(record, headers_only=True)
        if pkt.dport == client_port and pkt.payload:
            pieces.setdefault(pkt.seq, pkt.payload)
    return b"".join(pieces[seq] for seq in sorted(pieces))


@pytest.mark.lab
def test_a_real_intercept_sends_a_watched_routes_answers_whole_and_another_routes_headers_only(lab, tmp_path):
    server = lab.popen("target", [sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        intercept = Intercept(lab, tmp_path, 26611, "--answer-bytes", "65536")
        got = lab.call("assistant", comparing_owner, intercept.port, 41000, 41001, timeout=30)
        stats = intercept.stop()
    finally:
        lab.stop(server)
    watched, other = got["received"][41000], got["received"][41001]
    assert len(watched) == len(other) > BODY_BYTES                   # both clients got the whole answer
    header_ports = {pk.decode(r, headers_only=True).dport for r in got["headers"]}
    assert header_ports == {41000, 41001}
    assert all(len(r) == pk.decode(r, headers_only=True).payload_off for r in got["headers"])
    for client_port, body in ((41000, watched), (41001, other)):      # the engine's view, as ever
        assert sum(pk.decode(r, headers_only=True).payload_len for r in got["headers"]
                   if pk.decode(r, headers_only=True).dport == client_port) >= len(body)
    answer_ports = {pk.decode(r, headers_only=True).dport for r in got["answers"]}
    assert answer_ports == {41000}, "only the watched route's answers come whole"
    assert stream_of(got["answers"], 41000) == watched                # byte for byte what its client got
    assert max(len(r) for r in got["answers"]) > 1500, "GRO super-packets come whole too"
    assert (stats["answers"], stats["answer_drops"], stats["watch_refused"]) == (len(got["answers"]), 0, 0)
    assert stats["watched"] == 0, "the owner left (BYE): its watch ended with its routes"
    assert got["stats"].answers == len(got["answers"]) and got["stats"].answers_dropped == 0
