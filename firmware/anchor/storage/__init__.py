"""Everything the anchor keeps on its flash; the only package that speaks SQL (CPython only).

    segments.py      segment file format: records, headers, scan, torn tails; SegmentFiles (fds)
    recovery.py      the recovery rules run when a store opens
    compress.py      zstd contexts, batch compression, CompressorPool (the compressor threads)
    index.py         ChunkIndex: the interface the chunk store needs from its index
    index_sqlite.py  the SQLite index (index.sqlite), the one the anchor runs
    index_memory.py  an in-memory index, only to keep the interface honest (conformance suite)
    chunks.py        ChunkStore: segments + index; write order, writer thread, eviction, compaction
    catalog.py       catalog.sqlite: devices, snapshots, objects, scope; what is pinned
    trees.py         snapshot tree files
    integrity.py     whether a snapshot can be restored (and built on): tree, chunk lists, chunks
    retention.py     the capacity budget: what to evict, when a backup is refused
    prune.py         snapshot keep rules (anchorctl prune)

Formats: docs/storage.md.
"""
