"""anchorctl over a live anchor: the library API the CLI is a shell over, and the CLI itself."""
import json
import os

import pytest

from tests.support.harness import AnchorProc, anchorctl, make_tree, run_rover
from anchorctl.client import AnchorError, Client


@pytest.fixture(scope="module")
def anchor(tmp_path_factory):
    d = tmp_path_factory.mktemp("ctl")
    a = AnchorProc(str(d / "anchor")).start()
    src = make_tree(str(d / "src"), n_files=40, total_bytes=200_000, seed=4)
    run_rover("cpython", a.link, "phone", str(d / "state"), "backup", src)
    a.src = src
    yield a
    a.stop()


def test_library_api(anchor, tmp_path):
    c = Client(anchor.address)
    devs = c.devices()
    assert [d["device"] for d in devs] == ["phone"] and devs[0]["latest"] == 1
    snaps = c.snapshots("phone")
    assert snaps[0]["id"] == 1 and snaps[0]["entries"] > 40
    top = c.ls("phone")
    assert all("/" not in e["path"] for e in top) and top
    d = next(e for e in top if e["type"] == "dir")
    inside = c.ls("phone", 1, d["path"])
    assert inside[0]["path"] == d["path"]
    assert all(e["path"].startswith(d["path"] + "/") for e in inside[1:])
    every = c.ls("phone", "latest", "", recursive=True)
    assert len(every) == snaps[0]["entries"]
    n = c.restore("phone", str(tmp_path / "r"), 1, d["path"])
    assert n["dirs"] >= 1 and os.path.isdir(str(tmp_path / "r" / d["path"]))
    st = c.stats()
    assert st["store"]["chunks"] > 0 and st["devices"]["phone"]["backups"] == 1


def test_clear_errors(anchor):
    c = Client(anchor.address)
    with pytest.raises(AnchorError, match="no device"):
        c.snapshots("nobody")
    with pytest.raises(AnchorError, match="no snapshot"):
        c.ls("phone", 99)
    with pytest.raises(AnchorError, match="no path"):
        c.ls("phone", 1, "does/not/exist")
    with pytest.raises(AnchorError, match="bad path"):
        c.ls("phone", 1, "../x")
    with pytest.raises(AnchorError, match="cannot reach"):
        Client("unix:/nonexistent/anchor.sock").devices()
    with pytest.raises(AnchorError, match="expected unix:PATH"):
        Client("tcp://1.2.3.4:5")


def test_cli_commands_and_json(anchor, tmp_path):
    for args in (["devices"], ["snapshots", "phone"], ["ls", "phone"], ["stats"],
                 ["restore", "phone", "--to", str(tmp_path / "out")]):
        human = anchorctl(anchor.address, *args)
        assert human.stdout.strip()
        js = json.loads(anchorctl(anchor.address, *args, "--json").stdout)
        assert js
    p = anchorctl(anchor.address, "snapshots", "nobody", check=False)
    assert p.returncode == 1 and "no device" in p.stderr
    env_p = __import__("subprocess").run(
        [os.path.join(os.path.dirname(__import__("sys").executable), "anchorctl"), "devices", "--json"],
        capture_output=True, text=True, env=dict(os.environ, ANCHOR=anchor.address), timeout=60)
    assert json.loads(env_p.stdout)[0]["device"] == "phone"


def test_restore_leaves_existing_files_unless_told(anchor, tmp_path):
    """anchorctl restore into a folder that has some of the files: by default they stay (named
    on stderr, exit 0); --dry-run lists and writes nothing; --overwrite always replaces."""
    a, src = anchor, anchor.src
    first = sorted(os.path.relpath(os.path.join(d, n), src) for d, _, ns in os.walk(src) for n in ns)[0]
    to = tmp_path / "to"
    os.makedirs(os.path.dirname(str(to / first)), exist_ok=True)
    (to / first).write_bytes(b"the operator's own copy\n")
    p = anchorctl(a.address, "restore", "phone", "--to", str(to), "--dry-run")
    assert "would write" in p.stdout and "dry run: would restore" in p.stdout
    assert sorted(os.listdir(str(to))) == sorted([first.split("/")[0]])
    p = anchorctl(a.address, "restore", "phone", "--to", str(to))
    assert (to / first).read_bytes() == b"the operator's own copy\n"
    assert "1 file already in" in p.stderr and first in p.stderr, p.stderr
    p = anchorctl(a.address, "restore", "phone", "--to", str(to), "--overwrite", "always")
    with open(os.path.join(src, first), "rb") as f:
        assert (to / first).read_bytes() == f.read()
    p = anchorctl(a.address, "restore", "phone", "--to", str(to), "--overwrite", "if-changed")
    assert "unchanged" in p.stdout and "already in" not in p.stderr
