"""Anchors of a test's fleet as real `anchor serve` processes, and what the tests ask them."""
import contextlib
import json
import subprocess
import time

from tests.support.harness import AnchorProc, anchorctl, make_tree, rover_cmd, run_rover


def wait(predicate, timeout, what):
    """predicate()'s first true value, asked until `timeout` s have passed."""
    deadline = time.monotonic() + timeout
    for _ in range(100000):
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)          # polling a condition, bounded by the deadline
    raise AssertionError("%s: not within %g s" % (what, timeout))


@contextlib.contextmanager
def anchors(fleet, tmp_path, names, *extra):
    """Secure anchors of the test's fleet, one data directory each, stopped after."""
    started = []
    try:
        for n in names:
            started.append(AnchorProc(str(tmp_path / n), *fleet.args(), *extra, secure=True).start())
        yield started
    finally:
        for a in started:
            a.stop()


def rover_backed_up(anchor, tmp_path, files, size, seed, device="r"):
    """(state, src): rover `device` paired on `anchor` with a generated tree backed up there."""
    state = str(tmp_path / ("state-" + device))
    pair(anchor, device, state)
    src = str(tmp_path / ("src-" + device))
    make_tree(src, files, size, seed=seed)
    p = run_rover("cpython", anchor.link, device, state, "backup", src)
    return state, src, p.stdout


def pair(anchor, device, state, runtime="cpython"):
    code = json.loads(anchorctl(anchor.address, "pair", device, "--json").stdout)["code"]
    p = subprocess.run(rover_cmd(runtime, "tcp://unused:1", device, state, "pair", code),
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


def status(anchor):
    return json.loads(anchorctl(anchor.address, "fleet", "--json").stdout)


def offload(anchor, timeout=60):
    """Ask for an offload pass and wait until nothing is pending; the status then."""
    before = status(anchor)["last_pass"] or 0
    anchorctl(anchor.address, "fleet", "offload")

    def done():
        r = status(anchor)
        return r if (r["last_pass"] or 0) > before and not r["pending"]["snapshots"] and r["state"] == "idle" else None
    return wait(done, timeout, "an offload pass with nothing left pending")


def stats(anchor):
    return json.loads(anchorctl(anchor.address, "stats", "--json").stdout)


def uploaded(stdout):
    """(chunks, bytes) a rover's backup line says it uploaded."""
    chunks = int(stdout.split(" chunks (")[0].rsplit(" ", 1)[1])
    nbytes = int(stdout.split(" chunks (")[1].split(" bytes")[0])
    return chunks, nbytes


class Gate:
    """A TCP forwarder to the store that the test opens and closes: closed, it takes each
    connection and closes it at once (a store that is down, or a link that is); open, it
    relays bytes both ways. Loopback only; its threads end with close()."""

    def __init__(self, target_port):
        import socket
        import threading
        self.target = ("127.0.0.1", target_port)
        self.open = False
        self.refused = 0
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    def _accept(self):
        import socket
        import threading
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if not self.open:
                self.refused += 1
                c.close()
                continue
            try:
                t = socket.create_connection(self.target, timeout=10)
            except OSError:
                c.close()
                continue
            self.socks += [c, t]
            for a, b in ((c, t), (t, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def close(self):
        self.closed = True
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
