"""tcpcopy.intercept: the assistant host's role.

The target routes its answers to replayed clients to the assistant host, which drops them
(ip_forward=0) after intercept has captured them with libpcap. Intercept sends each answer's
IP+TCP headers back to the session owner that registered the replayed connection, so the
owner's engine learns the target's sequence numbers, window and flags.

- ``routes``: the pure route table (replayed 4-tuple -> owner), with TTLs, bounds and the
  short hold for answers that beat their registration;
- ``worker``: the I/O loop (ZeroMQ ROUTER for owners, pcap for answers, batching);
- ``main``: the ``intercept`` command, with the C intercept's flags.
"""
