"""The route table, driven by hand: owners, TTLs, bounds, held records, and no collisions."""

from __future__ import annotations

import ast
import ipaddress
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcpcopy.intercept.routes import RouteTable


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


CLIENT = ip("198.18.3.5")
TARGET = ip("198.18.0.2")
A = (CLIENT, 40000, TARGET, 8080)
B = (CLIENT, 40001, TARGET, 8080)
OWNER_1 = b"\x00owner1"
OWNER_2 = b"\x00owner2"


def c_route_key(client_ip: bytes, client_port: int, target_ip: bytes, target_port: int) -> int:
    """The C intercept's route key: a sum of the fields as loaded, NBO, on a little-endian host."""
    def loaded(field: bytes) -> int:
        return int.from_bytes(field, "little")
    cport = loaded(client_port.to_bytes(2, "big"))
    tport = loaded(target_port.to_bytes(2, "big"))
    return ((cport << 16) + loaded(client_ip) + cport + loaded(target_ip)
            + (tport << 24) + (tport << 8) + tport) % 2**32


def test_register_then_lookup_finds_the_owner():
    table = RouteTable()
    table.register(A, OWNER_1, now=0.0)
    assert table.lookup(A, now=1.0) == OWNER_1
    assert table.lookup(B, now=1.0) is None
    assert len(table) == 1 and table.counters()["registered"] == 1


def test_unregister_by_another_owner_is_ignored_and_counted():
    table = RouteTable()
    table.register(A, OWNER_1, 0.0)
    assert not table.unregister(A, OWNER_2)
    assert table.lookup(A, 0.0) == OWNER_1
    assert not table.unregister(B, OWNER_1)
    assert table.unregister(A, OWNER_1)
    assert table.lookup(A, 0.0) is None
    counts = table.counters()
    assert (counts["unregister_not_owner"], counts["unregister_unknown"], counts["unregistered"]) == (1, 1, 1)
    assert table.owners() == set()


def test_another_owners_register_of_a_held_route_is_refused_and_counted():
    table = RouteTable()
    assert table.register(A, OWNER_1, 0.0)
    assert not table.register(A, OWNER_2, 1.0)
    assert table.lookup(A, 1.0) == OWNER_1 and table.holder(A) == OWNER_1
    assert table.counters()["register_taken"] == 1 and table.counters()["registered"] == 1
    assert table.routes_of(OWNER_1) == 1 and table.routes_of(OWNER_2) == 0
    assert table.register(A, OWNER_1, 2.0)     # its owner refreshes it
    assert table.drop_owner(OWNER_1) == 1      # once its owner is gone, it is free
    assert table.register(A, OWNER_2, 3.0) and table.lookup(A, 3.0) == OWNER_2


def test_idle_routes_expire_after_ttl_and_lookups_refresh_them():
    table = RouteTable(ttl=10.0)
    table.register(A, OWNER_1, 0.0)
    table.register(B, OWNER_1, 0.0)
    table.lookup(A, 8.0)              # traffic keeps A alive
    table.expire(9.9)
    assert A in table and B in table
    table.expire(10.0)
    assert A in table and B not in table
    table.register(A, OWNER_1, 15.0)  # a re-register refreshes too
    table.expire(24.9)
    assert A in table
    table.expire(25.0)
    assert len(table) == 0
    assert table.counters()["routes_expired"] == 2
    assert table.owners() == set()


def test_at_max_routes_a_new_route_is_refused_and_no_owner_loses_one():
    table = RouteTable(max_routes=2)
    c = (CLIENT, 40002, TARGET, 8080)
    table.register(A, OWNER_1, 0.0)
    table.register(B, OWNER_2, 1.0)
    assert not table.register(c, OWNER_1, 3.0)
    assert A in table and B in table and c not in table
    assert table.counters()["register_table_full"] == 1
    assert table.register(A, OWNER_1, 4.0)     # a refresh needs no room
    table.expire(200.0)                          # idle routes still expire
    assert table.register(c, OWNER_1, 200.0)


def test_an_owner_beyond_its_quota_is_refused_and_others_keep_room():
    table = RouteTable(max_routes=10, max_per_owner=3)
    keys = [(CLIENT, 41000 + n, TARGET, 8080) for n in range(6)]
    assert [table.register(k, OWNER_1, 0.0) for k in keys] == [True] * 3 + [False] * 3
    assert table.counters()["register_over_quota"] == 3 and table.routes_of(OWNER_1) == 3
    assert table.register(keys[0], OWNER_1, 1.0)          # its own routes refresh
    assert all(table.register(k, OWNER_2, 1.0) for k in keys[3:])
    assert table.unregister(keys[0], OWNER_1) and table.register(keys[0], OWNER_2, 2.0) is False
    assert table.register((CLIENT, 42000, TARGET, 8080), OWNER_1, 2.0)   # room again


def test_held_records_are_released_in_arrival_order_once():
    table = RouteTable()
    assert table.hold(A, b"syn-ack", 0.0)
    assert table.hold(A, b"syn-ack again", 0.5)
    assert table.hold(B, b"rst", 0.6)
    assert table.held_count == 3
    table.register(A, OWNER_1, 1.0)
    assert table.release(A) == [b"syn-ack", b"syn-ack again"]
    assert table.release(A) == []
    assert table.held_count == 1
    assert table.counters()["released"] == 2


def test_hold_is_bounded_in_count_and_time():
    table = RouteTable(max_held=2, hold_time=2.0)
    assert table.hold(A, b"1", 0.0)
    assert table.hold(B, b"2", 1.0)
    assert not table.hold(B, b"3", 1.0)   # full
    table.expire(1.9)
    assert table.held_count == 2
    table.expire(2.0)                     # A's record is 2 s old
    assert table.held_count == 1
    assert table.hold(B, b"4", 2.0)       # room again
    table.expire(3.0)                     # B's records count from its first, held at 1.0
    assert table.held_count == 0 and table.release(B) == []
    counts = table.counters()
    assert (counts["held"], counts["held_refused"], counts["held_expired"]) == (3, 1, 3)


def test_drop_owner_removes_only_its_routes():
    table = RouteTable()
    table.register(A, OWNER_1, 0.0)
    table.register(B, OWNER_2, 0.0)
    assert table.drop_owner(OWNER_1) == 1
    assert table.lookup(A, 0.0) is None and table.lookup(B, 0.0) == OWNER_2
    assert table.counters()["routes_dropped_owner"] == 1
    assert table.owners() == {OWNER_2}


def test_endpoints_differing_only_in_ports_never_mix_even_where_the_c_key_collides():
    one = (CLIENT, 256, TARGET, 8080)
    two = (CLIENT, 255, TARGET, 8336)
    assert c_route_key(*one) == c_route_key(*two)   # one slot, one fd in the C intercept
    table = RouteTable()
    table.register(one, OWNER_1, 0.0)
    table.register(two, OWNER_2, 0.0)
    assert table.lookup(one, 1.0) == OWNER_1
    assert table.lookup(two, 1.0) == OWNER_2
    assert table.unregister(two, OWNER_2)
    assert table.lookup(one, 2.0) == OWNER_1


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        RouteTable(ttl=0)
    with pytest.raises(ValueError):
        RouteTable(max_routes=0)
    with pytest.raises(ValueError):
        RouteTable(max_per_owner=0)


ops = st.lists(st.tuples(st.sampled_from(["register", "unregister", "drop", "lookup"]),
                         st.integers(0, 5),             # which endpoint
                         st.sampled_from([OWNER_1, OWNER_2, b"\x00owner3"])),
               max_size=60)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_the_table_agrees_with_a_plain_dict(script):
    """Without time or bounds in play, the table is a dict where the first owner keeps a key
    until it unregisters it or is dropped."""
    table = RouteTable()
    model: dict = {}
    for op, n, owner in script:
        key = (CLIENT, 40000 + n, TARGET, 8080)
        if op == "register":
            assert table.register(key, owner, 0.0) == (model.setdefault(key, owner) == owner)
        elif op == "unregister":
            removed = table.unregister(key, owner)
            assert removed == (model.get(key) == owner)
            if removed:
                del model[key]
        elif op == "drop":
            assert table.drop_owner(owner) == sum(1 for o in model.values() if o == owner)
            model = {k: o for k, o in model.items() if o != owner}
        else:
            assert table.lookup(key, 0.0) == model.get(key)
    assert len(table) == len(model)
    assert table.owners() == set(model.values())
    for owner in {OWNER_1, OWNER_2}:
        assert table.routes_of(owner) == sum(1 for o in model.values() if o == owner)


def test_the_route_table_is_pure():
    """No socket, zmq, pcap or clock: time comes in as ``now``."""
    source = pathlib.Path(__file__).resolve().parents[2] / "intercept" / "routes.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections"}, imported


def test_a_dead_owners_routes_are_handed_to_its_replacement_within_its_quota():
    table = RouteTable(max_per_owner=2)
    table.register(A, OWNER_1, now=0.0)
    table.register(B, OWNER_1, now=0.0)
    c = (CLIENT, 40002, TARGET, 8080)
    table.register(c, OWNER_2, now=1.0)

    assert table.hand_over(OWNER_1, OWNER_2, now=5.0) == [A]   # room for one more
    assert table.lookup(A, now=5.0) == OWNER_2
    assert B not in table and table.routes_of(OWNER_1) == 0 and table.routes_of(OWNER_2) == 2
    counts = table.counters()
    assert (counts["routes_handed_over"], counts["routes_dropped_owner"]) == (1, 1)
    table.expire(now=5.0 + table.ttl - 1)
    assert A in table, "a route handed over starts a fresh TTL"
    assert table.unregister(A, OWNER_2)
    assert table.hand_over(b"\x00nobody", OWNER_2, now=6.0) == []


# -- watched routes


def test_only_the_owner_of_a_route_may_watch_it():
    table = RouteTable()
    table.register(A, OWNER_1, 0.0)
    assert not table.watch(B, OWNER_1)            # no route
    assert not table.watch(A, OWNER_2)            # another owner's route
    assert table.watched == {}
    assert table.watch(A, OWNER_1) and table.watch(A, OWNER_1)   # a repeat costs nothing more
    assert table.watched == {A: OWNER_1} and table.watching(OWNER_1) == 1
    counts = table.counters()
    assert (counts["watches"], counts["watch_unknown"], counts["watch_taken"],
            counts["watched_routes"]) == (2, 1, 1, 1)


def test_watches_per_owner_are_bounded_and_refusals_counted():
    table = RouteTable(max_watched_per_owner=2)
    keys = [(CLIENT, 40000 + n, TARGET, 8080) for n in range(3)]
    for key in keys:
        table.register(key, OWNER_1, 0.0)
    other = (CLIENT, 41000, TARGET, 8080)
    table.register(other, OWNER_2, 0.0)
    assert [table.watch(key, OWNER_1) for key in keys] == [True, True, False]
    assert table.watch(keys[0], OWNER_1), "a route already watched is no new one"
    assert table.watch(other, OWNER_2), "the bound is per owner"
    assert table.counters()["watch_over_quota"] == 1
    assert table.unregister(keys[0], OWNER_1)
    assert table.watch(keys[2], OWNER_1), "an ended watch frees its place"


@pytest.mark.parametrize("ending", ["unregister", "expire", "drop_owner", "hand_over"])
def test_a_watch_ends_with_its_route(ending):
    table = RouteTable(ttl=10.0)
    table.register(A, OWNER_1, 0.0)
    table.register(B, OWNER_1, 5.0)
    table.watch(A, OWNER_1)
    table.watch(B, OWNER_1)
    if ending == "unregister":
        table.unregister(A, OWNER_1)
    elif ending == "expire":
        table.expire(now=12.0)                   # A idle for 12 s, B for 7
    elif ending == "drop_owner":
        table.drop_owner(OWNER_1)
    else:
        table.hand_over(OWNER_1, OWNER_2, now=1.0)   # the replacement resets, compares nothing
    assert A not in table.watched
    assert table.watching(OWNER_1) + table.watching(OWNER_2) == len(table.watched)
    assert table.counters()["watches_ended"] == 2 - len(table.watched)
    if ending in ("unregister", "expire"):
        assert table.watched == {B: OWNER_1}
    table.register(A, OWNER_1 if ending != "hand_over" else OWNER_2, 20.0)
    assert A not in table.watched, "a route made again starts unwatched"


def test_a_negative_watch_bound_is_refused():
    with pytest.raises(ValueError):
        RouteTable(max_watched_per_owner=-1)
