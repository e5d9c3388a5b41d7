"""The retention policy in-process: what it evicts, what it never evicts."""
import hashlib
import os

from anchor.app import App
from anchor.storage import retention


def test_eviction_skips_pinned_and_in_use_chunks(tmp_path):
    a = App(str(tmp_path / "data"), capacity=200_000)
    try:
        store = a.store
        blobs = [os.urandom(20_000) for _ in range(30)]      # 600 KB of pass-through data
        ids = store.ingest(blobs)
        store.flush()
        pinned = ids[:3]
        busy = set(ids[3:6])
        # a snapshot keeps the first three: the catalog alone says so
        dev = a.catalog.device_id("r")
        oid = hashlib.sha256(b"".join(blobs[:3])).digest()
        a.catalog.commit_snapshot(dev, None, hashlib.sha256(b"tree").digest(), 1, 60_000,
                                  [(oid, 60_000, b"".join(pinned))], [oid])
        assert a.catalog.live_among(ids) == set(pinned)
        r = a.retention
        r.protect(busy)
        done = r.enforce()
        assert done and done["evicted_chunks"] > 0
        left = set(c for c in ids if store.has(c))
        assert set(pinned) <= left and busy <= left
        assert store.stats()["live_bytes"] <= 200_000 or left == set(pinned) | busy
        r.release(busy)
        assert retention.parse_size("1.5K") == 1536 and retention.parse_size("2G") == 2 << 30
    finally:
        a.close()


def test_usage_follows_the_catalog_alone(tmp_path):
    """What a snapshot keeps is fixed, what a session holds too, the rest evictable; forgetting
    the snapshot makes its chunks evictable at once, with nothing else to update."""
    a = App(str(tmp_path / "data"), capacity=10 << 20)
    try:
        store = a.store
        blobs = [os.urandom(5_000 + i) for i in range(10)]
        ids = store.ingest(blobs)
        store.flush()
        size = {c: 49 + store.info(c)["stored_len"] for c in ids}
        dev = a.catalog.device_id("r")
        oid = hashlib.sha256(b"".join(blobs[:3])).digest()
        a.catalog.commit_snapshot(dev, None, hashlib.sha256(b"tree").digest(), 1, 15_003,
                                  [(oid, 15_003, b"".join(ids[:3]))], [oid])
        r = a.retention
        busy = set(ids[2:5])                   # ids[2] is pinned as well: counted once
        r.protect(busy)
        live, evictable = r.usage()
        assert live == sum(size.values()) == store.stats()["live_bytes"]
        assert evictable == sum(size[c] for c in ids[5:])
        r.release(busy)
        a.catalog.forget_snapshot(dev, 1)
        assert r.usage() == (live, live)
    finally:
        a.close()


def test_eviction_pages_past_many_pinned_chunks(tmp_path):
    """The least recently used chunks are pinned, more of them than one eviction page holds:
    eviction goes on past them to the pass-through chunks behind."""
    a = App(str(tmp_path / "data"), capacity=None)
    try:
        store = a.store
        blobs = [os.urandom(200 + i % 7) for i in range(1500)]
        ids = store.ingest(blobs)
        store.flush()
        pinned, passing = ids[:700], ids[700:]    # more pinned than one page (BATCH) holds
        store.index.touch(pinned, 1)           # older than every pass-through chunk
        dev = a.catalog.device_id("r")
        oid = hashlib.sha256(b"pinned").digest()
        a.catalog.commit_snapshot(dev, None, hashlib.sha256(b"tree").digest(), 1, 1,
                                  [(oid, 1, b"".join(pinned))], [oid])
        fixed = store.record_bytes(pinned)
        r = a.retention
        target = fixed + store.record_bytes(passing) // 2
        r.capacity = int(target / retention.LOW_WATER)
        done = r.enforce()
        assert done and 0 < done["evicted_chunks"] < len(passing)
        assert all(store.has(c) for c in pinned)
        assert fixed < store.stats()["live_bytes"] <= target + 1
    finally:
        a.close()
