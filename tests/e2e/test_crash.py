"""The anchor is SIGKILLed in the middle of a backup: after a restart the backup completes,
re-sends no chunk the anchor had made durable, and earlier snapshots still restore."""
import os
import random
import subprocess

from tests.support.harness import (AnchorProc, anchorctl, assert_same_tree, make_tree, rover_cmd,
    run_rover, snapshot_of)
from tests.support.linkemu import CountingRelay

from anchor_core import chunker
from anchor.storage.index_sqlite import SqliteIndex


def stored_ids(data_dir):
    index = SqliteIndex(os.path.join(data_dir, "chunks", "index.sqlite"), readonly=True)
    try:
        return set(index.ids())
    finally:
        index.close()


def tree_chunk_ids(root):
    ids = set()
    buf = bytearray(65536)
    for d, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                ids.update(c for _, _, c in chunker.chunks_of(f, buf))
    return ids


def test_sigkill_mid_backup_then_resume(tmp_path):
    data = str(tmp_path / "anchor")
    src = make_tree(str(tmp_path / "src"), n_files=400, total_bytes=4 << 20, seed=11)
    state = str(tmp_path / "state")
    anchor = AnchorProc(data).start()
    try:
        run_rover("micropython", anchor.link, "rover-k", state, "backup", src)
        first = snapshot_of(src)
        before = stored_ids(data)
        rnd = random.Random(5)
        os.makedirs(os.path.join(src, "new-photos"))
        for i in range(60):                       # ~12 MiB of new, incompressible data
            with open(os.path.join(src, "new-photos", "img%03d.jpg" % i), "wb") as f:
                f.write(rnd.randbytes(200_000))
        second = snapshot_of(src)
        wanted = tree_chunk_ids(src)

        relay = CountingRelay("127.0.0.1", anchor.port)
        rover = subprocess.Popen(rover_cmd("micropython", "tcp://127.0.0.1:%d" % relay.port, "rover-k",
                                           state, "backup", src, "--retries", "0"),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # Kill once about half of the new data has crossed the link.
            assert relay.wait_for(lambda r: r.up > 6 << 20, timeout=120), "backup never got going"
            anchor.kill()
            out, _ = rover.communicate(timeout=120)
        finally:
            if rover.poll() is None:
                rover.kill()
            relay.close()
        assert rover.returncode != 0, out
        assert "backup failed" in out, out

        anchor = AnchorProc(data).start()
        # What the anchor holds once it has reopened the store: recovery also indexes records
        # that reached a segment file before the kill but not yet the index (a SIGKILL keeps
        # the page cache), so the index as the killed process left it can be short of it.
        durable = stored_ids(data)
        assert len(durable - before) > 0, "nothing was made durable before the kill"
        p = run_rover("micropython", anchor.link, "rover-k", state, "backup", src)
        assert "snapshot 2 committed" in p.stdout, p.stdout
        sent = int(p.stdout.split(" chunks (")[0].rsplit(" ", 1)[1])
        # Exactly the chunks the anchor did not hold: none it stored is sent again.
        assert sent == len(wanted - durable), (sent, len(wanted - durable), len(wanted - before))
        assert sent < len(wanted - before)

        for snap, want in (("1", first), ("2", second)):
            out_dir = str(tmp_path / ("restore-" + snap))
            anchorctl(anchor.address, "restore", "rover-k", snap, "--to", out_dir)
            assert_same_tree(want, out_dir, 10 ** 9)
        v = anchorctl(anchor.address, "stats", "--json")
        assert '"chunks"' in v.stdout
    finally:
        anchor.stop()
