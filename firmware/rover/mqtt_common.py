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
# MicroPython runs the rover's own small MQTT 3.1.1 client (rover/mqtt_port.py), whose send
# returns once the packet is written (PUBACKs are read with the anchor's packets); CPython
# drives paho-mqtt 2.x with its network thread. Neither send waits for its PUBACK until
# UNACKED are outstanding. On both a lost broker connection raises LinkError; the caller
# opens a new port, and the persistent session keeps what was queued meanwhile.
from anchor_core.compat import const
from anchor_core.messages import check_device, ProtocolError
# Topics, QoS, sizes: the profile the anchor keeps to as well.
from anchor_core.mqtt_profile import KEEPALIVE, MAX_MTU, MTU, PUBACK, QOS, publish_size, topic  # noqa: F401
from rover.linkerror import LinkError

IO_TIMEOUT = const(30)       # seconds the broker may take to answer (CONNACK, SUBACK, PUBACK)
# Packets paho's thread holds between recv_into calls; more are dropped (the channel resends
# them). It reads everything at once: its queue takes the anchor's whole send window (4 full
# packets, in wire bytes) even as tiny packets. The MicroPython client reads the socket only
# inside recv_into (and in a send past 64 unacknowledged packets), so unread packets wait
# in the kernel's socket buffer.
QUEUE_CPY = const(1024)
# Publishes a send may leave unacknowledged before it waits for one (both implementations).
UNACKED = const(64)


class MqttPortBase:
    """What both implementations share: checks, topics, byte counts. _open(host, port)
    connects (rover/mqtt_port.py: its own client; rover/mqtt_paho.py: paho)."""

    def __init__(self, host, port, device, max_payload=None, tls=None, user=None, password=None):
        # tls: None for plain TCP, else the CA file that signed the broker's certificate
        # ("" on CPython: the system's); password: bytes
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
        self._open(host, port, tls, user, password)

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
