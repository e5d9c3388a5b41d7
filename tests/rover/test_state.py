"""The rover's own state on bad days (CPython, in-process): path order without keys, the
state file's fallbacks, the state lock's stale rule."""
import os
import random
import subprocess
import sys

import pytest

from anchor_core import messages as m
from rover import backup, state


def test_order_agrees_with_path_key():
    rnd = random.Random(3)
    alphabet = [b"a", b"b", b"/", b"-", b".", b" ", b"\xc3\xa9", b"\xff", b"z" * 70, b"!"]
    paths = set()
    while len(paths) < 400:
        p = b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 12))).strip(b"/")
        if p and b"//" not in p:
            paths.add(p)
    forms = []
    for p in paths:
        try:
            forms.append(p.decode())       # text when UTF-8, as on the wire
        except UnicodeError:
            forms.append(p)
    for a in forms:
        for b in rnd.sample(forms, 40):
            ka, kb = m.path_key(a), m.path_key(b)
            assert backup._order(a, b) == (ka > kb) - (ka < kb), (a, b)


def _save(tmp_path):
    d = str(tmp_path)
    state.save_state(d, "dev", 7, b"r" * 32, 123)
    return d


def test_state_round_trip_and_every_damage_falls_back(tmp_path):
    d = _save(tmp_path)
    st = state.load_state(d, "dev")
    assert st[2] == 7 and st[3] == b"r" * 32 and st[4] == 123
    with open(d + "/state.cbor", "rb") as f:
        good = f.read()
    for bad in (b"", good[:len(good) // 2], good[:-1] + bytes([good[-1] ^ 1]), b"\xff" * 5000,
                good.replace(b"dev", b"deW")):
        with open(d + "/state.cbor", "wb") as f:
            f.write(bad)
        logs = []
        assert state.load_state(d, "dev", logs.append) is None, bad
        assert logs and "describing the whole tree" in logs[0]


def test_state_of_another_device_is_refused_not_overwritten(tmp_path):
    d = _save(tmp_path)
    with pytest.raises(backup.RoverError):
        state.load_state(d, "other")


def _exec_done(pid):
    """Wait until the child's command line is there: Popen may return while it is still
    in exec, and an empty command line counts as a holder."""
    import time
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            if f.read():
                return
        time.sleep(0.005)
    raise AssertionError("process %d never showed its command line" % pid)


def test_lock_refuses_a_live_rover_and_takes_over_a_dead_ones(tmp_path):
    d = str(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "rover"],
                              stdin=subprocess.PIPE)
    try:
        _exec_done(holder.pid)
        os.mkdir(d + "/lock")
        with open(d + "/lock/owner", "w") as f:
            f.write("%d\n" % holder.pid)
        with pytest.raises(state.StateLocked) as e:
            state.StateLock(d, lambda s: None).take()
        assert "pid %d" % holder.pid in str(e.value)
    finally:
        holder.stdin.close()
        holder.wait(30)
    logs = []
    lock = state.StateLock(d, logs.append)
    lock.take()                                   # the holder is gone: stale
    assert "stale lock of pid %d" % holder.pid in logs[0]
    with open(d + "/lock/owner") as f:
        assert int(f.read()) == os.getpid()
    lock.release()
    assert not os.path.exists(d + "/lock")


def test_lock_of_a_pid_that_runs_something_else_is_stale(tmp_path):
    d = str(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        _exec_done(other.pid)
        os.mkdir(d + "/lock")
        with open(d + "/lock/owner", "w") as f:
            f.write("%d\n" % other.pid)          # pid reused by a program that is no rover
        lock = state.StateLock(d, lambda s: None)
        lock.take()
        lock.release()
    finally:
        other.stdin.close()
        other.wait(30)


def test_tree_copy_is_checked_against_its_digest(tmp_path):
    import hashlib
    from anchor_core import cbor
    from rover import treefile
    p = str(tmp_path / "tree")
    w = treefile.TreeWriter(p)
    h = hashlib.sha256()
    for i in range(50):
        enc = cbor.encode(m.tree_record("f%03d" % i, m.T_FILE, i, i, 0o644, b"o" * 32))
        h.update(enc)
        w.add_encoded(enc)
    w.close()
    assert state.verify_tree(p, h.digest())
    with open(p, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 4]))
    assert not state.verify_tree(p, h.digest())
    assert not state.verify_tree(str(tmp_path / "missing"), h.digest())
