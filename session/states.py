"""The life of one replayed connection, as data: its states, what moves it between them,
and its timers. ``session/engine.py`` follows these tables; read them first.

The rules
=========

1. A session replays one captured client connection towards the target. Over its life it may
   open several TCP connections to the target (a reconnect replaces one), but it carries one
   client byte stream from start to end.
2. ``state`` changes only through ``next_state(state, trigger)``, which reads ``TRANSITIONS``.
   A (state, trigger) pair missing from the table is a fault of the engine and raises
   ``StateError``: nothing moves silently.
3. Only ``SYN_SENT`` and ``ESTABLISHED`` have a connection on the wire; packets from the
   target are processed in those two states only (in ``IDLE`` and ``RECONNECTING`` a stray
   answer is ignored, in ``LINGER`` it gets the answer a closed socket gives).
4. The close is not a state of its own: inside ``ESTABLISHED`` the two halves close apart,
   as they do in TCP. Our FIN goes out when the client's FIN reaches the head of the queue
   (``fin_sent``); the target's FIN is noted when it comes (``target_fin``). Both FINs sent and
   ours acknowledged is the clean end (``completed``); one half closed for ``close_wait``
   ends it with a RST. A target that closes while captured client data is still unsent
   triggers ``RECONNECT``; the client's RST is sent once the queue ahead of it is delivered.
5. Every end is one ``END`` trigger, from any live state to ``LINGER``, reported once as
   ``Closed`` (every client byte delivered) or ``Dropped`` (an abnormal end; a RST frees the
   target's socket when a connection is on the wire). Entering ``LINGER`` disarms every
   timer but the linger timer and frees every buffered segment.
6. ``LINGER_OVER`` makes the session ``FINISHED``: the owner may free it.
7. Timers are one deadline each, in ``TIMERS``. ``handle_timer`` runs the expired ones in the
   table's order and disarms each before running it; a handler re-arms its own timer when it
   must fire again. The timers of one TCP connection (``CONNECTION_TIMERS``) are disarmed
   when a reconnect replaces it.
"""

from __future__ import annotations

from typing import Final, NoReturn

# ---------------------------------------------------------------------------------------
# States

IDLE: Final = "idle"                  # created, nothing sent yet
SYN_SENT: Final = "syn-sent"          # our SYN is out, no SYN-ACK yet (RFC 9293 SYN-SENT)
ESTABLISHED: Final = "established"    # data may flow; each half closes apart (rule 4)
RECONNECTING: Final = "reconnecting"  # the target closed with client data unsent; a new SYN is due
LINGER: Final = "linger"              # over; answering late packets until the linger time ends
FINISHED: Final = "finished"          # may be freed

# ---------------------------------------------------------------------------------------
# Triggers: what happened, in the engine's words

SEND_SYN: Final = "send_syn"          # a captured SYN, a mid-stream start, or the reconnect delay over
SYNACK: Final = "synack"              # the target's acceptable SYN-ACK
RECONNECT: Final = "reconnect"        # the target ended the connection with client data undelivered
END: Final = "end"                    # closed or dropped, whatever the reason
LINGER_OVER: Final = "linger_over"    # the linger time has passed

TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (IDLE, SEND_SYN): SYN_SENT,
    (IDLE, END): LINGER,                    # aborted from outside, or over a bound at once
    (SYN_SENT, SYNACK): ESTABLISHED,
    (SYN_SENT, END): LINGER,                # refused, SYN retries spent, timeout, abort
    (ESTABLISHED, RECONNECT): RECONNECTING,
    (ESTABLISHED, END): LINGER,
    (RECONNECTING, SEND_SYN): SYN_SENT,     # a fabricated SYN from the first unacknowledged byte
    (RECONNECTING, END): LINGER,
    (LINGER, LINGER_OVER): FINISHED,
}

STATES: Final = (IDLE, SYN_SENT, ESTABLISHED, RECONNECTING, LINGER, FINISHED)
CONNECTED: Final = (SYN_SENT, ESTABLISHED)   # a connection of ours is on the wire (rule 3)
OVER: Final = (LINGER, FINISHED)             # the end has been reported


class StateError(Exception):
    """The engine asked for a move its state table does not have."""


def next_state(state: str, trigger: str) -> str:
    """The state that ``trigger`` leads to from ``state`` (rule 2)."""
    new = TRANSITIONS.get((state, trigger))
    if new is None:
        no_transition(state, trigger)
    return new


def no_transition(state: str, trigger: str) -> NoReturn:
    raise StateError(f"session state {state!r} has no transition on {trigger!r}: "
                     "the engine broke the rules of session/states.py")


# ---------------------------------------------------------------------------------------
# Timers: one deadline each, run in this order (rule 7). The index is the slot in the
# session's deadline list.

SYN_TIMER: Final = 0        # our SYN unanswered
RECONNECT_TIMER: Final = 1  # the pause between a reconnect's RST and its new SYN
RTO_TIMER: Final = 2        # the oldest unacknowledged segment's retransmission timeout
QUIET_TIMER: Final = 3      # the target quiet long enough: its response is complete
DELACK_TIMER: Final = 4     # the delayed ACK of target data
PERSIST_TIMER: Final = 5    # the target's window is zero: probe it
GAP_TIMER: Final = 6        # client segments held behind a capture gap
CLOSE_TIMER: Final = 7      # one half closed, the other not yet
WATCHDOG_TIMER: Final = 8   # -t (target silent while we wait on it) or -k (nothing at all)
LINGER_TIMER: Final = 9     # the linger time after the end
TIMER_COUNT: Final = 10

# name, armed when, on expiry (the handler is Session._fire)
TIMERS: Final = (
    ("syn", "a SYN is sent (syn_rto, doubled per retry)",
     "send the SYN again; after syn_retries drop: syn_timeout"),
    ("reconnect", "a reconnect sent its RST (reconnect_delay)",
     "send the new connection's fabricated SYN"),
    ("rto", "a segment is sent with none in flight, or an ACK leaves some unacknowledged",
     "retransmit the oldest unacknowledged segment and double the RTO; after "
     "max_retransmits drop: retransmit_limit"),
    ("quiet", "target data arrives while a response is awaited (about 2 smoothed RTTs)",
     "the response is complete: send what waited for it"),
    ("delack", "target data arrives and no ACK is pending (delayed_ack)",
     "acknowledge the target's data"),
    ("persist", "the target's window is zero with data to send (the RTO)",
     "probe the window, backing off like the RTO"),
    ("gap", "a client segment is held behind a capture gap (gap_timeout)",
     "segments still held: drop: capture_gap"),
    ("close", "the target closed first, or our FIN was acknowledged without its FIN "
     "(close_wait)", "send a RST and close: completed"),
    ("watchdog", "after every input: -t while waiting on the target, -k otherwise",
     "drop: target_timeout, or RST and close: idle_timeout"),
    ("linger", "the session ends (linger)", "finished: the owner may free the session"),
)
CONNECTION_TIMERS: Final = (SYN_TIMER, RTO_TIMER, QUIET_TIMER, DELACK_TIMER, PERSIST_TIMER,
                            CLOSE_TIMER)
