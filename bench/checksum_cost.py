"""What making captured checksums right costs, per packet, at 60, 600 and 1,500 bytes.

A captured segment may carry a partial TCP checksum (checksum offload on the capturing
host). The copier runs ``repair_checksums`` once on every segment it may replay, then
rewrites fields with incremental updates (RFC 1624). This prints, in microseconds per
packet on this machine:

- repair, complete: the capture's checksum was complete (told from the headers alone);
- repair, partial: it was partial and is completed (one sum over the segment);
- full recompute: what computing the checksum anew before every send would cost instead
  (per sent packet, so once per copy with -n and again on every retransmission);
- incremental: the per-send rewrites the engine does anyway (ack and timestamps);
- decode: the packet decode every captured packet takes, for scale.

    python bench/checksum_cost.py [--rounds 100000]

Figures from one machine are for comparing these choices with each other; compare the
copier with the C tool only in a run that measures both (make bench).
"""

from __future__ import annotations

import argparse
import struct
import timeit

from tcpcopy.capture import packet as pk

SIZES = (60, 600, 1500)
HEADERS = 20 + 32   # IPv4 + TCP with the timestamps option


def sample(total: int) -> pk.Packet:
    payload = bytes(range(256)) * (total // 256 + 1)
    return pk.build(bytes([198, 18, 1, 2]), bytes([198, 18, 1, 1]), 40000, 80, 1000, 2000,
                    pk.PSH | pk.ACK, 502, options=pk.opt_timestamps(7, 9),
                    payload=payload[:max(0, total - HEADERS)])


def partial(pkt: pk.Packet) -> bytes:
    """The packet's bytes as an offloading host captures them: the pseudo-header sum in the
    checksum field."""
    raw = bytearray(pkt.to_bytes())
    off = pkt.tcp_off + 16
    tcp_len = len(raw) - pkt.tcp_off
    pseudo = (int.from_bytes(raw[12:20], "big") + 6 + tcp_len) % 0xFFFF
    raw[off:off + 2] = struct.pack("!H", pseudo)
    return bytes(raw)


def per_packet_us(statement, rounds: int) -> float:
    return min(timeit.repeat(statement, number=rounds, repeat=3)) / rounds * 1e6


def measure(total: int, rounds: int) -> dict[str, float]:
    pkt = sample(total)
    valid, broken = pkt.to_bytes(), partial(pkt)
    decoded_valid, decoded_partial = pk.decode(valid), pk.decode(broken)
    decode = per_packet_us(lambda: pk.decode(valid), rounds)

    def repair_partial():
        decoded_partial.buf[pkt.tcp_off + 16:pkt.tcp_off + 18] = broken[pkt.tcp_off + 16:pkt.tcp_off + 18]
        pk.repair_checksums(decoded_partial)

    restore_cost = per_packet_us(
        lambda: decoded_partial.buf.__setitem__(slice(pkt.tcp_off + 16, pkt.tcp_off + 18),
                                                broken[pkt.tcp_off + 16:pkt.tcp_off + 18]), rounds)
    work = pk.decode(valid)
    return {
        "decode": decode,
        "repair, complete": per_packet_us(lambda: pk.repair_checksums(decoded_valid), rounds),
        "repair, partial": per_packet_us(repair_partial, rounds) - restore_cost,
        "full recompute": per_packet_us(lambda: pk._fill_checksums(work.buf, work.tcp_off), rounds),
        "incremental": per_packet_us(lambda: (work.set_ack(123456), work.set_timestamps(11, 12)), rounds),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=100_000, help="packets per measurement (100000)")
    args = parser.parse_args(argv)
    if not 1_000 <= args.rounds <= 10_000_000:
        parser.error("give --rounds 1000..10000000")
    results = {size: measure(size, args.rounds) for size in SIZES}
    names = list(results[SIZES[0]])
    print("microseconds per packet (best of 3)")
    print(f"{'':18}" + "".join(f"{size:>10} B" for size in SIZES))
    for name in names:
        print(f"{name:18}" + "".join(f"{results[size][name]:>12.2f}" for size in SIZES))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
