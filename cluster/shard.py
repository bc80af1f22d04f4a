"""Which owner owns a flow: one pure function shared by capture workers and owners.

The function is chosen so a kernel BPF filter can compute it too (capture workers and
intercepts filter their slice in the kernel): the client port plus the last byte of the
client address, modulo the number of shards. Every packet of a connection, and every copy of
it, lands on the same owner.
"""

from __future__ import annotations


def flow_shard(client_ip: bytes, client_port: int, count: int) -> int:
    """The shard (0..count-1) of a client endpoint."""
    if count <= 1:
        return 0
    return (client_port + client_ip[-1]) % count
