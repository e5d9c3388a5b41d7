"""One conformance suite for every chunk index backend (anchor.storage.index.ChunkIndex).

Every test runs against each entry of BACKENDS; a new backend is its module plus one line
there. What is checked is what ChunkStore and retention rely on, as ChunkIndex documents it;
how a backend stores rows is its own business.
"""
import hashlib
import os
import threading

import pytest

from anchor.storage.index import ChunkIndex, ROW_FIELDS
from anchor.storage.index_memory import MemoryIndex
from anchor.storage.index_sqlite import SqliteIndex
from anchor.storage.segments import RECORD_HEADER_SIZE

# (name, open(directory) -> ChunkIndex); opening the same directory again must show what a
# persistent backend committed.
BACKENDS = [
    ("sqlite", lambda d: SqliteIndex(os.path.join(d, "index.sqlite"))),
    ("memory", lambda d: MemoryIndex()),
]


@pytest.fixture(params=[b[1] for b in BACKENDS], ids=[b[0] for b in BACKENDS])
def opener(request, tmp_path):
    opened = []

    def open_index():
        idx = request.param(str(tmp_path))
        assert isinstance(idx, ChunkIndex)
        opened.append(idx)
        return idx
    yield open_index
    for idx in opened:
        idx.close()


@pytest.fixture
def index(opener):
    return opener()


def cid(i):
    return hashlib.sha256(b"chunk %d" % i).digest()


def row(i, seg=1, off=None, raw_len=1000, stored_len=None, enc=2, last_use=None):
    """The flat row of chunk i: id, seg, off, raw_len, stored_len, enc, last_use."""
    stored_len = 100 + i if stored_len is None else stored_len
    off = 16 + i * 2000 if off is None else off
    return [cid(i), seg, off, raw_len, stored_len, enc, 1000 + i if last_use is None else last_use]


def flat(*rows):
    out = []
    for r in rows:
        assert len(r) == ROW_FIELDS
        out += r
    return out


def test_empty(index):
    assert index.segments() == {}
    assert index.last_segment() is None
    assert index.get(cid(0)) is None
    assert index.present([cid(0)]) == set()
    assert list(index.ids()) == []
    assert tuple(index.totals()) == (0, 0, 0)
    assert index.record_bytes() == 0
    assert index.record_bytes([cid(0)]) == 0
    assert index.lru(10) == []
    assert index.live_by_segment() == {}
    assert not index.segment_has_rows(1)
    assert list(index.by_place()) == []


def test_insert_get_present_and_duplicates(index):
    rows = [row(i) for i in range(5)]
    assert index.insert(flat(*rows), {1: 16 + 5 * 2000}) == 5
    for r in rows:
        assert tuple(index.get(r[0])) == tuple(r[1:])
    assert index.present([cid(0), cid(3), cid(99)]) == {cid(0), cid(3)}
    assert set(index.ids()) == {cid(i) for i in range(5)}
    # an id already indexed keeps its row; the new one is counted only if added
    again = row(2, seg=7, off=16)
    assert index.insert(flat(again, row(5)), {}) == 1
    assert tuple(index.get(cid(2))) == tuple(rows[2][1:])
    assert index.get(cid(5)) is not None


def test_present_of_many(index):
    rows = [row(i, off=16 + i) for i in range(1100)]
    index.insert(flat(*rows), {})
    ask = [cid(i) for i in range(0, 2200, 2)]
    assert index.present(ask) == {cid(i) for i in range(0, 1100, 2)}


def test_segments_and_committed_ends(index):
    index.insert(flat(row(0)), {1: 100, 2: 16})
    assert index.segments() == {1: 100, 2: 16}
    assert tuple(index.last_segment()) == (2, 16)
    index.insert([], {2: 500})
    assert index.segments() == {1: 100, 2: 500}
    index.relocate([], {3: 16}, [1])
    assert index.segments() == {2: 500, 3: 16}
    assert tuple(index.last_segment()) == (3, 16)


def test_touch_and_lru_order_and_paging(index):
    uses = [50, 10, 30, 10, 20, 40, 5, 60]
    index.insert(flat(*[row(i, last_use=u) for i, u in enumerate(uses)]), {})
    want = sorted(range(8), key=lambda i: (uses[i], cid(i)))
    got = index.lru(100)
    assert [tuple(x) for x in got] == [(cid(i), 100 + i, uses[i]) for i in want]
    assert [tuple(x) for x in index.lru(3)] == [tuple(x) for x in got[:3]]
    after = (got[2][2], got[2][0])
    assert [tuple(x) for x in index.lru(2, after)] == [tuple(x) for x in got[3:5]]
    last = (got[-1][2], got[-1][0])
    assert index.lru(5, last) == []
    index.touch([cid(want[0]), cid(99)], 1000)                # absent ids are ignored
    assert index.lru(100)[-1][0] == cid(want[0])
    assert index.get(cid(want[0]))[5] == 1000
    # a tie on last_use is broken by id, and paging never repeats or skips one of them
    index.touch([cid(i) for i in range(8)], 7)
    ids = sorted(cid(i) for i in range(8))
    page, seen = index.lru(3), []
    while page:
        seen += [x[0] for x in page]
        page = index.lru(3, (page[-1][2], page[-1][0]))
    assert seen == ids


def test_delete(index):
    index.insert(flat(*[row(i) for i in range(4)]), {1: 9000})
    assert index.delete([cid(1), cid(3), cid(99)]) == 2
    assert index.present([cid(i) for i in range(4)]) == {cid(0), cid(2)}
    assert index.delete([cid(1)]) == 0
    assert index.segments() == {1: 9000}


def test_relocate(index):
    index.insert(flat(row(0, seg=1, off=16), row(1, seg=2, off=16), row(2, seg=2, off=500)), {1: 200, 2: 700})
    index.relocate([(3, 16, cid(1)), (3, 400, cid(2))], {3: 900}, [2])
    assert index.segments() == {1: 200, 3: 900}
    assert index.get(cid(1))[:2] == (3, 16)
    assert index.get(cid(2))[:2] == (3, 400)
    assert tuple(index.get(cid(2))[2:]) == tuple(row(2)[3:])
    assert not index.segment_has_rows(2) and index.segment_has_rows(3)


def test_cut_for_recovery(index):
    # records at 16 (49 + 100), 200 (49 + 101), 400 (49 + 102) in segment 1; one in segment 2
    index.insert(flat(row(0, off=16), row(1, off=200), row(2, off=400), row(3, seg=2, off=16)), {})
    end1 = 200 + RECORD_HEADER_SIZE + 101
    assert index.cut(1, end1) == (1, end1)                  # the record at 400 went past it
    assert index.present([cid(i) for i in range(4)]) == {cid(0), cid(1), cid(3)}
    assert index.cut(1, end1) == (0, end1)
    assert index.cut(1, 50) == (2, None)                    # nothing of segment 1 left
    assert index.segment_has_rows(2) and not index.segment_has_rows(1)


def test_rows_in_and_by_place(index):
    index.insert(flat(row(0, seg=2, off=500), row(1, seg=1, off=900), row(2, seg=2, off=16),
                      row(3, seg=1, off=16)), {})
    assert [tuple(x) for x in index.rows_in(2)] == [(cid(2), 16, 102), (cid(0), 500, 100)]
    assert index.rows_in(5) == []
    assert [tuple(x) for x in index.by_place()] == [
        (cid(3), 1, 16, 103), (cid(1), 1, 900, 101), (cid(2), 2, 16, 102), (cid(0), 2, 500, 100)]


def test_totals_and_record_bytes(index):
    rows = [row(i, seg=1 + i % 2, off=16 + i, raw_len=2000 + i) for i in range(600)]
    index.insert(flat(*rows), {})
    assert tuple(index.totals()) == (600, sum(2000 + i for i in range(600)), sum(100 + i for i in range(600)))
    every = sum(RECORD_HEADER_SIZE + 100 + i for i in range(600))
    assert index.record_bytes() == every
    # any iterable (a generator too), more ids than one query takes, absent ids count 0
    some = (cid(i) for i in list(range(0, 600, 3)) + list(range(1000, 1200)))
    assert index.record_bytes(some) == sum(RECORD_HEADER_SIZE + 100 + i for i in range(0, 600, 3))
    assert index.record_bytes([]) == 0
    assert index.live_by_segment() == {
        s: sum(RECORD_HEADER_SIZE + 100 + i for i in range(600) if 1 + i % 2 == s) for s in (1, 2)}


def test_insert_from_another_thread_beside_reads(index):
    """The store's writer thread commits rows while its owner keeps reading."""
    index.insert(flat(row(0)), {1: 100})
    errors = []

    def writer():
        try:
            for k in range(20):
                index.insert(flat(*[row(1 + k * 50 + j, off=16 + k * 50 + j) for j in range(50)]),
                             {1: 100 + k})
        except Exception as e:          # reported below: a thread's exception is otherwise lost
            errors.append(e)
    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        assert index.get(cid(0)) is not None
        index.present([cid(i) for i in range(50)])
        index.lru(5)
    t.join()
    assert errors == []
    assert index.totals()[0] == 1001
    assert index.segments() == {1: 119}


def test_reopen_keeps_what_was_committed(opener):
    idx = opener()
    if not idx.persistent:
        pytest.skip("not a persistent backend")
    idx.insert(flat(row(0), row(1), row(2)), {1: 5000})
    idx.delete([cid(1)])
    idx.touch([cid(2)], 77)
    idx.relocate([(2, 16, cid(0))], {2: 200}, [])
    idx.close()
    again = opener()
    assert again.present([cid(i) for i in range(3)]) == {cid(0), cid(2)}
    assert again.get(cid(0))[:2] == (2, 16)
    assert again.get(cid(2))[5] == 77
    assert again.segments() == {1: 5000, 2: 200}


def test_chunk_store_on_the_backend(opener, tmp_path):
    """The store itself runs on the backend: buffered and flushed writes, automatic flushes on
    the writer thread, reads, eviction order, drop and compaction."""
    from anchor.storage.chunks import ChunkStore
    raws = [os.urandom(3000 + i) for i in range(60)] + [b"text %d " % i * 400 for i in range(60)]
    root = str(tmp_path / "store")
    s = ChunkStore(root, segment_size=64 << 10, flush_bytes=32 << 10, index=opener())
    try:
        ids = s.ingest(raws[:80])
        for r in raws[80:]:
            s.put(hashlib.sha256(r).digest(), r)
        s.flush()
        assert all(s.get(c) == r for c, r in zip(ids, raws))
        assert s.missing(ids + [cid(1)]) == [80]
        assert s.stats()["chunks"] == 120
        assert [c for c, _, _ in s.lru(80)] == [c for c, _, _ in s.index.lru(80)]
        assert s.drop(ids[:70]) == 70
        res = s.compact()
        assert res["segments_removed"] > 0
        assert s.verify() == {"chunks": 50, "bad": []}
        every = [hashlib.sha256(r).digest() for r in raws]
        assert s.missing(every) == list(range(70))
        assert s.record_bytes() == s.stats()["live_bytes"]
    finally:
        s.close()
