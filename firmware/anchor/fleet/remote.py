"""Chunks this anchor can read from the fleet store, and the chunk store with the fleet
behind it. CPython only.

`remote` (in DATA/fleet.sqlite) says where in the store each chunk is that this anchor
offloaded or learned from the fleet index for a device it serves: pack, offset, sealed length,
raw length, and the device whose key sealed it. `device_keys` keeps each such device's key:
derived from the pairing secret once, it stays readable here after an unpair, so a snapshot
whose chunks left flash for the store can still be restored (docs/fleet.md, section 3).

TieredStore is the ChunkStore the services see on a fleet anchor: has/missing/info count a
chunk held in the store as held, and get() reads it from there (one range GET, unsealed and
checked against its id) when flash does not hold it. Writes, eviction and the store's own
checks go to flash alone."""
import logging
import threading

from anchor.fleet import packs
from anchor.fleet.objects import ObjectMissing
from anchor.storage.chunks import StoreError

log = logging.getLogger("anchor")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS remote (
    chunk BLOB NOT NULL,              -- SHA-256 of the chunk
    device TEXT NOT NULL,             -- whose key sealed this copy (one copy per device)
    pack TEXT NOT NULL,
    off INTEGER NOT NULL,
    len INTEGER NOT NULL,             -- sealed length in the pack
    raw INTEGER NOT NULL,             -- the chunk's own length
    PRIMARY KEY (chunk, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_keys (device TEXT PRIMARY KEY, key BLOB NOT NULL);
"""


# The copies of one chunk this anchor can unseal: those sealed for a device whose key it holds.
_COPIES = ("SELECT r.device, r.pack, r.off, r.len, r.raw, k.key FROM remote r JOIN device_keys k "
           "ON k.device = r.device WHERE r.chunk=?")


def pack_key(name):
    return "packs/%s/%s" % (name[:2], name)


class RemoteChunks:
    def __init__(self, db, objects, keys):
        self.db = db
        self.objects = objects
        self.keys = keys
        self.reads = 0                # chunks read from the store (status, tests)
        self.damaged = 0
        self.on_damage = None         # pack name -> None: tell the fleet a pack is damaged
        self.relearn = None           # [chunks] -> set found: look for copies in the index again
        self.forgotten = set()        # chunks whose copy was found damaged or gone: relearn them
        self._lock = threading.Lock()  # rows are written by the loop, read by restore threads too
        db.executescript(_SCHEMA)
        self._count = list(db.execute("SELECT count(*), coalesce(sum(raw), 0) FROM remote").fetchone())

    # --- device keys -----------------------------------------------------------------

    def learn_device(self, name, pairing_secret):
        key = self.keys.device_key(name, pairing_secret)
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO device_keys VALUES (?, ?)", (name, key))
        return key

    def device_key(self, name):
        with self._lock:
            row = self.db.execute("SELECT key FROM device_keys WHERE device=?", (name,)).fetchone()
        return bytes(row[0]) if row else None

    # --- where chunks are ------------------------------------------------------------

    def add(self, rows):
        """rows: (chunk sha, device, pack, offset, sealed length, raw length)."""
        with self._lock:
            db = self.db
            n = nbytes = 0
            db.execute("BEGIN")
            try:
                for r in rows:
                    if db.execute("INSERT OR IGNORE INTO remote VALUES (?, ?, ?, ?, ?, ?)", r).rowcount:
                        n += 1
                        nbytes += r[5]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._count[0] += n
            self._count[1] += nbytes

    def forget(self, chunk, device):
        self.forgotten.add(bytes(chunk))
        with self._lock:
            row = self.db.execute("SELECT raw FROM remote WHERE chunk=? AND device=?", (bytes(chunk), device)).fetchone()
            if row is not None:
                self.db.execute("DELETE FROM remote WHERE chunk=? AND device=?", (bytes(chunk), device))
                self._count[0] -= 1
                self._count[1] -= row[0]

    def has(self, chunk):
        with self._lock:
            return self.db.execute("SELECT 1 FROM remote WHERE chunk=? LIMIT 1", (bytes(chunk),)).fetchone() is not None

    def present(self, ids, device=None):
        """The ids among `ids` the store holds (sealed for `device`, if given), as a set."""
        out = set()
        ids = [bytes(c) for c in ids]
        extra = "" if device is None else " AND device=?"
        with self._lock:
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                q = "SELECT chunk FROM remote WHERE chunk IN (%s)%s" % (",".join("?" * len(part)), extra)
                out.update(bytes(r[0]) for r in self.db.execute(q, part + ([device] if device else [])))
        return out

    def where(self, chunk):
        """One copy of the chunk this anchor can unseal (see rows()), or None."""
        with self._lock:
            return self.db.execute(_COPIES + " LIMIT 1", (bytes(chunk),)).fetchone()

    def count(self):
        """(copies of chunks in the store this anchor knows of, their raw bytes): kept as rows
        come and go, so the status stays cheap with a million rows."""
        return tuple(self._count)

    def rows(self, chunk):
        """Every copy of the chunk this anchor can unseal: (device, pack, offset, sealed
        length, raw length, device key)."""
        with self._lock:
            return self.db.execute(_COPIES, (bytes(chunk),)).fetchall()

    def in_pack(self, pack):
        """[(chunk, device)] this anchor knows in pack `pack`."""
        with self._lock:
            return [(bytes(c), d) for c, d in self.db.execute("SELECT chunk, device FROM remote WHERE pack=?", (pack,))]

    def read(self, chunk):
        """The chunk's bytes from the store; StoreError if it is not there or not right. A
        damaged copy is forgotten and reported (on_damage: the pack's holders offload its
        chunks again), then the next copy is tried; `relearn` may find copies this anchor did
        not know of (the index, read again)."""
        chunk = bytes(chunk)
        why = None
        for attempt in range(2):
            for device, name, off, length, _, key in self.rows(chunk):
                try:
                    raw = packs.read_chunk(self.objects, pack_key(name), name, off, length, key,
                                           self.keys.content, chunk)
                except packs.DamagedObject as e:
                    self.damaged += 1
                    self.forget(chunk, device)
                    why = str(e)
                    log.error("fleet: %s; forgotten here, and its holders are asked to offload it again", e)
                    if self.on_damage is not None:
                        self.on_damage(name)
                    continue
                except ObjectMissing as e:
                    # Swept: another anchor's copy won the compaction and GC removed this one.
                    # Forgotten here; the index names the copy that is kept.
                    self.forget(chunk, device)
                    why = str(e)
                    log.warning("fleet: %s; looking for another copy", e)
                    continue
                except Exception as e:      # unreachable store: reported like a missing chunk
                    raise StoreError("chunk %s: the fleet store cannot be read: %s" % (chunk.hex()[:16], e))
                self.reads += 1
                return raw
            if attempt or self.relearn is None or not self.relearn([chunk]):
                break
        if why is not None:
            raise StoreError("chunk %s: the fleet store's copy is damaged or gone (%s)" % (chunk.hex()[:16], why))
        raise StoreError("chunk %s is not stored here nor in the fleet store" % chunk.hex())


class TieredStore:
    def __init__(self, local, remote):
        self.local = local
        self.remote = remote

    def __getattr__(self, name):
        return getattr(self.local, name)

    def has(self, chunk_id):
        return self.local.has(chunk_id) or self.remote.has(chunk_id)

    def missing(self, chunk_ids):
        ids = list(chunk_ids)
        gone = self.local.missing(ids)
        if not gone:
            return gone
        remote = self.remote
        there = remote.present([ids[i] for i in gone])
        gone = [i for i in gone if bytes(ids[i]) not in there]
        # Copies found damaged or gone earlier: another anchor may have offloaded them again
        # since (one index read for all of them; only for these, never for chunks simply lost).
        again = [bytes(ids[i]) for i in gone if bytes(ids[i]) in remote.forgotten]
        if again and remote.relearn is not None:
            found = remote.relearn(again)
            gone = [i for i in gone if bytes(ids[i]) not in found]
        return gone

    def get(self, chunk_id):
        try:
            return self.local.get(chunk_id)
        except StoreError:
            if not self.remote.has(chunk_id):
                raise
        return self.remote.read(chunk_id)

    def info(self, chunk_id):
        got = self.local.info(chunk_id)
        if got is None:
            row = self.remote.where(chunk_id)
            if row is not None:
                return {"raw_len": row[4], "stored_len": 0, "remote": True}
        return got
