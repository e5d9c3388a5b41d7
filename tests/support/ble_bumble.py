"""A BLE link on bumble's virtual controllers: no radio, real HCI, L2CAP, ATT and GATT.

One LocalLink joins a central controller (the anchor's) and one peripheral controller per
rover. Everything bumble runs in one asyncio loop on a background thread (a LocalLink
delivers between controllers with call_soon on that loop); the anchor side can live in
that loop or in any other (anchor.links.ble_port bridges), and the rover side is blocking, as
on the device:

    with BumblePair(mtu=247) as pair:
        # rover: blocking, in its own thread (GattPeripheralLink waits for the central)
        rover_port = GattPeripheralLink(pair.rover, accept_timeout_ms=10000)
        # anchor, in any event loop:
        port = await pair.connect_central()             # one GattCentralLink, or
        scanner = BleScanner(on_port=..., backend=pair.central_backend(),
                             min_backoff=0.05)          # the listener, with reconnects

Both have to run at once (the rover advertises only while it waits in accept): start the
rover end in a thread, or submit the anchor end with pair.submit(coro).

Differences from the air, on purpose or from bumble:
- The virtual controller sends no scan responses (it repeats the advertising data), so the
  rover advertises with an extended advertising set that holds the flags, the service UUID
  and the name together; aioble on the device puts the name in the scan response.
- acl_length (default 251) is the controller's LE ACL buffer size: 251 is a link with data
  length extension (one ATT packet per link-layer PDU at MTU 247), 27 the LE default.
- bumble's host queues outgoing ACL data without limit; both adapters wait while it holds
  more than the controller's buffers (anchor.links.ble_port.wait_acl_room), as a real stack would.
- Nothing is ever lost on the LocalLink. Packets can only be dropped at a full receive
  queue of a port (counted: port.dropped on the anchor, adapter.dropped on the rover).
"""
import asyncio
import collections
import logging
import threading

from anchor.links.ble_port import (
    BumbleCentralAdapter, BumbleCentralBackend, GattCentralLink, wait_acl_room)
from anchor_core import gatt

log = logging.getLogger(__name__)

_ENOTCONN = 107

CENTRAL_ADDRESS = "F0:F0:F0:F0:F0:F0"


def _rover_address(i):
    return ":".join(["%02X" % (0xC1 + i)] * 6)


class BumblePair:
    """The anchor's central and one or more rovers' peripherals on one virtual LocalLink.

    pair.rover (pair.rovers[i]): the rover's BumblePeripheralAdapter, for GattPeripheralLink.
    pair.central_adapter(): a BumbleCentralAdapter to the first rover, for GattCentralLink.
    pair.central_backend(): the BleScanner backend (scans and connects over bumble).
    pair.run(coro, timeout): runs coro on the bumble loop from another thread; returns its
    result. pair.submit(coro): the same without waiting (a concurrent.futures.Future).
    """

    def __init__(self, mtu=gatt.ATT_MTU, rover_ids=("test",), acl_length=251):
        self.mtu = mtu
        self.rover_ids = list(rover_ids)
        self.acl_length = acl_length
        self.loop = None
        self.rovers = []
        self._thread = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def rover(self):
        return self.rovers[0]

    def start(self):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main():
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()

        self._thread = threading.Thread(target=main, name="bumble", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("bumble loop did not start")
        try:
            self.run(self._setup())
        except BaseException:
            self.close()
            raise

    async def _setup(self):
        from bumble.controller import Controller
        from bumble.device import Device
        from bumble.hci import Address
        from bumble.host import Host
        from bumble.link import LocalLink
        from bumble.transport.common import AsyncPipeSink

        self.link = LocalLink()

        def device(name, address):
            controller = Controller(name, link=self.link, public_address=address)
            controller.le_acl_data_packet_length = self.acl_length
            return Device(name=name, address=Address(address),
                          host=Host(controller, AsyncPipeSink(controller)))

        self.central = device("anchor", CENTRAL_ADDRESS)
        await self.central.power_on()
        for i, rover_id in enumerate(self.rover_ids):
            dev = device("rover-%s" % rover_id, _rover_address(i))
            await dev.power_on()
            adapter = BumblePeripheralAdapter(self, dev, gatt.adv_name(rover_id))
            await adapter._setup()
            self.rovers.append(adapter)

    def run(self, coro, timeout=30.0):
        if threading.current_thread() is self._thread:
            raise RuntimeError("pair.run() called on the bumble loop: await instead")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def rover_address(self, i=0):
        return self.rovers[i].address

    def central_adapter(self, i=0, mtu=None):
        return BumbleCentralAdapter(self.central, self.rovers[i].device.random_address,
                                    mtu or self.mtu, loop=self.loop)

    def central_backend(self, mtu=None):
        return BumbleCentralBackend(self.central, mtu or self.mtu, loop=self.loop)

    async def connect_central(self, i=0, mtu=None, rx_queue=128, timeout=10.0):
        """An open GattCentralLink to rover i (its rover end must be accepting)."""
        port = GattCentralLink(self.central_adapter(i, mtu), rx_queue=rx_queue)
        return await asyncio.wait_for(port.open(), timeout)

    async def _shutdown(self):
        # bumble leaves tasks behind (timers, work queues, our feeders): end them here so
        # the loop closes clean.
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def close(self):
        if self.loop is None:
            return
        for adapter in self.rovers:
            try:
                adapter.close()
            except Exception as e:
                log.debug("closing %s: %r", adapter.name, e)
        if self._thread is not None and self._thread.is_alive():
            try:
                self.run(self._shutdown(), 15)
            except Exception as e:
                log.debug("bumble shutdown: %r", e)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_running():
            self.loop.close()
        self.loop = None


class BumblePeripheralAdapter:
    """The rover's peripheral adapter (rover/ble_port.py's interface) over a bumble Device.

    Blocking calls come from the rover's thread; bumble runs on the pair's loop. They meet
    in one threading.Condition guarding two bounded queues:
    - written packets: the GATT write callback (bumble's loop) appends, written() takes;
      when rx_queue packets wait unread, further writes are dropped and counted in dropped;
    - notifications: notify() counts one in and hands it to the loop, where a feeder task
      gives it to bumble and waits for controller room; notify() returns False once
      tx_queue are on their way, and wait_tx() blocks until one is through.
    """

    def __init__(self, pair, device, name, rx_queue=64, tx_queue=16):
        self.pair = pair
        self.device = device
        self.name = name
        self.address = str(device.random_address).split("/")[0]
        self.rx_queue = rx_queue
        self.tx_queue = tx_queue
        self.dropped = 0
        self.writes = 0            # writes of the current connection that reached the server
        self.notified = 0
        self.connections = 0
        self._cv = threading.Condition()
        self._rx = collections.deque()
        self._tx_pending = 0
        self._conn = None          # the current bumble Connection (set on the loop)
        self._connected = False
        self._mtu = gatt.ATT_MTU_MIN
        self._mtu_seen = False
        self._subscribed = False
        self._adv_set = None
        self._feeder = None

    async def _setup(self):
        from bumble.gatt import Characteristic, CharacteristicValue, Service

        # The write callback must stay synchronous: bumble runs each write command in a
        # task of its own, and only a callback that never yields keeps them in order.
        rx = Characteristic(gatt.RX_UUID, Characteristic.Properties.WRITE_WITHOUT_RESPONSE,
                            Characteristic.WRITEABLE, CharacteristicValue(write=self._on_write))
        self._tx_char = Characteristic(gatt.TX_UUID, Characteristic.Properties.NOTIFY,
                                       Characteristic.READABLE, b"")
        self._tx_char.on(self._tx_char.EVENT_SUBSCRIPTION, self._on_subscription)
        self.device.add_service(Service(gatt.SERVICE_UUID, [rx, self._tx_char]))
        self.device.gatt_server.max_mtu = gatt.ATT_MTU
        self._txq = asyncio.Queue()
        self._feeder = asyncio.ensure_future(self._feed())

    # --- the adapter interface (rover thread) ---------------------------------------

    @property
    def connected(self):
        return self._connected

    @property
    def mtu(self):
        return self._mtu

    def accept(self, timeout_ms):
        with self._cv:
            self._rx.clear()
        return self.pair.run(self._accept(timeout_ms / 1000), timeout_ms / 1000 + 10)

    def wait_ready(self, timeout_ms):
        with self._cv:
            self._cv.wait_for(lambda: not self._connected or (self._mtu_seen and self._subscribed),
                              timeout_ms / 1000)

    def notify(self, data):
        with self._cv:
            if not self._connected:
                raise OSError(_ENOTCONN, "not connected")
            if self._tx_pending >= self.tx_queue:
                return False
            self._tx_pending += 1
            conn = self._conn
        self.pair.loop.call_soon_threadsafe(self._txq.put_nowait, (conn, bytes(data)))
        return True

    def wait_tx(self, timeout_ms):
        with self._cv:
            self._cv.wait_for(lambda: self._tx_pending < self.tx_queue or not self._connected,
                              timeout_ms / 1000)

    def written(self, timeout_ms):
        with self._cv:
            self._cv.wait_for(lambda: self._rx or not self._connected, timeout_ms / 1000)
            return self._rx.popleft() if self._rx else None

    def disconnect(self):
        if self._connected:
            try:
                self.pair.run(self._disconnect(), 15)
            except Exception as e:   # the central may have gone at the same moment
                log.debug("%s: disconnect: %r", self.name, e)
        with self._cv:
            self._connected = False
            self._cv.notify_all()

    def close(self):
        """Disconnects; the pair's shutdown ends the feeder."""
        self.disconnect()

    # --- on bumble's loop ------------------------------------------------------------

    async def _accept(self, timeout):
        from bumble.core import AdvertisingData
        from bumble.device import AdvertisingEventProperties, AdvertisingParameters

        loop = asyncio.get_running_loop()
        got = loop.create_future()

        def on_connection(conn):
            if not got.done():
                got.set_result(conn)

        self.device.on(self.device.EVENT_CONNECTION, on_connection)
        try:
            if self._adv_set is None:
                data = bytes(AdvertisingData([
                    (AdvertisingData.FLAGS, bytes([0x06])),   # LE general, no BR/EDR
                    (AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
                     gatt.uuid_bytes(gatt.SERVICE_UUID)),
                    (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
                ]))
                params = AdvertisingParameters(
                    advertising_event_properties=AdvertisingEventProperties(is_connectable=True),
                    primary_advertising_interval_min=20, primary_advertising_interval_max=20)
                self._adv_set = await self.device.create_advertising_set(
                    advertising_parameters=params, advertising_data=data)
            else:
                await self._adv_set.start()
            try:
                conn = await asyncio.wait_for(got, timeout)
            except asyncio.TimeoutError:
                await self._adv_set.stop()
                return False
        finally:
            self.device.remove_listener(self.device.EVENT_CONNECTION, on_connection)
        conn.on(conn.EVENT_DISCONNECTION, lambda *_: self._on_disconnection(conn))
        conn.on(conn.EVENT_CONNECTION_ATT_MTU_UPDATE, lambda: self._on_mtu(conn))
        with self._cv:
            self._conn = conn
            self._connected = True
            self._mtu = conn.att_mtu
            self._mtu_seen = False
            self._subscribed = False
            self.connections += 1
            self._cv.notify_all()
        return True

    async def _disconnect(self):
        conn = self._conn
        if conn is None or conn.handle not in self.device.connections:
            return
        gone = asyncio.get_running_loop().create_future()
        conn.on(conn.EVENT_DISCONNECTION, lambda *_: gone.done() or gone.set_result(None))
        await conn.disconnect()
        await asyncio.wait_for(gone, 10)

    def _on_write(self, conn, value):
        with self._cv:
            if conn is not self._conn or not self._connected:
                return   # a late write from an earlier connection
            self.writes += 1
            if len(self._rx) >= self.rx_queue:
                self.dropped += 1
                return
            self._rx.append(bytes(value))
            self._cv.notify_all()

    def _on_subscription(self, conn, notify_enabled, _indicate_enabled):
        with self._cv:
            if conn is self._conn:
                self._subscribed = notify_enabled
                self._cv.notify_all()

    def _on_mtu(self, conn):
        with self._cv:
            if conn is self._conn:
                self._mtu = conn.att_mtu
                self._mtu_seen = True
                self._cv.notify_all()

    def _on_disconnection(self, conn):
        with self._cv:
            if conn is self._conn:
                self._connected = False
                self._cv.notify_all()

    async def _feed(self):
        # Lives as long as the adapter (close() cancels it); each pass hands one
        # notification to bumble and waits for controller room.
        while True:
            conn, data = await self._txq.get()
            try:
                if conn is self._conn and self._connected:
                    await self.device.notify_subscriber(conn, self._tx_char, data)
                    self.notified += 1
                    await wait_acl_room(conn, 10.0)
            except Exception as e:   # the connection went while we were at it
                log.debug("%s: notify: %r", self.name, e)
            finally:
                with self._cv:
                    self._tx_pending -= 1
                    self._cv.notify_all()
