"""The restore service in-process: a snapshot read back through it is the files backed up,
and a record damaged in flash is a RestoreError naming the file, never wrong bytes."""
import hashlib
import io
import random

import pytest

from tests.support.harness import damage
from anchor.services.restore import NotInSnapshot, PathError, RestoreError
from anchor_core import cbor, chunker
from anchor_core import messages as m

MTIME = 1_700_000_000_123_456_789


def chunks_of(data):
    return [(off, ln, c) for off, ln, c in chunker.chunks_of(io.BytesIO(data), bytearray(65536))]


def back_up(app, device, files, dirs=()):
    """Commit one snapshot of `files` ({path: bytes}) and `dirs` through a backup session,
    as a rover would; returns the catalog's snapshot."""
    h = app.backup.session()
    recs = [m.tree_record(d, m.T_DIR, 0, MTIME, 0o755, None) for d in dirs]
    content = {}
    for path, data in files.items():
        oid = chunker.ObjectId()
        cs = chunks_of(data)
        for _, _, c in cs:
            oid.add(c)
        content[path] = cs
        recs.append(m.tree_record(path, m.T_FILE, len(data), MTIME, 0o644, oid.finish(len(data))))
    recs.sort(key=lambda r: m.path_key(r[0]))
    assert h.handle(m.hello(device, None, 0))[0][0] == m.WELCOME
    verdict = h.handle(m.entries(0, [m.put_entry(*r[:6]) for r in recs]))[0]
    parts = [m.list_part(i, 0, [c for _, _, c in content[recs[i][0]]], True) for i in verdict[2]]
    need = h.handle(m.chunklist(parts))[0]
    for part in need[1]:
        path = recs[part[0]][0]
        for k in part[2]:
            off, ln, c = content[path][k]
            assert h.handle(m.data(c, m.ENC_RAW, files[path][off:off + ln])) == []
    root = hashlib.sha256()
    for r in recs:
        root.update(cbor.encode(r))
    seq = h.handle(m.commit(root.digest(), len(recs), sum(len(d) for d in files.values())))[0][1]
    h.end()
    dev = app.catalog.device_id(device, create=False)
    return app.catalog.snapshot(dev, seq)


def read_back(service, snap, prefix=""):
    """{path: (type, bytes)} of what the service yields."""
    out = {}
    for r, ids, problem in service.entries(snap, prefix):
        assert problem is None
        out[r[0]] = (r[1], b"".join(service.content(r, ids)))
    return out


def test_a_snapshot_read_back_is_the_files(app):
    rnd = random.Random(5)
    files = {"a.txt": b"hello\n", "docs/big.bin": rnd.randbytes(150_000), "docs/empty": b"",
             "docs/sub/x.bin": rnd.randbytes(20_000)}
    snap = back_up(app, "phone", files, dirs=["docs", "docs/sub"])
    got = read_back(app.restore, snap)
    assert list(got) == ["a.txt", "docs", "docs/big.bin", "docs/empty", "docs/sub", "docs/sub/x.bin"]
    assert got["docs"] == (m.T_DIR, b"") and got["docs/sub"] == (m.T_DIR, b"")
    assert dict((p, v[1]) for p, v in got.items() if v[0] == m.T_FILE) == files
    sub = read_back(app.restore, snap, "docs/sub")
    assert sub == {"docs/sub": (m.T_DIR, b""), "docs/sub/x.bin": (m.T_FILE, files["docs/sub/x.bin"])}
    with pytest.raises(NotInSnapshot):
        read_back(app.restore, snap, "nope")
    with pytest.raises(PathError):
        read_back(app.restore, snap, "../etc")


def test_a_damaged_record_is_an_error_naming_the_file(app):
    rnd = random.Random(6)
    big = rnd.randbytes(200_000)
    files = {"a.txt": b"before\n", "b/big.bin": big, "c.txt": b"after\n"}
    snap = back_up(app, "phone", files, dirs=["b"])
    cs = chunks_of(big)
    assert len(cs) > 4
    off, ln, _ = cs[len(cs) // 2]
    damage(app.data_dir, big[off:off + ln])

    seen = []
    errors = []
    for r, ids, problem in app.restore.entries(snap):
        assert problem is None          # every chunk is indexed: the damage shows on reading
        body = b""
        try:
            for b in app.restore.content(r, ids):
                body += b
                seen.append((r[0], body))
        except RestoreError as e:
            errors.append(e)
    assert [e.path for e in errors] == ["b/big.bin"] and "b/big.bin" in str(errors[0])
    # What came of the damaged file is its own bytes up to the damage; the files after it
    # are read back whole.
    assert ("a.txt", b"before\n") in seen and ("c.txt", b"after\n") in seen
    assert max(len(b) for p, b in seen if p == "b/big.bin") == off
    assert all(big.startswith(b) for p, b in seen if p == "b/big.bin")


def test_a_missing_chunk_is_named_before_the_file_and_the_rest_comes(app):
    rnd = random.Random(7)
    big = rnd.randbytes(200_000)
    snap = back_up(app, "phone", {"a.txt": b"before\n", "b.bin": big, "c.txt": b"after\n"})
    cs = chunks_of(big)
    app.store.drop([cs[1][2]])
    got = {r[0]: problem for r, ids, problem in app.restore.entries(snap)}
    assert list(got) == ["a.txt", "b.bin", "c.txt"]
    assert got["a.txt"] is None and got["c.txt"] is None
    assert isinstance(got["b.bin"], RestoreError) and "1 of its" in got["b.bin"].why
