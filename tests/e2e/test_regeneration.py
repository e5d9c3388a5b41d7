"""Eviction under a capacity budget, then regeneration: content fetched over HTTP and
evicted is fetched again from its origin when a backup needs it. Origin unchanged: nothing
crosses the radio. Origin changed: only the chunks that differ do."""
import json
import random

import pytest

from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, run_rover, snapshot_of
from tests.support.services import Origin


@pytest.fixture
def world(tmp_path):
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor"), "--capacity", "1500K").start()
    rnd = random.Random(6)
    origin.files["/a.bin"] = rnd.randbytes(800_000)
    origin.files["/b.bin"] = rnd.randbytes(900_000)
    root = tmp_path / "rover"
    root.mkdir()
    other = tmp_path / "elsewhere"
    other.mkdir()
    st = str(tmp_path / "relay-state")
    run_rover("micropython", anchor.link, "g", st, "fetch", origin.url("/a.bin"), "--out", str(root / "a.bin"))
    # a later download pushes the older one out of the 1.5 MB budget
    run_rover("micropython", anchor.link, "g", st, "fetch", origin.url("/b.bin"), "--out", str(other / "b.bin"))
    stats = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)
    assert stats["retention"]["evicted_chunks"] > 20, stats["retention"]
    assert stats["store"]["live_bytes"] <= 1500 * 1024, stats["store"]
    yield origin, anchor, root, str(tmp_path / "state")
    anchor.stop()
    origin.close()


def uploaded(stdout):
    chunks = int(stdout.split(" chunks (")[0].rsplit(" ", 1)[1])
    nbytes = int(stdout.split(" chunks (")[1].split(" bytes")[0])
    return chunks, nbytes


def test_origin_unchanged_nothing_crosses_the_radio(world, tmp_path):
    origin, anchor, root, state = world
    p = run_rover("micropython", anchor.link, "g", state, "backup", str(root))
    assert "1 of 1 watched files reached the anchor" in p.stdout, p.stdout
    assert uploaded(p.stdout) == (0, 0), p.stdout
    last = [r for r in origin.requests if r[0] == "GET" and r[1] == "/a.bin"][-1]
    assert last[2].get("If-Match"), last          # conditional on the captured version
    c = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)["devices"]["g"]
    assert c["supplied_regenerated"] == 800_000, c
    out = str(tmp_path / "restored")
    anchorctl(anchor.address, "restore", "g", "--to", out)
    assert_same_tree(snapshot_of(str(root)), out, 10 ** 9)


def test_origin_changed_only_the_changed_chunks_are_uploaded(world, tmp_path):
    origin, anchor, root, state = world
    new = bytearray(origin.files["/a.bin"])
    new[400_000:402_000] = b"\x00" * 2000              # the origin's copy changed in the middle
    origin.files["/a.bin"] = bytes(new)
    p = run_rover("micropython", anchor.link, "g", state, "backup", str(root))
    assert "0 of 1 watched files reached the anchor" in p.stdout, p.stdout
    gets = [r for r in origin.requests if r[0] == "GET" and r[1] == "/a.bin"]
    assert gets[-2][2].get("If-Match") and not gets[-1][2].get("If-Match"), gets[-2:]   # 412, then plain
    chunks, nbytes = uploaded(p.stdout)
    assert 1 <= chunks <= 3 and nbytes < 100_000, p.stdout
    out = str(tmp_path / "restored")
    anchorctl(anchor.address, "restore", "g", "--to", out)
    assert_same_tree(snapshot_of(str(root)), out, 10 ** 9)     # the rover's version, not the origin's
