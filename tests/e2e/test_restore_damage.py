"""A record damaged in the anchor's flash, met in the middle of a restore: that file alone is
left out and named, every other file is restored, a good copy already at the path stays, and
anchorctl exits non-zero; the anchor names the file in its log and goes on serving."""
import io
import os
import random

import pytest

from tests.support.harness import AnchorProc, anchorctl, damage, run_rover
from anchorctl.client import Client
from anchor_core import chunker


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_a_damaged_record_costs_that_file_alone(tmp_path, runtime):
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    big = random.Random(8).randbytes(400_000)
    (src / "a.txt").write_bytes(b"before\n")
    (src / "b" / "big.bin").write_bytes(big)
    (src / "c.txt").write_bytes(b"after\n")
    (src / "d.bin").write_bytes(random.Random(9).randbytes(100_000))
    a = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        run_rover(runtime, a.link, "phone", str(tmp_path / "state"), "backup", str(src))
        cs = [(off, ln) for off, ln, _ in chunker.chunks_of(io.BytesIO(big), bytearray(65536))]
        assert len(cs) > 4
        off, ln = cs[len(cs) // 2]
        damage(a.data_dir, big[off:off + ln])

        out = tmp_path / "out"
        (out / "b").mkdir(parents=True)
        (out / "b" / "big.bin").write_bytes(b"the good copy the operator still had\n")
        p = anchorctl(a.address, "restore", "phone", "--to", str(out), "--overwrite", "always", check=False)
        assert p.returncode == 3, (p.stdout, p.stderr)
        assert "not restored: b/big.bin: the anchor cannot read it back: chunk" in p.stderr, p.stderr
        assert "1 files could not be restored" in p.stderr
        # Everything else is there, whole; the damaged file did not replace the good copy,
        # and no temporary file is left behind.
        assert (out / "a.txt").read_bytes() == b"before\n"
        assert (out / "c.txt").read_bytes() == b"after\n"
        assert (out / "d.bin").read_bytes() == (src / "d.bin").read_bytes()
        assert (out / "b" / "big.bin").read_bytes() == b"the good copy the operator still had\n"
        assert sorted(os.listdir(out / "b")) == ["big.bin"]

        # Into an empty folder: the damaged file is absent, never a prefix or anything else.
        p = anchorctl(a.address, "restore", "phone", "--to", str(tmp_path / "fresh"), check=False)
        assert p.returncode == 3, p.stderr
        assert not (tmp_path / "fresh" / "b" / "big.bin").exists()
        assert os.listdir(tmp_path / "fresh" / "b") == []
        assert (tmp_path / "fresh" / "c.txt").read_bytes() == b"after\n"

        # The anchor says which file and why, and serves the next request.
        with open(os.path.join(a.data_dir, "anchor.log")) as f:
            log = f.read()
        assert "restore of snapshot 1: b/big.bin: chunk" in log, log[-2000:]
        n = Client(a.address).restore("phone", str(tmp_path / "again"), path="a.txt")
        assert n["files"] == 1 and n["failed"] == [] and (tmp_path / "again" / "a.txt").read_bytes() == b"before\n"
    finally:
        a.stop()


def test_a_tree_damaged_past_its_start_keeps_what_came_and_fails(tmp_path):
    import glob
    src = tmp_path / "src"
    src.mkdir()
    rnd = random.Random(5)
    for i in range(3000):
        (src / ("f%04d-%s.txt" % (i, rnd.randbytes(8).hex()))).write_bytes(rnd.randbytes(20))
    a = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        run_rover("cpython", a.link, "phone", str(tmp_path / "state"), "backup", str(src))
        tree, = glob.glob(os.path.join(a.data_dir, "trees", "*.tree"))
        size = os.path.getsize(tree)
        assert size > 2 * 65536, size           # the damage lies past the first blocks read
        with open(tree, "r+b") as f:
            f.seek(size - 1000)
            b = f.read(1)
            f.seek(size - 1000)
            f.write(bytes([b[0] ^ 0xFF]))
        out = tmp_path / "out"
        p = anchorctl(a.address, "restore", "phone", "--to", str(out), check=False)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "restore incomplete: the rest of snapshot 1 cannot be read: tree" in p.stderr, p.stderr
        got = sorted(os.listdir(out))
        assert 0 < len(got) < 3000
        for n in got:
            assert (out / n).read_bytes() == (src / n).read_bytes()
    finally:
        a.stop()
