"""What this anchor knows of its fleet, on its own flash: DATA/fleet.sqlite. CPython only.

Kept apart from the catalog (a fleet can be joined and left without touching the catalog's
schema) and rebuilt from the store if lost: every row here is a copy of something in the
bucket, or progress that is redone. Modules of the fleet package create their own tables in
it (CREATE TABLE IF NOT EXISTS) on the one connection opened here."""
import os
import sqlite3

STATE_FILE = "fleet.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def open_state(data_dir):
    db = sqlite3.connect(os.path.join(data_dir, STATE_FILE), isolation_level=None)
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
