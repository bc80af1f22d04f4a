"""Strict, streaming reader of capture files for offline replay: classic pcap and pcapng;
and the project's one writer of classic pcap (``classic_header``, ``classic_record``).

Offline mode replays a capture file, so the file must be read lazily (captures run to
gigabytes) and every fault must be named precisely: which packet, what is wrong, and how to
make a good capture. Frames captured with a short snaplen are refused by default, because a
replayed request missing its payload would be a different request.

Only the standard library is needed; pypcap is imported only to compile a BPF filter.

Formats
-------
* classic pcap, either byte order, microsecond (magic a1b2c3d4) or nanosecond (a1b23c4d)
  timestamps;
* pcapng: any number of sections, each with its own byte order; Interface Description Blocks
  with the ``if_tsresol`` (power of ten or of two) and ``if_tsoffset`` options; Enhanced,
  Simple (timestamp of the previous packet) and obsolete Packet Blocks; every other block is
  skipped by its length. All interfaces of a file must share one link type.

Timestamps are float seconds, computed as ``seconds + remainder / units`` so that a
timestamp reads the same from every format and resolution; at present-day epochs a float
resolves about 0.24 microseconds, which is far below what replay pacing needs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from tcpcopy.capture import packet as pk

__all__ = ["CaptureFileError", "Frame", "Capture", "open_capture", "SUPPORTED_LINKTYPES",
           "MAX_CAPLEN", "classic_header", "classic_record", "CLASSIC_HEADER_BYTES", "RECORD_HEADER_BYTES"]

MAX_CAPLEN = 262144
"""Largest captured length accepted for one frame (libpcap's own limit for these link types)."""

SUPPORTED_LINKTYPES: dict[int, str] = {
    pk.LINKTYPE_ETHERNET: "Ethernet",
    pk.LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    pk.LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
    pk.LINKTYPE_RAW: "raw IP",
    12: "raw IP (DLT_RAW)",
    14: "raw IP (OpenBSD DLT_RAW)",
    pk.LINKTYPE_IPV4: "raw IPv4",
    pk.LINKTYPE_IPV6: "raw IPv6",
}
"""Link types capture/packet.ip_offset can strip, by number, with a name for messages."""

_RAW_IP_LINKTYPES = frozenset((pk.LINKTYPE_RAW, 12, 14))
_READ_BUFFER = 1 << 16
_SKIP_CHUNK = 1 << 16
_MAX_METADATA_BLOCK = 1 << 20  # an Interface Description Block is read whole

_CLASSIC_MAGICS = {  # first four bytes -> (struct byte order, units per second)
    bytes.fromhex("d4c3b2a1"): ("<", 10**6),
    bytes.fromhex("a1b2c3d4"): (">", 10**6),
    bytes.fromhex("4d3cb2a1"): ("<", 10**9),
    bytes.fromhex("a1b23c4d"): (">", 10**9),
}
_PCAPNG_MAGIC = bytes.fromhex("0a0d0d0a")  # Section Header Block type, the same in both orders
_GZIP_MAGIC = bytes.fromhex("1f8b")

_SHB, _IDB, _OPB, _SPB, _EPB = 0x0A0D0D0A, 1, 2, 3, 6
_PACKET_BLOCKS = frozenset((_OPB, _SPB, _EPB))
_MIN_BLOCK_LENGTH = {_SHB: 28, _IDB: 20, _OPB: 32, _SPB: 16, _EPB: 32}
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END, _OPT_IF_TSRESOL, _OPT_IF_TSOFFSET = 0, 9, 14

CLASSIC_HEADER_BYTES = 24
RECORD_HEADER_BYTES = 16
_MICROSECONDS_MAGIC, _NANOSECONDS_MAGIC = 0xA1B2C3D4, 0xA1B23C4D

_FULL_SNAPLEN_HINT = "capture with full snaplen, e.g. tcpdump -s 0"
_CUT_SHORT_HINT = "was the capture stopped while writing? packets before it are fine"


def classic_header(linktype: int, snaplen: int, *, nanosecond: bool = False, byteorder: str = "<") -> bytes:
    """The 24-byte header of a classic pcap file (version 2.4)."""
    magic = _NANOSECONDS_MAGIC if nanosecond else _MICROSECONDS_MAGIC
    return struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def classic_record(ts_ns: int, data: bytes, orig_len: int, *, nanosecond: bool = False,
                   byteorder: str = "<") -> bytes:
    """One packet record of a classic pcap file: its 16-byte header, then ``data``.
    ``ts_ns``: integer nanoseconds since the epoch; ``orig_len``: the length on the wire
    (more than ``len(data)`` for a packet kept cut)."""
    sec, rest = divmod(ts_ns, 1_000_000_000)
    frac = rest if nanosecond else rest // 1000
    return struct.pack(byteorder + "IIII", sec, frac, len(data), orig_len) + bytes(data)


class CaptureFileError(ValueError):
    """A capture file cannot be used for replay. The message names the file, the fault and,
    where there is one, the fix."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame: timestamp in seconds, the captured bytes, the length on the wire."""

    ts: float
    data: bytes
    orig_len: int


def open_capture(path: str, bpf: str | None = None, *, skip_truncated: bool = False) -> "Capture":
    """Open a pcap or pcapng file for replay; only its header is read here.

    ``bpf`` keeps only the frames a libpcap filter passes (needs pypcap). Frames captured
    truncated raise CaptureFileError, or with ``skip_truncated`` are counted and skipped.
    """
    return Capture(path, bpf, skip_truncated=skip_truncated)


class Capture:
    """An iterator of Frame over a capture file, read one record at a time.

    Counters, all over the packet records read so far:
    ``frames_read`` every packet record, ``frames_truncated`` those captured truncated,
    ``frames_filtered_out`` those the BPF filter rejected. Truncation is checked before
    the filter, so every short capture is reported whatever the filter.
    The file is closed at its end, on an error, by ``close()`` or by a ``with`` block.
    """

    def __init__(self, path: str, bpf: str | None = None, *, skip_truncated: bool = False):
        self.path = str(path)
        self.skip_truncated = skip_truncated
        self.frames_read = 0
        self.frames_filtered_out = 0
        self.frames_truncated = 0
        self._source = _Source.open(self.path)
        try:
            self._reader = _open_reader(self._source)
            self.linktype = self._reader.linktype
            _check_supported(self._source, self.linktype)
            self._filter = _compile_filter(self.path, bpf, self.linktype) if bpf else None
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> "Capture":
        return self

    def __next__(self) -> Frame:
        while not self._source.closed:
            try:
                frame = self._reader.next_frame()
            except BaseException:
                self.close()
                raise
            if frame is None:
                self.close()
                break
            self.frames_read += 1
            if self._accept(frame):
                return frame
        raise StopIteration

    def _accept(self, frame: Frame) -> bool:
        if len(frame.data) < frame.orig_len:
            self.frames_truncated += 1
            if not self.skip_truncated:
                self.close()
                raise self._source.error(
                    f"packet {self.frames_read} was captured truncated (caplen {len(frame.data)} "
                    f"of {frame.orig_len} bytes): {_FULL_SNAPLEN_HINT}")
            return False
        if self._filter is not None and not self._filter.filter(frame.data):
            self.frames_filtered_out += 1
            return False
        return True

    def close(self) -> None:
        self._source.close()

    @property
    def position(self) -> int:
        """How many bytes of the file have been read so far (for progress)."""
        return self._source.consumed

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<Capture {self.path!r} linktype={getattr(self, 'linktype', None)} "
                f"read={self.frames_read}>")


# ---------------------------------------------------------------- opening and checking

def _open_reader(source: "_Source") -> "_ClassicReader | _PcapngReader":
    magic = source.read(4)
    if not magic:
        raise source.error("the file is empty (0 bytes): was the capture ever written?")
    if len(magic) < 4:
        raise source.error(f"the file ends inside its header ({len(magic)} bytes): "
                           "it is not a complete pcap or pcapng file")
    if magic in _CLASSIC_MAGICS:
        return _ClassicReader(source, magic)
    if magic == _PCAPNG_MAGIC:
        return _PcapngReader(source, magic)
    hint = ": it is gzip-compressed, gunzip it first" if magic.startswith(_GZIP_MAGIC) else ""
    raise source.error(f"not a pcap or pcapng file: starts with 0x{magic.hex()}{hint}")


def _check_supported(source: "_Source", linktype: int) -> None:
    if linktype not in SUPPORTED_LINKTYPES:
        supported = ", ".join(f"{number} {name}" for number, name in SUPPORTED_LINKTYPES.items())
        raise source.error(
            f"link type {linktype} cannot be replayed; supported link types are {supported} "
            "(capture on an Ethernet interface, or with tcpdump -i any)")


def _compile_filter(path: str, expression: str, linktype: int):
    """A pypcap ``bpf`` object for ``expression`` on frames of ``linktype``."""
    try:
        import pcap
    except ImportError as exc:
        raise CaptureFileError(
            f"capture file {path!r}: the BPF filter {expression!r} needs pypcap, which cannot be "
            f"imported ({exc}): install it with 'pip install pypcap' (it needs libpcap)") from exc
    # libpcap compiles for a DLT, and the raw-IP DLT is numbered per platform.
    dlt = pcap.DLT_RAW if linktype in _RAW_IP_LINKTYPES else linktype
    try:
        return pcap.bpf(expression.encode(), dlt)
    except OSError as exc:
        raise CaptureFileError(
            f"capture file {path!r}: libpcap cannot compile the BPF filter {expression!r} for "
            f"link type {linktype} ({exc}): see pcap-filter(7) for the syntax") from exc


class _Source:
    """A binary file read in exact-size pieces, with its path for error messages."""

    def __init__(self, path: str, file: BinaryIO):
        self.path = path
        self._file = file
        self.consumed = 0   # bytes read or skipped so far

    @classmethod
    def open(cls, path: str) -> "_Source":
        try:
            return cls(path, open(path, "rb", buffering=_READ_BUFFER))
        except FileNotFoundError:
            raise CaptureFileError(f"capture file {path!r} does not exist") from None
        except IsADirectoryError:
            raise CaptureFileError(f"capture file {path!r} is a directory, not a file") from None
        except OSError as exc:
            raise CaptureFileError(f"cannot open capture file {path!r}: {exc.strerror}") from exc

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        self._file.close()

    def error(self, detail: str) -> CaptureFileError:
        return CaptureFileError(f"capture file {self.path!r}: {detail}")

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the file."""
        try:
            data = self._file.read(size)
        except OSError as exc:
            raise self.error(f"read failed: {exc.strerror or exc}") from exc
        self.consumed += len(data)
        return data

    def skip(self, size: int) -> int:
        """Skip ``size`` bytes in bounded reads; returns how many were there."""
        done = 0
        while done < size:
            chunk = self.read(min(_SKIP_CHUNK, size - done))
            if not chunk:
                break
            done += len(chunk)
        return done


# ---------------------------------------------------------------- classic pcap

class _ClassicReader:
    """Classic pcap: a 24-byte file header, then 16-byte record headers each with its data."""

    def __init__(self, source: _Source, magic: bytes):
        self._source = source
        order, self._units = _CLASSIC_MAGICS[magic]
        rest = source.read(20)
        if len(rest) < 20:
            raise source.error(f"the file ends inside the pcap file header ({4 + len(rest)} of "
                               "24 bytes): it is not a complete capture")
        major, minor, _zone, _sigfigs, _snaplen, linktype = struct.unpack(order + "HHiIII", rest)
        if major != 2:
            raise source.error(f"pcap format version {major}.{minor} is not supported "
                               "(expected 2.x): rewrite it with editcap -F pcap")
        self.linktype = linktype & 0xFFFF  # the upper bits describe a frame check sequence
        self._record = struct.Struct(order + "IIII")
        self._packets = 0

    def next_frame(self) -> Frame | None:
        head = self._source.read(16)
        if not head:
            return None
        self._packets += 1
        if len(head) < 16:
            raise self._cut_short()
        sec, frac, caplen, orig_len = self._record.unpack(head)
        _check_caplen(self._source, self._packets, caplen)
        data = self._source.read(caplen)
        if len(data) < caplen:
            raise self._cut_short()
        return Frame(sec + frac / self._units, data, orig_len)

    def _cut_short(self) -> CaptureFileError:
        return self._source.error(f"the file ends inside packet {self._packets}: {_CUT_SHORT_HINT}")


def _check_caplen(source: _Source, number: int, caplen: int) -> None:
    if caplen > MAX_CAPLEN:
        raise source.error(f"packet {number} claims {caplen} captured bytes, more than "
                           f"{MAX_CAPLEN}: the file is corrupt")


# ---------------------------------------------------------------- pcapng

@dataclass(frozen=True, slots=True)
class _Interface:
    linktype: int
    snaplen: int
    units: int       # timestamp units per second: 10**n or 2**n
    offset: int      # seconds added to every timestamp (if_tsoffset)

    def timestamp(self, ticks: int) -> float:
        seconds, rest = divmod(ticks, self.units)
        return seconds + self.offset + rest / self.units


class _PcapngReader:
    """pcapng: a sequence of blocks (type, length, body, length again), in sections.

    The constructor reads blocks up to the first Interface Description Block, so the link
    type is known at open; packet blocks cannot come before it.
    """

    def __init__(self, source: _Source, magic: bytes):
        self._source = source
        self._order = "<"
        self._interfaces: list[_Interface] = []
        self._packets = 0
        self._in_packet = False
        self._last_ts = 0.0
        self.linktype: int | None = None
        head = magic + source.read(4)
        if len(head) < 8:
            raise self._header_cut_short()
        self._read_section_header(head)
        while self.linktype is None:
            if self._next_block() is _END:
                raise source.error("the pcapng file describes no interface, so it holds no "
                                   "packets: was the capture ever written?")

    def next_frame(self) -> Frame | None:
        while True:
            block = self._next_block()
            if block is _END:
                return None
            if block is not None:
                return block

    # ---- blocks

    def _next_block(self):
        """The Frame of a packet block, None for any other block, _END at the end of file."""
        head = self._source.read(8)
        if not head:
            return _END
        self._in_packet = False
        if len(head) >= 4 and self._unpack("I", head)[0] in _PACKET_BLOCKS:
            self._packets += 1
            self._in_packet = True
        if len(head) < 8:
            raise self._cut_short()
        if head[:4] == _PCAPNG_MAGIC:
            self._read_section_header(head)
            return None
        block_type, length = self._unpack("II", head)
        body_length = self._check_length(block_type, length) - 12
        reader = self._BLOCK_READERS.get(block_type, _PcapngReader._skip_block)
        result = reader(self, block_type, body_length)
        self._read_trailer(length)
        return result

    def _read_section_header(self, head: bytes) -> None:
        first = self.linktype is None and not self._interfaces
        rest = self._source.read(4)
        if len(rest) < 4:
            raise self._header_cut_short() if first else self._cut_short()
        order = _byte_order(rest)
        if order is None:
            raise self._source.error(f"pcapng section header has byte-order magic 0x{rest.hex()}, "
                                     "expected 1a2b3c4d: the file is corrupt")
        self._order = order
        self._interfaces = []
        length = self._check_length(_SHB, self._unpack("I", head, 4)[0])
        fixed = self._need(12, first)
        major, minor = self._unpack("HH", fixed)
        if major != 1:
            raise self._source.error(f"pcapng version {major}.{minor} is not supported "
                                     "(expected 1.x): rewrite it with editcap -F pcapng")
        self._skip(length - 28, first)
        self._read_trailer(length, first)

    def _read_interface(self, _block_type: int, body_length: int) -> None:
        if body_length > _MAX_METADATA_BLOCK:
            raise self._source.error(f"interface description block of {body_length + 12} bytes "
                                     "is implausibly large: the file is corrupt")
        body = self._need(body_length)
        linktype, _reserved, snaplen = self._unpack("HHI", body)
        units, offset = self._interface_options(body[8:])
        self._interfaces.append(_Interface(linktype, snaplen, units, offset))
        if self.linktype is None:
            self.linktype = linktype
        elif linktype != self.linktype:
            raise self._source.error(
                f"interfaces have different link types, {self.linktype} "
                f"({_linktype_name(self.linktype)}) and {linktype} ({_linktype_name(linktype)}): "
                "replay needs one link type per file; split it, e.g. tshark -r FILE "
                "-Y 'frame.interface_id == N' -w PART")

    def _interface_options(self, raw: bytes) -> tuple[int, int]:
        """(units per second, offset in seconds) from the options of an interface."""
        units, offset, pos = 10**6, 0, 0
        while pos + 4 <= len(raw):
            code, length = self._unpack("HH", raw, pos)
            if code == _OPT_END:
                break
            value = raw[pos + 4:pos + 4 + length]
            if len(value) < length:
                raise self._corrupt_option(code, length)
            if code == _OPT_IF_TSRESOL:
                if length != 1:
                    raise self._corrupt_option(code, length)
                exponent = value[0] & 0x7F
                units = 1 << exponent if value[0] & 0x80 else 10**exponent
            elif code == _OPT_IF_TSOFFSET:
                if length != 8:
                    raise self._corrupt_option(code, length)
                offset = self._unpack("q", value)[0]
            pos += 4 + (length + 3) // 4 * 4
        return units, offset

    def _read_packet(self, block_type: int, body_length: int) -> Frame:
        fixed = self._need(20)
        if block_type == _EPB:
            index, high, low, caplen, orig_len = self._unpack("IIIII", fixed)
        else:  # the obsolete Packet Block: a 16-bit interface id and a drop counter
            index, _drops, high, low, caplen, orig_len = self._unpack("HHIIII", fixed)
        interface = self._interface(index)
        data = self._read_data(caplen, body_length - 20)
        self._last_ts = interface.timestamp(high << 32 | low)
        return Frame(self._last_ts, data, orig_len)

    def _read_simple_packet(self, _block_type: int, body_length: int) -> Frame:
        """A Simple Packet Block has no timestamp: it gets the previous packet's."""
        interface = self._interface(0)
        (orig_len,) = self._unpack("I", self._need(4))
        caplen = min(orig_len, interface.snaplen) if interface.snaplen else orig_len
        return Frame(self._last_ts, self._read_data(caplen, body_length - 4), orig_len)

    def _read_data(self, caplen: int, room: int) -> bytes:
        """``caplen`` bytes of packet data padded to 32 bits in ``room`` bytes; skips the rest."""
        _check_caplen(self._source, self._packets, caplen)
        padded = (caplen + 3) // 4 * 4
        if padded > room:
            raise self._source.error(f"packet {self._packets} claims {caplen} captured bytes but "
                                     f"its block has room for {room}: the file is corrupt")
        data = self._need(padded)[:caplen]
        self._skip(room - padded)
        return data

    def _skip_block(self, _block_type: int, body_length: int) -> None:
        self._skip(body_length)

    _BLOCK_READERS = {_IDB: _read_interface, _EPB: _read_packet, _OPB: _read_packet,
                      _SPB: _read_simple_packet}

    # ---- helpers

    def _unpack(self, fmt: str, buffer: bytes, offset: int = 0) -> tuple:
        return struct.unpack_from(self._order + fmt, buffer, offset)

    def _interface(self, index: int) -> _Interface:
        if index >= len(self._interfaces):
            raise self._source.error(
                f"packet {self._packets} refers to interface {index}, but its section describes "
                f"{len(self._interfaces)}: the file is corrupt")
        return self._interfaces[index]

    def _check_length(self, block_type: int, length: int) -> int:
        minimum = _MIN_BLOCK_LENGTH.get(block_type, 12)
        if length % 4 or length < minimum:
            raise self._source.error(
                f"pcapng block of type 0x{block_type:08x} {self._position()} has length {length}, "
                f"which is {'not a multiple of 4' if length % 4 else f'below its minimum {minimum}'}"
                ": the file is corrupt")
        return length

    def _read_trailer(self, length: int, in_header: bool = False) -> None:
        (trailer,) = self._unpack("I", self._need(4, in_header))
        if trailer != length:
            raise self._source.error(
                f"pcapng block {self._position()} starts with length {length} but ends with "
                f"{trailer}: the file is corrupt")

    def _need(self, size: int, in_header: bool = False) -> bytes:
        data = self._source.read(size)
        if len(data) < size:
            raise self._header_cut_short() if in_header else self._cut_short()
        return data

    def _skip(self, size: int, in_header: bool = False) -> None:
        if self._source.skip(size) < size:
            raise self._header_cut_short() if in_header else self._cut_short()

    def _position(self) -> str:
        return f"in packet {self._packets}" if self._in_packet else f"after packet {self._packets}"

    def _cut_short(self) -> CaptureFileError:
        where = (f"packet {self._packets}" if self._in_packet
                 else f"a pcapng block after packet {self._packets}")
        return self._source.error(f"the file ends inside {where}: {_CUT_SHORT_HINT}")

    def _header_cut_short(self) -> CaptureFileError:
        return self._source.error("the file ends inside the pcapng section header: "
                                  "it is not a complete capture")

    def _corrupt_option(self, code: int, length: int) -> CaptureFileError:
        return self._source.error(f"interface option {code} of length {length} is malformed: "
                                  "the file is corrupt")


_END = object()  # end of file at a block boundary


def _byte_order(magic: bytes) -> str | None:
    for order in ("<", ">"):
        if struct.unpack(order + "I", magic)[0] == _BYTE_ORDER_MAGIC:
            return order
    return None


def _linktype_name(linktype: int) -> str:
    return SUPPORTED_LINKTYPES.get(linktype, "not supported for replay")
