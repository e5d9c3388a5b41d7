"""Shared pieces of the end-to-end tests: a real anchor process, rovers on both runtimes,
trees to back up, and byte-for-byte comparison."""
import contextlib
import glob
import os
import random
import re
import select
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
ROVER_MPY = os.path.join(ROOT, "tools", "rover-mpy")


class AnchorProc:
    """`anchor serve` in a child process on a free loopback port."""

    def __init__(self, data_dir, *extra, secure=False, preexec_fn=None):
        self.data_dir = data_dir
        self.preexec_fn = preexec_fn      # run in the child before exec (e.g. a lower RLIMIT_NOFILE)
        # Tests and benchmarks of everything but pairing run an --open anchor (plain rovers
        # served); secure=True runs it as shipped: paired rovers only.
        self.extra = list(extra) + ([] if secure else ["--open"])
        self.mgmt = os.path.join(data_dir, "mgmt.sock")
        self.proc = None
        self.port = None

    def start(self, timeout=30):
        os.makedirs(self.data_dir, exist_ok=True)
        self.log = open(os.path.join(self.data_dir, "anchor.log"), "ab")
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "anchor"), "serve", "--data", self.data_dir,
             "--listen", "tcp://127.0.0.1:0", "--mgmt", "unix:" + self.mgmt] + self.extra,
            stdout=subprocess.PIPE, stderr=self.log, bufsize=0,  # unbuffered: select must see every line
            preexec_fn=self.preexec_fn)
        # The daemon prints its port once it listens; read that line, bounded in time.
        deadline = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not r:
                break
            line = self.proc.stdout.readline()
            if not line:
                break
            buf += line
            mo = re.search(rb"connect to tcp://127\.0\.0\.1:(\d+)", line)
            if mo:
                self.port = int(mo.group(1))
                return self
        self.stop()
        raise RuntimeError("anchor did not start: %r" % buf)

    def proxy_port(self, timeout=30):
        """The HTTP proxy's port (anchor started with --proxy tcp://127.0.0.1:0): the daemon
        prints it on a line after the one start() waited for; read it, bounded in time."""
        deadline = time.monotonic() + timeout
        seen = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            line = self.proc.stdout.readline() if r else b""
            if not line:
                break
            seen += line
            mo = re.search(rb"HTTP proxy on tcp://127\.0\.0\.1:(\d+)", line)
            if mo:
                return int(mo.group(1))
        raise RuntimeError("anchor printed no proxy port: %r" % seen)

    @property
    def link(self):
        return "tcp://127.0.0.1:%d" % self.port

    @property
    def address(self):
        return "unix:" + self.mgmt

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


def rover_cmd(runtime, link, device, state, *args):
    if runtime == "micropython":
        base = [ROVER_MPY]
    else:
        base = [os.path.join(BIN, "rover")]
    return base + ["--link", link, "--device", device, "--state", state] + list(args)


def run_rover(runtime, link, device, state, *args, timeout=300, check=True):
    p = subprocess.run(rover_cmd(runtime, link, device, state, *args), capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("rover failed (%d):\n%s\n%s" % (p.returncode, p.stdout, p.stderr))
    return p


def anchorctl(address, *args, check=True, timeout=300):
    p = subprocess.run([os.path.join(BIN, "anchorctl"), "--anchor", address] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("anchorctl %s failed (%d):\n%s\n%s" % (args, p.returncode, p.stdout, p.stderr))
    return p


class RawRover:
    """A rover's end of a session on a plain TCP link, spoken message by message (tests that
    need what a rover would not send, or to stop at a chosen point)."""

    def __init__(self, port, source="127.0.0.1", max_payload=None):
        import socket
        from anchor_core import states
        from anchor_core.session import Session
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        self.sess = Session(states.ROVER) if max_payload is None else Session(states.ROVER, max_payload)

    def send(self, msg):
        self.s.sendall(self.sess.send(msg))

    def reply(self):
        """The next message, or None when the anchor closed the link; bounded by the socket's
        timeout and a count of reads."""
        for _ in range(100_000):
            msg = self.sess.next_event()
            if msg is not None:
                return msg
            data = self.s.recv(1 << 20)
            if not data:
                return None
            self.sess.receive_data(data)
        raise AssertionError("no whole message in 100,000 reads")

    def close(self):
        self.s.close()


def counters(anchor, device):
    """The anchor's counters of one device (anchorctl stats), {} for a device it never saw."""
    import json
    return json.loads(anchorctl(anchor.address, "stats", "--json").stdout)["devices"].get(device, {})


def wait_counter(anchor, device, name, at_least, timeout=60):
    """The device's counters once counter `name` reaches `at_least` (work the anchor finishes
    after the rover has gone: a capture read on after a cut); bounded by `timeout`. Each look
    is an anchorctl process, which paces the loop."""
    deadline = time.monotonic() + timeout
    c = counters(anchor, device)
    while c.get(name, 0) < at_least and time.monotonic() < deadline:
        c = counters(anchor, device)
    return c


def make_tree(root, n_files, total_bytes, seed=1, depth=4):
    """A deterministic tree: nested folders, empty files, text-like and random files."""
    rnd = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    dirs = [""]
    for i in range(max(1, n_files // 40)):
        parent = rnd.choice([d for d in dirs if d.count("/") < depth])
        d = os.path.join(parent, "dir%03d" % i) if parent else "dir%03d" % i
        os.makedirs(os.path.join(root, d), exist_ok=True)
        dirs.append(d)
    os.makedirs(os.path.join(root, "empty-folder", "nested-empty"), exist_ok=True)
    budget = total_bytes
    words = [b"anchor", b"rover", b"backup", b"chunk", b"radio", b"flash", b"log", b"entry", b"\n"]
    for i in range(n_files):
        d = rnd.choice(dirs)
        name = "f%05d%s" % (i, rnd.choice([".txt", ".bin", ".log", "", ".jpg"]))
        path = os.path.join(root, d, name)
        r = rnd.random()
        if r < 0.08:
            data = b""
        else:
            size = min(budget, int(rnd.expovariate(1.0 / max(1, total_bytes // n_files))))
            budget -= size
            if rnd.random() < 0.5:
                data = rnd.randbytes(size)
            else:
                data = b" ".join(rnd.choice(words) for _ in range(size // 5 + 1))[:size]
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, rnd.choice([0o644, 0o600, 0o755, 0o640]))
        t = 1_600_000_000 + rnd.randrange(100_000_000)
        os.utime(path, (t, t))
    return root


def snapshot_of(root):
    """{path: (kind, mode, mtime_s, sha/target)} for everything under root (not root itself)."""
    import hashlib
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("l", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("d", st.st_mode & 0o7777)
            else:
                with open(full, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
                out[rel] = ("f", st.st_mode & 0o7777, st.st_mtime_ns, h)
    return out


def assert_same_tree(src_snapshot, restored_root, mtime_resolution_ns=1):
    got = snapshot_of(restored_root)
    assert sorted(got) == sorted(src_snapshot), (
        "paths differ: missing %s, extra %s" % (sorted(set(src_snapshot) - set(got))[:5], sorted(set(got) - set(src_snapshot))[:5]))
    for p, want in src_snapshot.items():
        have = got[p]
        if want[0] == "f":
            assert have[0] == "f" and have[1] == want[1] and have[3] == want[3], (p, have, want)
            assert have[2] // mtime_resolution_ns == want[2] // mtime_resolution_ns, (p, have[2], want[2])
        else:
            assert have == want, (p, have, want)


def make_src(root, files, size, seed):
    """A rover's tree that fills whole batches: `files` random images of `size` bytes and 20
    text notes in docs/ (the link fault tests and the rover heap benchmark)."""
    rnd = random.Random(seed)
    os.makedirs(os.path.join(root, "docs"), exist_ok=True)
    for i in range(files):
        with open(os.path.join(root, "img%02d.jpg" % i), "wb") as f:
            f.write(rnd.randbytes(size))
    for i in range(20):
        with open(os.path.join(root, "docs", "note%02d.txt" % i), "wb") as f:
            f.write(b"line %d of a field note\n" % i * rnd.randrange(10, 400))


def damage(data_dir, data):
    """Flip a byte of `data` where the store keeps it (random data is stored as it came)."""
    needle = data[:64]
    for seg in glob.glob(os.path.join(data_dir, "chunks", "**", "*.seg"), recursive=True):
        with open(seg, "r+b") as f:
            buf = f.read()
            at = buf.find(needle)
            if at >= 0:
                f.seek(at + 10)
                f.write(bytes([buf[at + 10] ^ 0xFF]))
                return
    raise AssertionError("the bytes to damage are not in any segment")


@contextlib.contextmanager
def paired_radio(tmp_path, kind, device):
    """(anchor, link, state) of a secure anchor with a MicroPython rover `device` paired to it,
    over a serial radio (the pty emulator) or an MQTT broker (mosquitto); all stopped after."""
    import json
    from tests.support.linkemu import PtyLink
    from tests.support.services import Broker
    emu = broker = None
    if kind == "serial":
        emu = PtyLink(rate=2_000_000, seed=5)
        extra = ["--serial", emu.anchor_link + ":115200"]
        link = "serial:%s:115200" % emu.rover_link
    else:
        broker = Broker(str(tmp_path))
        extra = ["--broker", broker.url]
        link = "mqtt://127.0.0.1:%d" % broker.port
    a = AnchorProc(str(tmp_path / "anchor"), *extra, secure=True).start()
    try:
        state = str(tmp_path / "state")
        code = json.loads(anchorctl(a.address, "pair", device, "--json").stdout)["code"]
        p = subprocess.run(rover_cmd("micropython", "tcp://unused:1", device, state, "pair", code),
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        yield a, link, state
    finally:
        a.stop()
        if emu:
            emu.close()
        if broker:
            broker.close()
