# The rover's TCP link: a reliable stream already, so it carries session frames directly,
# with no channel (docs/links.md). Opened by rover/link.py for tcp:// addresses.
import socket

from anchor_core.compat import MICROPYTHON
from rover.linkerror import LinkError

if MICROPYTHON:
    import select


class TcpLink:
    def __init__(self, host, port, timeout=60):
        self.sock = socket.socket()
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(socket.getaddrinfo(host, port)[0][-1])
            # Frames go out as head, body and tail writes; without this, Nagle holds the
            # tail for the peer's delayed ACK (40 ms per chunk).
            self.sock.setsockopt(6, 1, 1)   # IPPROTO_TCP, TCP_NODELAY
        except OSError as e:
            self.sock.close()
            raise LinkError("cannot reach the anchor at %s:%d: %s" % (host, port, e))
        self.default_timeout = timeout
        self.timeout_ms = int(timeout * 1000)
        if MICROPYTHON:
            # A blocking readinto waits to fill the whole buffer; non-blocking with poll
            # takes what has arrived, into the caller's buffer, allocating nothing.
            self.sock.setblocking(False)
            self.poll = select.poll()
            self.poll.register(self.sock, select.POLLIN)
            self._recv_into = self._recv_poll
        else:
            self._recv_into = self.sock.recv_into
        self.tx = 0
        self.rx = 0

    def write(self, data):
        try:
            if MICROPYTHON:
                self._write_poll(data)
            else:
                self.sock.sendall(data)
        except OSError as e:
            raise LinkError("link lost while sending: %s" % e)
        self.tx += len(data)

    def readinto(self, buf):
        try:
            n = self._recv_into(buf)
        except OSError as e:
            raise LinkError("link lost while receiving: %s" % e)
        if n is None:
            n = 0
        self.rx += n
        return n

    def set_timeout(self, seconds):
        """How long a read may wait for the anchor; None restores the default."""
        t = self.default_timeout if seconds is None else seconds
        self.timeout_ms = int(t * 1000)
        if not MICROPYTHON:
            self.sock.settimeout(t)

    def _recv_poll(self, buf):
        if not self.poll.poll(self.timeout_ms):
            raise OSError("no answer from the anchor for %d s" % (self.timeout_ms // 1000))
        n = self.sock.readinto(buf)
        return 0 if n is None else n

    def _write_poll(self, data):
        mv = memoryview(data)
        while mv:
            n = self.sock.write(mv)
            if not n:
                self.poll.modify(self.sock, select.POLLOUT)
                ready = self.poll.poll(self.timeout_ms)
                self.poll.modify(self.sock, select.POLLIN)
                if not ready:
                    raise OSError("link stalled for %d s" % (self.timeout_ms // 1000))
                continue
            mv = mv[n:]

    def close(self):
        self.sock.close()
