"""Damage in a real anchor's data directory is found by `anchorctl verify`, contained, and
healed by the next backup of a rover that still has the bytes; a store with a missing segment
or a damaged header still starts and serves everything else."""
import glob
import json
import os
import random

import pytest

from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, damage, run_rover, snapshot_of


def _src(root, seed=3, big=400_000):
    rnd = random.Random(seed)
    os.makedirs(os.path.join(root, "d"), exist_ok=True)
    with open(os.path.join(root, "a.txt"), "wb") as f:
        f.write(b"alpha\n")
    with open(os.path.join(root, "d", "big.bin"), "wb") as f:
        f.write(rnd.randbytes(big))
    with open(os.path.join(root, "z.bin"), "wb") as f:
        f.write(rnd.randbytes(50_000))


def _verify(a, *extra):
    p = anchorctl(a.address, "verify", "--json", *extra, check=False)
    return p.returncode, json.loads(p.stdout)


def _flip(path, at):
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x20]))


@pytest.mark.parametrize("how", ["flipped", "deleted"])
def test_a_damaged_tree_is_found_and_later_backups_go_on(tmp_path, how):
    src = str(tmp_path / "src")
    _src(src)
    state = str(tmp_path / "state")
    a = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        run_rover("cpython", a.link, "phone", state, "backup", src)
        assert _verify(a)[0] == 0
        trees = glob.glob(os.path.join(a.data_dir, "trees", "*.tree"))
        assert len(trees) == 1
        if how == "flipped":
            _flip(trees[0], os.path.getsize(trees[0]) // 2)
        else:
            os.unlink(trees[0])

        rc, v = _verify(a)
        assert rc == 1 and not v["ok"], v
        assert [(d["device"], d["snapshot"]) for d in v["damaged_snapshots"]] == [("phone", 1)], v
        # The next backup does not build on the damaged tree: it describes the whole tree,
        # commits, and (the same tree) heals the file under its name.
        run_rover("cpython", a.link, "phone", state, "backup", src)
        assert _verify(a)[0] == 0
        with open(os.path.join(src, "a.txt"), "ab") as f:
            f.write(b"more\n")
        run_rover("cpython", a.link, "phone", state, "backup", src)
        anchorctl(a.address, "restore", "phone", "--to", str(tmp_path / "out"))
        assert_same_tree(snapshot_of(src), str(tmp_path / "out"))
    finally:
        a.stop()


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_a_damaged_chunk_is_quarantined_and_the_next_backup_heals_it(tmp_path, runtime):
    src = str(tmp_path / "src")
    _src(src)
    state = str(tmp_path / "state")
    a = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        run_rover(runtime, a.link, "phone", state, "backup", src)
        with open(os.path.join(src, "d", "big.bin"), "rb") as f:
            big = f.read()
        damage(a.data_dir, big[200_000:260_000])

        rc, v = _verify(a)
        assert rc == 1 and len(v["bad"]) == 1 and v["damaged_snapshots"] == [], v
        rc, v = _verify(a, "--repair")
        assert rc == 1 and v["repair"]["quarantined"] == 1, v
        # Quarantined: the anchor no longer claims it, so the snapshot is known to be
        # incomplete until a rover brings the bytes again.
        rc, v = _verify(a)
        assert rc == 1 and v["bad"] == [] and v["missing"] == 1, v
        assert [d["snapshot"] for d in v["damaged_snapshots"]] == [1], v

        before = json.loads(anchorctl(a.address, "stats", "--json").stdout)["devices"]["phone"]["chunks_uploaded"]
        run_rover(runtime, a.link, "phone", state, "backup", src)
        stats = json.loads(anchorctl(a.address, "stats", "--json").stdout)
        assert stats["devices"]["phone"]["chunks_uploaded"] == before + 1     # the lost chunk, only
        rc, v = _verify(a)
        assert rc == 0 and v["ok"], v
        # snapshot 1 itself is whole again
        anchorctl(a.address, "restore", "phone", "1", "--to", str(tmp_path / "out"))
        # (MicroPython reads whole-second mtimes)
        assert_same_tree(snapshot_of(src), str(tmp_path / "out"), 1 if runtime == "cpython" else 10 ** 9)
    finally:
        a.stop()


def _segments(a):
    return sorted(glob.glob(os.path.join(a.data_dir, "chunks", "segments", "*.seg")))


def test_a_truncated_segment_is_healed_not_built_on(tmp_path):
    src = str(tmp_path / "src")
    _src(src)
    state = str(tmp_path / "state")
    a = AnchorProc(str(tmp_path / "anchor")).start()
    run_rover("cpython", a.link, "phone", state, "backup", src)
    a.stop()
    seg = _segments(a)[-1]
    os.truncate(seg, os.path.getsize(seg) - 30_000)     # the card lost the segment's tail
    a.start()
    try:
        rc, v = _verify(a)
        assert rc == 1 and v["missing"] >= 1, v
        assert any("shorter than the index says" in d for d in v["damage_at_start"]), v
        with open(os.path.join(a.data_dir, "anchor.log")) as f:
            assert "shorter than the index says" in f.read()
        # The next backup (one file changed) must not commit against the lost chunks: the
        # anchor asks for them again, and the new snapshot restores whole.
        with open(os.path.join(src, "a.txt"), "ab") as f:
            f.write(b"more\n")
        run_rover("cpython", a.link, "phone", state, "backup", src)
        _clean_and_restores(a, src, str(tmp_path / "out"))
    finally:
        a.stop()


def _clean_and_restores(a, src, out):
    """Healed: verify finds nothing, and the newest snapshot restores as `src`."""
    rc, v = _verify(a)
    assert rc == 0, v
    anchorctl(a.address, "restore", "phone", "--to", out)
    assert_same_tree(snapshot_of(src), out)


def _two_segments(tmp_path):
    """An anchor whose store holds more than one segment (4 MiB each): files of 1.5 MiB."""
    src = str(tmp_path / "src")
    os.makedirs(src)
    rnd = random.Random(11)
    for i in range(4):
        with open(os.path.join(src, "f%d.bin" % i), "wb") as f:
            f.write(rnd.randbytes(1_500_000))
    with open(os.path.join(src, "small.txt"), "wb") as f:
        f.write(b"small\n")
    a = AnchorProc(str(tmp_path / "anchor")).start()
    run_rover("cpython", a.link, "phone", str(tmp_path / "state"), "backup", src)
    a.stop()
    assert len(_segments(a)) >= 2
    return a, src


def test_a_missing_segment_the_anchor_starts_serves_the_rest_and_heals(tmp_path):
    a, src = _two_segments(tmp_path)
    os.unlink(_segments(a)[0])
    a.start()                                   # today: refuses to start, all data unreachable
    try:
        with open(os.path.join(a.data_dir, "anchor.log")) as f:
            assert "00000001.seg is missing" in f.read()
        rc, v = _verify(a)
        assert rc == 1 and v["missing"] > 0 and any("missing" in d for d in v["damage_at_start"]), v
        out = tmp_path / "out"
        p = anchorctl(a.address, "restore", "phone", "--to", str(out), check=False)
        assert p.returncode == 3, p.stderr
        lost = [ln for ln in p.stderr.splitlines() if "not restored:" in ln]
        assert lost and all("f" in ln for ln in lost)
        assert (out / "small.txt").read_bytes() == b"small\n"
        restored = [n for n in os.listdir(src) if (out / n).exists()]
        for n in restored:
            assert (out / n).read_bytes() == open(os.path.join(src, n), "rb").read()
        assert len(restored) + len(lost) == 5

        run_rover("cpython", a.link, "phone", str(tmp_path / "state"), "backup", src)
        _clean_and_restores(a, src, str(tmp_path / "again"))
    finally:
        a.stop()


def test_a_damaged_segment_header_the_anchor_starts_and_repair_rewrites_it(tmp_path):
    a, src = _two_segments(tmp_path)
    with open(_segments(a)[0], "r+b") as f:
        f.write(b"GARBAGE!")
    a.start()
    try:
        rc, v = _verify(a)
        assert rc == 1 and len(v["segments"]) == 1 and v["bad"] == [] and v["missing"] == 0, v
        # every record is still read, each checked: the whole snapshot restores
        anchorctl(a.address, "restore", "phone", "--to", str(tmp_path / "out"))
        assert_same_tree(snapshot_of(src), str(tmp_path / "out"))
        rc, v = _verify(a, "--repair")
        assert v["repair"]["headers_rewritten"] == 1, v
        assert _verify(a)[0] == 0
    finally:
        a.stop()
