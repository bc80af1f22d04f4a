"""A scripted driver for session-engine traces.

Each step feeds one input to a ``Session`` at an explicit time and returns what it sent, so a
test reads as a packet trace: the captured client packet or target response going in, the
packets coming out, the events, the next deadline. Time is a plain number the test chooses.
"""

from __future__ import annotations

import socket

from tcpcopy.capture import packet as pk
from tcpcopy.session.engine import Endpoint, Session, SessionConfig, SessionStats

REAL_CLIENT = socket.inet_aton("198.18.5.5")
REAL_CLIENT_PORT = 51000
ONLINE = socket.inet_aton("198.18.0.10")
ONLINE_PORT = 80
REPLAY_CLIENT = socket.inet_aton("198.18.3.5")
REPLAY_PORT = 41000
TARGET = socket.inet_aton("198.18.0.2")
TARGET_PORT = 8080

ENDPOINT = Endpoint(REPLAY_CLIENT, REPLAY_PORT, TARGET, TARGET_PORT)

C_ISN = 1_000          # the real client's ISN
O_ISN = 50_000         # the online server's ISN (only visible in captured ACKs)
T_ISN = 900_000        # the target's ISN

SA = pk.SYN | pk.ACK
PA = pk.PSH | pk.ACK
FA = pk.FIN | pk.ACK
RA = pk.RST | pk.ACK
A = pk.ACK


class Replay:
    """One session under test, with the trace helpers."""

    def __init__(self, endpoint: Endpoint = ENDPOINT, **config):
        self.stats = SessionStats()
        self.config = SessionConfig(**config)
        self.endpoint = endpoint
        self.session = Session(endpoint, self.config, self.stats)

    # inputs -------------------------------------------------------------------------

    def client(self, at: float, flags: int, seq: int, ack: int = 0, payload: bytes = b"",
               options: bytes = b"", window: int = 29200) -> list[pk.Packet]:
        """A packet the real client sent to the online server, as captured."""
        src, dst = (REAL_CLIENT, ONLINE) if len(self.endpoint.client_ip) == 4 else (
            socket.inet_pton(socket.AF_INET6, "2001:2::5"), socket.inet_pton(socket.AF_INET6, "2001:2::10"))
        captured = pk.build(src, dst, REAL_CLIENT_PORT, ONLINE_PORT, seq & 0xFFFFFFFF,
                            ack & 0xFFFFFFFF, flags, window, options=options, payload=payload)
        self.session.handle_client(pk.decode(captured.to_bytes()), at)
        return self.sent()

    def target(self, at: float, flags: int, seq: int, ack: int = 0, data: int = 0,
               window: int = 65535, options: bytes = b"") -> list[pk.Packet]:
        """Headers of a packet the target sent, as intercept reports them (payload cut off)."""
        ep = self.endpoint
        answer = pk.build(ep.target_ip, ep.client_ip, ep.target_port, ep.client_port,
                          seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, flags, window, options=options,
                          payload=b"r" * data)
        headers = answer.to_bytes()[:answer.payload_off]
        self.session.handle_response(pk.decode(headers, headers_only=True), at)
        return self.sent()

    def timer(self, at: float) -> list[pk.Packet]:
        self.session.handle_timer(at)
        return self.sent()

    # outputs ------------------------------------------------------------------------

    def sent(self) -> list[pk.Packet]:
        packets = [pk.decode(raw) for raw in self.session.take_packets()]
        for p in packets:
            assert (p.src, p.sport, p.dst, p.dport) == (
                self.endpoint.client_ip, self.endpoint.client_port,
                self.endpoint.target_ip, self.endpoint.target_port), p
            assert pk.tcp_checksum_ok(p), p
            if p.version == 4:
                assert pk.ipv4_checksum_ok(p), p
        return packets

    def events(self) -> list:
        return self.session.take_events()

    @property
    def deadline(self):
        return self.session.next_deadline()

    # a common opening -----------------------------------------------------------------

    def handshake(self, syn_options: bytes = b"", synack_options: bytes = b"",
                  window: int = 65535, third_ack: bool = True) -> None:
        """SYN captured and forwarded, SYN-ACK from the target at 10 ms, ACK captured."""
        self.client(0.000, pk.SYN, C_ISN, options=syn_options or pk.opt_mss(1460))
        self.target(0.010, SA, T_ISN, C_ISN + 1, window=window,
                    options=synack_options or pk.opt_mss(1460))
        if third_ack:
            self.client(0.011, A, C_ISN + 1, O_ISN + 1)
        self.events()


def seg(p: pk.Packet) -> tuple:
    """A sent packet as (flags, seq, ack, payload) for compact assertions."""
    return (p.flags, p.seq, p.ack, p.payload)
