# Rover packet port over a serial line (docs/links.md, "Port interface", rover side).
#
# Two drivers behind one read/write path, both polled with select.poll:
#   a tty path (MicroPython unix, CPython): opened as a file, set raw with termios;
#   "uartN" (a board: esp32, rp2, ...): machine.UART(N), non-blocking (timeout=0).
# Packets are framed with anchor_core.framing; corrupt frames and line noise are dropped and
# counted (bad_frames, garbage_bytes), never passed up: the channel retransmits.
import select
import time

from anchor_core import framing
from anchor_core.compat import const, MICROPYTHON
from rover.linkerror import LinkError

try:
    from time import ticks_ms, ticks_diff, ticks_add
except ImportError:
    # CPython: same wrap-free arithmetic, milliseconds from the monotonic clock.
    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def ticks_add(a, b):
        return a + b

DEFAULT_BAUD = const(115200)
DEFAULT_MTU = const(512)
SEND_TIMEOUT_MS = const(10000)
# poll() saying "readable" and read() returning nothing, this many times in a row, is a
# hung-up line (EOF), not noise; without a cap recv_into would spin until its timeout.
_EMPTY_READS = const(3)

_POLL_GONE = select.POLLHUP | select.POLLERR

def _uart_id(device):
    # "uart1" -> 1; anything else is a path.
    if device.startswith("uart") and len(device) > 4 and device[4:].isdigit():
        return int(device[4:])
    return -1


class SerialPort:
    """Whole packets of at most mtu bytes over a serial device; blocking, as the rover is."""

    def __init__(self, device, baud=DEFAULT_BAUD, rxbuf=None, mtu=DEFAULT_MTU,
                 send_timeout_ms=SEND_TIMEOUT_MS):
        if mtu < 1 or mtu > 0xFFFF:
            raise ValueError("mtu must be 1..65535")
        self.device = device
        self.mtu = mtu
        self.overhead = framing.frame_overhead
        self.send_timeout_ms = send_timeout_ms
        self.tx = 0
        self.rx = 0
        self._fd = -1
        uid = _uart_id(device)
        if uid >= 0:
            self._dev = self._open_uart(uid, baud, rxbuf)
        else:
            self._dev = self._open_tty(device, baud)
        # Buffers are taken once: recv/send run for every packet of a backup.
        self._deframer = framing.Deframer(max_payload=mtu, views=True)   # copied into buf at once
        self._rbuf = bytearray(mtu + framing.frame_overhead)
        self._rmv = memoryview(self._rbuf)
        self._roff = 0      # _rbuf[_roff:_rend]: read from the line, not yet taken by the deframer
        self._rend = 0
        self._tbuf = bytearray(mtu + framing.frame_overhead)
        self._tmv = memoryview(self._tbuf)
        # One poller per direction, registered once: no re-registering between send and recv.
        self._pin = select.poll()
        self._pin.register(self._dev, select.POLLIN)
        self._pout = select.poll()
        self._pout.register(self._dev, select.POLLOUT)

    @staticmethod
    def _open_uart(uid, baud, rxbuf):
        try:
            from machine import UART  # only boards have one (MicroPython unix has machine)
        except ImportError:
            raise ValueError("serial device uart%d: this runtime has no machine.UART; "
                             "name a tty path instead" % uid)
        if rxbuf is None:
            return UART(uid, baudrate=baud, timeout=0)
        return UART(uid, baudrate=baud, rxbuf=rxbuf, timeout=0)

    def _open_tty(self, device, baud):
        try:
            import termios
        except ImportError:
            raise ValueError("serial device %s: this runtime has no termios; "
                             "on a board name a UART, e.g. uart1" % device)
        speed = getattr(termios, "B%d" % baud, None)
        if speed is None:
            raise ValueError("serial device %s: baud %d is not offered by termios" % (device, baud))
        try:
            if MICROPYTHON:
                dev = open(device, "r+b", buffering=0)
            else:
                import os
                # O_NOCTTY: a session leader must not adopt the line as its terminal.
                fd = os.open(device, os.O_RDWR | os.O_NOCTTY)
                dev = open(fd, "r+b", buffering=0)
        except OSError as e:
            raise LinkError("cannot open serial device %s: %s" % (device, e))
        try:
            fd = dev.fileno()
            setraw = getattr(termios, "setraw", None)   # MicroPython's; CPython's is in tty
            if setraw is None:
                import tty
                setraw = tty.setraw
            setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[4] = speed
            attrs[5] = speed
            # VMIN = VTIME = 0: read() returns what is there, at once. MicroPython's
            # readinto keeps calling read() until the buffer is full or read() returns 0,
            # so with a blocking VMIN=1 it would hang for a whole buffer.
            cc = attrs[6]
            cc[getattr(termios, "VTIME", 5)] = 0   # 5 and 6 on Linux, where MicroPython
            cc[getattr(termios, "VMIN", 6)] = 0    # does not name them
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except Exception:
            dev.close()
            raise
        self._fd = fd
        return dev

    @property
    def bad_frames(self):
        return self._deframer.bad_frames

    @property
    def garbage_bytes(self):
        return self._deframer.garbage_bytes

    def send(self, packet):
        n = len(packet)
        if n > self.mtu:
            raise ValueError("packet of %d bytes exceeds the mtu %d" % (n, self.mtu))
        # Framed in place in the preallocated buffer: no frame-sized allocation per packet.
        self._tmv[6:6 + n] = packet
        total = framing.frame_in_place(self._tbuf, n)
        self._write_all(total)
        self.tx += total

    def _write_all(self, total):
        deadline = ticks_add(ticks_ms(), self.send_timeout_ms)
        off = 0
        tries = 0
        # Each pass writes at least a byte or waits for the line; the deadline and the
        # count bound a line that takes nothing.
        while off < total:
            left = ticks_diff(deadline, ticks_ms())
            if left < 0 or tries > total + 64:
                raise LinkError("serial %s: line stalled, %d of %d bytes sent in %d ms"
                                % (self.device, off, total, self.send_timeout_ms))
            tries += 1
            if not self._ready(self._pout, left):
                continue
            try:
                k = self._dev.write(self._tmv[off:total])
            except OSError as e:
                raise LinkError("serial %s: write failed: %s" % (self.device, e))
            if k:
                off += k

    def recv_into(self, buf, timeout_ms):
        """One packet into buf; its length, or 0 if none came within timeout_ms."""
        if len(buf) < self.mtu:
            raise ValueError("receive buffer of %d bytes is smaller than the mtu %d"
                             % (len(buf), self.mtu))
        deadline = ticks_add(ticks_ms(), timeout_ms)
        empty = 0
        while True:
            n = self._take(buf)
            if n:
                return n
            left = ticks_diff(deadline, ticks_ms())
            if left < 0:
                return 0
            if not self._ready(self._pin, left):
                return 0
            try:
                k = self._dev.readinto(self._rbuf)
            except OSError as e:
                raise LinkError("serial %s: read failed: %s" % (self.device, e))
            if not k:
                empty += 1
                if empty >= _EMPTY_READS:
                    raise LinkError("serial %s: line hung up" % self.device)
                continue
            empty = 0
            self.rx += k
            self._roff = 0
            self._rend = k

    def _ready(self, poller, timeout_ms):
        if MICROPYTHON:
            # ipoll hands back its own tuple: no list per call.
            for _obj, ev in poller.ipoll(timeout_ms):
                if ev & _POLL_GONE:
                    raise LinkError("serial %s: device gone" % self.device)
                return True
            return False
        ready = poller.poll(timeout_ms)
        if not ready:
            return False
        if ready[0][1] & _POLL_GONE:
            raise LinkError("serial %s: device gone" % self.device)
        return True

    def _take(self, buf):
        """A whole packet from bytes already read, copied into buf; 0 if there is none yet."""
        d = self._deframer
        # Each pass returns, or hands the deframer at least one byte (once next_frame has
        # said None it has room): at most len(_rbuf) + 1 passes.
        while True:
            p = d.next_frame()
            if p is not None:
                n = len(p)
                if n == 0:
                    # 0 means "timed out" to the caller; an empty packet carries nothing.
                    continue
                buf[0:n] = p
                return n
            if self._roff >= self._rend:
                return 0
            self._roff += d.receive_data(self._rmv[self._roff:self._rend])

    def close(self):
        try:
            self._pin.unregister(self._dev)
            self._pout.unregister(self._dev)
        except (OSError, KeyError, ValueError):
            pass
        self._dev.close()
