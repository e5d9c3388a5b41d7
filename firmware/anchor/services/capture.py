"""Capture: every relayed body is chunked like a backup and kept with its provenance.

A body is cut, hashed and stored while it streams (CaptureStream), so that keeping it costs
the relay little time after its last byte; it is registered as an object only once it has
passed whole, so nothing half-transferred is ever offered as the content of an object. The
chunks of a body that broke off stay in the store as pass-through data (evicted first, least
recently used; docs/storage.md). CPython only.
"""
import pyfastcdc

from anchor_core import chunker
from anchor.services.spool import Claim

# Bytes gathered before they are cut: FastCDC's cut points depend only on the bytes since the
# chunk's start, so cutting a gathered block and carrying its last (maybe unfinished) chunk
# into the next block gives the chunks a cut of the whole body gives. 1 MiB is the store's
# ingest batch: one hashing pass and one compressor job per block.
CUT_EVERY = 1 << 20


def _cutter():
    return pyfastcdc.FastCDC(chunker.AVG_SIZE, min_size=chunker.MIN_SIZE, max_size=chunker.MAX_SIZE,
                             normalized_chunking=1)


class Capture:
    def __init__(self, store, catalog, watchlist, retention, room):
        self.store = store
        self.catalog = catalog
        self.watchlist = watchlist        # woken when a body a backup waits for arrives
        self.retention = retention        # what is stored counts against the budget
        self.room = room                  # services.spool.SpoolRoom: bodies on their way draw on it

    def stream(self, dev, counted=True):
        """A body of device `dev` about to pass: write() it, then finish() or discard().
        counted=False: the body already draws on the spool room (a spool file holds it)."""
        return CaptureStream(self, dev, counted)


class CaptureStream(Claim):
    """One body being captured as it passes. Its bytes on their way draw on the spool room's
    budget like a spool file (`kept` turns False when it runs out: the body passes without
    being kept), and the chunks it has stored are kept from eviction until it ends."""

    def __init__(self, capture, dev, counted=True):
        Claim.__init__(self, capture.room)
        self.counted = counted
        self.capture = capture
        self.dev = dev
        self._pieces = []
        self._gathered = 0
        self._carry = b""                 # the unfinished last chunk of the block cut before
        self._cutter = _cutter()
        self._oid = chunker.ObjectId()
        self._ids = bytearray()
        self._holds = set()               # ids stored so far: not evictable while the body passes
        capture.retention.protect(self._holds)
        self._open = True

    def write(self, data):
        if self.counted:
            if not self.admit(len(data)):
                return
        else:
            self.size += len(data)
        self._pieces.append(data if type(data) is bytes else bytes(data))
        self._gathered += len(data)
        if self._gathered >= CUT_EVERY:
            self._cut(False)

    def _cut(self, last):
        pieces = [self._carry] + self._pieces if self._carry else self._pieces
        block = pieces[0] if len(pieces) == 1 else b"".join(pieces)     # one piece: no copy
        self._pieces = []
        self._gathered = 0
        self._carry = b""
        if not block:
            return
        cuts = list(self._cutter.cut_buf(block))
        if not last:
            tail = cuts.pop()
            self._carry = block[tail.offset:]
        if not cuts:
            return
        store = self.capture.store
        # Chunks it shares with older data count as just used: least-recently-used eviction
        # must not take the shared part of what was just captured.
        ids = store.ingest([c.data for c in cuts], touch=True)
        self._holds.update(ids)
        oid = self._oid
        for cid in ids:
            oid.add(cid)
            self._ids += cid

    def read(self, start, end=None):
        """The body's bytes from `start` to `end` (default: all it has taken so far), in
        pieces: stored chunks, then what waits to be cut. For a body that broke off and is
        resumed (services.relay): not while bytes are still being written."""
        end = self.size if end is None else min(end, self.size)
        pos = 0
        store = self.capture.store
        ids = self._ids
        for i in range(0, len(ids), 32):
            if pos >= end:
                return
            cid = bytes(ids[i:i + 32])
            n = store.info(cid)["raw_len"]
            if pos + n > start:
                data = store.get(cid)
                yield data[max(0, start - pos):end - pos]
            pos += n
        for piece in ([self._carry] if self._carry else []) + self._pieces:
            if pos >= end:
                return
            n = len(piece)
            if pos + n > start:
                yield piece[max(0, start - pos):end - pos]
            pos += n

    def finish(self, prov):
        """The body has passed whole: store its last chunks, make them durable and register
        the object with its provenance. Returns (object id, size), or None if the body was not
        kept (the room ran out)."""
        if not self.kept:
            self.discard()
            return None
        cap = self.capture
        try:
            self._cut(True)
            oid = self._oid.finish(self.size)
            # Chunks durable first: the catalog must never name bytes a crash could lose.
            cap.store.flush()
            cap.catalog.record_capture(self.dev, oid, self.size, bytes(self._ids), prov)
            cap.watchlist.captured(self.dev, oid)
        finally:
            self.discard()
        cap.retention.enforce()
        return oid, self.size

    def _dropped(self):
        self._pieces = []
        self._carry = b""

    def discard(self):
        """Done with the body, kept or not: its bytes leave the budget and its chunks may be
        evicted again (unregistered, they are pass-through data)."""
        if self._open:
            self._open = False
            self._pieces = []
            self._carry = b""
            self._release()
            self.capture.retention.release(self._holds)
