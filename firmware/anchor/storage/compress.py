"""zstandard compression for the chunk store's compressor threads (CPython only).

A zstd context is not thread-safe, so each thread keeps its own per level; a batch is
compressed in one call that releases the GIL once (docs/decisions.md, "Chunk store ingest:
the store's own path").
"""

import threading

import zstandard

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
