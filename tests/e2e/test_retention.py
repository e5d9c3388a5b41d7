"""Snapshots keep their content pinned; forgetting a snapshot turns what only it kept back
into pass-through data (evictable), and every other snapshot still restores."""
import json
import os
import random

from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, run_rover, snapshot_of
from anchor_core import chunker
from anchor.storage.catalog import Catalog
from anchor.storage.chunks import ChunkStore
from anchor.storage.index_sqlite import SqliteIndex


def classes(data_dir):
    """{id: 1 if a snapshot keeps it (pinned), else 0 (pass-through)} over the stored chunks."""
    index = SqliteIndex(os.path.join(data_dir, "chunks", "index.sqlite"), readonly=True)
    catalog = Catalog(os.path.join(data_dir, "catalog.sqlite"), readonly=True)
    try:
        ids = list(index.ids())
        pinned = catalog.live_among(ids)
        return {c: int(c in pinned) for c in ids}
    finally:
        index.close()
        catalog.close()


def ids_of(path):
    with open(path, "rb") as f:
        return set(c for _, _, c in chunker.chunks_of(f, bytearray(65536)))


def test_forget_releases_only_what_no_other_snapshot_keeps(tmp_path):
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        rnd = random.Random(2)
        root = tmp_path / "rover"
        root.mkdir()
        (root / "kept.bin").write_bytes(rnd.randbytes(200_000))
        (root / "gone.bin").write_bytes(rnd.randbytes(200_000))
        state = str(tmp_path / "state")
        run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        first = snapshot_of(str(root))
        kept, gone = ids_of(str(root / "kept.bin")), ids_of(str(root / "gone.bin"))
        os.unlink(str(root / "gone.bin"))
        run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        run_rover("cpython", anchor.link, "r", state, "backup", str(root))   # same tree: shared file
        second = snapshot_of(str(root))

        cls = classes(anchor.data_dir)
        assert all(cls[c] == 1 for c in kept | gone), "snapshot content must be pinned"

        r = json.loads(anchorctl(anchor.address, "forget", "r", "1", "--json").stdout)
        assert r["forgotten"] == 1 and r["chunks_released"] == len(gone) and r["tree_freed"]
        cls = classes(anchor.data_dir)
        assert all(cls[c] == 0 for c in gone), "content only snapshot 1 kept is pass-through now"
        assert all(cls[c] == 1 for c in kept), "content snapshot 2 keeps stays pinned"

        # snapshots 2 and 3 share one tree: forgetting 2 frees nothing
        r = json.loads(anchorctl(anchor.address, "forget", "r", "2", "--json").stdout)
        assert r["chunks_released"] == 0 and not r["tree_freed"]
        snaps = json.loads(anchorctl(anchor.address, "snapshots", "r", "--json").stdout)
        assert [s["id"] for s in snaps] == [3]
        out = str(tmp_path / "restored")
        anchorctl(anchor.address, "restore", "r", "3", "--to", out)
        assert_same_tree(second, out)
        p = anchorctl(anchor.address, "restore", "r", "1", "--to", str(tmp_path / "x"), check=False)
        assert p.returncode == 1 and "no snapshot" in p.stderr
        # the rover's parent (3) still exists: the next backup is a delta as usual
        p = run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        assert "snapshot 4 committed" in p.stdout and " 0 chunks" in p.stdout
        assert first != second
    finally:
        anchor.stop()


def test_forgotten_parent_means_a_full_manifest_not_a_reupload(tmp_path):
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        root = tmp_path / "rover"
        root.mkdir()
        (root / "a.bin").write_bytes(os.urandom(100_000))
        state = str(tmp_path / "state")
        run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        anchorctl(anchor.address, "forget", "r", "1")
        p = run_rover("cpython", anchor.link, "r", state, "backup", str(root))
        assert "does not hold snapshot 1" in p.stdout and " 0 chunks" in p.stdout, p.stdout
    finally:
        anchor.stop()


def test_an_object_whose_chunks_are_gone_is_not_claimed(tmp_path):
    """HAVE needs the bytes, not just the catalog row: with some chunks of a file gone from
    the store (as eviction will do), a rover that lost its state re-sends exactly those."""
    data = str(tmp_path / "anchor")
    anchor = AnchorProc(data).start()
    root = tmp_path / "rover"
    root.mkdir()
    (root / "a.bin").write_bytes(os.urandom(300_000))
    try:
        run_rover("cpython", anchor.link, "r", str(tmp_path / "s1"), "backup", str(root))
    finally:
        anchor.stop()
    ids = sorted(ids_of(str(root / "a.bin")))
    gone = ids[:5]
    with ChunkStore(os.path.join(data, "chunks")) as store:
        assert store.drop(gone) == len(gone)
    anchor = AnchorProc(data).start()
    try:
        p = run_rover("cpython", anchor.link, "r", str(tmp_path / "s2"), "backup", str(root))
        assert " %d chunks (" % len(gone) in p.stdout, p.stdout
        out = str(tmp_path / "restored")
        anchorctl(anchor.address, "restore", "r", "--to", out)
        assert_same_tree(snapshot_of(str(root)), out)
    finally:
        anchor.stop()
