"""What this anchor knows of its fleet, on its own flash: DATA/fleet.sqlite. CPython only.

Kept apart from the catalog (a fleet can be joined and left without touching the catalog's
schema) and rebuilt from the store if lost: every row here is a copy of something in the
bucket, or progress that is redone. Modules of the fleet package create their own tables in
it (CREATE TABLE IF NOT EXISTS) on the one connection opened here."""
import logging
import os
import sqlite3
import time

log = logging.getLogger("anchor")

STATE_FILE = "fleet.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def open_state(data_dir):
    """The connection, and whether the file is new (made now, or made again because the one
    there was damaged: moved aside as fleet.sqlite.damaged-<time>, and the anchor rebuilds
    what it knew from the store instead of refusing to start)."""
    path = os.path.join(data_dir, STATE_FILE)
    fresh = not os.path.exists(path)
    try:
        db = _open(path)
        ok = db.execute("PRAGMA quick_check").fetchone()[0]
        if ok != "ok":
            raise sqlite3.DatabaseError(ok)
    except sqlite3.DatabaseError as e:
        aside = "%s.damaged-%d" % (path, int(time.time()))
        log.error("%s is damaged (%s): moved to %s; what this anchor knew of its fleet is read from the "
                  "store again", path, e, aside)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.rename(path + suffix, aside + suffix)
        db = _open(path)
        fresh = True
    return db, fresh


def _open(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a row saying a chunk is safely in the store lets flash evict it; after a power cut
    # that row must still be there, or the anchor would have let go of a chunk it cannot find.
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(_SCHEMA)
    return db


def anchor_id(db):
    """This anchor's name in the fleet's object keys: random, made once, kept."""
    row = db.execute("SELECT value FROM meta WHERE key='anchor_id'").fetchone()
    if row is not None:
        return row[0]
    aid = os.urandom(8).hex()
    db.execute("INSERT OR IGNORE INTO meta VALUES ('anchor_id', ?)", (aid,))
    return db.execute("SELECT value FROM meta WHERE key='anchor_id'").fetchone()[0]
