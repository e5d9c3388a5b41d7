"""The catalog: devices, snapshots, objects and what each device may see (CPython only).

SQLite in WAL mode (docs/decisions.md has the measurements). The catalog only ever
refers to chunks that the chunk store has already made durable, because the backup
service flushes the store before it commits a catalog transaction. It is the one record of
which chunks are pinned (live_chunks, changed in the snapshot's own transaction); retention
asks it at eviction time.
"""
import os
import sqlite3
import time

CATALOG_VERSION = 1
MARK = ".mark"        # beside the catalog: how many snapshot changes it has made (see __init__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pairings (
    device TEXT PRIMARY KEY,
    key BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    last_seen REAL
);
CREATE TABLE IF NOT EXISTS snapshots (
    device_id INTEGER NOT NULL REFERENCES devices(id),
    seq INTEGER NOT NULL,
    parent INTEGER,
    created REAL NOT NULL,
    root BLOB NOT NULL,
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE TABLE IF NOT EXISTS objects (
    oid BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    nchunks INTEGER NOT NULL,
    chunks BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_objects (
    device_id INTEGER NOT NULL,
    oid BLOB NOT NULL,
    PRIMARY KEY (device_id, oid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_chunks (
    device_id INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    via INTEGER NOT NULL DEFAULT 0,   -- how the device proved it holds it: 0 upload, 1 relay
    PRIMARY KEY (device_id, chunk)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY,
    device_id INTEGER NOT NULL,
    direction TEXT NOT NULL,          -- 'down' (to the rover) or 'up' (from it)
    protocol TEXT NOT NULL,           -- 'http' or 'mqtt'
    method TEXT NOT NULL,             -- GET, PUT, POST, PUBLISH
    target TEXT NOT NULL,             -- URL or topic
    time REAL NOT NULL,
    status INTEGER NOT NULL,
    etag TEXT,
    last_modified TEXT,
    content_type TEXT,
    oid BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS captures_oid ON captures(oid);
-- a download cut off by the link resumes from the newest capture of its URL (download())
CREATE INDEX IF NOT EXISTS captures_target ON captures(device_id, target);
CREATE TABLE IF NOT EXISTS trees (
    root BLOB PRIMARY KEY,            -- a tree file, by its root digest
    snapshots INTEGER NOT NULL        -- how many snapshots use it
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tree_objects (
    root BLOB NOT NULL,
    oid BLOB NOT NULL,
    PRIMARY KEY (root, oid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_objects (
    oid BLOB PRIMARY KEY,
    trees INTEGER NOT NULL            -- how many trees of existing snapshots hold it
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS live_chunks (
    chunk BLOB PRIMARY KEY,
    objects INTEGER NOT NULL          -- how many live objects hold it: pinned while > 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    device_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (device_id, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS daily (        -- the counters again, per UTC day (the status page's plots)
    device_id INTEGER NOT NULL,
    day INTEGER NOT NULL,             -- days since 1970-01-01 UTC
    name TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (device_id, day, name)
) WITHOUT ROWID;
"""


# What a snapshot is of, as the rover said it (COMMIT's optional description): the folder as
# it named it, its host name or board, a tag. NULL for older rovers and older snapshots.
ABOUT_COLUMNS = ("root_path", "host", "tag")
_SNAP_COLS = "seq, parent, created, root, entries, bytes, root_path, host, tag"


def _snap(r):
    return {"id": r[0], "parent": r[1], "time": r[2], "root": r[3], "entries": r[4], "bytes": r[5],
            "path": r[6], "host": r[7], "tag": r[8]}


class CatalogError(Exception):
    pass


class Catalog:
    OBJECT_SIZE = 0       # fields of what object_chunks() returns
    OBJECT_CHUNKS = 1

    def __init__(self, path, readonly=False):
        """readonly: look at the catalog of an anchor another process runs (tests, tools)."""
        new = not os.path.exists(path)
        if readonly:
            self.db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, isolation_level=None,
                                      check_same_thread=False)
        else:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)
            # Added by issue 13 (what a snapshot is of): older catalogs get the columns, empty.
            have = set(r[1] for r in self.db.execute("PRAGMA table_info(snapshots)"))
            for col in ABOUT_COLUMNS:
                if col not in have:
                    self.db.execute("ALTER TABLE snapshots ADD COLUMN %s TEXT" % col)
        row = self.db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        if row is None and readonly:
            raise CatalogError("catalog %s has no version" % path)
        if row is None:
            if not new and self.db.execute("SELECT count(*) FROM devices").fetchone()[0]:
                raise CatalogError("catalog %s has data but no version" % path)
            self.db.execute("INSERT INTO meta VALUES ('version', ?)", (str(CATALOG_VERSION),))
        elif int(row[0]) != CATALOG_VERSION:
            raise CatalogError("catalog %s is format version %s; this anchor reads version %d"
                               % (path, row[0], CATALOG_VERSION))
        # SQLite reads a WAL up to its first bad frame and takes the rest as never written:
        # a cut or damaged WAL silently undoes the last commits, and the catalog still checks
        # clean. So every snapshot commit and forget counts itself inside its transaction,
        # and the count is also written beside the catalog after the commit (MARK). A catalog
        # whose count is below its mark lost changes, which is reported (verify's
        # damage_at_start) until `verify --repair` acknowledges it.
        self.mark_path = path + MARK
        self.damage = []
        if not readonly:
            mark = self._read_mark()
            have = self._changes()
            if mark is not None and have < mark:
                self.damage.append(
                    "catalog: the last %d snapshot changes (commits or forgets) are gone (the catalog "
                    "holds %d, its mark says %d): its WAL was cut or damaged. Snapshots committed "
                    "then are missing; each rover's next backup commits its files again"
                    % (mark - have, have, mark))

    def _changes(self):
        row = self.db.execute("SELECT value FROM meta WHERE key='changes'").fetchone()
        return int(row[0]) if row else 0

    def _count_change(self):
        """Inside a snapshot commit's or forget's transaction."""
        self.db.execute("INSERT INTO meta VALUES ('changes', '1') ON CONFLICT(key) DO UPDATE "
                        "SET value = CAST(value AS INTEGER) + 1")

    def _read_mark(self):
        try:
            with open(self.mark_path, "rb") as f:
                return int(f.read(32).decode("ascii").strip())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError):
            return None            # a damaged mark is no evidence either way

    def _write_mark(self):
        """After the commit: a crash before this leaves the mark behind the catalog, which is
        never reported (only a catalog behind its mark lost something)."""
        tmp = self.mark_path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"%d\n" % self._changes())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.mark_path)

    def acknowledge_loss(self):
        """verify --repair: the loss is known; the mark follows the catalog again."""
        self._write_mark()
        done, self.damage = self.damage, []
        return done

    def close(self):
        self.db.close()

    # --- devices -----------------------------------------------------------------------

    def device_id(self, name, create=True):
        row = self.db.execute("SELECT id FROM devices WHERE name=?", (name,)).fetchone()
        if row:
            return row[0]
        if not create:
            return None
        cur = self.db.execute("INSERT INTO devices(name, created) VALUES (?, ?)", (name, time.time()))
        return cur.lastrowid

    # --- pairing -----------------------------------------------------------------------

    def pair(self, device, key):
        """Store (or replace) a rover's pairing secret."""
        self.db.execute("INSERT OR REPLACE INTO pairings VALUES (?, ?, ?)", (device, bytes(key), time.time()))

    def unpair(self, device):
        return self.db.execute("DELETE FROM pairings WHERE device=?", (device,)).rowcount > 0

    def pairing_key(self, device):
        row = self.db.execute("SELECT key FROM pairings WHERE device=?", (device,)).fetchone()
        return bytes(row[0]) if row else None

    def paired(self):
        return [r[0] for r in self.db.execute("SELECT device FROM pairings ORDER BY device")]

    def seen(self, dev):
        self.db.execute("UPDATE devices SET last_seen=? WHERE id=?", (time.time(), dev))

    def devices(self):
        rows = self.db.execute(
            "SELECT d.name, d.created, d.last_seen, count(s.seq), max(s.seq) "
            "FROM devices d LEFT JOIN snapshots s ON s.device_id = d.id GROUP BY d.id ORDER BY d.name")
        return [{"device": r[0], "created": r[1], "last_seen": r[2], "snapshots": r[3], "latest": r[4]}
                for r in rows]

    # --- snapshots ---------------------------------------------------------------------

    def latest(self, dev):
        row = self.db.execute("SELECT max(seq) FROM snapshots WHERE device_id=?", (dev,)).fetchone()
        return row[0]

    def snapshot(self, dev, seq):
        row = self.db.execute("SELECT %s FROM snapshots WHERE device_id=? AND seq=?" % _SNAP_COLS,
                              (dev, seq)).fetchone()
        return None if row is None else _snap(row)

    def snapshots(self, dev):
        rows = self.db.execute("SELECT %s FROM snapshots WHERE device_id=? ORDER BY seq" % _SNAP_COLS, (dev,))
        return [_snap(r) for r in rows]

    def add_scope(self, dev, chunk_ids):
        """Record that `dev` proved it holds these chunks (it uploaded their bytes)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR IGNORE INTO device_chunks VALUES (?, ?, 0)", ((dev, c) for c in chunk_ids))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def commit_snapshot(self, dev, parent, root, entries, total, new_objects, tree_oids, about=None,
                        seq=None, created=None):
        """One transaction: the objects this backup declared, the snapshot, and what it keeps
        alive. new_objects: iterable of (oid, size, chunk_ids_bytes); tree_oids: the object
        ids in the snapshot's tree. Returns (snapshot number, chunks that became pinned).
        seq, created: a snapshot another anchor of the fleet committed, taken over with its
        number and time (CatalogError if this anchor has that number already)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for oid, size, ids in new_objects:
                # A declared chunk list hashes to its id (the backup checked), so it replaces a
                # row of the same id that damage changed; an intact row is the same bytes.
                db.execute("INSERT INTO objects VALUES (?, ?, ?, ?) ON CONFLICT(oid) DO UPDATE SET "
                           "size=excluded.size, nchunks=excluded.nchunks, chunks=excluded.chunks "
                           "WHERE chunks != excluded.chunks OR size != excluded.size",
                           (oid, size, len(ids) // 32, ids))
                db.execute("INSERT OR IGNORE INTO device_objects VALUES (?, ?)", (dev, oid))
                db.executemany("INSERT OR IGNORE INTO device_chunks VALUES (?, ?, 0)",
                               ((dev, ids[i:i + 32]) for i in range(0, len(ids), 32)))
            if seq is None:
                seq = (self.latest(dev) or 0) + 1
            elif self.snapshot(dev, seq) is not None:
                raise CatalogError("snapshot %d of this device exists here already" % seq)
            pinned = self._tree_ref(root, tree_oids)
            about = (list(about or ()) + [None, None, None])[:3]
            db.execute("INSERT INTO snapshots (device_id, seq, parent, created, root, entries, bytes, "
                       "root_path, host, tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (dev, seq, parent, time.time() if created is None else created, root, entries,
                        total, *about))
            self._count_change()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._write_mark()
        return seq, pinned

    def _tree_ref(self, root, tree_oids):
        """One more snapshot uses tree `root`; returns chunks that became live."""
        db = self.db
        if db.execute("UPDATE trees SET snapshots = snapshots + 1 WHERE root=?", (root,)).rowcount:
            return []
        db.execute("INSERT INTO trees VALUES (?, 1)", (root,))
        pinned = []
        for oid in tree_oids:
            db.execute("INSERT INTO tree_objects VALUES (?, ?)", (root, oid))
            if db.execute("UPDATE live_objects SET trees = trees + 1 WHERE oid=?", (oid,)).rowcount:
                continue
            db.execute("INSERT INTO live_objects VALUES (?, 1)", (oid,))
            for c in self._chunks_of(oid):
                if not db.execute("UPDATE live_chunks SET objects = objects + 1 WHERE chunk=?", (c,)).rowcount:
                    db.execute("INSERT INTO live_chunks VALUES (?, 1)", (c,))
                    pinned.append(c)
        return pinned

    def _chunks_of(self, oid):
        row = self.db.execute("SELECT chunks FROM objects WHERE oid=?", (oid,)).fetchone()
        if row is None:
            return []
        ids = row[0]
        return [ids[i:i + 32] for i in range(0, len(ids), 32)]

    def tree_objects(self, root):
        """The object ids tree `root` holds (one snapshot or more use it)."""
        return [r[0] for r in self.db.execute("SELECT oid FROM tree_objects WHERE root=?", (root,))]

    def tree_chunk_lists(self, root):
        """(oid, size, chunk ids concatenated) of every object tree `root` holds that the
        catalog has, in one query."""
        return self.db.execute("SELECT t.oid, o.size, o.chunks FROM tree_objects t JOIN objects o "
                               "ON o.oid = t.oid WHERE t.root=?", (root,)).fetchall()

    def object_chunk_bytes(self, oid):
        """(size, the chunk ids of an object concatenated, 32 bytes each), or None."""
        row = self.db.execute("SELECT size, chunks FROM objects WHERE oid=?", (oid,)).fetchone()
        return None if row is None else (row[0], bytes(row[1]))

    def all_snapshots(self):
        """(device name, snapshot) of every snapshot, by device then number."""
        rows = self.db.execute(
            "SELECT d.name, s.seq, s.parent, s.created, s.root, s.entries, s.bytes FROM snapshots s "
            "JOIN devices d ON d.id = s.device_id ORDER BY d.name, s.seq")
        return [(r[0], {"id": r[1], "parent": r[2], "time": r[3], "root": r[4], "entries": r[5], "bytes": r[6]})
                for r in rows.fetchall()]

    def check(self):
        """None when SQLite finds the catalog file consistent (PRAGMA quick_check), else what
        it says."""
        try:
            rows = [r[0] for r in self.db.execute("PRAGMA quick_check(3)")]
        except sqlite3.DatabaseError as e:
            return str(e)
        return None if rows == ["ok"] else "; ".join(str(r).replace("\n", " ") for r in rows)

    def forget_snapshot(self, dev, seq):
        """Remove a snapshot. Returns (root, tree_freed, chunks no longer pinned): its
        objects stay (in the device's scope, as pass-through data) until evicted."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT root FROM snapshots WHERE device_id=? AND seq=?", (dev, seq)).fetchone()
            if row is None:
                raise CatalogError("no snapshot %d" % seq)
            root = row[0]
            db.execute("DELETE FROM snapshots WHERE device_id=? AND seq=?", (dev, seq))
            db.execute("UPDATE snapshots SET parent=NULL WHERE device_id=? AND parent=?", (dev, seq))
            released = []
            db.execute("UPDATE trees SET snapshots = snapshots - 1 WHERE root=?", (root,))
            left = db.execute("SELECT snapshots FROM trees WHERE root=?", (root,)).fetchone()
            freed = left is not None and left[0] <= 0
            if freed:
                db.execute("DELETE FROM trees WHERE root=?", (root,))
                oids = [r[0] for r in db.execute("SELECT oid FROM tree_objects WHERE root=?", (root,))]
                db.execute("DELETE FROM tree_objects WHERE root=?", (root,))
                for oid in oids:
                    db.execute("UPDATE live_objects SET trees = trees - 1 WHERE oid=?", (oid,))
                    if db.execute("DELETE FROM live_objects WHERE oid=? AND trees <= 0", (oid,)).rowcount:
                        for c in self._chunks_of(oid):
                            db.execute("UPDATE live_chunks SET objects = objects - 1 WHERE chunk=?", (c,))
                            if db.execute("DELETE FROM live_chunks WHERE chunk=? AND objects <= 0", (c,)).rowcount:
                                released.append(c)
            self._count_change()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._write_mark()
        return root, freed, released

    def live_chunks(self):
        """Every chunk some snapshot keeps (pinned), streamed."""
        return (r[0] for r in self.db.execute("SELECT chunk FROM live_chunks"))

    def would_release(self, dev, seqs):
        """The chunks forgetting snapshots `seqs` of `dev` would turn into pass-through data:
        the reference counts of forget_snapshot, worked out without changing them."""
        db = self.db
        tree_dec = {}
        for seq in seqs:
            root = db.execute("SELECT root FROM snapshots WHERE device_id=? AND seq=?", (dev, seq)).fetchone()[0]
            tree_dec[root] = tree_dec.get(root, 0) + 1
        obj_dec = {}
        for root, n in tree_dec.items():
            row = db.execute("SELECT snapshots FROM trees WHERE root=?", (root,)).fetchone()
            if row is None or row[0] - n > 0:
                continue                          # other snapshots still use this tree
            for (oid,) in db.execute("SELECT oid FROM tree_objects WHERE root=?", (root,)):
                obj_dec[oid] = obj_dec.get(oid, 0) + 1
        chunk_dec = {}
        for oid, n in obj_dec.items():
            row = db.execute("SELECT trees FROM live_objects WHERE oid=?", (oid,)).fetchone()
            if row is None or row[0] - n > 0:
                continue
            for c in self._chunks_of(oid):
                chunk_dec[c] = chunk_dec.get(c, 0) + 1
        released = []
        for c, n in chunk_dec.items():
            row = db.execute("SELECT objects FROM live_chunks WHERE chunk=?", (c,)).fetchone()
            if row is not None and row[0] - n <= 0:
                released.append(c)
        return released

    def live_among(self, ids):
        """The subset of chunk ids that some snapshot keeps (pinned)."""
        out = set()
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = "SELECT chunk FROM live_chunks WHERE chunk IN (%s)" % ",".join("?" * len(part))
            out.update(r[0] for r in self.db.execute(q, part))
        return out

    def download(self, dev, url, validator):
        """The newest whole HTTP download of `url` by `dev` whose ETag (or, without one, its
        Last-Modified) is `validator`: (oid, size, etag, last_modified, content_type), or None.
        What a relayed download cut off by the link resumes from."""
        return self.db.execute(
            "SELECT oid, size, etag, last_modified, content_type FROM captures WHERE device_id=? AND target=?"
            " AND protocol='http' AND method='GET' AND status=200 AND (etag=? OR (etag IS NULL AND last_modified=?))"
            " ORDER BY id DESC LIMIT 1", (dev, url, validator, validator)).fetchone()

    def recipe(self, dev, oid):
        """How to fetch an object again: the newest whole HTTP download of it by `dev`."""
        row = self.db.execute(
            "SELECT target, etag, last_modified FROM captures WHERE device_id=? AND oid=? AND protocol='http'"
            " AND method='GET' AND status=200 ORDER BY id DESC LIMIT 1", (dev, oid)).fetchone()
        if row is None:
            return None
        return {"url": row[0], "etag": row[1], "last_modified": row[2]}

    def record_capture(self, dev, oid, size, ids, prov):
        """One transaction: a relayed body becomes an object in the device's scope, with
        where it came from. `prov`: direction, protocol, method, target, status, etag,
        last_modified, content_type. The chunks must already be durable in the store."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR IGNORE INTO objects VALUES (?, ?, ?, ?)", (oid, size, len(ids) // 32, ids))
            db.execute("INSERT OR IGNORE INTO device_objects VALUES (?, ?)", (dev, oid))
            db.executemany("INSERT OR IGNORE INTO device_chunks VALUES (?, ?, 1)",
                           ((dev, ids[i:i + 32]) for i in range(0, len(ids), 32)))
            cur = db.execute(
                "INSERT INTO captures(device_id, direction, protocol, method, target, time, status, etag,"
                " last_modified, content_type, oid, size) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (dev, prov["direction"], prov["protocol"], prov["method"], prov["target"], time.time(),
                 prov.get("status", 0), prov.get("etag"), prov.get("last_modified"), prov.get("content_type"),
                 oid, size))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return cur.lastrowid

    def captures_after(self, dev, after, limit=1000):
        """[(capture id, object id, chunk ids concatenated)] of the device's captures after
        capture id `after`, oldest first (the fleet's offload walks them)."""
        return self.db.execute(
            "SELECT c.id, c.oid, o.chunks FROM captures c JOIN objects o ON o.oid = c.oid "
            "WHERE c.device_id=? AND c.id>? ORDER BY c.id LIMIT ?", (dev, after, limit)).fetchall()

    def captures(self, dev=None):
        q = ("SELECT d.name, c.direction, c.protocol, c.method, c.target, c.time, c.status, c.etag,"
             " c.last_modified, c.content_type, c.oid, c.size FROM captures c JOIN devices d ON d.id = c.device_id")
        args = ()
        if dev is not None:
            q += " WHERE c.device_id = ?"
            args = (dev,)
        keys = ("device", "direction", "protocol", "method", "target", "time", "status", "etag",
                "last_modified", "content_type", "object", "size")
        out = []
        for r in self.db.execute(q + " ORDER BY c.id", args):
            d = dict(zip(keys, r))
            d["object"] = d["object"].hex()
            out.append(d)
        return out

    # --- objects and scope -------------------------------------------------------------

    def device_has_object(self, dev, oid):
        return self.db.execute("SELECT 1 FROM device_objects WHERE device_id=? AND oid=?",
                               (dev, oid)).fetchone() is not None

    def object_chunks(self, oid):
        row = self.db.execute("SELECT size, chunks FROM objects WHERE oid=?", (oid,)).fetchone()
        if row is None:
            return None
        ids = row[1]
        return row[0], [ids[i:i + 32] for i in range(0, len(ids), 32)]

    def chunks_in_scope(self, dev, ids):
        """{chunk id: via} for the `ids` this device uploaded (via 0) or relayed (via 1)."""
        have = {}
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = "SELECT chunk, via FROM device_chunks WHERE device_id=? AND chunk IN (%s)" % ",".join("?" * len(part))
            have.update(self.db.execute(q, (dev, *part)))
        return have

    def object_captured(self, dev, oid):
        """True if this device's relay traffic brought the object in."""
        return self.db.execute("SELECT 1 FROM captures WHERE device_id=? AND oid=? LIMIT 1",
                               (dev, oid)).fetchone() is not None

    # --- counters ----------------------------------------------------------------------

    # Per-day counters kept: what the status page plots (radio bytes against a plain upload).
    DAILY = ("link_rx", "link_tx", "link_control", "link_backup", "link_relay", "backups",
             "supplied_passthrough", "supplied_backups", "supplied_uploaded", "chunks_uploaded",
             "relay_down_bytes", "relay_up_bytes")

    def count(self, dev, when=None, **amounts):
        items = [(k, v) for k, v in amounts.items() if v]
        self.db.executemany(
            "INSERT INTO counters VALUES (?, ?, ?) ON CONFLICT(device_id, name) DO UPDATE SET value = value + excluded.value",
            ((dev, k, v) for k, v in items))
        day = int((time.time() if when is None else when) // 86400)
        self.db.executemany(
            "INSERT INTO daily VALUES (?, ?, ?, ?) ON CONFLICT(device_id, day, name) "
            "DO UPDATE SET value = value + excluded.value",
            ((dev, day, k, v) for k, v in items if k in self.DAILY))

    def daily(self, since_day):
        """{device: {day: {name: value}}} from since_day on (days since the epoch, UTC)."""
        out = {}
        for name, day, key, value in self.db.execute(
                "SELECT d.name, x.day, x.name, x.value FROM daily x JOIN devices d ON d.id = x.device_id "
                "WHERE x.day >= ? ORDER BY x.day", (since_day,)):
            out.setdefault(name, {}).setdefault(day, {})[key] = value
        return out

    def last_backups(self, n=10):
        """{device: [times of its last n snapshots, oldest first]}."""
        out = {}
        for name, t in self.db.execute(
                "SELECT d.name, s.created FROM snapshots s JOIN devices d ON d.id = s.device_id "
                "WHERE s.seq > (SELECT max(seq) FROM snapshots WHERE device_id = s.device_id) - ? "
                "ORDER BY s.device_id, s.seq", (n,)):
            out.setdefault(name, []).append(t)
        return out

    def counters(self):
        out = {}
        for name, key, value in self.db.execute(
                "SELECT d.name, c.name, c.value FROM counters c JOIN devices d ON d.id = c.device_id"):
            out.setdefault(name, {})[key] = value
        return out
