"""Hostile peers against a real intercept worker, on loopback.

Each test plays an attack by a host on the network, with real ZeroMQ sockets (and, where a
ZeroMQ peer would refuse to send something, a raw TCP socket speaking ZMTP), against a
Worker bound to tcp://127.0.0.1, and checks that it fails: the real owner (the owner's own
InterceptLinks) keeps its routes and gets its answers, the attacker gets none of them, the
counters name every refusal, and the intercept stays responsive. Captured answers are fed
to ``on_packet`` directly; the clock is driven by hand except where heartbeats are timed.

Every attack runs twice: against an intercept without keys, and against one with CurveZMQ
keys, where the attacker holds a listed key of its own (a second online host's, stolen or
misused): keys keep strangers out, and the rules above still hold among key holders. Peers
without keys or with an unlisted key are refused at the handshake and counted.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time

import msgpack
import pytest
import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.cluster import curve, wire
from tcpcopy.cluster.options import InterceptAddress
from tcpcopy.cluster.curve import GATE_LOG_LINES
from tcpcopy.intercept.worker import OWNER_SILENCE, PEER_LOG_LINES, Worker, WorkerConfig
from tcpcopy.session.intercepts import InterceptLinks
from tests.intercept.test_worker import Clock, answer, endpoint, header_length, hello_from

PAYLOAD = 64
E = endpoint(40000)


@pytest.fixture(scope="module")
def key_set(tmp_path_factory) -> curve.KeyLayout:
    """One key set for the module: the owner holds online's key, attackers online2's (listed)."""
    directory = str(tmp_path_factory.mktemp("keys") / "keys")
    curve.keygen(directory, ("online", "online2"))
    return curve.KeyLayout(directory)


def attacker_keys(layout: curve.KeyLayout | None) -> curve.ClientKeys | None:
    if layout is None:
        return None
    return curve.ClientKeys(curve.load_secret(layout.secret("online2")), curve.load_public(layout.public("intercept")))


class Rig:
    """A worker on tcp://127.0.0.1 with a hand-driven clock, and the sockets of a test;
    with ``keys`` (a keygen layout) the worker and every peer use CurveZMQ."""

    def __init__(self, keys: curve.KeyLayout | None = None, **config) -> None:
        self.context = zmq.Context()
        self.clock = Clock()
        self.keys = keys
        config.setdefault("payload", PAYLOAD)
        if keys is not None:
            config["keys"] = keys.intercept_keys()
        self.config = config
        self.worker = Worker(WorkerConfig(endpoint="tcp://127.0.0.1:*", identity="intercept-h", **config),
                             clock=self.clock, context=self.context)
        self.endpoint = self.worker.bind()
        self.port = int(self.endpoint.rsplit(":", 1)[1])
        self.sockets: list = []

    def pump(self, until=None, timeout: float = 3.0) -> bool:
        """Step the worker until ``until()`` holds (or a few rounds without one)."""
        deadline = time.monotonic() + timeout
        rounds = 0
        while time.monotonic() < deadline:
            self.worker.step(max_wait=0.02)
            rounds += 1
            if until is None and rounds >= 5:
                return True
            if until is not None and until():
                return True
        return False

    def owner(self, identity: str = "owner-0@online1") -> InterceptLinks:
        """The real owner side, connected and greeted."""
        links = InterceptLinks(self.context, [InterceptAddress("127.0.0.1", self.port)], identity,
                               keys=self.keys.owner_keys() if self.keys else None)
        self.sockets.append(links)
        now = 0.0
        while not links.links[0].up:
            assert now < 30, "the owner never heard the intercept's HELLO"
            now += 1.0
            links.tick(now)                 # a link that is down says HELLO again
            self.pump()
            links.receive(links.links[0].socket, now, list)
        return links

    def dealer(self, routing_id: bytes | None = None, keys: curve.ClientKeys | None | str = "listed") -> zmq.Socket:
        """An attacker's DEALER (ZeroMQ makes up its routing id unless one is given); with
        keys on, it holds a listed key unless ``keys`` says otherwise (None: no keys)."""
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        keys = attacker_keys(self.keys) if keys == "listed" else keys
        if keys is not None:
            curve.connect_with_keys(sock, keys)
        sock.connect(self.endpoint)
        self.sockets.append(sock)
        return sock

    def answers(self, *packets: bytes) -> None:
        for raw in packets:
            self.worker.on_packet(pk.decode(raw), self.clock.now)
        self.worker.flush_all()

    def close(self) -> None:
        self.worker.close()
        for sock in self.sockets:
            sock.close(linger=0) if isinstance(sock, zmq.Socket) else sock.close("test over")
        self.context.destroy(linger=0)   # also whatever a failed test left open


@pytest.fixture(params=["plain", "curve"])
def keys(request, key_set) -> curve.KeyLayout | None:
    return key_set if request.param == "curve" else None


@pytest.fixture
def rig(keys):
    made = Rig(keys)
    yield made
    made.close()


def owner_records(rig: Rig, links: InterceptLinks, count: int, timeout: float = 3.0) -> list:
    sock = links.links[0].socket
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        rig.pump()
        records += links.receive(sock, rig.clock.now, list)
    return records


def kinds_received(sock: zmq.Socket, wait: float = 0.3) -> list[str]:
    """The kinds of every message waiting for ``sock`` (after ``wait`` seconds for more)."""
    kinds = []
    while sock.poll(int(wait * 1000)):
        kinds.append(wire.KIND_NAMES[wire.decode(sock.recv())[0]])
    return kinds


def registered(rig: Rig, links: InterceptLinks, *endpoints) -> bytes:
    """Register with the real owner; its routing id, as the intercept sees it."""
    for key in endpoints:
        links.register(key)
    links.flush()
    assert rig.pump(lambda: all(key in rig.worker.routes for key in endpoints))
    return links.links[0].socket.getsockopt(zmq.ROUTING_ID)


def the_answers() -> list[bytes]:
    return [answer(40000, "SA", seq=7000), answer(40000, "PA", seq=7001, payload=b"r" * 100),
            answer(40000, "FA", seq=7101)]


def expected_records(packets: list[bytes]) -> list[bytes]:
    return [raw[:header_length(raw) + PAYLOAD] for raw in packets]


# ---------------------------------------------------------------- stealing sessions

def test_register_unregister_and_heartbeat_before_hello_are_refused(rig):
    links = rig.owner()
    owner_id = registered(rig, links, E)
    attacker = rig.dealer()
    attacker.send(wire.encode_register([E]))
    attacker.send(wire.encode_unregister([E]))
    attacker.send(wire.encode_heartbeat(1.0))
    assert rig.pump(lambda: rig.worker.stats()["before_hello"] == 3)
    assert rig.worker.routes.holder(E) == owner_id and len(rig.worker.owners) == 1
    packets = the_answers()
    rig.answers(*packets)
    assert owner_records(rig, links, 3) == expected_records(packets)   # SYN-ACK, bytes, FIN
    assert kinds_received(attacker) == ["HELLO"]                        # a greeting, nothing else
    assert rig.worker.stats()["unregistered"] == 0


def test_a_peer_with_its_own_hello_can_neither_take_nor_remove_a_route(rig, caplog):
    caplog.set_level(logging.INFO, logger="tcpcopy.intercept")
    links = rig.owner()
    owner_id = registered(rig, links, E)
    attacker = rig.dealer()
    attacker.send(hello_from("mallory@attacker", "m1"))
    for _ in range(2):
        attacker.send(wire.encode_register([E]))
        attacker.send(wire.encode_unregister([E]))
    assert rig.pump(lambda: rig.worker.stats()["unregister_not_owner"] == 2)
    stats = rig.worker.stats()
    assert (stats["register_taken"], stats["registered"], stats["unregistered"]) == (2, 1, 0)
    assert rig.worker.routes.holder(E) == owner_id
    packets = the_answers()
    rig.answers(*packets)
    assert owner_records(rig, links, 3) == expected_records(packets)
    assert kinds_received(attacker) == ["HELLO"]
    refusals = [r.getMessage() for r in caplog.records if "REGISTER refused" in r.getMessage()]
    assert len(refusals) == 1 and "owner-0@online1" in refusals[0] and "register_taken" in refusals[0]


def test_a_route_of_an_owner_gone_silent_goes_to_whoever_registers_it(rig):
    links = rig.owner()
    registered(rig, links, E)
    other = rig.dealer()
    other.send(hello_from("owner-1@online2", "o1"))
    other.send(wire.encode_register([E]))
    assert rig.pump(lambda: rig.worker.stats()["register_taken"] == 1)   # its owner is alive
    other_id = next(r for r, o in rig.worker.owners.items() if o.identity == "owner-1@online2")
    for _ in range(int(OWNER_SILENCE)):                 # the first owner falls silent
        rig.clock.now += 1.0
        other.send(wire.encode_heartbeat(1.0))
        assert rig.pump(lambda: rig.worker.owners[other_id].last_seen == rig.clock.now)
    other.send(wire.encode_register([E]))
    assert rig.pump(lambda: rig.worker.stats()["registered"] == 2)
    assert rig.worker.routes.holder(E) == other_id and set(rig.worker.owners) == {other_id}
    assert rig.worker.stats()["owners_forgotten"] == 1
    rig.answers(answer(40000, "SA"))
    assert [k for k in kinds_received(other) if k != "HEARTBEAT"] == ["HELLO", "RESPONSES"]


def test_a_silent_owners_route_is_freed_by_the_register_that_needs_it(rig):
    """Between the silence and the tick that forgets the owner, a REGISTER frees it."""
    links = rig.owner()
    registered(rig, links, E)
    other = rig.dealer()
    other.send(hello_from("owner-1@online2", "o1"))
    assert rig.pump(lambda: len(rig.worker.owners) == 2)
    other_id = next(r for r, o in rig.worker.owners.items() if o.identity == "owner-1@online2")
    rig.clock.now += OWNER_SILENCE
    rig.worker.on_control([other_id, wire.encode_register([E])], rig.clock.now)
    assert rig.worker.routes.holder(E) == other_id and set(rig.worker.owners) == {other_id}
    assert rig.worker.stats()["owners_forgotten"] == 1


# ---------------------------------------------------------------- hijacking an owner

def test_owners_use_random_16_byte_routing_ids(rig):
    first, second = rig.owner("owner-0@a"), rig.owner("owner-1@a")
    ids = [links.links[0].socket.getsockopt(zmq.ROUTING_ID) for links in (first, second)]
    assert all(len(i) == 16 and i[0] != 0 for i in ids) and ids[0] != ids[1]
    assert set(rig.worker.owners) == set(ids)


def test_a_peer_that_connects_with_an_owners_routing_id_takes_nothing_over(rig):
    links = rig.owner()
    owner_id = registered(rig, links, E)
    impostor = rig.dealer(routing_id=owner_id)   # even knowing the id, it cannot take over
    impostor.send(hello_from("mallory", "m1"))
    impostor.send(wire.encode_unregister([E]))
    impostor.send(wire.encode_bye("hijacked"))
    rig.pump(timeout=0.5)
    time.sleep(0.2)
    rig.pump(timeout=0.5)
    assert rig.worker.owners[owner_id].identity == "owner-0@online1"
    assert rig.worker.routes.holder(E) == owner_id
    packets = the_answers()
    rig.answers(*packets)
    assert owner_records(rig, links, 3) == expected_records(packets)
    assert kinds_received(impostor) == []


# ---------------------------------------------------------------- one message stalls intercept

def zmtp_peer(port: int) -> socket.socket:
    """A raw TCP peer that says the ZMTP 3.0 greeting and READY as a DEALER, so the frames
    it sends next are whatever the test writes, as no ZeroMQ library would send them."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=3)
    conn.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32))
    prop = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    body = b"\x05READY" + prop
    conn.sendall(b"\x04" + bytes([len(body)]) + body)
    return conn


def closed_by_peer(conn: socket.socket, timeout: float = 3.0) -> bool:
    conn.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if conn.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def test_a_frame_over_the_size_limit_ends_the_connection_before_it_is_read(rig):
    """Without keys MAXMSGSIZE hangs up on it; with keys, a peer without them (this one says
    NULL in its greeting) is hung up on before it may send a frame at all."""
    links = rig.owner()
    conn = zmtp_peer(rig.port)
    try:
        conn.sendall(b"\x02" + struct.pack(">Q", 10 << 20) + b"\x93")   # a 10 MB frame announced
        assert closed_by_peer(conn)        # ZeroMQ hangs up, nothing is buffered
    except BrokenPipeError:
        assert rig.keys is not None        # hung up on at the greeting already
    finally:
        conn.close()
    registered(rig, links, E)
    rig.answers(answer(40000, "SA"))
    assert len(owner_records(rig, links, 1)) == 1
    assert rig.worker.stats()["peer_errors"] == 0
    assert (rig.worker.stats()["curve_refused_plain"] > 0) == (rig.keys is not None)


@pytest.mark.parametrize("frame, fault", [
    (wire.encode_hello(wire.Hello("owner", "x" * 4000, "y" * 4000)) + bytes(10_000), "HELLO message of"),
    (b"\x93\x01\x03\xdd\xff\xff\xff\xff", "exceeds max_array_len"),           # 4 billion endpoints
    (b"\x93\x01\x03" + b"\x91" * 900 + b"\x90", "malformed REGISTER"),         # nested 900 deep
    (msgpack.packb([1, wire.REGISTER, [[b"\x01" * 4, 1, b"\x02" * 4, 2]] * (wire.ENDPOINTS_MAX + 1)]),
     "exceeds max_array_len"),
], ids=["oversized-hello", "huge-array-header", "deep-nesting", "too-many-endpoints"])
def test_messages_over_their_kinds_limits_are_counted_faults(rig, frame, fault, caplog):
    caplog.set_level(logging.WARNING, logger="tcpcopy.intercept")
    attacker = rig.dealer()
    started = time.process_time()
    attacker.send(frame)
    assert rig.pump(lambda: rig.worker.stats()["peer_errors"] == 1)
    assert time.process_time() - started < 1.0
    message, = [r.getMessage() for r in caplog.records]
    assert fault in message and "\n" not in message


def test_heartbeats_keep_flowing_while_junk_arrives(keys, caplog):
    """The worker on its real clock in a thread; attackers flood it for a few seconds
    (bounded) while an owner times the intercept's heartbeats. A peer that reconnects gets
    a new routing id, so the log is bounded per minute, not per peer."""
    caplog.set_level(logging.INFO, logger="tcpcopy.intercept")
    context = zmq.Context()
    server_keys = {"keys": keys.intercept_keys()} if keys else {}
    worker = Worker(WorkerConfig(endpoint="tcp://127.0.0.1:*", routes_per_owner=20_000, **server_keys),
                    context=context)
    address = worker.bind()
    port = int(address.rsplit(":", 1)[1])
    stop, flood_over = threading.Event(), threading.Event()
    serving = threading.Thread(target=worker.serve, args=(stop.is_set,), daemon=True)
    serving.start()
    floods = [threading.Thread(target=flood, args=(context, address, port, flood_over, attacker_keys(keys)),
                               daemon=True)
              for flood in (_flood_registers_without_hello, _flood_registers_with_hello,
                            _flood_oversized, _flood_garbage)]
    owner = context.socket(zmq.DEALER)
    owner.setsockopt(zmq.LINGER, 0)
    owner.setsockopt(zmq.ROUTING_ID, wire.new_routing_id())
    if keys:
        curve.connect_with_keys(owner, keys.owner_keys())
    owner.connect(address)
    try:
        owner.send(hello_from("owner-0@online1", "i1"))
        assert owner.poll(3000) and wire.decode(owner.recv())[0] == wire.HELLO
        for thread in floods:
            thread.start()
        beats = _heartbeat_times(owner, seconds=4.0)
    finally:
        flood_over.set()
        for thread in floods:
            thread.join(timeout=60)
        stop.set()
        serving.join(timeout=60)
    # A ZeroMQ socket must not be closed from another thread while its own uses it (libzmq
    # aborts the process): the worker and the context are closed only once every thread
    # that uses them has ended, else the test fails and leaves them to the process's exit.
    threads_done = not serving.is_alive() and not any(t.is_alive() for t in floods)
    stats = worker.stats()
    try:
        assert threads_done, "the worker or a flood did not stop within 60 s of being told to"
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        assert len(beats) >= 3 and max(gaps) < 1.6, beats
        assert stats["before_hello"] > 0 and stats["register_over_quota"] > 0 and stats["peer_errors"] > 0
        assert stats["routes"] <= 20_000 and stats["owners"] == 2
        about_peers = [r for r in caplog.records if r.name == "tcpcopy.intercept"]
        assert len(about_peers) <= PEER_LOG_LINES, [r.getMessage() for r in about_peers]
        refusals = [r for r in caplog.records if r.name == "tcpcopy.curve"]   # the key gate's own budget
        assert len(refusals) <= GATE_LOG_LINES and (keys is None) == (not refusals), refusals
    finally:
        if threads_done:
            worker.close()
            owner.close(linger=0)
            context.destroy(linger=0)


def _heartbeat_times(owner: zmq.Socket, seconds: float) -> list[float]:
    """When HEARTBEATs arrive over ``seconds``, the owner heartbeating as owners do."""
    beats, deadline, next_beat = [], time.monotonic() + seconds, 0.0
    while (now := time.monotonic()) < deadline:
        if now >= next_beat:
            owner.send(wire.encode_heartbeat(time.time()))
            next_beat = now + 0.5
        if owner.poll(50):
            if wire.decode(owner.recv())[0] == wire.HEARTBEAT:
                beats.append(time.monotonic())
    return beats


def _junk_dealer(context: zmq.Context, address: str, keys) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100)
    if keys is not None:
        curve.connect_with_keys(sock, keys)
    sock.connect(address)
    return sock


def _send_until(sock: zmq.Socket, frames, over: threading.Event) -> None:
    for frame in frames:
        while not over.is_set():
            try:
                sock.send(frame, zmq.NOBLOCK)
                break
            except zmq.Again:
                time.sleep(0.001)
        if over.is_set():
            return


def _endpoint_batch(first: int) -> bytes:
    return wire.encode_register([(bytes([10, first, n >> 8, n & 255]), 1024, b"\x0a\x00\x00\x01", 80)
                                 for n in range(wire.ENDPOINTS_MAX)])


def _flood_registers_without_hello(context, address, _port, over, keys) -> None:
    sock = _junk_dealer(context, address, keys)
    batch = _endpoint_batch(0)
    _send_until(sock, (batch for _ in range(2000)), over)
    sock.close()


def _flood_registers_with_hello(context, address, _port, over, keys) -> None:
    sock = _junk_dealer(context, address, keys)
    sock.send(hello_from("mallory@attacker", "m1"))
    batches = [_endpoint_batch(n) for n in range(10)]    # 40,960 endpoints, twice the quota
    _send_until(sock, (batches[n % 10] for n in range(2000)), over)
    sock.close()


def _flood_oversized(context, address, port, over, keys) -> None:
    sock = _junk_dealer(context, address, keys)
    _send_until(sock, (bytes(10 << 20) for _ in range(3)), over)   # the reported 10 MB frame
    sock.close()
    for _ in range(50):
        if over.is_set():
            return
        conn = zmtp_peer(port)
        try:
            conn.sendall(b"\x02" + struct.pack(">Q", 8 << 20) + bytes(65536))
            closed_by_peer(conn, 1.0)
        except OSError:   # with keys on, a peer without them is hung up on at the greeting
            pass
        finally:
            conn.close()


def _flood_garbage(context, address, _port, over, keys) -> None:
    sock = _junk_dealer(context, address, keys)
    junk = [b"\xc1" * 200_000, b"\x93\x01\x01" + b"\xff" * 100_000, b"\x93\x01\x07\xdd\xff\xff\xff\xff"]
    _send_until(sock, (junk[n % 3] for n in range(20_000)), over)
    sock.close()


# ---------------------------------------------------------------- quotas and caps

def test_a_register_flood_from_one_peer_is_capped_and_evicts_nobody(keys):
    rig = Rig(keys, routes_per_owner=1000)
    try:
        links = rig.owner()
        owner_id = registered(rig, links, *(endpoint(40000 + n) for n in range(50)))
        attacker = rig.dealer()
        attacker.send(hello_from("mallory@attacker", "m1"))
        flood = [(bytes([10, 0, n >> 8, n & 255]), 2000, b"\x0a\x00\x00\x01", 80) for n in range(5000)]
        for part in wire.endpoint_batches(flood):
            attacker.send(wire.encode_register(part))
        assert rig.pump(lambda: rig.worker.stats()["register_over_quota"] == 4000)
        assert rig.worker.routes.routes_of(owner_id) == 50 and len(rig.worker.routes) == 1050
        rig.worker.routes.max_routes = 1100         # and a full table refuses, never evicts
        more = [(bytes([11, 0, n >> 8, n & 255]), 2000, b"\x0a\x00\x00\x01", 80) for n in range(100)]
        third = rig.dealer()
        third.send(hello_from("mallory-2@attacker", "m2"))
        third.send(wire.encode_register(more))
        assert rig.pump(lambda: rig.worker.stats()["register_table_full"] == 50)
        assert rig.worker.routes.routes_of(owner_id) == 50
        rig.answers(answer(40049, "SA"))
        assert len(owner_records(rig, links, 1)) == 1
    finally:
        rig.close()


def test_hellos_beyond_the_owner_cap_are_refused_with_a_bye(keys, caplog):
    caplog.set_level(logging.WARNING, logger="tcpcopy.intercept")
    rig = Rig(keys, max_owners=2)
    try:
        links = rig.owner()
        registered(rig, links, E)
        peers = [rig.dealer() for _ in range(3)]
        for n, peer in enumerate(peers):
            peer.send(hello_from(f"mallory-{n}", "m"))
        assert rig.pump(lambda: rig.worker.stats()["owners_refused"] == 2)
        assert len(rig.worker.owners) == 2
        refused = [kinds_received(peer) for peer in peers]
        assert sorted(refused) == [["BYE"], ["BYE"], ["HELLO"]]
        logged = [r.getMessage() for r in caplog.records if "owners_refused" in r.getMessage()]
        assert len(logged) == 1 and "--max-owners" in logged[0]
        rig.answers(answer(40000, "SA"))
        assert len(owner_records(rig, links, 1)) == 1
    finally:
        rig.close()


# ---------------------------------------------------------------- what a peer says, logged

def test_a_peers_identity_and_reason_are_logged_escaped(rig, caplog):
    caplog.set_level(logging.INFO, logger="tcpcopy.intercept")
    forged = "x\n2030-01-01 00:00:00 intercept[1] WARNING owner root connected\x1b[2J\x1b]0;pwned\x07"
    attacker = rig.dealer()
    attacker.send(hello_from(forged, "m1"))
    attacker.send(wire.encode_bye("done\nFORGED LINE"))
    assert rig.pump(lambda: any("left" in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records]
    assert not any(ch in line for line in lines for ch in "\n\x1b\x07")
    assert any("x\\n2030-01-01" in line and "\\x1b[2J" in line for line in lines)
    assert any("done\\nFORGED LINE" in line for line in lines)


# ---------------------------------------------------------------- legitimate behaviours kept

def test_an_owner_restarting_on_its_routing_id_registers_again(rig):
    owner = rig.dealer(routing_id=wire.new_routing_id())
    owner.send(hello_from("owner-0", "i1"))
    owner.send(wire.encode_register([E]))
    assert rig.pump(lambda: E in rig.worker.routes)
    owner.send(hello_from("owner-0", "i2"))            # a new instance knows none of them
    assert rig.pump(lambda: rig.worker.stats()["owners_restarted"] == 1)
    assert E not in rig.worker.routes
    owner.send(wire.encode_register([E]))
    assert rig.pump(lambda: E in rig.worker.routes)


def test_after_an_intercept_restart_the_owner_registers_its_live_endpoints_again(rig):
    links = rig.owner()
    owner_id = registered(rig, links, E)
    if rig.worker.gate is not None:
        rig.worker.gate.close()                         # its context's ZAP endpoint, for the new one
    rig.worker.socket.close(linger=0)                  # a crash: no BYE
    restarted = rig.worker = Worker(WorkerConfig(endpoint=rig.endpoint, **rig.config), clock=rig.clock,
                                    context=rig.context)
    deadline = time.monotonic() + 5
    while True:                                         # the old listener closes asynchronously
        try:
            restarted.bind()
            break
        except zmq.ZMQError as exc:
            assert exc.errno == zmq.EADDRINUSE and time.monotonic() < deadline, exc
            time.sleep(0.05)
    time.sleep(0.3)                                     # the owner's DEALER reconnects
    sock, now = links.links[0].socket, links.links[0].last_heard   # the link is still up
    deadline = time.monotonic() + 10
    while E not in restarted.routes:
        assert time.monotonic() < deadline, restarted.stats()
        now += 1.0
        links.tick(now)                                 # a heartbeat: refused, and greeted
        rig.pump()
        links.receive(sock, now, lambda: [E])           # the greeting: HELLO, then REGISTER
        links.flush()
    assert restarted.routes.holder(E) == owner_id and restarted.stats()["before_hello"] >= 1
    rig.answers(answer(40000, "SA"))
    assert len(owner_records(rig, links, 1)) == 1


def test_an_answer_that_beats_its_registration_still_reaches_the_owner(rig):
    links = rig.owner()
    syn_ack = answer(40000, "SA")
    rig.answers(syn_ack)                                # held: no route yet
    registered(rig, links, E)
    rig.clock.now += 0.001
    rig.worker.flush_due(rig.clock.now)
    assert owner_records(rig, links, 1) == expected_records([syn_ack])
    assert rig.worker.stats()["released"] == 1


def test_more_endpoints_than_one_register_holds_are_split_by_the_owner(rig):
    links = rig.owner()
    many = [endpoint(1024 + n) for n in range(wire.ENDPOINTS_MAX + 500)]
    registered(rig, links, *many)
    assert len(rig.worker.routes) == len(many) and rig.worker.stats()["peer_errors"] == 0
    assert links.stats.registered == len(many)


# ---------------------------------------------------------------- strangers, with keys on

@pytest.mark.parametrize(("stranger", "counters"), [
    # a peer without keys that notices the mismatch first hangs up: seen here as a failed handshake
    ("no keys", ("curve_refused_plain", "curve_refused_handshake")),
    ("an unlisted key", ("curve_refused_key",)),
    ("a listed key but the wrong server key", ("curve_refused_handshake",)),
])
def test_with_keys_a_stranger_is_refused_counted_and_takes_nothing(key_set, stranger, counters):
    rig = Rig(key_set)
    try:
        links = rig.owner()
        owner_id = registered(rig, links, E)
        server = curve.load_public(key_set.public("intercept"))
        keys = {"no keys": None,
                "an unlisted key": curve.ClientKeys(curve.KeyPair(*zmq.curve_keypair()), server),
                "a listed key but the wrong server key": curve.ClientKeys(
                    curve.load_secret(key_set.secret("online2")), zmq.curve_keypair()[0])}[stranger]
        attacker = rig.dealer(keys=keys)
        for message in (hello_from("mallory@attacker", "m1"), wire.encode_register([E]), wire.encode_unregister([E])):
            attacker.send(message)
        assert rig.pump(lambda: sum(rig.worker.stats()[counter] for counter in counters) >= 1)
        packets = the_answers()
        rig.answers(*packets)
        assert owner_records(rig, links, 3) == expected_records(packets)
        assert kinds_received(attacker) == []              # not even a greeting
        stats = rig.worker.stats()
        assert rig.worker.routes.holder(E) == owner_id and stats["owners"] == 1
        assert (stats["before_hello"], stats["register_taken"], stats["peer_errors"]) == (0, 0, 0)
    finally:
        rig.close()
