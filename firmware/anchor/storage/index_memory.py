"""A chunk index in a dict, never persisted (CPython only).

Not for the anchor: it exists so that storage/index.py stays an interface rather than a
description of SQLite. The conformance suite (tests/anchor/test_index_conformance.py) runs it
beside SqliteIndex; whatever the store needs that only SQL could answer would show up here.
One lock makes insert() from the store's writer thread safe beside the owner's reads.
"""

import threading

from anchor.storage.index import ChunkIndex, ROW_FIELDS
from anchor.storage.segments import RECORD_HEADER_SIZE

# a row: [seg, off, raw_len, stored_len, enc, last_use]
_SEG, _OFF, _RAW, _STORED, _ENC, _USE = range(6)


class MemoryIndex(ChunkIndex):
    def __init__(self):
        self._rows = {}
        self._segs = {}
        self._lock = threading.Lock()

    def close(self):
        pass

    def segments(self):
        with self._lock:
            return dict(self._segs)

    def last_segment(self):
        with self._lock:
            if not self._segs:
                return None
            seq = max(self._segs)
            return seq, self._segs[seq]

    def get(self, chunk_id):
        with self._lock:
            r = self._rows.get(chunk_id)
            return tuple(r) if r is not None else None

    def present(self, ids):
        with self._lock:
            rows = self._rows
            return {c for c in ids if c in rows}

    def ids(self):
        with self._lock:
            return list(self._rows)

    def insert(self, rows, ends):
        n = 0
        with self._lock:
            have = self._rows
            for i in range(0, len(rows), ROW_FIELDS):
                cid = rows[i]
                if cid not in have:
                    have[cid] = list(rows[i + 1:i + ROW_FIELDS])
                    n += 1
            self._segs.update(ends)
        return n

    def touch(self, ids, last_use):
        with self._lock:
            for c in ids:
                r = self._rows.get(c)
                if r is not None:
                    r[_USE] = last_use

    def delete(self, ids):
        n = 0
        with self._lock:
            for c in ids:
                if self._rows.pop(c, None) is not None:
                    n += 1
        return n

    def relocate(self, moves, ends, removed):
        with self._lock:
            for seq, off, cid in moves:
                r = self._rows.get(cid)
                if r is not None:
                    r[_SEG], r[_OFF] = seq, off
            self._segs.update(ends)
            for s in removed:
                self._segs.pop(s, None)

    def segment_has_rows(self, seq):
        with self._lock:
            return any(r[_SEG] == seq for r in self._rows.values())

    def cut(self, seq, size):
        with self._lock:
            gone = [c for c, r in self._rows.items()
                    if r[_SEG] == seq and r[_OFF] + RECORD_HEADER_SIZE + r[_STORED] > size]
            for c in gone:
                del self._rows[c]
            ends = [r[_OFF] + RECORD_HEADER_SIZE + r[_STORED] for r in self._rows.values() if r[_SEG] == seq]
            return len(gone), (max(ends) if ends else None)

    def rows_in(self, seq):
        with self._lock:
            return sorted(((c, r[_OFF], r[_STORED]) for c, r in self._rows.items() if r[_SEG] == seq),
                          key=lambda t: t[1])

    def by_place(self):
        with self._lock:
            out = [(c, r[_SEG], r[_OFF], r[_STORED]) for c, r in self._rows.items()]
        out.sort(key=lambda t: (t[1], t[2]))
        return out

    def lru(self, limit, after=None):
        with self._lock:
            keyed = [((r[_USE], c), r[_STORED]) for c, r in self._rows.items()]
        keyed = sorted(k for k in keyed if after is None or k[0] > tuple(after))
        return [(c, n, use) for (use, c), n in keyed[:int(limit)]]

    def totals(self):
        with self._lock:
            rows = list(self._rows.values())
        return len(rows), sum(r[_RAW] for r in rows), sum(r[_STORED] for r in rows)

    def record_bytes(self, ids=None):
        with self._lock:
            rows = self._rows
            if ids is None:
                sel = rows.values()
            else:
                sel = [rows[c] for c in ids if c in rows]
            return sum(RECORD_HEADER_SIZE + r[_STORED] for r in sel)

    def live_by_segment(self):
        out = {}
        with self._lock:
            for r in self._rows.values():
                out[r[_SEG]] = out.get(r[_SEG], 0) + RECORD_HEADER_SIZE + r[_STORED]
        return out
