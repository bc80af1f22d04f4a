"""Every message that crosses a process boundary, defined once.

Each message is one ZeroMQ frame holding a msgpack array ``[FORMAT_VERSION, kind, body]``.
``decode`` checks the version first, so a peer built from another version of this module is
told so by name instead of misreading bytes. Bodies are plain msgpack values (lists, ints,
bytes, str) so encoding stays cheap on the per-packet paths (PACKETS, RESPONSES).

Channels:

- capture worker --PUSH--> session owner: PACKETS (batches of captured client packets);
- session owner --DEALER--> intercept (ROUTER): HELLO, REGISTER, UNREGISTER, BYE;
- intercept --ROUTER--> session owner: HELLO, RESPONSES, HEARTBEAT;
- every process --PUB--> aggregator: STATS.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgpack

FORMAT_VERSION = 1

HELLO = 1
PACKETS = 2
REGISTER = 3
UNREGISTER = 4
RESPONSES = 5
HEARTBEAT = 6
STATS = 7
BYE = 8

KIND_NAMES = {HELLO: "HELLO", PACKETS: "PACKETS", REGISTER: "REGISTER",
              UNREGISTER: "UNREGISTER", RESPONSES: "RESPONSES", HEARTBEAT: "HEARTBEAT",
              STATS: "STATS", BYE: "BYE"}

ROLES = ("capture", "owner", "intercept", "cluster")


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


def encode_responses(headers: list) -> bytes:
    """``headers``: IP+TCP header bytes of target packets (payload cut or truncated)."""
    return _pack(RESPONSES, headers)


def encode_heartbeat(sent_at: float) -> bytes:
    return _pack(HEARTBEAT, sent_at)


def encode_stats(role: str, identity: str, counters: dict) -> bytes:
    return _pack(STATS, [role, identity, counters])


def encode_bye(reason: str) -> bytes:
    return _pack(BYE, reason)


def decode(frame: bytes):
    """(kind, body) of one frame; HELLO bodies come as ``Hello``, endpoint lists as tuples.

    Raises WireError for anything else: not msgpack, another format version, an unknown
    kind, or a body of the wrong shape.
    """
    try:
        message = msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError(f"not a tcpcopy message ({type(exc).__name__}: {exc}); "
                        "is something else connected to this port?") from None
    if not isinstance(message, list) or len(message) != 3:
        raise WireError("not a tcpcopy message (expected [version, kind, body]); "
                        "is something else connected to this port?")
    version, kind, body = message
    if version != FORMAT_VERSION:
        raise WireError(f"peer speaks message format {version!r}, this process speaks "
                        f"{FORMAT_VERSION}: run the same tcpcopy version on every host")
    checker = _CHECKS.get(kind) if isinstance(kind, int) else None
    if checker is None:
        raise WireError(f"unknown message kind {kind!r} (format {FORMAT_VERSION})")
    try:
        return kind, checker(body)
    except (TypeError, ValueError) as exc:
        raise WireError(f"malformed {KIND_NAMES[kind]} message: {exc}") from None


def _hello(body) -> Hello:
    role, identity, instance = body
    if role not in ROLES or not isinstance(identity, str) or not isinstance(instance, str):
        raise ValueError(f"bad hello {body!r}")
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
            raise ValueError(f"bad endpoint {item!r}")
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
    role, identity, counters = body
    if role not in ROLES or not isinstance(identity, str) or not isinstance(counters, dict):
        raise ValueError("bad stats")
    return [role, identity, counters]


def _text(body) -> str:
    if not isinstance(body, str):
        raise ValueError("not text")
    return body


_CHECKS = {HELLO: _hello, PACKETS: _packets, REGISTER: _endpoints, UNREGISTER: _endpoints,
           RESPONSES: _responses, HEARTBEAT: _number, STATS: _stats, BYE: _text}
