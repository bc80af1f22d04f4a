"""The preflight doctor: ``tcpcopy --check`` runs one probe through the real path of a copy and
names the first hop that fails, with the fix.

Most trouble with a live copy is "the target receives nothing" (reference §6.2, §8): the
capture sees no client packets, intercept cannot be reached, the replayed SYN never gets to
the target, or the target's answer never gets to intercept. The doctor walks that path once,
with the copy's own flags, in the order packets travel:

1. **capture**: the live capture on ``-i`` opens with the copy's filter (inbound only), and
   a client packet matching ``-x`` arrives within ``--check-wait`` seconds. Without client
   traffic (``--check-no-traffic``) only the opening is checked and the step is a warning.
2. **intercept**: each ``-s`` accepts a TCP connection and answers our HELLO with its own.
3. **probe**: one replayed connection is registered with every intercept (a client address
   from ``--check-client-ip``, else the first ``-c`` address, else the source of the client
   packet just captured; a random odd port, which Linux clients never use for connect), and
   a session engine sends its SYN through the raw socket, as the copy does. The SYN-ACK must
   come back through intercept within 3 s; a RST means nothing listens on the target port.
   When nothing comes back, the doctor narrows the fault down from this host: a raw send
   error (firewall, conntrack), the SYN not seen leaving, an ICMP error about it, the
   target's answer arriving here instead of at the assistant, and a plain connection from
   this host's own address to the target (refused: nothing listens; no answer: the target
   is unreachable; accepted: the fault lies in what is special about replayed packets, the
   client source address, i.e. the target's route back and rp_filter, or intercept).
4. **assistant**: the assistant must drop the answers after intercept saw them
   (ip_forward=0). When it is on this host's link, a TTL-1 packet addressed to the probe's
   client address is handed to it directly: a forwarding host answers with ICMP (time
   exceeded, or unreachable when it has no route), a host with ip_forward=0 drops it silently.
5. **cleanup**: always, the probe connection is reset (the engine's RST) and unregistered,
   and every intercept is told goodbye.

Each step ends as "ok", "FAIL" or "warn" with its detail; the doctor stops at the first
FAIL (cleanup still runs). Exit status 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import secrets
import select
import socket
import sys
import time
import uuid
from dataclasses import dataclass

import zmq

from tcpcopy.capture import packet as pk
from tcpcopy.capture.icmp import IcmpError, parse_icmp_error
from tcpcopy.capture.pcapfile import CaptureFileError, open_capture
from tcpcopy.capture.pcapio import CaptureError, dispatch, open_live
from tcpcopy.cluster import wire
from tcpcopy.cluster.curve import connect_with_keys
from tcpcopy.cluster.options import InterceptAddress, Mapping, capture_filter
from tcpcopy.session.engine import Endpoint, Session, SessionConfig, SessionStats
from tcpcopy.session.rawsend import DualSender, RawSendError

OK, FAIL, WARN = "ok", "FAIL", "warn"

CONNECT_WAIT = 2.0       # plain TCP connects (intercept port, target port), seconds
HELLO_WAIT = 3.0         # intercept's HELLO after ours
PROBE_WAIT = 3.0         # the SYN-ACK (or RST) through intercept
FORWARD_WAIT = 1.0       # ICMP from a forwarding assistant
FORWARD_PROBES = 2       # TTL-1 packets sent to the assistant, FORWARD_GAP apart
FORWARD_GAP = 0.3
OFFLINE_SCAN = 1_000_000  # frames of a file looked at for a client packet
PROBE_PORTS = (20001, 32767)  # odd ports below Linux's ephemeral range


@dataclass
class Step:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"

    def as_dict(self) -> dict:
        return {"step": self.name, "status": self.status, "detail": self.detail}


@dataclass
class _Link:
    """One intercept that answered our HELLO."""

    address: InterceptAddress
    socket: zmq.Socket
    identity: str


@dataclass
class _Probe:
    """The replayed probe connection and what became of it."""

    endpoint: Endpoint
    session: Session
    links: list
    client: str
    target: str
    answer: pk.Packet | None = None
    answered_by: str = ""
    elapsed: float = 0.0


class Doctor:
    """One preflight run over the parsed ``tcpcopy`` arguments (session/main.py)."""

    def __init__(self, args: argparse.Namespace, echo=None):
        self.args = args
        self.echo = echo            # called with each finished Step (text output), or None
        self.steps: list[Step] = []
        self.context = zmq.Context()
        self.links: list[_Link] = []
        self.probes: list[_Probe] = []
        self.sender: DualSender | None = None
        self.client_seen: str | None = None   # source address of a captured client packet
        self.identity = f"tcpcopy-check@{socket.gethostname()}"
        self.instance = uuid.uuid4().hex

    # ------------------------------------------------------------------ the run

    def run(self) -> list[Step]:
        try:
            if not self._capture():
                return self.steps
            if not self._intercepts():
                return self.steps
            client = self._client_address()
            if client is None:
                return self.steps
            for target_ip, target_port, mapping in _targets(self.args.mappings):
                if not self._probe(client, target_ip, target_port, mapping):
                    return self.steps
            self._assistants(client)
            return self.steps
        finally:
            self._cleanup()

    def failed(self) -> bool:
        return any(step.status == FAIL for step in self.steps)

    def _add(self, name: str, status: str, detail: str) -> bool:
        step = Step(name, status, detail)
        self.steps.append(step)
        if self.echo is not None:
            self.echo(step)
        return status != FAIL

    # ------------------------------------------------------------------ 1. capture

    def _capture(self) -> bool:
        args = self.args
        bpf = capture_filter(args.mappings, args.user_filter, args.all_acks)
        what = f"-x {_mappings_text(args.mappings)}"
        if args.offline:
            return self._capture_file(bpf, what)
        name = f"capture {args.source}"
        try:
            handle = open_live(args.source, bpf, snaplen=args.snaplen, buffer_bytes=1 << 20,
                               inbound_only=True)
        except CaptureError as exc:
            return self._add(name, FAIL, str(exc))
        try:
            wait = 0.0 if args.check_no_traffic else args.check_wait
            packet = _first_packet(handle, wait)
        finally:
            handle.close()
        if packet is not None:
            self.client_seen = _addr(packet.src)
            return self._add(name, OK, f"client traffic for {what} arrives on {args.source}, e.g. "
                             f"{_endpoint_text(packet.src, packet.sport)} > "
                             f"{_endpoint_text(packet.dst, packet.dport)} [{pk.flags_text(packet.flags)}]")
        if args.check_no_traffic:
            return self._add(name, WARN, f"the capture on {args.source} opens; no client traffic seen "
                             "(skipped: --check-no-traffic)")
        return self._add(name, FAIL, f"capture sees nothing on {args.source} for {what} in {wait:g} s "
                         f"(filter {bpf!r}): is client traffic arriving on this interface? (pick the "
                         "right -i; traffic to a local address only?)")

    def _capture_file(self, bpf: str, what: str) -> bool:
        name = f"capture file {self.args.source}"
        try:
            with open_capture(self.args.source, bpf, skip_truncated=True) as frames:
                for number, frame in enumerate(frames):
                    if number >= OFFLINE_SCAN:
                        break
                    try:
                        packet = pk.decode_frame(frame.data, frames.linktype, headers_only=True)
                    except pk.PacketError:
                        continue
                    self.client_seen = _addr(packet.src)
                    return self._add(name, OK, f"the file holds client packets for {what}, e.g. "
                                     f"{_endpoint_text(packet.src, packet.sport)} > "
                                     f"{_endpoint_text(packet.dst, packet.dport)} [{pk.flags_text(packet.flags)}]")
        except (CaptureFileError, CaptureError, OSError) as exc:
            return self._add(name, FAIL, f"cannot read {self.args.source}: {exc}")
        return self._add(name, FAIL, f"no packet in {self.args.source} matches {what} (filter {bpf!r}): "
                         "is it the right file, and the right online port in -x?")

    # ------------------------------------------------------------------ 2. intercepts

    def _intercepts(self) -> bool:
        failures = []
        for address in self.args.intercepts:
            link, status, detail = self._greet(address)
            if link is not None:
                self.links.append(link)
                self._add(f"intercept {address}", OK, detail)
            else:
                failures.append((address, status, detail))
        for address, status, detail in failures:
            if self.args.lonely and self.links:
                self._add(f"intercept {address}", WARN, f"{detail} (-L: the copy would go on without it)")
            else:
                return self._add(f"intercept {address}", FAIL, detail)
        return True

    def _greet(self, address: InterceptAddress):
        """(link, None, detail) when the intercept answered our HELLO, else (None, FAIL, why)."""
        fix = "is intercept running there and the port open?"
        try:
            with socket.create_connection((address.host, address.port), timeout=CONNECT_WAIT):
                pass
        except ConnectionRefusedError:
            return None, FAIL, (f"intercept {address} does not answer: nothing listens on {address} "
                                f"(connection refused): {fix}")
        except OSError as exc:
            why = (f"no answer to a TCP connection in {CONNECT_WAIT:g} s" if isinstance(exc, TimeoutError)
                   else f"a TCP connection fails: {_os_error(exc)}")
            if _neighbour(address.host) == "incomplete":
                why += f"; {address.host} does not answer ARP on this host's link"
            return None, FAIL, (f"intercept {address} does not answer: {why}: {fix} "
                                "(a wrong address, or a firewall between?)")
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTING_ID, wire.new_routing_id())
        sock.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(wire.OWNER_TAKES_FROM_INTERCEPT))
        keys = getattr(self.args, "keys", None)
        if keys is not None:
            connect_with_keys(sock, keys)
        if ":" in address.host:
            sock.setsockopt(zmq.IPV6, 1)
        sock.connect(address.zmq_endpoint)
        sock.send(wire.encode_hello(wire.Hello("owner", self.identity, self.instance)))
        deadline = time.monotonic() + HELLO_WAIT
        while (left := deadline - time.monotonic()) > 0:
            if not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                continue
            frame = sock.recv()
            try:
                kind, body = wire.decode(frame)
            except wire.WireError as exc:
                sock.close(linger=0)
                return None, FAIL, (f"something else listens on {address}: {exc} "
                                    "(point -s at intercept's host and -p port)")
            if kind != wire.HELLO:
                continue
            if body.role != "intercept":
                sock.close(linger=0)
                return None, FAIL, (f"something else listens on {address}: a tcpcopy {body.role} "
                                    f"({wire.printable(body.identity)}), not an intercept: "
                                    "point -s at intercept's port")
            sock.setsockopt(zmq.LINGER, 500)   # UNREGISTER and BYE must still leave at the end
            return _Link(address, sock, body.identity), None, f"answers as {wire.printable(body.identity)}"
        sock.close(linger=0)
        return None, FAIL, (f"intercept {address} does not answer: a TCP connection to it succeeds but "
                            f"no intercept HELLO came within {HELLO_WAIT:g} s: {fix} "
                            f"(something else may listen on {address}; {_keys_advice(keys)})")

    # ------------------------------------------------------------------ 3. the probe

    def _client_address(self) -> str | None:
        args = self.args
        if args.check_client_ip:
            return args.check_client_ip
        if args.client_pool:
            return args.client_pool[0]
        if self.client_seen:
            return self.client_seen
        self._add("probe", FAIL, "no client address for the probe: the probe's SYN must come from an "
                  "address the target routes to the assistant; give -c (its first address is used) "
                  "or --check-client-ip IP, or run the check while client traffic arrives "
                  "(the address of a captured client is used)")
        return None

    def _probe(self, client: str, target_ip: str, target_port: int, mapping: Mapping) -> bool:
        name = f"probe {_endpoint_text(_pack(target_ip), target_port)}"
        if (":" in client) != (":" in target_ip):
            return self._add(name, FAIL, f"the probe's client address {client} and the target {target_ip} "
                             "differ in IP version: give --check-client-ip of the target's version")
        try:
            if self.sender is None:
                self.sender = DualSender()
        except RawSendError as exc:
            return self._add(name, FAIL, f"the SYN cannot be sent: {exc}")
        port = PROBE_PORTS[0] + 2 * secrets.randbelow((PROBE_PORTS[1] - PROBE_PORTS[0]) // 2 + 1)
        endpoint = Endpoint(_pack(client), port, _pack(target_ip), target_port)
        session = Session(endpoint, SessionConfig(fake_syn_mss=self.args.mss), SessionStats())
        probe = _Probe(endpoint, session, list(self.links), client, target_ip)
        self.probes.append(probe)
        key = (endpoint.client_ip, endpoint.client_port, endpoint.target_ip, endpoint.target_port)
        for link in probe.links:
            link.socket.send(wire.encode_register([key]))
        time.sleep(0.02)   # REGISTER first (intercept also holds a SYN-ACK that beats it for 2 s)

        observer = _Observer.open("any", _probe_filter(client, port, target_ip, target_port))
        sent_before, failed_before = self.sender.sent, dict(self.sender.failed)
        online = _pack(mapping.online_ip) if mapping.online_ip else endpoint.target_ip
        isn = secrets.randbits(32)
        client_syn = pk.build(endpoint.client_ip, online, port, mapping.online_port, isn, 0, pk.SYN, 65535,
                              options=pk.opt_mss(self.args.mss))
        start = time.monotonic()
        session.handle_client(client_syn, 0.0)
        self._send(session)
        try:
            self._wait_answer(probe, observer, start)
        finally:
            if observer is not None:
                observer.poll()
                observer.close()
        sent = self.sender.sent - sent_before
        failed = {k: v - failed_before.get(k, 0) for k, v in self.sender.failed.items()
                  if v - failed_before.get(k, 0)}
        answer = probe.answer
        via = f"through intercept {probe.answered_by}"
        what = f"the SYN from {_endpoint_text(endpoint.client_ip, port)}"
        if answer is not None and answer.flags & pk.RST:
            return self._add(name, FAIL, f"the target answered RST: nothing listens on "
                             f"{_endpoint_text(endpoint.target_ip, target_port)} ({what} reached it, the RST "
                             f"came back {via}): start the service under test there, or fix the target "
                             "port in -x")
        if answer is not None:
            kind = "SYN-ACK" if answer.flags & pk.SYN else f"[{pk.flags_text(answer.flags)}]"
            return self._add(name, OK, f"{what} reached the target and its {kind} came back {via} "
                             f"in {probe.elapsed * 1000:.0f} ms")
        return self._add(name, FAIL, self._diagnose(probe, observer, sent, failed))

    def _send(self, session: Session) -> None:
        for raw in session.take_packets():
            self.sender.send(raw)

    def _wait_answer(self, probe: _Probe, observer, start: float) -> None:
        """Until the probe's answer comes through an intercept or PROBE_WAIT passes; the
        engine retransmits the SYN on its own timer meanwhile."""
        poller = zmq.Poller()
        for link in probe.links:
            poller.register(link.socket, zmq.POLLIN)
        by_socket = {link.socket: link for link in probe.links}
        ep = probe.endpoint
        while (now := time.monotonic() - start) < PROBE_WAIT:
            deadline = probe.session.next_deadline()
            wait = min(PROBE_WAIT - now, 0.05, max(0.0, (deadline or PROBE_WAIT) - now))
            for sock, _event in poller.poll(int(wait * 1000) + 1):
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        kind, body = wire.decode(frame)
                    except wire.WireError:
                        continue
                    if kind != wire.RESPONSES:
                        continue
                    for record in body:
                        try:
                            answer = pk.decode(record, headers_only=True)
                        except pk.PacketError:
                            continue
                        if (answer.src == ep.target_ip and answer.sport == ep.target_port
                                and answer.dst == ep.client_ip and answer.dport == ep.client_port):
                            probe.answer = answer
                            probe.answered_by = str(by_socket[sock].address)
                            probe.elapsed = time.monotonic() - start
                            return
            if observer is not None:
                observer.poll()
            now = time.monotonic() - start
            deadline = probe.session.next_deadline()
            if deadline is not None and now >= deadline:
                probe.session.handle_timer(now)
                self._send(probe.session)

    def _diagnose(self, probe: _Probe, observer, sent: int, failed: dict) -> str:
        """Why nothing came back through intercept, as far as this host can tell."""
        ep = probe.endpoint
        client, target = probe.client, probe.target
        target_text = _endpoint_text(ep.target_ip, ep.target_port)
        client_ep = _endpoint_text(ep.client_ip, ep.client_port)
        syn = f"the SYN from {client_ep}"
        net = _client_net(client)
        none = f"no answer reached intercept within {PROBE_WAIT:g} s"
        # (a) the SYN does not leave this host
        if failed and not sent:
            return f"{none}: {syn} did not leave this host: {_send_failure(failed, target, ep.target_port)}"
        # (a) refused on the way, with an ICMP error quoting the SYN
        icmp = observer.icmp_about(ep) if observer is not None else None
        if icmp is not None:
            return (f"{none}: {syn} is refused on the way to the target: {icmp.describe()}: "
                    f"{_icmp_fix(icmp, target_text)}")
        # (b) the target answered, but here instead of to the assistant
        back = observer.answer_here(ep) if observer is not None else None
        if back is not None:
            kind = "RST" if back.flags & pk.RST else "SYN-ACK" if back.flags & pk.SYN else "answer"
            extra = f" (and the RST says nothing listens on {target_text})" if back.flags & pk.RST else ""
            return (f"{none}: the target answered{extra}, but its {kind} came back to this host instead "
                    f"of going to the assistant: on the target, route {net} via the assistant "
                    f"({_route_hint(net, self.args.intercepts)})")
        # A plain connection from this host's own address tells the target's state apart.
        state, source, detail = _plain_connect(target, ep.target_port)
        unreachable = (f"{none}: {syn} does not reach the target: it does not answer this host at all "
                       f"({detail}): check the target address in -x, that the target is up, and the "
                       "firewalls and routes between this host and it")
        if observer is not None and not observer.syn_seen(ep) and sent:
            if state == "unreachable":
                return unreachable
            return (f"{none}: {syn} was sent without error but never seen leaving this host: a traffic "
                    "control (tc) or XDP rule, or a route into a tunnel, swallows it: check "
                    f"'ip route get {target} from {client}' and the egress rules")
        seen = "" if observer is None else " (and no ICMP error or answer came back here)"
        if state == "refused":
            return (f"{none}: nothing listens on {target_text} (a connection from this host's address "
                    f"{source} was refused), and the target's RST to {client_ep} did not reach intercept "
                    f"either: start the service under test; then, if the probe still fails, route {net} "
                    f"via the assistant on the target ({_route_hint(net, self.args.intercepts)}), turn "
                    "rp_filter off there, and check intercept's -F matches src port "
                    f"{ep.target_port}")
        if state == "unreachable":
            return unreachable
        checks = [f"on the target, route {net} via the assistant ({_route_hint(net, self.args.intercepts)})"]
        if ":" not in client:
            checks.append("on the target, turn rp_filter off (sysctl -w net.ipv4.conf.all.rp_filter=0 and "
                          "net.ipv4.conf.<its interface facing this host>.rp_filter=0): strict rp_filter "
                          f"drops SYNs from {net} when it routes {net} elsewhere")
        checks.append(f"on the assistant, ip_forward=0 and intercept's -F matching src host {target} and "
                      f"src port {ep.target_port}, capturing on the interface facing the target")
        checks.append(f"no firewall (iptables/nftables) or cloud anti-spoofing on the target drops "
                      f"packets from {net}")
        numbered = "; ".join(f"({i}) {check}" for i, check in enumerate(checks, 1))
        return (f"{none}: between the SYN leaving here and intercept: {syn} left this host{seen} and the "
                f"target accepts connections from this host's own address {source}, so either the SYN was "
                "dropped at the target (not answered) or the target's SYN-ACK never reached intercept. "
                f"Check in order: {numbered}")

    # ------------------------------------------------------------------ 4. the assistant

    def _assistants(self, client: str) -> None:
        hosts = dict.fromkeys(link.address.host for link in self.links)
        for host in hosts:
            status, detail = _forwarding_check(host, client)
            self._add(f"assistant {host}", status, detail)
            if status == FAIL:
                return

    # ------------------------------------------------------------------ 5. cleanup

    def _cleanup(self) -> None:
        notes = []
        for probe in self.probes:
            probe.session.abort(PROBE_WAIT, "check done")
            packets = probe.session.take_packets()
            sent = all(self.sender.send(raw) for raw in packets) if self.sender else False
            key = (probe.endpoint.client_ip, probe.endpoint.client_port,
                   probe.endpoint.target_ip, probe.endpoint.target_port)
            for link in probe.links:
                try:
                    link.socket.send(wire.encode_unregister([key]), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            conn = (f"{_endpoint_text(probe.endpoint.client_ip, probe.endpoint.client_port)} > "
                    f"{_endpoint_text(probe.endpoint.target_ip, probe.endpoint.target_port)}")
            notes.append((sent and bool(packets), f"RST {'sent' if sent and packets else 'NOT sent'} for "
                          f"{conn}; unregistered at {', '.join(str(l.address) for l in probe.links)}"))
        for link in self.links:
            try:
                link.socket.send(wire.encode_bye("check done"), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            link.socket.close(linger=500)
        if self.sender is not None:
            self.sender.close()
        self.context.term()
        if notes:
            status = OK if all(ok for ok, _ in notes) else WARN
            self._add("cleanup", status, "; ".join(text for _, text in notes))


# ---------------------------------------------------------------------- observing this host


class _Observer:
    """A capture on this host, watching for what the probe causes: its own packet leaving,
    answers coming here, ICMP errors quoting it."""

    def __init__(self, handle):
        self.handle = handle
        self.linktype = handle.datalink()
        self.tcp: list[pk.Packet] = []
        self.icmp: list[IcmpError] = []

    @classmethod
    def open(cls, device: str, bpf: str) -> "_Observer | None":
        try:
            return cls(open_live(device, bpf, snaplen=256, buffer_bytes=1 << 20, promisc=False))
        except CaptureError:
            return None   # the diagnosis goes on with less to go by

    def fileno(self) -> int:
        return self.handle.fileno()

    def poll(self) -> None:
        def each(_ts, frame):
            try:
                ip = bytes(frame[pk.ip_offset(frame, self.linktype):])
            except pk.PacketError:
                return
            icmp = parse_icmp_error(ip)
            if icmp is not None:
                self.icmp.append(icmp)
                return
            try:
                self.tcp.append(pk.decode(ip, headers_only=True))
            except pk.PacketError:
                pass

        try:
            self.handle.dispatch(-1, each)
        except OSError:
            pass

    def close(self) -> None:
        self.handle.close()

    def syn_seen(self, ep: Endpoint) -> bool:
        return any(p.src == ep.client_ip and p.sport == ep.client_port and p.dst == ep.target_ip
                   and p.dport == ep.target_port and p.flags & pk.SYN for p in self.tcp)

    def answer_here(self, ep: Endpoint) -> pk.Packet | None:
        for p in self.tcp:
            if (p.src == ep.target_ip and p.sport == ep.target_port and p.dst == ep.client_ip
                    and p.dport == ep.client_port):
                return p
        return None

    def icmp_about(self, ep: Endpoint) -> IcmpError | None:
        for icmp in self.icmp:
            if (icmp.src == ep.client_ip and icmp.dst == ep.target_ip and icmp.sport == ep.client_port
                    and icmp.dport == ep.target_port):
                return icmp
        return None


def _first_packet(handle, wait: float) -> pk.Packet | None:
    """The first decodable packet the handle delivers within ``wait`` seconds."""
    linktype = handle.datalink()
    found: list[pk.Packet] = []
    deadline = time.monotonic() + wait
    fd = handle.fileno()
    while True:
        dispatch(handle, linktype, lambda packet: found.append(packet), headers_only=True)
        left = deadline - time.monotonic()
        if found or left <= 0:
            return found[0] if found else None
        select.select([fd], [], [], min(left, 0.1))


# ---------------------------------------------------------------------- the assistant


def _forwarding_check(host: str, client: str) -> tuple[str, str]:
    """(status, detail): does the assistant ``host`` forward a packet addressed to ``client``?"""
    not_checked = f"make sure it has net.ipv4.ip_forward=0 (it must drop the target's answers to {client})"
    if ":" in host or ":" in client:
        return WARN, (f"forwarding not checked (IPv6): make sure it has net.ipv6.conf.all.forwarding=0 "
                      f"(it must drop the target's answers to {client})")
    neighbour = _arp_entry(host)
    if neighbour is None:
        return WARN, (f"forwarding not checked: {host} is not on this host's link (no neighbour entry), "
                      f"so a packet cannot be handed to it directly: {not_checked}")
    mac, device = neighbour
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.connect((host, 9))
            source = udp.getsockname()[0]
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    except OSError as exc:
        return WARN, f"forwarding not checked ({_os_error(exc)}): {not_checked}"
    observer = None
    try:
        raw.bind((device, 0))
        info = raw.getsockname()
        if info[3] != 1 or len(info[4]) != 6:   # ARPHRD_ETHER
            return WARN, f"forwarding not checked: {device} is not Ethernet: {not_checked}"
        observer = _Observer.open(device, f"icmp and dst host {source}")
        if observer is None:
            return WARN, f"forwarding not checked: cannot capture on {device}: {not_checked}"
        sport = 40001 + 2 * secrets.randbelow(5000)
        dport = 20001 + 2 * secrets.randbelow(6000)
        packet = pk.build(_pack(source), _pack(client), sport, dport, secrets.randbits(32), 0, pk.ACK,
                          0, ttl=1)
        frame = mac + info[4] + b"\x08\x00" + packet.to_bytes()
        start = time.monotonic()
        for n in range(FORWARD_PROBES):
            raw.send(frame)
            until = start + (n + 1) * FORWARD_GAP if n + 1 < FORWARD_PROBES else start + FORWARD_WAIT
            while time.monotonic() < until:
                select.select([observer.fileno()], [], [], max(0.0, until - time.monotonic()))
                observer.poll()
                icmp = next((i for i in observer.icmp if i.dst == _pack(client) and i.sport == sport
                             and i.dport == dport), None)
                if icmp is not None:
                    return FAIL, (f"the assistant {host} forwards packets instead of dropping them "
                                  f"(ip_forward=1): a TTL-1 packet for {client} handed to it on {device} "
                                  f"drew {icmp.describe()}; it forwards the target's answers to replayed "
                                  "clients toward the real clients (which reset those connections) or "
                                  "bounces them with ICMP errors, instead of dropping them after intercept "
                                  "saw them: set net.ipv4.ip_forward=0 on the assistant")
    except OSError as exc:
        return WARN, f"forwarding not checked ({_os_error(exc)}): {not_checked}"
    finally:
        raw.close()
        if observer is not None:
            observer.close()
    return OK, (f"drops packets for {client} (ip_forward=0: a TTL-1 packet for {client} handed to it on "
                f"{device} drew no ICMP)")


def _arp_lines() -> list[list[str]]:
    try:
        with open("/proc/net/arp") as table:
            return [line.split() for line in table.read().splitlines()[1:]]
    except OSError:
        return []


def _neighbour(host: str) -> str | None:
    """"complete" or "incomplete" for an IPv4 neighbour entry of ``host``, None without one."""
    for fields in _arp_lines():
        if len(fields) >= 6 and fields[0] == host:
            return "complete" if int(fields[2], 16) & 0x2 else "incomplete"
    return None


def _arp_entry(host: str) -> tuple[bytes, str] | None:
    """(MAC, device) of a complete IPv4 neighbour entry for ``host``."""
    for fields in _arp_lines():
        if len(fields) >= 6 and fields[0] == host and int(fields[2], 16) & 0x2:
            try:
                mac = bytes.fromhex(fields[3].replace(":", ""))
            except ValueError:
                continue
            if len(mac) == 6 and any(mac):
                return mac, fields[5]
    return None


# ---------------------------------------------------------------------- helpers


def _plain_connect(target: str, port: int) -> tuple[str, str, str]:
    """A normal TCP connection from this host: ("open"|"refused"|"unreachable", source, detail)."""
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(CONNECT_WAIT)
    try:
        sock.connect((target, port))
        return "open", sock.getsockname()[0], "accepted"
    except ConnectionRefusedError:
        return "refused", _source_towards(target), "refused"
    except TimeoutError:
        detail = f"a connection from {_source_towards(target)} to {target}:{port} got no answer in {CONNECT_WAIT:g} s"
    except OSError as exc:
        detail = f"a connection to {target}:{port} fails: {_os_error(exc)}"
    finally:
        sock.close()
    if _neighbour(target) == "incomplete":
        detail += f"; {target} does not answer ARP on this host's link: is it up, and is the address right?"
    return "unreachable", _source_towards(target), detail


def _source_towards(target: str) -> str:
    try:
        with socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.connect((target, 9))
            return udp.getsockname()[0]
    except OSError:
        return "?"


def _send_failure(failed: dict, target: str, port: int) -> str:
    names = ", ".join(f"{name} x{count}" for name, count in sorted(failed.items()))
    if "EPERM" in failed or "EACCES" in failed:
        return (f"the raw send failed ({names}): a firewall rule on this host (iptables/nftables OUTPUT) "
                "or a full conntrack table refuses the replayed packets: allow them, or keep them out of "
                f"conntrack (iptables -t raw -A OUTPUT -p tcp -d {target} --dport {port} -j NOTRACK) and "
                "compare nf_conntrack_count with nf_conntrack_max")
    if "ENETUNREACH" in failed or "EHOSTUNREACH" in failed:
        return f"the raw send failed ({names}): this host has no route to {target}: check 'ip route get {target}'"
    return f"the raw send failed ({names})"


def _icmp_fix(icmp: IcmpError, target_text: str) -> str:
    if (icmp.version, icmp.type) in ((4, 3), (6, 1)) and icmp.code in ((9, 10, 13) if icmp.version == 4 else (1,)):
        return f"a firewall at {icmp.sender} rejects the replayed packets: allow them to {target_text}"
    if (icmp.version, icmp.type) in ((4, 11), (6, 3)):
        return f"a routing loop or too many hops toward {target_text}: check the routes at {icmp.sender}"
    if (icmp.version, icmp.type, icmp.code) == (4, 3, 4) or (icmp.version, icmp.type) == (6, 2):
        return "the path's MTU is smaller than the SYN: check the MTU settings between this host and the target"
    return f"{icmp.sender} cannot deliver to {target_text}: check the target address in -x and the routes to it"


def _route_hint(net: str, intercepts) -> str:
    host = intercepts[0].host if intercepts else "ASSISTANT"
    return f"ip route add {net} via ASSISTANT, the assistant's address on the target's network; intercept is at {host}"


def _client_net(client: str) -> str:
    prefix = 64 if ":" in client else 24
    return str(ipaddress.ip_network(f"{client}/{prefix}", strict=False))


def _probe_filter(client: str, port: int, target: str, target_port: int) -> str:
    out = f"src host {client} and src port {port} and dst host {target} and dst port {target_port}"
    back = f"src host {target} and src port {target_port} and dst host {client} and dst port {port}"
    return f"(tcp and (({out}) or ({back}))) or icmp or icmp6"


def _targets(mappings) -> list[tuple[str, int, Mapping]]:
    seen, out = set(), []
    for m in mappings:
        if (m.target_ip, m.target_port) not in seen:
            seen.add((m.target_ip, m.target_port))
            out.append((m.target_ip, m.target_port, m))
    return out


def _mappings_text(mappings) -> str:
    def host(ip):
        return f"[{ip}]" if ":" in ip else ip
    return ",".join(f"{host(m.online_ip) + ':' if m.online_ip else ''}{m.online_port}-"
                    f"{host(m.target_ip)}:{m.target_port}" for m in mappings)


def _pack(ip: str) -> bytes:
    return ipaddress.ip_address(ip).packed


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(bytes(raw)))


def _endpoint_text(raw: bytes, port: int) -> str:
    text = _addr(raw)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def _os_error(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0)
    return f"{name}: {exc.strerror}" if name and exc.strerror else str(exc) or type(exc).__name__


# ---------------------------------------------------------------------- the command


def run_check(args: argparse.Namespace, out=None) -> int:
    """``tcpcopy --check``: print each step (or, with --json, a JSON list of them); 0 when
    nothing failed, 1 when a hop failed."""
    out = out or sys.stdout
    as_json = args.check_json

    def echo(step: Step) -> None:
        print(step.line(), file=out, flush=True)

    doctor = Doctor(args, None if as_json else echo)
    steps = doctor.run()
    if as_json:
        print(json.dumps([step.as_dict() for step in steps], indent=2), file=out, flush=True)
    else:
        failed = next((step for step in steps if step.status == FAIL), None)
        print(f"result: FAIL at {failed.name}" if failed else "result: ok, every hop works", file=out, flush=True)
    return 1 if doctor.failed() else 0


def _keys_advice(keys) -> str:
    """Why a reachable intercept may stay silent: the two sides disagree about keys."""
    if keys is None:
        return "an intercept started with --key refuses a copier without --server-key and --key"
    return ("with keys: --server-key must be the intercept's public key and this copier's public key must "
            "be in its --allow-keys directory (intercept logs each peer it refuses)")
