"""The chunk index in SQLite: `index.sqlite`, the backend the anchor runs (CPython only).

Schema and pragmas: docs/storage.md, "Index schema"; why SQLite: docs/decisions.md. WAL mode
with synchronous=NORMAL, except for what cannot be rebuilt from the segments (delete(),
relocate()), which commits with FULL. insert() runs on a second connection, because the store's
writer thread commits chunk rows while the owner thread keeps reading through the first.

The `class` column stays in the schema (storage format version 1) but nothing reads it any
more: new rows get its default 0, and pinned-ness is the catalog's (storage/index.py).
"""

import sqlite3

from anchor.storage.index import ChunkIndex, ROW_FIELDS
from anchor.storage.segments import FORMAT_VERSION, RECORD_HEADER_SIZE, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value
);
CREATE TABLE IF NOT EXISTS segments (
    seq           INTEGER PRIMARY KEY,
    committed_end INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id         BLOB PRIMARY KEY,
    seg        INTEGER NOT NULL,
    off        INTEGER NOT NULL,
    raw_len    INTEGER NOT NULL,
    stored_len INTEGER NOT NULL,
    enc        INTEGER NOT NULL,
    class      INTEGER NOT NULL DEFAULT 0,
    last_use   INTEGER NOT NULL
) WITHOUT ROWID;
"""

_COLUMNS = "chunks(id, seg, off, raw_len, stored_len, enc, last_use)"
_ROW = "(" + ",".join("?" * ROW_FIELDS) + ")"
INSERT_CHUNK = "INSERT OR IGNORE INTO %s VALUES %s" % (_COLUMNS, _ROW)
# Chunk rows go in as multi-row INSERTs of up to _INSERT_WIDTH rows: one sqlite3_step (one GIL
# release) per statement instead of one per row, which other threads waiting for the GIL made
# costly (see docs/decisions.md, "Chunk store ingest: the store's own path").
_INSERT_WIDTH = 256
_INSERT_QUERIES = {}

# SQLite's default limit on host parameters in one statement is 32766 (since 3.32).
_MAX_VARS = 32000
_IN_QUERIES = {}
_SUM_WIDTH = 512
_RECORD_SUM = "coalesce(sum(stored_len), 0) + count(*) * %d" % RECORD_HEADER_SIZE


def insert_rows(db, flat):
    """Insert chunk rows given as one flat list (ROW_FIELDS values per row), in statements of
    power-of-two widths up to _INSERT_WIDTH rows (prepared once each, then cached). Returns the
    number of rows inserted."""
    n = len(flat) // ROW_FIELDS
    done = 0
    i = 0
    while i < n:
        w = min(_INSERT_WIDTH, 1 << ((n - i).bit_length() - 1))
        q = _INSERT_QUERIES.get(w)
        if q is None:
            q = _INSERT_QUERIES[w] = "INSERT OR IGNORE INTO %s VALUES %s" % (_COLUMNS, ",".join([_ROW] * w))
        done += max(db.execute(q, flat[i * ROW_FIELDS:(i + w) * ROW_FIELDS]).rowcount, 0)
        i += w
    return done


class SqliteIndex(ChunkIndex):
    persistent = True

    def __init__(self, path, readonly=False):
        """readonly: look at the index of a store another process has open (tests, tools)."""
        self.path = path
        self._wdb = None
        if readonly:
            self.db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, isolation_level=None,
                                      check_same_thread=False)
        else:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                                      cached_statements=256)
        try:
            self._open(readonly)
        except BaseException:
            self.db.close()
            raise

    def _open(self, readonly):
        db = self.db
        if not readonly:
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL is enough: every row describes a record that was fsynced in its segment
            # first, and the store rebuilds rows of commits lost with the WAL tail.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.executescript(SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='format_version'").fetchone()
        if row is None and not readonly:
            db.execute("INSERT INTO meta VALUES ('format_version', ?)", (FORMAT_VERSION,))
        elif row is None or row[0] != FORMAT_VERSION:
            raise StoreError("index %s has storage format version %r; this anchor reads version %d"
                             % (self.path, row and row[0], FORMAT_VERSION))

    def close(self):
        if self._wdb is not None:
            self._wdb.close()
            self._wdb = None
        self.db.close()

    def check(self):
        """None when SQLite finds the index file consistent (PRAGMA quick_check), else what it
        says."""
        try:
            rows = [r[0] for r in self.db.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as e:
            return str(e)
        return None if rows == ["ok"] else "; ".join(str(r).replace("\n", " ") for r in rows)

    # --- segments

    def segments(self):
        return dict(self.db.execute("SELECT seq, committed_end FROM segments"))

    def last_segment(self):
        return self.db.execute("SELECT seq, committed_end FROM segments ORDER BY seq DESC LIMIT 1").fetchone()

    # --- lookups

    def get(self, chunk_id):
        return self.db.execute("SELECT seg, off, raw_len, stored_len, enc, last_use FROM chunks WHERE id=?",
                               (chunk_id,)).fetchone()

    def present(self, ids):
        """Lists are padded (to a multiple of 32, or a power of two) so that a few IN (...)
        statements are prepared once and then cached."""
        found = set()
        execute = self.db.execute
        for i in range(0, len(ids), _MAX_VARS):
            part = ids[i:i + _MAX_VARS]
            n = len(part)
            width = (n + 31) & ~31 if n <= 1024 else min(1 << (n - 1).bit_length(), _MAX_VARS)
            if len(part) < width:
                part = part + [b""] * (width - len(part))     # b"" is never a chunk id
            q = _IN_QUERIES.get(width)
            if q is None:
                q = _IN_QUERIES[width] = "SELECT id FROM chunks WHERE id IN (%s)" % ",".join("?" * width)
            found.update(r[0] for r in execute(q, part))
        return found

    def ids(self):
        return (r[0] for r in self.db.execute("SELECT id FROM chunks"))

    # --- changes

    def _writer(self):
        if self._wdb is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            self._wdb = db
        return self._wdb

    def insert(self, rows, ends):
        db = self._writer()
        db.execute("BEGIN")
        try:
            n = insert_rows(db, rows)
            db.executemany("INSERT OR REPLACE INTO segments VALUES (?,?)", ends.items())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n

    def touch(self, ids, last_use):
        db = self.db
        db.execute("BEGIN")
        db.executemany("UPDATE chunks SET last_use=? WHERE id=?", [(last_use, c) for c in ids])
        db.execute("COMMIT")

    def _commit_full(self, statements):
        """Run [(sql, rows)] through executemany in one transaction committed with
        synchronous=FULL (what cannot be rebuilt from the segments). Returns the rowcounts."""
        db = self.db
        db.execute("PRAGMA synchronous=FULL")
        try:
            db.execute("BEGIN")
            try:
                counts = [max(db.executemany(q, rows).rowcount, 0) for q, rows in statements]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.execute("PRAGMA synchronous=NORMAL")
        return counts

    def delete(self, ids):
        return self._commit_full([("DELETE FROM chunks WHERE id=?", [(c,) for c in ids])])[0]

    def relocate(self, moves, ends, removed):
        self._commit_full([
            ("UPDATE chunks SET seg=?, off=? WHERE id=?", moves),
            ("INSERT OR REPLACE INTO segments VALUES (?,?)", list(ends.items())),
            ("DELETE FROM segments WHERE seq=?", [(s,) for s in removed]),
        ])

    # --- recovery

    def segment_has_rows(self, seq):
        return self.db.execute("SELECT 1 FROM chunks WHERE seg=? LIMIT 1", (seq,)).fetchone() is not None

    def cut(self, seq, size):
        db = self.db
        past = (seq, RECORD_HEADER_SIZE, size)
        lost = db.execute("SELECT count(*) FROM chunks WHERE seg=? AND off+?+stored_len>?", past).fetchone()[0]
        db.execute("DELETE FROM chunks WHERE seg=? AND off+?+stored_len>?", past)
        end = db.execute("SELECT max(off+?+stored_len) FROM chunks WHERE seg=?",
                         (RECORD_HEADER_SIZE, seq)).fetchone()[0]
        return lost, end

    # --- iteration

    def rows_in(self, seq):
        return self.db.execute("SELECT id, off, stored_len FROM chunks WHERE seg=? ORDER BY off",
                               (seq,)).fetchall()

    def by_place(self):
        return self.db.execute("SELECT id, seg, off, stored_len FROM chunks ORDER BY seg, off")

    def lru(self, limit, after=None):
        # no index on last_use: one sorted scan per call, instead of a second B-tree to update
        # on every ingest
        if after is None:
            return self.db.execute("SELECT id, stored_len, last_use FROM chunks "
                                   "ORDER BY last_use, id LIMIT ?", (int(limit),)).fetchall()
        use, cid = after
        return self.db.execute("SELECT id, stored_len, last_use FROM chunks "
                               "WHERE last_use > ? OR (last_use = ? AND id > ?) "
                               "ORDER BY last_use, id LIMIT ?", (use, use, cid, int(limit))).fetchall()

    # --- totals

    def totals(self):
        return self.db.execute("SELECT count(*), coalesce(sum(raw_len),0), coalesce(sum(stored_len),0) "
                               "FROM chunks").fetchone()

    def record_bytes(self, ids=None):
        execute = self.db.execute
        if ids is None:
            return execute("SELECT %s FROM chunks" % _RECORD_SUM).fetchone()[0]
        q = "SELECT %s FROM chunks WHERE id IN (%s)" % (_RECORD_SUM, ",".join("?" * _SUM_WIDTH))
        total = 0
        part = []
        for c in ids:
            part.append(c)
            if len(part) == _SUM_WIDTH:
                total += execute(q, part).fetchone()[0]
                part = []
        if part:
            total += execute(q, part + [b""] * (_SUM_WIDTH - len(part))).fetchone()[0]
        return total

    def live_by_segment(self):
        return dict(self.db.execute("SELECT seg, %s FROM chunks GROUP BY seg" % _RECORD_SUM))
