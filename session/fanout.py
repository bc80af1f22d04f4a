"""From a captured client flow to the replayed connections it becomes (pure).

For the first packet of a flow the owner asks ``Fanout.endpoints``: which ``-x`` mapping
applies (none: the packet is not ours), whether ``-r`` samples the session in, which client
address it is sent from (``-c`` pool, pinned per original client address; ``-H`` for
loopback sources) and which client port each of the ``-n`` copies uses (shifted by ``-f``).
A compared session (``--compare``) also goes to the mapping's ``--baseline`` server, if any,
as one more copy: its own client port, the next copy's.

Sampling hashes the original client endpoint, so every packet of a session and all of its
copies get the same decision (TCPCopy's sum of address and port is not uniform).
"""

from __future__ import annotations

import ipaddress
import zlib
from collections import OrderedDict
from dataclasses import dataclass

from tcpcopy.capture import packet as pk
from tcpcopy.cluster.options import Mapping
from tcpcopy.cluster.shard import compare_sampled
from tcpcopy.session.engine import Endpoint

PORT_FLOOR = 1024
PORT_SPAN = 65536 - PORT_FLOOR
COPY_STRIDE = 4099      # port distance between copies; prime, so copies spread over the range
OFFSET_STRIDE = 2048    # port distance between -f instances (TCPCopy's 2048-port bands)
MAX_PINNED_CLIENTS = 1 << 20
LOOPBACK4 = ipaddress.ip_address("127.0.0.1").packed


@dataclass(frozen=True, slots=True)
class FanoutOptions:
    mappings: tuple[Mapping, ...]
    client_pool: tuple[str, ...] = ()
    copies: int = 1                 # -n
    port_offset: int = 0            # -f
    sample_percent: int = 100       # -r
    localhost_ip: str | None = None  # -H
    ramp: bool = False              # -g: admit 1% more of the sessions each second, up to -r
    baselines: tuple[Mapping, ...] = ()   # --baseline: compared sessions are replayed there too
    compare_percent: int = 0        # --compare: the share of sessions compared


def sampled_in(client_ip: bytes, client_port: int, percent: int) -> bool:
    """The -r decision for one client endpoint: a stable hash, uniform over 0..99."""
    if percent >= 100:
        return True
    key = zlib.crc32(client_ip + client_port.to_bytes(2, "big"))
    return key % 100 < percent


def copy_port(port: int, copy: int, offset: int) -> int:
    """The client port of copy ``copy`` of a session from ``port``; copy 0 of instance
    ``-f 0`` keeps the captured port."""
    shift = offset * OFFSET_STRIDE + copy * COPY_STRIDE
    if shift == 0:
        return port
    base = port - PORT_FLOOR if port >= PORT_FLOOR else port
    return PORT_FLOOR + (base + shift) % PORT_SPAN


class Fanout:
    def __init__(self, options: FanoutOptions):
        self.options = options
        self._targets: dict[tuple, tuple[bytes, int]] = {}
        for m in options.mappings:
            online = None if m.online_ip is None else ipaddress.ip_address(m.online_ip).packed
            self._targets[(online, m.online_port)] = (ipaddress.ip_address(m.target_ip).packed, m.target_port)
        self._baselines: dict[tuple, tuple[bytes, int]] = {}
        if options.compare_percent:
            for m in options.baselines:
                online = None if m.online_ip is None else ipaddress.ip_address(m.online_ip).packed
                self._baselines[(online, m.online_port)] = (ipaddress.ip_address(m.target_ip).packed, m.target_port)
        self._pools: dict[int, list[bytes]] = {4: [], 16: []}
        for address in options.client_pool:
            packed = ipaddress.ip_address(address).packed
            self._pools[len(packed)].append(packed)
        self._pinned: OrderedDict[bytes, bytes] = OrderedDict()
        self._next_pool_index = {4: 0, 16: 0}
        self._localhost = None if options.localhost_ip is None else ipaddress.ip_address(options.localhost_ip).packed
        self.sampled_out = 0        # decisions (a left-out flow is asked again for each packet)
        self._ramp_start: float | None = None
        self.unmapped = 0
        self.family_mismatch = 0   # client and target of different IP versions, no -c to bridge

    def target_of(self, pkt: pk.Packet) -> tuple[bytes, int] | None:
        return self._targets.get((pkt.dst, pkt.dport)) or self._targets.get((None, pkt.dport))

    def sample_percent(self, now: float) -> int:
        """-r, or under -g the ramp: 1% in the first second after the first new flow, one
        more each second, up to -r. A flow left out may be admitted later, mid-stream."""
        if not self.options.ramp:
            return self.options.sample_percent
        if self._ramp_start is None:
            self._ramp_start = now
        return min(self.options.sample_percent, 1 + int(now - self._ramp_start))

    def endpoints(self, pkt: pk.Packet, now: float = 0.0) -> list[Endpoint]:
        """The replayed endpoints of a new flow, one per copy; [] if it is not copied."""
        target = self.target_of(pkt)
        if target is None:
            self.unmapped += 1
            return []
        if not sampled_in(pkt.src, pkt.sport, self.sample_percent(now)):
            self.sampled_out += 1
            return []
        target_ip, target_port = target
        client_ip = self._client_address(pkt.src, len(target_ip))
        if client_ip is None:
            self.family_mismatch += 1
            return []
        copies = self.options.copies
        endpoints = [Endpoint(client_ip, copy_port(pkt.sport, i, self.options.port_offset), target_ip, target_port)
                     for i in range(copies)]
        baseline = self._baseline_of(pkt)
        if baseline is not None:
            endpoints.append(Endpoint(client_ip, copy_port(pkt.sport, copies, self.options.port_offset), *baseline))
        return endpoints

    def _baseline_of(self, pkt: pk.Packet) -> tuple[bytes, int] | None:
        """The --baseline server of a compared session (by the rule the comparison samples by)."""
        if not self._baselines:
            return None
        baseline = self._baselines.get((pkt.dst, pkt.dport)) or self._baselines.get((None, pkt.dport))
        if baseline is None or not compare_sampled(pkt.src, pkt.sport, self.options.compare_percent):
            return None
        return baseline

    def _client_address(self, original: bytes, family_len: int) -> bytes | None:
        """The source address for a client, of the target's IP version; None when the
        client is of the other version and -c offers no address of the target's."""
        if original == LOOPBACK4 and self._localhost is not None and family_len == 4:
            return self._localhost
        pool = self._pools[family_len]
        if not pool:
            return original if len(original) == family_len else None
        pinned = self._pinned.get(original)
        if pinned is None or len(pinned) != family_len:
            pinned = pool[self._next_pool_index[family_len] % len(pool)]
            self._next_pool_index[family_len] += 1
            self._pinned[original] = pinned
            if len(self._pinned) > MAX_PINNED_CLIENTS:
                self._pinned.popitem(last=False)
        else:
            self._pinned.move_to_end(original)
        return pinned
