"""Retention: keep the store within its capacity budget.

Pass-through data (chunks no snapshot keeps) is evicted least recently used first; a chunk
that some snapshot keeps (the catalog's live_chunks) is never evicted, whatever the store's
class column says. What is evicted but was fetched over HTTP can be regenerated from its
origin when a backup needs it (anchor.regenerate).
"""
import logging

log = logging.getLogger("anchor.retention")

LOW_WATER = 0.9          # evict down to this share of the capacity, so eviction is not constant
BATCH = 512


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
        raise ValueError("capacity %r: expected a size like 500M, 2G or a number of bytes" % text)
    if n <= 0:
        raise ValueError("capacity must be positive")
    return n


class Retention:
    def __init__(self, anchor, capacity):
        self.anchor = anchor
        self.capacity = capacity
        self.totals = {"evicted_chunks": 0, "evicted_bytes": 0, "compactions": 0, "reclaimed_bytes": 0}
        # Chunks open backup sessions have received or answered "have" for: not pinned yet
        # (that happens at COMMIT), but evicting them would fail the commit.
        self.in_use = []

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
        store = self.anchor.store
        st = store.stats()
        # The budget is on live data; segment files may exceed it by up to one segment
        # (the one being appended to is never compacted) until compaction catches up.
        if st["live_bytes"] <= self.capacity:
            return None
        target = int(self.capacity * LOW_WATER)
        live = st["live_bytes"]
        dropped = 0
        dropped_bytes = 0
        seen = set()
        while live > target:
            cands = [(c, n) for c, n in store.pass_through(BATCH) if c not in seen]
            if not cands:
                break
            seen.update(c for c, _ in cands)
            keep = self.anchor.catalog.live_among([c for c, _ in cands])
            if keep:
                store.pin(list(keep))       # the store's class had fallen behind the catalog
            take = []
            for c, n in cands:
                if c in keep or self._busy(c):
                    continue
                take.append(c)
                live -= n
                dropped_bytes += n
                if live <= target:
                    break
            dropped += store.drop(take)
        res = store.compact()
        self.totals["evicted_chunks"] += dropped
        self.totals["evicted_bytes"] += dropped_bytes
        self.totals["compactions"] += 1
        self.totals["reclaimed_bytes"] += res.get("bytes_reclaimed", 0)
        after = store.stats()
        if after["live_bytes"] > self.capacity:
            log.warning("store holds %d bytes, over its %d byte capacity: what is left is kept by snapshots "
                        "(anchorctl forget frees space)", after["disk_bytes"], self.capacity)
        log.info("evicted %d pass-through chunks (%d bytes); store now holds %d live bytes of %d (%d on disk)",
                 dropped, dropped_bytes, after["live_bytes"], self.capacity, after["disk_bytes"])
        return {"evicted_chunks": dropped, "evicted_bytes": dropped_bytes, "live_bytes": after["live_bytes"]}


def of(anchor):
    """The anchor's retention policy (no capacity: nothing is ever evicted)."""
    r = getattr(anchor, "retention", None)
    if r is None:
        r = anchor.retention = Retention(anchor, getattr(anchor, "capacity", None))
    return r
