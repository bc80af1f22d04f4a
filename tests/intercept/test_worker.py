"""The intercept worker and command.

Three layers:

- in process: a Worker on an ipc:// ROUTER, a real DEALER as the owner, decoded packets fed
  straight to ``on_packet`` and a hand-driven clock (batching, heartbeats, forgetting);
- the command line, as a plain subprocess (flag errors need no capture);
- the lab: ``python -m tcpcopy.intercept.main`` capturing on the assistant's veth while the
  target namespace sends answers through its route to the assistant, and an owner DEALER
  receives them. The owner runs in a forked child that opens its raw socket in the target
  namespace and then moves to the assistant namespace for ZeroMQ, so the control connection
  never crosses the captured veth and the intercept's counters stay exact.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import zmq
from scapy.layers.inet import IP, TCP

from tcpcopy.capture import packet as pk
from tcpcopy.cluster import wire
from tcpcopy.lab.netns import Host, Lab, Route, Topology, enter_namespace, link
from tcpcopy.intercept import worker as worker_module
from tcpcopy.intercept.worker import BATCH_RECORDS, OWNER_SILENCE, Worker, WorkerConfig
from tests.lab.conftest import lab_unavailable_reason

TARGET_IP = "198.18.0.2"
ASSISTANT_IP = "198.18.2.1"
CLIENT_IP = "198.18.3.5"
TARGET_PORT = 8080


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def endpoint(client_port: int, client_ip: str = CLIENT_IP) -> tuple:
    return (ip(client_ip), client_port, ip(TARGET_IP), TARGET_PORT)


def answer(client_port: int, flags: str = "A", seq: int = 5000, ack: int = 1001, payload: bytes = b"",
           client_ip: str = CLIENT_IP, options=(("NOP", None), ("NOP", None), ("Timestamp", (11, 22)))) -> bytes:
    """A target's answer to a replayed client, as bytes on the wire."""
    return bytes(IP(src=TARGET_IP, dst=client_ip, id=7) /
                 TCP(sport=TARGET_PORT, dport=client_port, flags=flags, seq=seq, ack=ack, window=501,
                     options=list(options)) / payload)


def header_length(raw: bytes) -> int:
    return pk.decode(raw).payload_off


def hello_from(identity: str = "owner-test", instance: str = "i1") -> bytes:
    return wire.encode_hello(wire.Hello("owner", identity, instance))


def receive(sock: zmq.Socket, timeout: float = 2.0):
    """(kind, body) of the next message, or None after ``timeout`` seconds."""
    if not sock.poll(int(timeout * 1000)):
        return None
    return wire.decode(sock.recv())


# ============================================================== in process, hand-driven clock

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ipc_dir():
    """A short directory for ipc:// sockets (their paths are limited to about 100 bytes)."""
    path = tempfile.mkdtemp(prefix="icpt-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rig(ipc_dir):
    """(worker, owner DEALER, clock), the owner already greeted."""
    context = zmq.Context()
    clock = Clock()
    worker = Worker(WorkerConfig(endpoint=f"ipc://{ipc_dir}/intercept.ipc", identity="intercept-t"),
                    clock=clock, context=context)
    owner = context.socket(zmq.DEALER)
    owner.setsockopt(zmq.LINGER, 0)
    owner.connect(worker.bind())
    owner.send(hello_from())
    pump(worker)
    kind, hello = receive(owner)
    assert (kind, hello.role, hello.identity) == (wire.HELLO, "intercept", "intercept-t")
    yield worker, owner, clock
    worker.close()
    owner.close()
    context.term()


def pump(worker: Worker, rounds: int = 3) -> None:
    """Let the worker take what the owner sent (delivery is asynchronous)."""
    for _ in range(rounds):
        worker.step(max_wait=0.05)


def register(worker: Worker, owner: zmq.Socket, *endpoints) -> None:
    owner.send(wire.encode_register(list(endpoints)))
    pump(worker)
    assert all(e in worker.routes for e in endpoints)


def test_a_record_waits_at_most_the_batch_delay(rig):
    worker, owner, clock = rig
    register(worker, owner, endpoint(40000))
    sent = answer(40000, payload=b"hello")
    worker.on_packet(pk.decode(sent), clock.now)
    clock.now += 0.0005
    worker.flush_due(clock.now)
    assert receive(owner, 0.05) is None
    clock.now += 0.0005
    worker.flush_due(clock.now)
    assert receive(owner) == (wire.RESPONSES, [sent[:header_length(sent)]])


def test_a_full_batch_leaves_at_once_as_one_message(rig):
    worker, owner, clock = rig
    register(worker, owner, endpoint(40000))
    packets = [pk.decode(answer(40000, seq=5000 + i)) for i in range(BATCH_RECORDS + 1)]
    for pkt in packets:
        worker.on_packet(pkt, clock.now)
    kind, records = receive(owner)
    assert kind == wire.RESPONSES and len(records) == BATCH_RECORDS
    assert [pk.decode(r, headers_only=True).seq for r in records] == list(range(5000, 5000 + BATCH_RECORDS))
    assert receive(owner, 0.05) is None            # the 65th waits for its deadline
    clock.now += 0.001
    worker.step(max_wait=0)
    kind, records = receive(owner)
    assert len(records) == 1 and pk.decode(records[0], headers_only=True).seq == 5000 + BATCH_RECORDS
    assert worker.stats()["resp_packs"] == 2 and worker.stats()["resp_records"] == BATCH_RECORDS + 1


def test_unroutable_answers_are_counted_and_syn_or_rst_held_until_registered(rig):
    worker, owner, clock = rig
    syn_ack = answer(40007, flags="SA", ack=1001)
    worker.on_packet(pk.decode(answer(40007)), clock.now)           # plain ACK: lost
    worker.on_packet(pk.decode(syn_ack), clock.now)                 # the race: held
    worker.on_packet(pk.decode(answer(40008, flags="R")), clock.now)  # held, never claimed
    assert worker.stats()["unroutable"] == 1 and worker.routes.held_count == 2
    register(worker, owner, endpoint(40007))
    clock.now += 0.001
    worker.step(max_wait=0)
    assert receive(owner) == (wire.RESPONSES, [syn_ack[:header_length(syn_ack)]])
    clock.now += worker.routes.hold_time
    worker.tick(clock.now)
    stats = worker.stats()
    assert (stats["held"], stats["released"], stats["held_expired"]) == (2, 1, 1)


def test_owners_get_heartbeats_and_are_forgotten_after_silence(rig):
    worker, owner, clock = rig
    register(worker, owner, endpoint(40000))
    clock.now += 1.0
    worker.step(max_wait=0)
    assert receive(owner)[0] == wire.HEARTBEAT
    owner.send(wire.encode_heartbeat(time.time()))                  # alive at +1 s
    pump(worker)
    clock.now += OWNER_SILENCE - 0.5
    worker.tick(clock.now)
    assert endpoint(40000) in worker.routes
    clock.now += 0.5
    worker.tick(clock.now)
    assert endpoint(40000) not in worker.routes and not worker.owners
    assert worker.stats()["owners_forgotten"] == 1


def test_bye_drops_the_owners_routes_and_unregister_one(rig):
    worker, owner, _clock = rig
    register(worker, owner, endpoint(40000), endpoint(40001))
    owner.send(wire.encode_unregister([endpoint(40000)]))
    pump(worker)
    assert endpoint(40000) not in worker.routes and endpoint(40001) in worker.routes
    owner.send(wire.encode_bye("done"))
    pump(worker)
    assert len(worker.routes) == 0 and not worker.owners


def test_a_restarted_owner_loses_its_old_routes(rig):
    worker, owner, _clock = rig
    register(worker, owner, endpoint(40000))
    owner.send(hello_from(instance="i2"))
    pump(worker)
    assert receive(owner)[0] == wire.HELLO
    assert endpoint(40000) not in worker.routes and worker.stats()["owners_restarted"] == 1


def replacement(worker: Worker, context: zmq.Context, identity: str = "owner-test") -> zmq.Socket:
    """A second owner DEALER saying HELLO as ``identity`` (a new process, a new routing id)."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(worker.socket.getsockopt_string(zmq.LAST_ENDPOINT))
    sock.send(hello_from(identity, instance="new"))
    pump(worker)
    return sock


def messages(sock: zmq.Socket) -> list:
    out = []
    while (message := receive(sock, timeout=0.2)) is not None:
        out.append(message)
    return out


def test_a_dead_owners_replacement_takes_its_routes_to_reset_them(rig):
    worker, owner, _clock = rig
    register(worker, owner, endpoint(40000), endpoint(40001))
    owner.close(linger=0)                                            # killed: its connection ends
    time.sleep(0.2)
    new = replacement(worker, owner.context)
    try:
        got = messages(new)
        handed = [body for kind, body in got if kind == wire.HANDOVER]
        assert wire.HELLO in [kind for kind, _ in got]
        assert sorted(e for body in handed for e in body) == [endpoint(40000), endpoint(40001)]
        new_id = next(rid for rid, o in worker.owners.items() if o.instance == "new")
        assert worker.routes.holder(endpoint(40000)) == new_id and len(worker.owners) == 1
        stats = worker.stats()
        assert (stats["owners_replaced"], stats["routes_handed_over"]) == (1, 2)
    finally:
        new.close(linger=0)


def test_a_namesake_of_a_connected_owner_takes_nothing(rig):
    worker, owner, _clock = rig
    register(worker, owner, endpoint(40000))
    impostor = replacement(worker, owner.context)
    try:
        assert [kind for kind, _ in messages(impostor)] == [wire.HELLO]
        assert worker.routes.holder(endpoint(40000)) != next(
            rid for rid, o in worker.owners.items() if o.instance == "new")
        assert worker.stats()["owners_replaced"] == 0 and len(worker.owners) == 2
    finally:
        impostor.close(linger=0)


def test_a_silent_owners_routes_go_to_its_namesake_when_it_is_forgotten(rig):
    worker, owner, clock = rig
    register(worker, owner, endpoint(40000))
    new = replacement(worker, owner.context)                         # the old one still looks connected
    try:
        messages(new)
        clock.now += OWNER_SILENCE - 1
        new.send(wire.encode_heartbeat(time.time()))                 # the new one is alive
        time.sleep(0.1)
        pump(worker)
        clock.now += 1
        worker.tick(clock.now)
        assert [body for kind, body in messages(new) if kind == wire.HANDOVER] == [[endpoint(40000)]]
        assert worker.stats()["owners_replaced"] == 1 and len(worker.owners) == 1
    finally:
        new.close(linger=0)


def test_bad_messages_are_counted_logged_once_per_peer_and_survived(rig, caplog):
    worker, owner, clock = rig
    caplog.set_level(logging.WARNING, logger="tcpcopy.intercept")
    owner.send(b"\xc1 not msgpack")
    owner.send(b"\x93\x09\x01\xc0")                                  # [9, 1, nil]: other version
    owner.send_multipart([b"two", b"frames"])
    owner.send(wire.encode_packets([[0.0, b"x"]]))                   # a capture worker's message
    pump(worker)
    assert worker.stats()["peer_errors"] == 4
    faults = [r.getMessage() for r in caplog.records if "peer" in r.getMessage()]
    assert len(faults) == 1 and "owner-test" in faults[0] and "routing id" in faults[0]
    register(worker, owner, endpoint(40000))                          # still serving
    worker.on_packet(pk.decode(answer(40000)), clock.now)
    worker.flush_all()
    assert receive(owner)[0] == wire.RESPONSES


def test_sends_to_a_gone_or_stalled_owner_are_counted_drops(rig, monkeypatch, ipc_dir):
    worker, _owner, clock = rig
    worker.routes.register(endpoint(40000), b"\x00gone", clock.now)
    worker.on_packet(pk.decode(answer(40000)), clock.now)
    worker.flush_all()
    assert (worker.stats()["send_drops"], worker.stats()["records_dropped"]) == (1, 1)

    monkeypatch.setattr(worker_module, "SEND_HWM", 1)
    context = zmq.Context()
    stalled_worker = Worker(WorkerConfig(endpoint=f"ipc://{ipc_dir}/stalled.ipc"), clock=clock, context=context)
    stalled = context.socket(zmq.DEALER)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.connect(stalled_worker.bind())
    stalled.send(hello_from())
    pump(stalled_worker)
    stalled_worker.routes.register(endpoint(40000), next(iter(stalled_worker.owners)), clock.now)
    pkt = pk.decode(answer(40000, payload=bytes(1000)))
    for _ in range(400 * BATCH_RECORDS):                              # never read by the owner
        stalled_worker.on_packet(pkt, clock.now)
    assert stalled_worker.stats()["send_drops"] > 0
    stalled_worker.close()
    stalled.close(linger=0)
    context.term()


# ============================================================== the command line


def run_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcpcopy.intercept.main", *args],
                          capture_output=True, text=True, timeout=20)


@pytest.mark.parametrize(("args", "names"), [
    ((), ["-F", "tcp and src port 8080"]),
    (("-F", "tcp", "-p", "70000"), ["-p", "1..65535"]),
    (("-F", "tcp", "-p", "http"), ["-p", "1..65535"]),
    (("-F", "tcp and src prt 80"), ["-F", "pcap-filter"]),
    (("-F", "tcp", "--payload", "2000"), ["--payload", "0..1460"]),
    (("-F", "tcp", "--route-ttl", "0"), ["--route-ttl", "positive"]),
    (("-F", "tcp", "-b", "assistant"), ["-b", "IP address"]),
    (("-F", "tcp", "-t", "60"), ["-t", "--route-ttl"]),
    (("-F", "tcp", "-d"), ["-d", "-l"]),
    (("-F", "tcp", "--max-owners", "0"), ["--max-owners", "positive whole number"]),
    (("-F", "tcp", "--routes-per-owner", "many"), ["--routes-per-owner", "positive whole number"]),
    (("-F", "tcp", "--answer-bytes", "300000"), ["--answer-bytes", "0..262144"]),
    (("-F", "tcp", "--watch-max", "-3"), ["--watch-max", "whole number"]),
])
def test_bad_flags_get_one_line_naming_the_flag_and_exit_2(args, names):
    done = run_command(*args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for name in names:
        assert name in lines[0]


def test_version_and_help():
    assert run_command("-v").stdout.startswith("intercept ")
    help_text = run_command("-h").stdout
    assert "-F FILTER" in help_text and "batching is adaptive" in help_text


# ============================================================== the lab

@pytest.fixture(scope="module")
def lab():
    """target 198.18.0.2 routes the replayed clients (198.18.3.0/24) via assistant 198.18.2.1."""
    reason = lab_unavailable_reason()
    if reason:
        pytest.skip(reason)
    topology = Topology(
        hosts=(Host("target", routes=(Route("198.18.3.0/24", ASSISTANT_IP),),
                    sysctls={"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0}),
               Host("assistant", sysctls={"net.ipv4.ip_forward": 0})),
        links=(link("target", f"{TARGET_IP}/16", "assistant", f"{ASSISTANT_IP}/16"),))
    with Lab(topology) as up:
        yield up


class Intercept:
    """``python -m tcpcopy.intercept.main`` inside the assistant, its log in a file. Tests
    give it ports below Linux's ephemeral range (32768-60999), which a client socket of the
    namespace may hold."""

    def __init__(self, lab: Lab, tmp_path: Path, port: int, *extra: str) -> None:
        self.lab = lab
        self.port = port
        self.log_path = tmp_path / f"intercept-{port}.log"
        self.pid_file = tmp_path / f"intercept-{port}.pid"
        argv = [sys.executable, "-m", "tcpcopy.intercept.main", "-i", lab.interface("assistant"),
                "-F", f"tcp and src host {TARGET_IP}", "-p", str(port), "-b", ASSISTANT_IP,
                "-P", str(self.pid_file), *extra]
        with open(self.log_path, "w") as log_file:
            self.proc = lab.popen("assistant", argv, stdout=log_file, stderr=subprocess.STDOUT)
        self._wait_for("listening on")

    def _wait_for(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.proc.poll() is None, f"intercept exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"intercept not ready after {timeout} s:\n{self.log()}"
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> dict[str, int]:
        """SIGTERM (unless it already ended); the counters of its final stats line."""
        code = self.lab.stop(self.proc, grace_s=5.0)
        assert code == 0, self.log()
        lines = re.findall(r"stats: (.*)", self.log())
        assert lines, self.log()
        return {name: int(value) for name, value in re.findall(r"(\w+)=(\d+)", lines[-1])}


# -- what the owner child does (forked, in the target namespace at first)


def owner_child(assistant_ns: str, port: int, script) -> list:
    """Play an owner: raw socket in the target namespace, then ZeroMQ in the assistant's.

    ``script`` is a list of steps; each returns something for the result list:
    ("send", [packet bytes]), ("sleep", s), ("hello",), ("register", [endpoints]),
    ("raw", [frames] for a bare DEALER), ("junk_tcp", bytes), ("collect", n_records, timeout),
    ("kill", pid, timeout) -> the kind names received until BYE.
    """
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    enter_namespace(assistant_ns)
    context = zmq.Context()
    address = f"tcp://{ASSISTANT_IP}:{port}"
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(address)
    results = []
    try:
        for step in script:
            results.append(_STEPS[step[0]](raw, context, dealer, address, *step[1:]))
    finally:
        dealer.close()
        context.destroy(linger=0)
        raw.close()
    return results


def _send(raw, _ctx, _dealer, _address, packets):
    for packet in packets:
        raw.sendto(packet, (socket.inet_ntoa(pk.decode(packet).dst), 0))


def _sleep(_raw, _ctx, _dealer, _address, seconds):
    time.sleep(seconds)


def _hello(_raw, _ctx, dealer, _address):
    dealer.send(hello_from())
    reply = receive(dealer, 10.0)
    assert reply is not None, "no HELLO from intercept within 10 s"
    return reply[1].role


def _register(_raw, _ctx, dealer, _address, endpoints):
    dealer.send(wire.encode_register(endpoints))
    time.sleep(0.2)   # no acknowledgement exists; the REGISTER must be in before the answers


def _raw_frames(_raw, ctx, _dealer, address, frames):
    other = ctx.socket(zmq.DEALER)
    other.setsockopt(zmq.LINGER, 1000)
    other.connect(address)
    for message in frames:
        other.send_multipart(message)
    time.sleep(0.2)
    other.close()


def _junk_tcp(_raw, _ctx, _dealer, address, data):
    port = int(address.rsplit(":", 1)[1])
    with socket.create_connection((ASSISTANT_IP, port), timeout=2) as conn:
        conn.sendall(data)
        time.sleep(0.1)


def _collect(_raw, _ctx, dealer, _address, count, timeout):
    records, deadline = [], time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        message = receive(dealer, max(0.0, deadline - time.monotonic()))
        if message is not None and message[0] == wire.RESPONSES:
            records.extend(message[1])
    time.sleep(0.2)   # anything more would be a mistake: take it too
    while (message := receive(dealer, 0.0)) is not None:
        if message[0] == wire.RESPONSES:
            records.extend(message[1])
    return records


def _kill(_raw, _ctx, dealer, _address, pid, timeout):
    os.kill(pid, signal.SIGTERM)
    kinds, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = receive(dealer, max(0.0, deadline - time.monotonic()))
        if message is None:
            break
        kinds.append(wire.KIND_NAMES[message[0]])
        if message[0] == wire.BYE:
            break
    return kinds


_STEPS = {"send": _send, "sleep": _sleep, "hello": _hello, "register": _register, "raw": _raw_frames,
          "junk_tcp": _junk_tcp, "collect": _collect, "kill": _kill}


def run_owner(lab: Lab, port: int, script, host: str = "target", timeout: float = 20.0) -> list:
    return lab.call(host, owner_child, lab.netns("assistant"), port, script, timeout=timeout)


def headers(raw: bytes) -> bytes:
    return raw[:header_length(raw)]


# -- the tests


@pytest.mark.lab
def test_answers_reach_the_registering_owner_as_their_exact_headers(lab, tmp_path):
    intercept = Intercept(lab, tmp_path, 26601)
    assert intercept.pid_file.read_text().strip() == str(intercept.proc.pid)
    stray = answer(40001)                                     # nobody registered 40001
    sent = [answer(40000, "SA", seq=7000, ack=1001),
            answer(40000, "PA", seq=7001, ack=1101, payload=b"x" * 100),
            answer(40000, "FA", seq=7101, ack=1101),
            answer(40000, "R", seq=7102, ack=0, options=())]
    hello, _reg, _send1, records, kinds = run_owner(lab, intercept.port, [
        ("hello",), ("register", [endpoint(40000)]),
        ("send", [stray, *sent]), ("collect", len(sent), 5.0),
        ("kill", intercept.proc.pid, 5.0)])
    assert hello == "intercept"
    assert records == [headers(p) for p in sent]               # byte for byte, in order, stray absent
    decoded = [pk.decode(r, headers_only=True) for r in records]
    assert [(p.flags, p.seq, p.ack, p.payload_len) for p in decoded] == [
        (pk.SYN | pk.ACK, 7000, 1001, 0), (pk.PSH | pk.ACK, 7001, 1101, 100),
        (pk.FIN | pk.ACK, 7101, 1101, 0), (pk.RST, 7102, 0, 0)]
    assert kinds[-1] == "BYE"
    intercept.proc.wait(timeout=10)  # the owner's SIGTERM ends it; a second one, sent while
    stats = intercept.stop()         # the interpreter shuts down, would kill it with -15
    assert (stats["all"], stats["sent"], stats["unroutable"], stats["registers"]) == (5, 4, 1, 1)
    assert stats["send_drops"] == 0 and stats["peer_errors"] == 0
    assert not intercept.pid_file.exists()


@pytest.mark.lab
def test_a_real_syn_ack_captured_before_the_register_is_delivered_after_it(lab, tmp_path):
    listener = lab.popen("target", [sys.executable, "-c",
                                    "import socket, time; s = socket.socket(); "
                                    f"s.bind(('{TARGET_IP}', {TARGET_PORT})); s.listen(8); "
                                    "print('ready', flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        intercept = Intercept(lab, tmp_path, 26602)
        client = endpoint(40003, "198.18.3.7")
        syn = bytes(IP(src="198.18.3.7", dst=TARGET_IP) / TCP(sport=40003, dport=TARGET_PORT, flags="S", seq=1000))
        _send1, _sleep, _hello1, _reg, records = run_owner(lab, intercept.port, [
            ("send", [syn]), ("sleep", 0.4),                      # the kernel's SYN-ACK is held
            ("hello",), ("register", [client]), ("collect", 1, 3.0)], host="assistant")
        assert records, intercept.log()
        first = pk.decode(records[0], headers_only=True)
        assert (first.src, first.sport, first.dst, first.dport) == (ip(TARGET_IP), TARGET_PORT,
                                                                    ip("198.18.3.7"), 40003)
        assert (first.flags, first.ack) == (pk.SYN | pk.ACK, 1001) and first.mss is not None
        stats = intercept.stop()
        assert stats["held"] >= 1 and stats["released"] >= 1 and stats["unroutable"] == 0
    finally:
        lab.stop(listener)


@pytest.mark.lab
def test_payload_option_sends_the_first_payload_bytes(lab, tmp_path):
    intercept = Intercept(lab, tmp_path, 26603, "--payload", "16")
    body = bytes(range(100))
    sent = [answer(40010, "PA", payload=body), answer(40010, "PA", seq=5100, payload=b"tiny!"),
            answer(40010, "A", seq=5105)]
    *_, records = run_owner(lab, intercept.port, [
        ("hello",), ("register", [endpoint(40010)]), ("send", sent), ("collect", 3, 5.0)])
    assert records == [headers(sent[0]) + body[:16], headers(sent[1]) + b"tiny!", headers(sent[2])]
    first = pk.decode(records[0], headers_only=True)
    assert first.payload_len == 100 and first.payload == body[:16]
    intercept.stop()


@pytest.mark.lab
def test_garbage_from_peers_does_not_stop_intercept(lab, tmp_path):
    intercept = Intercept(lab, tmp_path, 26604)
    sent = [answer(40020, "A", payload=b"after the garbage")]
    *_, records = run_owner(lab, intercept.port, [
        ("raw", [[b"\xc1 garbage"], [b"\x93\x09\x01\xc0"], [b"a", b"b", b"c"]]),
        ("junk_tcp", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4),
        ("hello",), ("register", [endpoint(40020)]), ("send", sent), ("collect", 1, 5.0)])
    assert records == [headers(sent[0])]
    assert intercept.proc.poll() is None
    log = intercept.log()
    stats = intercept.stop()
    assert stats["peer_errors"] == 3 and stats["sent"] == 1
    faults = [line for line in log.splitlines() if "WARNING peer" in line]
    assert len(faults) == 1 and f"at {ASSISTANT_IP}" in faults[0] and "routing id" in faults[0]
