"""The anchor's two link interfaces, in code (docs/links.md, "Port interface"). CPython only.

A listener waits for rovers on its medium and hands each one's packet port to `on_port`;
anchor/links/chanlink.py runs a channel over the port, and each stream a rover opens is served
like a TCP connection. The registry in anchor/links/__init__.py starts listeners by address. Ports
and listeners do not inherit from these classes (they are duck-typed, as the asyncio code
calling them is); tests/links checks every kind against them (`missing`).
"""


class Port:
    """Whole packets of at most `mtu` bytes to and from one rover, asyncio."""
    NAMES = ("mtu", "overhead", "name", "tx", "rx", "send", "recv", "close")
    mtu = 0          # largest packet the port carries
    overhead = 0     # bytes the port adds per packet on the wire
    name = ""        # e.g. "serial:/dev/ttyUSB0", "mqtt:rover-7", "ble:AA:BB:..."
    tx = 0           # bytes on the wire so far, per direction
    rx = 0

    async def send(self, packet):
        """ConnectionError when the link is gone."""
        raise NotImplementedError

    async def recv(self):
        """The next packet (bytes); ConnectionError when the link is gone."""
        raise NotImplementedError

    def close(self):
        raise NotImplementedError


class Listener:
    """Hands out ports as rovers appear, `on_port(port)` each (a coroutine it returns runs
    as a task; the port is served until it returns). Made and started by anchor/links/__init__.py;
    it retries by itself (a device that comes back, a broker restarted, a rover in range
    again) until close()."""
    NAMES = ("start", "close")

    def start(self):
        """Starts listening in the background, on the running loop; returns at once."""
        raise NotImplementedError

    def close(self):
        """Stops listening and closes its ports."""
        raise NotImplementedError


def missing(obj, interface):
    """The names of `interface` that obj lacks (empty: it conforms)."""
    return [n for n in interface.NAMES if not hasattr(obj, n)]
