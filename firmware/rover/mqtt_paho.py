# The rover's packet port over MQTT, CPython only: paho-mqtt 2.x with its network thread. The
# design (topics, QoS, persistent sessions) is in rover/mqtt_common.py; the MicroPython
# implementation is rover/mqtt_port.py, which is what callers import on either runtime.
import collections
import queue
import socket
import ssl
import threading

import paho.mqtt.client as mqtt

from rover.mqtt_common import IO_TIMEOUT, KEEPALIVE, QOS, QUEUE_CPY, UNACKED, MqttPortBase
from rover.linkerror import LinkError


def _no_delay(client, userdata, sock):
    # paho leaves Nagle on: a PUBLISH right after the PUBACK for a received packet
    # would wait for the broker's delayed ACK.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class MqttPort(MqttPortBase):
    def _open(self, host, port, tls=None, user=None, password=None):
        self._q = queue.Queue(QUEUE_CPY)
        self._pending = collections.deque()     # publishes not yet acknowledged, oldest first
        self._closing = False
        ready = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        clean_session=False, protocol=mqtt.MQTTv311,
                        reconnect_on_failure=False)   # a lost broker is LinkError

        def on_connect(client, userdata, flags, reason, props):
            if reason.is_failure:
                login = reason.value in (0x86, 0x87, 4, 5)    # bad user name or password, not authorized
                self._gone = "MQTT broker at %s refused the connection: %s%s" % (
                    self.where, reason, " (check --mqtt-user and --mqtt-password-file)" if login else "")
                ready.set()
            else:
                client.subscribe(self.down, qos=QOS)

        def on_subscribe(client, userdata, mid, reasons, props):
            if reasons and reasons[0].is_failure:
                self._gone = "MQTT broker at %s refused the subscription to %s: %s" % (
                    self.where, self.down, reasons[0])
            ready.set()

        def on_disconnect(client, userdata, flags, reason, props):
            if not self._closing and self._gone is None:
                # paho names a connection that just ended (no DISCONNECT from the broker)
                # "Unspecified error"; say what the MicroPython rover says.
                why = "connection closed" if reason == 128 or str(reason) == "Unspecified error" else reason
                self._gone = "lost the MQTT broker at %s: %s" % (self.where, why)
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
        if user is not None or password is not None:
            c.username_pw_set(user or "", password)
        try:
            if tls is not None:
                # The broker's chain and host name are checked (paho's default once TLS is on).
                c.tls_set(ca_certs=tls or None)
        except (OSError, ValueError) as e:
            raise LinkError("mqtts: cannot use the CA file %s: %s" % (tls, e))
        try:
            c.connect(host, port, keepalive=KEEPALIVE)
        except ssl.SSLError as e:
            raise LinkError("MQTT broker at %s: TLS failed (%s): is --mqtt-ca the CA that signed the "
                            "broker's certificate, and %s the name in it?" % (self.where, e.reason or e, host))
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
        # As the MicroPython client: a send does not wait for its PUBACK (the channel above
        # acknowledges and resends by itself; a round trip per packet would cap the link at
        # one packet per round trip). Past UNACKED publishes in flight it waits for the oldest.
        n = len(packet)
        self._refuse(n)
        if self._gone is not None:
            raise LinkError(self._gone)
        info = self._c.publish(self.up, bytes(packet), qos=QOS)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise LinkError(self._gone or "MQTT broker at %s: publish failed: %s" % (
                self.where, mqtt.error_string(info.rc)))
        self._sent(n)
        self._pending.append(info)
        if not self._settle(UNACKED - 1, IO_TIMEOUT):
            raise LinkError(self._gone or "MQTT broker at %s did not acknowledge a packet in %d s" % (
                self.where, IO_TIMEOUT))

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

    def _settle(self, keep, seconds):
        """Waits (at most `seconds`, in short slices so a lost broker is noticed promptly)
        until no more than `keep` packets sent are unacknowledged; True if so."""
        pending = self._pending
        for _ in range(int(seconds * 10)):
            while pending and pending[0].is_published():
                pending.popleft()
            if len(pending) <= keep or self._gone is not None:
                break
            pending[0].wait_for_publish(0.1)
        return len(pending) <= keep

    def flush(self, seconds=IO_TIMEOUT):
        """Waits (at most `seconds`) until the broker acknowledged every packet sent; True if
        it did."""
        return self._settle(0, seconds)

    def close(self):
        if self._c is None:
            return
        # What was sent reaches the broker before the DISCONNECT (bounded: a broker that
        # stopped answering gets a few seconds).
        self.flush(5)
        c, self._c = self._c, None
        self._closing = True
        self._gone = self._gone or "mqtt port closed"
        c.disconnect()     # a clean DISCONNECT; the persistent session stays
        c.loop_stop()
