"""Every message that crosses a process boundary, defined once.

Each message is one ZeroMQ frame holding a msgpack array ``[FORMAT_VERSION, kind, body]``.
``decode`` checks the version first, so a peer built from another version of this module is
told so by name instead of misreading bytes. Bodies are plain msgpack values (lists, ints,
bytes, str) so encoding stays cheap on the per-packet paths (PACKETS, RESPONSES).

Channels:

- capture worker --DEALER--> session owner (ROUTER): HELLO, PACKETS (batches of captured
  client packets), BYE;
- session owner --ROUTER--> capture worker: SKIP (connections the kernel filter may drop);
- capture worker --DEALER--> session owner: ONLINE_ANSWERS (the online server's answers
  to the sessions being compared);
- session owner --DEALER--> intercept (ROUTER): HELLO, REGISTER, UNREGISTER, BYE, WATCH
  (routes whose answers come back whole, for comparing);
- intercept --ROUTER--> session owner: HELLO, RESPONSES, HEARTBEAT, HANDOVER (the routes of
  a dead owner, for its replacement to reset), ANSWERS (watched routes' answers, payload
  included; only an owner that compares takes them);
- every process --PUB--> aggregator: STATS.

Every decoder is bounded. A message's first three bytes declare its kind (a fixarray of 3,
this format version, the kind), so the kind's ``LIMITS`` apply before anything is unpacked:
the frame's size, and for msgpack each bin, str, array and map. Each limit is the largest
legitimate value with a margin; senders split what could pass one (``endpoint_batches``), and
every receiving socket sets ZMQ_MAXMSGSIZE to ``max_frame`` of the kinds it takes. A frame
that declares nothing sensible is unpacked under the small ``UNKNOWN`` limits, enough to say
what it is. Strings a peer chose are shown through ``printable``.
"""

from __future__ import annotations

import reprlib
import secrets
from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped]

FORMAT_VERSION = 1

HELLO = 1
PACKETS = 2
REGISTER = 3
UNREGISTER = 4
RESPONSES = 5
HEARTBEAT = 6
STATS = 7
BYE = 8
SKIP = 9
HANDOVER = 10
WATCH = 11           # owner -> intercept: send these routes' answers whole (compared sessions)
ANSWERS = 12         # intercept -> owner: answers of watched routes, payload included
ONLINE_ANSWERS = 13  # capture worker -> owner: the online server's answers to compared sessions

KIND_NAMES = {HELLO: "HELLO", PACKETS: "PACKETS", REGISTER: "REGISTER",
              UNREGISTER: "UNREGISTER", RESPONSES: "RESPONSES", HEARTBEAT: "HEARTBEAT",
              STATS: "STATS", BYE: "BYE", SKIP: "SKIP", HANDOVER: "HANDOVER",
              WATCH: "WATCH", ANSWERS: "ANSWERS", ONLINE_ANSWERS: "ONLINE_ANSWERS"}

ROLES = ("capture", "owner", "intercept", "cluster", "hub")   # hub: the stats hub (cluster/ops/hub.py)

# The largest legitimate values, each with a margin.
TEXT_MAX = 4096             # identity, instance, BYE reason (a capture identity holds a path)
PACKET_MAX_BYTES = 262_144  # a captured packet: libpcap's largest snaplen
PACKETS_MAX_ITEMS = 1024    # packets per PACKETS message (capture workers send 256 at most)
PACKETS_MAX_FRAME = 80 << 20   # 256 packets of 262,144 bytes are 64 MiB
ENDPOINTS_MAX = 4096        # endpoints per REGISTER or UNREGISTER (owners split longer lists)
RECORD_MAX_BYTES = 2048     # an intercept record: 256 header bytes + 1460 payload bytes at most
RESPONSES_MAX_RECORDS = 256  # records per RESPONSES message (intercept sends 64 at most)
STATS_MAX_FIGURES = 4096    # figures per STATS message (the aggregator keeps as many)
STATS_TEXT_MAX = 1024       # a figure's name, a STATS identity
ROUTING_ID_BYTES = 16       # owners' DEALER routing ids
SKIP_MAX_FLOWS = 256        # connections per SKIP message (owners send 128 at most)
ANSWER_RECORD_MAX_BYTES = 262_144   # a watched answer packet, payload included (a GRO super-packet)
ANSWERS_MAX_RECORDS = 64            # records per ANSWERS message
FLOW_KEY_BYTES = (12, 36)   # an IPv4 or IPv6 flow key (addresses, then ports: pk.flow_key_bytes)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one message kind may hold: the frame, in bytes, and for msgpack the bytes of
    each bin and str and the items of each array and map (0: none of that type)."""

    frame: int
    bin: int = 0
    str: int = 0
    array: int = 3
    map: int = 0

    def unpack_args(self) -> dict:
        return {"max_bin_len": self.bin, "max_str_len": self.str, "max_array_len": self.array,
                "max_map_len": self.map, "max_ext_len": 0}


_ENDPOINT_LIMITS = Limits(frame=64 + ENDPOINTS_MAX * 48, bin=16, array=ENDPOINTS_MAX)
LIMITS: dict[int | None, Limits] = {
    HELLO: Limits(frame=64 + 3 * (TEXT_MAX + 5), str=TEXT_MAX),
    PACKETS: Limits(frame=PACKETS_MAX_FRAME, bin=PACKET_MAX_BYTES, array=PACKETS_MAX_ITEMS),
    REGISTER: _ENDPOINT_LIMITS,
    UNREGISTER: _ENDPOINT_LIMITS,
    HANDOVER: _ENDPOINT_LIMITS,
    WATCH: _ENDPOINT_LIMITS,
    ANSWERS: Limits(frame=64 + ANSWERS_MAX_RECORDS * (ANSWER_RECORD_MAX_BYTES + 5),
                    bin=ANSWER_RECORD_MAX_BYTES, array=ANSWERS_MAX_RECORDS),
    ONLINE_ANSWERS: Limits(frame=PACKETS_MAX_FRAME, bin=PACKET_MAX_BYTES, array=PACKETS_MAX_ITEMS),
    RESPONSES: Limits(frame=64 + RESPONSES_MAX_RECORDS * (RECORD_MAX_BYTES + 5),
                      bin=RECORD_MAX_BYTES, array=RESPONSES_MAX_RECORDS),
    HEARTBEAT: Limits(frame=64),
    STATS: Limits(frame=1 << 20, bin=STATS_TEXT_MAX, str=STATS_TEXT_MAX, array=64,
                  map=STATS_MAX_FIGURES),
    BYE: Limits(frame=64 + TEXT_MAX, str=TEXT_MAX),
    SKIP: Limits(frame=64 + SKIP_MAX_FLOWS * 40, bin=max(FLOW_KEY_BYTES), array=SKIP_MAX_FLOWS),
}
# A frame that does not declare a known kind of this format: enough to name what it is.
UNKNOWN = Limits(frame=64 << 10, bin=256, str=256, array=16, map=16)
_UNPACK_ARGS = {kind: limits.unpack_args() for kind, limits in LIMITS.items()}
_UNKNOWN_ARGS = UNKNOWN.unpack_args()

# The kinds each receiving socket takes, for its ZMQ_MAXMSGSIZE (``max_frame``).
INTERCEPT_TAKES = (HELLO, REGISTER, UNREGISTER, HEARTBEAT, BYE, WATCH)
OWNER_TAKES_FROM_INTERCEPT = (HELLO, RESPONSES, HEARTBEAT, BYE, HANDOVER)
OWNER_COMPARING_TAKES_FROM_INTERCEPT = OWNER_TAKES_FROM_INTERCEPT + (ANSWERS,)
OWNER_TAKES_FROM_CAPTURE = (HELLO, PACKETS, BYE, ONLINE_ANSWERS)
CAPTURE_TAKES = (SKIP,)
AGGREGATOR_TAKES = (STATS,)


def max_frame(kinds) -> int:
    """The largest frame any of ``kinds`` may have: a socket's ZMQ_MAXMSGSIZE."""
    return max(LIMITS[kind].frame for kind in kinds)


def endpoint_batches(endpoints: list) -> list[list]:
    """``endpoints`` in slices that each fit one REGISTER or UNREGISTER."""
    return [endpoints[i:i + ENDPOINTS_MAX] for i in range(0, len(endpoints), ENDPOINTS_MAX)]


def new_routing_id() -> bytes:
    """A DEALER's ZMQ_ROUTING_ID: random, so no other peer can claim it; never starting with
    a zero byte, the form ZeroMQ keeps for the ids a ROUTER makes up."""
    while True:
        routing_id = secrets.token_bytes(ROUTING_ID_BYTES)
        if routing_id[0]:
            return routing_id


def printable(text, limit: int = 200) -> str:
    """A string a peer chose, fit for a log line or a terminal: at most ``limit`` characters,
    control and other non-printing characters (and backslashes) escaped as repr does."""
    if not isinstance(text, str):
        return _SHOW.repr(text)
    cut = text[:limit]
    shown = cut if cut.isprintable() and "\\" not in cut else repr(cut)[1:-1]
    return shown + "..." if len(text) > limit else shown


def _bounded_repr() -> reprlib.Repr:
    """repr for error messages about peer values: bounded in depth and length, so a deeply
    nested or huge value never costs a RecursionError or a megabyte of text."""
    shower = reprlib.Repr()
    shower.maxlevel, shower.maxstring, shower.maxother = 3, 60, 60
    shower.maxlist = shower.maxtuple = shower.maxdict = 4
    return shower


_SHOW = _bounded_repr()


class WireError(ValueError):
    """A message that cannot be understood; the text says whose fault and what to do."""


@dataclass(frozen=True, slots=True)
class Hello:
    """The first message on a control connection, answered in kind."""

    role: str       # one of ROLES
    identity: str   # stable name of the sender, e.g. "owner-0@online1"
    instance: str   # changes on every start, so a restarted peer is recognised


# A replayed connection as (client_ip, client_port, target_ip, target_port), addresses packed.
EndpointTuple = tuple[bytes, int, bytes, int]


def _pack(kind: int, body) -> bytes:
    return msgpack.packb([FORMAT_VERSION, kind, body], use_bin_type=True)


def encode_hello(hello: Hello) -> bytes:
    return _pack(HELLO, [hello.role, hello.identity, hello.instance])


def encode_packets(batch: list) -> bytes:
    """``batch``: [[timestamp, ip_packet_bytes], ...] of captured client packets."""
    return _pack(PACKETS, batch)


def encode_register(endpoints: list) -> bytes:
    return _pack(REGISTER, [list(e) for e in endpoints])


def encode_unregister(endpoints: list) -> bytes:
    return _pack(UNREGISTER, [list(e) for e in endpoints])


def encode_watch(endpoints: list) -> bytes:
    """owner -> intercept: registered routes whose answers must come back whole (ANSWERS)."""
    return _pack(WATCH, [list(e) for e in endpoints])


def encode_answers(records: list) -> bytes:
    """intercept -> owner: answer packets of watched routes, IP header to the end of the
    payload (each at most ANSWER_RECORD_MAX_BYTES)."""
    return _pack(ANSWERS, records)


def encode_online_answers(batch: list) -> bytes:
    """capture worker -> owner: [[timestamp, ip_packet_bytes], ...] the online server sent
    to clients of compared sessions (never replayed)."""
    return _pack(ONLINE_ANSWERS, batch)


def encode_handover(endpoints: list) -> bytes:
    """intercept -> the owner that replaced a dead one: the dead owner's routes, now its own,
    so that it resets those connections on the target."""
    return _pack(HANDOVER, [list(e) for e in endpoints])


def encode_responses(headers: list) -> bytes:
    """``headers``: IP+TCP header bytes of target packets (payload cut or truncated)."""
    return _pack(RESPONSES, headers)


def encode_heartbeat(sent_at: float) -> bytes:
    return _pack(HEARTBEAT, sent_at)


def encode_stats(role: str, identity: str, counters: dict) -> bytes:
    return _pack(STATS, [role, identity, counters])


def encode_bye(reason: str) -> bytes:
    return _pack(BYE, reason)


def encode_skip(flow_keys: list) -> bytes:
    """``flow_keys``: the captured connections (``pk.flow_key_bytes``) whose packets, but for
    SYN, FIN and RST, the capture worker may drop in the kernel: the owner skips them anyway."""
    return _pack(SKIP, flow_keys)


def decode(frame: bytes):
    """(kind, body) of one frame; HELLO bodies come as ``Hello``, endpoint lists as tuples.

    Raises WireError for anything else: not msgpack, another format version, an unknown
    kind, a message over its kind's ``LIMITS``, or a body of the wrong shape.
    """
    declared = _declared_kind(frame)
    limits = LIMITS.get(declared, UNKNOWN)
    if len(frame) > limits.frame:
        raise WireError(_too_big(declared, len(frame), limits.frame))
    try:
        message = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=False,
                                  **_UNPACK_ARGS.get(declared, _UNKNOWN_ARGS))
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise _unpack_error(declared, exc) from None
    if not isinstance(message, list) or len(message) != 3:
        raise WireError("not a tcpcopy message (expected [version, kind, body]); "
                        "is something else connected to this port?")
    version, kind, body = message
    if version != FORMAT_VERSION:
        raise _other_version(version)
    checker = _CHECKS.get(kind) if isinstance(kind, int) else None
    if checker is None:
        raise WireError(f"unknown message kind {_SHOW.repr(kind)} (format {FORMAT_VERSION})")
    try:
        return kind, checker(body)
    except (TypeError, ValueError) as exc:
        raise WireError(f"malformed {KIND_NAMES[kind]} message: {exc}") from None


def _declared_kind(frame) -> int | None:
    """The kind a frame declares in its first three bytes (a fixarray of 3, the format
    version and the kind as small integers), or None; another version is refused here,
    before its body is unpacked under limits that are not its own."""
    if len(frame) < 3 or frame[0] != 0x93 or frame[1] >= 0x80:
        return None
    if frame[1] != FORMAT_VERSION:
        raise _other_version(frame[1])
    return frame[2] if frame[2] < 0x80 else None


def _unpack_error(kind: int | None, exc: Exception) -> WireError:
    detail = f"{type(exc).__name__}: {printable(str(exc))}"
    if kind in KIND_NAMES and not isinstance(exc, msgpack.ExtraData):
        return WireError(f"malformed {KIND_NAMES[kind]} message ({detail})")
    return WireError(f"not a tcpcopy message ({detail}); is something else connected to this port?")


def _other_version(version) -> WireError:
    return WireError(f"peer speaks message format {_SHOW.repr(version)}, this process speaks "
                     f"{FORMAT_VERSION}: run the same tcpcopy version on every host")


def _too_big(kind: int | None, size: int, limit: int) -> str:
    if kind in KIND_NAMES:
        return (f"a {KIND_NAMES[kind]} message of {size} bytes is over its limit of {limit} bytes "
                "(is the peer a tcpcopy of this version?)")
    return (f"not a tcpcopy message ({size} bytes that declare no known message kind); "
            "is something else connected to this port?")


def _hello(body) -> Hello:
    if not isinstance(body, list):
        raise ValueError("hello is not a list")
    role, identity, instance = body
    if role not in ROLES or not isinstance(identity, str) or not isinstance(instance, str):
        raise ValueError(f"bad hello {_SHOW.repr(body)}")
    return Hello(role, identity, instance)


def _packets(body) -> list:
    if not isinstance(body, list):
        raise ValueError("batch is not a list")
    for item in body:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)
                and isinstance(item[0], (int, float)) and not isinstance(item[0], bool)):
            raise ValueError("batch item is not [timestamp, bytes]")
    return body


def _endpoints(body) -> list:
    if not isinstance(body, list):
        raise ValueError("endpoint list is not a list")
    out = []
    for item in body:
        client_ip, client_port, target_ip, target_port = item
        if not (isinstance(client_ip, bytes) and isinstance(target_ip, bytes)
                and len(client_ip) in (4, 16) and len(target_ip) == len(client_ip)
                and isinstance(client_port, int) and isinstance(target_port, int)
                and 0 <= client_port < 65536 and 0 <= target_port < 65536):
            raise ValueError(f"bad endpoint {_SHOW.repr(item)}")
        out.append((client_ip, client_port, target_ip, target_port))
    return out


def _responses(body) -> list:
    if not isinstance(body, list) or not all(isinstance(h, bytes) for h in body):
        raise ValueError("responses are not a list of bytes")
    return body


def _number(body) -> float:
    if not isinstance(body, (int, float)):
        raise ValueError("not a number")
    return float(body)


def _stats(body) -> list:
    if not isinstance(body, list):
        raise ValueError("stats are not a list")
    role, identity, counters = body
    if role not in ROLES or not isinstance(identity, str) or not isinstance(counters, dict):
        raise ValueError("bad stats")
    return [role, identity, counters]


def _flow_keys(body) -> list:
    if not isinstance(body, list) or not all(isinstance(k, bytes) and len(k) in FLOW_KEY_BYTES
                                             for k in body):
        raise ValueError("flow keys are not a list of 12- or 36-byte keys")
    return body


def _text(body) -> str:
    if not isinstance(body, str):
        raise ValueError("not text")
    return body


_CHECKS = {HELLO: _hello, PACKETS: _packets, REGISTER: _endpoints, UNREGISTER: _endpoints,
           RESPONSES: _responses, HEARTBEAT: _number, STATS: _stats, BYE: _text,
           SKIP: _flow_keys, HANDOVER: _endpoints, WATCH: _endpoints, ANSWERS: _responses,
           ONLINE_ANSWERS: _packets}
