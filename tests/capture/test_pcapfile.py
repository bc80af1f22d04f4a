"""The offline capture-file reader: classic pcap and pcapng, strictness, laziness, filters."""

from __future__ import annotations

import struct
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tcpcopy.capture import packet as pk
from tcpcopy.capture.pcapfile import (MAX_CAPLEN, SUPPORTED_LINKTYPES, CaptureFileError, Frame,
                                      open_capture)
from tests.fixtures.pcapfile import (FIXTURES_DIR, PcapFile, PcapRecord, load_fixture,
                                     serialize_pcap, write_pcap)

FIXTURE = FIXTURES_DIR / "http_keepalive.pcap"
EPOCH = 1_795_352_534  # seconds; a present-day timestamp
# (seconds, microseconds, frame): Ethernet frames of different lengths, odd ones included.
PACKETS = [(EPOCH, 807_126, bytes(range(60))), (EPOCH, 999_999, b"\xab" * 1514),
           (EPOCH + 1, 0, b"\x01\x02\x03" * 23), (EPOCH + 7, 1, b"\xff" * 61)]
HINT_CUT = "was the capture stopped while writing? packets before it are fine"


def read_all(path, **kwargs) -> list[Frame]:
    return list(open_capture(str(path), **kwargs))


def read_until_error(path, **kwargs) -> tuple[list[Frame], CaptureFileError]:
    """The frames yielded before the CaptureFileError that the file must raise."""
    frames: list[Frame] = []
    with pytest.raises(CaptureFileError) as caught:
        for frame in open_capture(str(path), **kwargs):
            frames.append(frame)
    return frames, caught.value


def microseconds(frames: list[Frame]) -> list[int]:
    return [round(frame.ts * 1e6) for frame in frames]


EXPECTED_US = [sec * 10**6 + usec for sec, usec, _ in PACKETS]
EXPECTED_DATA = [frame for _, _, frame in PACKETS]


# ---------------------------------------------------------------- a small pcapng writer

def pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def block(order: str, block_type: int, body: bytes) -> bytes:
    body = pad4(body)
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + pad4(value)


def end_of_options(order: str) -> bytes:
    return struct.pack(order + "HH", 0, 0)


def shb(order: str = "<", options: bytes = b"") -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1) + options)


def idb(order: str = "<", linktype: int = 1, snaplen: int = 0, tsresol: int | None = None,
        tsoffset: int | None = None) -> bytes:
    options = b""
    if tsresol is not None:
        options += option(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        options += option(order, 14, struct.pack(order + "q", tsoffset))
    if options:
        options += option(order, 2, b"eth0") + end_of_options(order)
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def epb(order: str, ticks: int, data: bytes, interface: int = 0, orig_len: int | None = None,
        options: bytes = b"") -> bytes:
    orig_len = len(data) if orig_len is None else orig_len
    fixed = struct.pack(order + "IIIII", interface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), orig_len)
    return block(order, 6, fixed + pad4(data) + options)


def spb(order: str, data: bytes, orig_len: int | None = None) -> bytes:
    orig_len = len(data) if orig_len is None else orig_len
    return block(order, 3, struct.pack(order + "I", orig_len) + data)


def write(tmp_path: Path, blob: bytes, name: str = "capture") -> Path:
    path = tmp_path / name
    path.write_bytes(blob)
    return path


def classic_blob(byteorder: str = "<", nanosecond: bool = False, linktype: int = 1,
                 records: list[PcapRecord] | None = None) -> bytes:
    if records is None:
        records = [PcapRecord((sec * 10**6 + usec) * 1000, frame, len(frame))
                   for sec, usec, frame in PACKETS]
    return serialize_pcap(PcapFile(linktype, MAX_CAPLEN, nanosecond, byteorder, records))


# ---------------------------------------------------------------- classic pcap

@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_classic_pcap_reads_the_same_in_every_byte_order_and_resolution(tmp_path, byteorder, nanosecond):
    packets = [((sec * 10**6 + usec) * 1000, frame) for sec, usec, frame in PACKETS]
    path = tmp_path / "c.pcap"
    write_pcap(path, packets, byteorder=byteorder, nanosecond=nanosecond)
    capture = open_capture(str(path))
    frames = list(capture)
    assert capture.linktype == pk.LINKTYPE_ETHERNET and capture.path == str(path)
    assert microseconds(frames) == EXPECTED_US
    assert [f.data for f in frames] == EXPECTED_DATA
    assert [f.orig_len for f in frames] == [len(d) for d in EXPECTED_DATA]
    assert frames == read_all(write(tmp_path, classic_blob(), "reference.pcap"))
    assert (capture.frames_read, capture.frames_truncated, capture.frames_filtered_out) == (4, 0, 0)


def test_nanosecond_timestamps_keep_their_nanoseconds(tmp_path):
    path = tmp_path / "ns.pcap"
    write_pcap(path, [(1_000_000_123, b"\0" * 60), (86_400_999_999_999, b"\0" * 60)], nanosecond=True)
    assert [round(f.ts * 1e9) for f in read_all(path)] == [1_000_000_123, 86_400_999_999_999]


def test_the_shipped_fixture_reads_like_the_test_reader():
    frames = read_all(FIXTURE)
    expected = load_fixture("http_keepalive.pcap")
    assert [(round(f.ts * 1e6), f.data) for f in frames] == [(round(ts * 1e6), data) for ts, data in expected]


def test_link_type_high_bits_describe_the_fcs_and_are_ignored(tmp_path):
    blob = bytearray(classic_blob())
    blob[20:24] = struct.pack("<I", 0x1000_0000 | pk.LINKTYPE_ETHERNET)
    assert open_capture(str(write(tmp_path, bytes(blob)))).linktype == pk.LINKTYPE_ETHERNET


def test_classic_pcap_with_another_major_version_is_refused(tmp_path):
    blob = bytearray(classic_blob())
    blob[4:6] = struct.pack("<H", 3)
    with pytest.raises(CaptureFileError, match=r"version 3\.4 is not supported"):
        open_capture(str(write(tmp_path, bytes(blob))))


# ---------------------------------------------------------------- pcapng

def pcapng_blob(order: str = "<", tsresol: int | None = None, units: int = 10**6) -> bytes:
    blocks = [shb(order), idb(order, tsresol=tsresol)]
    for sec, usec, frame in PACKETS:
        ticks = (sec * 10**6 + usec) * units // 10**6
        blocks.append(epb(order, ticks, frame))
    return b"".join(blocks)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("tsresol, units", [(None, 10**6), (6, 10**6), (9, 10**9), (3, 10**3),
                                            (0x8A, 2**10), (0x94, 2**20)])
def test_pcapng_in_both_byte_orders_and_any_resolution(tmp_path, order, tsresol, units):
    frames = read_all(write(tmp_path, pcapng_blob(order, tsresol, units)))
    assert [f.data for f in frames] == EXPECTED_DATA
    expected = [us * units // 10**6 / units for us in EXPECTED_US]  # what the file can express
    assert [f.ts for f in frames] == pytest.approx(expected, abs=1e-6)
    if units == 10**6 or units == 10**9:
        assert frames == read_all(write(tmp_path, classic_blob(), "c.pcap"))


def test_pcapng_nanosecond_and_power_of_two_resolutions_are_exact(tmp_path):
    blob = b"".join([shb(), idb(tsresol=9), epb("<", 1_000_000_123, b"\0" * 60),
                     idb(tsresol=0x8A), epb("<", 3 * 1024 + 1, b"\0" * 60, interface=1)])
    first, second = read_all(write(tmp_path, blob))
    assert round(first.ts * 1e9) == 1_000_000_123
    assert second.ts == 3 + 1 / 1024


def test_pcapng_tsoffset_is_added(tmp_path):
    blob = shb() + idb(tsresol=6, tsoffset=EPOCH) + epb("<", 250_000, b"\0" * 60)
    assert microseconds(read_all(write(tmp_path, blob))) == [EPOCH * 10**6 + 250_000]


def test_simple_packet_blocks_take_the_previous_timestamp(tmp_path):
    blob = b"".join([shb(), idb(), spb("<", b"\x01" * 61), epb("<", 5_000_001, b"\x02" * 60),
                     spb("<", b"\x03" * 62), spb("<", b"\x04" * 63)])
    frames = read_all(write(tmp_path, blob))
    assert [(f.ts, f.data[0], len(f.data), f.orig_len) for f in frames] == [
        (0.0, 1, 61, 61), (5.000001, 2, 60, 60), (5.000001, 3, 62, 62), (5.000001, 4, 63, 63)]


def test_simple_packet_block_beyond_the_snaplen_is_a_truncated_frame(tmp_path):
    blob = shb() + idb(snaplen=64) + spb("<", b"\x05" * 64, orig_len=100)
    frames, error = read_until_error(write(tmp_path, blob))
    assert frames == [] and "packet 1 was captured truncated (caplen 64 of 100 bytes)" in str(error)


def test_unknown_blocks_and_packet_options_are_skipped(tmp_path):
    name_resolution = block("<", 4, struct.pack("<HH", 1, 8) + bytes([10, 0, 0, 1]) + b"host" + b"\0" * 4)
    statistics = block("<", 5, struct.pack("<III", 0, 0, 0))
    custom = block("<", 0x00000BAD, b"\x99" * 4001)
    decryption_secrets = block("<", 0x0000000A, b"\x77" * 16)
    comment = option("<", 1, b"a comment on the packet") + end_of_options("<")
    blob = b"".join([shb(options=option("<", 4, b"test-suite") + end_of_options("<")), custom,
                     idb(), name_resolution, epb("<", 1, b"\x11" * 60, options=comment),
                     statistics, decryption_secrets, custom, epb("<", 2, b"\x22" * 61)])
    frames = read_all(write(tmp_path, blob))
    assert [(f.ts, f.data) for f in frames] == [(1e-6, b"\x11" * 60), (2e-6, b"\x22" * 61)]


def test_obsolete_packet_blocks_are_read(tmp_path):
    fixed = struct.pack("<HHIIII", 0, 0, 0, 7, 60, 60)
    blob = shb() + idb() + block("<", 2, fixed + b"\x33" * 60)
    assert read_all(write(tmp_path, blob)) == [Frame(7e-6, b"\x33" * 60, 60)]


def test_several_interfaces_of_one_link_type_each_keep_their_resolution(tmp_path):
    blob = b"".join([shb(), idb(tsresol=6), idb(tsresol=9), epb("<", 2_000_000, b"\0" * 60),
                     epb("<", 3_000_000_000, b"\1" * 60, interface=1)])
    capture = open_capture(str(write(tmp_path, blob)))
    assert capture.linktype == 1
    assert [f.ts for f in capture] == [2.0, 3.0]


def test_interfaces_of_different_link_types_are_refused(tmp_path):
    blob = b"".join([shb(), idb(linktype=1), epb("<", 1, b"\0" * 60),
                     idb(linktype=113), epb("<", 2, b"\0" * 60, interface=1)])
    frames, error = read_until_error(write(tmp_path, blob))
    assert len(frames) == 1
    assert "different link types, 1 (Ethernet) and 113 (Linux cooked (SLL))" in str(error)


def test_a_second_section_may_change_byte_order_and_restarts_interface_numbers(tmp_path):
    blob = (shb("<") + idb("<") + epb("<", 1, b"\x01" * 60)
            + shb(">") + idb(">", tsresol=9) + epb(">", 2_000, b"\x02" * 60))
    assert [(f.ts, f.data[0]) for f in read_all(write(tmp_path, blob))] == [(1e-6, 1), (2e-6, 2)]


def test_scapy_pcapng_writer_and_wrpcap_read_like_the_fixture(tmp_path):
    from scapy.utils import PcapNgWriter, rdpcap, wrpcap
    packets = rdpcap(str(FIXTURE))
    with PcapNgWriter(str(tmp_path / "s.pcapng")) as writer:
        for packet in packets:
            writer.write(packet)
    wrpcap(str(tmp_path / "s.pcap"), packets)
    expected = read_all(FIXTURE)
    assert read_all(tmp_path / "s.pcapng") == expected
    assert read_all(tmp_path / "s.pcap") == expected


def test_pcapng_without_an_interface_is_refused(tmp_path):
    with pytest.raises(CaptureFileError, match="describes no interface"):
        open_capture(str(write(tmp_path, shb() + block("<", 0xBAD, b"x"))))


def test_packet_before_its_interface_is_refused(tmp_path):
    blob = shb() + idb() + epb("<", 1, b"\0" * 60, interface=2)
    with pytest.raises(CaptureFileError, match="packet 1 refers to interface 2, but its section describes 1"):
        read_all(write(tmp_path, blob))


@pytest.mark.parametrize("length, fault", [(30, "not a multiple of 4"), (24, "below its minimum 32"),
                                           (8, "below its minimum 32")])
def test_bad_block_lengths_are_refused(tmp_path, length, fault):
    good = epb("<", 1, b"\0" * 60)
    bad = good[:4] + struct.pack("<I", length) + good[8:]
    with pytest.raises(CaptureFileError, match=f"length {length}, which is {fault}: the file is corrupt"):
        read_all(write(tmp_path, shb() + idb() + bad))


def test_block_whose_lengths_disagree_is_refused(tmp_path):
    good = epb("<", 1, b"\0" * 60)
    with pytest.raises(CaptureFileError, match="starts with length 92 but ends with 96"):
        read_all(write(tmp_path, shb() + idb() + good[:-4] + struct.pack("<I", 96)))


def test_packet_larger_than_its_block_is_refused(tmp_path):
    good = epb("<", 1, b"\0" * 60)
    bad = good[:20] + struct.pack("<I", 64) + good[24:]
    with pytest.raises(CaptureFileError, match="claims 64 captured bytes but its block has room for 60"):
        read_all(write(tmp_path, shb() + idb() + bad))


def test_bad_byte_order_magic_and_version_are_refused(tmp_path):
    bad_magic = bytearray(shb())
    bad_magic[8:12] = b"\x01\x02\x03\x04"
    with pytest.raises(CaptureFileError, match="byte-order magic 0x01020304"):
        open_capture(str(write(tmp_path, bytes(bad_magic) + idb(), "m")))
    bad_version = bytearray(shb())
    bad_version[12:14] = struct.pack("<H", 2)
    with pytest.raises(CaptureFileError, match=r"pcapng version 2\.0 is not supported"):
        open_capture(str(write(tmp_path, bytes(bad_version) + idb(), "v")))


# ---------------------------------------------------------------- link types

def test_supported_link_types_are_those_the_codec_strips():
    ipv4 = bytes.fromhex("4500")
    samples = {1: b"\0" * 12 + b"\x08\x00" + ipv4, 113: b"\0" * 14 + b"\x08\x00" + ipv4,
               276: b"\x08\x00" + b"\0" * 18 + ipv4}
    for linktype in SUPPORTED_LINKTYPES:
        pk.ip_offset(samples.get(linktype, ipv4), linktype)  # raises if the codec cannot
    for linktype in (0, 104, 105, 127):
        with pytest.raises(pk.PacketError, match="unsupported link type"):
            pk.ip_offset(ipv4 * 20, linktype)


@pytest.mark.parametrize("make", [lambda: classic_blob(linktype=104),
                                  lambda: shb() + idb(linktype=104) + epb("<", 1, b"\0" * 60)])
def test_unsupported_link_type_is_refused_at_open(tmp_path, make):
    with pytest.raises(CaptureFileError) as caught:
        open_capture(str(write(tmp_path, make())))
    message = str(caught.value)
    assert "link type 104 cannot be replayed" in message
    assert "1 Ethernet" in message and "113 Linux cooked (SLL)" in message and "101 raw IP" in message


@pytest.mark.parametrize("linktype", sorted(SUPPORTED_LINKTYPES))
def test_every_supported_link_type_opens(tmp_path, linktype):
    assert open_capture(str(write(tmp_path, classic_blob(linktype=linktype)))).linktype == linktype


# ---------------------------------------------------------------- truncated frames

def truncated_blob() -> bytes:
    full = [PcapRecord(i * 10**9, bytes([i]) * 1514, 1514) for i in (1, 2)]
    short = [PcapRecord(i * 10**9, bytes([i]) * 96, 1514) for i in (3, 4)]
    return classic_blob(records=full[:1] + short[:1] + full[1:] + short[1:])


def test_truncated_frame_is_an_error_after_the_frames_before_it(tmp_path):
    frames, error = read_until_error(write(tmp_path, truncated_blob()))
    assert [f.data[0] for f in frames] == [1]
    assert str(error).endswith("packet 2 was captured truncated (caplen 96 of 1514 bytes): "
                               "capture with full snaplen, e.g. tcpdump -s 0")
    assert "capture" in str(error) and "'" + str(tmp_path / "capture") + "'" in str(error)


def test_truncated_frames_can_be_counted_and_skipped(tmp_path):
    capture = open_capture(str(write(tmp_path, truncated_blob())), skip_truncated=True)
    assert [f.data[0] for f in capture] == [1, 2]
    assert (capture.frames_read, capture.frames_truncated, capture.frames_filtered_out) == (4, 2, 0)


def test_truncation_is_checked_before_the_filter(tmp_path):
    capture = open_capture(str(write(tmp_path, truncated_blob())), "tcp", skip_truncated=True)
    assert list(capture) == []
    assert (capture.frames_read, capture.frames_truncated, capture.frames_filtered_out) == (4, 2, 2)


def test_absurd_captured_length_is_refused(tmp_path):
    blob = classic_blob()
    second = 24 + 16 + len(PACKETS[0][2])
    bad = blob[:second + 8] + struct.pack("<I", MAX_CAPLEN + 1) + blob[second + 12:]
    frames, error = read_until_error(write(tmp_path, bad))
    assert len(frames) == 1
    assert f"packet 2 claims {MAX_CAPLEN + 1} captured bytes, more than {MAX_CAPLEN}: the file is corrupt" in str(error)


# ---------------------------------------------------------------- files cut short

def classic_expectation(blob: bytes, cut: int) -> tuple[int, str | None]:
    """(frames yielded, error text or None) for ``blob[:cut]``."""
    if cut == 0:
        return 0, "the file is empty"
    if cut < 24:
        return 0, "header"
    boundaries = [24]
    for _, _, frame in PACKETS:
        boundaries.append(boundaries[-1] + 16 + len(frame))
    complete = sum(1 for b in boundaries[1:] if b <= cut)
    if cut in boundaries:
        return complete, None
    return complete, f"the file ends inside packet {complete + 1}: {HINT_CUT}"


def check_cut(path: Path, expected_frames: int, expected_error: str | None) -> None:
    frames: list[Frame] = []
    try:
        for frame in open_capture(str(path)):
            frames.append(frame)
    except CaptureFileError as error:
        assert expected_error is not None and expected_error in str(error), (path.stat().st_size, error)
    else:
        assert expected_error is None, (path.stat().st_size, expected_error)
    assert len(frames) == expected_frames, path.stat().st_size
    assert [f.data for f in frames] == EXPECTED_DATA[:expected_frames]


def test_classic_pcap_cut_at_every_byte_offset(tmp_path):
    blob = classic_blob(byteorder=">")
    for cut in range(len(blob) + 1):
        check_cut(write(tmp_path, blob[:cut]), *classic_expectation(blob, cut))


def test_pcapng_cut_at_every_byte_offset(tmp_path):
    header = shb(options=option("<", 4, b"writer") + end_of_options("<"))
    interface = idb(tsresol=9)
    packets = [epb("<", i, frame, options=option("<", 1, b"c") + end_of_options("<"))
               for i, (_, _, frame) in enumerate(PACKETS)]
    blob = header + interface + b"".join(packets)
    packet_ends = [len(header + interface)]
    for packet in packets:
        packet_ends.append(packet_ends[-1] + len(packet))
    for cut in range(len(blob) + 1):
        complete = sum(1 for end in packet_ends[1:] if end <= cut)
        if cut == 0:
            expected = (0, "the file is empty")
        elif cut < len(header):
            expected = (0, "header")
        elif cut == len(header):
            expected = (0, "describes no interface")
        elif cut < len(header + interface):
            expected = (0, f"the file ends inside a pcapng block after packet 0: {HINT_CUT}")
        elif cut in packet_ends:
            expected = (complete, None)
        elif cut - packet_ends[complete] < 4:  # too little of the block to know its type
            expected = (complete, f"the file ends inside a pcapng block after packet {complete}")
        else:
            expected = (complete, f"the file ends inside packet {complete + 1}: {HINT_CUT}")
        check_cut(write(tmp_path, blob[:cut]), *expected)


# ---------------------------------------------------------------- files that are not captures

def test_missing_file(tmp_path):
    with pytest.raises(CaptureFileError, match=r"capture file '.*nowhere\.pcap' does not exist"):
        open_capture(str(tmp_path / "nowhere.pcap"))


def test_directory(tmp_path):
    with pytest.raises(CaptureFileError, match="is a directory"):
        open_capture(str(tmp_path))


def test_empty_file(tmp_path):
    with pytest.raises(CaptureFileError, match=r"'.*capture': the file is empty \(0 bytes\)"):
        open_capture(str(write(tmp_path, b"")))


def test_garbage_file(tmp_path):
    with pytest.raises(CaptureFileError, match="not a pcap or pcapng file: starts with 0x47455420$"):
        open_capture(str(write(tmp_path, b"GET / HTTP/1.1\r\n\r\n")))


def test_gzipped_capture_gets_a_hint(tmp_path):
    import gzip
    with pytest.raises(CaptureFileError, match="gzip-compressed, gunzip it first"):
        open_capture(str(write(tmp_path, gzip.compress(classic_blob()))))


def test_header_only_classic_file_has_no_frames(tmp_path):
    capture = open_capture(str(write(tmp_path, classic_blob(records=[]))))
    assert list(capture) == [] and capture.frames_read == 0


# ---------------------------------------------------------------- BPF filters

def test_filter_keeps_only_requests_to_port_80():
    capture = open_capture(str(FIXTURE), "dst port 80")
    frames = list(capture)
    assert len(frames) == 9
    assert all(struct.unpack_from("!H", f.data, 14 + 20 + 2)[0] == 80 for f in frames)
    assert (capture.frames_read, capture.frames_filtered_out, capture.frames_truncated) == (16, 7, 0)


def test_filter_works_on_raw_ip_captures(tmp_path):
    raw = [((round(ts * 1e6)) * 1000, frame[14:]) for ts, frame in load_fixture("http_keepalive.pcap")]
    path = tmp_path / "raw.pcap"
    write_pcap(path, raw, linktype=pk.LINKTYPE_RAW)
    assert len(read_all(path, bpf="dst port 80")) == 9


def test_bad_filter_is_named():
    with pytest.raises(CaptureFileError, match="cannot compile the BPF filter 'dst prot 80'"):
        open_capture(str(FIXTURE), "dst prot 80")


def test_filter_without_pypcap_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pcap", None)
    with pytest.raises(CaptureFileError, match="pip install pypcap"):
        open_capture(str(FIXTURE), "tcp")
    assert len(read_all(FIXTURE)) == 16  # no filter, no pypcap needed


# ---------------------------------------------------------------- streaming

def test_large_file_is_read_lazily(tmp_path):
    frame = bytes(range(256)) * 5 + b"\0" * 234  # 1514 bytes
    record = struct.pack("<IIII", EPOCH, 0, len(frame), len(frame)) + frame
    count = 20_000_000 // len(record)
    path = write(tmp_path, classic_blob(records=[]) + record * count)
    tracemalloc.start()
    try:
        capture = open_capture(str(path))
        first = next(capture)
        after_first = tracemalloc.get_traced_memory()[1]
        rest = sum(1 for _ in capture)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert first.data == frame and rest == count - 1 and capture.frames_read == count
    assert after_first < 1 << 20 and peak < 1 << 20, (after_first, peak)


def test_capture_closes_its_file_at_the_end_and_with_a_with_block(tmp_path):
    path = write(tmp_path, classic_blob())
    capture = open_capture(str(path))
    list(capture)
    assert capture._source.closed and list(capture) == []
    with open_capture(str(path)) as capture:
        next(capture)
    assert capture._source.closed


# ---------------------------------------------------------------- fuzz

VALID_FILES = [classic_blob(), classic_blob(">", True),
               pcapng_blob(), pcapng_blob(">", 0x8A, 2**10),
               shb() + idb() + spb("<", b"\1" * 61) + block("<", 0xBAD, b"x")]


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory) -> Path:
    """One file rewritten by every example (a module-scoped fixture suits hypothesis)."""
    return tmp_path_factory.mktemp("fuzz") / "capture"


def read_or_refuse(path: Path, blob: bytes) -> None:
    path.write_bytes(blob)
    try:
        for frame in open_capture(str(path), skip_truncated=True):
            assert len(frame.data) <= MAX_CAPLEN
    except CaptureFileError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(fuzz_path, blob):
    read_or_refuse(fuzz_path, blob)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(VALID_FILES), st.data())
def test_fuzz_damaged_captures(fuzz_path, valid, data):
    blob = bytearray(valid)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(blob) - 1))
        blob[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    read_or_refuse(fuzz_path, bytes(blob[:cut]) + data.draw(st.binary(max_size=40)))
