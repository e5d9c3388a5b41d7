"""A backup never builds on damage: a parent whose tree or chunks went bad is refused at HELLO
(the rover describes its whole tree, and the anchor asks again for what it lost), and a commit
that would refer to a chunk the store does not hold is refused."""
import hashlib
import random

import pytest

from tests.anchor.test_restore_service import MTIME, back_up, chunks_of
from anchor_core import cbor, chunker
from anchor_core import messages as m


def _oid(data):
    h = chunker.ObjectId()
    for _, _, c in chunks_of(data):
        h.add(c)
    return h.finish(len(data))


def test_a_commit_never_refers_to_a_chunk_the_store_lost(app):
    rnd = random.Random(1)
    keep = rnd.randbytes(150_000)
    back_up(app, "phone", {"keep.bin": keep, "x.txt": b"one\n"})
    h = app.backup.session()
    w = h.handle(m.hello("phone", 1, 0))[0]
    assert w[m.WELCOME_PARENT_OK]
    # only x.txt changed; keep.bin is carried over from the parent, unseen in this session
    new = b"two\n"
    v = h.handle(m.entries(0, [m.put_entry("x.txt", m.T_FILE, len(new), MTIME, 0o644, _oid(new))]))[0]
    cs = chunks_of(new)
    need = h.handle(m.chunklist([m.list_part(i, 0, [c for _, _, c in cs], True) for i in v[2]]))[0]
    for part in need[1]:
        for k in part[2]:
            h.handle(m.data(cs[k][2], m.ENC_RAW, new))
    # ...and meanwhile the store lost a chunk of keep.bin (a truncated segment, a quarantine)
    app.store.drop([chunks_of(keep)[1][2]])
    recs = sorted([m.tree_record("keep.bin", m.T_FILE, len(keep), MTIME, 0o644, _oid(keep)),
                   m.tree_record("x.txt", m.T_FILE, len(new), MTIME, 0o644, _oid(new))],
                  key=lambda r: m.path_key(r[0]))
    root = hashlib.sha256(b"".join(cbor.encode(r) for r in recs)).digest()
    with pytest.raises(m.ProtocolError) as e:
        h.handle(m.commit(root, 2, len(keep) + len(new)))
    assert e.value.code == m.E_MISSING and "does not hold" in e.value.text
    h.end()
    dev = app.catalog.device_id("phone", create=False)
    assert app.catalog.latest(dev) == 1


def test_a_parent_with_a_lost_chunk_is_not_built_on(app):
    keep = random.Random(2).randbytes(150_000)
    back_up(app, "phone", {"keep.bin": keep})
    app.store.drop([chunks_of(keep)[0][2]])
    h = app.backup.session()
    w = h.handle(m.hello("phone", 1, 0))[0]
    assert not w[m.WELCOME_PARENT_OK]
    # the whole tree again: the anchor asks for the chunk list of keep.bin, then for the lost chunk
    v = h.handle(m.entries(0, [m.put_entry("keep.bin", m.T_FILE, len(keep), MTIME, 0o644, _oid(keep))]))[0]
    assert v[2] == [0]
    cs = chunks_of(keep)
    need = h.handle(m.chunklist([m.list_part(0, 0, [c for _, _, c in cs], True)]))[0]
    assert [p[2] for p in need[1]] == [[0]]
    h.end()


def test_a_parent_with_a_damaged_tree_is_not_built_on(app):
    snap = back_up(app, "phone", {"a.txt": b"hello\n", "b.txt": b"world\n"})
    path = app.trees.path(snap["root"])
    with open(path, "r+b") as f:
        buf = bytearray(f.read())
        buf[len(buf) // 2] ^= 0x10
        f.seek(0)
        f.write(buf)
    assert app.trees.problem(snap["root"]) is not None
    h = app.backup.session()
    assert not h.handle(m.hello("phone", 1, 0))[0][m.WELCOME_PARENT_OK]
    h.end()
    # the same tree backed up again heals the file under its name
    back_up(app, "phone", {"a.txt": b"hello\n", "b.txt": b"world\n"})
    assert app.trees.problem(snap["root"]) is None


def test_a_damaged_chunk_list_in_the_catalog_is_found_not_restored_as_other_bytes(app):
    from anchor.storage.integrity import snapshot_problem
    a, b = random.Random(3).randbytes(100_000), random.Random(4).randbytes(100_000)
    snap = back_up(app, "phone", {"a.bin": a, "b.bin": b})
    # a.bin's chunk list now names b.bin's first chunk: every chunk still checks out on its
    # own, and the file would come back as bytes that are not its own
    oid_a = _oid(a)
    size, ids = app.catalog.object_chunks(oid_a)
    ids[0] = chunks_of(b)[0][2]
    app.catalog.db.execute("UPDATE objects SET chunks=? WHERE oid=?", (b"".join(ids), oid_a))
    assert "chunk list of object" in snapshot_problem(app.catalog, app.trees, app.store, snap)
    got = {r[0]: problem for r, ids, problem in app.restore.entries(snap)}
    assert got["b.bin"] is None and "chunk list of its object" in got["a.bin"].why
    h = app.backup.session()
    assert not h.handle(m.hello("phone", 1, 0))[0][m.WELCOME_PARENT_OK]
    h.end()
    # the next backup describes a.bin again and its proven chunk list replaces the damaged one
    back_up(app, "phone", {"a.bin": a, "b.bin": b})
    assert snapshot_problem(app.catalog, app.trees, app.store, snap) is None
    got = {r[0]: (ids, problem) for r, ids, problem in app.restore.entries(snap)}
    assert got["a.bin"][1] is None
    assert b"".join(app.restore.content(m.tree_record("a.bin", m.T_FILE, len(a), MTIME, 0o644, oid_a),
                                        got["a.bin"][0])) == a


def test_a_base_gone_between_need_and_its_delta_means_the_whole_chunk(app):
    # The old chunk NEED offered as a base is dropped before the rover asks for it (evicted,
    # quarantined, or not readable from a fleet store now): BASE says "none" and a DELTA is
    # refused, never an error that ends the backup.
    from anchor_core import delta
    rnd = random.Random(3)
    old = bytearray(rnd.randbytes(40_000))
    back_up(app, "phone", {"db.bin": bytes(old)})
    new = bytearray(old)
    new[20_000:20_010] = b"0123456789"
    new = bytes(new)
    h = app.backup.session()
    assert h.handle(m.hello("phone", 1, m.CAP_ZLIB | m.CAP_DELTA))[0][m.WELCOME_PARENT_OK]
    v = h.handle(m.entries(0, [m.put_entry("db.bin", m.T_FILE, len(new), MTIME, 0o644, _oid(new))]))[0]
    cs = chunks_of(new)
    need = h.handle(m.chunklist([m.list_part(i, 0, [c for _, _, c in cs], True) for i in v[2]]))[0]
    assert len(need) > 3 and need[3][0], need
    i = need[3][0][0]
    cid = cs[i][2]
    app.store.drop(list(h.bases.values()))
    b = h.handle([delta.BASEQ, cid])[0]
    assert b == [delta.BASE, cid, 0, b""], b
    with pytest.raises(m.ProtocolError):          # no BASE with signatures: no DELTA
        h.handle([delta.DELTA, cid, cs[i][1], b"\x00"])
    h.end()


def test_a_challenged_chunk_gone_before_its_proof_is_reported_missing(app):
    from anchor_core.hmac256 import hmac_sha256
    data = random.Random(4).randbytes(30_000)
    back_up(app, "first", {"same.bin": data})
    h = app.backup.session()
    h.handle(m.hello("second", None, m.CAP_PROVE))
    v = h.handle(m.entries(0, [m.put_entry("same.bin", m.T_FILE, len(data), MTIME, 0o644, _oid(data))]))[0]
    cs = chunks_of(data)
    need = h.handle(m.chunklist([m.list_part(i, 0, [c for _, _, c in cs], True) for i in v[2]]))[0]
    nonce, prove = need[2]
    k = prove[0][0]
    app.store.drop([cs[k][2]])
    off, ln, cid = cs[k]
    with pytest.raises(m.ProtocolError) as e:
        h.handle(m.proof(cid, hmac_sha256(nonce, data[off:off + ln])[:m.PROOF_TAG]))
    assert e.value.code == m.E_MISSING and "went from the store" in e.value.text
    h.end()
