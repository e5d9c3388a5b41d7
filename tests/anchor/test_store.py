"""Chunk store: round trips, dedup, input checks, recovery from torn tails and lost commits,
format versioning, verify(), segment rollover, a real SIGKILL of a writing process, and eviction
(drop, lru) and compaction, with crashes inside compaction."""
import hashlib
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import zlib

import pyfastcdc
import pytest
import zstandard

from anchor.storage import chunks as store_module
from anchor.storage import segments as S     # the record and segment format
from anchor.storage.chunks import ChunkStore, StoreError
from anchor.storage.index_sqlite import SqliteIndex


def cid(raw):
    return hashlib.sha256(raw).digest()


def text_chunk(r, n):
    words = [b"anchor", b"rover", b"chunk", b"backup", b"GET", b"200", b"sensor", b"temp=21.5"]
    out = bytearray()
    while len(out) < n:
        out += r.choice(words) + b" %d\n" % r.randrange(1000)
    return bytes(out[:n])


def chunks(n, seed=1, size=(1000, 20000)):
    """Half incompressible, half text."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        k = r.randrange(*size)
        out.append(r.randbytes(k) if i % 2 else text_chunk(r, k))
    return out


def seg_files(root):
    d = os.path.join(root, "segments")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".seg"))


def crash(store):
    """Drop the store as a killed process would: buffered records and open handles are lost."""
    store._pending.clear()
    store._release()


def write_uncommitted(store):
    """Steps 1-2 of a flush (segment data written and fsynced), then a crash before step 3."""
    store._drain()
    store._settle()
    groups, _rows = store_module._plan(store._pending)
    store._write_groups(groups)
    crash(store)


def assert_all_readable(store, items):
    for raw in items:
        assert store.get(cid(raw)) == raw


# ---------------------------------------------------------------------------- basics

def test_round_trip_all_encodings(tmp_path):
    r = random.Random(5)
    text = text_chunk(r, 9000)
    noise = r.randbytes(9000)
    zl = text_chunk(r, 7000)
    zs = text_chunk(r, 6000)
    with ChunkStore(str(tmp_path)) as s:
        assert s.put(cid(text), text)
        assert s.put(cid(noise), noise)
        assert s.put(cid(zl), zl, S.ENC_ZLIB, zlib.compress(zl))
        assert s.put(cid(zs), zs, S.ENC_ZSTD, zstandard.ZstdCompressor(level=3).compress(zs))
        assert s.put(cid(b""), b"")
        # readable while still buffered
        for raw in (text, noise, zl, zs, b""):
            assert s.get(cid(raw)) == raw
        s.flush()
        for raw in (text, noise, zl, zs, b""):
            assert s.get(cid(raw)) == raw
        assert s.info(cid(text))["enc"] == S.ENC_ZSTD
        assert s.info(cid(noise))["enc"] == S.ENC_RAW
        assert s.info(cid(zl))["enc"] == S.ENC_ZLIB
        assert s.info(cid(zs))["enc"] == S.ENC_ZSTD
        st = s.stats()
        assert st["chunks"] == 5
        assert st["raw_bytes"] == 9000 * 2 + 7000 + 6000
        assert st["stored_bytes"] < st["raw_bytes"]
        assert st["segments"] == 1


def test_payload_not_smaller_is_stored_raw(tmp_path):
    raw = os.urandom(3000)
    with ChunkStore(str(tmp_path)) as s:
        assert s.put(cid(raw), raw, S.ENC_ZLIB, zlib.compress(raw))
        assert s.info(cid(raw))["enc"] == S.ENC_RAW
        assert s.get(cid(raw)) == raw


def test_dedup(tmp_path):
    items = chunks(20)
    with ChunkStore(str(tmp_path)) as s:
        assert all(s.put(cid(x), x) for x in items)
        assert not any(s.put(cid(x), x) for x in items)          # buffered duplicates
        s.flush()
        assert not any(s.put(cid(x), x) for x in items)          # stored duplicates
        ids = s.ingest(items + items)                              # ingest sees them too
        assert ids == [cid(x) for x in items + items]
        assert s.stats()["chunks"] == 20
        size = sum(os.path.getsize(f) for f in seg_files(str(tmp_path)))
        s.flush()
        assert sum(os.path.getsize(f) for f in seg_files(str(tmp_path))) == size


def test_ingest_matches_put_and_dedups_within_a_call(tmp_path):
    r = random.Random(3)
    data = r.randbytes(3 << 20) + text_chunk(r, 3 << 20)
    data = data + data[: 1 << 20]                                  # repeats inside one call
    cdc = pyfastcdc.FastCDC(8192, normalized_chunking=1)
    cuts = [bytes(c.data) for c in cdc.cut_buf(data)]
    with ChunkStore(str(tmp_path / "a"), flush_bytes=1 << 20) as a:
        ids = a.ingest(c.data for c in cdc.cut_buf(data))
        assert ids == [cid(c) for c in cuts]
        a.flush()
        st_a = a.stats()
        for c in cuts:
            assert a.get(cid(c)) == c
    with ChunkStore(str(tmp_path / "b")) as b:
        for c in cuts:
            b.put(cid(c), c)
        b.flush()
        st_b = b.stats()
    assert st_a["chunks"] == st_b["chunks"] == len(set(ids))
    assert st_a["stored_bytes"] == st_b["stored_bytes"]


def test_ingest_copies_writable_buffers(tmp_path):
    buf = bytearray(os.urandom(5000))
    raw = bytes(buf)
    with ChunkStore(str(tmp_path)) as s:
        s.ingest([memoryview(buf)])
        buf[:] = bytes(5000)                                      # caller reuses its buffer
        s.flush()
        assert s.get(cid(raw)) == raw


def test_ingest_batch_compressor_hook(tmp_path):
    """ingest() compresses through _compress_batch / _batch_encoding (tools/bench_anchor_ingest.py
    swaps them to time other compressors in the same pipeline); None keeps a chunk raw."""
    class Half(ChunkStore):
        def _compress_batch(self, raws):
            out = super()._compress_batch(raws)
            return [p if i % 2 else None for i, p in enumerate(out)]

    items = [text_chunk(random.Random(i), 6000) for i in range(8)]
    with Half(str(tmp_path)) as s:
        ids = s.ingest(items)
        s.flush()
        assert [s.info(i)["enc"] for i in ids] == [S.ENC_RAW, S.ENC_ZSTD] * 4
        assert_all_readable(s, items)
    with ChunkStore(str(tmp_path)) as s:
        assert s.verify() == {"chunks": 8, "bad": []}


def test_wrong_hash_rejected_nothing_written(tmp_path):
    raw = b"x" * 5000
    with ChunkStore(str(tmp_path)) as s:
        with pytest.raises(StoreError):
            s.put(cid(b"something else"), raw)
        with pytest.raises(StoreError):                             # payload that is not raw
            s.put(cid(raw), raw, S.ENC_ZLIB, zlib.compress(b"y" * 5000))
        with pytest.raises(StoreError):                             # payload that is not zlib
            s.put(cid(raw), raw, S.ENC_ZLIB, b"garbage")
        with pytest.raises(StoreError):
            s.put(cid(raw), raw, 7, b"abc")
        with pytest.raises(StoreError):
            s.put(b"short", raw)
        big = os.urandom(S.MAX_CHUNK + 1)
        with pytest.raises(StoreError):
            s.put(cid(big), big)
        with pytest.raises(StoreError):
            s.ingest([big])
        assert not s.has(cid(raw))
        s.flush()
        assert s.stats()["chunks"] == 0
    assert seg_files(str(tmp_path)) == []
    index = SqliteIndex(str(tmp_path / "index.sqlite"), readonly=True)
    assert index.totals()[0] == 0
    index.close()


def test_get_missing(tmp_path):
    with ChunkStore(str(tmp_path)) as s:
        with pytest.raises(StoreError):
            s.get(cid(b"nope"))


def test_missing(tmp_path):
    items = chunks(30)
    with ChunkStore(str(tmp_path)) as s:
        for x in items[:10]:
            s.put(cid(x), x)
        s.flush()
        for x in items[10:20]:
            s.put(cid(x), x)                                       # buffered
        ids = [cid(x) for x in items]
        assert s.missing(ids) == list(range(20, 30))
        assert s.missing([]) == []
        many = [hashlib.sha256(b"%d" % i).digest() for i in range(40000)] + ids[:3]
        assert s.missing(many) == list(range(40000))                # more ids than one statement
        assert s.has(ids[0]) and s.has(ids[15]) and not s.has(ids[25])
        assert s.has(memoryview(ids[0]))                            # any bytes-like id


def test_reopen_after_close(tmp_path):
    items = chunks(40)
    with ChunkStore(str(tmp_path)) as s:
        for x in items[:20]:
            s.put(cid(x), x)
    with ChunkStore(str(tmp_path)) as s:                            # close flushed
        assert s.recovery["reindexed"] == 0
        assert_all_readable(s, items[:20])
        for x in items[20:]:
            s.put(cid(x), x)
    with ChunkStore(str(tmp_path)) as s:
        assert_all_readable(s, items)
        assert s.stats()["chunks"] == 40
        assert s.verify() == {"chunks": 40, "bad": []}


def test_touch_buffered_and_indexed(tmp_path):
    """touch() sets last_use of buffered records in memory and of indexed ones in the index;
    both survive a close (the buffered ones are flushed with it)."""
    items = chunks(6)
    ids = [cid(x) for x in items]
    with ChunkStore(str(tmp_path)) as s:
        for x in items[:3]:
            s.put(cid(x), x)
        s.flush()
        for x in items[3:]:
            s.put(cid(x), x)
        before = {i: s.info(i)["last_use"] for i in ids}
        assert [s.info(i)["flushed"] for i in ids] == [True] * 3 + [False] * 3
        s.index.touch([ids[0]], 1)                                    # older than anything else
        s.touch([ids[1], ids[4], cid(b"absent")])
        after = {i: s.info(i)["last_use"] for i in ids}
        assert after[ids[0]] == 1
        assert after[ids[1]] >= before[ids[1]] and after[ids[4]] >= before[ids[4]]
    with ChunkStore(str(tmp_path)) as s:
        assert {i: s.info(i)["last_use"] for i in ids} == after
        assert s.lru(1) == [(ids[0], s.info(ids[0])["stored_len"], 1)]


def test_ingest_with_touch_marks_the_chunks_it_already_held_as_used(tmp_path):
    items = chunks(6)
    ids = [cid(x) for x in items]
    with ChunkStore(str(tmp_path)) as s:
        s.ingest(items[:4])
        s.flush()
        for c in ids[:4]:
            s.index.touch([c], 1)                                    # long unused
        s.ingest(items[2:], touch=True)                              # 2 held, 2 new
        s.ingest(items[:1])                                          # held, not touched
        s.flush()
        use = {i: s.info(i)["last_use"] for i in ids}
        assert use[ids[0]] == use[ids[1]] == 1
        assert min(use[i] for i in ids[2:]) > 1
        assert [c for c, _, _ in s.lru(2)] == sorted(ids[:2])


def test_automatic_flush_runs_behind_and_stays_readable(tmp_path):
    items = chunks(200, size=(4000, 12000))
    root = str(tmp_path)
    s = ChunkStore(root, segment_size=128 << 10, flush_bytes=64 << 10)
    behind = 0
    for i, x in enumerate(items):
        s.put(cid(x), x)
        behind += s._sealed_job is not None
        for y in items[: i + 1: 17]:                       # readable whatever stage it is in
            assert s.get(cid(y)) == y
    assert behind > 0                                      # the writer thread was used
    assert s.missing([cid(x) for x in items]) == []
    assert s.stats()["chunks"] == 200
    s.close()
    with ChunkStore(root) as s:
        assert s.recovery["reindexed"] == 0
        assert_all_readable(s, items)


def test_failed_automatic_flush_is_reported_and_retried(tmp_path, monkeypatch):
    items = chunks(40, size=(4000, 12000))
    root = str(tmp_path)
    s = ChunkStore(root, flush_bytes=64 << 10)
    real = ChunkStore._write_groups
    calls = []

    def failing(self, groups):
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("writing segments failed: [Errno 28] No space left on device")
        return real(self, groups)

    monkeypatch.setattr(ChunkStore, "_write_groups", failing)
    with pytest.raises(StoreError, match="No space"):
        for x in items:
            s.put(cid(x), x)
    stored = [x for x in items if s.has(cid(x))]              # nothing put was dropped
    assert stored == items[: len(stored)]
    s.flush()                                                  # retries the failed batch
    assert_all_readable(s, stored)
    s.close()
    with ChunkStore(root) as s:
        assert_all_readable(s, stored)
        assert s.verify()["bad"] == []


# ---------------------------------------------------------------------------- recovery

def _store_with_tail(root, committed, tail):
    """committed chunks flushed normally; tail chunks written and fsynced but never indexed."""
    s = ChunkStore(root)
    for x in committed:
        s.put(cid(x), x)
    s.flush()
    for x in tail:
        s.put(cid(x), x)
    write_uncommitted(s)


def test_written_but_not_indexed_is_reindexed(tmp_path):
    items = chunks(30)
    root = str(tmp_path)
    _store_with_tail(root, items[:10], items[10:])
    with ChunkStore(root) as s:
        assert s.recovery["reindexed"] == 20
        assert s.recovery["truncated_bytes"] == 0
        assert_all_readable(s, items)
        assert s.verify() == {"chunks": 30, "bad": []}
    with ChunkStore(root) as s:                                      # and it stuck
        assert s.recovery["reindexed"] == 0


def test_deleted_index_rows_are_rebuilt(tmp_path):
    items = chunks(12)
    root = str(tmp_path)
    with ChunkStore(root) as s:
        for x in items:
            s.put(cid(x), x)
    # An index that lost its last transactions (e.g. WAL tail after power loss) only knows an
    # older state: forget the rows and the committed end of the segment.
    index = SqliteIndex(os.path.join(root, "index.sqlite"))
    seg, first = index.get(cid(items[6]))[:2]
    index.delete([c for c, _, off, _ in index.by_place() if off >= first])
    index.relocate([], {seg: first}, [])
    index.close()
    with ChunkStore(root) as s:
        assert s.recovery["reindexed"] == 6
        assert_all_readable(s, items)


def test_new_segment_file_never_committed_is_recovered(tmp_path):
    items = chunks(40, size=(20000, 30000))
    root = str(tmp_path)
    s = ChunkStore(root, segment_size=128 << 10)
    for x in items[:5]:
        s.put(cid(x), x)
    s.flush()
    for x in items[5:]:
        s.put(cid(x), x)
    write_uncommitted(s)                       # several new files, none in the index
    assert len(seg_files(root)) > 3
    with ChunkStore(root, segment_size=128 << 10) as s:
        assert_all_readable(s, items)


def test_torn_tail_truncated_at_every_offset(tmp_path):
    r = random.Random(9)
    base = [r.randbytes(3000) for _ in range(5)]
    last = r.randbytes(2000)                   # incompressible: record = 49 + 2000 bytes
    src = str(tmp_path / "src")
    _store_with_tail(src, base, [last])
    seg = seg_files(src)[-1]
    full = os.path.getsize(seg)
    rec_start = full - S.RECORD_HEADER_SIZE - len(last)
    offsets = sorted(set(list(range(rec_start, rec_start + 60)) +
                         list(range(rec_start, full, 97)) + [full - 1]))
    for cut in offsets:
        root = str(tmp_path / ("cut%d" % cut))
        shutil.copytree(src, root)
        os.truncate(seg_files(root)[-1], cut)
        with ChunkStore(root) as s:
            assert s.recovery["truncated_bytes"] == cut - rec_start
            assert os.path.getsize(seg_files(root)[-1]) == rec_start
            assert_all_readable(s, base)
            assert not s.has(cid(last))
            assert s.put(cid(last), last)                        # appends cleanly after the cut
        with ChunkStore(root) as s:
            assert s.recovery == {"reindexed": 0, "truncated_bytes": 0, "removed_files": 0,
                                  "lost_rows": 0}
            assert_all_readable(s, base + [last])
            assert s.verify()["bad"] == []
        shutil.rmtree(root)


def test_garbage_tail_is_cut(tmp_path):
    items = chunks(8)
    root = str(tmp_path)
    with ChunkStore(root) as s:
        for x in items:
            s.put(cid(x), x)
    seg = seg_files(root)[-1]
    good = os.path.getsize(seg)
    fake = struct.pack("<4s32sBII", S.RECORD_MAGIC, cid(b"z"), 0, 1, 1) + b"\0\0\0\0z"  # bad CRC
    for junk in (os.urandom(5000), bytes(4096), S.RECORD_MAGIC, fake, b"\x89CHK" + os.urandom(60)):
        with open(seg, "ab") as f:
            f.write(junk)
        with ChunkStore(root) as s:
            assert s.recovery["truncated_bytes"] == len(junk)
            assert os.path.getsize(seg) == good
            assert_all_readable(s, items)
            assert s.verify() == {"chunks": 8, "bad": []}


def test_torn_new_segment_header_is_removed(tmp_path):
    items = chunks(4)
    root = str(tmp_path)
    with ChunkStore(root) as s:
        for x in items:
            s.put(cid(x), x)
    nxt = os.path.join(root, "segments", S.segment_name(2))
    for content in (b"", b"ANCH", bytes(16), bytes(4096)):
        with open(nxt, "wb") as f:
            f.write(content)
        with ChunkStore(root) as s:
            assert s.recovery["removed_files"] == 1
            assert not os.path.exists(nxt)
            assert_all_readable(s, items)


def test_committed_bytes_lost_are_dropped_from_index(tmp_path):
    items = chunks(6)
    root = str(tmp_path)
    with ChunkStore(root) as s:
        for x in items:
            s.put(cid(x), x)
        off = s.info(cid(items[4]))["off"]
    os.truncate(seg_files(root)[-1], off + 10)                  # the medium lost committed data
    with ChunkStore(root) as s:
        assert s.recovery["lost_rows"] == 2
        assert_all_readable(s, items[:4])
        assert s.missing([cid(x) for x in items]) == [4, 5]
        assert s.verify() == {"chunks": 4, "bad": []}


def test_a_flipped_version_or_magic_in_a_committed_header_is_damage(tmp_path):
    root = str(tmp_path)
    with ChunkStore(root) as s:
        raw = b"v" * 100
        s.put(cid(raw), raw)
    seg = seg_files(root)[0]
    with open(seg, "r+b") as f:
        f.seek(8)
        f.write(struct.pack("<H", 2))
    # A segment this index (version 1) committed: another version there is a flipped byte, not
    # a newer anchor's file (a fresh one is refused: test_store_torn_header.py)
    with ChunkStore(root) as s:
        assert any("version 2" in d for d in s.damage), s.damage
        assert s.get(cid(raw)) == raw
        assert s.repair([])["headers_rewritten"] == 1 and s.segment_problems() == []
    with open(seg, "r+b") as f:
        f.write(b"NOTANCHR" + struct.pack("<H", 1))
    # Bad magic is damage, not a newer format: the store opens, says so, and serves the
    # records (each checked on its own); docs/storage.md, "Damage".
    with ChunkStore(root) as s:
        assert any("not an Anchor segment" in d for d in s.damage), s.damage
        assert s.get(cid(raw)) == raw


def test_unknown_index_version_refused(tmp_path):
    root = str(tmp_path)
    ChunkStore(root).close()
    # an index written by a future anchor: no storage API writes another version, so forge it
    import sqlite3
    db = sqlite3.connect(os.path.join(root, "index.sqlite"))
    db.execute("UPDATE meta SET value=9 WHERE key='format_version'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="version 9"):
        ChunkStore(root)


def test_verify_finds_flipped_byte(tmp_path):
    items = chunks(10)
    root = str(tmp_path)
    with ChunkStore(root) as s:
        for x in items:
            s.put(cid(x), x)
        s.flush()
        victim = cid(items[3])
        where = s.info(victim)
        assert s.verify() == {"chunks": 10, "bad": []}
    seg = seg_files(root)[where["seg"] - 1]
    with open(seg, "r+b") as f:
        pos = where["off"] + S.RECORD_HEADER_SIZE + where["stored_len"] // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))
    with ChunkStore(root) as s:
        assert s.verify() == {"chunks": 10, "bad": [victim.hex()]}
        with pytest.raises(StoreError):
            s.get(victim)
        assert_all_readable(s, items[:3] + items[4:])


def test_segment_rollover(tmp_path):
    items = chunks(60, size=(8000, 16000))
    root = str(tmp_path)
    size = 64 << 10
    with ChunkStore(root, segment_size=size, flush_bytes=100 << 10) as s:
        for x in items[:30]:
            s.put(cid(x), x)
        s.ingest(items[30:])
    files = seg_files(root)
    assert len(files) > 5
    assert [os.path.basename(f) for f in files] == [S.segment_name(i + 1) for i in range(len(files))]
    assert all(os.path.getsize(f) <= size for f in files)
    with ChunkStore(root, segment_size=size) as s:
        assert_all_readable(s, items)
        assert s.stats()["segments"] == len(files)
        assert s.verify() == {"chunks": 60, "bad": []}


# ---------------------------------------------------------------------------- a real crash

CHILD = r"""
import hashlib, random, sys
from anchor.storage.chunks import ChunkStore
s = ChunkStore(sys.argv[1], segment_size=256 << 10, flush_bytes=int(sys.argv[3]))
r = random.Random(int(sys.argv[2]))
out = sys.stdout
for rnd in range(1000000):
    batch = [r.randbytes(r.randrange(500, 30000)) if r.random() < 0.5
             else (b"line %d of round %d\n" % (r.randrange(99), rnd)) * r.randrange(20, 1500)
             for _ in range(r.randrange(5, 40))]
    if rnd % 2:
        ids = s.ingest(batch)
    else:
        ids = [hashlib.sha256(x).digest() for x in batch]
        for i, x in zip(ids, batch):
            s.put(i, x)
    out.write("W\n")
    out.flush()
    s.flush()
    out.write("F " + " ".join(i.hex() for i in ids) + "\n")
    out.flush()
"""


@pytest.mark.parametrize("seed,kill_after,when,flush_bytes", [
    (1, 3, "W", 1 << 30), (2, 8, "W", 1 << 30), (3, 5, "F", 1 << 30), (4, 12, "W", 1 << 30),
    (5, 1, "W", 1 << 30), (6, 20, "F", 1 << 30),
    # small flush_bytes: automatic flushes run on the writer thread when the kill comes
    (7, 4, "W", 64 << 10), (8, 9, "F", 64 << 10), (9, 15, "W", 100 << 10),
])
def test_sigkill_during_writes(tmp_path, seed, kill_after, when, flush_bytes):
    """The child reports each flush; we SIGKILL it right after its n-th report of `when`
    (W: it is about to flush, so the kill lands in the middle of writing; F: between flushes)."""
    root = str(tmp_path / "store")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, root, str(seed), str(flush_bytes)],
                            stdout=subprocess.PIPE, text=True)
    flushed = []
    seen = 0
    try:
        for line in proc.stdout:
            if line.startswith("F "):
                flushed.extend(bytes.fromhex(h) for h in line.split()[1:])
            if line[0] == when:
                seen += 1
                if seen == kill_after:
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert flushed or kill_after == 1
    with ChunkStore(root, segment_size=256 << 10) as s:
        print("RECOVERY", seed, kill_after, when, len(flushed), s.recovery)
        assert s.missing(flushed) == []
        for i in flushed:
            assert cid(s.get(i)) == i
        v = s.verify()
        assert v["bad"] == []
        assert v["chunks"] >= len(set(flushed))
        extra = b"after the crash"
        s.put(cid(extra), extra)
    with ChunkStore(root) as s:
        assert s.get(cid(extra)) == extra


def test_index_rows_inserted_in_multi_row_statements(tmp_path):
    """A flush inserts its rows in multi-row statements of power-of-two widths; every row of an
    odd-sized batch (here 300 + 37 = 256 + 32 + 8 + 4 and 32 + 4 + 1) arrives, duplicates are
    ignored as before, and the rows survive a reopen."""
    r = random.Random(11)
    items = [r.randbytes(r.randrange(100, 2000)) for _ in range(337)]
    with ChunkStore(str(tmp_path)) as s:
        s.ingest(items[:300])
        s.flush()
        s.ingest(items[250:])           # 50 already stored, 37 new
        s.flush()
        assert s.stats()["chunks"] == 337
        flat = []
        for raw in items[:3]:
            i = s.info(cid(raw))
            flat += (cid(raw), i["seg"], i["off"], i["raw_len"], i["stored_len"], i["enc"],
                     i["last_use"])
        assert s.index.insert(flat, {}) == 0            # already indexed: ignored
    with ChunkStore(str(tmp_path)) as s:
        assert s.verify() == {"chunks": 337, "bad": []}
        assert_all_readable(s, items)


# ---------------------------------------------------------------------------- eviction and compaction

def _filled(root, n=60, segment_size=64 << 10, seed=21):
    """A closed store of n chunks over several sealed segments. Returns the chunks."""
    items = chunks(n, seed=seed, size=(4000, 12000))
    with ChunkStore(root, segment_size=segment_size) as s:
        for x in items:
            s.put(cid(x), x)
    return items


def test_drop_then_has_get_missing(tmp_path):
    items = chunks(10)
    ids = [cid(x) for x in items]
    with ChunkStore(str(tmp_path)) as s:
        for x in items[:6]:
            s.put(cid(x), x)
        s.flush()
        for x in items[6:]:
            s.put(cid(x), x)                                        # still buffered
        assert s.drop([ids[1], ids[3], ids[7], cid(b"never stored")]) == 3
        for i in (1, 3, 7):
            assert not s.has(ids[i])
            with pytest.raises(StoreError):
                s.get(ids[i])
            assert s.info(ids[i]) is None
        assert s.missing(ids) == [1, 3, 7]
        assert s.drop([ids[1]]) == 0
        st = s.stats()
        assert st["chunks"] == 7
        assert st["live_bytes"] == sum(s.info(i)["stored_len"] + S.RECORD_HEADER_SIZE
                                       for i in ids if s.has(i))
        assert st["disk_bytes"] == sum(os.path.getsize(f) for f in seg_files(str(tmp_path)))
        assert st["live_bytes"] < st["disk_bytes"]
        assert s.put(ids[3], items[3])                              # can be stored again
        assert s.get(ids[3]) == items[3]


def test_drop_survives_reopen_and_is_not_reindexed(tmp_path):
    root = str(tmp_path)
    items = _filled(root)
    ids = [cid(x) for x in items]
    gone = [1, 2, 10, 30] + list(range(55, 60))          # includes the last records of the last segment
    with ChunkStore(root, segment_size=64 << 10) as s:
        last = s.info(ids[-1])["seg"]
        assert s.info(ids[55])["seg"] == last
        assert s.drop([ids[i] for i in gone]) == len(gone)
    with ChunkStore(root, segment_size=64 << 10) as s:
        assert s.recovery == {"reindexed": 0, "truncated_bytes": 0, "removed_files": 0,
                              "lost_rows": 0}
        assert s.missing(ids) == gone
        assert_all_readable(s, [x for i, x in enumerate(items) if i not in gone])
        extra = b"appended after the drop" * 50
        s.put(cid(extra), extra)
    with ChunkStore(root, segment_size=64 << 10) as s:
        assert s.recovery["reindexed"] == 0
        assert s.missing(ids) == gone
        assert s.get(cid(extra)) == extra
        assert s.verify()["bad"] == []


def test_drop_not_reindexed_when_the_medium_loses_the_tail(tmp_path):
    """A segment shorter than its committed_end is cut at its last intact row, not rescanned:
    the dropped records between that row and the cut stay dropped."""
    root = str(tmp_path)
    items = chunks(8)
    ids = [cid(x) for x in items]
    with ChunkStore(root) as s:
        for x in items:
            s.put(cid(x), x)
        s.flush()
        assert s.drop(ids[4:7]) == 3
        off = s.info(ids[7])["off"]
        keep_end = s.info(ids[3])["off"] + S.RECORD_HEADER_SIZE + s.info(ids[3])["stored_len"]
    os.truncate(seg_files(root)[-1], off + 10)                  # lost part of the last record
    with ChunkStore(root) as s:
        assert s.recovery["lost_rows"] == 1
        assert s.recovery["reindexed"] == 0
        assert s.missing(ids) == [4, 5, 6, 7]
        assert os.path.getsize(seg_files(root)[-1]) == keep_end
        assert_all_readable(s, items[:4])
        assert s.verify() == {"chunks": 4, "bad": []}


def test_lru_order_and_paging(tmp_path):
    """Eviction order: last_use, then id; pages continue strictly after the key of the last
    row of the one before. (Which chunks must not be evicted is the catalog's: retention.)"""
    items = chunks(8)
    ids = [cid(x) for x in items]
    with ChunkStore(str(tmp_path)) as s:
        for x in items:
            s.put(cid(x), x)
        s.flush()
        uses = [50, 10, 30, 10, 20, 40, 5, 60]
        for use, c in zip(uses, ids):
            s.index.touch([c], use)
        want = sorted(range(8), key=lambda i: (uses[i], ids[i]))
        got = s.lru(100)
        assert [c for c, _, _ in got] == [ids[i] for i in want]
        assert [n for _, n, _ in got] == [s.info(ids[i])["stored_len"] for i in want]
        assert [u for _, _, u in got] == [uses[i] for i in want]
        assert s.lru(2) == got[:2]
        assert s.lru(3, after=(got[1][2], got[1][0])) == got[2:5]
        assert s.lru(100, after=(got[-1][2], got[-1][0])) == []
        s.touch([ids[want[0]]])                                       # used now: goes last
        assert s.lru(100)[-1][0] == ids[want[0]]
        assert s.lru(1)[0][0] == ids[want[1]]


def _segment_state(root):
    return {os.path.basename(f): (os.path.getsize(f), os.stat(f).st_mtime_ns) for f in seg_files(root)}


def test_compact_reclaims_space_and_leaves_dense_segments(tmp_path):
    root = str(tmp_path)
    items = _filled(root, n=80)
    ids = [cid(x) for x in items]
    with ChunkStore(root, segment_size=64 << 10) as s:
        by_seg = {}
        for i in ids:
            by_seg.setdefault(s.info(i)["seg"], []).append(i)
        segs = sorted(by_seg)
        assert len(segs) >= 6
        sparse, empty, dense = segs[0], segs[1], segs[2]
        gone = set(by_seg[sparse][1:]) | set(by_seg[empty]) | set(by_seg[dense][:1])
        assert s.drop(gone) == len(gone)
        before = s.stats()
        files = _segment_state(root)
        res = s.compact()
        after = s.stats()
        assert res["segments_removed"] == 2
        assert res["records_moved"] == 1
        assert res["bytes_reclaimed"] == before["disk_bytes"] - after["disk_bytes"] > 0
        assert after["live_bytes"] == before["live_bytes"]
        assert after["chunks"] == before["chunks"]
        now = _segment_state(root)
        assert S.segment_name(sparse) not in now and S.segment_name(empty) not in now
        for seq in segs[2:-1]:                                     # dense (and the dropped-from
            assert now[S.segment_name(seq)] == files[S.segment_name(seq)]   # but still dense) ones
        assert s.info(by_seg[sparse][0])["seg"] >= segs[-1]
        kept = [x for x in items if cid(x) not in gone]
        assert_all_readable(s, kept)
        assert s.verify() == {"chunks": len(kept), "bad": []}
        assert s.compact() == {"segments_removed": 0, "bytes_reclaimed": 0, "records_moved": 0,
                               "segments_skipped": 0}
        extra = b"written after compaction" * 100
        s.put(cid(extra), extra)
    with ChunkStore(root, segment_size=64 << 10) as s:
        assert s.recovery == {"reindexed": 0, "truncated_bytes": 0, "removed_files": 0,
                              "lost_rows": 0}
        assert s.missing(ids) == sorted(ids.index(g) for g in gone)
        assert_all_readable(s, kept + [extra])
        assert s.verify()["bad"] == []
        # compacting every sealed segment, in several rounds, still keeps every chunk
        s.drop([cid(x) for x in kept[::2]])
        s.flush_bytes = 100 << 10
        res = s.compact(max_live_fraction=1.0)
        assert res["segments_removed"] > 3
        assert_all_readable(s, kept[1::2] + [extra])
        assert s.verify() == {"chunks": len(kept[1::2]) + 1, "bad": []}


def _compact_crash(tmp_path, monkeypatch, hook):
    """Drop most of the first segments, run compact() and copy the store directory when it
    reaches hook (then make compact() fail there). Returns (copy, kept chunks, dropped ids,
    names of the segments compact() was removing)."""
    root = str(tmp_path / "store")
    items = _filled(root, n=80)
    ids = [cid(x) for x in items]
    copy = str(tmp_path / "copy")
    s = ChunkStore(root, segment_size=64 << 10)
    by_seg = {}
    for i in ids:
        by_seg.setdefault(s.info(i)["seg"], []).append(i)
    segs = sorted(by_seg)
    gone = set(by_seg[segs[0]][1:]) | set(by_seg[segs[1]]) | set(by_seg[segs[2]][:-1])
    s.drop(gone)
    real = getattr(ChunkStore, hook)

    def crash_here(self, *a):
        shutil.copytree(root, copy)
        raise OSError("simulated crash in %s" % hook)

    monkeypatch.setattr(ChunkStore, hook, crash_here)
    with pytest.raises(OSError, match="simulated crash"):
        s.compact()
    monkeypatch.setattr(ChunkStore, hook, real)
    crash(s)
    kept = [x for x in items if cid(x) not in gone]
    return copy, kept, gone, [S.segment_name(q) for q in segs[:3]]


def test_compact_crash_before_index_commit(tmp_path, monkeypatch):
    copy, kept, gone, old = _compact_crash(tmp_path, monkeypatch, "_compact_commit")
    with ChunkStore(copy, segment_size=64 << 10) as s:
        assert s.recovery["reindexed"] == 0                      # the copies: already indexed
        assert s.recovery["truncated_bytes"] == 0
        assert all(os.path.exists(os.path.join(copy, "segments", n)) for n in old)
        assert_all_readable(s, kept)
        assert s.missing(list(gone)) == list(range(len(gone)))
        assert s.verify() == {"chunks": len(kept), "bad": []}
        res = s.compact()                                        # and it can be done again
        assert res["segments_removed"] == 3
        assert_all_readable(s, kept)
    with ChunkStore(copy, segment_size=64 << 10) as s:
        assert s.missing(list(gone)) == list(range(len(gone)))
        assert s.verify() == {"chunks": len(kept), "bad": []}


def test_compact_crash_after_commit_before_unlink(tmp_path, monkeypatch):
    copy, kept, gone, old = _compact_crash(tmp_path, monkeypatch, "_remove_segments")
    assert all(os.path.exists(os.path.join(copy, "segments", n)) for n in old)
    with ChunkStore(copy, segment_size=64 << 10) as s:
        assert s.recovery["removed_files"] == 3                   # the orphaned old segments
        assert s.recovery["reindexed"] == 0                       # dropped records stay dropped
        assert not any(os.path.exists(os.path.join(copy, "segments", n)) for n in old)
        assert_all_readable(s, kept)
        assert s.missing(list(gone)) == list(range(len(gone)))
        assert s.verify() == {"chunks": len(kept), "bad": []}
    with ChunkStore(copy, segment_size=64 << 10) as s:
        assert s.recovery["removed_files"] == 0
        assert s.missing(list(gone)) == list(range(len(gone)))
