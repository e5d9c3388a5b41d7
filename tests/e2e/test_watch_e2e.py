"""Watch list: a file waiting in the rover's outbox is not uploaded by a backup if it
passes through the relay before the deadline; after the deadline it is."""
import json
import os
import random
import subprocess

import pytest

from tests.support.harness import (AnchorProc, anchorctl, assert_same_tree, rover_cmd, run_rover,
    snapshot_of)
from tests.support.services import Origin


@pytest.fixture
def world(tmp_path):
    origin = Origin()
    anchor = AnchorProc(str(tmp_path / "anchor")).start()
    root = tmp_path / "rover"
    (root / "outbox").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_bytes(b"already backed up\n" * 100)
    state = str(tmp_path / "state")
    run_rover("micropython", anchor.link, "w1", state, "backup", str(root))
    photo = random.Random(8).randbytes(600_000)
    (root / "outbox" / "photo.jpg").write_bytes(photo)
    yield origin, anchor, root, state
    anchor.stop()
    origin.close()


def sent_chunks(stdout):
    return int(stdout.split(" chunks (")[0].rsplit(" ", 1)[1])


def test_passes_through_before_deadline_not_uploaded(world, tmp_path):
    origin, anchor, root, state = world
    backup = subprocess.Popen(rover_cmd("micropython", anchor.link, "w1", state, "backup", str(root),
                                        "--outbox", "outbox", "--watch-wait", "120"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The anchor lists the watch once the backup's manifest reached it.
        for _ in range(2000):
            rows = json.loads(anchorctl(anchor.address, "watch", "--json").stdout)
            if rows or backup.poll() is not None:
                break
        assert rows and rows[0]["path"] == "outbox/photo.jpg" and rows[0]["device"] == "w1", rows
        assert "outbox/photo.jpg" in anchorctl(anchor.address, "watch").stdout
        # Now the rover's app sends the photo out, through the anchor.
        run_rover("micropython", anchor.link, "w1", str(tmp_path / "relay-state"), "send",
                  str(root / "outbox" / "photo.jpg"), "--to", origin.url("/photos/photo.jpg"))
        out, _ = backup.communicate(timeout=120)
    finally:
        if backup.poll() is None:
            backup.kill()
    assert backup.returncode == 0, out
    assert "1 of 1 watched files reached the anchor" in out, out
    assert sent_chunks(out) == 0, out
    assert json.loads(anchorctl(anchor.address, "watch", "--json").stdout) == []
    restored = str(tmp_path / "restored")
    anchorctl(anchor.address, "restore", "w1", "--to", restored)
    assert_same_tree(snapshot_of(str(root)), restored, 10 ** 9)


def test_after_deadline_it_is_uploaded(world, tmp_path):
    origin, anchor, root, state = world
    p = run_rover("micropython", anchor.link, "w1", state, "backup", str(root), "--outbox", "outbox",
                  "--watch-wait", "1")
    assert "0 of 1 watched files reached the anchor" in p.stdout, p.stdout
    assert sent_chunks(p.stdout) >= 50, p.stdout          # the 600 KB photo went up
    restored = str(tmp_path / "restored")
    anchorctl(anchor.address, "restore", "w1", "--to", restored)
    assert_same_tree(snapshot_of(str(root)), restored, 10 ** 9)
    stats = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)["devices"]["w1"]
    assert stats["watch_expired"] == 1
