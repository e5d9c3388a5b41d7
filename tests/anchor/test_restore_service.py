"""The restore service in-process: a snapshot read back through it is the files backed up,
and a record damaged in flash is a RestoreError naming the file, never wrong bytes."""
import hashlib
import io
import random

import pytest

from tests.support.harness import damage
from anchor.app import App
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
    for r, ids in service.entries(snap, prefix):
        out[r[0]] = (r[1], b"".join(service.content(r, ids)))
    return out


@pytest.fixture
def app(tmp_path):
    a = App(str(tmp_path / "data"))
    yield a
    a.close()


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
    with pytest.raises(RestoreError) as e:
        for r, ids in app.restore.entries(snap):
            body = b""
            for b in app.restore.content(r, ids):
                body += b
                seen.append((r[0], body))
    assert e.value.path == "b/big.bin" and "b/big.bin" in str(e.value)
    # What came before the damage is the file's own bytes, and nothing after it came at all.
    assert ("a.txt", b"before\n") in seen
    last_path, last_body = seen[-1]
    assert last_path == "b/big.bin" and last_body == big[:off]
