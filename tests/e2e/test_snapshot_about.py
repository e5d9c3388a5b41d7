"""Snapshots say what they are of: the folder as the rover named it, its host, a tag (both
runtimes), shown by anchorctl; backing up another folder says it replaces the whole tree; an
older catalog gains the columns, its snapshots keeping none."""
import json
import socket
import sqlite3

import pytest

from anchor.storage.catalog import Catalog
from tests.support.harness import AnchorProc, anchorctl, make_tree, run_rover


@pytest.fixture(scope="module")
def anchor(tmp_path_factory):
    a = AnchorProc(str(tmp_path_factory.mktemp("about") / "anchor")).start()
    yield a
    a.stop()


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_snapshots_record_root_host_and_tag(anchor, tmp_path, runtime):
    device = "about-" + runtime
    first, second = str(tmp_path / "photos"), str(tmp_path / "notes")
    make_tree(first, 5, 20_000, seed=1)
    make_tree(second, 5, 20_000, seed=2)
    state = str(tmp_path / "state")
    p = run_rover(runtime, anchor.link, device, state, "backup", first, "--tag", "weekly")
    assert "replaces the whole tree" not in p.stdout + p.stderr
    p = run_rover(runtime, anchor.link, device, state, "backup", second)
    assert ("note: backing up %s, not %s as last time: this snapshot replaces the whole tree" % (second, first)
            in p.stdout + p.stderr), p.stdout + p.stderr
    snaps = json.loads(anchorctl(anchor.address, "snapshots", device, "--json").stdout)
    assert [(s["path"], s["tag"]) for s in snaps] == [(first, "weekly"), (second, None)]
    host = snaps[0]["host"]
    assert host and (host == socket.gethostname() if runtime == "cpython" else True)
    table = anchorctl(anchor.address, "snapshots", device).stdout
    assert "weekly" in table and first in table and "TAG" in table


def test_an_older_catalog_gains_the_columns(tmp_path):
    path = str(tmp_path / "catalog.sqlite")
    c = Catalog(path)
    dev = c.device_id("old-rover")
    c.db.execute("INSERT INTO snapshots (device_id, seq, parent, created, root, entries, bytes) "
                 "VALUES (?, 1, NULL, 1.0, ?, 0, 0)", (dev, bytes(32)))
    for col in ("root_path", "host", "tag"):
        c.db.execute("ALTER TABLE snapshots DROP COLUMN %s" % col)
    c.close()
    db = sqlite3.connect(path)
    assert "tag" not in [r[1] for r in db.execute("PRAGMA table_info(snapshots)")]
    db.close()
    c = Catalog(path)
    s = c.snapshots(dev)[0]
    assert (s["path"], s["host"], s["tag"]) == (None, None, None)
    c.close()
