"""End to end: a real anchor process, the rover under MicroPython (256 KB heap) or CPython,
byte counting at the socket, restores through anchorctl compared byte for byte."""
import json
import os
import shutil

import pytest

from tests.support.harness import (AnchorProc, anchorctl, assert_same_tree, make_tree, run_rover,
    snapshot_of)
from tests.support.linkemu import CountingRelay


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor")).start()
    yield a
    a.stop()


def mutate(root, seed=7):
    """Edit, append to, delete, add and rename things in a tree made by make_tree."""
    import random
    rnd = random.Random(seed)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    for p in rnd.sample(files, 20):
        os.unlink(p)
    files = [p for p in files if os.path.exists(p)]
    for p in rnd.sample(files, 15):                      # in-place edit in the middle
        with open(p, "r+b") as f:
            size = os.path.getsize(p)
            f.seek(size // 2)
            f.write(b"EDITED" * 10)
    for p in rnd.sample(files, 15):                      # appends
        with open(p, "ab") as f:
            f.write(rnd.randbytes(3000))
    for p in rnd.sample(files, 5):                       # mode and mtime only
        os.chmod(p, 0o600)
        os.utime(p, (1_700_000_000, 1_700_000_000))
    os.makedirs(os.path.join(root, "new-dir", "deeper"), exist_ok=True)
    for i in range(10):
        with open(os.path.join(root, "new-dir", "deeper", "n%d" % i), "wb") as f:
            f.write(rnd.randbytes(rnd.randrange(0, 40000)))
    shutil.rmtree(os.path.join(root, "empty-folder"))


@pytest.mark.parametrize("runtime", ["micropython", "cpython"])
def test_backup_change_backup_restore_both(anchor, tmp_path, runtime):
    src = make_tree(str(tmp_path / "src"), n_files=2500 if runtime == "micropython" else 1500,
                    total_bytes=6 << 20, seed=3)
    if runtime == "cpython":
        os.symlink("dir000/f00001.txt", os.path.join(src, "a-link"))
    with open(os.path.join(src, "big.bin"), "wb") as f:     # ~250 chunks: lists span messages
        f.write(os.urandom(2_500_000))
    dup = os.urandom(50_000)
    for name in ("dup-a.bin", "dup-b.bin"):                 # the same content twice in one batch
        with open(os.path.join(src, name), "wb") as f:
            f.write(dup)
    state = str(tmp_path / "state")
    before = snapshot_of(src)
    run_rover(runtime, anchor.link, "rover-a", state, "backup", src)
    mutate(src)
    with open(os.path.join(src, "big.bin"), "ab") as f:
        f.write(b"appended" * 1000)
    after = snapshot_of(src)
    p = run_rover(runtime, anchor.link, "rover-a", state, "backup", src)
    assert "snapshot 2 committed" in p.stdout, p.stdout
    sent = int(p.stdout.split(" chunks (")[1].split(" bytes")[0])
    assert sent < 1_000_000, "an append and some edits re-sent %d bytes" % sent

    snaps = json.loads(anchorctl(anchor.address, "snapshots", "rover-a", "--json").stdout)
    assert [s["id"] for s in snaps] == [1, 2] and snaps[1]["parent"] == 1
    res = 10 ** 9 if runtime == "micropython" else 1   # MicroPython's stat has whole seconds
    for snap, want in (("1", before), ("2", after)):
        out = str(tmp_path / ("restore-" + snap))
        anchorctl(anchor.address, "restore", "rover-a", snap, "--to", out)
        assert_same_tree(want, out, res)


def test_second_backup_of_5000_files_moves_under_1KiB(anchor, tmp_path):
    src = make_tree(str(tmp_path / "src"), n_files=5000, total_bytes=2 << 20, seed=5)
    state = str(tmp_path / "state")
    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        link = "tcp://127.0.0.1:%d" % relay.port
        run_rover("micropython", link, "rover-b", state, "backup", src)
        first = relay.total
        relay.reset()
        p = run_rover("micropython", link, "rover-b", state, "backup", src)
        second = relay.total
    finally:
        relay.close()
    assert "snapshot 2 committed" in p.stdout
    assert first > 2 << 20          # the first backup really carried the data
    assert second < 1024, "no-change backup moved %d bytes" % second


def test_lost_rover_state_reuploads_nothing(anchor, tmp_path):
    src = make_tree(str(tmp_path / "src"), n_files=300, total_bytes=3 << 20, seed=9)
    run_rover("micropython", anchor.link, "rover-c", str(tmp_path / "state"), "backup", src)
    shutil.rmtree(str(tmp_path / "state"))
    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        p = run_rover("micropython", "tcp://127.0.0.1:%d" % relay.port, "rover-c",
                      str(tmp_path / "state"), "backup", src)
    finally:
        relay.close()
    assert " 0 chunks (0 bytes) uploaded" in p.stdout, p.stdout
    assert relay.up < 100_000          # metadata only, not the 3 MiB of content
    out = str(tmp_path / "restore")
    anchorctl(anchor.address, "restore", "rover-c", "--to", out)
    assert_same_tree(snapshot_of(src), out, 10 ** 9)


def test_unreadable_folder_and_file_are_skipped(anchor, tmp_path, monkeypatch):
    """Run the rover in-process (CPython) with a file system that refuses two paths."""
    from rover import backup, fsys
    from rover.link import open_link
    src = make_tree(str(tmp_path / "src"), n_files=30, total_bytes=50_000, seed=12)
    os.makedirs(os.path.join(src, "locked"))
    with open(os.path.join(src, "locked", "secret"), "wb") as f:
        f.write(b"x")
    with open(os.path.join(src, "gone.txt"), "wb") as f:
        f.write(b"y")
    real_entries, real_open = fsys.entries, open

    def entries(path):
        if path.endswith(b"/locked"):
            raise PermissionError(13, "Permission denied")
        return real_entries(path)

    def fake_open(path, *a, **k):
        if isinstance(path, bytes) and path.endswith(b"/gone.txt"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr(fsys, "entries", entries)
    monkeypatch.setattr(backup, "open", fake_open, raising=False)
    logs = []
    link = open_link(anchor.link)
    try:
        stats = backup.Backup(link, "rover-d", str(tmp_path / "state"), src, logs.append).run()
    finally:
        link.close()
    assert stats["snapshot"] == 1
    assert any("not stored: locked: cannot list" in l for l in logs), logs
    assert any("not stored: gone.txt: cannot read" in l for l in logs), logs
    assert stats["skipped"] == 2
    listed = json.loads(anchorctl(anchor.address, "ls", "rover-d", "1", "-r", "--json").stdout)
    paths = set(e["path"] for e in listed)
    assert "locked" in paths and "locked/secret" not in paths and "gone.txt" not in paths
