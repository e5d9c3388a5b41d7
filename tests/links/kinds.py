"""Every kind of link behind one small interface, for the conformance suite.

A kind stands up the anchor's end for a `server` (anything with `serve_stream(reader,
writer)`: the real Anchor, or a test server) and opens rover-side links to it:

    kind.start(inproc_anchor, server)
    link = kind.open()          # a rover link: write, readinto, set_timeout, close, tx, rx
    kind.cut()                  # break the link the way that kind breaks (radio gone)
    kind.stop()
"""
import asyncio
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "e2e"))

from anchor.chanlink import serve_port  # noqa: E402
from memory_link import MemoryLink  # noqa: E402
from rover.chanlink import ChannelLink  # noqa: E402
from rover.tcp_link import TcpLink  # noqa: E402


class Kind:
    name = "?"
    # bytes a writer may push against a reader that does not read, before it must block
    backlog = 2 << 20
    resume_files = 24        # files of 40 kB backed up in the resume test

    def start(self, ia, server):
        self.ia = ia
        self.server = server

    def stop(self):
        pass


class MemoryKind(Kind):
    name = "memory"

    def start(self, ia, server):
        Kind.start(self, ia, server)
        self.links = []

    def open(self, urgent=False):
        ml = MemoryLink(self.ia.lt.loop, mtu=512)
        self.links.append(ml)
        self.ia.lt.spawn(serve_port(self.server, ml.anchor_end))
        cl = ChannelLink(ml.rover_end)
        s = cl.stream(urgent)
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
        from linkemu import CountingRelay

        async def listen():
            srv = await asyncio.start_server(server.serve_stream, "127.0.0.1", 0)
            return srv, srv.sockets[0].getsockname()[1]
        self.srv, port = ia.lt.call(listen())
        # Through the counting relay, so cut() can break connections as a radio would.
        self.relay = CountingRelay("127.0.0.1", port)

    def open(self, urgent=False):
        return TcpLink("127.0.0.1", self.relay.port)

    def cut(self):
        self.relay.cut()

    def stop(self):
        self.relay.close()
        self.ia.lt.loop.call_soon_threadsafe(self.srv.close)


class SerialKind(Kind):
    """A pty pair joined by the link emulator; pyserial on the anchor, termios on the rover."""
    name = "serial"
    backlog = 512 << 10

    def __init__(self, **emu):
        self.emu = emu

    def start(self, ia, server):
        Kind.start(self, ia, server)
        from linkemu import PtyLink
        from anchor.serial_port import SerialListener
        self.pty = PtyLink(**self.emu)

        async def listen():
            lst = SerialListener(self.pty.anchor_link, 115200,
                                 on_port=lambda port: serve_port(server, port))
            lst.start()
            return lst
        self.listener = ia.lt.call(listen())

    def open(self, urgent=False, **channel):
        from rover.serial_port import SerialPort
        port = SerialPort(self.pty.rover_link, 115200)
        try:
            cl = ChannelLink(port, **channel)
        except Exception:
            port.close()
            raise
        self.channel = cl
        s = cl.stream(urgent)
        s.owns_link = True
        return s

    def cut(self):
        # The rover's end of the line goes away (a cable pulled, a radio off).
        self.pty.vanish("rover")
        self.pty.reappear("rover")

    def stop(self):
        self.ia.lt.loop.call_soon_threadsafe(self.listener.close)
        self.pty.close()


class MqttKind(Kind):
    """Frames as QoS 1 payloads on per-device topics through Debian's mosquitto."""
    name = "mqtt"
    backlog = 512 << 10
    count = 0

    def start(self, ia, server):
        Kind.start(self, ia, server)
        from services import Broker
        from anchor.mqtt_port import MqttListener
        self.broker = Broker(str(self.tmp))

        async def listen():
            lst = MqttListener("127.0.0.1", self.broker.port,
                               lambda port: serve_port(server, port))
            await lst.start()
            return lst
        self.listener = ia.lt.call(listen())
        MqttKind.count += 1
        self.device = "conformance-%d" % MqttKind.count

    def open(self, urgent=False, **channel):
        from rover.mqtt_port import MqttPort
        self.port = MqttPort("127.0.0.1", self.broker.port, self.device)
        try:
            cl = ChannelLink(self.port, **channel)
        except Exception:
            self.port.close()
            raise
        self.channel = cl
        s = cl.stream(urgent)
        s.owns_link = True
        return s

    def cut(self):
        self.port.close()        # the rover drops off the broker (cellular gone)

    def stop(self):
        self.ia.lt.loop.call_soon_threadsafe(self.listener.close)
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
        from ble_bumble import BumblePair
        self.pair = BumblePair(mtu=self.mtu)
        self.pair.start()

    def open(self, urgent=False, **channel):
        from rover.ble_port import GattPeripheralLink
        # The central connects from the anchor's own loop, as the daemon's scanner does.
        fut = self.ia.lt.spawn(self.pair.connect_central(mtu=self.mtu))
        self.port = GattPeripheralLink(self.pair.rover, accept_timeout_ms=10000)
        anchor_port = fut.result(15)
        self.ia.lt.spawn(serve_port(self.server, anchor_port))
        cl = ChannelLink(self.port, **channel)
        self.channel = cl
        s = cl.stream(urgent)
        s.owns_link = True
        return s

    def cut(self):
        self.pair.rover.disconnect()

    def stop(self):
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
