"""`rover ... run`: unattended backups with a real anchor and real rovers on both runtimes.
A short schedule makes several snapshots and a change shows in a later one; a signal
mid-backup stops cleanly and the next run resumes; two runs on one state never overlap;
an anchor that is away is retried with backoff; a cheaper link that appears is used at once."""
import json
import os
import re
import select
import signal
import socket
import subprocess
import time

import pytest

from tests.support.harness import AnchorProc, anchorctl, rover_cmd, run_rover
from tests.support.linkemu import CountingRelay

RUNTIMES = ["cpython", "micropython"]


class Rover:
    """A rover process whose output is read line by line, each wait bounded in time."""

    def __init__(self, runtime, link, device, state, *args):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        cmd = rover_cmd(runtime, link, device, state, *args)
        if isinstance(link, list):          # several --link
            cmd = rover_cmd(runtime, link[0], device, state, *args)
            for u in link[1:]:
                cmd[1:1] = ["--link", u]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, bufsize=0)
        self.lines = []
        self._buf = b""

    def wait_line(self, pattern, timeout=60, n=1):
        """The n-th line (since the start) matching `pattern`; AssertionError on timeout or exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            seen = [ln for ln in self.lines if rx.search(ln)]
            if len(seen) >= n:
                return seen[n - 1]
            if time.monotonic() >= deadline:
                break
            r, _, _ = select.select([self.proc.stdout], [], [], max(0, deadline - time.monotonic()))
            if not r:
                break
            data = os.read(self.proc.stdout.fileno(), 65536)
            if not data:
                break
            self._buf += data
            while b"\n" in self._buf:
                ln, self._buf = self._buf.split(b"\n", 1)
                self.lines.append(ln.decode(errors="replace"))
        raise AssertionError("no line matching %r within %d s:\n%s" % (pattern, timeout, "\n".join(self.lines)))

    def count(self, pattern):
        return len([ln for ln in self.lines if re.search(pattern, ln)])

    def finish(self, timeout=60):
        """Exit status, all output read; AssertionError with everything the rover printed if
        it has not ended within `timeout` (it is killed then, so its output can be read)."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            self.lines += [ln.decode(errors="replace") for ln in (self._buf + out).split(b"\n") if ln]
            raise AssertionError("the rover did not end within %g s; it printed:\n%s" % (timeout, "\n".join(self.lines)))
        self._buf += out
        self.lines += [ln.decode(errors="replace") for ln in self._buf.split(b"\n") if ln]
        self._buf = b""
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def anchor(tmp_path):
    a = AnchorProc(str(tmp_path / "anchor")).start()
    yield a
    a.stop()


@pytest.fixture
def rovers():
    started = []
    yield lambda *a: started.append(Rover(*a)) or started[-1]
    for r in started:
        r.kill()
        r.proc.stdout.close()


def snapshots(anchor, device):
    return json.loads(anchorctl(anchor.address, "snapshots", device, "--json").stdout)


def paths(anchor, device, snap):
    listed = json.loads(anchorctl(anchor.address, "ls", device, str(snap), "-r", "--json").stdout)
    return sorted(e["path"] for e in listed)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_schedule_takes_several_snapshots_and_a_change_shows_in_a_later_one(tmp_path, anchor, rovers, runtime):
    src = str(tmp_path / "src")
    write(src + "/a.txt", b"first\n")
    dev = "run-" + runtime[:2]
    r = rovers(runtime, anchor.link, dev, str(tmp_path / "state"), "run", src,
               "--every", "1s", "--jitter", "0.5s", "--count", "3")
    r.wait_line(r"snapshot 1 committed")
    # after snapshot 1's commit and before the next slot (a second away at least)
    write(src + "/later/b.txt", b"made between backups\n")
    os.unlink(src + "/a.txt")
    assert r.finish() == 0, "\n".join(r.lines)
    assert r.count(r"snapshot \d+ committed") == 3
    assert r.count(r"next backup in") == 2
    snaps = snapshots(anchor, dev)
    assert len(snaps) == 3, snaps
    ids = sorted(s["id"] if isinstance(s, dict) else s for s in snaps)
    assert paths(anchor, dev, ids[0]) == ["a.txt"]
    assert paths(anchor, dev, ids[-1]) == ["later", "later/b.txt"]
    # the lock is given back when the run ends
    assert not os.path.exists(str(tmp_path / "state" / "lock"))


def _slow_backup(tmp_path, anchor, rovers, runtime, size=3_000_000):
    """A run over a ~300 kB/s link whose first backup uploads `size` random bytes."""
    src = str(tmp_path / "src")
    write(src + "/big.bin", os.urandom(size))
    write(src + "/small.txt", b"x\n")
    relay = CountingRelay("127.0.0.1", anchor.port, rate=300_000)
    state = str(tmp_path / "state")
    r = rovers(runtime, "tcp://127.0.0.1:%d" % relay.port, "slow-" + runtime[:2], state, "run", src,
               "--every", "1h")
    # a third of the file is on its way: the backup is in the middle
    assert relay.wait_for(lambda rl: rl.up > size // 3, 60), "\n".join(r.lines)
    return src, state, relay, r


def _resume(tmp_path, anchor, runtime, src, state, relay, size, sent_before):
    p = run_rover(runtime, "tcp://127.0.0.1:%d" % relay.port, "slow-" + runtime[:2], state, "run", src,
                  "--every", "1h", "--count", "1", timeout=120)
    m = re.search(r"snapshot (\d+) committed: .* (\d+) chunks \((\d+) bytes\) uploaded", p.stdout)
    assert m, p.stdout
    # what arrived before the stop is not uploaded again
    assert int(m.group(3)) < size - sent_before // 2, (m.group(3), sent_before, p.stdout)
    snaps = snapshots(anchor, "slow-" + runtime[:2])
    assert len(snaps) == 1
    assert paths(anchor, "slow-" + runtime[:2], m.group(1)) == ["big.bin", "small.txt"]
    out = str(tmp_path / "restored")
    anchorctl(anchor.address, "restore", "slow-" + runtime[:2], m.group(1), "--to", out)
    with open(out + "/big.bin", "rb") as a, open(src + "/big.bin", "rb") as b:
        assert a.read() == b.read()


# The clean stop: SIGTERM on CPython; on MicroPython's unix port SIGINT (it has no signal
# module: SIGTERM ends it at once, see the test after this one).
@pytest.mark.parametrize("runtime,sig", [("cpython", signal.SIGTERM), ("cpython", signal.SIGINT),
                                         ("micropython", signal.SIGINT)])
def test_signal_mid_backup_stops_cleanly_and_the_next_run_resumes(tmp_path, anchor, rovers, runtime, sig):
    size = 3_000_000
    src, state, relay, r = _slow_backup(tmp_path, anchor, rovers, runtime, size)
    r.proc.send_signal(sig)
    assert r.finish(timeout=30) == 0, "\n".join(r.lines)
    stops = [ln for ln in r.lines if "stopped (%s)" % sig.name in ln]
    assert len(stops) == 1, r.lines
    assert not any("Traceback" in ln for ln in r.lines), r.lines
    assert r.count(r"committed") == 0
    # nothing half-written left in the state folder, and the lock given back
    left = os.listdir(state)
    assert "lock" not in left and "batch.chunks" not in left and "watch.chunks" not in left, left
    assert "state.cbor" not in left, left      # no snapshot was committed: no parent named
    _resume(tmp_path, anchor, runtime, src, state, relay, size, relay.up)
    relay.close()


def test_micropython_killed_mid_backup_the_next_run_takes_the_lock_over_and_resumes(tmp_path, anchor, rovers):
    size = 3_000_000
    src, state, relay, r = _slow_backup(tmp_path, anchor, rovers, "micropython", size)
    r.proc.send_signal(signal.SIGTERM)
    assert r.finish(timeout=30) == -signal.SIGTERM
    assert os.path.isdir(state + "/lock")          # left by the killed run
    _resume(tmp_path, anchor, "micropython", src, state, relay, size, relay.up)
    relay.close()


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_two_runs_on_one_state_the_second_refuses(tmp_path, anchor, rovers, runtime):
    src = str(tmp_path / "src")
    write(src + "/a.txt", b"a\n")
    state = str(tmp_path / "state")
    first = rovers(runtime, anchor.link, "two", state, "run", src, "--every", "1h")
    first.wait_line(r"next backup in")         # between backups: the lock is still held
    for cmd in (["run", src, "--every", "1s"], ["backup", src]):
        p = run_rover(runtime, anchor.link, "two", state, *cmd, check=False, timeout=60)
        assert p.returncode == 5, (cmd, p.returncode, p.stdout, p.stderr)
        assert "another rover (pid %d)" % first.proc.pid in p.stderr, p.stderr    # errors: stderr
    assert len(snapshots(anchor, "two")) == 1
    # a signal ends the hour's wait at once (SIGTERM where the runtime can catch it)
    sig = signal.SIGTERM if runtime == "cpython" else signal.SIGINT
    first.proc.send_signal(sig)
    assert first.finish(timeout=30) == 0
    assert first.count(r"stopped \(%s\)" % sig.name) == 1, first.lines
    # once it stopped, the state is free again
    run_rover(runtime, anchor.link, "two", state, "backup", src, timeout=60)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_anchor_away_backs_off_then_succeeds_when_it_comes(tmp_path, anchor, rovers, runtime):
    src = str(tmp_path / "src")
    write(src + "/a.txt", b"a\n")
    port = free_port()          # nothing listens there yet: the anchor is away
    r = rovers(runtime, "tcp://127.0.0.1:%d" % port, "away", str(tmp_path / "state"), "run", src,
               "--every", "1h", "--max-backoff", "1s", "--count", "1", "--retries", "0")
    r.wait_line(r"trying again in 1\.0 s \(backoff", 30, n=2)
    relay = CountingRelay("127.0.0.1", anchor.port, listen_port=port)
    try:
        assert r.finish(timeout=60) == 0, "\n".join(r.lines)
    finally:
        relay.close()
    assert r.count(r"trying again in") >= 2
    assert r.count(r"snapshot 1 committed") == 1
    assert len(snapshots(anchor, "away")) == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_cheaper_link_that_appears_is_backed_up_over_at_once(tmp_path, anchor, rovers, runtime):
    src = str(tmp_path / "src")
    write(src + "/a.txt", b"a\n")
    port = free_port()
    dear = anchor.link + "?cost=5"
    cheap = "tcp://127.0.0.1:%d?cost=1" % port
    # a slot an hour away: only a probe can start the second backup in time
    r = rovers(runtime, [dear, cheap], "cheap", str(tmp_path / "state"), "run", src,
               "--every", "1h", "--probe", "0.2s", "--count", "2")
    r.wait_line(r"snapshot 1 committed")
    r.wait_line(r"next backup in")
    write(src + "/b.txt", b"b\n")
    relay = CountingRelay("127.0.0.1", anchor.port, listen_port=port)
    try:
        r.wait_line(r"a cheaper link answers \(tcp://127\.0\.0\.1:%d\?cost=1\)" % port, 30)
        assert r.finish(timeout=60) == 0, "\n".join(r.lines)
        assert relay.up > 0             # the second backup went over the cheap link
    finally:
        relay.close()
    assert len(snapshots(anchor, "cheap")) == 2


@pytest.mark.parametrize("args,msg", [
    (["--every", "often"], '--every must be a duration like 6h, got "often"'),
    (["--every", "0"], '--every must be a duration like 6h, got "0"'),
    (["--every", "1h", "--jitter", "150%"], "--jitter must be a share of the period"),
    (["--every", "1m", "--jitter", "2m"], "--jitter must not be longer than the period"),
    (["--every", "1h", "--count", "0"], "--count must be a whole number from 1"),
    ([], "run needs --every"),
])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_bad_schedule_is_refused_and_nothing_is_stored(tmp_path, anchor, runtime, args, msg):
    src = str(tmp_path / "src")
    write(src + "/a.txt", b"a\n")
    state = str(tmp_path / "state")
    p = run_rover(runtime, anchor.link, "bad", state, "run", src, *args, check=False, timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert msg in p.stderr, p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    assert not os.path.exists(state + "/lock")
    assert json.loads(anchorctl(anchor.address, "devices", "--json").stdout) == []
