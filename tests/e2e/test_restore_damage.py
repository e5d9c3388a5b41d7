"""A record damaged in the anchor's flash, met in the middle of a restore: anchorctl fails
clearly and never writes bytes that are not the file's; the anchor names the file and goes
on serving."""
import io
import os
import random

from tests.support.harness import AnchorProc, anchorctl, damage, run_rover
from anchorctl.client import Client
from anchor_core import chunker


def test_a_damaged_record_cuts_the_restore_short(tmp_path):
    src = tmp_path / "src"
    (src / "b").mkdir(parents=True)
    big = random.Random(8).randbytes(400_000)
    (src / "a.txt").write_bytes(b"before\n")
    (src / "b" / "big.bin").write_bytes(big)
    (src / "c.txt").write_bytes(b"after\n")
    a = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        run_rover("cpython", a.link, "phone", str(tmp_path / "state"), "backup", str(src))
        cs = [(off, ln) for off, ln, _ in chunker.chunks_of(io.BytesIO(big), bytearray(65536))]
        assert len(cs) > 4
        off, ln = cs[len(cs) // 2]
        damage(a.data_dir, big[off:off + ln])

        out = tmp_path / "out"
        p = anchorctl(a.address, "restore", "phone", "--to", str(out), check=False)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "restore stream ended inside a file" in p.stderr, p.stderr
        assert (out / "a.txt").read_bytes() == b"before\n"
        got = (out / "b" / "big.bin").read_bytes()
        assert big.startswith(got) and len(got) < len(big), "only the file's own bytes, and not all of them"
        assert not (out / "c.txt").exists()

        # The anchor says which file and why, and serves the next request.
        with open(os.path.join(a.data_dir, "anchor.log")) as f:
            log = f.read()
        assert "cut short: b/big.bin: chunk" in log, log[-2000:]
        n = Client(a.address).restore("phone", str(tmp_path / "again"), path="a.txt")
        assert n["files"] == 1 and (tmp_path / "again" / "a.txt").read_bytes() == b"before\n"
    finally:
        a.stop()
