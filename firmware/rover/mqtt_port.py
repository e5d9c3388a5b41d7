# The rover's packet port over MQTT: see rover/mqtt_common.py for the design. This module is
# the MicroPython implementation (micropython-lib's umqtt.simple); on CPython MqttPort is the
# paho one from rover/mqtt_paho.py, kept out of this file so that its bytecode does not take
# the rover's heap.
from anchor_core.compat import MICROPYTHON
from rover.mqtt_common import (IO_TIMEOUT, KEEPALIVE, QOS, QUEUE_MPY, MqttPortBase,  # noqa: F401
                               publish_size, topic)
from rover.linkerror import LinkError

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

    class MqttPort(MqttPortBase):
        def _open(self, host, port):
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
                c.subscribe(self._down_b, qos=QOS)
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
                self._c.publish(self._up_b, packet, False, QOS)   # returns after the PUBACK
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
    from rover.mqtt_paho import MqttPort  # noqa: F401
