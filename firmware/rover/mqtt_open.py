# Opening the MicroPython rover's MQTT port (rover/mqtt_port.py): the TCP connection, TLS
# (rover/mqtt_tls.py), CONNECT with the login, SUBSCRIBE to the rover's downlink. Code the
# port runs once, so mqtt_port loads it for the opening and drops it again: on the unix port
# every module's bytecode sits in the rover's 256 KB heap for as long as it is loaded.
import select
import socket
import time

from anchor_core.compat import const
from rover.linkerror import LinkError
from rover.mqtt_common import IO_TIMEOUT, KEEPALIVE
from rover.mqtt_port import _length, _put_str, _why

_CONNACK = const(2)
_SUBACK = const(9)
_PLAIN = " (if it takes TLS on this port, the link is mqtts://)"
_LOGIN = " (check --mqtt-user and --mqtt-password-file)"
_REFUSED = ("", "the protocol version", "the client id", "service unavailable",
            "a bad user name or password", "not authorized")


def open_port(p, host, port, tls, user, password):
    up = p.up.encode()
    p._down_b = p.down.encode()
    # The PUBLISH header for the uplink (type, length, topic, packet id), rewritten per
    # packet; then the payload in a second write.
    p._ph = bytearray(5 + 2 + len(up) + 2)
    p._h = bytearray(4)           # headers read; PUBACK written
    p._t = bytearray(len(p._down_b))   # topic of a received PUBLISH
    p._pid = 0
    p._unacked = 0
    # What the broker kept for us while we were away comes right after we connect, before
    # the SUBACK: held (up to mqtt_port._EARLY packets) until recv_into takes it.
    p._early = []
    p._opening = True
    p._got = 0                    # payload bytes of the PUBLISH just read, or -1
    p._up = up
    try:
        ai = socket.getaddrinfo(host, port)[0][-1]
    except OSError as e:
        raise LinkError("cannot find the MQTT broker %s: %s" % (p.where, e))
    raw = socket.socket()
    p._s = raw
    try:
        raw.settimeout(IO_TIMEOUT)
        # One packet goes out in two writes: Nagle would hold the second for the broker's
        # delayed ACK.
        raw.setsockopt(6, 1, 1)   # IPPROTO_TCP, TCP_NODELAY
        raw.connect(ai)
    except OSError as e:
        raw.close()
        raise LinkError("cannot reach the MQTT broker at %s: %s" % (p.where, e))
    p._c = raw
    try:
        if tls is not None:
            try:
                from rover import mqtt_tls
            except ImportError as e:
                raise LinkError("mqtts: this MicroPython has no TLS (%s)" % e)
            try:
                p._s = mqtt_tls.wrap(raw, host, tls, p.where)
            finally:
                from anchor_core.compat import unload
                unload(mqtt_tls)  # only the wrapped socket stays
        _connect(p, user, password)
        _subscribe(p)
        p._opening = False
    except LinkError:
        p._drop()
        raise
    except OSError as e:
        p._drop()
        raise LinkError("MQTT broker at %s: %s%s" % (p.where, _why(e), "" if tls is not None else _PLAIN))
    p._poll = select.poll()
    p._poll.register(p._s, select.POLLIN)
    p._last_out = time.ticks_ms()


def _connect(p, user, password):
    cid = p.client_id.encode()
    n = 10 + 2 + len(cid)
    flags = 0                     # clean session off: the broker keeps ours
    if user is not None:
        user = user.encode()
        n += 2 + len(user)
        flags |= 0x80
    if password is not None:
        n += 2 + len(password)
        flags |= 0x40
    b = bytearray(n + 5)
    b[0] = 0x10
    i = _length(b, 1, n)
    i = _put_str(b, i, b"MQTT")
    b[i:i + 4] = bytes((4, flags, KEEPALIVE >> 8, KEEPALIVE & 255))
    i = _put_str(b, i + 4, cid)
    if user is not None:
        i = _put_str(b, i, user)
    if password is not None:
        i = _put_str(b, i, password)
    p._s.write(memoryview(b)[:i])
    b = None
    if p._packet(None) != _CONNACK:
        raise LinkError("MQTT broker at %s did not answer the connection" % p.where)
    rc = p._h[3]
    if rc:
        raise LinkError("MQTT broker at %s refused the connection: %s%s" % (
            p.where, _REFUSED[rc] if rc < len(_REFUSED) else "code %d" % rc, _LOGIN if rc >= 4 else ""))


def _subscribe(p):
    d = p._down_b
    b = bytearray(2 + 2 + 2 + len(d) + 1 + 3)
    b[0] = 0x82
    i = _length(b, 1, 2 + 2 + len(d) + 1)
    b[i] = 0
    b[i + 1] = 1                  # packet id 1
    i = _put_str(b, i + 2, d)
    b[i] = 1                      # QoS 1
    p._s.write(memoryview(b)[:i + 1])
    # Messages queued for us while we were away may come before the SUBACK.
    for _ in range(64):
        if p._packet(None) == _SUBACK:
            if p._h[3] & 0x80:
                raise LinkError("MQTT broker at %s refused the subscription to %s" % (p.where, p.down))
            return
    raise LinkError("MQTT broker at %s did not answer the subscription" % p.where)
