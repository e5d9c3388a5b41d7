"""Anchors of a test's fleet as real `anchor serve` processes, and what the tests ask them."""
import json
import subprocess
import time

from tests.support.harness import anchorctl, rover_cmd


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
    deadline = time.monotonic() + timeout
    r = None
    for _ in range(100000):
        r = status(anchor)
        if (r["last_pass"] or 0) > before and r["pending"]["snapshots"] == 0 and r["state"] == "idle":
            return r
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)          # polling a condition, bounded by the deadline
    raise AssertionError("offload did not finish in %d s: %s" % (timeout, r))


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
