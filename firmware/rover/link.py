# Byte-stream links for the rover. Drivers only move bytes; the session does the rest.
import socket


class LinkError(Exception):
    pass


def parse(url):
    if url.startswith("tcp://"):
        host, sep, port = url[6:].rpartition(":")
        if sep and host and port.isdigit():
            return ("tcp", host, int(port))
    raise LinkError("link %s: expected tcp://HOST:PORT" % url)


class TcpLink:
    def __init__(self, host, port, timeout=60):
        self.sock = socket.socket()
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(socket.getaddrinfo(host, port)[0][-1])
        except OSError as e:
            self.sock.close()
            raise LinkError("cannot reach the anchor at %s:%d: %s" % (host, port, e))
        # CPython sockets have recv_into. MicroPython's readinto waits to fill the whole
        # buffer, so there recv (whatever has arrived) is copied in instead.
        self._recv_into = getattr(self.sock, "recv_into", None) or self._recv_copy
        self.tx = 0
        self.rx = 0

    def write(self, data):
        try:
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

    def _recv_copy(self, buf):
        data = self.sock.recv(len(buf))
        n = len(data)
        buf[:n] = data
        return n

    def close(self):
        self.sock.close()


def open_link(url):
    kind, host, port = parse(url)
    return TcpLink(host, port)
