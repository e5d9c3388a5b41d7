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
from core.compat import const, MICROPYTHON
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


if MICROPYTHON:
    import select
    import socket
    import time

    class _TimedSockets:
        """What umqtt.simple sees as its socket module. Its sockets have a timeout, so a
        broker that stops answering raises OSError instead of blocking the rover forever,
        and TCP_NODELAY, because umqtt writes a PUBLISH in four pieces and Nagle would hold
        the last for the broker's delayed ACK."""
        getaddrinfo = socket.getaddrinfo

        @staticmethod
        def socket():
            s = socket.socket()
            s.settimeout(IO_TIMEOUT)
            s.setsockopt(6, 1, 1)      # IPPROTO_TCP, TCP_NODELAY
            return s
else:
    import queue
    import socket

    def _no_delay(client, userdata, sock):
        # paho leaves Nagle on: a PUBLISH right after the PUBACK for a received packet
        # would wait for the broker's delayed ACK.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass


class MqttPort:
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
        if MICROPYTHON:
            self._open_umqtt(host, port)
        else:
            self._open_paho(host, port)

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

    if MICROPYTHON:
        def _open_umqtt(self, host, port):
            try:
                from umqtt import simple
            except ImportError:
                raise LinkError("mqtt: umqtt.simple is missing (make setup installs it in build/mpy-lib)")
            simple.socket = _TimedSockets      # the rover's only umqtt user; see the class
            self._q = []
            self._down_b = self.down.encode()
            self._up_b = self.up.encode()
            c = simple.MQTTClient(self.client_id, host, port, keepalive=KEEPALIVE)
            c.set_callback(self._on_message)
            try:
                c.connect(clean_session=False)
                c.subscribe(self._down_b, qos=1)
            except simple.MQTTException as e:
                self._drop(c)
                raise LinkError("MQTT broker at %s refused the connection (code %s)" % (self.where, e))
            except OSError as e:
                self._drop(c)
                raise LinkError("cannot reach the MQTT broker at %s: %s" % (self.where, e))
            except Exception as e:      # umqtt checks the broker's answers with assert
                self._drop(c)
                raise LinkError("MQTT broker at %s answered unexpectedly: %r" % (self.where, e))
            self._c = c
            self._poll = select.poll()
            self._poll.register(c.sock, select.POLLIN)
            self._last_out = time.ticks_ms()

        def _drop(self, c):
            try:
                if c.sock is not None:
                    c.sock.close()
            except OSError:
                pass

        def _on_message(self, t, msg):
            # Called inside umqtt's wait_msg, which acknowledges the message right after.
            self._arrived(len(msg))
            if t != self._down_b:
                return
            if len(msg) > self.mtu or len(self._q) >= QUEUE_MPY:
                self.dropped += 1
                return
            self._q.append(msg)

        def _lost(self, e):
            if isinstance(e, OSError) and e.args and e.args[0] == -1:
                why = "connection closed"      # umqtt's word for end of stream
            else:
                why = repr(e)
            self._gone = "lost the MQTT broker at %s: %s" % (self.where, why)
            c, self._c = self._c, None
            if c is not None:
                self._drop(c)
            raise LinkError(self._gone)

        def _keepalive(self):
            # Any packet from the client resets the broker's keepalive timer; ping only
            # when the rover has been quiet for half of it.
            if time.ticks_diff(time.ticks_ms(), self._last_out) > KEEPALIVE * 500:
                self._c.ping()
                self._last_out = time.ticks_ms()

        def send(self, packet):
            n = len(packet)
            self._refuse(n)
            try:
                self._c.publish(self._up_b, packet, False, 1)   # returns after the PUBACK
            except Exception as e:
                self._lost(e)
            self._last_out = time.ticks_ms()
            self._sent(n)

        def recv_into(self, buf, timeout_ms):
            c = self._c
            if c is None:
                raise LinkError(self._gone or "mqtt port closed")
            deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
            q = self._q
            try:
                # Bounded by the deadline: each pass waits on the socket for what is left.
                while not q:
                    self._keepalive()
                    left = time.ticks_diff(deadline, time.ticks_ms())
                    if self._poll.poll(max(0, min(left, KEEPALIVE * 500))):
                        c.wait_msg()     # one broker packet; a PUBLISH lands in the queue
                    elif left <= 0:
                        return 0
            except Exception as e:
                self._lost(e)
            msg = q.pop(0)
            n = len(msg)
            buf[:n] = msg
            return n

        def close(self):
            c, self._c = self._c, None
            if c is None:
                return
            self._gone = "mqtt port closed"
            try:
                c.disconnect()     # a clean DISCONNECT; the persistent session stays
            except Exception:
                self._drop(c)

    else:
        def _open_paho(self, host, port):
            import threading
            import paho.mqtt.client as mqtt
            self._mqtt = mqtt
            self._q = queue.Queue(QUEUE_CPY)
            self._closing = False
            ready = threading.Event()
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                            clean_session=False, protocol=mqtt.MQTTv311,
                            reconnect_on_failure=False)   # a lost broker is LinkError

            def on_connect(client, userdata, flags, reason, props):
                if reason.is_failure:
                    self._gone = "MQTT broker at %s refused the connection: %s" % (self.where, reason)
                    ready.set()
                else:
                    client.subscribe(self.down, qos=1)

            def on_subscribe(client, userdata, mid, reasons, props):
                if reasons and reasons[0].is_failure:
                    self._gone = "MQTT broker at %s refused the subscription to %s: %s" % (
                        self.where, self.down, reasons[0])
                ready.set()

            def on_disconnect(client, userdata, flags, reason, props):
                if not self._closing and self._gone is None:
                    self._gone = "lost the MQTT broker at %s: %s" % (self.where, reason)
                try:
                    self._q.put_nowait(None)    # wakes a waiting recv_into
                except queue.Full:
                    pass                         # it will see _gone once the queue drains
                ready.set()

            c.on_connect = on_connect
            c.on_subscribe = on_subscribe
            c.on_message = self._on_message
            c.on_disconnect = on_disconnect
            c.on_socket_open = _no_delay
            try:
                c.connect(host, port, keepalive=KEEPALIVE)
            except (OSError, ValueError) as e:
                raise LinkError("cannot reach the MQTT broker at %s: %s" % (self.where, e))
            c.loop_start()
            if not ready.wait(IO_TIMEOUT) and self._gone is None:
                self._gone = "MQTT broker at %s did not answer in %d s" % (self.where, IO_TIMEOUT)
            if self._gone is not None:
                self._closing = True
                c.disconnect()
                c.loop_stop()
                raise LinkError(self._gone)
            self._c = c

        def _on_message(self, client, userdata, msg):
            # paho's thread; it acknowledges the message when this returns.
            self._arrived(len(msg.payload))
            if msg.topic != self.down:
                return
            if len(msg.payload) > self.mtu:
                self.dropped += 1
                return
            try:
                self._q.put_nowait(msg.payload)
            except queue.Full:
                self.dropped += 1

        def send(self, packet):
            n = len(packet)
            self._refuse(n)
            info = self._c.publish(self.up, bytes(packet), qos=1)
            if info.rc != self._mqtt.MQTT_ERR_SUCCESS:
                raise LinkError(self._gone or "MQTT broker at %s: publish failed: %s" % (
                    self.where, self._mqtt.error_string(info.rc)))
            # Wait for the PUBACK in short slices, so a lost broker is noticed promptly.
            for _ in range(IO_TIMEOUT * 10):
                if info.is_published():
                    break
                if self._gone is not None:
                    raise LinkError(self._gone)
                info.wait_for_publish(0.1)
            else:
                raise LinkError("MQTT broker at %s did not acknowledge a packet in %d s" % (
                    self.where, IO_TIMEOUT))
            self._sent(n)

        def recv_into(self, buf, timeout_ms):
            if self._c is None or (self._gone is not None and self._q.empty()):
                raise LinkError(self._gone or "mqtt port closed")
            try:
                if timeout_ms > 0:
                    msg = self._q.get(timeout=timeout_ms / 1000)
                else:
                    msg = self._q.get_nowait()
            except queue.Empty:
                return 0
            if msg is None:
                raise LinkError(self._gone or "mqtt port closed")
            n = len(msg)
            buf[:n] = msg
            return n

        def close(self):
            c, self._c = self._c, None
            if c is None:
                return
            self._closing = True
            self._gone = self._gone or "mqtt port closed"
            c.disconnect()     # a clean DISCONNECT; the persistent session stays
            c.loop_stop()
