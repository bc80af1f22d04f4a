"""The namespace lab itself, nginx in it, and the black-hole path the copier relies on.

The black-hole test is the first real-kernel check of the architecture: the copier sends a
SYN from a fake client address through a raw socket; the target answers it via its route to
the fake client network, which points at the copier; the copier (ip_forward=0) must see the
SYN-ACK on its veth, where pcap captures it, and its kernel must drop it without an RST.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tcpcopy.lab.netns import (
    COPIER,
    COPIER_ADDRESS,
    TARGET,
    TARGET_ADDRESS,
    Host,
    Lab,
    LabError,
    Nic,
    Route,
    Topology,
    die_with_parent,
    link,
    list_namespaces,
    remove_stale,
    two_host,
)
from tcpcopy.lab.netns import main as lab_main
from tcpcopy.lab.servers import INDEX_HTML, Nginx, big_bin

pytestmark = pytest.mark.lab

FAKE_CLIENT = "198.18.3.7"
FAKE_CLIENT_PORT = 40000
NGINX_PORT = 8080


def fresh_tag() -> str:
    return "t" + secrets.token_hex(3)


def namespaces_of(tag: str) -> list[str]:
    return list_namespaces(f"tcl-{tag}-")


def root_namespace_snapshot() -> tuple[str, str, str]:
    """Links, addresses and routes of the namespace the tests run in (must never change)."""
    def ip(*args: str) -> str:
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout
    links = "\n".join(sorted(line.split(":")[1].strip() for line in ip("-o", "link").splitlines()))
    return links, ip("-o", "addr"), ip("route") + ip("-6", "route")


def as_child_of(parent_pid: int) -> None:
    """preexec_fn: Python's default SIGINT handling even under a shell that ignores SIGINT,
    and SIGTERM (so the child's lab teardown runs) if the test process dies."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent(parent_pid)


def is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --------------------------------------------------------------------------- (a) life cycle


def test_lab_comes_up_and_goes_down_leaving_nothing(lab_required: None) -> None:
    before = root_namespace_snapshot()
    tag = fresh_tag()
    with two_host(tag) as lab:
        assert namespaces_of(tag) == [f"tcl-{tag}-{COPIER}", f"tcl-{tag}-{TARGET}"]
        assert f"{COPIER_ADDRESS}/24" in lab.run(COPIER, ["ip", "-o", "addr", "show", "to-target"]).stdout
        assert "198.18.3.0/24 via 198.18.0.1" in lab.run(TARGET, ["ip", "route"]).stdout
        assert lab.run(COPIER, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
        rp = lab.run(TARGET, ["sysctl", "-n", "net.ipv4.conf.all.rp_filter",
                              "net.ipv4.conf.default.rp_filter", "net.ipv4.conf.to-copier.rp_filter"])
        assert rp.stdout.split() == ["0", "0", "0"]
        for host in (COPIER, TARGET):
            assert "LOOPBACK,UP" in lab.run(host, ["ip", "link", "show", "lo"]).stdout
        assert root_namespace_snapshot() == before, "building the lab changed the root namespace"
    assert namespaces_of(tag) == []
    assert root_namespace_snapshot() == before


@pytest.mark.skipif(shutil.which("ethtool") is None, reason="ethtool is missing: apt-get install ethtool")
def test_offloads_are_those_of_a_real_host(two_host_lab: Lab) -> None:
    features = two_host_lab.run(COPIER, ["ethtool", "-k", "to-target"]).stdout
    for feature in ("generic-receive-offload", "generic-segmentation-offload",
                    "tcp-segmentation-offload", "tx-checksumming", "rx-checksumming"):
        assert f"{feature}: on" in features


def test_lab_goes_down_when_the_body_raises(lab_required: None) -> None:
    tag = fresh_tag()
    with pytest.raises(RuntimeError, match="boom"):
        with two_host(tag) as lab:
            lab.popen(TARGET, ["sleep", "60"])
            raise RuntimeError("boom")
    assert namespaces_of(tag) == []


def test_failed_build_removes_what_it_made_and_down_is_idempotent(lab_required: None) -> None:
    tag = fresh_tag()
    broken = Topology(
        hosts=(Host("one"), Host("two", sysctls={"net.ipv4.conf.nosuchdev.rp_filter": 0})),
        links=(link("one", "198.18.0.1/24", "two", "198.18.0.2/24"),),
    )
    lab = Lab(broken, tag)
    with pytest.raises(LabError, match="nosuchdev"):
        lab.up()
    assert namespaces_of(tag) == []
    lab.down()
    lab.down()


def test_down_stops_started_and_stray_processes(lab_required: None) -> None:
    with two_host(fresh_tag()) as lab:
        started = lab.popen(TARGET, ["sleep", "60"])
        # A process the lab did not record, left behind inside a host.
        stray = lab.run(COPIER, ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"]).stdout.strip()
    assert started.poll() is not None
    assert is_gone(int(stray))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_process_tears_its_lab_down(lab_required: None, sig: signal.Signals) -> None:
    tag = fresh_tag()
    code = (
        "import time\n"
        "from tcpcopy.lab.netns import two_host\n"
        "from tcpcopy.lab.servers import Nginx\n"
        f"lab = two_host({tag!r}).up()\n"
        "web = Nginx(lab, 'target', '198.18.0.2', 8080).start()\n"
        "print(lab.popen('copier', ['sleep', '60']).pid, web.proc.pid, web.dir, flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=functools.partial(as_child_of, os.getpid()))
    try:
        sleeper, nginx, nginx_dir = proc.stdout.readline().split()  # type: ignore[union-attr]
        assert len(namespaces_of(tag)) == 2
        proc.send_signal(sig)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            remove_stale(tag=tag)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert namespaces_of(tag) == []
    assert is_gone(int(sleeper)) and is_gone(int(nginx))
    assert not os.path.exists(nginx_dir)


def test_cli_down_removes_a_detached_lab_by_tag(lab_required: None) -> None:
    tag = fresh_tag()
    lab = two_host(tag).up()
    stray = lab.popen(COPIER, ["sleep", "60"]).pid
    lab.detach()
    try:
        status = subprocess.run([sys.executable, "-m", "tcpcopy.lab.netns", "status"],
                                capture_output=True, text=True, timeout=20)
        assert f"tcl-{tag}-copier" in status.stdout
        down = subprocess.run([sys.executable, "-m", "tcpcopy.lab.netns", "down", "--tag", tag],
                              capture_output=True, text=True, timeout=20)
        assert down.returncode == 0, down.stderr
        assert f"tcl-{tag}-copier" in down.stdout
    finally:
        subprocess.run(["ip", "netns", "del", f"tcl-{tag}-copier"], capture_output=True)
        subprocess.run(["ip", "netns", "del", f"tcl-{tag}-target"], capture_output=True)
    assert namespaces_of(tag) == []
    assert is_gone(stray)


def test_ipv6_link_carries_http(lab_required: None) -> None:
    topology = Topology(
        hosts=(Host("left"), Host("right")),
        links=(link("left", ("198.18.0.1/24", "2001:2::1/64"), "right", ("198.18.0.2/24", "2001:2::2/64")),),
    )
    with Lab(topology, fresh_tag()) as lab, Nginx(lab, "right", "2001:2::2", 80) as web:
        body = lab.run("left", ["curl", "-s", "--max-time", "5", web.url("/index.html")]).stdout
        assert body == INDEX_HTML.decode()
        assert web.access_log_entries()[0]["remote_addr"] == "2001:2::1"


# --------------------------------------------------------------------------- (b) validation


@pytest.mark.parametrize("address", ["10.0.0.1/24", "8.8.8.8/24", "2001:db8::1/64", "127.0.0.1/8"])
def test_addresses_outside_the_lab_ranges_are_rejected(address: str) -> None:
    bare = address.split("/")[0]
    with pytest.raises(ValueError, match=rf"{bare}.*outside the lab ranges 198\.18\.0\.0/15 and 2001:2::/48"):
        Nic("copier", (address,))
    with pytest.raises(ValueError, match=bare):
        link("copier", "198.18.0.1/24", "target", address)


@pytest.mark.parametrize("prefix, via", [("8.8.8.0/24", "198.18.0.1"), ("198.18.3.0/24", "10.0.0.1"),
                                         ("0.0.0.0/0", "198.18.0.1"), ("198.16.0.0/14", "198.18.0.1")])
def test_routes_outside_the_lab_ranges_are_rejected(prefix: str, via: str) -> None:
    with pytest.raises(ValueError, match="outside the lab ranges"):
        Route(prefix, via)


def test_lab_ranges_are_accepted_and_global_sysctls_refused() -> None:
    Nic("a", ("198.19.255.254/24", "2001:2:0:ffff::1/64"))
    Route("198.18.3.0/24", "198.18.0.1")
    with pytest.raises(ValueError, match="net"):
        Host("copier", sysctls={"kernel.pid_max": 4096})
    with pytest.raises(ValueError, match="unknown host"):
        Topology(hosts=(Host("a"),), links=(link("a", "198.18.0.1/24", "b", "198.18.0.2/24"),))


def test_cli_names_the_fault_without_root(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert lab_main(["status"]) == 2
    assert capsys.readouterr().err.strip() == "error: ip netns needs root: run as root"


# --------------------------------------------------------------------------- (c) nginx


def test_nginx_in_target_answers_the_copier(two_host_lab: Lab) -> None:
    with Nginx(two_host_lab, TARGET, TARGET_ADDRESS, NGINX_PORT) as web:
        out = two_host_lab.exec(
            COPIER,
            ["curl", "-s", "--max-time", "5", web.url("/index.html"), web.url("/big.bin")],
            capture_output=True, timeout=10,
        ).stdout
        entries = web.access_log_entries()
        master = web.proc.pid  # type: ignore[union-attr]
    assert out == INDEX_HTML + big_bin()
    assert [(e["request_method"], e["uri"], e["status"]) for e in entries] == [
        ("GET", "/index.html", 200), ("GET", "/big.bin", 200)]
    first, second = entries
    assert first["remote_addr"] == second["remote_addr"] == COPIER_ADDRESS
    assert first["connection"] == second["connection"], "curl reuses one keep-alive connection"
    assert (first["connection_requests"], second["connection_requests"]) == (1, 2)
    assert second["body_bytes_sent"] == len(big_bin()) and second["bytes_sent"] > len(big_bin())
    assert first["remote_port"] == second["remote_port"] > 0
    assert is_gone(master)
    assert web.access_log_entries() == entries, "the log stays readable after stop"


# --------------------------------------------------------------------------- (d) black hole


def send_syn_and_watch(dev: str, isn: int) -> list[tuple[str, int, str, int, str, int, int]]:
    """Runs inside the copier: SYN from the fake client, then what came back, then a RST.

    Captures TCP from the target, any RST (either direction) and any ICMP on ``dev`` until a
    SYN-ACK has been seen and 0.3 s more have passed (3 s at most); returns
    (src, sport, dst, dport, flags, seq, ack) per captured TCP segment, ("icmp", ...) per ICMP.
    """
    import select

    import pcap
    from scapy.layers.inet import ICMP, IP, TCP
    from scapy.layers.l2 import Ether

    handle = pcap.pcap(name=dev, promisc=True, immediate=True, timeout_ms=50)
    handle.setfilter(f"(tcp and (src host {TARGET_ADDRESS} or tcp[tcpflags] & tcp-rst != 0)) or icmp")
    handle.setnonblock(True)
    syn = IP(src=FAKE_CLIENT, dst=TARGET_ADDRESS) / TCP(
        sport=FAKE_CLIENT_PORT, dport=NGINX_PORT, flags="S", seq=isn, window=64240, options=[("MSS", 1460)])
    rst = IP(src=FAKE_CLIENT, dst=TARGET_ADDRESS) / TCP(
        sport=FAKE_CLIENT_PORT, dport=NGINX_PORT, flags="R", seq=isn + 1, window=0)
    seen: list[tuple[str, int, str, int, str, int, int]] = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        raw.sendto(bytes(syn), (TARGET_ADDRESS, 0))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            select.select([handle.fileno()], [], [], 0.05)
            for _ts, frame in handle.readpkts():
                packet = Ether(bytes(frame))
                if TCP in packet:
                    ip, tcp = packet[IP], packet[TCP]
                    seen.append((ip.src, tcp.sport, ip.dst, tcp.dport, str(tcp.flags), tcp.seq, tcp.ack))
                    if str(tcp.flags) == "SA":
                        deadline = min(deadline, time.monotonic() + 0.3)
                elif ICMP in packet:
                    seen.append(("icmp", packet[ICMP].type, packet[IP].src, 0, packet[IP].dst, 0, 0))
        raw.sendto(bytes(rst), (TARGET_ADDRESS, 0))
    return seen


def test_copier_captures_the_syn_ack_and_black_holes_it(two_host_lab: Lab) -> None:
    isn = 1_000_000
    with Nginx(two_host_lab, TARGET, TARGET_ADDRESS, NGINX_PORT):
        seen = two_host_lab.call(COPIER, send_syn_and_watch, two_host_lab.interface(COPIER), isn, timeout=10)
        half_open = two_host_lab.run(TARGET, ["ss", "-Htn", "state", "syn-recv"]).stdout
    syn_acks = [s for s in seen if s[4] == "SA"]
    assert syn_acks, f"no SYN-ACK captured on the copier's veth; saw {seen}"
    src, sport, dst, dport, _flags, _seq, ack = syn_acks[0]
    assert (src, sport, dst, dport, ack) == (TARGET_ADDRESS, NGINX_PORT, FAKE_CLIENT, FAKE_CLIENT_PORT, isn + 1)
    assert not [s for s in seen if "R" in s[4]], f"a RST answered the SYN-ACK: {seen}"
    assert not [s for s in seen if s[0] == "icmp"], f"the copier's kernel sent ICMP: {seen}"
    assert FAKE_CLIENT not in half_open, f"the cleanup RST did not clear the half-open connection: {half_open}"
