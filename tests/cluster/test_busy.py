"""The loop meter: the share of wall time a loop worked rather than waited."""

from tcpcopy.cluster.busy import LoopMeter


def test_a_loop_that_waits_a_quarter_of_the_time_is_75_percent_busy():
    meter = LoopMeter(10.0)
    for _ in range(4):
        meter.waited(0.0625)
    assert meter.sample(10.5) == 0.0          # the window is not full yet
    assert meter.sample(11.0) == 75.0
    assert meter.sample(11.5) == 75.0         # the last full window until the next one ends


def test_the_share_is_bounded_and_each_window_starts_afresh():
    meter = LoopMeter(0.0)
    meter.waited(1.5)                         # a wait that began before the window did
    assert meter.sample(1.0) == 0.0
    assert meter.sample(2.0) == 100.0         # no wait in the second window: no headroom
