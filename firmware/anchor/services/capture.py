"""Capture: every relayed body is chunked like a backup and kept with its provenance.

A body is captured only once it has passed whole (the relay spools it first), so nothing
half-transferred is ever offered as the content of an object. CPython only.
"""
import os

import pyfastcdc

from anchor_core import chunker


def _cutter():
    return pyfastcdc.FastCDC(chunker.AVG_SIZE, min_size=chunker.MIN_SIZE, max_size=chunker.MAX_SIZE,
                             normalized_chunking=1)


class Capture:
    def __init__(self, store, catalog, watchlist, retention):
        self.store = store
        self.catalog = catalog
        self.watchlist = watchlist        # woken when a body a backup waits for arrives
        self.retention = retention        # what is stored counts against the budget

    def record(self, dev, path, prov):
        """Chunk the spooled body at `path` into the store and register it for device
        `dev`; returns (object id, size)."""
        size = os.path.getsize(path)
        oid = chunker.ObjectId()
        ids = bytearray()
        if size:
            for cid in self.store.ingest(c.data for c in _cutter().cut_file(path)):
                oid.add(cid)
                ids += cid
        oid = oid.finish(size)
        # Chunks it shares with older data count as just used: least-recently-used eviction
        # must not take the shared part of what was just captured.
        if ids:
            self.store.touch([bytes(ids[i:i + 32]) for i in range(0, len(ids), 32)])
        # Chunks durable first: the catalog must never name bytes a crash could lose.
        self.store.flush()
        self.catalog.record_capture(dev, oid, size, bytes(ids), prov)
        self.watchlist.captured(dev, oid)
        self.retention.enforce()
        return oid, size
