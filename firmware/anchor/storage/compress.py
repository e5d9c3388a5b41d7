"""zstandard compression and the chunk store's compressor threads (CPython only).

A zstd context is not thread-safe, so each thread keeps its own per level; a batch is
compressed in one call that releases the GIL once (docs/decisions.md, "Chunk store ingest:
the store's own path").
"""

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import zstandard

from anchor.storage.segments import StoreError

ZSTD_LEVEL = 1

_tls = threading.local()


def compressor(level=ZSTD_LEVEL):
    """This thread's zstd context for level."""
    cache = getattr(_tls, "cctx", None)
    if cache is None:
        cache = _tls.cctx = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level)
    return c


def compress_many(raws, level=ZSTD_LEVEL):
    """Compress a batch of chunks, each to its own zstd frame, in one call that drops the GIL once
    (a per-chunk loop would hand the GIL back and forth for every chunk). Returns a sequence of
    buffers in input order."""
    cctx = compressor(level)
    if hasattr(cctx, "multi_compress_to_buffer") and all(raws):
        return cctx.multi_compress_to_buffer(raws)
    return [cctx.compress(r) for r in raws]


def stable(raw):
    """raw itself when it cannot change under us (bytes, a read-only view), else a copy."""
    if type(raw) is bytes or (type(raw) is memoryview and raw.readonly):
        return raw
    return bytes(raw)


class CompressorPool:
    """Batches of chunks being compressed on worker threads, taken back oldest first (ingest()
    keeps the order chunks arrived in). waiting: id -> raw chunk for every chunk of a batch not
    taken back yet; the store fills it while it picks a batch, and answers has() and missing()
    from it."""

    def __init__(self, workers, work):
        self.workers = workers
        self._work = work           # work(ids, raws) -> the batch's result, on a worker thread
        self._inflight = deque()    # (ids, Future), oldest first
        self.waiting = {}
        self._pool = None

    def __len__(self):
        return len(self._inflight)

    def submit(self, ids, raws):
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="chunkstore-zstd")
        self._inflight.append((ids, self._pool.submit(self._work, ids, raws)))

    def should_take(self):
        """True when the oldest batch is done, or too many are in flight to add another."""
        inflight = self._inflight
        return bool(inflight) and (len(inflight) > 2 * self.workers + 2 or inflight[0][1].done())

    def take(self):
        """The oldest batch's result (waiting for it); its chunks leave `waiting` either way."""
        ids, fut = self._inflight.popleft()
        try:
            return fut.result()
        except Exception as e:
            raise StoreError("compressing chunks failed: %s" % e) from e
        finally:
            waiting = self.waiting
            for cid in ids:
                waiting.pop(cid, None)

    def shutdown(self):
        self._inflight.clear()
        self.waiting.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
