"""Damage in the chunk store does not stop it: a missing segment, a damaged header or an index
SQLite cannot read are reported, everything else is served, and repair quarantines or rebuilds
what it can (docs/storage.md, "Damage")."""
import os
import random

from tests.anchor.test_store import cid, seg_files
from anchor.storage.chunks import ChunkStore
from anchor.storage import segments as S


def _fill(root, n=12, size=6000, seed=4):
    xs = []
    r = random.Random(seed)
    with ChunkStore(root, segment_size=16 << 10) as s:
        for _ in range(n):
            x = r.randbytes(size)
            xs.append(x)
            s.put(cid(x), x)
    return xs


def test_a_missing_segment_is_quarantined_and_the_rest_served(tmp_path):
    root = str(tmp_path)
    xs = _fill(root)
    segs = seg_files(root)
    assert len(segs) >= 4
    with ChunkStore(root) as s:
        lost = [x for x in xs if s.info(cid(x))["seg"] == 2]
    assert lost
    os.unlink(segs[1])
    with ChunkStore(root, segment_size=16 << 10) as s:
        assert any("00000002.seg is missing" in d for d in s.damage), s.damage
        assert s.recovery["lost_rows"] == len(lost)
        for x in xs:
            if x in lost:
                assert not s.has(cid(x))            # no longer claimed: a backup asks for it
            else:
                assert s.get(cid(x)) == x
        assert s.verify()["bad"] == [] and s.segment_problems() == []
        # uploaded again, it is stored anew and readable
        s.put(cid(lost[0]), lost[0])
        s.flush()
        assert s.get(cid(lost[0])) == lost[0]
    with ChunkStore(root) as s:
        assert s.damage == [] and s.get(cid(lost[0])) == lost[0]


def test_the_last_segment_missing_appends_go_on(tmp_path):
    root = str(tmp_path)
    xs = _fill(root)
    segs = seg_files(root)
    os.unlink(segs[-1])
    with ChunkStore(root, segment_size=16 << 10) as s:
        assert s.damage
        y = b"new" * 1000
        s.put(cid(y), y)
        s.flush()
    with ChunkStore(root) as s:
        assert s.damage == [] and s.get(cid(y)) == y
        assert s.verify()["bad"] == []
        assert sum(s.has(cid(x)) for x in xs) >= len(xs) - 3


def test_a_zeroed_header_is_damage_served_and_repaired(tmp_path):
    root = str(tmp_path)
    xs = _fill(root)
    seg = seg_files(root)[1]
    with open(seg, "r+b") as f:
        f.write(bytes(16))
    with ChunkStore(root) as s:
        assert any("damaged header" in d for d in s.damage), s.damage
        assert [s.get(cid(x)) for x in xs] == xs
        assert len(s.segment_problems()) == 1
        assert s.repair([]) == {"quarantined": 0, "headers_rewritten": 1, "segments_lost": 0,
                                "index_rebuilt": False}
        assert s.segment_problems() == [] and s.damage == []
    with ChunkStore(root) as s:
        assert s.damage == [] and [s.get(cid(x)) for x in xs] == xs


def test_an_unreadable_index_is_rebuilt_from_the_segments(tmp_path):
    root = str(tmp_path)
    xs = _fill(root)
    # a damaged record in the middle of a segment: the rebuild steps over it
    with ChunkStore(root) as s:
        victim = s.info(cid(xs[5]))
    with open(seg_files(root)[victim["seg"] - 1], "r+b") as f:
        f.seek(victim["off"] + S.RECORD_HEADER_SIZE + 100)
        f.write(b"\xff\x00\xff")
    for ext in ("-wal", "-shm"):
        if os.path.exists(os.path.join(root, "index.sqlite" + ext)):
            os.unlink(os.path.join(root, "index.sqlite" + ext))
    with open(os.path.join(root, "index.sqlite"), "wb") as f:
        f.write(b"this is not a database" * 100)
    with ChunkStore(root) as s:
        assert any("rebuilt from the segments" in d for d in s.damage), s.damage
        assert not s.has(cid(xs[5]))
        assert [s.get(cid(x)) for x in xs if x is not xs[5]] == [x for x in xs if x is not xs[5]]
        assert s.verify()["bad"] == []
    assert any(n.startswith("index.sqlite.damaged-") for n in os.listdir(root))


def test_quarantine_then_a_new_upload_heals(tmp_path):
    root = str(tmp_path)
    xs = _fill(root)
    with ChunkStore(root) as s:
        where = s.info(cid(xs[3]))
    with open(seg_files(root)[where["seg"] - 1], "r+b") as f:
        f.seek(where["off"] + S.RECORD_HEADER_SIZE + 10)
        b = f.read(1)
        f.seek(where["off"] + S.RECORD_HEADER_SIZE + 10)
        f.write(bytes([b[0] ^ 1]))
    with ChunkStore(root) as s:
        bad = s.verify()["bad"]
        assert bad == [cid(xs[3]).hex()]
        assert s.repair(bad)["quarantined"] == 1
        assert not s.has(cid(xs[3])) and s.missing([cid(xs[3])]) == [0]
        assert s.put(cid(xs[3]), xs[3]) is True
        s.flush()
        assert s.verify() == {"chunks": len(xs), "bad": []}
        assert s.get(cid(xs[3])) == xs[3]


def _damage_index_pages(tmp_path):
    import sqlite3
    root = str(tmp_path)
    r = random.Random(1)
    xs = [r.randbytes(300) for _ in range(3000)]
    with ChunkStore(root) as s:
        for x in xs:
            s.put(cid(x), x)
    db = sqlite3.connect(os.path.join(root, "index.sqlite"))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    path = os.path.join(root, "index.sqlite")
    pages = os.path.getsize(path) // 4096
    assert pages > 20
    with open(path, "r+b") as f:                  # garbage inside a page of the chunks table
        f.seek(4096 * (pages // 2) + 100)
        f.write(random.Random(2).randbytes(200))
    return root, xs


def test_an_index_that_opens_but_fails_its_check_is_rebuilt_at_start(tmp_path):
    root, xs = _damage_index_pages(tmp_path)
    with ChunkStore(root) as s:
        assert any("rebuilt from the segments (3000 chunks)" in d for d in s.damage), s.damage
        assert s.segment_problems() == []
        assert all(s.get(cid(x)) == x for x in xs)


def test_an_index_damaged_while_the_anchor_runs_is_rebuilt_by_repair(tmp_path):
    from anchor.storage.index_sqlite import SqliteIndex
    root, xs = _damage_index_pages(tmp_path)
    # an index handed over as it is skips the check on open: what a running anchor meets
    with ChunkStore(root, index=SqliteIndex(os.path.join(root, "index.sqlite"))) as s:
        problems = s.segment_problems()
        assert len(problems) == 1 and problems[0].startswith("index: "), problems
        assert s.repair([])["index_rebuilt"] is True
        assert s.segment_problems() == []
        assert all(s.get(cid(x)) == x for x in xs)
        y = b"after the rebuild" * 10
        s.put(cid(y), y)
    with ChunkStore(root) as s:
        assert s.damage == [] and s.get(cid(y)) == y and s.segment_problems() == []
