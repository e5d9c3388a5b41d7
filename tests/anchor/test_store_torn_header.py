"""A new segment whose header never landed: the power went right after a flush created the
file, so its first blocks hold whatever the card had there (stale bytes), or the start of the
magic and then stale bytes. Nothing in such a file was promised (a flush fsyncs the header with
its records before it commits, and only then returns), so the store opens and deletes it, as it
does a short or all-zero header. Found by tests/support/powerloss.py: the anchor refused to start
("not an Anchor segment (bad magic)")."""
import hashlib
import os
import random
import struct

import pytest

from anchor.storage import segments as S     # the record and segment format
from anchor.storage.chunks import ChunkStore, StoreError


def cid(raw):
    return hashlib.sha256(raw).digest()


def _store(root, n=6, seed=3):
    r = random.Random(seed)
    items = [r.randbytes(r.randrange(1000, 9000)) for _ in range(n)]
    with ChunkStore(root) as s:
        for x in items:
            s.put(cid(x), x)
    return items


@pytest.mark.parametrize("content", [
    random.Random(1).randbytes(4096),                          # stale blocks
    S.SEGMENT_MAGIC[:3] + random.Random(2).randbytes(300),     # the magic cut short, then stale
    b"\xff" * 16 + S.make_record(cid(b"x" * 500), 0, 500, b"x" * 500),   # header lost, record landed
], ids=["stale-blocks", "magic-cut-short", "header-lost-record-landed"])
def test_new_segment_with_a_header_that_never_landed_is_removed(tmp_path, content):
    root = str(tmp_path)
    items = _store(root)
    nxt = os.path.join(root, "segments", S.segment_name(2))
    with open(nxt, "wb") as f:
        f.write(content)
    with ChunkStore(root) as s:
        assert s.recovery["removed_files"] == 1
        assert not os.path.exists(nxt)
        for x in items:
            assert s.get(cid(x)) == x
        assert not s.has(cid(b"x" * 500))
        assert s.verify() == {"chunks": len(items), "bad": []}
        more = b"after the restart" * 100
        s.put(cid(more), more)                  # appends go on in segment 1
    with ChunkStore(root) as s:
        assert s.recovery == {"reindexed": 0, "truncated_bytes": 0, "removed_files": 0, "lost_rows": 0}
        assert s.get(cid(more)) == more
        assert s.info(cid(more))["seg"] == 1


def test_bad_magic_where_a_flush_promised_data_is_damage_not_a_torn_write(tmp_path):
    # A committed segment is not fresh: a header without the magic there is damage, never
    # deleted as a torn write; the store keeps it, serves its records and reports it.
    root = str(tmp_path)
    xs = []
    with ChunkStore(root, segment_size=16 << 10) as s:
        r = random.Random(4)
        for _ in range(12):
            x = r.randbytes(6000)
            xs.append(x)
            s.put(cid(x), x)
    segs = sorted(os.listdir(os.path.join(root, "segments")))
    assert len(segs) >= 3
    with open(os.path.join(root, "segments", segs[-1]), "r+b") as f:
        f.write(b"NOTANCHR")
    with ChunkStore(root) as s:
        assert sorted(os.listdir(os.path.join(root, "segments"))) == segs
        assert any("not an Anchor segment" in d for d in s.damage), s.damage
        assert [s.get(cid(x)) for x in xs] == xs
        assert len(s.segment_problems()) == 1
        assert s.repair([])["headers_rewritten"] == 1
        assert s.segment_problems() == []


def test_wrong_version_on_a_fresh_segment_is_still_refused(tmp_path):
    # The magic is there: not a torn write but a file from another format version.
    root = str(tmp_path)
    _store(root)
    with open(os.path.join(root, "segments", S.segment_name(2)), "wb") as f:
        f.write(struct.pack("<8sHHI", S.SEGMENT_MAGIC, 2, 0, 2))
    with pytest.raises(StoreError, match="version 2"):
        ChunkStore(root)
