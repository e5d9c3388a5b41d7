"""Retention: keep the store within its capacity budget (CPython only).

Pass-through data (chunks no snapshot keeps) is evicted least recently used first; a chunk
that some snapshot keeps is never evicted. Whether a snapshot keeps a chunk is asked of the
catalog (live_chunks, changed in the snapshot's own transaction) whenever it matters, so there
is no second record of it to fall behind. What is evicted but was fetched over HTTP can be
regenerated from its origin when a backup needs it (anchor.services.regenerate).

A backup makes room before it stores (`make_room`): pass-through data goes first, and when
what cannot be evicted (pinned data, and what open sessions hold) would not leave room, the
backup is refused with `StoreFull`, which names the shortfall.
"""
import logging

from anchor.storage.segments import RECORD_HEADER_SIZE as RECORD   # what a chunk costs besides its payload

log = logging.getLogger("anchor.retention")

LOW_WATER = 0.9          # evict down to this share of the capacity, so eviction is not constant
BATCH = 512              # chunks per eviction page at first
MAX_PAGE = 32768         # ...and at most, after pages that were mostly pinned


def human(n):
    """1536 -> '1.5 KiB', 1 << 20 -> '1 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            text = ("%d" % n) if unit == "B" else ("%.1f" % n)
            if text.endswith(".0"):
                text = text[:-2]
            return "%s %s" % (text, unit)
        n /= 1024.0


class StoreFull(Exception):
    """What a backup needs does not fit the capacity budget even with every evictable
    chunk evicted. `shortfall`: bytes beyond the budget; `estimated`: the need was estimated
    (from file sizes, before the upload) rather than counted from chunks received."""

    def __init__(self, shortfall, capacity, estimated=False):
        Exception.__init__(self, shortfall, capacity, estimated)
        self.shortfall = shortfall
        self.capacity = capacity
        self.estimated = estimated

    def text(self, more=0):
        """The refusal for the rover; `more`: bytes it sent after the refusal, which the
        backup needs too."""
        return ("store full: this backup needs %s %s more than the %s budget holds after evicting "
                "all pass-through data; prune snapshots (anchorctl prune) or raise --capacity"
                % ("about" if self.estimated else "at least", human(self.shortfall + more),
                   human(self.capacity)))


def parse_size(text):
    """'500M', '2G', '750K' or a number of bytes."""
    t = text.strip().upper().rstrip("B")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if t.endswith(suffix):
            t, mult = t[:-1], m
            break
    try:
        n = int(float(t) * mult)
    except ValueError:
        raise ValueError("%r: expected a size like 500M, 2G or a number of bytes" % text)
    if n <= 0:
        raise ValueError("%r: a size must be positive" % text)
    return n


class Retention:
    def __init__(self, store, catalog, capacity, offloaded=None):
        self.store = store
        self.catalog = catalog
        self.capacity = capacity
        # On a fleet anchor: ids -> the set of those safely in the fleet store (read back
        # after their PUT). Those may leave flash even if a snapshot keeps them: a restore
        # reads them from the store (docs/fleet.md, section 4).
        self.offloaded = offloaded
        self.totals = {"evicted_chunks": 0, "evicted_bytes": 0, "compactions": 0, "reclaimed_bytes": 0}
        # Chunks open backup sessions have received or answered "have" for: not pinned yet
        # (that happens at COMMIT), but evicting them would fail the commit.
        self.in_use = []
        # Bytes that may still be stored without looking at the store again (make_room);
        # 0 means look. Anything else that stores (captures) runs enforce(), which resets it.
        self.room = 0

    def protect(self, chunk_set):
        self.in_use.append(chunk_set)

    def release(self, chunk_set):
        self.in_use = [s for s in self.in_use if s is not chunk_set]

    def _busy(self, c):
        for s in self.in_use:
            if c in s:
                return True
        return False

    def enforce(self):
        """Evict and compact if the store is over its budget. Returns what was done, or None."""
        if not self.capacity:
            return None
        self.room = 0
        store = self.store
        st = store.stats()
        # The budget is on live data; segment files may exceed it by up to one segment
        # (the one being appended to is never compacted) until compaction catches up.
        if st["live_bytes"] <= self.capacity:
            return None
        return self._evict(st["live_bytes"], int(self.capacity * LOW_WATER))

    def _evict(self, live, target):
        """Evict chunks no snapshot keeps (or that are in the fleet store) and no session holds,
        least recently used first, until the store's live bytes (now `live`) are at most
        `target`; then compact."""
        store = self.store
        catalog = self.catalog
        dropped = 0
        dropped_bytes = 0
        cursor = None
        limit = BATCH
        while live > target:
            page = store.lru(limit, cursor)
            if not page:
                break
            cursor = (page[-1][2], page[-1][0])
            keep = catalog.live_among([c for c, _, _ in page])
            if keep and self.offloaded is not None:
                keep -= self.offloaded(keep)
            take = []
            for c, n, _ in page:
                if c in keep or self._busy(c):
                    continue
                take.append(c)
                live -= n + RECORD
                dropped_bytes += n
                if live <= target:
                    break
            if take:
                dropped += store.drop(take)
            if len(take) < len(page) // 2:
                # Mostly pinned (snapshot content tends to be the least recently used): each
                # page is a scan of the whole index, so take bigger steps past it.
                limit = min(limit * 2, MAX_PAGE)
        res = store.compact()
        self.totals["evicted_chunks"] += dropped
        self.totals["evicted_bytes"] += dropped_bytes
        self.totals["compactions"] += 1
        self.totals["reclaimed_bytes"] += res.get("bytes_reclaimed", 0)
        after = store.stats()
        if after["live_bytes"] > self.capacity:
            log.warning("store holds %d bytes, over its %d byte capacity: what is left is kept by snapshots "
                        "(anchorctl prune or forget frees space)", after["disk_bytes"], self.capacity)
        log.info("evicted %d pass-through chunks (%d bytes); store now holds %d live bytes of %d (%d on disk)",
                 dropped, dropped_bytes, after["live_bytes"], self.capacity, after["disk_bytes"])
        return {"evicted_chunks": dropped, "evicted_bytes": dropped_bytes, "live_bytes": after["live_bytes"]}

    # --- room for a backup ---------------------------------------------------------------

    def usage(self):
        """(live, evictable): bytes of every stored chunk (49 + stored length each, buffered
        ones too: the store is flushed first), and of those an eviction may take: chunks no
        snapshot keeps (the catalog's live_chunks) and no open session holds."""
        store = self.store
        catalog = self.catalog
        store.flush()
        live = store.record_bytes()
        kept = catalog.live_chunks()
        if self.offloaded is not None:
            kept = set(kept)
            kept -= self.offloaded(kept)
        pinned = store.record_bytes(kept)
        busy = set()
        for s in self.in_use:
            busy.update(s)
        if busy:
            busy -= catalog.live_among(list(busy))
        held = store.record_bytes(busy) if busy else 0
        return live, live - pinned - held

    def make_room(self, nbytes, reserve=True):
        """Room for `nbytes` more in the store, evicting pass-through data (least recently
        used first, none that an open session holds) if the budget needs it. Raises StoreFull
        when they would not fit even with every evictable chunk gone; then nothing is evicted.

        reserve=True: the bytes are about to be stored (a chunk received), and count against
        the room left. reserve=False: a check ahead of an upload (an estimate of what a NEED
        asks for); room is made, nothing is counted. No capacity: always room."""
        if not self.capacity:
            return
        if nbytes <= self.room:
            if reserve:
                self.room -= nbytes
            return
        live, evictable = self.usage()
        fixed = live - evictable
        if fixed + nbytes > self.capacity:
            self.room = 0
            raise StoreFull(fixed + nbytes - self.capacity, self.capacity, estimated=not reserve)
        if live + nbytes > self.capacity:
            # Down to the low-water mark if that is possible, so the next chunks need no eviction.
            target = max(min(int(self.capacity * LOW_WATER), self.capacity - nbytes), fixed)
            done = self._evict(live, target)
            live = done["live_bytes"]
            if live + nbytes > self.capacity:
                # Eviction found less than usage() counted (a session took chunks meanwhile).
                self.room = 0
                raise StoreFull(live + nbytes - self.capacity, self.capacity, estimated=not reserve)
        self.room = self.capacity - live - (nbytes if reserve else 0)

