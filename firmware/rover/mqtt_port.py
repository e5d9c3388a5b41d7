# The rover's packet port over MQTT: see rover/mqtt_common.py for the design. This module is
# the MicroPython implementation, a small MQTT 3.1.1 client of its own (docs/decisions.md,
# "The rover's own MQTT client"): it reads every packet into buffers taken when the port
# opens, so a backup's heap does not depend on how packets happen to arrive. On CPython
# MqttPort is the paho one from rover/mqtt_paho.py, kept out of this file so that its
# bytecode does not take the rover's heap.
from anchor_core.compat import MICROPYTHON, const
from rover.mqtt_common import IO_TIMEOUT, KEEPALIVE, UNACKED, MqttPortBase, publish_size, topic  # noqa: F401
from rover.linkerror import LinkError

if MICROPYTHON:
    import time

    # Packet types (MQTT 3.1.1 §2.2.1), the high nibble of the first byte.
    _PUBLISH = const(3)
    _PUBACK = const(4)
    # A send does not wait for its PUBACK: acknowledgements are read with the anchor's packets
    # in recv_into (the channel above numbers, acknowledges and resends on its own, so a
    # round trip per packet would only cost time). Past UNACKED unacknowledged publishes a
    # send reads until one is acknowledged, dropping any packet of the anchor's that comes
    # first (the channel resends it): the channel's window keeps a rover far below it.
    _EARLY = const(16)     # packets held while the port opens (rover/mqtt_open.py)

    def _length(buf, i, n):
        """Writes MQTT's remaining length n at buf[i:]; returns the index after it."""
        while True:
            b = n & 127
            n >>= 7
            buf[i] = b | (128 if n else 0)
            i += 1
            if not n:
                return i

    def _put_str(buf, i, s):
        n = len(s)
        buf[i] = n >> 8
        buf[i + 1] = n & 255
        buf[i + 2:i + 2 + n] = s
        return i + 2 + n

    class MqttPort(MqttPortBase):
        def _open(self, host, port, tls=None, user=None, password=None):
            # Connecting (CONNECT, TLS, SUBSCRIBE) is code the port needs once: it lives in
            # rover/mqtt_open.py, dropped again before the backup starts (~2 KB of heap).
            from rover import mqtt_open
            try:
                mqtt_open.open_port(self, host, port, tls, user, password)
            finally:
                from anchor_core.compat import unload
                unload(mqtt_open)

        def _read(self, mv):
            got = 0
            n = len(mv)
            while got < n:
                k = self._s.readinto(mv[got:])
                if not k:
                    raise OSError(-1)         # end of stream
                got += k

        def _skip(self, n, scratch=None):
            # scratch: the caller's receive buffer when there is one (a dropped packet of
            # kilobytes in a few reads), else the 4-byte header buffer
            h = scratch if scratch is not None and len(scratch) else memoryview(self._h)
            while n > 0:
                k = len(h) if n > len(h) else n
                self._read(h[:k])
                n -= k

        def _packet(self, into):
            """Reads one packet from the broker; returns its type. A PUBLISH goes into
            `into` (a memoryview; None: dropped), self._got is its length (-1: dropped), and
            it is acknowledged here. A PUBACK is counted off; a CONNACK's or SUBACK's result
            is in self._h[3]."""
            h = self._h
            hv = memoryview(h)
            self._read(hv[:1])
            t = h[0] >> 4
            qos = (h[0] >> 1) & 3
            n = 0
            shift = 0
            for _ in range(4):
                self._read(hv[1:2])
                n |= (h[1] & 127) << shift
                shift += 7
                if not h[1] & 128:
                    break
            else:
                raise LinkError("MQTT broker at %s sent a malformed packet length" % self.where)
            if t != _PUBLISH:
                if n > 4 or (t == _PUBACK and n != 2):
                    raise LinkError("MQTT broker at %s sent an unexpected packet (type %d, %d bytes)" % (
                        self.where, t, n))
                if n:
                    self._read(hv[4 - n:])     # right-aligned: a result in h[3]
                if t == _PUBACK and self._unacked:
                    self._unacked -= 1
                return t
            if qos > 1:
                raise LinkError("MQTT broker at %s sent a QoS %d message; the rover subscribed at QoS 1"
                                % (self.where, qos))
            self._read(hv[:2])
            tl = h[0] << 8 | h[1]
            n -= 2 + tl + (2 if qos else 0)
            if n < 0:
                raise LinkError("MQTT broker at %s sent a malformed PUBLISH" % self.where)
            ours = tl == len(self._t)
            if ours:
                self._read(memoryview(self._t))
                ours = self._t == self._down_b
            else:
                self._skip(tl)
            pid = 0
            if qos:
                self._read(hv[2:4])
                pid = h[2] << 8 | h[3]
            self._arrived(n)
            self._got = -1
            if ours and n <= self.mtu and into is not None and n <= len(into):
                self._read(into[:n])
                self._got = n
            elif ours and n <= self.mtu and self._opening and len(self._early) < _EARLY:
                b = bytearray(n)
                self._read(memoryview(b))
                self._early.append(b)
                self._got = n
            else:
                if ours:
                    self.dropped += 1
                self._skip(n, into)
            if qos:
                h[0] = 0x40                   # PUBACK
                h[1] = 2
                h[2] = pid >> 8
                h[3] = pid & 255
                self._s.write(h)
                self._last_out = time.ticks_ms()
            return t

        def _drop(self):
            c, self._c = self._c, None
            if c is None:
                return
            try:
                self._s.close()
            except OSError:
                pass
            if self._s is not c:
                try:
                    c.close()
                except OSError:
                    pass

        def _lost(self, e):
            if isinstance(e, LinkError):
                why = str(e)
            else:
                why = "lost the MQTT broker at %s: %s" % (self.where, _why(e))
            self._gone = why
            self._drop()
            raise LinkError(why)

        def _keepalive(self):
            # Any packet from the client resets the broker's keepalive timer; ping only
            # when the rover has been quiet for half of it.
            if time.ticks_diff(time.ticks_ms(), self._last_out) > KEEPALIVE * 500:
                self._s.write(b"\xc0\x00")
                self._last_out = time.ticks_ms()

        def send(self, packet):
            n = len(packet)
            self._refuse(n)
            ph = self._ph
            up = self._up
            self._pid = self._pid % 65535 + 1
            ph[0] = 0x32                      # PUBLISH, QoS 1
            i = _length(ph, 1, 2 + len(up) + 2 + n)
            i = _put_str(ph, i, up)
            ph[i] = self._pid >> 8
            ph[i + 1] = self._pid & 255
            try:
                self._s.write(memoryview(ph)[:i + 2])
                self._s.write(packet)
                self._last_out = time.ticks_ms()
                self._unacked += 1
                # Bounded: each read waits at most IO_TIMEOUT; a broker that sends anything
                # but acknowledgements for this long is not serving us.
                for _ in range(1024):
                    if self._unacked < UNACKED:
                        break
                    self._packet(None)
                else:
                    raise LinkError("MQTT broker at %s does not acknowledge the rover's packets" % self.where)
            except Exception as e:
                self._lost(e)
            self._sent(n)

        def recv_into(self, buf, timeout_ms):
            if self._c is None:
                raise LinkError(self._gone or "mqtt port closed")
            if self._early:
                b = self._early.pop(0)
                n = len(b)
                buf[:n] = b
                return n
            deadline = time.ticks_add(time.ticks_ms(), timeout_ms)
            into = memoryview(buf)
            try:
                # Bounded by the deadline: each pass waits on the socket for what is left.
                while True:
                    self._keepalive()
                    left = time.ticks_diff(deadline, time.ticks_ms())
                    if self._poll.poll(max(0, min(left, KEEPALIVE * 500))):
                        if self._packet(into) == _PUBLISH and self._got >= 0:
                            return self._got
                    elif left <= 0:
                        return 0
            except Exception as e:
                self._lost(e)

        def close(self):
            if self._c is None:
                return
            self._gone = "mqtt port closed"
            try:
                self._s.write(b"\xe0\x00")    # a clean DISCONNECT; the persistent session stays
            except OSError:
                pass
            self._drop()

    # A broker gone away shows as end of stream, or as a reset or broken pipe when it closed
    # with our bytes unread: the same thing to the person reading the line.
    _CLOSED = (-1, 32, 103, 104, 107)     # EOF, EPIPE, ECONNABORTED, ECONNRESET, ENOTCONN

    def _why(e):
        n = e.args[0] if e.args else None
        if n in _CLOSED:
            return "connection closed"
        if n == 110:
            return "no answer in %d s" % IO_TIMEOUT
        if isinstance(n, int):
            import errno
            return "[Errno %d] %s" % (n, errno.errorcode.get(n, "error"))
        return repr(e)

else:
    from rover.mqtt_paho import MqttPort  # noqa: F401
