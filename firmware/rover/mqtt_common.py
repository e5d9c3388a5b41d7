# The rover's packet port over MQTT (docs/links.md, rover side, blocking): each packet is one
# broker message. The rover publishes to anchor/v1/<device>/up and subscribes to
# anchor/v1/<device>/down, QoS 1 both ways. QoS 1 is at-least-once: a message may arrive
# twice after a lost PUBACK, but the channel above numbers its packets and drops duplicates,
# so at-least-once delivery here has an exactly-once effect there.
#
# The session is persistent (clean session off, client id from the device): QoS 1 messages
# the anchor sends while the rover is away wait at the broker and arrive after the rover
# reconnects; the channel discards the ones it no longer needs.
#
# MicroPython drives micropython-lib's umqtt.simple (installed by make setup into build/mpy-lib);
# CPython drives paho-mqtt 2.x with its network thread. Both behave alike: send returns once
# the broker acknowledged the packet, and a lost broker connection raises LinkError; the
# caller opens a new port, and the persistent session keeps what was queued meanwhile.
from core.compat import const
from core.messages import check_device, ProtocolError
from rover.link import LinkError

# Largest packet: one broker message carries exactly one channel packet, and 1 KiB is a
# size cellular links and hosted brokers take without fragmenting or refusing.
MTU = const(1024)
MAX_MTU = const(65536)       # a packet is held whole in RAM, on both sides
KEEPALIVE = const(60)        # seconds; the broker drops a client silent for 1.5x this
IO_TIMEOUT = const(30)       # seconds the broker may take to answer (CONNACK, SUBACK, PUBACK)
# Packets held between recv_into calls; more are dropped (the channel resends them).
# umqtt reads the socket only inside send and recv_into, so unread packets wait in the
# kernel's socket buffer and only those arriving during one PUBACK wait are queued here.
# paho's thread reads everything at once: its queue takes the anchor's whole send window
# (4 full packets, in wire bytes) even as tiny packets.
QUEUE_MPY = const(16)
QUEUE_CPY = const(1024)
PUBACK = const(4)            # bytes of the acknowledgement each QoS 1 message costs


def topic(device, direction):
    return "anchor/v1/%s/%s" % (device, direction)


def publish_size(topic_len, n):
    """Bytes of a QoS 1 PUBLISH carrying n payload bytes: fixed header, remaining length
    (1..4 bytes), topic length and name, packet id."""
    body = 2 + topic_len + 2 + n
    size = 2 + body
    while body > 127:
        body >>= 7
        size += 1
    return size


URL_OPTIONS = ("mtu", "cost")     # cost is read by rover/link.py when choosing a link


def parse_mqtt_url(url):
    """mqtt://HOST:PORT[?key=value&...] -> (host, port, {key: int}). Raises ValueError."""
    form = "expected mqtt://HOST:PORT[?key=value&...]"
    if type(url) is not str or not url.startswith("mqtt://"):
        raise ValueError("link %r: %s" % (url, form))
    rest, _, query = url[7:].partition("?")
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]          # [::1]:1883
    if not sep or not host or not port.isdigit():
        raise ValueError("link %s: %s" % (url, form))
    if "@" in host or "/" in host:
        raise ValueError("link %s: no user name or path here; %s" % (url, form))
    port = int(port)
    if not 0 < port < 65536:
        raise ValueError("link %s: port %d is not in 1..65535" % (url, port))
    options = {}
    if query:
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError("link %s: option %r is not key=value" % (url, item))
            if key not in URL_OPTIONS:
                raise ValueError("link %s: unknown option %r (known: %s)" % (url, key, ", ".join(URL_OPTIONS)))
            if key in options:
                raise ValueError("link %s: option %r given twice" % (url, key))
            if not value.isdigit():
                raise ValueError("link %s: option %s=%r is not a non-negative integer" % (url, key, value))
            options[key] = int(value)
    mtu = options.get("mtu")
    if mtu is not None and not 0 < mtu <= MAX_MTU:
        raise ValueError("link %s: mtu must be 1..%d" % (url, MAX_MTU))
    return host, port, options


class MqttPortBase:
    """What both implementations share: checks, topics, byte counts. _open(host, port)
    connects (rover/mqtt_port.py: umqtt.simple; rover/mqtt_paho.py: paho)."""

    def __init__(self, host, port, device, max_payload=None):
        try:
            check_device(device)
        except ProtocolError as e:
            raise LinkError("mqtt: device %r: %s" % (device, e))
        mtu = MTU if max_payload is None else max_payload
        if type(mtu) is not int or not 0 < mtu <= MAX_MTU:
            raise ValueError("mqtt: max_payload must be 1..%d bytes" % MAX_MTU)
        self.mtu = mtu
        self.device = device
        self.up = topic(device, "up")
        self.down = topic(device, "down")
        # Per packet on the wire: the PUBLISH header and topic, and the PUBACK it earns.
        self.overhead = publish_size(len(self.up), mtu) - mtu + PUBACK
        self.where = "%s:%d" % (host, port)
        self.client_id = "rover-" + device   # stable, so the broker keeps the session
        self.dropped = 0          # packets received while the queue was full, or oversized
        # Bytes on the wire, split by the thread that counts them (paho's or the caller's),
        # so no count is written by two threads.
        self._tx = self._rx = self._tx_in = self._rx_in = 0
        self._gone = None         # why the port can no longer be used
        self._c = None
        self._open(host, port)

    @property
    def tx(self):
        return self._tx + self._tx_in

    @property
    def rx(self):
        return self._rx + self._rx_in

    def _refuse(self, n):
        if n > self.mtu:
            raise ValueError("mqtt: packet of %d bytes exceeds the port's mtu of %d" % (n, self.mtu))
        if self._c is None:
            raise LinkError(self._gone or "mqtt port closed")

    def _arrived(self, n):
        # Counts a PUBLISH from the broker and the PUBACK the client library sends for it.
        self._rx_in += publish_size(len(self.down), n)
        self._tx_in += PUBACK

    def _sent(self, n):
        self._tx += publish_size(len(self.up), n)
        self._rx += PUBACK
