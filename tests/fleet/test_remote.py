"""Reading a chunk from the fleet store when flash does not hold it: a copy that is gone (swept
after another anchor's copy won the compaction) or damaged is forgotten, the damage reported,
and the copy the index names instead is found and read; with none, a clear StoreError."""
import hashlib
import os
import sqlite3

import pytest

from anchor.fleet import packs
from anchor.fleet.keys import FleetKeys
from anchor.fleet.remote import RemoteChunks, pack_key
from anchor.storage.chunks import StoreError


@pytest.fixture
def remote(objects, tmp_path):
    keys = FleetKeys(os.urandom(32))
    db = sqlite3.connect(str(tmp_path / "fleet.sqlite"), isolation_level=None)
    r = RemoteChunks(db, objects, keys)
    r.learn_device("d", os.urandom(32))
    yield r
    db.close()


def put_pack(remote, raws):
    w = packs.PackWriter(remote.device_key("d"), remote.keys.content)
    rows = []
    for raw in raws:
        _, off, ln = w.add(raw)
        rows.append((hashlib.sha256(raw).digest(), "d", w.name, off, ln, len(raw)))
    assert remote.objects.put_once(pack_key(w.name), w.data())
    return rows


def test_a_swept_copy_is_forgotten_and_the_indexed_one_read(remote):
    raw = os.urandom(5000)
    good = put_pack(remote, [raw])[0]
    cid = good[0]
    remote.add([(cid, "d", "00" * 16, 16, good[4], len(raw))])     # a pack that is not there
    asked = []

    def relearn(cs):
        asked.extend(cs)
        remote.add([good])
        return set(cs)
    remote.relearn = relearn
    assert remote.read(cid) == raw
    assert asked == [cid]
    assert [r[1] for r in remote.rows(cid)] == [good[2]]           # the gone copy is forgotten


def test_a_damaged_copy_is_reported_and_without_another_the_error_says_so(remote):
    raw = os.urandom(5000)
    row = put_pack(remote, [raw])[0]
    key = pack_key(row[2])
    data = bytearray(remote.objects.get(key))
    data[row[3] + 40] ^= 1
    import obstore
    obstore.put(remote.objects.store, remote.objects.prefix + key, bytes(data))   # the store's own fault
    remote.add([row])
    reported = []
    remote.on_damage = reported.append
    remote.relearn = lambda cs: set()
    with pytest.raises(StoreError, match="damaged or gone"):
        remote.read(row[0])
    assert reported == [row[2]] and remote.damaged == 1 and remote.rows(row[0]) == []
    remote.relearn = None
    with pytest.raises(StoreError, match="not stored here nor in the fleet store"):
        remote.read(row[0])


def test_an_unreachable_store_is_a_store_error_and_forgets_nothing(tmp_path):
    from anchor.fleet.objects import S3Objects
    keys = FleetKeys(os.urandom(32))
    db = sqlite3.connect(str(tmp_path / "f.sqlite"), isolation_level=None)
    objects = S3Objects("b", "http://127.0.0.1:1", "k", "s", timeout=2.0, retries=0)
    r = RemoteChunks(db, objects, keys)
    r.learn_device("d", os.urandom(32))
    cid = os.urandom(32)
    r.add([(cid, "d", "ab" * 16, 16, 100, 80)])
    with pytest.raises(StoreError, match="cannot be read"):
        r.read(cid)
    assert len(r.rows(cid)) == 1          # kept: the store may come back
