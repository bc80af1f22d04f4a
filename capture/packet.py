"""IPv4/IPv6 + TCP packet codec: decode, in-place rewrite, build, split.

This module is on the per-packet hot path of every role, so it is plain stdlib:
precompiled ``struct.Struct`` objects over the buffer, ``__slots__``, no per-packet dict.

Checksums
---------
The Internet checksum is a ones' complement sum of 16-bit words, and ones' complement
addition is addition modulo 0xffff. Since 2**16 == 1 (mod 0xffff), the sum of the
big-endian words of an even-length byte string is ``int.from_bytes(data, "big") % 0xffff``;
a string that ends on an odd position is padded with a zero byte, i.e. its integer is
multiplied by 256. That gives both the full computation (``_sum16``) and the incremental
update of RFC 1624, eqn. 3, HC' = ~(~HC + ~m + m'), which in modular form reads

    HC' = (HC + m - m') mod 0xffff

where m and m' are the old and new values of the changed bytes, each weighted by its
position: a byte at an even offset is the high byte of its word (weight 256), a byte at an
odd offset the low byte (weight 1). ``_weight`` gives the factor for a field from the parity
of its end, so a field at any alignment (a TCP timestamp after a single NOP) updates
correctly, and the payload is never summed again. The result lies in [0, 0xfffe], the same
value a full computation gives: the sum of data that is not all zeros is never +0, so the
checksum is never 0xffff (RFC 1624 section 3).

Offsets of the IP header (0) and of the TCP header (a multiple of 4 for IPv4, 40 plus a
multiple of 8 for IPv6) are even, so parity within ``buf`` is parity within each checksummed
region.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "PacketError",
    "Packet",
    "FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR",
    "LINKTYPE_ETHERNET", "LINKTYPE_RAW", "LINKTYPE_LINUX_SLL", "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_IPV4", "LINKTYPE_IPV6",
    "ip_offset", "decode", "decode_frame", "route_head", "RouteKey", "build", "split",
    "opt_mss", "opt_wscale", "opt_sack_permitted", "opt_timestamps",
    "tcp_checksum_ok", "ipv4_checksum_ok", "flags_text",
    "repair_checksums", "CHECKSUM_COMPLETE", "CHECKSUM_COMPLETED",
]


class PacketError(ValueError):
    """Malformed or unsupported input: truncated headers, bad header lengths, lengths beyond
    the buffer, not IP, not TCP, IPv4 fragments other than a whole packet. The message names
    the fault. Callers count and drop."""


# Module constants are Final: mypyc (setup.py) inlines them, or keeps them in C variables.
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
PSH: Final = 0x08
ACK: Final = 0x10
URG: Final = 0x20
ECE: Final = 0x40
CWR: Final = 0x80

LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW: Final = 101
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_LINUX_SLL2: Final = 276
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
# DLT_RAW is 12 on most BSDs and 14 on OpenBSD; both carry raw IP like LINKTYPE_RAW.
_RAW_LINKTYPES: Final = frozenset((LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6))

_ETHERTYPE_IPV4: Final = 0x0800
_ETHERTYPE_IPV6: Final = 0x86DD
_ETHERTYPE_VLAN: Final = 0x8100   # 802.1Q
_ETHERTYPE_QINQ: Final = 0x88A8   # 802.1ad
_IP_ETHERTYPES: Final = frozenset((_ETHERTYPE_IPV4, _ETHERTYPE_IPV6))
_VLAN_ETHERTYPES: Final = frozenset((_ETHERTYPE_VLAN, _ETHERTYPE_QINQ))

_PROTO_TCP: Final = 6
# IPv6 extension headers walked on the way to TCP (RFC 8200 section 4).
_EXT_HOP_BY_HOP: Final = 0
_EXT_ROUTING: Final = 43
_EXT_FRAGMENT: Final = 44
_EXT_DEST_OPTS: Final = 60
_WALKED_EXT: Final = frozenset((_EXT_HOP_BY_HOP, _EXT_ROUTING, _EXT_FRAGMENT, _EXT_DEST_OPTS))

_IPV4_MF: Final = 0x2000
_IPV4_DF: Final = 0x4000
_IPV4_FRAG_MASK: Final = 0x3FFF   # MF flag and the 13-bit fragment offset

_OPT_EOL: Final = 0
_OPT_NOP: Final = 1
_OPT_MSS: Final = 2
_OPT_WSCALE: Final = 3
_OPT_SACK_PERM: Final = 4
_OPT_SACK: Final = 5
_OPT_TS: Final = 8
_NOP_NOP_TS: Final = 0x0101080A   # the usual 12-byte option block of an established connection

_MASK32: Final = 0xFFFFFFFF
_MASK16: Final = 0xFFFF

_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")
_U32X2: Final = struct.Struct("!II")
_PORTS: Final = struct.Struct("!HH")
# version/ihl, tos, total length, id, flags/fragment, ttl, protocol, checksum, src, dst
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
# version/class/flow, payload length, next header, hop limit, src, dst
_IPV6: Final = struct.Struct("!IHBB16s16s")
# sport, dport, seq, ack, data offset, flags, window, checksum, urgent pointer
_TCP: Final = struct.Struct("!HHIIBBHHH")
_TCP_HEAD: Final = struct.Struct("!HHIIBB")    # the same up to the flags
# How far into an IPv6 answer route_head reads for extension headers (TCP must start there).
_HEAD_EXTENSIONS: Final = 512
_PSEUDO4_TAIL: Final = struct.Struct("!BBH")   # zero, protocol, TCP length
_PSEUDO6_TAIL: Final = struct.Struct("!I3xB")  # TCP length, 3 zero bytes, next header
# Bound methods, looked up once for the setters.
_pack16: Final = _U16.pack_into
_pack32: Final = _U32.pack_into
_unpack16: Final = _U16.unpack_from
_from_bytes: Final = int.from_bytes

_IPV4_CSUM_OFF: Final = 10
_IPV4_LEN_OFF: Final = 2
_IPV4_ID_OFF: Final = 4
_IPV4_TTL_OFF: Final = 8
_IPV6_PLEN_OFF: Final = 4
_IPV6_HLIM_OFF: Final = 7
_TCP_SEQ_OFF: Final = 4
_TCP_ACK_OFF: Final = 8
_TCP_FLAGS_OFF: Final = 13
_TCP_WINDOW_OFF: Final = 14
_TCP_CSUM_OFF: Final = 16


# ---------------------------------------------------------------- checksum arithmetic

def _sum16(data) -> int:
    """Ones' complement sum of ``data`` as 16-bit big-endian words, modulo 0xffff."""
    value = int.from_bytes(data, "big")
    if len(data) & 1:
        value <<= 8   # zero pad byte at the end
    return value % 0xFFFF


def _weight(end: int) -> int:
    """Factor that puts the integer of bytes ending (exclusive) at ``end`` into word
    positions: 1 when the field ends on a word boundary, 256 when it ends mid-word."""
    return 256 if end & 1 else 1


def _adjust(buf: bytearray, csum_off: int, delta: int) -> None:
    """RFC 1624 eqn. 3 in modular form: HC' = (HC + m - m') mod 0xffff, delta = m - m'.
    The busiest setters inline this line."""
    _pack16(buf, csum_off, (_unpack16(buf, csum_off)[0] + delta) % 0xFFFF)


def _finish(total: int) -> int:
    """Checksum field value for a region whose ones' complement sum is ``total``."""
    return -total % 0xFFFF


# ---------------------------------------------------------------- link layer

def ip_offset(frame, linktype: int) -> int:
    """Offset of the IP header inside a captured frame.

    Ethernet (with at most one 802.1Q or 802.1ad tag), Linux cooked capture v1 (SLL,
    16 bytes) and v2 (SLL2, 20 bytes), raw IP (DLT_RAW 12/14/101, LINKTYPE_IPV4/IPV6).
    Raises PacketError for an unknown link type, a non-IP ethertype or protocol, or a frame
    too short for its link header.
    """
    n = len(frame)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            raise PacketError(f"short Ethernet frame: {n} bytes, need 14")
        ethertype = _U16.unpack_from(frame, 12)[0]
        offset = 14
        if ethertype in _VLAN_ETHERTYPES:
            if n < 18:
                raise PacketError(f"short 802.1Q frame: {n} bytes, need 18")
            ethertype = _U16.unpack_from(frame, 16)[0]
            offset = 18
            if ethertype in _VLAN_ETHERTYPES:
                raise PacketError("stacked VLAN tags are not supported")
        if ethertype not in _IP_ETHERTYPES:
            raise PacketError(f"not IP: ethertype 0x{ethertype:04x}")
        return offset
    if linktype in _RAW_LINKTYPES:
        if n < 1:
            raise PacketError("empty raw IP frame")
        version = frame[0] >> 4
        if version != 4 and version != 6:
            raise PacketError(f"not IP: raw frame with IP version {version}")
        return 0
    if linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            raise PacketError(f"short Linux cooked (SLL) frame: {n} bytes, need 16")
        protocol = _U16.unpack_from(frame, 14)[0]
        offset = 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            raise PacketError(f"short Linux cooked v2 (SLL2) frame: {n} bytes, need 20")
        protocol = _U16.unpack_from(frame, 0)[0]
        offset = 20
    else:
        raise PacketError(f"unsupported link type {linktype}")
    if protocol not in _IP_ETHERTYPES:
        raise PacketError(f"not IP: cooked capture protocol 0x{protocol:04x}")
    return offset


# ---------------------------------------------------------------- decode

def decode(data, *, headers_only: bool = False) -> "Packet":
    """Decode an IPv4 or IPv6 packet carrying TCP; ``data`` starts at the IP header.

    The Packet owns a bytearray copy, trimmed to the IP total length (trailing Ethernet
    padding is dropped). IPv4 options are allowed; IPv4 fragments (MF set or offset != 0)
    are rejected. IPv6 hop-by-hop, routing (segments left 0), destination options and atomic
    fragment headers (RFC 8200 section 4.5, offset 0 and M=0) are walked to TCP; any other
    next header is rejected.

    A packet whose IP length runs beyond the captured data is a PacketError unless
    ``headers_only``: then only the IP and TCP headers must be present (an intercept reports
    just the headers). ``payload_len`` always comes from the IP lengths.
    """
    return _parse(bytearray(data), headers_only)


def decode_frame(frame, linktype: int, *, headers_only: bool = False) -> "Packet":
    """Decode a captured link-layer frame: ``ip_offset`` then ``decode``."""
    offset = ip_offset(frame, linktype)
    if offset:
        return _parse(bytearray(memoryview(frame)[offset:]), headers_only)
    return _parse(bytearray(frame), headers_only)


def _parse(buf: bytearray, headers_only: bool) -> "Packet":
    """Decode the IP packet in ``buf``, which the returned Packet takes over."""
    n = len(buf)
    if n == 0:
        raise PacketError("empty packet")
    version = buf[0] >> 4
    pkt = Packet()
    if version == 4:
        tcp_off, total = _parse_ipv4(pkt, buf, n, headers_only)
    elif version == 6:
        tcp_off, total = _parse_ipv6(pkt, buf, n, headers_only)
    else:
        raise PacketError(f"not IP: version {version}")
    if total < n:
        del buf[total:]
        n = total
    _parse_tcp(pkt, buf, n, tcp_off, total)
    pkt.buf = buf
    pkt.version = version
    return pkt


def _parse_ipv4(pkt: "Packet", buf: bytearray, n: int, headers_only: bool):
    if n < 20:
        raise PacketError(f"truncated IPv4 header: {n} bytes, need 20")
    vihl, _tos, total, ip_id, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(buf, 0)
    ihl = (vihl & 0x0F) << 2
    _check_ipv4(ihl, total, frag, proto, n, headers_only)
    pkt.src = src
    pkt.dst = dst
    pkt.ip_id = ip_id
    pkt.ttl = ttl
    return ihl, total


def _check_ipv4(ihl: int, total: int, frag: int, proto: int, n: int, headers_only: bool) -> None:
    """An IPv4 header that a TCP segment can be read from (``n`` bytes captured)."""
    if ihl < 20:
        raise PacketError(f"bad IPv4 header length {ihl} (< 20)")
    if ihl > n:
        raise PacketError(f"truncated IPv4 options: header length {ihl}, {n} bytes captured")
    if total < ihl:
        raise PacketError(f"IPv4 total length {total} shorter than its header ({ihl})")
    if frag & _IPV4_FRAG_MASK:
        raise PacketError(f"IPv4 fragment (offset {(frag & 0x1FFF) * 8}, "
                          f"MF={1 if frag & _IPV4_MF else 0})")
    if proto != _PROTO_TCP:
        raise PacketError(f"not TCP: IPv4 protocol {proto}")
    if total > n and not headers_only:
        raise PacketError(f"IPv4 total length {total} beyond the {n} bytes captured")


def _parse_ipv6(pkt: "Packet", buf: bytearray, n: int, headers_only: bool):
    if n < 40:
        raise PacketError(f"truncated IPv6 header: {n} bytes, need 40")
    _vtf, plen, nxt, hlim, src, dst = _IPV6.unpack_from(buf, 0)
    total = 40 + plen
    if total > n and not headers_only:
        raise PacketError(f"IPv6 payload length {plen} beyond the {n - 40} bytes captured")
    tcp_off = 40
    if nxt != _PROTO_TCP:
        tcp_off, nxt = _walk_ipv6_extensions(buf, min(n, total), nxt)
    pkt.src = src
    pkt.dst = dst
    pkt.ip_id = 0
    pkt.ttl = hlim
    return tcp_off, total


def _walk_ipv6_extensions(buf: bytearray, end: int, nxt: int):
    """Follow the extension header chain (RFC 8200 section 4) to TCP; ``end`` is the end
    of the IP packet as far as it is present. Returns (TCP offset, next header)."""
    off = 40
    while nxt != _PROTO_TCP:
        if nxt not in _WALKED_EXT:
            raise PacketError(f"not TCP: IPv6 next header {nxt}")
        if nxt == _EXT_HOP_BY_HOP and off != 40:
            raise PacketError("IPv6 hop-by-hop header not first (RFC 8200 section 4.3)")
        if off + 8 > end:
            raise PacketError(f"truncated IPv6 extension header {nxt} at offset {off}")
        following = buf[off]
        if nxt == _EXT_FRAGMENT:
            frag = _U16.unpack_from(buf, off + 2)[0]
            if frag & 0xFFF9:   # 13-bit offset and the M flag; 2 reserved bits ignored
                raise PacketError(f"IPv6 fragment (offset {(frag >> 3) * 8}, M={frag & 1})")
            length = 8
        else:
            length = (buf[off + 1] + 1) << 3
            if off + length > end:
                raise PacketError(f"IPv6 extension header {nxt} at offset {off} "
                                  f"({length} bytes) beyond the packet")
            if nxt == _EXT_ROUTING and buf[off + 3]:
                # The pseudo-header destination is the final one (RFC 8200 section 8.1);
                # with segments left it is not in the IPv6 header yet.
                raise PacketError(f"IPv6 routing header with {buf[off + 3]} segments left")
        off += length
        nxt = following
    return off, nxt


def _parse_tcp(pkt: "Packet", buf: bytearray, n: int, tcp_off: int, total: int) -> None:
    if tcp_off + 20 > total:
        raise PacketError(f"IP length {total} leaves no room for a TCP header at {tcp_off}")
    if tcp_off + 20 > n:
        raise PacketError(f"truncated TCP header: {n - tcp_off} bytes, need 20")
    sport, dport, seq, ack, doff_byte, flags, window, _csum, _urg = _TCP.unpack_from(buf, tcp_off)
    doff = (doff_byte >> 4) << 2
    payload_off = tcp_off + doff
    _check_tcp_header(doff, payload_off, n, tcp_off, total)
    pkt.tcp_off = tcp_off
    pkt.payload_off = payload_off
    pkt.payload_len = total - payload_off
    pkt.sport = sport
    pkt.dport = dport
    pkt.seq = seq
    pkt.ack = ack
    pkt.flags = flags
    pkt.window = window
    pkt.mss = pkt.wscale = pkt.tsval = pkt.tsecr = pkt.ts_off = None
    pkt.sack_permitted = False
    pkt.sack_blocks = ()
    if doff == 20:
        return
    opt = tcp_off + 20
    if doff == 32 and _U32.unpack_from(buf, opt)[0] == _NOP_NOP_TS:
        pkt.tsval, pkt.tsecr = _U32X2.unpack_from(buf, opt + 4)
        pkt.ts_off = opt + 4
        return
    _parse_options(pkt, buf, opt, payload_off)


def _check_tcp_header(doff: int, payload_off: int, n: int, tcp_off: int, total: int) -> None:
    """A TCP header of ``doff`` bytes at ``tcp_off`` within the IP length and the capture."""
    if doff < 20:
        raise PacketError(f"bad TCP data offset {doff} (< 20)")
    if payload_off > total:
        raise PacketError(f"TCP header length {doff} beyond the IP length {total}")
    if payload_off > n:
        raise PacketError(f"truncated TCP options: header length {doff}, "
                          f"{n - tcp_off} bytes captured")


RouteKey = tuple[bytes, int, bytes, int]


def route_head(frame, linktype: int, payload: int) -> tuple[RouteKey, bytes, int, int]:
    """What intercept needs to route a captured answer, without making a Packet.

    Returns ((dst, dport, src, sport), record, flags, payload_len): the route's key (the
    replayed client first), the record (the IP and TCP headers and at most ``payload``
    payload bytes, as far as the IP length and the capture reach), the TCP flags and the
    payload length from the IP lengths. The IP and TCP headers are checked as ``decode``
    checks them with ``headers_only``; TCP options are not read (the owner decodes the
    record whole). Raises PacketError.
    """
    offset = ip_offset(frame, linktype)
    n = len(frame) - offset
    if n < 1:
        raise PacketError("empty packet")
    version = frame[offset] >> 4
    if version == 4:
        if n < 20:
            raise PacketError(f"truncated IPv4 header: {n} bytes, need 20")
        vihl, _tos, total, _id, frag, _ttl, proto, _csum, src, dst = _IPV4.unpack_from(frame, offset)
        tcp_off = (vihl & 0x0F) << 2
        _check_ipv4(tcp_off, total, frag, proto, n, True)
    elif version == 6:
        ip = bytearray(memoryview(frame)[offset:offset + 40 + _HEAD_EXTENSIONS])
        probe = Packet()
        tcp_off, total = _parse_ipv6(probe, ip, len(ip), True)
        src, dst = probe.src, probe.dst
    else:
        raise PacketError(f"not IP: version {version}")
    end = min(n, total)
    if tcp_off + 20 > total:
        raise PacketError(f"IP length {total} leaves no room for a TCP header at {tcp_off}")
    if tcp_off + 20 > n:
        raise PacketError(f"truncated TCP header: {n - tcp_off} bytes, need 20")
    sport, dport, _seq, _ack, doff_byte, flags = _TCP_HEAD.unpack_from(frame, offset + tcp_off)
    doff = (doff_byte >> 4) << 2
    payload_off = tcp_off + doff
    _check_tcp_header(doff, payload_off, n, tcp_off, total)
    record = bytes(frame[offset:offset + min(end, payload_off + payload)])
    return (dst, dport, src, sport), record, flags, total - payload_off


def _parse_options(pkt: "Packet", buf: bytearray, i: int, end: int) -> None:
    """TCP options (RFC 9293 section 3.1): EOL ends the list, NOP is one byte, every other
    kind carries a length >= 2 that stays within the header. A known kind with a length
    other than its own is skipped, as Linux does; a length that breaks the list is an error.
    """
    while i < end:
        kind = buf[i]
        if kind == _OPT_EOL:
            return
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 2 > end:
            raise PacketError(f"TCP option {kind} has no length byte")
        length = buf[i + 1]
        if length < 2 or i + length > end:
            raise PacketError(f"bad TCP option length {length} for kind {kind} "
                              f"({end - i} bytes of options left)")
        if kind == _OPT_TS and length == 10:
            pkt.tsval, pkt.tsecr = _U32X2.unpack_from(buf, i + 2)
            pkt.ts_off = i + 2
        elif kind == _OPT_MSS and length == 4:
            pkt.mss = _U16.unpack_from(buf, i + 2)[0]
        elif kind == _OPT_WSCALE and length == 3:
            pkt.wscale = buf[i + 2]
        elif kind == _OPT_SACK_PERM and length == 2:
            pkt.sack_permitted = True
        elif kind == _OPT_SACK and length >= 10 and (length - 2) & 7 == 0:
            pkt.sack_blocks += tuple(_U32X2.iter_unpack(buf[i + 2:i + length]))
        i += length


def _option_spans(buf: bytearray, i: int, end: int):
    """(offset, kind, length) of each option with a length byte; the list is known valid."""
    while i < end:
        kind = buf[i]
        if kind == _OPT_EOL:
            return
        if kind == _OPT_NOP:
            i += 1
            continue
        length = buf[i + 1]
        yield i, kind, length
        i += length


def raw_flow_key(ip) -> tuple[bytes, int] | None:
    """(flow key, TCP flags) read straight from raw IP bytes, without a decode, for a quick
    look-up of the connection a packet belongs to. The key is the source and destination
    addresses and then the two ports, as bytes (``flow_key_bytes`` makes the same key from
    a decoded packet's fields). None unless the packet is plain enough to read so (IPv4,
    or IPv6 with TCP right after the fixed header); such a packet takes a full decode."""
    n = len(ip)
    if n < 34:
        return None
    first = ip[0]
    if first >> 4 == 4:
        tcp = (first & 0x0F) << 2
        if n < tcp + 14 or ip[9] != _PROTO_TCP:
            return None
        return ip[12:20] + ip[tcp:tcp + 4], ip[tcp + 13]
    if first >> 4 == 6 and n >= 54 and ip[6] == _PROTO_TCP:
        return ip[8:44], ip[53]
    return None


def flow_key_bytes(src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
    """The key ``raw_flow_key`` reads, from decoded fields."""
    return src + dst + _PORTS.pack(sport, dport)


# ---------------------------------------------------------------- the packet

class Packet:
    """One decoded IPv4/IPv6 TCP packet over its own bytearray.

    The attributes mirror the header fields; change them only through the ``set_*``
    methods, which rewrite ``buf`` in place and keep the checksums right by RFC 1624
    incremental update. Create packets with ``decode``, ``decode_frame`` or ``build``.
    """

    __slots__ = (
        "buf", "version", "tcp_off", "payload_off", "payload_len",
        "src", "dst", "sport", "dport", "seq", "ack", "flags", "window",
        "ip_id", "ttl",
        "mss", "wscale", "sack_permitted", "tsval", "tsecr", "ts_off", "sack_blocks",
    )
    # The types of the slots, for readers and for an ahead-of-time compiler (mypyc), which
    # stores the int fields unboxed.
    buf: bytearray
    version: int
    tcp_off: int
    payload_off: int
    payload_len: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    ip_id: int
    ttl: int
    mss: int | None
    wscale: int | None
    sack_permitted: bool
    tsval: int | None
    tsecr: int | None
    ts_off: int | None
    sack_blocks: tuple[tuple[int, int], ...]

    def __repr__(self) -> str:
        return (f"<Packet v{self.version} {_addr_text(self.src)}:{self.sport} > "
                f"{_addr_text(self.dst)}:{self.dport} [{flags_text(self.flags)}] "
                f"seq={self.seq} ack={self.ack} win={self.window} len={self.payload_len}>")

    # -- derived

    @property
    def payload(self) -> bytes:
        """The TCP payload; for a headers_only packet, whatever part of it is present."""
        start = self.payload_off
        return bytes(self.buf[start:start + self.payload_len])

    @property
    def seg_len(self) -> int:
        """Sequence space the segment consumes: data, plus one each for SYN and FIN."""
        flags = self.flags
        return self.payload_len + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)

    def to_bytes(self) -> bytes:
        return bytes(self.buf)

    def copy(self) -> "Packet":
        other = Packet()
        other.buf = bytearray(self.buf)
        other.version = self.version
        other.tcp_off = self.tcp_off
        other.payload_off = self.payload_off
        other.payload_len = self.payload_len
        other.src = self.src
        other.dst = self.dst
        other.sport = self.sport
        other.dport = self.dport
        other.seq = self.seq
        other.ack = self.ack
        other.flags = self.flags
        other.window = self.window
        other.ip_id = self.ip_id
        other.ttl = self.ttl
        other.mss = self.mss
        other.wscale = self.wscale
        other.sack_permitted = self.sack_permitted
        other.tsval = self.tsval
        other.tsecr = self.tsecr
        other.ts_off = self.ts_off
        other.sack_blocks = self.sack_blocks
        return other

    # -- in-place rewrites (RFC 1624)

    def set_src(self, addr: bytes) -> None:
        self._set_address(12 if self.version == 4 else 8, self.src, addr)
        self.src = addr if type(addr) is bytes else bytes(addr)

    def set_dst(self, addr: bytes) -> None:
        self._set_address(16 if self.version == 4 else 24, self.dst, addr)
        self.dst = addr if type(addr) is bytes else bytes(addr)

    def _set_address(self, off: int, old: bytes, new: bytes) -> None:
        """Addresses sit in the IPv4 header checksum and in the TCP pseudo-header, at word
        offsets in both."""
        if len(new) != len(old):
            raise PacketError(f"address of {len(new)} bytes for an IPv{self.version} packet")
        buf = self.buf
        buf[off:off + len(new)] = new
        delta = _from_bytes(old, "big") - _from_bytes(new, "big")
        csum_off = self.tcp_off + _TCP_CSUM_OFF
        _pack16(buf, csum_off, (_unpack16(buf, csum_off)[0] + delta) % 0xFFFF)
        if self.version == 4:
            _pack16(buf, _IPV4_CSUM_OFF, (_unpack16(buf, _IPV4_CSUM_OFF)[0] + delta) % 0xFFFF)

    def set_sport(self, port: int) -> None:
        self._set_tcp16(0, self.sport, port, "port")
        self.sport = port

    def set_dport(self, port: int) -> None:
        self._set_tcp16(2, self.dport, port, "port")
        self.dport = port

    def set_window(self, window: int) -> None:
        self._set_tcp16(_TCP_WINDOW_OFF, self.window, window, "window")
        self.window = window

    def _set_tcp16(self, field_off: int, old: int, new: int, what: str) -> None:
        if not 0 <= new <= _MASK16:
            raise ValueError(f"{what} {new!r} out of range 0..65535")
        buf = self.buf
        tcp_off = self.tcp_off
        _pack16(buf, tcp_off + field_off, new)
        csum_off = tcp_off + _TCP_CSUM_OFF
        _pack16(buf, csum_off, (_unpack16(buf, csum_off)[0] + old - new) % 0xFFFF)

    def set_seq(self, seq: int) -> None:
        """Sequence numbers are taken modulo 2**32 (RFC 9293 section 3.4)."""
        seq &= _MASK32
        self._set_tcp32(_TCP_SEQ_OFF, self.seq, seq)
        self.seq = seq

    def set_ack(self, ack: int) -> None:
        ack &= _MASK32
        self._set_tcp32(_TCP_ACK_OFF, self.ack, ack)
        self.ack = ack

    def _set_tcp32(self, field_off: int, old: int, new: int) -> None:
        """A 32-bit TCP field at an even offset: its value counts whole in the sum mod 0xffff."""
        buf = self.buf
        tcp_off = self.tcp_off
        _pack32(buf, tcp_off + field_off, new)
        csum_off = tcp_off + _TCP_CSUM_OFF
        _pack16(buf, csum_off, (_unpack16(buf, csum_off)[0] + old - new) % 0xFFFF)

    def set_flags(self, flags: int) -> None:
        """The eight flag bits CWR..FIN (byte 13, the low byte of its word)."""
        if not 0 <= flags <= 0xFF:
            raise ValueError(f"flags {flags!r} out of range 0..255")
        tcp_off = self.tcp_off
        self.buf[tcp_off + _TCP_FLAGS_OFF] = flags
        _adjust(self.buf, tcp_off + _TCP_CSUM_OFF, self.flags - flags)
        self.flags = flags

    def set_timestamps(self, tsval: int, tsecr: int) -> None:
        """Rewrite the TS option (RFC 7323 section 3); values are taken modulo 2**32.
        The option may start at any byte, so the change is weighted by its alignment."""
        ts_off, old_tsval, old_tsecr = self.ts_off, self.tsval, self.tsecr
        if ts_off is None or old_tsval is None or old_tsecr is None:
            raise ValueError("packet has no TCP timestamps option")
        tsval &= _MASK32
        tsecr &= _MASK32
        buf = self.buf
        _U32X2.pack_into(buf, ts_off, tsval, tsecr)
        delta = (old_tsval << 32 | old_tsecr) - (tsval << 32 | tsecr)
        if ts_off & 1:   # the option ends mid-word: see _weight
            delta <<= 8
        csum_off = self.tcp_off + _TCP_CSUM_OFF
        _pack16(buf, csum_off, (_unpack16(buf, csum_off)[0] + delta) % 0xFFFF)
        self.tsval = tsval
        self.tsecr = tsecr

    def blank_sack(self) -> None:
        """Overwrite every SACK option (kind 5, RFC 2018) with NOPs of the same length, so a
        replayed segment does not claim blocks the target never sent."""
        buf = self.buf
        tcp_off = self.tcp_off
        for start, kind, length in list(_option_spans(buf, tcp_off + 20, self.payload_off)):
            if kind != _OPT_SACK:
                continue
            end = start + length
            old = int.from_bytes(buf[start:end], "big")
            nops = b"\x01" * length
            buf[start:end] = nops
            delta = (old - int.from_bytes(nops, "big")) * _weight(end)
            _adjust(buf, tcp_off + _TCP_CSUM_OFF, delta)
        self.sack_blocks = ()

    def set_ip_id(self, ip_id: int) -> None:
        """IPv4 identification, modulo 2**16; IPv6 has none in its fixed header: no-op."""
        if self.version != 4:
            return
        ip_id &= _MASK16
        _U16.pack_into(self.buf, _IPV4_ID_OFF, ip_id)
        _adjust(self.buf, _IPV4_CSUM_OFF, self.ip_id - ip_id)
        self.ip_id = ip_id

    def set_ttl(self, ttl: int) -> None:
        """IPv4 TTL (byte 8, high byte of its word: weight 256) or IPv6 hop limit."""
        if not 0 <= ttl <= 0xFF:
            raise ValueError(f"ttl {ttl!r} out of range 0..255")
        self.buf[_IPV4_TTL_OFF if self.version == 4 else _IPV6_HLIM_OFF] = ttl
        if self.version == 4:
            _adjust(self.buf, _IPV4_CSUM_OFF, (self.ttl - ttl) * 256)
        self.ttl = ttl


if "__slots__" not in vars(Packet):
    # Compiled by mypyc (see setup.py), the class keeps its fields natively and loses the
    # tuple: it gets the field names back, so they list the same way compiled or not.
    setattr(Packet, "__slots__", getattr(Packet, "__mypyc_attrs__"))


def _addr_text(addr: bytes) -> str:
    import ipaddress   # only for repr, off the hot path
    return str(ipaddress.ip_address(addr))


def flags_text(flags: int) -> str:
    """Flags as letters in tcpdump order: 'S', 'S.', 'P.', 'F.', 'R', ..."""
    text = "".join(letter for bit, letter in ((SYN, "S"), (FIN, "F"), (PSH, "P"), (RST, "R"),
                                              (URG, "U"), (ECE, "E"), (CWR, "W")) if flags & bit)
    return text + "." if flags & ACK else text or "none"


# ---------------------------------------------------------------- options

def opt_mss(mss: int) -> bytes:
    return struct.pack("!BBH", _OPT_MSS, 4, mss)


def opt_wscale(shift: int) -> bytes:
    """NOP + window scale (RFC 7323 section 2): 4 bytes."""
    return struct.pack("!BBBB", _OPT_NOP, _OPT_WSCALE, 3, shift)


def opt_sack_permitted() -> bytes:
    """2 NOPs + SACK-permitted (RFC 2018): 4 bytes."""
    return bytes((_OPT_NOP, _OPT_NOP, _OPT_SACK_PERM, 2))


def opt_timestamps(tsval: int, tsecr: int) -> bytes:
    """NOP NOP + timestamps (RFC 7323 section 3, Appendix A layout): 12 bytes, TSval at
    offset 4 of the option block."""
    return struct.pack("!BBBBII", _OPT_NOP, _OPT_NOP, _OPT_TS, 10,
                       tsval & _MASK32, tsecr & _MASK32)


# ---------------------------------------------------------------- build, split, verify

def build(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
          window: int, *, options: bytes = b"", payload: bytes = b"", ip_id: int = 0,
          ttl: int = 64, df: bool = True) -> Packet:
    """A fresh IPv4 (4-byte addresses) or IPv6 (16-byte) TCP packet with correct checksums.

    ``options`` are padded with zeros (EOL) to a multiple of 4 (RFC 9293 section 3.1).
    ``ip_id`` and ``df`` apply to IPv4 only.
    """
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError(f"addresses must both be 4 or 16 bytes, got {len(src)} and {len(dst)}")
    options = bytes(options) + b"\x00" * (-len(options) % 4)
    doff = 20 + len(options)
    if doff > 60:
        raise ValueError(f"TCP options of {len(options)} bytes exceed 40")
    try:
        tcp = _TCP.pack(sport, dport, seq & _MASK32, ack & _MASK32, doff << 2, flags, window,
                        0, 0)
        if len(src) == 4:
            ip = _IPV4.pack(0x45, 0, 20 + doff + len(payload), ip_id & _MASK16,
                            _IPV4_DF if df else 0, ttl, _PROTO_TCP, 0, src, dst)
        else:
            ip = _IPV6.pack(0x60000000, doff + len(payload), _PROTO_TCP, ttl, src, dst)
    except struct.error as exc:
        raise ValueError(f"field out of range: {exc}") from None
    buf = bytearray(ip)
    buf += tcp
    buf += options
    buf += payload
    _fill_checksums(buf, len(ip))
    return _parse(buf, False)


def _fill_checksums(buf: bytearray, tcp_off: int) -> None:
    """Compute the IPv4 header checksum (if IPv4; its header ends at ``tcp_off``) and the
    TCP checksum from scratch."""
    buf[tcp_off + _TCP_CSUM_OFF:tcp_off + _TCP_CSUM_OFF + 2] = b"\x00\x00"
    if buf[0] >> 4 == 4:
        buf[_IPV4_CSUM_OFF:_IPV4_CSUM_OFF + 2] = b"\x00\x00"
        _U16.pack_into(buf, _IPV4_CSUM_OFF, _finish(_sum16(buf[:tcp_off])))
    total = _tcp_sum(buf, tcp_off)
    _U16.pack_into(buf, tcp_off + _TCP_CSUM_OFF, _finish(total))


def _tcp_sum(buf, tcp_off: int) -> int:
    """Ones' complement sum of the TCP pseudo-header and segment (RFC 9293 section 3.1;
    for IPv6 the upper-layer length is the TCP length, RFC 8200 section 8.1)."""
    return _pseudo_sum(buf, tcp_off) + _sum16(memoryview(buf)[tcp_off:])


def _pseudo_sum(buf, tcp_off: int) -> int:
    """Sum of the TCP pseudo-header of the packet in ``buf`` (its segment runs to the end)."""
    tcp_len = len(buf) - tcp_off
    if buf[0] >> 4 == 4:
        return _sum16(buf[12:20]) + _sum16(_PSEUDO4_TAIL.pack(0, _PROTO_TCP, tcp_len))
    return _sum16(buf[8:40]) + _sum16(_PSEUDO6_TAIL.pack(tcp_len, _PROTO_TCP))


def tcp_checksum_ok(pkt: Packet) -> bool:
    """Full verification of the TCP checksum. False when the payload is absent (a
    headers_only packet), since the segment cannot be summed."""
    if len(pkt.buf) < pkt.payload_off + pkt.payload_len:
        return False
    return _tcp_sum(pkt.buf, pkt.tcp_off) % 0xFFFF == 0


CHECKSUM_COMPLETE: Final = 0    # the captured TCP checksum was not a partial one: left as it was
CHECKSUM_COMPLETED: Final = 1   # it was partial (checksum offload, GRO) and is now complete


def repair_checksums(pkt: Packet) -> int:
    """Make a captured packet's TCP checksum complete before it is rewritten and sent.

    A frame captured on a host whose NIC or virtual link offloads checksums (veth,
    virtio-net, containers, local traffic) leaves the kernel with a *partial* TCP checksum:
    the field holds the folded pseudo-header sum, for the device to finish over the segment;
    GRO super-packets carry one too. An incremental update (RFC 1624) of a partial checksum
    stays wrong, so every captured segment that will be sent passes here first.

    The test is cheap: the pseudo-header sum comes from the header fields alone. A field
    that equals it is partial and is completed with one sum over the segment (a complete
    checksum that happens to equal it is left as it was: completing a valid checksum gives
    itself). Any other field is taken as complete without summing the segment: inbound
    packets that a NIC did not merge carry the checksum they had on the wire. One damaged
    on the way is dropped by the online server's stack, and the client sends it again; the
    engine replays that fresh copy in place of the damaged one (see
    ``Session._take_fresh_copy``), so verifying every segment would buy nothing.

    The IPv4 header checksum is left alone: it is never offloaded on receive, and a raw
    socket with IP_HDRINCL has the kernel fill it on every send (raw(7)). The sums are
    modulo 0xffff (see the module docstring), so the +0/-0 forms of a folded sum compare
    equal.
    """
    buf = pkt.buf
    tcp_off = pkt.tcp_off
    tcp_len = len(buf) - tcp_off
    if tcp_len != pkt.payload_off - tcp_off + pkt.payload_len:
        raise PacketError("cannot check the checksum of a packet whose payload is absent")
    if pkt.version == 4:
        pseudo = _from_bytes(buf[12:20], "big") + _PROTO_TCP + tcp_len
    else:
        pseudo = _from_bytes(buf[8:40], "big") + _PROTO_TCP + tcp_len
    csum_off = tcp_off + _TCP_CSUM_OFF
    field = _unpack16(buf, csum_off)[0]
    if (field - pseudo) % 0xFFFF:
        return CHECKSUM_COMPLETE
    segment = _from_bytes(buf[tcp_off:], "big")
    if tcp_len & 1:
        segment <<= 8
    _pack16(buf, csum_off, _finish(pseudo + segment - field))
    return CHECKSUM_COMPLETED


def ipv4_checksum_ok(pkt: Packet) -> bool:
    """Full verification of the IPv4 header checksum; True for IPv6, which has none."""
    if pkt.version != 4:
        return True
    return _sum16(pkt.buf[:pkt.tcp_off]) == 0


def split(pkt: Packet, mtu: int) -> list[Packet]:
    """Cut a segment whose IP total length exceeds ``mtu`` into segments of at most ``mtu``.

    Each piece keeps the original IP and TCP headers and options; its seq advances by the
    data before it (and by one after a SYN, which stays on the first piece); the IPv4 id
    grows by one per piece; FIN and PSH stay on the last piece only. A packet within the
    mtu comes back as ``[pkt]``.
    """
    header_len = pkt.payload_off
    if header_len + pkt.payload_len <= mtu:
        return [pkt]
    room = mtu - header_len
    if room <= 0:
        raise ValueError(f"mtu {mtu} leaves no room for data after {header_len} header bytes")
    if len(pkt.buf) < header_len + pkt.payload_len:
        raise ValueError("cannot split a packet whose payload is absent")
    header = pkt.buf[:header_len]
    payload = memoryview(pkt.buf)[header_len:]
    pieces = []
    seq = pkt.seq
    for index, start in enumerate(range(0, pkt.payload_len, room)):
        chunk = payload[start:start + room]
        last = start + room >= pkt.payload_len
        flags = pkt.flags
        if not last:
            flags &= ~(FIN | PSH)
        if start:
            flags &= ~SYN
        pieces.append(_piece(pkt, header, chunk, seq, flags, pkt.ip_id + index))
        seq += len(chunk) + (1 if flags & SYN else 0)
    return pieces


def _piece(pkt: Packet, header: bytearray, chunk, seq: int, flags: int, ip_id: int) -> Packet:
    buf = bytearray(header)
    buf += chunk
    tcp_off = pkt.tcp_off
    if pkt.version == 4:
        _U16.pack_into(buf, _IPV4_LEN_OFF, len(buf))
        _U16.pack_into(buf, _IPV4_ID_OFF, ip_id & _MASK16)
    else:
        _U16.pack_into(buf, _IPV6_PLEN_OFF, len(buf) - 40)
    _U32.pack_into(buf, tcp_off + _TCP_SEQ_OFF, seq & _MASK32)
    buf[tcp_off + _TCP_FLAGS_OFF] = flags
    _fill_checksums(buf, tcp_off)
    return _parse(buf, False)
