"""The anchor's packet port over a serial device (docs/links.md, "Port interface", anchor side).

pyserial opens and configures the device (raw, baud, exclusive); the event loop then reads
and writes its file descriptor directly (add_reader / add_writer), so no thread is needed.
Packets are framed with anchor_core.framing; corrupt frames and noise are dropped and counted.

A USB adapter comes and goes: `SerialListener` keeps (re)opening the device and hands each
opening to `on_port` as a new port, one at a time; the caller runs one channel per port.
"""
import asyncio
import collections
import errno
import logging
import os

import serial

from anchor_core import framing

from anchor.links.chanlink import end_port_job

log = logging.getLogger("anchor.serial")

DEFAULT_BAUD = 115200
DEFAULT_MTU = 512
READ_BLOCK = 4096          # one read per readiness callback; a pty hands out at most 4095
RX_QUEUE = 64              # packets received and not yet taken by recv(); then the port
                           # stops reading and the line's own buffer takes the backlog
SEND_TIMEOUT = 30.0        # a line that takes no byte for this long is gone
CHECK_INTERVAL = 1.0       # how often a listener checks the device path still is the device
MIN_BACKOFF = 0.2
MAX_BACKOFF = 2.0
GRACE = 5.0                # time on_port gets to notice its port is gone before it is cancelled


class SerialPacketPort:
    """One opening of a serial device as an asyncio packet port."""

    def __init__(self, ser, name, mtu=DEFAULT_MTU, loop=None):
        self.ser = ser
        self.name = name
        self.mtu = mtu
        self.overhead = framing.frame_overhead
        self.tx = 0
        self.rx = 0
        self.error = None           # why the port is gone; None while it works
        self.gone = asyncio.Event()
        self._loop = loop or asyncio.get_running_loop()
        self._fd = ser.fileno()
        self._deframer = framing.Deframer(max_payload=mtu)
        self._packets = collections.deque()
        self._waiters = []
        self._writable = None
        self._wlock = asyncio.Lock()
        self._reading = False
        self._start_reading()

    @property
    def bad_frames(self):
        return self._deframer.bad_frames

    @property
    def garbage_bytes(self):
        return self._deframer.garbage_bytes

    def fileno(self):
        return self._fd

    # --- receiving ----------------------------------------------------------------------

    def _start_reading(self):
        if not self._reading and self.error is None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self):
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self):
        try:
            data = os.read(self._fd, READ_BLOCK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail("read failed: %s" % os.strerror(e.errno or errno.EIO))
            return
        if not data:
            self._fail("device hung up")
            return
        self.rx += len(data)
        d = self._deframer
        mv = memoryview(data)
        off = 0
        # Each pass takes at least one byte (after next_frame says None the deframer
        # has room), so this ends within len(data) passes.
        while True:
            while True:
                p = d.next_frame()
                if p is None:
                    break
                self._packets.append(p)
            if off >= len(data):
                break
            off += d.receive_data(mv[off:])
        if self._packets:
            self._wake()
            if len(self._packets) >= RX_QUEUE:
                self._stop_reading()

    def _wake(self):
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    async def recv(self):
        """The next packet; ConnectionError once the device is gone or the port closed."""
        while True:
            if self._packets:
                p = self._packets.popleft()
                if len(self._packets) < RX_QUEUE // 2:
                    self._start_reading()
                return p
            if self.error is not None:
                raise ConnectionError("%s: %s" % (self.name, self.error))
            w = self._loop.create_future()
            self._waiters.append(w)
            try:
                await w
            finally:
                if w in self._waiters:
                    self._waiters.remove(w)

    # --- sending ------------------------------------------------------------------------

    async def send(self, packet):
        if self.error is not None:
            raise ConnectionError("%s: %s" % (self.name, self.error))
        frame = framing.encode_frame(packet, self.mtu)
        mv = memoryview(frame)
        # One frame at a time: two senders' bytes must not interleave on the line.
        async with self._wlock:
            off = 0
            while off < len(frame):
                if self.error is not None:
                    raise ConnectionError("%s: %s" % (self.name, self.error))
                try:
                    off += os.write(self._fd, mv[off:])
                except (BlockingIOError, InterruptedError):
                    await self._wait_writable()
                except OSError as e:
                    self._fail("write failed: %s" % os.strerror(e.errno or errno.EIO))
                    raise ConnectionError("%s: %s" % (self.name, self.error))
            self.tx += len(frame)

    async def _wait_writable(self):
        fut = self._loop.create_future()
        self._writable = fut
        self._loop.add_writer(self._fd, lambda: fut.done() or fut.set_result(None))
        try:
            await asyncio.wait_for(fut, SEND_TIMEOUT)
        except asyncio.TimeoutError:
            self._fail("the line took nothing for %d s" % SEND_TIMEOUT)
        finally:
            self._writable = None
            # After close() the fd number may already belong to a new opening.
            if self.ser is not None:
                self._loop.remove_writer(self._fd)

    # --- the end ------------------------------------------------------------------------

    def _fail(self, why):
        if self.error is not None:
            return
        self.error = why
        self._stop_reading()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)   # the sender sees self.error and raises
        self._wake()
        self.gone.set()

    def close(self):
        """Idempotent; wakes every recv/send waiting on this port with ConnectionError."""
        if self.error is None:
            self._fail("closed")
        self._packets.clear()
        if self.ser is not None:
            try:
                self._loop.remove_writer(self._fd)
            except (ValueError, OSError):
                pass
            try:
                self.ser.close()
            except OSError:
                pass
            self.ser = None


def _same_device(path, fd):
    """True while `path` still names the device open on fd (a USB adapter that is
    unplugged and plugged again becomes a new device, maybe behind the same name)."""
    try:
        st = os.stat(path)
        return st.st_rdev == os.fstat(fd).st_rdev
    except OSError:
        return False


class SerialListener:
    """Opens `device` and calls `await on_port(port)` for each opening, one at a time.

    When the device goes away the port fails (recv/send raise ConnectionError) and on_port
    is expected to return; the listener then polls for the device, with a backoff from
    min_backoff doubling to max_backoff, and hands out a new port when it is back, until
    close(). Counters: opens (ports handed out), open_failures.
    """

    def __init__(self, device, baud=DEFAULT_BAUD, on_port=None, mtu=DEFAULT_MTU,
                 min_backoff=MIN_BACKOFF, max_backoff=MAX_BACKOFF,
                 check_interval=CHECK_INTERVAL):
        if on_port is None:
            raise ValueError("on_port is required: it runs one channel per port")
        self.device = device
        self.baud = baud
        self.on_port = on_port
        self.mtu = mtu
        self.name = "serial:" + device
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.check_interval = check_interval
        self.opens = 0
        self.open_failures = 0
        self.port = None
        self._closing = False
        self._task = None

    def start(self):
        """Runs the listener as a task on the running loop; returns the task."""
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())
        return self._task

    def _open(self):
        ser = serial.Serial()
        ser.port = self.device
        ser.baudrate = self.baud
        ser.timeout = 0
        ser.write_timeout = 0
        # Two programs reading one line would each get half the bytes.
        ser.exclusive = True
        ser.open()
        return ser

    async def run(self):
        backoff = self.min_backoff
        while not self._closing:
            try:
                ser = self._open()
            except (OSError, ValueError) as e:
                self.open_failures += 1
                if self.open_failures == 1 or backoff >= self.max_backoff:
                    log.debug("serial %s not available: %s", self.device, e)
                await self._pause(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                continue
            port = SerialPacketPort(ser, self.name, self.mtu)
            self.port = port
            self.opens += 1
            log.info("serial %s open (%d baud)", self.device, self.baud)
            opened = asyncio.get_running_loop().time()
            try:
                await self._serve(port)
            finally:
                port.close()
                self.port = None
            log.info("serial %s closed: %s", self.device, port.error)
            if asyncio.get_running_loop().time() - opened >= self.max_backoff:
                backoff = self.min_backoff
            elif not self._closing:
                # A device that opens but fails at once must not be reopened in a tight loop.
                await self._pause(backoff)
                backoff = min(self.max_backoff, backoff * 2)

    async def _serve(self, port):
        job = asyncio.ensure_future(self.on_port(port))
        gone = asyncio.ensure_future(port.gone.wait())
        try:
            # Also watch the device node while the caller runs its channel: a removed or
            # replaced node does not always make reads fail at once. Bounded: each pass
            # waits check_interval or ends the loop.
            while not job.done():
                await asyncio.wait([job, gone], timeout=self.check_interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                if job.done():
                    break
                if port.error is None and not _same_device(self.device, port.fileno()):
                    port._fail("device removed")
                if port.error is not None:
                    try:
                        await asyncio.wait_for(asyncio.shield(job), GRACE)
                    except asyncio.TimeoutError:
                        log.warning("%s: on_port still running %.0f s after its port "
                                    "failed; cancelling it", self.name, GRACE)
                    break
        finally:
            gone.cancel()
            await end_port_job(job, self.name)

    async def _pause(self, seconds):
        # close() interrupts the wait through the task's cancellation.
        await asyncio.sleep(seconds)

    def close(self):
        """Stops the listener and closes the current port."""
        self._closing = True
        if self.port is not None:
            self.port.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait_closed(self):
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
