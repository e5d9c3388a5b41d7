# The rover's two link interfaces, in code (docs/links.md, "Port interface"): what the
# channel (rover/chanlink.py) calls on a packet port, and what the session, backup and relay
# call on a link. Loaded by the tests only: the ports and links do not inherit from these
# classes, so none of this takes the rover's heap; tests/links checks every kind against
# them (`missing`).


class Port:
    """Moves whole packets of at most `mtu` bytes: in order or not, some possibly lost (the
    channel recovers), never a damaged one. Blocking. Made by an opener in rover/link.py."""
    NAMES = ("mtu", "overhead", "tx", "rx", "send", "recv_into", "close")
    mtu = 0          # largest packet the port carries
    overhead = 0     # bytes the port adds per packet on the wire (framing, headers)
    tx = 0           # bytes on the wire so far, per direction
    rx = 0

    def send(self, packet):
        """bytes/bytearray/memoryview of <= mtu bytes; LinkError when the link is gone for good."""
        raise NotImplementedError

    def recv_into(self, buf, timeout_ms):
        """One packet into buf (len(buf) >= mtu): its length, or 0 if none arrived within
        timeout_ms; LinkError when the link is gone."""
        raise NotImplementedError

    def close(self):
        raise NotImplementedError


class Link:
    """An ordered, reliable byte stream to the anchor, what rover/link.open_link returns: a
    TCP connection (rover/tcp_link.py) or a stream of a channel over a Port
    (rover/chanlink.py). Several threads may use channel streams at once."""
    NAMES = ("tx", "rx", "write", "readinto", "set_timeout", "close")
    tx = 0           # bytes on the wire so far, per direction
    rx = 0

    def write(self, data):
        """All of data, or LinkError."""
        raise NotImplementedError

    def readinto(self, buf):
        """Bytes into buf, waiting up to the timeout: how many (0 at the end); LinkError."""
        raise NotImplementedError

    def set_timeout(self, seconds):
        """How long a read may wait for the anchor; None restores the default."""
        raise NotImplementedError

    def close(self):
        raise NotImplementedError


def missing(obj, interface):
    """The names of `interface` that obj lacks (empty: it conforms)."""
    return [n for n in interface.NAMES if not hasattr(obj, n)]
