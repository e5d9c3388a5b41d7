"""Link emulator: a TCP relay between a rover and an anchor that counts the bytes it moves.

This is the measuring point for "bytes on the link": it counts what crosses the socket,
not what either program believes it sent. Used by tests and benchmarks in-process
(`CountingRelay`) or from the shell (`python tools/linkemu.py --listen PORT --to HOST:PORT`).

Optionally it is also a slow link: `rate` (bytes/s, each direction on its own, as on a
full-duplex radio) is enforced by a token bucket in each pump thread, and `latency_ms` delays
every byte by that much one way (a second thread per direction delivers what is due, through
a bounded queue, so latency does not eat into the bandwidth). Bytes are counted as they enter
the link, as before.
"""
import argparse
import collections
import socket
import threading
import time

PIECE = 65536          # the most a pump reads at once
DELAY_QUEUE = 256      # pieces in flight per direction on a link with latency (bounded memory)


class TokenBucket:
    """`rate` bytes/s with bursts of at most `burst` bytes; take(n) sleeps until n may pass."""

    def __init__(self, rate, burst):
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.t = time.monotonic()

    def take(self, n):
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= n:
                self.tokens -= n
                return
            time.sleep(min(1.0, (n - self.tokens) / self.rate))


class CountingRelay:
    """Accepts on 127.0.0.1 and relays each connection to `target`, counting per direction.

    rate: bytes per second in each direction (None: as fast as loopback); latency_ms: one-way
    delay added to every byte (0: none)."""

    def __init__(self, target_host, target_port, listen_host="127.0.0.1", listen_port=0,
                 rate=None, latency_ms=0):
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive bytes/s")
        if latency_ms < 0:
            raise ValueError("latency_ms must not be negative")
        self.rate = rate
        self.latency = latency_ms / 1000.0
        # A piece never exceeds the bucket, and a bucket holds at most ~50 ms of the link's
        # bytes (at least 512), so the link does not pass bursts a real radio could not.
        self.piece = PIECE if rate is None else max(512, min(PIECE, int(rate / 20)))
        self.target = (target_host, target_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((listen_host, listen_port))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.up = 0      # rover -> anchor
        self.down = 0    # anchor -> rover
        self.connections = 0
        self._lock = threading.Condition()
        self._closing = False
        self._threads = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    @property
    def total(self):
        return self.up + self.down

    def reset(self):
        with self._lock:
            self.up = self.down = 0

    def wait_for(self, predicate, timeout):
        """Block until predicate(relay) holds (checked as bytes move); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: predicate(self), timeout)

    def _accept(self):
        while not self._closing:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=30)
            except OSError:
                c.close()
                continue
            for s in (c, u):
                # a relay must not add Nagle delays the real link does not have
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            for a, b, up in ((c, u, True), (u, c, False)):
                t = threading.Thread(target=self._pump, args=(a, b, up), daemon=True)
                t.start()
                self._threads.append(t)

    def _count(self, n, up):
        with self._lock:
            if up:
                self.up += n
            else:
                self.down += n
            self._lock.notify_all()

    @staticmethod
    def _close_pair(src, dst):
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _pump(self, src, dst, up):
        if self.latency > 0:
            return self._pump_delayed(src, dst, up)
        bucket = TokenBucket(self.rate, self.piece) if self.rate else None
        try:
            while True:
                data = src.recv(self.piece)
                if not data:
                    break
                self._count(len(data), up)
                if bucket:
                    bucket.take(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close_pair(src, dst)

    def _pump_delayed(self, src, dst, up):
        """Reader half of a link with latency: paces at the rate, then queues each piece with
        the time it is due at the far end; a deliverer thread sends it then."""
        bucket = TokenBucket(self.rate, self.piece) if self.rate else None
        q = collections.deque()
        cv = threading.Condition()
        state = {"eof": False, "dead": False}

        def deliver():
            try:
                while True:
                    with cv:
                        while not q and not state["eof"] and not state["dead"]:
                            cv.wait(1.0)
                        if state["dead"] or (not q and state["eof"]):
                            return
                        due, data = q.popleft()
                        cv.notify_all()
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with cv:
                    state["dead"] = True
                    cv.notify_all()
                self._close_pair(src, dst)

        t = threading.Thread(target=deliver, daemon=True)
        t.start()
        self._threads.append(t)
        try:
            while True:
                data = src.recv(self.piece)
                if not data:
                    break
                self._count(len(data), up)
                if bucket:
                    bucket.take(len(data))
                due = time.monotonic() + self.latency
                with cv:
                    while len(q) >= DELAY_QUEUE and not state["dead"]:
                        cv.wait(1.0)
                    if state["dead"]:
                        break
                    q.append((due, data))
                    cv.notify_all()
        except OSError:
            pass
        finally:
            with cv:
                state["eof"] = True
                cv.notify_all()

    def close(self):
        self._closing = True
        self.sock.close()
        for t in self._threads:
            t.join(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, default=0)
    ap.add_argument("--to", required=True, help="HOST:PORT of the anchor")
    ap.add_argument("--rate", type=int, default=None, help="bytes/s each way (default: unlimited)")
    ap.add_argument("--latency-ms", type=float, default=0, help="one-way delay (default 0)")
    a = ap.parse_args()
    host, _, port = a.to.rpartition(":")
    r = CountingRelay(host, int(port), listen_port=a.listen, rate=a.rate, latency_ms=a.latency_ms)
    print("relaying 127.0.0.1:%d -> %s; Ctrl-C prints the byte counts" % (r.port, a.to), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("up %d bytes, down %d bytes" % (r.up, r.down))


if __name__ == "__main__":
    main()
