"""32-bit sequence-number arithmetic (RFC 9293 §3.4).

Sequence numbers live in a 32-bit circle, so "before" and "after" only make sense for values
less than 2**31 apart.  The session engine avoids comparing raw 32-bit values almost
everywhere: it *unwraps* each number it receives into a plain, ever-growing integer nearest to
a reference it already holds, does all of its bookkeeping on those integers, and wraps again
(``& MASK``) only when it writes a header.  Wrap-around then needs no special case.
"""

from typing import Final

MASK: Final = 0xFFFFFFFF
HALF: Final = 1 << 31


def wrap(value: int) -> int:
    """The 32-bit sequence number of an unwrapped value."""
    return value & MASK


def unwrap(seq32: int, reference: int) -> int:
    """The integer congruent to ``seq32`` (mod 2**32) that lies nearest ``reference``."""
    return reference + ((seq32 - reference + HALF) & MASK) - HALF


def seq_lt(a: int, b: int) -> bool:
    """``a`` comes strictly before ``b`` in the 32-bit circle."""
    return 0 < ((b - a) & MASK) < HALF


def seq_le(a: int, b: int) -> bool:
    """``a`` comes before ``b`` or equals it in the 32-bit circle."""
    return ((b - a) & MASK) < HALF


def seq_diff(a: int, b: int) -> int:
    """The signed distance from ``a`` to ``b`` (``b - a``), in (-2**31, 2**31]."""
    return ((b - a + HALF) & MASK) - HALF
