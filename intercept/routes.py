"""The intercept's route table: replayed connection -> the session owner that registered it.

Pure: no socket, zmq, pcap or clock; every call that needs the time takes ``now`` (seconds,
monotonic, never decreasing between calls).

Keys are the full replayed 4-tuple ``(client_ip, client_port, target_ip, target_port)`` with
addresses as packed bytes, exactly as an owner registers it and as a captured answer of the
target reads backwards (dst, dport, src, sport). The C intercept keys its table with a lossy
32-bit sum of the four fields, so two owners' connections can collide and one receives the
other's answers; a dict on the whole tuple cannot collide.

A route belongs to the owner that registered it: until that owner unregisters it, the owner
goes away (``drop_owner``: it said BYE, restarted or went silent; ``hand_over``: it died and
its replacement takes its routes, to reset those connections), or the route sits idle for
``ttl`` seconds (a lookup or the owner's re-register refreshes it; the C tool never expires a
route). Another owner's REGISTER of it is refused and its UNREGISTER ignored, both counted, so
no peer takes or removes an owner's routes. Each owner holds at most ``max_per_owner`` routes
and the table ``max_routes``; a REGISTER beyond either is refused and counted, never paid for
with another owner's routes. Routes are kept in least-recently-used order, so expiry takes
from the front in O(1) per route.

A route may also be *watched* (``watch``): its owner compares the target's answers with the
online server's, so intercept sends those answers whole besides their header records. Only
the owner holding a route may watch it, each owner at most ``max_watched_per_owner`` routes
(refusals counted), and a watch ends with its route, however the route ends (unregister,
expiry, owner gone, handed over to a replacement that only resets it).

Held records answer a race: the target's SYN-ACK (or RST) can be captured before the owner's
REGISTER for that connection arrives, because the SYN goes out right after the REGISTER on a
different path. Such records wait under their key, at most ``max_held`` records in all, and
at most ``hold_time`` seconds counted from the first record held for that key (a handshake's
answers come within that window or not at all), until ``release`` hands them over.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[bytes, int, bytes, int]   # (client_ip, client_port, target_ip, target_port)

DEFAULT_TTL = 120.0
DEFAULT_MAX_ROUTES = 1_000_000
DEFAULT_MAX_PER_OWNER = 262_144   # an owner keeps 200,000 sessions at most by default
DEFAULT_MAX_HELD = 65536
DEFAULT_HOLD_TIME = 2.0
DEFAULT_MAX_WATCHED = 4096        # watched routes per owner: intercept --watch-max

COUNTERS = (
    "registered",            # REGISTER endpoints accepted (new or refreshed)
    "register_taken",        # REGISTER of a route another owner holds: refused
    "register_over_quota",   # REGISTER beyond the owner's max_per_owner routes: refused
    "register_table_full",   # REGISTER of a new route at max_routes: refused
    "unregistered",          # routes removed by their owner's UNREGISTER
    "unregister_not_owner",  # UNREGISTER of a route another owner holds: ignored
    "unregister_unknown",    # UNREGISTER of a route that is not there: ignored
    "routes_expired",        # idle longer than ttl
    "routes_dropped_owner",  # removed because their owner left or was forgotten
    "routes_handed_over",    # passed from a dead owner to its replacement
    "held",                  # records accepted to wait for their registration
    "held_refused",          # records not held: max_held reached
    "held_expired",          # held records whose registration never came within hold_time
    "released",              # held records handed over on registration
    "watches",               # WATCH endpoints accepted (new or repeated)
    "watch_taken",           # WATCH of a route another owner holds: refused
    "watch_unknown",         # WATCH of a route that is not there: refused
    "watch_over_quota",      # WATCH beyond the owner's max_watched_per_owner: refused
    "watches_ended",         # watches ended with their route
)


class RouteTable:
    """Maps replayed 4-tuples to owner identities (opaque bytes); bounded, with counters."""

    def __init__(self, ttl: float = DEFAULT_TTL, max_routes: int = DEFAULT_MAX_ROUTES,
                 max_held: int = DEFAULT_MAX_HELD, hold_time: float = DEFAULT_HOLD_TIME,
                 max_per_owner: int = DEFAULT_MAX_PER_OWNER,
                 max_watched_per_owner: int = DEFAULT_MAX_WATCHED) -> None:
        if ttl <= 0 or hold_time <= 0:
            raise ValueError(f"ttl ({ttl}) and hold_time ({hold_time}) must be positive")
        if max_watched_per_owner < 0:
            raise ValueError(f"max_watched_per_owner ({max_watched_per_owner}) must be >= 0")
        if max_routes < 1 or max_held < 0 or max_per_owner < 1:
            raise ValueError(f"max_routes ({max_routes}) and max_per_owner ({max_per_owner}) must be "
                             f">= 1 and max_held ({max_held}) >= 0")
        self.ttl = ttl
        self.max_routes = max_routes
        self.max_per_owner = max_per_owner
        self.max_held = max_held
        self.hold_time = hold_time
        self.max_watched_per_owner = max_watched_per_owner
        # key -> [owner, last_used]; least recently used first.
        self._routes: OrderedDict[Key, list] = OrderedDict()
        self._by_owner: dict[bytes, set[Key]] = {}
        # key -> [first_held_at, [record, ...]]; oldest first.
        self._held: OrderedDict[Key, list] = OrderedDict()
        self._held_count = 0
        # Watched routes: key -> owner, and how many each owner watches. The worker tests
        # ``watched`` per answer, so this dict is never replaced.
        self.watched: dict[Key, bytes] = {}
        self._watched_by_owner: dict[bytes, int] = {}
        self._counts = dict.fromkeys(COUNTERS, 0)

    # -- routes

    def register(self, key: Key, owner: bytes, now: float) -> bool:
        """Route ``key`` to ``owner``, or refresh it when ``owner`` holds it already; False
        (counted) when another owner holds it or a bound is reached."""
        route = self._routes.get(key)
        if route is None:
            refusal = self._refusal(owner)
            if refusal:
                self._counts[refusal] += 1
                return False
            self._routes[key] = [owner, now]
            self._by_owner.setdefault(owner, set()).add(key)
        elif route[0] != owner:
            self._counts["register_taken"] += 1
            return False
        else:
            route[1] = now
            self._routes.move_to_end(key)
        self._counts["registered"] += 1
        return True

    def _refusal(self, owner: bytes) -> str:
        """The counter of the bound a new route of ``owner`` would pass, or ""."""
        if len(self._by_owner.get(owner, ())) >= self.max_per_owner:
            return "register_over_quota"
        if len(self._routes) >= self.max_routes:
            return "register_table_full"
        return ""

    def holder(self, key: Key) -> bytes | None:
        """The owner of ``key``, or None; unlike ``lookup`` it refreshes nothing."""
        route = self._routes.get(key)
        return None if route is None else route[0]

    def unregister(self, key: Key, owner: bytes) -> bool:
        """Remove ``key`` if ``owner`` holds it; True if removed."""
        route = self._routes.get(key)
        if route is None:
            self._counts["unregister_unknown"] += 1
            return False
        if route[0] != owner:
            self._counts["unregister_not_owner"] += 1
            return False
        del self._routes[key]
        self._forget_owner_key(owner, key)
        self._unwatch(key)
        self._counts["unregistered"] += 1
        return True

    def drop_owner(self, owner: bytes) -> int:
        """Remove every route of ``owner``; the number removed."""
        keys = self._by_owner.pop(owner, ())
        for key in keys:
            del self._routes[key]
        self._unwatch_all(keys)
        self._counts["routes_dropped_owner"] += len(keys)
        return len(keys)

    def hand_over(self, old: bytes, new: bytes, now: float) -> list[Key]:
        """Give every route of ``old`` (an owner that died) to ``new`` (its replacement), as
        many as ``new``'s quota allows; the rest are dropped (counted). The keys handed over."""
        keys = sorted(self._by_owner.pop(old, ()))
        self._unwatch_all(keys)   # the replacement resets them; it compares nothing on them
        room = max(0, self.max_per_owner - len(self._by_owner.get(new, ())))
        given, dropped = keys[:room], keys[room:]
        for key in dropped:
            del self._routes[key]
        for key in given:
            self._routes[key] = [new, now]
            self._routes.move_to_end(key)
        if given:
            self._by_owner.setdefault(new, set()).update(given)
        self._counts["routes_handed_over"] += len(given)
        self._counts["routes_dropped_owner"] += len(dropped)
        return given

    def lookup(self, key: Key, now: float) -> bytes | None:
        """The owner of ``key``, or None; a hit refreshes the route's TTL. Per-packet path."""
        route = self._routes.get(key)
        if route is None:
            return None
        route[1] = now
        self._routes.move_to_end(key)
        return route[0]

    def _forget_owner_key(self, owner: bytes, key: Key) -> None:
        keys = self._by_owner.get(owner)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_owner[owner]

    # -- watched routes

    def watch(self, key: Key, owner: bytes) -> bool:
        """Mark ``key`` watched for ``owner``, which must hold it; False (counted) when it is
        not there, another owner holds it, or ``owner`` watches its maximum already."""
        refusal = self._watch_refusal(key, owner)
        if refusal:
            self._counts[refusal] += 1
            return False
        if key not in self.watched:
            self.watched[key] = owner
            self._watched_by_owner[owner] = self.watching(owner) + 1
        self._counts["watches"] += 1
        return True

    def _watch_refusal(self, key: Key, owner: bytes) -> str:
        """The counter of the reason ``owner`` may not watch ``key``, or ""."""
        route = self._routes.get(key)
        if route is None:
            return "watch_unknown"
        if route[0] != owner:
            return "watch_taken"
        if key not in self.watched and self.watching(owner) >= self.max_watched_per_owner:
            return "watch_over_quota"
        return ""

    def watching(self, owner: bytes) -> int:
        """How many routes ``owner`` watches."""
        return self._watched_by_owner.get(owner, 0)

    def _unwatch(self, key: Key) -> None:
        owner = self.watched.pop(key, None)
        if owner is None:
            return
        self._counts["watches_ended"] += 1
        left = self._watched_by_owner[owner] - 1
        if left:
            self._watched_by_owner[owner] = left
        else:
            del self._watched_by_owner[owner]

    def _unwatch_all(self, keys) -> None:
        if self.watched:
            for key in keys:
                self._unwatch(key)

    # -- records waiting for their registration

    def hold(self, key: Key, record: bytes, now: float) -> bool:
        """Keep ``record`` until ``key`` is registered; False (counted) when full."""
        if self._held_count >= self.max_held:
            self._counts["held_refused"] += 1
            return False
        waiting = self._held.get(key)
        if waiting is None:
            self._held[key] = [now, [record]]
        else:
            waiting[1].append(record)
        self._held_count += 1
        self._counts["held"] += 1
        return True

    def release(self, key: Key) -> list[bytes]:
        """The records held for ``key``, in arrival order, removed from the table."""
        waiting = self._held.pop(key, None)
        if waiting is None:
            return []
        records = waiting[1]
        self._held_count -= len(records)
        self._counts["released"] += len(records)
        return records

    # -- time

    def expire(self, now: float) -> None:
        """Remove routes idle for ttl and held records older than hold_time (counted)."""
        routes = self._routes
        while routes:
            key, route = next(iter(routes.items()))
            if now - route[1] < self.ttl:
                break
            del routes[key]
            self._forget_owner_key(route[0], key)
            self._unwatch(key)
            self._counts["routes_expired"] += 1
        held = self._held
        while held:
            key, (first_held_at, records) = next(iter(held.items()))
            if now - first_held_at < self.hold_time:
                break
            del held[key]
            self._held_count -= len(records)
            self._counts["held_expired"] += len(records)

    # -- views

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, key: Key) -> bool:
        return key in self._routes

    @property
    def held_count(self) -> int:
        return self._held_count

    def owners(self) -> set[bytes]:
        """Owners that hold at least one route."""
        return set(self._by_owner)

    def routes_of(self, owner: bytes) -> int:
        return len(self._by_owner.get(owner, ()))

    def counters(self) -> dict[str, int]:
        """Every counter, plus the current sizes ``routes``, ``held_now`` and ``watched_routes``."""
        return {**self._counts, "routes": len(self._routes), "held_now": self._held_count,
                "watched_routes": len(self.watched)}
