"""The chunk index: what ChunkStore needs to know about the chunks in its segments (CPython only).

ChunkIndex below documents every method the store (and retention) uses; backends implement
all of them: storage/index_sqlite.py (the one the anchor runs, `index.sqlite`) and
storage/index_memory.py (kept only so the interface stays honest). One conformance suite,
tests/anchor/test_index_conformance.py, runs against every backend; a new backend is one module
plus one line in that suite's BACKENDS.

Vocabulary:
  row       what the index knows of one chunk: (seg, off, raw_len, stored_len, enc, last_use)
            (segment number, offset of its record, raw and stored lengths, encoding, last use
            in unix milliseconds)
  rows      for insert(): one flat list, ROW_FIELDS values per chunk in the order
            id, seg, off, raw_len, stored_len, enc, last_use (a flat list is what a flush
            builds fastest)
  committed_end
            per segment: the bytes of it that committed rows cover; recovery scans from there
  record bytes
            what a chunk takes in its segment: RECORD_HEADER_SIZE (49) + stored_len

Durability: insert() and touch() may lose their last transactions in a power cut (the store
rebuilds chunk rows from the segments; last_use is a hint). delete() and relocate() are durable
when they return, and so is every earlier insert() (the store relies on that: see "Eviction and
compaction" in docs/storage.md). Threads: insert() may run on the store's writer thread while
the owner thread calls anything else except close().

Retention is not here: whether a chunk is pinned is the catalog's alone (storage/catalog.py,
live_chunks); the index only orders chunks by last use.
"""


ROW_FIELDS = 7


class ChunkIndex:
    """The interface. Ids are 32-byte bytes."""

    persistent = False      # True: a reopened index at the same place holds what was committed

    def close(self):
        raise NotImplementedError

    def check(self):
        """None when the index's own storage is consistent, else what is wrong (text). The
        store runs it on open and in verify; an index kept in memory has nothing to check."""
        return None

    # --- segments

    def segments(self):
        """{seq: committed_end} of every registered segment."""
        raise NotImplementedError

    def last_segment(self):
        """(seq, committed_end) of the highest registered segment, or None."""
        raise NotImplementedError

    # --- lookups

    def get(self, chunk_id):
        """The row of one chunk, or None."""
        raise NotImplementedError

    def present(self, ids):
        """The subset (a set) of the ids (a list) that are indexed."""
        raise NotImplementedError

    def ids(self):
        """Every indexed id, in no particular order."""
        raise NotImplementedError

    # --- changes

    def insert(self, rows, ends):
        """One transaction: add the chunk rows (flat, ROW_FIELDS values each; an id already
        indexed keeps its row) and set committed_end for each {seq: end}. Returns how many
        rows were added."""
        raise NotImplementedError

    def touch(self, ids, last_use):
        """Set last_use of the indexed ids among these. Not durable."""
        raise NotImplementedError

    def delete(self, ids):
        """Remove the rows of these ids; durable on return. Returns how many were removed."""
        raise NotImplementedError

    def relocate(self, moves, ends, removed):
        """Compaction, one durable transaction: moves [(seq, off, id)] give rows a new place,
        ends {seq: committed_end} are set, segments in removed are deregistered."""
        raise NotImplementedError

    # --- recovery

    def segment_has_rows(self, seq):
        raise NotImplementedError

    def cut(self, seq, size):
        """Segment seq is only size bytes long: remove the rows whose record goes past it.
        Returns (rows removed, end of the last record left in seq, or None if none is)."""
        raise NotImplementedError

    # --- iteration

    def rows_in(self, seq):
        """[(id, off, stored_len)] of the rows in segment seq, by offset."""
        raise NotImplementedError

    def by_place(self):
        """Every (id, seg, off, stored_len), in segment then offset order."""
        raise NotImplementedError

    def lru(self, limit, after=None):
        """Up to limit [(id, stored_len, last_use)], least recently used first (last_use, then
        id), starting strictly after the key after = (last_use, id)."""
        raise NotImplementedError

    # --- totals

    def totals(self):
        """(chunks, raw bytes, stored bytes) over every row."""
        raise NotImplementedError

    def record_bytes(self, ids=None):
        """Record bytes of the indexed chunks among ids (any iterable of distinct ids; each id
        not indexed counts 0), or of every chunk when ids is None."""
        raise NotImplementedError

    def live_by_segment(self):
        """{seq: record bytes of the rows in it} for segments that hold rows."""
        raise NotImplementedError
