"""The garbage collector of a per-packet loop.

The hot loops allocate several objects per packet (decoded packets, byte strings, batch
lists), few of them in reference cycles. With CPython's default thresholds (700 new
objects) a young collection runs every few hundred packets and a full one, which walks
every session in the table, often enough to take 5-8% of an owner's CPU under load. A
larger first threshold makes both rarer; what a delayed collection keeps is a few
thousand short-lived objects more.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000   # new objects between young collections (CPython's default: 700)


def settle_collector() -> None:
    """Call once start-up is done: what exists now is permanent (``gc.freeze``), out of
    every later collection, and collections come less often."""
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
