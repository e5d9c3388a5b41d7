"""One data directory, one anchor: a second anchor on a live store refuses to start (and
touches nothing), and the management socket path never replaces what is not a stale
socket of ours."""
import hashlib
import os
import socket
import subprocess
import time

import pytest

from anchor.api import mgmt
from anchor.app import App
from anchor.datalock import DataDirBusy
from tests.support.harness import BIN, AnchorProc, anchorctl, make_tree, run_rover


def fingerprint(data_dir):
    """Every file under data_dir but the log and the socket: name, size, mtime, sha256."""
    out = {}
    for dirpath, _, names in os.walk(data_dir):
        for n in names:
            p = os.path.join(dirpath, n)
            if n in ("anchor.log", "mgmt.sock") or not os.path.isfile(p):
                continue
            st = os.stat(p)
            with open(p, "rb") as f:
                out[os.path.relpath(p, data_dir)] = (st.st_size, st.st_mtime_ns,
                                                     hashlib.sha256(f.read()).hexdigest())
    return out


def serve(data, *extra, timeout=30):
    return subprocess.run([os.path.join(BIN, "anchor"), "serve", "--data", data,
                           "--listen", "tcp://127.0.0.1:0"] + list(extra),
                          capture_output=True, text=True, timeout=timeout)


def test_a_second_anchor_on_a_live_store_refuses_and_touches_nothing(tmp_path):
    data = str(tmp_path / "anchor")
    a = AnchorProc(data).start()
    try:
        src = str(tmp_path / "src")
        make_tree(src, 12, 300_000, seed=3)
        run_rover("cpython", a.link, "r1", str(tmp_path / "state"), "backup", src)
        before = fingerprint(data)
        t0 = time.monotonic()
        # Another port and another management socket: only the data directory is shared.
        p = serve(data, "--mgmt", "unix:" + str(tmp_path / "other.sock"), "--open")
        took = time.monotonic() - t0
        assert p.returncode != 0
        assert "lock" in p.stderr and str(a.proc.pid) in p.stderr, p.stderr
        assert took < 10
        assert not os.path.exists(str(tmp_path / "other.sock"))
        assert fingerprint(data) == before
        # The first anchor goes on serving.
        out = anchorctl(a.address, "snapshots", "r1").stdout
        assert out.strip()
    finally:
        a.stop()
    # Once the holder is gone (however it went), the directory is free again.
    b = AnchorProc(data).start()
    b.stop()


def test_the_lock_is_the_apps_and_goes_with_it(tmp_path):
    data = str(tmp_path / "d")
    app = App(data)
    try:
        with pytest.raises(DataDirBusy) as e:
            App(data)
        assert os.path.join(data, "lock") in str(e.value)
        assert "pid %d" % os.getpid() in str(e.value)
    finally:
        app.close()
    App(data).close()


def test_a_killed_anchor_leaves_no_lock_behind(tmp_path):
    data = str(tmp_path / "anchor")
    a = AnchorProc(data).start()
    a.kill()
    b = AnchorProc(data).start()     # the stale socket is cleared, the lock is free
    try:
        assert anchorctl(b.address, "devices").returncode == 0
    finally:
        b.stop()


@pytest.mark.parametrize("what", ["catalog", "plain file", "directory"])
def test_mgmt_path_never_replaces_a_file(tmp_path, what):
    data = str(tmp_path / "anchor")
    App(data).close()
    if what == "catalog":
        target = os.path.join(data, "catalog.sqlite")
    elif what == "plain file":
        target = str(tmp_path / "notes.txt")
        with open(target, "w") as f:
            f.write("mine\n")
    else:
        target = str(tmp_path / "dir")
        os.mkdir(target)
    before = fingerprint(str(tmp_path))
    p = serve(data, "--mgmt", "unix:" + target, "--open")
    assert p.returncode != 0
    assert target in p.stderr and "not a socket" in p.stderr, p.stderr
    assert fingerprint(str(tmp_path)) == before
    assert os.path.exists(target)


def test_mgmt_path_of_a_live_socket_is_refused_and_a_stale_one_cleared(tmp_path):
    path = str(tmp_path / "m.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    try:
        with pytest.raises(mgmt.SocketPathBusy, match="in use"):
            mgmt.clear_stale_socket(path)
        assert os.path.exists(path)
    finally:
        live.close()
    # Nobody listens now: a stale socket, which is ours to clear.
    mgmt.clear_stale_socket(path)
    assert not os.path.exists(path)
