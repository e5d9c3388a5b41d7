"""The anchor's side of the MQTT link (docs/links.md): one broker client for every rover.

The listener subscribes to anchor/v1/+/up with QoS 1. The first packet from a device id it
has not seen creates a packet port for that device and hands it to `on_port`; later packets
go to that port's queue. A port sends to anchor/v1/<device>/down with QoS 1. QoS 1 may
deliver a message twice; the channel above drops duplicates by sequence number, so the
effect is exactly once.

paho-mqtt runs its network loop in its own thread; everything the listener and ports hold
is touched only on the asyncio loop (the paho thread hands over with call_soon_threadsafe),
except paho's client itself, which is thread-safe for publish.

The session is persistent (clean session off, a fixed client id), so QoS 1 packets rovers
publish while the anchor is reconnecting wait at the broker. When the broker drops, paho
reconnects (backing off up to 30 s) and the listener subscribes again; ports stay open.

The broker should send without Nagle's delay (mosquitto: `set_tcp_nodelay true`; its
default is off). Otherwise a packet to a rover waits, behind the PUBACK the broker just sent
it, for the rover's delayed ACK: a 1 MB backup over loopback took 22 s instead of 0.8 s.
"""
import asyncio
import logging
import socket

import paho.mqtt.client as mqtt

from anchor_core import messages as m
# Topics, QoS, sizes: the profile the rover keeps to as well.
from anchor_core.mqtt_profile import (KEEPALIVE, MAX_MTU, MTU, PUBACK, QOS, UP_FILTER,  # noqa: F401
                                      device_of, publish_size, topic)

log = logging.getLogger("anchor.mqtt")

# Wire bytes (payload + overhead) a port holds unread; past that packets are dropped and
# the channel resends. Twice the largest channel window (64 KiB), so a rover that keeps to
# its window never meets the bound, however small its packets.
QUEUE_BYTES = 128 << 10
OUT_QUEUE = 1024         # messages paho holds for the broker, all ports together
LOG_FIRST = 20           # rejected messages logged one by one, then every LOG_EVERY-th
LOG_EVERY = 1000


def _no_delay(client, userdata, sock):
    # paho writes each MQTT packet whole but leaves Nagle on: a PUBLISH written right after
    # a PUBACK would wait for the broker's delayed ACK of it (40 ms per echoed packet here).
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass          # not a TCP socket (websockets, a test double): nothing to tune


class MqttPort:
    """A packet port to one rover, made by MqttListener; mtu is the listener's max_payload."""

    def __init__(self, listener, device):
        self._listener = listener
        self.device = device
        self.name = "mqtt:" + device
        self.mtu = listener.max_payload
        self.up = topic(device, "up")
        self.down = topic(device, "down")
        # Per packet on the wire: the PUBLISH header and topic, and the PUBACK it earns.
        self.overhead = publish_size(len(self.down), self.mtu) - self.mtu + PUBACK
        self.tx = 0
        self.rx = 0
        self.dropped = 0         # packets lost to a full queue, either way
        self._q = asyncio.Queue()        # bounded by _queued, in wire bytes
        self._queued = 0
        self._closed = None      # why, once closed

    def _feed(self, payload):
        self.rx += publish_size(len(self.up), len(payload))
        self.tx += PUBACK        # paho acknowledged it
        if self._closed:
            return
        cost = len(payload) + self.overhead
        if self._queued + cost > QUEUE_BYTES:
            self.dropped += 1    # already acknowledged to the broker: lost, resent above
            return
        self._queued += cost
        self._q.put_nowait(payload)

    async def send(self, packet):
        if self._closed:
            raise ConnectionError("%s: %s" % (self.name, self._closed))
        n = len(packet)
        if n > self.mtu:
            raise ValueError("%s: packet of %d bytes exceeds the port's mtu of %d" % (self.name, n, self.mtu))
        info = self._listener._client.publish(self.down, bytes(packet), qos=QOS)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            # The broker is away or slow and paho's queue is full: drop it like a lossy
            # link would; the channel resends. Without the bound, an absent broker would
            # grow the anchor's memory without limit.
            self.dropped += 1
            return
        # MQTT_ERR_NO_CONN also lands here: paho keeps QoS 1 messages and sends them after
        # it reconnects.
        self.tx += publish_size(len(self.down), n)
        self.rx += PUBACK

    async def recv(self):
        if self._closed:
            raise ConnectionError("%s: %s" % (self.name, self._closed))
        packet = await self._q.get()
        if packet is None:
            self._q.put_nowait(None)     # for any other waiter
            raise ConnectionError("%s: %s" % (self.name, self._closed))
        self._queued -= len(packet) + self.overhead
        return packet

    def close(self, why="port closed"):
        """Forget this port; a later packet from the device makes a new one."""
        if self._closed:
            return
        self._closed = why
        self._listener._forget(self)
        self._q.put_nowait(None)         # wakes a waiting recv


class MqttListener:
    """MqttListener(host, port, on_port, max_payload=1024); then `await start()`.

    on_port(port) is called on the asyncio loop for each new device; a coroutine it returns
    is run as a task. client_id names the anchor's persistent session at the broker: two
    anchors on one broker need different ones.
    """

    def __init__(self, host, port, on_port, max_payload=MTU, client_id="anchor-listener", broker=None):
        if type(max_payload) is not int or not 0 < max_payload <= MAX_MTU:
            raise ValueError("mqtt: max_payload must be 1..%d bytes" % MAX_MTU)
        self.host = host
        self.port = port
        self.where = "%s:%d" % (host, port)
        self.on_port = on_port
        self.max_payload = max_payload
        self.ports = {}          # device -> MqttPort
        self.rejected = 0        # messages refused: bad topic, bad device id, oversized
        self._loop = None
        self._subscribed = None
        self._refused = None
        self._closed = False
        self._tasks = set()
        # broker: an anchor.broker.Broker (TLS, user and password) for this host and port
        self.broker = broker
        if broker is not None:
            self.where = broker.url
            c = broker.client(client_id, clean_session=False, protocol=mqtt.MQTTv311)
        else:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                            clean_session=False, protocol=mqtt.MQTTv311)
        c.max_queued_messages_set(OUT_QUEUE)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_socket_open = _no_delay
        self._client = c

    async def start(self, timeout=10):
        """Connect and subscribe; ConnectionError if the broker cannot be had in time."""
        self._loop = asyncio.get_running_loop()
        self._subscribed = asyncio.Event()
        try:
            # The first connect is ours, so an absent broker is an error now rather than
            # endless retries in paho's thread; later drops are paho's to mend.
            await self._loop.run_in_executor(None, self._client.connect, self.host, self.port, KEEPALIVE)
        except (OSError, ValueError) as e:
            why = self.broker.explain(e) if self.broker is not None else e
            raise ConnectionError("cannot reach the MQTT broker at %s: %s" % (self.where, why)) from None
        self._client.loop_start()
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        except asyncio.TimeoutError:
            self._refused = self._refused or "no subscription to %s confirmed in %g s" % (UP_FILTER, timeout)
        if self._refused:
            self.close()
            raise ConnectionError("MQTT broker at %s: %s" % (self.where, self._refused))

    # --- paho's thread ------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason, props):
        if reason.is_failure:
            from anchor.broker import refusal
            self._refused = refusal(reason)
            log.warning("mqtt: broker %s %s", self.where, self._refused)
            self._loop.call_soon_threadsafe(self._subscribed.set)
            return
        # Every (re)connect: a broker that restarted without persistence forgot us.
        client.subscribe(UP_FILTER, qos=QOS)

    def _on_subscribe(self, client, userdata, mid, reasons, props):
        if any(r.is_failure for r in reasons):
            self._refused = "refused the subscription to %s: %s" % (UP_FILTER, reasons)
            log.warning("mqtt: broker %s %s", self.where, self._refused)
        else:
            log.info("mqtt: listening on %s at %s", UP_FILTER, self.where)
        self._loop.call_soon_threadsafe(self._subscribed.set)

    def _on_disconnect(self, client, userdata, flags, reason, props):
        if not self._closed:
            log.warning("mqtt: lost the broker at %s (%s); reconnecting", self.where, reason)

    def _on_message(self, client, userdata, msg):
        device = device_of(msg.topic, "up")
        if device is None:
            self._reject("message on unexpected topic %r" % msg.topic)
            return
        try:
            device = m.check_device(device)
        except m.ProtocolError as e:
            self._reject("topic %r: %s" % (msg.topic, e.text))
            return
        if len(msg.payload) > self.max_payload:
            self._reject("%s sent a packet of %d bytes, more than max_payload %d; dropped" % (
                device, len(msg.payload), self.max_payload))
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, device, msg.payload)
        except RuntimeError:
            pass        # the loop is gone (closed without close()): nobody to deliver to

    def _reject(self, text):
        self.rejected += 1      # written by paho's thread only
        n = self.rejected
        if n <= LOG_FIRST or n % LOG_EVERY == 0:
            log.warning("mqtt: %s (%d rejected so far)", text, n)

    # --- the asyncio loop ---------------------------------------------------------------

    def _deliver(self, device, payload):
        if self._closed:
            return
        port = self.ports.get(device)
        if port is not None:
            port._feed(payload)
            return
        port = MqttPort(self, device)
        self.ports[device] = port
        port._feed(payload)             # queued first, so the port's first recv has it
        log.info("mqtt: new rover %s", device)
        try:
            result = self.on_port(port)
        except Exception:
            log.exception("mqtt: on_port failed for %s", port.name)
            return
        if asyncio.iscoroutine(result):
            task = self._loop.create_task(result)
            self._tasks.add(task)       # held, or the loop may drop a running task
            task.add_done_callback(self._tasks.discard)

    def _forget(self, port):
        if self.ports.get(port.device) is port:
            del self.ports[port.device]

    def close(self):
        if self._closed:
            return
        self._closed = True
        for port in list(self.ports.values()):
            port.close("listener closed")
        self._client.disconnect()
        self._client.loop_stop()


class MqttLinks:
    """The MQTT link listener as the daemon runs it (anchor/links/port.py, Listener): retried in
    the background while the broker is away, so the anchor serves its other links meanwhile
    and relayed publishes fail clearly. `started` is set once it takes rovers."""

    def __init__(self, host, port, on_port, **kw):
        self.broker = (host, port)
        self.name = kw["broker"].url if kw.get("broker") is not None else "mqtt://%s:%d" % self.broker
        self.on_port = on_port
        self.kw = kw               # MqttListener's own settings (max_payload, client_id)
        self.listener = None
        self.started = asyncio.Event()
        self.task = None

    def start(self):
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())
        return self.task

    async def _run(self):
        backoff = 1.0
        while True:
            lst = MqttListener(self.broker[0], self.broker[1], self.on_port, **self.kw)
            try:
                await lst.start()
            except ConnectionError as e:
                if backoff == 1.0:
                    log.warning("MQTT links not available yet: %s; retrying", e)
                await asyncio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
                continue
            self.listener = lst
            self.started.set()
            log.info("MQTT links on mqtt://%s:%d (topics %s)", self.broker[0], self.broker[1], UP_FILTER)
            return

    def close(self):
        if self.task is not None:
            self.task.cancel()
        if self.listener is not None:
            self.listener.close()
