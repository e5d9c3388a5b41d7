"""Who may hold a connection to the anchor, and for how long. CPython only.

Every connection costs a file descriptor; when the process runs out of them it can accept
nobody, paired rovers included. So the anchor keeps its own connections well below its
file limit (RLIMIT_NOFILE), in three pools sized from it:

- pending: links that have not finished the secure handshake (or, on an --open anchor,
  not yet sent their first bytes). Each has HANDSHAKE_SECONDS to finish; a full pool drops
  its oldest member for a newcomer (a real rover finishes in milliseconds, a silent
  connection only ages), and so does one address past PENDING_PER_ADDRESS of them.
- sessions: links past the handshake. A paired device holds at most SESSIONS_PER_DEVICE (a
  newer one replaces its oldest: a rover that lost its link comes back before the anchor
  notices); an unauthenticated session of an --open anchor counts against its address.
- proxy: HTTP proxy clients, which cost up to three descriptors each (client, origin,
  spool); an address holds at most PROXY_PER_ADDRESS.

docs/security.md lists the numbers; `Limits.for_fd_limit` derives them.
"""
import logging
import resource
import time

log = logging.getLogger("anchor")

HANDSHAKE_SECONDS = 10.0      # to finish the secure handshake (81 bytes each way at most)
PENDING_PER_ADDRESS = 32      # a host starting many rovers at once (a test bench) fits
SESSIONS_PER_DEVICE = 8       # a backup and relay commands side by side
SESSIONS_PER_ADDRESS = 64     # unauthenticated (--open) sessions: a lab bench on one host
PROXY_PER_ADDRESS = 16
RESERVED_FDS = 128            # the store, the catalog, logs, management clients, relays
LOG_INTERVAL = 10.0           # seconds between two reports of the same refusal kind


class Limits:
    def __init__(self, pending, sessions, proxy):
        self.pending = pending
        self.sessions = sessions
        self.proxy = proxy

    @classmethod
    def for_fd_limit(cls, nofile=None):
        """Pools that together stay below `nofile` descriptors (the process's soft limit by
        default): RESERVED_FDS kept aside, the rest split three ways, a proxy client at three."""
        if nofile is None:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if nofile == resource.RLIM_INFINITY:
                nofile = 1 << 20
        room = max(nofile - RESERVED_FDS, 24)
        return cls(pending=max(4, min(128, room // 4)), sessions=max(4, min(256, room // 4)),
                   proxy=max(2, min(64, room // 12)))


class RateLog:
    """Logs one line per kind per LOG_INTERVAL, with how many were not logged in between: a
    flood must not fill the SD card with its own story."""

    def __init__(self, interval=LOG_INTERVAL):
        self.interval = interval
        self.last = {}
        self.quiet = {}

    def warning(self, kind, fmt, *args):
        now = time.monotonic()
        if now - self.last.get(kind, -self.interval) < self.interval:
            self.quiet[kind] = self.quiet.get(kind, 0) + 1
            return
        self.last[kind] = now
        n = self.quiet.pop(kind, 0)
        if n:
            fmt += " (and %d more like it in the last %d s)"
            args = args + (n, self.interval)
        log.warning(fmt, *args)


class _Slot:
    __slots__ = ("pool", "key", "closer", "since")

    def __init__(self, pool, key, closer):
        self.pool = pool
        self.key = key
        self.closer = closer            # closes the connection (when it is evicted)
        self.since = time.monotonic()

    def release(self):
        if self.pool is not None:
            self.pool._drop(self)
            self.pool = None


class _Pool:
    """Slots in arrival order (dicts keep it), counted per key."""

    def __init__(self, name, limit, per_key):
        self.name = name
        self.limit = limit
        self.per_key = per_key
        self.slots = {}
        self.by_key = {}

    def __len__(self):
        return len(self.slots)

    def _drop(self, slot):
        if self.slots.pop(id(slot), None) is not None:
            n = self.by_key[slot.key] - 1
            if n:
                self.by_key[slot.key] = n
            else:
                del self.by_key[slot.key]

    def count(self, key):
        return self.by_key.get(key, 0)

    def oldest(self, key=None):
        for s in self.slots.values():
            if key is None or s.key == key:
                return s
        return None

    def add(self, key, closer):
        s = _Slot(self, key, closer)
        self.slots[id(s)] = s
        self.by_key[key] = self.by_key.get(key, 0) + 1
        return s


def _evict(slot):
    slot.release()
    try:
        slot.closer()
    except Exception:
        pass


class Admission:
    """The three pools of one anchor. Each take_* returns a slot (release() it when the
    connection ends) or None: then close the connection without a word. take_pending
    always finds room (by closing an older unfinished handshake)."""

    def __init__(self, limits=None):
        self.limits = limits or Limits.for_fd_limit()
        lim = self.limits
        self.pending = _Pool("pending", lim.pending, PENDING_PER_ADDRESS)
        self.sessions = _Pool("sessions", lim.sessions, None)
        self.proxy = _Pool("proxy", lim.proxy, PROXY_PER_ADDRESS)
        self.rate = RateLog()
        self.refused = {"pending": 0, "sessions": 0, "proxy": 0, "evicted": 0}

    def take_pending(self, address, closer):
        p = self.pending
        if address is not None and p.count(address) >= p.per_key:
            self.refused["evicted"] += 1
            self.rate.warning("evict-address", "link handshakes: %d unfinished from %s, the oldest "
                              "closed for a newcomer", p.per_key, address)
            _evict(p.oldest(address))
        elif len(p) >= p.limit:
            self.refused["evicted"] += 1
            self.rate.warning("evict", "link handshakes: %d unfinished, the oldest (from %s) "
                              "closed for a newcomer", p.limit, p.oldest().key)
            _evict(p.oldest())
        return p.add(address, closer)

    def take_session(self, device, address, closer):
        """device: the paired device the handshake proved, or None (an --open anchor)."""
        s = self.sessions
        if device is not None:
            key = ("device", device)
            if s.count(key) >= SESSIONS_PER_DEVICE:
                log.info("rover %s: a new session replaces its oldest (%d at most)", device,
                         SESSIONS_PER_DEVICE)
                _evict(s.oldest(key))
        else:
            key = ("address", address)
            if s.count(key) >= SESSIONS_PER_ADDRESS:
                self._refuse("sessions", "session from %s refused: %d open sessions from that "
                             "address already", address, SESSIONS_PER_ADDRESS)
                return None
        if len(s) >= s.limit:
            self._refuse("sessions", "session from %s refused: %d sessions open, the anchor's "
                         "limit", address, s.limit)
            return None
        return s.add(key, closer)

    def take_proxy(self, address, closer):
        p = self.proxy
        if address is not None and p.count(address) >= p.per_key:
            self._refuse("proxy", "proxy client %s refused: %d connections from that address "
                         "already", address, p.per_key)
            return None
        if len(p) >= p.limit:
            self._refuse("proxy", "proxy client %s refused: %d proxy connections open, the "
                         "anchor's limit", address, p.limit)
            return None
        return p.add(address, closer)

    def _refuse(self, kind, fmt, *args):
        self.refused[kind] += 1
        self.rate.warning(kind, fmt, *args)
