# The rover's end of a channel (anchor_core/channel.py) over a packet port (serial, MQTT, BLE):
# it drives the sans-I/O channel with the port and the clock, and hands out streams that
# look like any other rover link (write, readinto, set_timeout, close), so a backup or a
# relay request runs over a radio exactly as over TCP. Several streams may be used from
# several threads at once (a backup in the background, a fetch in front): one lock guards
# the channel, and whichever thread waits pumps the port for all of them.
import os
import time

from anchor_core import channel as chan
from anchor_core.compat import MICROPYTHON
from rover.linkerror import LinkError

try:
    import _thread
except ImportError:          # a MicroPython build without threads: one stream at a time
    _thread = None

POLL_SHARED_MS = 10          # how long a pump may hold the port while other streams wait


if MICROPYTHON:
    class _Clock:
        """Milliseconds that do not wrap (ticks_ms wraps after ~12 days on the unix port,
        ~6 days on ESP32)."""

        def __init__(self):
            self.last = time.ticks_ms()
            self.ms = 0

        def __call__(self):
            t = time.ticks_ms()
            self.ms += time.ticks_diff(t, self.last)
            self.last = t
            return self.ms

    now_ms = _Clock()
else:
    def now_ms():
        return int(time.monotonic() * 1000)


class _NoLock:
    def acquire(self, *a):
        return True

    def release(self):
        pass


class _Turns:
    """The channel's lock: a thread that lets it go while another waits cannot take it
    back before that one has had it.

    Every thread lets the lock go after each pump (at most POLL_SHARED_MS) so another can
    write or read, and takes it again at once if it still waits. A plain lock only wakes
    the waiter at release; the releasing thread, already running, takes the lock back
    microseconds later, long before the waiter is scheduled (more so on a loaded machine).
    A reader waiting for an echo so kept the lock round after round while the writer,
    holding the rest of the frame the echo was waiting for, never got in: both ends idle,
    nothing lost, no timer due, until the reader's 60 s deadline.

    Here a thread takes `entry` before the lock and lets it go once it has the lock, so a
    waiter holds `entry` while it waits and the thread that just released the lock stops
    at `entry` until the waiter has the lock. Every lock is released by the thread that
    took it: MicroPython's locks on the ESP32 are FreeRTOS mutexes, which only their
    holder may give back."""

    def __init__(self):
        self._entry = _thread.allocate_lock()
        self._lock = _thread.allocate_lock()

    def acquire(self):
        self._entry.acquire()
        try:
            self._lock.acquire()
        finally:
            self._entry.release()
        return True

    def release(self):
        self._lock.release()


def channel_lock():
    return _Turns() if _thread else _NoLock()


class ChannelLink:
    """One channel to the anchor over `port`. rx_window: wire bytes the port can hold
    unread (a UART's receive buffer; default: 4 packets)."""

    def __init__(self, port, rx_window=None, rx_buffer=2048, tx_buffer=2048, tx_window=None,
                 dead_ms=30000, connect_ms=15000):
        self.port = port
        wire = port.mtu + port.overhead
        if rx_window is None:
            rx_window = 4 * wire
        if tx_window is None:
            tx_window = 16384     # a cap: the channel finds the link's own (cwnd)
        self.ch = chan.Channel(True, port.mtu, port.overhead, rx_window, rx_buffer, tx_buffer,
                               tx_window, dead_ms)
        self.buf = bytearray(port.mtu)
        self.lock = channel_lock()
        self.shared = _thread is not None   # more than one thread may use the channel
        self.ch.connect(int.from_bytes(os.urandom(4), "big"), now_ms())
        self.run(lambda: self.ch.is_open, connect_ms, "connecting to the anchor")

    @property
    def tx(self):
        return self.port.tx

    @property
    def rx(self):
        return self.port.rx

    def stream(self, urgent=False):
        """A new stream; urgent streams (relay requests) go before the others."""
        self.lock.acquire()
        try:
            self._check()
            sid = self.ch.free_stream_id(urgent)
            if sid is None:
                raise LinkError("too many streams open on the link")
            self.ch.open_stream(sid)
        finally:
            self.lock.release()
        return StreamLink(self, sid)

    def _check(self):
        if self.ch.state == chan.DEAD:
            raise LinkError("link to the anchor lost: %s" % self.ch.error)

    def _pump(self, wait_ms):
        """Send what is due, then take packets for up to wait_ms. Caller holds the lock."""
        ch = self.ch
        port = self.port
        t = now_ms()
        for _ in range(64):
            p = ch.packet_to_send(t)
            if p is None:
                break
            port.send(p)
        due = ch.next_timeout(t)
        if due is not None:
            wait_ms = max(0, min(wait_ms, due - t))
        if self.shared:
            # Another thread may want the channel (to write, or for its own stream) at
            # any moment, and MicroPython has no condition variable to wake a waiter:
            # hold the port only briefly.
            wait_ms = min(wait_ms, POLL_SHARED_MS)
        mv = memoryview(self.buf)
        for _ in range(64):
            n = port.recv_into(self.buf, wait_ms)
            if not n:
                break
            ch.receive_packet(mv[:n], now_ms())
            wait_ms = 0
        t = now_ms()
        for _ in range(64):
            p = ch.packet_to_send(t)
            if p is None:
                break
            port.send(p)
        self._check()

    def run(self, cond, timeout_ms, what):
        """Pump until cond() holds (checked under the lock); LinkError after timeout_ms."""
        end = now_ms() + timeout_ms
        while True:
            self.lock.acquire()
            try:
                if cond():
                    return
                self._check()
                left = end - now_ms()
                if left <= 0:
                    raise LinkError("%s: no answer from the anchor for %d s" % (what, timeout_ms // 1000))
                self._pump(left)
            finally:
                self.lock.release()

    def close(self):
        self.port.close()


class StreamLink:
    """One stream, with the rover link interface of rover/link.py."""

    def __init__(self, link, sid):
        self.link = link
        self.sid = sid
        self.default_timeout = 60
        self.timeout_ms = 60000
        self.closed = False
        self.owns_link = False     # closing the stream also closes the channel and port

    @property
    def tx(self):
        return self.link.tx

    @property
    def rx(self):
        return self.link.rx

    def set_timeout(self, seconds):
        self.timeout_ms = int((self.default_timeout if seconds is None else seconds) * 1000)

    def write(self, data):
        mv = memoryview(data)
        ch = self.link.ch
        pos = [0]

        def put():
            pos[0] += ch.write(self.sid, mv[pos[0]:], True)
            return pos[0] >= len(mv)

        try:
            self.link.run(put, self.timeout_ms, "sending")
        except chan.ChannelError as e:
            raise LinkError("link to the anchor lost: %s" % e)

    def readinto(self, buf):
        ch = self.link.ch
        got = [0]

        def take():
            n = ch.read_into(self.sid, buf)
            if n < 0:
                return True          # end of stream: 0 bytes, as a closed socket gives
            got[0] = n
            return n > 0

        self.link.run(take, self.timeout_ms, "receiving")
        return got[0]

    def close(self):
        """End the stream: FIN after what is queued, waiting (bounded) until the anchor has
        it, so a relay request sent last is not cut off."""
        if self.closed:
            return
        self.closed = True
        link = self.link
        try:
            self._close()
        finally:
            if self.owns_link:
                link.close()

    def _close(self):
        link = self.link
        link.lock.acquire()
        try:
            if link.ch.state != chan.OPEN:
                return
            link.ch.close_stream(self.sid)
        finally:
            link.lock.release()
        if not self.owns_link:
            return        # the FIN goes out with the next pump of whichever stream is busy
        try:
            link.run(lambda: link.ch.flushed(self.sid), 5000, "closing")
        except LinkError:
            pass
