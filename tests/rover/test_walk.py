"""The rover's tree walk: canonical order, one listing in memory, folders that change."""
import os
import random

from anchor_core import messages as m
from rover import backup, fsys, walk


def make(root, rnd, depth=0):
    for i in range(rnd.randrange(1, 12)):
        name = rnd.choice(["a", "a.b", "a0", "b", "Z", "é", "a-b", "a_b"]) + str(rnd.randrange(30))
        p = os.path.join(root, name)
        if os.path.exists(p):
            continue
        if depth < 4 and rnd.random() < 0.3:
            os.mkdir(p)
            make(p, rnd, depth + 1)
        else:
            open(p, "wb").close()


def test_walk_yields_every_path_in_canonical_order(tmp_path):
    rnd = random.Random(1)
    make(str(tmp_path), rnd)
    expect = []
    for d, dirs, files in os.walk(str(tmp_path)):
        for n in dirs + files:
            expect.append(os.path.relpath(os.path.join(d, n), str(tmp_path)))
    expect.sort(key=m.path_key)
    got = [p.decode() for p, _ in backup.walk(str(tmp_path))]
    assert got == expect
    assert len(got) > 50


def test_walk_resumes_after_a_folder_even_if_the_parent_changed(tmp_path, monkeypatch):
    for d in ("a", "c"):
        os.mkdir(str(tmp_path / d))
        open(str(tmp_path / d / "x"), "wb").close()
    open(str(tmp_path / "b"), "wb").close()
    seen = []
    for p, _ in backup.walk(str(tmp_path)):
        p = p.decode()
        seen.append(p)
        if p == "a/x":
            open(str(tmp_path / "0-new"), "wb").close()   # sorts before "a": not revisited
    assert seen == ["a", "a/x", "b", "c", "c/x"]


def test_folder_larger_than_the_window(tmp_path):
    names = ["f%04d" % i for i in range(walk.WINDOW * 3 + 5)]
    for n in names:
        open(str(tmp_path / n), "wb").close()
    os.mkdir(str(tmp_path / "f0100-dir"))
    open(str(tmp_path / "f0100-dir" / "inner"), "wb").close()
    got = [p.decode() for p, _ in backup.walk(str(tmp_path))]
    want = sorted(names + ["f0100-dir", "f0100-dir/inner"], key=m.path_key)
    assert got == want


def test_missing_root_is_an_error_not_an_empty_tree(tmp_path):
    try:
        list(backup.walk(str(tmp_path / "not-mounted")))
    except OSError:
        return
    raise AssertionError("walk of a missing root yielded nothing instead of failing")
