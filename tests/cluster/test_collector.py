"""The hot loops' collector settings."""

import gc

from tcpcopy.cluster.collector import YOUNG_THRESHOLD, settle_collector


def test_settling_freezes_start_up_objects_and_spaces_young_collections():
    before = gc.get_threshold()
    try:
        settle_collector()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
