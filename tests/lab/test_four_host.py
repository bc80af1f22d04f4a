"""The four-host lab: client, online server, target and the assistant's black hole.

The central check is the advanced architecture's routing: a packet replayed from the online
host with the real client's address reaches the target; the target's answer goes to the
assistant (where intercept captures it) and dies there without RST or ICMP, and the real
client never sees it.
"""

from __future__ import annotations

import errno
import multiprocessing
import shutil
import socket
import time

import pytest

from tcpcopy.lab.netns import (
    ASSISTANT,
    ASSISTANT_ADDRESS,
    ASSISTANT_TARGET_SIDE,
    CLIENT,
    CLIENT_ADDRESS,
    ONLINE,
    ONLINE_ADDRESS,
    ONLINE_CONTROL_SIDE,
    TARGET,
    TARGET_ADDRESS,
    TOPOLOGIES,
    Lab,
    LabError,
    four_host_topology,
)
from tcpcopy.lab.servers import INDEX_HTML, Greeter, Nginx

TARGET_PORT = 8080
CONTROL_PORT = 36524
CLIENT_PORT = 40001
HOSTS = (CLIENT, ONLINE, TARGET, ASSISTANT)


def sysctl(lab: Lab, host: str, *keys: str) -> list[str]:
    return lab.run(host, ["sysctl", "-n", *keys]).stdout.split()


# --------------------------------------------------------------------------- layout


def test_four_host_is_a_cli_topology() -> None:
    assert TOPOLOGIES["four-host"] is four_host_topology
    assert [h.name for h in four_host_topology().hosts] == list(HOSTS)


@pytest.mark.lab
def test_addresses_routes_and_sysctls(lab: Lab) -> None:
    assert lab.address(CLIENT) == CLIENT_ADDRESS and lab.address(ONLINE) == ONLINE_ADDRESS
    assert lab.addresses(TARGET) == ["198.18.0.2/24", "198.18.4.2/24"]
    assert lab.addresses(ASSISTANT) == ["198.18.2.1/24", "198.18.4.1/24"]
    target_routes = lab.run(TARGET, ["ip", "route"]).stdout
    assert "198.18.1.0/24 via 198.18.4.1" in target_routes
    assert "198.18.3.0/24 via 198.18.4.1" in target_routes
    for host in HOSTS:
        routes = lab.run(host, ["ip", "route"]).stdout
        assert "default" not in routes, f"{host} has a default route: {routes}"
    assert "198.18.1." not in lab.run(ASSISTANT, ["ip", "route"]).stdout, "the assistant must not reach clients"
    assert sysctl(lab, ONLINE, "net.ipv4.ip_forward") == ["0"]
    assert sysctl(lab, ASSISTANT, "net.ipv4.ip_forward") == ["0"]
    for host, devices in ((TARGET, ("to-online", "to-assistant")), (ONLINE, ("to-client", "to-target"))):
        keys = [f"net.ipv4.conf.{scope}.rp_filter" for scope in ("all", "default", *devices)]
        assert sysctl(lab, host, *keys) == ["0"] * len(keys), host


@pytest.mark.lab
@pytest.mark.skipif(shutil.which("ethtool") is None, reason="ethtool is missing: apt-get install ethtool")
def test_every_veth_offloads_as_a_real_host_does(lab: Lab) -> None:
    for host in HOSTS:
        for device in lab.topology.devices(host):
            features = lab.run(host, ["ethtool", "-k", device]).stdout
            for feature in ("generic-receive-offload", "tcp-segmentation-offload", "tx-checksumming"):
                assert f"{feature}: on" in features, (host, device, feature)


# --------------------------------------------------------------------------- reachability


@pytest.mark.lab
def test_client_reaches_the_online_server_and_nothing_behind_it(lab: Lab) -> None:
    with Nginx(lab, ONLINE, ONLINE_ADDRESS, 80) as web:
        body = lab.run(CLIENT, ["curl", "-sS", "--max-time", "5", web.url("/index.html")]).stdout
        assert body == INDEX_HTML.decode()
        assert web.access_log_entries()[0]["remote_addr"] == CLIENT_ADDRESS
    for behind in (TARGET_ADDRESS, ASSISTANT_ADDRESS):
        assert lab.call(CLIENT, connect_errno, behind, 80, timeout=10) == errno.ENETUNREACH, behind


@pytest.mark.lab
def test_online_opens_the_control_channel_to_the_assistant(lab: Lab) -> None:
    with Greeter(lab, ASSISTANT, ASSISTANT_ADDRESS, CONTROL_PORT) as channel:
        greeting = lab.call(ONLINE, read_greeting, ASSISTANT_ADDRESS, CONTROL_PORT, timeout=10)
        time.sleep(0.05)
        entries = channel.log_entries()
    assert greeting.startswith(b"220 ")
    assert entries and {e.peer_addr for e in entries} == {ONLINE_CONTROL_SIDE}


def connect_errno(address: str, port: int) -> int:
    """Runs inside a host: the errno of a TCP connect to address:port (0 if it succeeds)."""
    with socket.socket() as conn:
        conn.settimeout(2)
        return conn.connect_ex((address, port))


def read_greeting(address: str, port: int) -> bytes:
    """Runs inside a host: connect, read the first line, close."""
    with socket.create_connection((address, port), timeout=3) as conn:
        return conn.makefile("rb").readline()


# --------------------------------------------------------------------------- the black hole


def watch(dev: str, ready: multiprocessing.synchronize.Event, seconds: float) -> list[tuple]:
    """Runs inside a host: every TCP segment and ICMP message on ``dev`` for ``seconds``.

    (src, sport, dst, dport, flags) per segment, ("icmp", type, src, dst, "") per ICMP.
    """
    import select

    import pcap
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.l2 import Ether

    handle = pcap.pcap(name=dev, promisc=True, immediate=True, timeout_ms=50)
    handle.setfilter("tcp or icmp")
    handle.setnonblock(True)
    ready.set()
    seen: list[tuple] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        select.select([handle.fileno()], [], [], 0.05)
        for _ts, frame in handle.readpkts():
            packet = Ether(bytes(frame))
            if TCP in packet:
                ip, tcp = packet[IP], packet[TCP]
                seen.append((ip.src, tcp.sport, ip.dst, tcp.dport, str(tcp.flags)))
            elif ICMP in packet:
                seen.append(("icmp", packet[ICMP].type, packet[IP].src, packet[IP].dst, ""))
    return seen


def send_as_client(flags: str, seq: int) -> None:
    """Runs inside the online host: one segment from the real client's address to the target."""
    from scapy.layers.inet import IP, TCP

    segment = IP(src=CLIENT_ADDRESS, dst=TARGET_ADDRESS) / TCP(
        sport=CLIENT_PORT, dport=TARGET_PORT, flags=flags, seq=seq, window=64240 if flags == "S" else 0)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        raw.sendto(bytes(segment), (TARGET_ADDRESS, 0))


@pytest.mark.lab
def test_target_answers_a_replayed_client_only_through_the_assistant(lab: Lab) -> None:
    isn = 2_000_000
    events = multiprocessing.get_context("fork")
    with Nginx(lab, TARGET, TARGET_ADDRESS, TARGET_PORT):
        ready = [events.Event(), events.Event()]
        at_assistant = lab.spawn(ASSISTANT, watch, lab.interface(ASSISTANT, TARGET), ready[0], 1.5)
        at_client = lab.spawn(CLIENT, watch, lab.interface(CLIENT), ready[1], 1.5)
        if not all(event.wait(5) for event in ready):
            raise LabError("the captures did not start within 5 s")
        try:
            lab.call(ONLINE, send_as_client, "S", isn)
            assistant_saw, client_saw = at_assistant.result(10), at_client.result(10)
        finally:
            lab.call(ONLINE, send_as_client, "R", isn + 1)  # clear the target's half-open connection
    syn_acks = [s for s in assistant_saw if s[4] == "SA"]
    assert syn_acks, f"no SYN-ACK reached the assistant; it saw {assistant_saw}"
    assert syn_acks[0][:4] == (TARGET_ADDRESS, TARGET_PORT, CLIENT_ADDRESS, CLIENT_PORT)
    from_assistant = [s for s in assistant_saw if s[0] == "icmp" or s[0] == ASSISTANT_TARGET_SIDE or "R" in s[4]]
    assert not from_assistant, f"the assistant answered (RST or ICMP): {from_assistant}"
    assert client_saw == [], f"the real client saw the target's answers: {client_saw}"
