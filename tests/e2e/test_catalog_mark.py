"""A cut catalog WAL undoes the last commits without a trace SQLite can see (it reads a WAL up
to its first bad frame); the catalog's mark makes it seen: verify reports the lost snapshot
changes until repair acknowledges them, and the rover's next backup commits again."""
import json
import os

from tests.support.harness import AnchorProc, anchorctl, make_tree, run_rover


def verify(a, *extra):
    return json.loads(anchorctl(a.address, "verify", "--json", *extra, check=False).stdout)


def test_commits_undone_by_a_cut_wal_are_reported_and_the_next_backup_commits(tmp_path):
    data = str(tmp_path / "anchor")
    src = make_tree(str(tmp_path / "src"), 10, 50_000, seed=2)
    state = str(tmp_path / "state")
    a = AnchorProc(data).start()
    run_rover("cpython", a.link, "w", state, "backup", src)
    a.kill()                         # no checkpoint: the commit lives in the WAL only
    wal = os.path.join(data, "catalog.sqlite-wal")
    assert os.path.getsize(wal) > 32
    os.truncate(wal, 32)             # the header alone: every frame after it is gone
    a = AnchorProc(data).start()
    try:
        v = verify(a)
        assert not v["ok"], v
        assert any(t.startswith("catalog:") and "gone" in t for t in v["damage_at_start"]), v
        r = verify(a, "--repair")
        assert "catalog" in r["repair"], r
        assert verify(a)["ok"]       # acknowledged: no longer reported
        # The rover's parent is unknown now: it describes its tree, and the commit holds again.
        p = run_rover("cpython", a.link, "w", state, "backup", src)
        assert "committed" in p.stdout, p.stdout
        assert json.loads(anchorctl(a.address, "snapshots", "w", "--json").stdout)
    finally:
        a.stop()


def test_a_clean_restart_reports_nothing(tmp_path):
    data = str(tmp_path / "anchor")
    src = make_tree(str(tmp_path / "src"), 5, 20_000, seed=3)
    a = AnchorProc(data).start()
    run_rover("cpython", a.link, "c", str(tmp_path / "state"), "backup", src)
    a.kill()
    a = AnchorProc(data).start()
    try:
        v = verify(a)
        assert v["ok"] and not v["damage_at_start"], v
    finally:
        a.stop()
