"""Which skipped connections an owner hands to the capture workers' kernel filters."""

from __future__ import annotations

from tcpcopy.session.kernelskip import KernelSkipConfig, KernelSkips

CONFIG = KernelSkipConfig(capacity=3, every=1.0, min_packets=5, hold=30.0, resend_every=5.0)


def keys(*names: str) -> list[bytes]:
    return [name.encode().ljust(12, b".") for name in names]


A, B, C, D, E = keys("a", "b", "c", "d", "e")


def test_the_busiest_skipped_connections_go_to_the_kernel_up_to_its_capacity():
    skips = KernelSkips(CONFIG)
    hits = {A: 50, B: 10, C: 4, D: 30, E: 20}
    assert set(skips.update({A, B, C, D, E}, hits, 0.0)) == {A, D, E}


def test_a_connection_skipped_a_few_times_only_stays_with_the_owner():
    skips = KernelSkips(CONFIG)
    assert skips.update({A}, {A: 4}, 0.0) is None
    assert skips.chosen == {}


def test_nothing_is_announced_before_the_next_choice_is_due():
    skips = KernelSkips(CONFIG)
    assert skips.update({A}, {A: 9}, 0.0) == [A]
    assert skips.update({A, B}, {B: 9}, 0.5) is None
    assert set(skips.update({A, B}, {B: 9}, 1.0)) == {A, B}


def test_a_connection_the_owner_stops_skipping_leaves_the_kernel_filter():
    """Its FIN or RST passed the kernel filter and ended the skipping in the owner."""
    skips = KernelSkips(CONFIG)
    skips.update({A, B}, {A: 9, B: 9}, 0.0)
    assert skips.update({B}, {}, 1.0) == [B]


def test_an_unchanged_list_is_sent_again_now_and_then_so_a_lost_message_heals():
    skips = KernelSkips(CONFIG)
    skips.update({A}, {A: 9}, 0.0)
    assert skips.update({A}, {}, 1.0) is None
    assert skips.update({A}, {}, 5.0) == [A]
    assert skips.changes == 1


def test_a_full_filter_gives_its_oldest_places_to_busier_connections_after_the_hold():
    skips = KernelSkips(CONFIG)
    skips.update({A, B, C}, {A: 9, B: 9, C: 9}, 0.0)
    skips.update({A, B, C, D}, {D: 100}, 10.0)
    assert set(skips.chosen) == {A, B, C}   # held too short to give way
    flows = skips.update({A, B, C, D}, {D: 100}, 31.0)
    assert len(flows) == 3 and D in flows


def test_connections_skipped_no_more_are_not_admitted():
    skips = KernelSkips(CONFIG)
    assert skips.update(set(), {A: 50}, 0.0) is None


def test_shed_sessions_take_free_places_at_once_without_being_counted():
    skips = KernelSkips(CONFIG)
    skips.update(set(), {}, 0.0)
    assert not skips.due(0.3)
    skips.admit([A, B, C, D], 0.3)
    assert skips.due(0.3)
    assert set(skips.update({A, B, C, D}, {}, 0.3)) == {A, B, C}   # up to the capacity
    assert skips.changes == 1
