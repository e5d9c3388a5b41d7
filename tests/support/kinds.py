"""Every kind of link behind one small interface, for the conformance suite.

A kind stands up the anchor's end for a `server` (anything with `serve_stream(reader,
writer)`: the real SessionServer, or a test server) and opens rover-side links to it:

    kind.start(inproc_anchor, server)
    link = kind.open()          # a rover link: write, readinto, set_timeout, close, tx, rx
    kind.cut()                  # break the link the way that kind breaks (radio gone)
    kind.stop()

Both ends come from the real registries: the anchor's listener from anchor/links/__init__.py
`start_link(url, server)`, the rover's link from rover/link.py `open_link(url)`, so the
code `anchor serve` and `rover --link` run is the code tested here. What stays hand-built:
- memory: a test double with no address (an in-process packet pipe, for the channel alone);
- BLE: the radio. The registries run, but with bumble virtual controllers injected as the
  transport (`adapter=` on the rover, `backend=` on the anchor's scanner) where a board
  would have aioble and the anchor bleak.
Every port and listener met is checked against the interfaces (rover/port.py,
anchor/links/port.py): `kind.anchor_ports`, `kind.listener`, and the rover's link and port.

A new kind of link: its two port modules, a line in each registry, and a class here.
"""
import asyncio

from anchor.links.chanlink import serve_port
from anchor.links import start_link
from tests.support.memory_link import MemoryLink
from rover.chanlink import ChannelLink
from rover.link import open_link


class Kind:
    name = "?"
    # bytes a writer may push against a reader that does not read, before it must block
    backlog = 2 << 20
    resume_files = 24        # files of 40 kB backed up in the resume test
    listener = None

    def start(self, ia, server):
        self.ia = ia
        self.server = server
        self.anchor_ports = []   # every port the anchor's listener handed out

    def listen(self, url, **kw):
        """The anchor's listener for url, from its registry, on the anchor's loop."""
        def on_port(port):
            self.anchor_ports.append(port)
            return serve_port(self.server, port)

        async def go():
            return await start_link(url, self.server, on_port=on_port, **kw)
        self.listener = self.ia.lt.call(go())
        return self.listener

    def open_url(self, url, urgent=False, **kw):
        """The rover's link from its registry; a channel link's ChannelLink is kept."""
        s = open_link(url, getattr(self, "device", None), urgent, **kw)
        self.channel = getattr(s, "link", None)
        return s

    def stop(self):
        if self.listener is not None:
            self.ia.lt.loop.call_soon_threadsafe(self.listener.close)


class MemoryKind(Kind):
    name = "memory"

    def start(self, ia, server):
        Kind.start(self, ia, server)
        self.links = []

    def open(self, urgent=False):
        ml = MemoryLink(self.ia.lt.loop, mtu=512)
        self.links.append(ml)
        self.anchor_ports.append(ml.anchor_end)
        self.ia.lt.spawn(serve_port(self.server, ml.anchor_end))
        self.channel = ChannelLink(ml.rover_end)
        s = self.channel.stream(urgent)
        s.owns_link = True
        return s

    def cut(self):
        for ml in self.links:
            ml.cut()

    def stop(self):
        self.cut()


class TcpKind(Kind):
    name = "tcp"
    backlog = 64 << 20       # loopback socket buffers hold several MB

    def start(self, ia, server):
        Kind.start(self, ia, server)
        from tests.support.linkemu import CountingRelay
        lst = self.listen("tcp://127.0.0.1:0")
        # Through the counting relay, so cut() can break connections as a radio would.
        self.relay = CountingRelay("127.0.0.1", lst.port)

    def open(self, urgent=False):
        return self.open_url("tcp://127.0.0.1:%d" % self.relay.port, urgent)

    def cut(self):
        self.relay.cut()

    def stop(self):
        self.relay.close()
        Kind.stop(self)


class SerialKind(Kind):
    """A pty pair joined by the link emulator; pyserial on the anchor, termios on the rover."""
    name = "serial"
    backlog = 512 << 10

    def __init__(self, **emu):
        self.emu = emu

    def start(self, ia, server):
        Kind.start(self, ia, server)
        from tests.support.linkemu import PtyLink
        self.pty = PtyLink(**self.emu)
        self.listen("serial:%s:115200" % self.pty.anchor_link)

    def open(self, urgent=False):
        return self.open_url("serial:%s:115200" % self.pty.rover_link, urgent)

    def cut(self):
        # The rover's end of the line goes away (a cable pulled, a radio off).
        self.pty.vanish("rover")
        self.pty.reappear("rover")

    def stop(self):
        Kind.stop(self)
        self.pty.close()


class MqttKind(Kind):
    """Frames as QoS 1 payloads on per-device topics through Debian's mosquitto."""
    name = "mqtt"
    backlog = 512 << 10
    count = 0

    def start(self, ia, server):
        Kind.start(self, ia, server)
        from tests.support.services import Broker
        self.broker = Broker(str(self.tmp))
        lst = self.listen("mqtt://127.0.0.1:%d" % self.broker.port)
        # The daemon's listener connects in the background; rovers' packets before its
        # subscription would only be resent, but the tests time what follows.
        ia.lt.call(asyncio.wait_for(lst.started.wait(), 30), 40)
        MqttKind.count += 1
        self.device = "conformance-%d" % MqttKind.count

    def open(self, urgent=False):
        return self.open_url("mqtt://127.0.0.1:%d" % self.broker.port, urgent)

    def cut(self):
        self.channel.port.close()    # the rover drops off the broker (cellular gone)

    def stop(self):
        Kind.stop(self)
        self.broker.close()


class BleKind(Kind):
    """Two bumble virtual controllers on one LocalLink running real GATT: the rover a
    peripheral (RX written without response, TX notified), the anchor the central."""
    name = "ble"
    backlog = 256 << 10

    def __init__(self, mtu=247):
        self.mtu = mtu
        self.pair = None

    def start(self, ia, server):
        Kind.start(self, ia, server)
        from tests.support.ble_bumble import BumblePair
        self.pair = BumblePair(mtu=self.mtu)
        self.pair.start()
        # The daemon's scanner, on the anchor's own loop, with bumble's central for bleak.
        self.listen("ble:", allow=None, backend=self.pair.central_backend(self.mtu), min_backoff=0.05)

    def open(self, urgent=False):
        # The rover's registry, with bumble's peripheral for aioble.
        s = self.open_url("ble:test", urgent, adapter=self.pair.rover, accept_timeout_ms=15000)
        self.port = self.channel.port
        return s

    def cut(self):
        self.pair.rover.disconnect()

    def stop(self):
        lst, self.listener = self.listener, None
        if lst is not None:
            # The scanner ends its scan on bumble's loop: it must be done before that loop goes.
            async def close():
                lst.close()
                await lst.wait_closed()
            self.ia.lt.call(close(), 60)
        if self.pair is not None:
            self.pair.close()


class Ble23Kind(BleKind):
    name = "ble-mtu23"
    backlog = 64 << 10
    resume_files = 8         # 12 bytes of data per 20-byte packet: keep the test short

    def __init__(self):
        BleKind.__init__(self, 23)


KINDS = {"memory": MemoryKind, "tcp": TcpKind, "serial": SerialKind, "mqtt": MqttKind, "ble": BleKind,
         "ble-mtu23": Ble23Kind}
