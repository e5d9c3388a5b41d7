"""The anchor's BLE packet ports: the anchor is a GATT central (hw/gatt.md).

It writes packets to a rover's RX characteristic (Write Without Response) and receives the
rover's packets as TX notifications, one packet per ATT PDU.

Layers:

    GattCentralLink       the async packet port of docs/links.md over one connection; knows
                          nothing of the BLE library, only the adapter interface below.
    BleScanner            the listener: scans for rovers advertising the service, connects,
                          hands each new port to a handler, reconnects with bounded backoff.
                          The scanning and the adapters come from a backend:
    BleakBackend          BleakScanner + BleakAdapter (BleakClient), BlueZ on the anchor.
    BumbleCentralBackend  bumble Device scanning + BumbleCentralAdapter, for tests on
                          bumble's virtual controllers (tests/support/ble_bumble.py).

Adapter interface (one connection to one rover):

    await adapter.connect()          connect, exchange the ATT MTU, find RX and TX
    adapter.mtu                      the negotiated ATT MTU (int)
    await adapter.write(data)        one Write Without Response to RX; returns once the stack
                                     has queued it, waiting (the caller bounds it) while the
                                     stack has no room
    await adapter.start_notify(cb)   subscribe to TX; cb(data: bytes) per notification, called
                                     in the event loop that called start_notify
    adapter.on_disconnect(cb)        cb() once when the connection drops (from either side),
                                     called in the loop that registered it
    await adapter.disconnect()
    adapter.is_connected
    adapter.address

bleak and bumble are imported only by the classes that use them: bumble is a test
dependency, and the port logic must not need either.
"""
import asyncio
import logging
import time

from anchor_core import gatt

from anchor.links.chanlink import end_port_job

log = logging.getLogger(__name__)

# Bytes the port adds per packet on the air: the ATT header (opcode 1 + attribute handle 2)
# and the L2CAP basic header (length 2 + channel id 2). Link-layer framing and the MIC of
# an encrypted link are below that and not counted.
OVERHEAD = gatt.ATT_HEADER + gatt.L2CAP_HEADER

_CLOSED = None   # queue sentinel: the link is gone

RX_QUEUE = 128        # notifications received and not yet taken by recv(); more are dropped
SEND_TIMEOUT = 10.0   # a stack that takes no write for this long has lost the rover
MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
GRACE = 5.0           # time on_port gets to notice its port is gone before it is cancelled


class GattCentralLink:
    """The anchor's async packet port over one GATT connection to a rover.

    port.tx and port.rx count bytes on the air: packets plus OVERHEAD each. port.dropped
    counts notifications discarded because the receive queue (rx_queue packets) was full:
    notifications come without flow control, and the channel resends what was lost.
    port.gone is set once the connection is down; port.error says why.
    """

    def __init__(self, adapter, name=None, rx_queue=RX_QUEUE, send_timeout=SEND_TIMEOUT):
        self._adapter = adapter
        self.name = name or "ble:%s" % adapter.address
        self.overhead = OVERHEAD
        self.mtu = 0
        self.tx = 0
        self.rx = 0
        self.dropped = 0
        self.error = None
        self.send_timeout = send_timeout
        self.gone = asyncio.Event()
        self.opened_at = None
        # Bounded by hand (rx_queue packets), so the end-of-link sentinel always fits.
        self._queue = asyncio.Queue()
        self._queue_limit = rx_queue
        self._closed = False
        self._send_lock = asyncio.Lock()
        self._disconnect_task = None

    async def open(self):
        """Connects and subscribes; the caller bounds it (asyncio.wait_for). Returns self."""
        adapter = self._adapter
        adapter.on_disconnect(self._on_disconnect)
        try:
            await adapter.connect()
            self.mtu = gatt.packet_size(adapter.mtu)
            await adapter.start_notify(self._on_packet)
        except BaseException as e:
            self._fail("setup failed: %r" % e)
            raise
        if not adapter.is_connected:
            self._fail("disconnected during setup")
            raise ConnectionError("%s: disconnected during setup" % self.name)
        self.opened_at = time.monotonic()
        return self

    async def send(self, packet):
        n = len(packet)
        if n > self.mtu:
            # Stacks cut an oversized PDU to MTU-3 without a word; the channel would get a
            # damaged packet.
            raise ValueError("%s: packet of %d bytes exceeds the port mtu of %d (ATT MTU %d)"
                             % (self.name, n, self.mtu, self.mtu + gatt.ATT_HEADER))
        if self._closed:
            raise ConnectionError("%s: %s" % (self.name, self.error))
        data = bytes(packet)
        # One write at a time, in the order send() was called (asyncio.Lock wakes in FIFO).
        async with self._send_lock:
            try:
                await asyncio.wait_for(self._adapter.write(data), self.send_timeout)
            except asyncio.TimeoutError:
                self._fail("the BLE stack took no packet for %.1f s" % self.send_timeout)
                raise ConnectionError("%s: %s" % (self.name, self.error)) from None
            except Exception as e:
                self._fail("write failed: %r" % e)
                raise ConnectionError("%s: %s" % (self.name, self.error)) from e
        self.tx += n + OVERHEAD

    async def recv(self):
        packet = await self._queue.get()
        if packet is _CLOSED:
            self._queue.put_nowait(_CLOSED)   # for the next caller, too
            raise ConnectionError("%s: %s" % (self.name, self.error))
        return packet

    def close(self):
        """Drops the connection; recv and send raise ConnectionError from now on."""
        self._fail("closed")

    def _fail(self, why):
        if self._closed:
            return
        self._closed = True
        self.error = why
        # Packets still queued are wanted by nobody once the port is closed here.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)
        if self._adapter.is_connected:
            self._disconnect_task = asyncio.ensure_future(self._disconnect())
        else:
            self.gone.set()

    async def _disconnect(self):
        try:
            await asyncio.wait_for(self._adapter.disconnect(), self.send_timeout)
        except Exception as e:   # already gone, or the stack is: either way it is down
            log.debug("%s: disconnect: %r", self.name, e)
        finally:
            self.gone.set()

    def _on_packet(self, data):
        if self._closed:
            return
        if self._queue.qsize() >= self._queue_limit:
            self.dropped += 1
            return
        self._queue.put_nowait(bytes(data))
        self.rx += len(data) + OVERHEAD

    def _on_disconnect(self):
        # The rover (or the radio) dropped the link: what arrived before still goes up,
        # then recv raises.
        if not self._closed:
            self._closed = True
            self.error = "disconnected"
            self._queue.put_nowait(_CLOSED)
        self.gone.set()


class BleScanner:
    """Listener for BLE rovers: `await on_port(port)` runs for each connected rover, several
    rovers at once.

    A rover is connected when it advertises gatt.SERVICE_UUID, passes the allow list
    (addresses or advertised names, any case; None allows all) and is not connected
    already. When its port is gone, on_port is expected to return (it is cancelled GRACE
    seconds later); when on_port returns, the port is closed. The next attempt on that
    rover waits a backoff that doubles from min_backoff to max_backoff, back to
    min_backoff after a connection that lasted stable_after seconds; a failed connection
    attempt doubles it too. A failed scan is retried after the same kind of backoff.
    Counters: connects, connect_failures, scan_failures.
    """

    def __init__(self, on_port=None, allow=None, backend=None, scan_timeout=10.0,
                 connect_timeout=20.0, min_backoff=MIN_BACKOFF, max_backoff=MAX_BACKOFF,
                 stable_after=30.0, rx_queue=RX_QUEUE):
        if on_port is None:
            raise ValueError("on_port is required: it runs one channel per port")
        self.on_port = on_port
        # allow: addresses or names, or a function giving them now (the paired rovers)
        self._allow = allow if allow is None or callable(allow) else {a.lower() for a in allow}
        self._backend = backend if backend is not None else BleakBackend()
        self.scan_timeout = scan_timeout
        self.connect_timeout = connect_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.stable_after = stable_after
        self.rx_queue = rx_queue
        self.ports = {}          # address -> live port
        self.connects = 0
        self.connect_failures = 0
        self.scan_failures = 0
        self._retry_at = {}      # address -> time.monotonic() of the next allowed attempt
        self._backoff = {}       # address -> the backoff after the next drop or failure
        self._serving = set()
        self._closing = False
        self._task = None

    def start(self):
        """Runs the listener as a task on the running loop; returns the task."""
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())
        return self._task

    async def run(self):
        # Ends with close(); every pass waits at most scan_timeout + connect_timeout, or a
        # backoff after a failed scan.
        backoff = self.min_backoff
        while not self._closing:
            try:
                found = await self._backend.scan(self._wanted, self.scan_timeout)
            except Exception as e:   # adapter powered off, BlueZ restarting, ...
                self.scan_failures += 1
                log.warning("BLE scan failed (retry in %.1f s): %r", backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = self.min_backoff
            if found is not None and not self._closing:
                await self._connect(*found)

    def close(self):
        """Stops scanning and closes every port."""
        self._closing = True
        for port in list(self.ports.values()):
            port.close()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def wait_closed(self):
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._serving:
            await asyncio.wait(list(self._serving), timeout=GRACE + 5.0)

    def _allowed(self, address, name):
        allow = self._allow
        if allow is None:
            return True
        if callable(allow):
            allow = {a.lower() for a in allow()}
        return address.lower() in allow or (name is not None and name.lower() in allow)

    def _wanted(self, address, name):
        return (self._allowed(address, name) and address not in self.ports
                and time.monotonic() >= self._retry_at.get(address, 0.0))

    def _schedule_retry(self, address, lasted):
        if lasted is not None and lasted >= self.stable_after:
            delay = self.min_backoff
        else:
            delay = self._backoff.get(address, self.min_backoff)
        self._retry_at[address] = time.monotonic() + delay
        self._backoff[address] = min(delay * 2, self.max_backoff)

    async def _connect(self, address, handle):
        port = GattCentralLink(self._backend.adapter(handle), name="ble:%s" % address,
                               rx_queue=self.rx_queue)
        try:
            await asyncio.wait_for(port.open(), self.connect_timeout)
        except Exception as e:   # timeout, stack error, a device without the service
            self.connect_failures += 1
            log.info("ble:%s: connection failed: %r", address, e)
            port.close()
            self._schedule_retry(address, None)
            return
        self.ports[address] = port
        self.connects += 1
        log.info("%s connected, ATT MTU %d", port.name, port.mtu + gatt.ATT_HEADER)
        task = asyncio.ensure_future(self._serve(address, port))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, address, port):
        job = asyncio.ensure_future(self.on_port(port))
        gone = asyncio.ensure_future(port.gone.wait())
        try:
            await asyncio.wait([job, gone], return_when=asyncio.FIRST_COMPLETED)
            if not job.done():
                try:
                    await asyncio.wait_for(asyncio.shield(job), GRACE)
                except asyncio.TimeoutError:
                    log.warning("%s: on_port still running %.0f s after its port went; "
                                "cancelling it", port.name, GRACE)
                except Exception:
                    pass
        finally:
            gone.cancel()
            await end_port_job(job, port.name)
            port.close()
            try:
                await asyncio.wait_for(port.gone.wait(), port.send_timeout)
            except asyncio.TimeoutError:
                pass
            if self.ports.get(address) is port:
                del self.ports[address]
            self._schedule_retry(address, time.monotonic() - port.opened_at)
            log.info("%s gone: %s", port.name, port.error)


# --- bleak (BlueZ) ------------------------------------------------------------------------

class BleakAdapter:
    """The adapter over bleak's BleakClient.

    mtu: BlueZ's BleakClient.mtu_size is always 23 unless a private call is made; the RX
    characteristic's max_write_without_response_size (BlueZ >= 5.62: the negotiated MTU - 3)
    is the public way to the real value, and is preferred when it is larger. BlueZ
    exchanges the MTU by itself on connection.
    """

    def __init__(self, device, client_factory=None, timeout=20.0):
        if client_factory is None:
            from bleak import BleakClient as client_factory
        self.address = getattr(device, "address", device)
        # services: only ours is resolved, which shortens connecting on BlueZ.
        self._client = client_factory(device, self._disconnected, [gatt.SERVICE_UUID],
                                      timeout=timeout)
        self._rx_char = None
        self._callbacks = []
        self._notified = False

    @property
    def is_connected(self):
        return self._client.is_connected

    @property
    def mtu(self):
        size = self._client.mtu_size
        if self._rx_char is not None:
            size = max(size, self._rx_char.max_write_without_response_size + gatt.ATT_HEADER)
        return max(gatt.ATT_MTU_MIN, size)

    def on_disconnect(self, cb):
        self._callbacks.append(cb)

    async def connect(self):
        await self._client.connect()
        rx = self._client.services.get_characteristic(gatt.RX_UUID)
        tx = self._client.services.get_characteristic(gatt.TX_UUID)
        if rx is None or tx is None:
            raise ConnectionError("%s has no anchor link service" % self.address)
        self._rx_char = rx

    async def write(self, data):
        # BlueZ queues the ATT command and answers the D-Bus call; bleak retries on
        # InProgress. Awaiting the answer is the flow control.
        await self._client.write_gatt_char(self._rx_char, data, response=False)

    async def start_notify(self, cb):
        await self._client.start_notify(gatt.TX_UUID, lambda _char, data: cb(bytes(data)))

    async def disconnect(self):
        await self._client.disconnect()

    def _disconnected(self, _client):
        # bleak schedules this in the event loop.
        if self._notified:
            return
        self._notified = True
        for cb in self._callbacks:
            cb()


class BleakBackend:
    """Scanning and connecting with bleak (BlueZ). The factories are for tests."""

    def __init__(self, scanner_factory=None, client_factory=None, connect_timeout=20.0):
        if scanner_factory is None:
            from bleak import BleakScanner as scanner_factory
        self._scanner_factory = scanner_factory
        self._client_factory = client_factory
        self._connect_timeout = connect_timeout

    async def scan(self, wanted, timeout):
        """Scans until a rover for which wanted(address, name) is true shows up; returns
        (address, BLEDevice), or None after timeout seconds."""
        found = asyncio.get_running_loop().create_future()

        def detected(device, adv):
            if found.done():
                return
            # The service filter is a hint to BlueZ, not a guarantee: check.
            if gatt.SERVICE_UUID not in [u.lower() for u in (adv.service_uuids or ())]:
                return
            # The name is in the scan response, which may come after the first report.
            if wanted(device.address, adv.local_name or device.name):
                found.set_result((device.address, device))

        scanner = self._scanner_factory(detected, service_uuids=[gatt.SERVICE_UUID])
        await scanner.start()
        try:
            return await asyncio.wait_for(found, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            # Connecting while scanning fails on many BlueZ controllers.
            await scanner.stop()

    def adapter(self, device):
        return BleakAdapter(device, self._client_factory, self._connect_timeout)


# --- bumble (virtual controllers in tests) ----------------------------------------------

class _Bridge:
    """Runs calls on the bumble device's loop from whichever loop the port lives in.

    bumble objects belong to one event loop (a LocalLink delivers between controllers with
    call_soon on it); the anchor code under test may run in another loop, in another thread.
    loop None: the same loop, nothing to bridge.
    """

    def __init__(self, loop):
        self.loop = loop

    def _here(self):
        return self.loop is None or asyncio.get_running_loop() is self.loop

    async def call(self, fn, *args):
        if self._here():
            return await fn(*args)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(fn(*args), self.loop))

    def deliver(self, cb):
        """cb wrapped to run in the calling loop when bumble calls it on its own."""
        if self._here():
            return cb
        here = asyncio.get_running_loop()
        return lambda *args: here.call_soon_threadsafe(cb, *args)


async def wait_acl_room(connection, timeout):
    """Waits until bumble's host queue for ACL data has no more packets than the controller
    has buffers, i.e. a real stack would take another packet.

    bumble queues host-to-controller packets without limit; without this, a sender would
    never wait, and memory would grow with every packet the controller has not taken.
    Returns False if the connection is gone.
    """
    queue = connection.data_packet_queue
    if queue is None:
        return False
    if queue.pending < queue.max_in_flight:
        return True
    room = asyncio.get_running_loop().create_future()

    def on_flow():
        if not room.done() and queue.pending < queue.max_in_flight:
            room.set_result(True)

    def on_gone(*_):
        if not room.done():
            room.set_result(False)

    queue.on("flow", on_flow)
    connection.on(connection.EVENT_DISCONNECTION, on_gone)
    try:
        return await asyncio.wait_for(room, timeout)
    finally:
        queue.remove_listener("flow", on_flow)
        connection.remove_listener(connection.EVENT_DISCONNECTION, on_gone)


class BumbleCentralAdapter:
    """The adapter over a bumble Device acting as central (tests: virtual controllers).

    device: a powered-on bumble Device; address: the rover's (bumble Address or str);
    mtu: the ATT MTU to request; loop: the loop the device lives in, if not the caller's.
    """

    def __init__(self, device, address, mtu=gatt.ATT_MTU, loop=None, timeout=10.0):
        self._device = device
        self._peer_address = address
        self.address = str(address).split("/")[0]
        self._want_mtu = mtu
        self._bridge = _Bridge(loop)
        self._timeout = timeout
        self._connection = None
        self._peer = None
        self._rx = None
        self._tx = None
        self.mtu = gatt.ATT_MTU_MIN
        self._callbacks = []
        self._notified = False

    @property
    def is_connected(self):
        conn = self._connection
        return conn is not None and not self._notified and conn.handle in self._device.connections

    def on_disconnect(self, cb):
        self._callbacks.append(self._bridge.deliver(cb))

    async def connect(self):
        await self._bridge.call(self._connect)

    async def _connect(self):
        from bumble.core import UUID
        from bumble.device import Peer

        conn = await self._device.connect(self._peer_address, timeout=self._timeout)
        self._connection = conn
        conn.on(conn.EVENT_DISCONNECTION, self._on_disconnection)
        peer = Peer(conn)
        self._peer = peer
        self.mtu = await peer.request_mtu(self._want_mtu)
        services = await peer.discover_service(gatt.SERVICE_UUID)
        if not services:
            raise ConnectionError("%s has no anchor link service" % self.address)
        chars = await peer.discover_characteristics(uuids=[gatt.RX_UUID, gatt.TX_UUID],
                                                    service=services[0])
        by_uuid = {c.uuid: c for c in chars}
        self._rx = by_uuid.get(UUID(gatt.RX_UUID))
        self._tx = by_uuid.get(UUID(gatt.TX_UUID))
        if self._rx is None or self._tx is None:
            raise ConnectionError("%s lacks the RX or TX characteristic" % self.address)

    async def write(self, data):
        if not await self._bridge.call(self._write, data):
            raise ConnectionError("%s: disconnected" % self.address)

    async def _write(self, data):
        if not self.is_connected:
            return False
        await self._rx.write_value(data, with_response=False)
        return await wait_acl_room(self._connection, self._timeout)

    async def start_notify(self, cb):
        deliver = self._bridge.deliver(cb)
        await self._bridge.call(self._peer.subscribe, self._tx, deliver)

    async def disconnect(self):
        await self._bridge.call(self._disconnect)

    async def _disconnect(self):
        conn = self._connection
        if conn is None or conn.handle not in self._device.connections:
            return
        gone = asyncio.get_running_loop().create_future()
        conn.once(conn.EVENT_DISCONNECTION, lambda *_: gone.done() or gone.set_result(None))
        await conn.disconnect()
        await asyncio.wait_for(gone, self._timeout)

    def _on_disconnection(self, *_):
        if self._notified:
            return
        self._notified = True
        for cb in self._callbacks:
            cb()


class BumbleCentralBackend:
    """Scanning and connecting with a bumble Device (the BleScanner backend for tests)."""

    def __init__(self, device, mtu=gatt.ATT_MTU, loop=None, timeout=10.0):
        self._device = device
        self._mtu = mtu
        self._loop = loop
        self._bridge = _Bridge(loop)
        self._timeout = timeout

    async def scan(self, wanted, timeout):
        # wanted() reads the scanner's state, so it runs in the caller's loop.
        here = asyncio.get_running_loop()
        found = here.create_future()

        def consider(address, name, obj):
            if not found.done() and wanted(address, name):
                found.set_result((address, obj))

        deliver = self._bridge.deliver(consider)
        try:
            await self._bridge.call(self._start_scan, deliver)
            return await asyncio.wait_for(found, timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            await self._bridge.call(self._stop_scan)

    async def _start_scan(self, deliver):
        from bumble.core import AdvertisingData

        want = gatt.uuid_bytes(gatt.SERVICE_UUID)

        def on_advertisement(adv):
            uuids = (adv.data.get_all(AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS)
                     + adv.data.get_all(
                         AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS))
            if not any(u.uuid_bytes == want for group in uuids for u in group):
                return
            name = adv.data.get(AdvertisingData.COMPLETE_LOCAL_NAME)
            deliver(str(adv.address).split("/")[0], name, adv.address)

        self._listener = on_advertisement
        self._device.on(self._device.EVENT_ADVERTISEMENT, on_advertisement)
        await self._device.start_scanning(filter_duplicates=False)

    async def _stop_scan(self):
        listener = getattr(self, "_listener", None)
        if listener is not None:
            self._device.remove_listener(self._device.EVENT_ADVERTISEMENT, listener)
            self._listener = None
        if self._device.scanning:
            await self._device.stop_scanning()

    def adapter(self, address):
        return BumbleCentralAdapter(self._device, address, self._mtu, self._loop, self._timeout)
