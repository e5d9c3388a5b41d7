"""Flash bounds what is local, not history: once offloaded (and read back), chunks a snapshot
keeps may be evicted; restores read them from the fleet store, and a backup that needs a
relayed body again is answered from the store instead of its origin or the radio."""
import os
import random
import urllib.request

from tests.fleet.anchors import offload, pair, stats, status, uploaded
from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, run_rover, snapshot_of
from tests.support.services import Origin, free_port


def test_offloaded_chunks_leave_flash_and_are_served_from_the_store(fleet, tmp_path):
    origin = Origin()
    rnd = random.Random(15)
    origin.files["/a.bin"] = rnd.randbytes(800_000)
    origin.files["/b.bin"] = rnd.randbytes(900_000)
    port = free_port()
    a = AnchorProc(str(tmp_path / "a"), "--capacity", "1500K", "--http", "tcp://127.0.0.1:%d" % port,
                   *fleet.args(), secure=True).start()
    try:
        state = str(tmp_path / "state")
        pair(a, "g", state)
        root = tmp_path / "rover"
        root.mkdir()
        (root / "own.bin").write_bytes(rnd.randbytes(500_000))
        run_rover("cpython", a.link, "g", state, "fetch", origin.url("/a.bin"), "--out", str(root / "a.bin"))
        p = run_rover("cpython", a.link, "g", state, "backup", str(root))
        assert uploaded(p.stdout)[1] < 600_000, p.stdout          # a.bin came from the capture
        st = offload(a)
        assert st["offloaded"]["chunks"] >= st["local"]["chunks"] > 100, st
        # A later download pushes the snapshot's chunks out of the 1.5 MB budget: allowed now
        # that the store holds them.
        other = tmp_path / "elsewhere"
        other.mkdir()
        run_rover("cpython", a.link, "g", state, "fetch", origin.url("/b.bin"), "--out", str(other / "b.bin"))
        s = stats(a)
        assert s["retention"]["evicted_chunks"] > 50, s["retention"]
        assert s["store"]["live_bytes"] <= 1500 * 1024, s["store"]

        out = str(tmp_path / "restored")
        anchorctl(a.address, "restore", "g", "--to", out)
        assert_same_tree(snapshot_of(str(root)), out, 10 ** 9)
        assert status(a)["read_from_store"] > 50

        # The same body at a new path: without the store it would be fetched from its origin
        # again (regeneration); now the anchor answers HAVE from the store.
        gets = len([r for r in origin.requests if r[1] == "/a.bin"])
        os.link(root / "a.bin", root / "copy.bin")
        p = run_rover("cpython", a.link, "g", state, "backup", str(root))
        assert uploaded(p.stdout) == (0, 0), p.stdout
        assert len([r for r in origin.requests if r[1] == "/a.bin"]) == gets
        metrics = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=30).read().decode()
        reads = [ln for ln in metrics.splitlines() if ln.startswith("anchor_fleet_chunk_reads")]
        assert reads and float(reads[0].split()[-1]) > 50, reads
        assert "anchor_fleet_store_ok 1.0" in metrics
        assert stats(a)["devices"]["g"].get("supplied_regenerated", 0) == 0
        out2 = str(tmp_path / "restored2")
        anchorctl(a.address, "restore", "g", "--to", out2)
        assert_same_tree(snapshot_of(str(root)), out2, 10 ** 9)

        # The SD card damages fleet.sqlite, the anchor's record of what it offloaded: it is
        # moved aside, and where the evicted chunks are is read from the store again.
        a.stop()
        data = str(tmp_path / "a")
        with open(os.path.join(data, "fleet.sqlite"), "r+b") as f:
            f.write(b"\xff" * 4096)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(os.path.join(data, "fleet.sqlite" + suffix)):
                os.unlink(os.path.join(data, "fleet.sqlite" + suffix))
        a = AnchorProc(data, "--capacity", "1500K", *fleet.args(), secure=True).start()
        assert [n for n in os.listdir(data) if n.startswith("fleet.sqlite.damaged-")]
        offload(a)
        out3 = str(tmp_path / "restored3")
        anchorctl(a.address, "restore", "g", "--to", out3)
        assert_same_tree(snapshot_of(str(root)), out3, 10 ** 9)
    finally:
        a.stop()
        origin.close()
