"""Private at rest: the anchor's data directory is its owner's only (0700, files 0600), new
files and files of a store from before included, and so is a rover's state (pairing.key,
its tree, its scratch files)."""
import json
import os
import stat
import subprocess

from tests.support.harness import AnchorProc, anchorctl, make_tree, rover_cmd, run_rover


def modes(top):
    """{path: mode} of everything under top (itself included), symlinks left out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for p in [dirpath] + [os.path.join(dirpath, f) for f in filenames]:
            st = os.lstat(p)
            if not stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(p, top)] = stat.S_IMODE(st.st_mode)
    return out


def open_to_others(top):
    return dict((p, oct(mo)) for p, mo in modes(top).items() if mo & 0o077)


def test_the_store_is_private_new_and_old(tmp_path):
    data = str(tmp_path / "anchor")
    old_umask = os.umask(0o022)
    try:
        a = AnchorProc(data, secure=True).start()
        try:
            state = str(tmp_path / "state")
            r = json.loads(anchorctl(a.address, "pair", "rover-m", "--json").stdout)
            subprocess.run(rover_cmd("cpython", "tcp://unused:1", "rover-m", state, "pair", r["code"]),
                           check=True, capture_output=True, timeout=60)
            src = make_tree(str(tmp_path / "src"), 30, 200_000, seed=9)
            run_rover("cpython", a.link, "rover-m", state, "backup", src)
            # while it runs too: the catalog's WAL and SHM, the open segment, the socket
            assert open_to_others(data) == {}, open_to_others(data)
        finally:
            a.stop()
        assert open_to_others(data) == {}, open_to_others(data)
        assert open_to_others(state) == {}, open_to_others(state)
        # a store (and a rover state) left readable by an older anchor, or copied in carelessly
        for top in (data, state):
            for p, mo in modes(top).items():
                os.chmod(os.path.join(top, p), 0o755 if stat.S_ISDIR(os.lstat(os.path.join(top, p)).st_mode) else 0o644)
        a = AnchorProc(data, secure=True).start()
        try:
            assert open_to_others(data) == {}, open_to_others(data)
            run_rover("cpython", a.link, "rover-m", state, "backup", src)
            assert open_to_others(state) == {}, open_to_others(state)
        finally:
            a.stop()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(os.path.join(state, "pairing.key")).st_mode) == 0o600
