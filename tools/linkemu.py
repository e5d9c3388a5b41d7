"""Link emulator: a TCP relay between a rover and an anchor that counts the bytes it moves.

This is the measuring point for "bytes on the link": it counts what crosses the socket,
not what either program believes it sent. Used by tests and benchmarks in-process
(`CountingRelay`) or from the shell (`python tools/linkemu.py --listen PORT --to HOST:PORT`).
"""
import argparse
import socket
import threading


class CountingRelay:
    """Accepts on 127.0.0.1 and relays each connection to `target`, counting per direction."""

    def __init__(self, target_host, target_port, listen_host="127.0.0.1", listen_port=0):
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

    def _pump(self, src, dst, up):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                    self._lock.notify_all()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self):
        self._closing = True
        self.sock.close()
        for t in self._threads:
            t.join(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=int, default=0)
    ap.add_argument("--to", required=True, help="HOST:PORT of the anchor")
    a = ap.parse_args()
    host, _, port = a.to.rpartition(":")
    r = CountingRelay(host, int(port), listen_port=a.listen)
    print("relaying 127.0.0.1:%d -> %s; Ctrl-C prints the byte counts" % (r.port, a.to), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("up %d bytes, down %d bytes" % (r.up, r.down))


if __name__ == "__main__":
    main()
