"""Overload control: when the owner falls behind, whole sessions are shed, never parts."""

import pytest

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import Dropped
from tcpcopy.session.shedding import LoadShedder, SheddingConfig
from tests.session.replay import A, PA
from tests.session.test_table import C_ISN, GET, O_ISN, TableReplay, endpoint


def dropped(events) -> list:
    return [e for e in events if isinstance(e, tuple) and isinstance(e[1], Dropped)]


def test_shedding_starts_past_the_high_lag_and_stops_below_the_low_one():
    shedder = LoadShedder(SheddingConfig(lag_high=1.0, lag_low=0.25, busy_for=0.0))
    shedder.observe(0.9, 0.0)
    assert not shedder.shedding
    shedder.observe(1.2, 1.0)
    assert shedder.shedding
    shedder.observe(0.5, 3.1)
    assert shedder.shedding                                    # hysteresis
    shedder.observe(0.2, 3.2)
    assert not shedder.shedding
    assert shedder.sessions_to_shed(10.0, live=lambda: 100) == 0
    assert shedder.max_lag == pytest.approx(1.2)


def test_live_sessions_are_shed_in_proportion_to_the_shortfall():
    shedder = LoadShedder(SheddingConfig(lag_high=1.0, lag_low=0.25, step=0.5, headroom=1.0,
                                         max_share=0.5, busy_for=0.0))
    shedder.observe(1.1, 0.0)
    assert shedder.sessions_to_shed(0.4, live=lambda: 100) == 0       # not a step yet
    # The age grew 0.1 s per second: the owner keeps up with 90% of its input.
    shedder.observe(1.15, 0.5)
    assert shedder.sessions_to_shed(0.5, live=lambda: 100) == 10
    # The next step straddles that shedding: it only measures.
    shedder.observe(1.55, 1.0)
    assert shedder.sessions_to_shed(1.0, live=lambda: 90) == 0
    # Growing 0.8 s per second (20% kept): at most half go in one step.
    shedder.observe(1.95, 1.5)
    assert shedder.sessions_to_shed(1.5, live=lambda: 90) == 45
    shedder.observe(1.95, 2.0)
    assert shedder.sessions_to_shed(2.0, live=lambda: 45) == 0        # settling
    # Catching up: nobody more is shed, though the age is still high.
    shedder.observe(1.8, 2.5)
    assert shedder.sessions_to_shed(2.5, live=lambda: 45) == 0
    # A tiny shortfall still sheds one.
    shedder.observe(1.8001, 3.0)
    assert shedder.sessions_to_shed(3.0, live=lambda: 45) == 1


def test_the_table_is_counted_only_when_a_shedding_step_is_due():
    """Counting live sessions walks the whole table: an owner keeping up never pays for it."""
    counted = []

    def live() -> int:
        counted.append(1)
        return 100

    shedder = LoadShedder(SheddingConfig(lag_high=1.0, lag_low=0.25, step=0.5, busy_for=0.0))
    for step in range(100):
        shedder.observe(0.1, step * 0.01)
        assert shedder.sessions_to_shed(step * 0.01, live) == 0
    assert counted == []
    shedder.observe(1.1, 2.0)
    shedder.observe(1.5, 2.5)
    assert shedder.sessions_to_shed(2.5, live) > 0
    assert counted == [1]


def test_new_connections_are_shed_whole_while_refusing():
    r = TableReplay()
    r.table.refuse_new = True
    assert r.syn(0.0, 7, 41000) == []
    r.table.refuse_new = False
    # The rest of the shed connection is skipped, even now that new ones are copied again.
    assert r.client(0.01, 7, 41000, A, C_ISN + 1, O_ISN + 1) == []
    assert r.client(0.02, 7, 41000, PA, C_ISN + 1, O_ISN + 1, GET) == []
    assert r.client(0.03, 7, 41000, pk.FIN | pk.ACK, C_ISN + 1 + len(GET), O_ISN + 100) == []
    stats = r.table.table_stats
    assert stats.connections_shed == 1 and stats.sessions_started == 0
    # Another connection starts as usual.
    assert [p.flags for p in r.syn(0.04, 8, 41000)] == [pk.SYN]


def test_live_sessions_are_shed_youngest_first_with_a_reset_and_their_rest_skipped():
    r = TableReplay()
    eps = [r.open(i / 100, 10 + i, 42000) for i in range(4)]
    r.events()
    shed = r.table.shed(2, 1.0)
    assert len(shed) == 2 and set(shed) == set(r.table.skipping)
    sent = r.sent()
    assert sorted((p.dst, p.sport, p.src) for p in sent if p.flags & pk.RST) == sorted(
        (ep.target_ip, ep.client_port, ep.client_ip) for ep in eps[2:])
    assert dropped(r.events()) == [(eps[3], Dropped(1.0, "shed")), (eps[2], Dropped(1.0, "shed"))]
    # The shed connections' next requests are skipped; the others are still copied.
    assert r.client(1.1, 13, 42000, PA, C_ISN + 1, O_ISN + 1, GET) == []
    assert [p.payload for p in r.client(1.1, 10, 42000, PA, C_ISN + 1, O_ISN + 1, GET)] == [GET]
    assert r.table.stats.dropped == {"shed": 2}
    assert endpoint(10, 42000) == eps[0]


def test_the_owner_wide_budget_drops_the_session_that_passes_it_and_frees_its_share():
    from tcpcopy.session.engine import SEGMENT_OVERHEAD, BufferBudget
    r = TableReplay()
    r.table.budget = BufferBudget(3 * (1400 + SEGMENT_OVERHEAD))
    first, second = r.open(0.0, 7, 43000), r.open(0.0, 8, 43000)
    chunk = b"u" * 1400
    r.client(0.1, 7, 43000, PA, C_ISN + 1, O_ISN + 1, chunk)     # never acknowledged
    r.client(0.1, 8, 43000, PA, C_ISN + 1, O_ISN + 1, chunk)
    r.client(0.1, 8, 43000, PA, C_ISN + 1401, O_ISN + 1, chunk)
    assert not dropped(r.events())
    r.client(0.2, 8, 43000, PA, C_ISN + 2801, O_ISN + 1, chunk)  # passes the budget
    assert dropped(r.events()) == [
        (second, Dropped(0.2, "memory_budget"))]
    assert r.table.budget.bites == 1
    assert r.table.budget.used == 1400 + SEGMENT_OVERHEAD      # the first session's share
    assert first != second


def test_an_owner_that_empties_its_queue_is_not_behind_whatever_the_age():
    shedder = LoadShedder(SheddingConfig(lag_high=1.0, lag_low=0.25, step=0.5, busy_for=1.0))
    shedder.observe(3.0, 0.0)
    shedder.observe(3.0, 1.0)
    assert shedder.shedding
    shedder.caught_up()       # the delay is in front of the owner, not in it
    assert not shedder.shedding
    assert shedder.sessions_to_shed(5.0, live=lambda: 100) == 0
    # Old input between empty queues (a slow capture worker) never starts shedding.
    for t in range(2, 10):
        shedder.observe(3.0, t)
        assert not shedder.shedding
        shedder.caught_up()


def test_lingering_sessions_are_not_counted_as_live():
    r = TableReplay()
    for i in range(4):
        r.open(i / 100, 20 + i, 44000)
    assert r.table.live() == 4
    r.table.shed(2, 1.0)
    assert len(r.table) == 4 and r.table.live() == 2   # the shed ones linger
