# The rover's BLE packet port: the rover is a GATT peripheral (hw/gatt.md), the anchor writes
# packets to RX and the rover notifies packets on TX, one packet per ATT PDU.
#
# Two layers, so the port logic runs (and is tested) without a radio:
#
#   GattPeripheralLink   the blocking packet port of docs/links.md; knows nothing of the BLE
#                        library, only the small adapter interface below.
#   AiobleAdapter        that interface over aioble, for MicroPython on the ESP32.
#   (tests/support/ble_bumble.py has the same interface over a bumble virtual controller.)
#
# Adapter interface (all blocking, all bounded by the timeout given):
#
#   adapter.accept(timeout_ms) -> bool   advertise until a central connects; False on timeout
#   adapter.wait_ready(timeout_ms)       after accept: wait (bounded) for the ATT MTU exchange
#                                        and, where the stack reports it, the TX subscription
#   adapter.connected                    True while the current connection is up
#   adapter.mtu                          ATT MTU of the current connection (23 until exchanged)
#   adapter.notify(data) -> bool         hand one notification to the stack (copying it if it
#                                        keeps it past the call): True if taken,
#                                        False if the stack has no room right now; raises
#                                        OSError when there is no connection
#   adapter.wait_tx(timeout_ms)          block until the stack may have room again
#   adapter.written(timeout_ms)          next value the central wrote to RX (bytes), or None
#                                        if none within timeout_ms or the connection is gone
#   adapter.disconnect()                 drop the current connection (the adapter stays usable)
#   adapter.dropped                      writes the adapter itself had to discard (0 if it
#                                        cannot know: aioble drops silently, see below)
#
# How the blocking port lives with aioble's asyncio (AiobleAdapter): the rover firmware is
# blocking code (session, channel, backup loop), and aioble needs its asyncio tasks to run.
# No thread: every blocking adapter call runs the asyncio loop itself, with
# loop.run_until_complete(), until its own operation finishes or times out. aioble's BLE IRQ
# handlers run whether or not the loop runs (they are scheduled callbacks), so connection
# events, MTU exchanges and incoming writes are captured at any time; the loop only has to
# run for them to be handed over, which happens the next time the port blocks. While the
# rover computes (chunking, compressing) nothing is handed over, and aioble's capture queue
# holds only the last 10 writes (_WRITE_CAPTURE_QUEUE_LIMIT; older ones are dropped
# silently). So the anchor must not have more than 10 packets in flight towards a BLE rover:
# the channel's receive window for this port is at most RX_WINDOW packets.
import asyncio

from anchor_core import gatt
from anchor_core.compat import MICROPYTHON
from rover.linkerror import LinkError

try:
    from time import ticks_ms, ticks_diff
except ImportError:
    from time import monotonic

    def ticks_ms():
        return int(monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

_ENOMEM = 12
_ENOTCONN = 107

# ATT (opcode + handle) and L2CAP (length + channel id) headers around every packet.
OVERHEAD = gatt.ATT_HEADER + gatt.L2CAP_HEADER

# Most packets the anchor may have in flight to the rover: aioble's capture queue depth.
RX_WINDOW = 10

# Retries of a notification the stack had no room for, within send_timeout_ms. Only bounds
# the loop; the deadline is what normally ends it.
_SEND_TRIES = 10000


class GattPeripheralLink:
    """The rover's blocking packet port over one BLE connection.

    Construction waits for the anchor to connect (accept_timeout_ms) and for the MTU
    exchange (ready_timeout_ms); mtu is fixed then. A later exchange can only raise the
    MTU, so packets of this size keep fitting. When the connection drops, send and
    recv_into raise LinkError; the rover makes a new port (which advertises again) to
    reconnect.
    """

    def __init__(self, adapter, accept_timeout_ms=60000, ready_timeout_ms=2000,
                 send_timeout_ms=5000):
        self._adapter = adapter
        if not adapter.connected and not adapter.accept(accept_timeout_ms):
            raise LinkError("no anchor connected over BLE within %d ms" % accept_timeout_ms)
        adapter.wait_ready(ready_timeout_ms)
        if not adapter.connected:
            raise LinkError("the anchor disconnected while the BLE link was set up")
        self.mtu = gatt.packet_size(adapter.mtu)
        self.overhead = OVERHEAD
        self.send_timeout_ms = send_timeout_ms
        self.tx = 0
        self.rx = 0
        # Written values longer than the caller's buffer: never passed up cut short.
        self.oversized = 0
        self._closed = False

    @property
    def dropped(self):
        return self._adapter.dropped

    def send(self, packet):
        n = len(packet)
        if n > self.mtu:
            # Stacks cut an oversized notification to MTU-3 without a word (NimBLE, bumble);
            # a cut packet would reach the channel as a damaged one.
            raise ValueError("BLE packet of %d bytes exceeds the port mtu of %d (ATT MTU %d)"
                             % (n, self.mtu, self.mtu + gatt.ATT_HEADER))
        if self._closed:
            raise LinkError("BLE port is closed")
        # Passed as given (bytes, bytearray or memoryview): NimBLE copies it into an mbuf at
        # once; an adapter that queues it copies it itself.
        adapter = self._adapter
        start = ticks_ms()
        for _ in range(_SEND_TRIES):
            try:
                taken = adapter.notify(packet)
            except OSError as e:
                self._lost()
                raise LinkError("BLE link lost while sending: %s" % e)
            if taken:
                self.tx += n + OVERHEAD
                return
            # The stack is out of buffers: give it time to put packets on the air.
            left = self.send_timeout_ms - ticks_diff(ticks_ms(), start)
            if left <= 0:
                break
            adapter.wait_tx(left)
        # A stack that takes nothing for send_timeout_ms is as good as disconnected; the
        # anchor reconnects and the channel resends.
        self._lost()
        raise LinkError("BLE stack took no packet for %d ms" % self.send_timeout_ms)

    def recv_into(self, buf, timeout_ms):
        if len(buf) < self.mtu:
            raise ValueError("receive buffer of %d bytes is smaller than the port mtu %d"
                             % (len(buf), self.mtu))
        if self._closed:
            raise LinkError("BLE port is closed")
        data = self._adapter.written(timeout_ms)
        if data is None:
            if not self._adapter.connected:
                self._lost()
                raise LinkError("the anchor disconnected")
            return 0
        n = len(data)
        if n > len(buf):
            # Cannot happen with a well-behaved central (writes are <= MTU-3); dropping is
            # what the channel expects of a lossy link.
            self.oversized += 1
            return 0
        buf[:n] = data
        self.rx += n + OVERHEAD
        return n

    def close(self):
        if not self._closed:
            self._closed = True
            self._adapter.disconnect()

    def _lost(self):
        self._closed = True
        self._adapter.disconnect()


async def _pause(ms):
    # A coroutine around sleep: MicroPython's sleep() is not one, and run_until_complete
    # takes only coroutines there.
    await asyncio.sleep(ms / 1000)


class AiobleAdapter:
    """The peripheral adapter over aioble (MicroPython, ESP32). See the module comment for
    how its blocking calls drive aioble's asyncio loop.

    rover_id names the rover in the advertisement ("anchor-rover-<id>"). Construction
    registers the GATT service and sets the ATT MTU the rover answers exchanges with.
    """

    def __init__(self, rover_id, interval_us=100000, mtu=gatt.ATT_MTU, loop=None):
        import aioble
        import bluetooth

        self._aioble = aioble
        self.name = gatt.adv_name(rover_id)
        self.interval_us = interval_us
        self._mtu = mtu
        self._uuid = bluetooth.UUID(gatt.SERVICE_UUID)
        service = aioble.Service(self._uuid)
        self._tx = aioble.Characteristic(service, bluetooth.UUID(gatt.TX_UUID), notify=True)
        # capture: every write is queued with its value (otherwise only the last value is
        # kept); max_len: the GATT database holds 20 bytes per value unless told otherwise.
        self._rx = aioble.BufferedCharacteristic(
            service, bluetooth.UUID(gatt.RX_UUID), write_no_response=True, capture=True,
            max_len=gatt.MAX_PACKET)
        aioble.register_services(service)
        aioble.config(mtu=mtu)
        if loop is None:
            # MicroPython has one loop and one task queue: aioble's own tasks are in it.
            loop = asyncio.get_event_loop() if MICROPYTHON else asyncio.new_event_loop()
        self._loop = loop
        self._conn = None
        # aioble's capture queue discards the oldest write when full and says nothing.
        self.dropped = 0

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    @property
    def connected(self):
        return self._conn is not None and self._conn.is_connected()

    @property
    def mtu(self):
        conn = self._conn
        return (conn.mtu if conn is not None and conn.mtu else gatt.ATT_MTU_MIN)

    def accept(self, timeout_ms):
        try:
            conn = self._run(self._aioble.advertise(
                self.interval_us, name=self.name, services=[self._uuid],
                timeout_ms=max(1, timeout_ms)))
        except asyncio.TimeoutError:
            return False
        self._conn = conn
        return True

    def wait_ready(self, timeout_ms):
        conn = self._conn
        if conn is None or conn.mtu:
            return   # the central has exchanged the MTU already (BlueZ does on connect)
        # Otherwise ask ourselves; a central that exchanges at the same time or refuses
        # leaves 23, which is safe, only slower.
        try:
            self._run(conn.exchange_mtu(self._mtu, timeout_ms=max(1, timeout_ms)))
        except (OSError, ValueError, asyncio.TimeoutError, self._aioble.DeviceDisconnectedError):
            pass

    def notify(self, data):
        conn = self._conn
        if conn is None or not conn.is_connected():
            raise OSError(_ENOTCONN)
        try:
            self._tx.notify(conn, data)
        except OSError as e:
            # NimBLE: no mbuf for the notification. Anything else (ENOTCONN, ...) means the
            # connection is gone.
            if e.args and e.args[0] == _ENOMEM:
                return False
            raise
        return True

    def wait_tx(self, timeout_ms):
        # NimBLE frees mbufs as connection events go by and tells nobody; one short sleep,
        # with the loop running so aioble's tasks run too, is all there is to wait on.
        self._run(_pause(min(timeout_ms, 10)))

    def written(self, timeout_ms):
        conn = self._conn
        if conn is None:
            return None
        try:
            return self._run(self._written(conn, max(1, timeout_ms)))
        except (asyncio.TimeoutError, self._aioble.DeviceDisconnectedError):
            return None

    async def _written(self, conn, timeout_ms):
        # timeout(): a disconnection ends the wait at once (DeviceDisconnectedError).
        with conn.timeout(timeout_ms):
            # Writes captured from an earlier connection may still be queued: skip them.
            # The capture queue holds at most 10, so this ends.
            for _ in range(RX_WINDOW + 1):
                who, data = await self._rx.written()
                if who is conn:
                    return bytes(data)
        return None

    def disconnect(self):
        conn = self._conn
        self._conn = None
        if conn is not None and conn.is_connected():
            try:
                self._run(conn.disconnect(timeout_ms=2000))
            except (OSError, asyncio.TimeoutError, self._aioble.DeviceDisconnectedError):
                pass

    def close(self):
        """Disconnects and turns the radio off; the adapter cannot be used afterwards."""
        self.disconnect()
        self._aioble.stop()
