"""A pcap filter's syntax check, with no device opened.

The cluster config (``cluster/config.py``) and intercept's command line check their
filters before anything is opened or a process daemonized, so a typo is a clear error at
start rather than a failure in a capture process later. Only libpcap's compiler is used,
which is why this sits in the shared base and not beside the capture handles.
"""

from __future__ import annotations

import pcap


def filter_compiles(bpf: str) -> bool:
    """The filter compiles for at least one link type a capture device can have."""
    for linktype in (pcap.DLT_EN10MB, pcap.DLT_LINUX_SLL, pcap.DLT_RAW):
        try:
            pcap.bpf(bpf.encode(), linktype)
            return True
        except OSError:
            continue
    return False
