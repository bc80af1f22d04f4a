"""The stats hub: every process publishes to one endpoint, any number of consumers read it.

    python -m tcpcopy.cluster.ops.hub --stats ENDPOINT --feed ENDPOINT [--key FILE --allow-keys DIR]
    python -m tcpcopy.cluster.ops.hub --config CONFIG          (a cluster's: its [stats] section)

A bound SUB socket admits one consumer of the stats channel; ``top``, the Prometheus exporter
and the report recorder each want one. The hub is a ZeroMQ XSUB/XPUB forwarder: its XSUB
binds the stats endpoint (every StatsPublisher connects there, as to a lone consumer) and
subscribes to everything; its XPUB binds the feed, where consumers connect
(``Aggregator(..., hub=True)``, ``--hub ENDPOINT`` on each consumer's command).

With keys both sides are CURVE servers holding the stats listener's pair (stats.key_secret):
the stats side admits the publishers of ``--allow-keys`` as before, the feed side admits one
key only, the pair's own public half, so a consumer proves it holds stats.key_secret (the same
file a lone consumer needed) by connecting with it. Each side has its own ZeroMQ context,
since one context holds one ZAP handler (curve.KeyGate).

Bounds: the stats side keeps at most SUB_HWM messages; each consumer's queue holds FEED_HWM
messages and the feed does not drop silently (XPUB_NODROP): a message that one stuck consumer
has no room for is not forwarded and is counted in ``feed_dropped``. The hub publishes its own
counts into the feed every second as a process of role "hub", so top, the exporter and the
report see them beside the others.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import psutil
import zmq
from zmq.utils import z85

from tcpcopy.cluster import wire
from tcpcopy.cluster.curve import (STATS_DOMAIN, ClientKeys, KeyFileError, KeyGate, KeyLayout, ServerKeys,
                                   add_server_key_flags, listen_with_keys, load_secret, plain_warning,
                                   server_keys_from_flags)
from tcpcopy.cluster.process import CommandParser, version_text
from tcpcopy.cluster.ops.aggregator import SUB_HWM, Aggregator
from tcpcopy.cluster.stats import PUBLISH_EVERY, process_figures

PROG = "python -m tcpcopy.cluster.ops.hub"
FEED_DOMAIN = b"tcpcopy-stats-feed"
FEED_HWM = 10000          # messages queued per consumer: minutes of a large cluster's stats
POLL_MS = 200
BURST = 1000              # messages forwarded per wake-up before the feed's side is read
SUBSCRIBE_ALL = b"\x01"   # an XSUB subscription to every topic
HUB_FIX = ("pass --key DIR/stats.key_secret --allow-keys DIR/allowed-publishers to the hub, --key "
           "DIR/stats.key_secret to each consumer with --hub, and --stats-server-key DIR/stats.key to the "
           "publishers; in a cluster config, [security] curve = true")


def feed_keys(keys: ServerKeys) -> ServerKeys:
    """The feed side's keys: the stats pair, admitting only its own public half."""
    return ServerKeys(keys.pair, {z85.decode(keys.pair.public): "stats"})


def consumer_keys(secret_file: str) -> ClientKeys:
    """A consumer of the feed: the stats pair, as its own keys and as the hub's public key."""
    pair = load_secret(secret_file)
    return ClientKeys(pair, pair.public)


class StatsHub:
    """The forwarder; ``run`` until ``stop`` is set, ``close`` after."""

    def __init__(self, stats_endpoint: str, feed_endpoint: str, keys: ServerKeys | None = None,
                 identity: str | None = None, clock=time.monotonic):
        self.identity = identity or f"hub@{socket.gethostname()}"
        self.clock = clock
        self.counts = {"forwarded": 0, "feed_dropped": 0, "subscriptions": 0, "unsubscriptions": 0}
        self._process = psutil.Process()
        self._contexts = (zmq.Context(), zmq.Context())
        self._gates: list[KeyGate] = []
        self.inbound = self._socket(self._contexts[0], zmq.XSUB, keys, STATS_DOMAIN, "stats hub")
        self.outbound = self._socket(self._contexts[1], zmq.XPUB,
                                     feed_keys(keys) if keys else None, FEED_DOMAIN, "stats feed")
        self.outbound.setsockopt(zmq.SNDHWM, FEED_HWM)
        self.outbound.setsockopt(zmq.XPUB_NODROP, 1)
        self.outbound.setsockopt(zmq.XPUB_VERBOSER, 1)   # every (un)subscription: consumers come and go
        self.inbound.setsockopt(zmq.RCVHWM, SUB_HWM)
        self.inbound.setsockopt(zmq.MAXMSGSIZE, wire.max_frame(wire.AGGREGATOR_TAKES))
        try:
            self.inbound.bind(stats_endpoint)
            self.outbound.bind(feed_endpoint)
        except zmq.ZMQError:
            self.close()
            raise
        self.inbound.send(SUBSCRIBE_ALL)
        self._published = None

    def _socket(self, context: zmq.Context, kind: int, keys: ServerKeys | None, domain: bytes, what: str):
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            listen_with_keys(sock, keys, domain)
            self._gates.append(KeyGate(sock, keys, domain, what))
        return sock

    def run(self, stop: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(self.inbound, zmq.POLLIN)
        poller.register(self.outbound, zmq.POLLIN)
        while not stop.is_set():
            ready = dict(poller.poll(POLL_MS))
            if self.inbound in ready:
                self._forward()
            if self.outbound in ready:
                self._read_subscriptions()
            self._maybe_publish_own()

    def _forward(self) -> None:
        for _ in range(BURST):
            try:
                frames = self.inbound.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._send(frames)

    def _send(self, frames: list[bytes]) -> None:
        try:
            self.outbound.send_multipart(frames, zmq.NOBLOCK)
            self.counts["forwarded"] += 1
        except zmq.Again:
            self.counts["feed_dropped"] += 1

    def _read_subscriptions(self) -> None:
        while True:
            try:
                message = self.outbound.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if message[:1] == b"\x01":
                self.counts["subscriptions"] += 1
            elif message[:1] == b"\x00":
                self.counts["unsubscriptions"] += 1

    def _maybe_publish_own(self) -> None:
        now = self.clock()
        if self._published is not None and now - self._published < PUBLISH_EVERY:
            return
        self._published = now
        self._send([wire.encode_stats("hub", self.identity, {**self.figures(), "published_at": now})])

    def figures(self) -> dict:
        """What the hub publishes about itself."""
        return {**self.counts, **self._gate_counts(), "consumers_now": self.consumers(),
                **process_figures(self._process)}

    def _gate_counts(self) -> dict:
        totals: dict[str, int] = {}
        for gate in self._gates:
            side = "feed" if gate.domain == FEED_DOMAIN else "stats"
            for name, value in gate.counts.items():
                totals[f"{side}_curve_{name}"] = value
        return totals

    def consumers(self) -> int:
        """Consumers connected now (each SUB subscribes once, and unsubscribes as it goes)."""
        return max(0, self.counts["subscriptions"] - self.counts["unsubscriptions"])

    def close(self) -> None:
        for gate in self._gates:
            gate.close()
        self.inbound.close(linger=0)
        self.outbound.close(linger=0)
        for context in self._contexts:
            context.term()


# ---------------------------------------------------------------------- consumers' flags

def add_source_flags(parser, required: bool = True,
                     example: str = "ipc:///run/tcpcopy-cluster/stats-feed.sock") -> None:
    """--hub ENDPOINT or --stats ENDPOINT (one of them) and the key flags of a consumer."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--hub", metavar="ENDPOINT",
                        help=f"read a stats hub's feed (connect), beside any other consumer, e.g. {example}")
    source.add_argument("--stats", metavar="ENDPOINT",
                        help="bind the stats endpoint itself, where every process publishes (then the "
                             "only consumer: use --hub to run top, the exporter and the recorder at once)")
    parser.add_argument("--key", metavar="FILE",
                        help="CurveZMQ: the stats listener's secret key file (mode 0600, e.g. "
                             "keys/stats.key_secret); with --stats it needs --allow-keys")
    parser.add_argument("--allow-keys", metavar="DIR",
                        help="CurveZMQ, with --stats: admit only the publishers whose public key "
                             "(NAME.key) is in DIR; the others are refused and counted")


def aggregator_from_flags(args, prog: str, fix: str) -> Aggregator:
    """The Aggregator a consumer's flags ask for; KeyFileError or ValueError name a fault,
    zmq.ZMQError a bind that failed. Warns once when the channel runs without keys."""
    if args.hub:
        if args.allow_keys:
            raise ValueError("--allow-keys goes with --stats: with --hub, --key FILE alone "
                             "(the stats listener's keys/stats.key_secret)")
        keys = consumer_keys(args.key) if args.key else None
        aggregator = Aggregator(args.hub, hub=True, hub_keys=keys)
    else:
        server = server_keys_from_flags(args.key, args.allow_keys)
        aggregator = Aggregator(args.stats, keys=server)
        keys = server
    if keys is None:
        print(f"{prog}: warning: " + plain_warning(["the stats channel"], HUB_FIX if args.hub else fix),
              file=sys.stderr)
    return aggregator


# ---------------------------------------------------------------------- the command

def build_parser() -> CommandParser:
    parser = CommandParser(prog=PROG, description="Forward a tcpcopy cluster's stats from the endpoint every "
                                                  "process publishes to a feed any number of consumers read.",
                           epilog=f"Example: {PROG} --stats tcp://198.18.2.2:36600 "
                                  "--feed ipc:///run/tcpcopy-cluster/stats-feed.sock")
    parser.add_argument("-v", "--version", action="version", version=version_text(PROG),
                        help="print the version and exit")
    parser.add_argument("--config", metavar="CONFIG",
                        help="a cluster config: its [stats] endpoint and feed, its [security] keys")
    parser.add_argument("--stats", metavar="ENDPOINT", help="bind here; every process publishes here")
    parser.add_argument("--feed", metavar="ENDPOINT", help="bind here; consumers connect with --hub ENDPOINT")
    add_server_key_flags(parser, "publishers", "keys/stats.key_secret")
    return parser


def endpoints_and_keys(args) -> tuple[str, str, ServerKeys | None]:
    """(stats endpoint, feed endpoint, keys) from --config or from the flags."""
    if args.config:
        from tcpcopy.cluster.config import load_config
        config = load_config(args.config)
        if not config.stats.endpoint:
            raise ValueError(f"{args.config}: [stats] endpoint is not set: the hub has nothing to forward")
        keys = KeyLayout(config.security.keys_dir).listener_keys() if config.security.curve else None
        return config.stats.endpoint, config.stats_feed(), keys
    if not (args.stats and args.feed):
        raise ValueError("give --stats ENDPOINT and --feed ENDPOINT, or --config CONFIG")
    return args.stats, args.feed, server_keys_from_flags(args.key, args.allow_keys)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from tcpcopy.cluster.config import ConfigError
    try:
        stats, feed, keys = endpoints_and_keys(args)
    except (ValueError, ConfigError, KeyFileError) as exc:
        parser.error(str(exc))
    try:
        hub = StatsHub(stats, feed, keys)
    except zmq.ZMQError as exc:
        print(f"{PROG}: error: cannot bind {stats} or {feed}: {exc} (another hub or consumer bound there? "
              "is the path's directory there?)", file=sys.stderr)
        return 2
    if keys is None:
        print(f"{PROG}: warning: " + plain_warning(["the stats channel and its feed"], HUB_FIX), file=sys.stderr)
    print(f"{PROG}: forwarding {stats} to {feed} (pid {os.getpid()})", file=sys.stderr, flush=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        hub.run(stop)
    finally:
        hub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
