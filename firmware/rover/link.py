# Byte-stream links for the rover. Drivers only move bytes; the session does the rest.
import socket

from core.compat import MICROPYTHON

if MICROPYTHON:
    import select


class LinkError(Exception):
    pass


class NotPaired(Exception):
    """The anchor does not know this rover's pairing, or could not prove its own."""


def _split_query(url):
    base, _, query = url.partition("?")
    opts = {}
    for kv in query.split("&") if query else ():
        k, _, v = kv.partition("=")
        if not v.isdigit():
            raise LinkError("link %s: option %s needs a whole number" % (url, k))
        opts[k] = int(v)
    return base, opts


def parse(url):
    base, opts = _split_query(url)
    if base.startswith("tcp://"):
        host, sep, port = base[6:].rpartition(":")
        if sep and host and port.isdigit():
            return ("tcp", host, int(port))
    raise LinkError("link %s: expected tcp://HOST:PORT, serial:DEVICE[:BAUD] or mqtt://HOST:PORT" % url)


def cost(url):
    """The link's configured cost (`?cost=N`, default 1): backups take the cheapest link."""
    return _split_query(url)[1].get("cost", 1)


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


def open_link(url, device=None, urgent=False):
    """A link to the anchor. TCP carries the session directly; a serial line or an MQTT
    broker carries a channel (core/channel.py), and the session runs on one of its
    streams (`urgent` for relay requests, which then go before any backup traffic)."""
    if url.startswith("tcp://"):
        kind, host, port = parse(url)
        return TcpLink(host, port)
    if url.startswith("serial:"):
        from rover.serial_port import SerialPort, parse_serial_url
        try:
            dev, baud, opts = parse_serial_url(url)
        except ValueError as e:
            raise LinkError(str(e))
        kw = {}
        if "mtu" in opts:
            kw["mtu"] = opts["mtu"]
        port = SerialPort(dev, baud, rxbuf=opts.get("rxbuf"), **kw)
        # The UART's receive buffer is all the anchor may have in flight towards us.
        rx_window = opts.get("rxbuf")
    elif url.startswith("mqtt://"):
        from rover.mqtt_port import MqttPort, parse_mqtt_url
        if device is None:
            raise LinkError("an MQTT link needs the device id")
        try:
            host, port_no, opts = parse_mqtt_url(url)
        except ValueError as e:
            raise LinkError(str(e))
        port = MqttPort(host, port_no, device, opts.get("mtu"))
        rx_window = None
    elif url.startswith("ble:"):
        # On a board with aioble: advertise as anchor-rover-<ID> and wait for the anchor.
        base, opts = _split_query(url)
        try:
            from rover.ble_port import AiobleAdapter, GattPeripheralLink
            port = GattPeripheralLink(AiobleAdapter(base[4:] or device or "rover"))
        except ImportError:
            raise LinkError("link %s: BLE needs aioble (a MicroPython board with Bluetooth)" % url)
        rx_window = None
    else:
        parse(url)        # raises the error naming the forms we take
    from rover.chanlink import ChannelLink
    try:
        cl = ChannelLink(port, rx_window=rx_window)
    except LinkError:
        port.close()
        raise
    s = cl.stream(urgent)
    s.owns_link = True
    return s
