"""A MicroPython rover whose heap is too small for the command says so in one line, leaves no
snapshot half-made on the anchor, and the same state folder backs up whole once the heap is
big enough."""
import json
import subprocess

import pytest

from tests.support.harness import ROVER_MPY, AnchorProc, anchorctl, make_tree



@pytest.mark.parametrize("heap", ["64K", "120K", "160K"])
def test_a_heap_too_small_is_one_line_and_changes_nothing(tmp_path, heap):
    a = AnchorProc(str(tmp_path / "anchor")).start()
    try:
        src = make_tree(str(tmp_path / "src"), n_files=30, total_bytes=400_000, seed=3)
        state = str(tmp_path / "state")

        def backup(h):
            return subprocess.run([ROVER_MPY, "--heap", h, "--link", a.link, "--device", "small",
                                   "--state", state, "backup", src], capture_output=True, text=True, timeout=120)
        p = backup(heap)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        assert p.stderr.startswith("rover: out of memory: ") and p.stderr.count("\n") == 1, p.stderr
        assert "Traceback" not in p.stdout + p.stderr
        assert json.loads(anchorctl(a.address, "devices", "--json").stdout) == []   # no snapshot, no device
        p = backup("256K")
        assert p.returncode == 0 and "snapshot 1 committed" in p.stdout, p.stdout + p.stderr
    finally:
        a.stop()
