"""BLE packet ports: the rover's peripheral end (blocking; CPython and MicroPython) and the
anchor's central end (asyncio), over bumble's virtual controllers (ble_bumble.py), plus the
thin bleak and aioble adapters against fakes (no BlueZ, no ESP32 here).

Findings recorded here (and in hw/gatt.md):
- The bumble stack over a LocalLink loses nothing: every write command reaches the rover's
  GATT server and every notification the anchor's client. A burst faster than the other
  end reads is dropped at that end's port receive queue and counted there
  (BumblePeripheralAdapter.dropped, GattCentralLink.dropped); in a 200-packet burst both
  ways the anchor-to-rover direction drops (the rover is busy sending and has 64 slots),
  the rover-to-anchor direction does not (the rover's notifications are paced by the stack).
- On the ESP32, aioble keeps the last 10 writes and drops older ones without a count; the
  channel must keep its window towards a BLE rover at or under rover.ble_port.RX_WINDOW.

The aioble section (fake aioble and bluetooth modules, and the test_aioble_* tests) runs
under pytest and, through test_aioble_under_micropython, under the MicroPython unix port.
"""
import asyncio
import sys
from collections import deque

try:
    import pytest
except ImportError:      # MicroPython runs the aioble section: see mpy_main()
    pytest = None

from anchor_core import gatt
from rover.link import LinkError
from rover.ble_port import GattPeripheralLink, AiobleAdapter, RX_WINDOW

if pytest is not None:
    parametrize = pytest.mark.parametrize
else:
    def parametrize(*_args, **_kwargs):
        return lambda f: f


def pattern(seed, n):
    return bytes((seed * 7 + i) % 256 for i in range(n))


# --- a fake aioble (and bluetooth) module, portable to MicroPython ------------------------

_ENOMEM = 12
_ENOTCONN = 107


class FakeUUID:
    def __init__(self, s):
        self.s = s.lower()

    def __eq__(self, other):
        return isinstance(other, FakeUUID) and other.s == self.s

    def __hash__(self):
        return hash(self.s)


class FakeBluetooth:
    UUID = FakeUUID


class DeviceDisconnectedError(Exception):
    pass


class FakeTimeout:
    """aioble's DeviceTimeout: cancels the waiting task on timeout or disconnection and
    turns that into asyncio.TimeoutError or DeviceDisconnectedError."""

    def __init__(self, conn, timeout_ms):
        self.conn = conn
        self.timeout_ms = timeout_ms
        self.fired = False
        self.timer = None
        self.task = None

    def __enter__(self):
        self.task = asyncio.current_task()
        if self.conn is not None:
            self.conn._timeouts.append(self)
        if self.timeout_ms:
            self.timer = asyncio.create_task(self._sleep())

    async def _sleep(self):
        await asyncio.sleep(self.timeout_ms / 1000)
        self.fired = True
        self.task.cancel()

    def __exit__(self, exc_type, exc, tb):
        if self.conn is not None:
            self.conn._timeouts.remove(self)
        if self.timer is not None and not self.fired:
            self.timer.cancel()
        if exc_type is asyncio.CancelledError:
            if self.fired:
                raise asyncio.TimeoutError
            if self.conn is not None and not self.conn.is_connected():
                raise DeviceDisconnectedError
        return False


class FakeConnection:
    def __init__(self, fake, mtu):
        self.fake = fake
        self.mtu = mtu
        self._connected = True
        self._timeouts = []

    def is_connected(self):
        return self._connected

    def timeout(self, timeout_ms):
        return FakeTimeout(self, timeout_ms)

    async def exchange_mtu(self, mtu=None, timeout_ms=1000):
        self.fake.exchanges.append(mtu)
        if not self._connected:
            raise ValueError("Not connected")
        with self.timeout(timeout_ms):
            if self.fake.central_mtu is None:
                await asyncio.Event().wait()     # a central that never answers
            self.mtu = min(mtu, self.fake.central_mtu)
        return self.mtu

    async def disconnect(self, timeout_ms=2000):
        self.fake.local_disconnects += 1
        self.fake._drop(self)
        await asyncio.sleep(0)      # the stack's tasks see the drop, as aioble's would


class FakeService:
    def __init__(self, uuid):
        self.uuid = uuid
        self.characteristics = []


def make_fake_aioble():
    """A fresh fake aioble module. The test plays the central with central_*()."""

    class Fake:
        pass

    fake = Fake()
    fake.DeviceDisconnectedError = DeviceDisconnectedError
    fake.Service = FakeService
    fake.registered = []
    fake.configs = []
    fake.adverts = []
    fake.exchanges = []
    fake.local_disconnects = 0
    fake.stopped = False
    fake.conn = None
    fake.central_comes = False      # a central connects as soon as advertising starts
    fake.mtu_on_connect = 247       # BlueZ exchanges the MTU on connection
    fake.central_mtu = 247          # what the central answers an exchange with (None: never)
    fake.capture = deque((), 10)    # aioble's _WRITE_CAPTURE_QUEUE_LIMIT, oldest dropped
    fake.mbufs = 2                  # notifications the stack holds before ENOMEM
    fake.in_flight = []
    fake.air = []                   # notifications the central received, in order
    fake.enomem = 0
    fake.rx_flag = asyncio.Event()
    fake.tx_flag = asyncio.Event()

    class Characteristic:
        def __init__(self, service, uuid, read=False, write=False, write_no_response=False,
                     notify=False, indicate=False, initial=None, capture=False, max_len=20):
            service.characteristics.append(self)
            self.uuid = uuid
            self.props = {"read": read, "write": write, "write_no_response": write_no_response,
                          "notify": notify, "capture": capture, "max_len": max_len}

        def notify(self, connection, data=None):
            if connection is None or not connection.is_connected():
                raise OSError(_ENOTCONN)
            if len(fake.in_flight) >= fake.mbufs:
                fake.enomem += 1
                raise OSError(_ENOMEM)
            fake.in_flight.append(bytes(data))
            fake.tx_flag.set()

        async def written(self, timeout_ms=None):
            with FakeTimeout(None, timeout_ms):
                # Bounded: every pass but the last waits for a central write.
                for _ in range(1000):
                    if len(fake.capture):
                        return fake.capture.popleft()
                    fake.rx_flag.clear()
                    await fake.rx_flag.wait()

    def BufferedCharacteristic(service, uuid, max_len=20, append=False, **kw):
        return Characteristic(service, uuid, max_len=max_len, **kw)

    def register_services(*services):
        fake.registered.extend(services)

    def config(**kw):
        fake.configs.append(kw)

    async def radio(conn):
        # The stack puts held notifications on the air whenever the loop runs after one
        # was queued; ends with the connection.
        while conn.is_connected():
            await fake.tx_flag.wait()
            fake.tx_flag.clear()
            fake.air.extend(fake.in_flight)
            del fake.in_flight[:]

    async def advertise(interval_us, adv_data=None, resp_data=None, connectable=True,
                        name=None, services=None, timeout_ms=None, **kw):
        fake.adverts.append({"interval_us": interval_us, "name": name, "services": services})
        if not fake.central_comes:
            with FakeTimeout(None, timeout_ms):
                await asyncio.Event().wait()
        fake.central_comes = False
        conn = FakeConnection(fake, fake.mtu_on_connect)
        fake.conn = conn
        asyncio.create_task(radio(conn))
        return conn

    def stop():
        fake.stopped = True
        if fake.conn is not None:
            fake._drop(fake.conn)

    def drop(conn):
        conn._connected = False
        fake.tx_flag.set()
        for t in list(conn._timeouts):
            t.task.cancel()

    def central_write(data, conn=None):
        fake.capture.append((conn or fake.conn, bytes(data)))
        fake.rx_flag.set()

    def central_disconnect():
        drop(fake.conn)

    fake.Characteristic = Characteristic
    fake.BufferedCharacteristic = BufferedCharacteristic
    fake.register_services = register_services
    fake.config = config
    fake.advertise = advertise
    fake.stop = stop
    fake._drop = drop
    fake.central_write = central_write
    fake.central_disconnect = central_disconnect
    return fake


def aioble_adapter(rover_id="r7", **central):
    """An AiobleAdapter over a fresh fake aioble injected into sys.modules."""
    fake = make_fake_aioble()
    for k in central:
        setattr(fake, k, central[k])
    sys.modules["aioble"] = fake
    sys.modules["bluetooth"] = FakeBluetooth
    try:
        adapter = AiobleAdapter(rover_id)
    finally:
        del sys.modules["aioble"]
        del sys.modules["bluetooth"]
    return fake, adapter


def cleanup(adapter):
    """CPython: ends what the fake left on the adapter's own loop and closes it (on
    MicroPython the one loop lives on)."""
    if pytest is None:
        return
    loop = adapter._loop
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.wait(tasks))
    loop.close()


def expect(exc, fn, *args):
    try:
        fn(*args)
    except exc as e:
        return e
    raise AssertionError("%s not raised" % exc.__name__)


def test_aioble_profile_and_advertisement():
    fake, adapter = aioble_adapter("r7", central_comes=True)
    (service,) = fake.registered
    assert service.uuid == FakeUUID(gatt.SERVICE_UUID)
    tx, rx = service.characteristics
    assert tx.uuid == FakeUUID(gatt.TX_UUID) and tx.props["notify"]
    assert not tx.props["write"] and not tx.props["write_no_response"]
    assert rx.uuid == FakeUUID(gatt.RX_UUID)
    assert rx.props["write_no_response"] and rx.props["capture"] and not rx.props["write"]
    assert rx.props["max_len"] == gatt.MAX_PACKET == 244
    assert fake.configs == [{"mtu": gatt.ATT_MTU}]
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    (adv,) = fake.adverts
    assert adv["name"] == "anchor-rover-r7"
    assert adv["services"] == [FakeUUID(gatt.SERVICE_UUID)]
    assert port.mtu == 244 and port.overhead == 7
    assert fake.exchanges == []       # the central had exchanged already
    port.close()
    assert fake.local_disconnects == 1


def test_aioble_mtu_exchange_by_the_rover():
    # A central that did not exchange: the rover asks, and gets what the central allows.
    fake, adapter = aioble_adapter(central_comes=True, mtu_on_connect=None, central_mtu=185)
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    assert fake.exchanges == [gatt.ATT_MTU] and port.mtu == 182
    port.close()
    cleanup(adapter)
    # A central that never answers: 23, the MTU every link has.
    fake, adapter = aioble_adapter(central_comes=True, mtu_on_connect=None, central_mtu=None)
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000, ready_timeout_ms=30)
    assert port.mtu == 20
    port.close()
    cleanup(adapter)


def test_aioble_no_central_is_a_link_error():
    fake, adapter = aioble_adapter(central_comes=False)
    e = expect(LinkError, GattPeripheralLink, adapter, 40)
    assert "no anchor" in str(e)
    cleanup(adapter)


def test_aioble_receive_in_order_and_timeout():
    fake, adapter = aioble_adapter(central_comes=True)
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    buf = bytearray(port.mtu)
    sent = [pattern(i, 1 + i * 60) for i in range(5)]      # 1 .. 241 bytes
    sent.append(pattern(9, port.mtu))
    for p in sent:
        fake.central_write(p)
    got = []
    for _ in range(len(sent)):
        n = port.recv_into(buf, 1000)
        got.append(bytes(buf[:n]))
    assert got == sent
    assert port.rx == sum(len(p) + 7 for p in sent)
    assert port.recv_into(buf, 20) == 0                   # nothing more: timeout, 0
    expect(ValueError, port.recv_into, bytearray(port.mtu - 1), 10)
    port.close()
    cleanup(adapter)


def test_aioble_capture_queue_keeps_the_last_ten():
    # What aioble does when the rover does not read: the oldest writes go, uncounted.
    fake, adapter = aioble_adapter(central_comes=True)
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    buf = bytearray(port.mtu)
    for i in range(RX_WINDOW + 3):
        fake.central_write(bytes([i]) * 10)
    got = []
    for _ in range(RX_WINDOW + 3):
        n = port.recv_into(buf, 20)
        if not n:
            break
        got.append(buf[0])
    assert got == list(range(3, RX_WINDOW + 3))
    port.close()
    cleanup(adapter)


def test_aioble_stale_writes_of_an_old_connection_are_skipped():
    fake, adapter = aioble_adapter(central_comes=True)
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    old = fake.conn
    port.close()
    fake.central_write(b"old", old)
    fake.central_comes = True
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    fake.central_write(b"new")
    buf = bytearray(port.mtu)
    n = port.recv_into(buf, 1000)
    assert bytes(buf[:n]) == b"new"
    port.close()
    cleanup(adapter)


def test_aioble_notify_waits_for_the_stack():
    fake, adapter = aioble_adapter(central_comes=True)
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    sent = [pattern(i, port.mtu) for i in range(12)]
    for p in sent:
        port.send(p)
    # The stack held 2 at a time: the port waited (ENOMEM) and lost nothing.
    assert fake.enomem > 0
    assert fake.air + fake.in_flight == sent
    assert port.tx == 12 * (port.mtu + 7)
    e = expect(ValueError, port.send, bytes(port.mtu + 1))
    assert "exceeds" in str(e) and str(port.mtu) in str(e)
    port.close()
    cleanup(adapter)


def test_aioble_stack_that_never_frees_is_a_link_error():
    fake, adapter = aioble_adapter(central_comes=True, mbufs=0)
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000, send_timeout_ms=50)
    expect(LinkError, port.send, b"x")
    expect(LinkError, port.send, b"x")            # and it stays closed
    assert fake.local_disconnects == 1
    cleanup(adapter)


def test_aioble_central_disconnect_is_a_link_error():
    fake, adapter = aioble_adapter(central_comes=True)
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    fake.central_write(b"last")
    fake.central_disconnect()
    buf = bytearray(port.mtu)
    n = port.recv_into(buf, 1000)
    # aioble hands over what was captured before the drop only while connected: either
    # way nothing damaged comes up, and then the link is gone.
    if n:
        assert bytes(buf[:n]) == b"last"
        expect(LinkError, port.recv_into, buf, 50)
    expect(LinkError, port.send, b"x")
    # The next port advertises again.
    fake.central_comes = True
    port = GattPeripheralLink(adapter, accept_timeout_ms=1000)
    assert len(fake.adverts) == 2
    port.send(b"again")
    assert (fake.air + fake.in_flight)[-1] == b"again"
    adapter.close()
    assert fake.stopped
    cleanup(adapter)


def mpy_main():
    """Runs the aioble section under MicroPython; the last line is 'N passed, M failed'."""
    passed = failed = 0
    mod = sys.modules[__name__]
    for name in sorted(dir(mod)):
        if not name.startswith("test_aioble_") or name == "test_aioble_under_micropython":
            continue
        try:
            getattr(mod, name)()
            passed += 1
            print("PASS", name)
        except Exception as e:
            failed += 1
            print("FAIL", name, repr(e))
            sys.print_exception(e)
    print("%d passed, %d failed" % (passed, failed))


# --- CPython only from here: bumble, bleak fakes, threads ---------------------------------

if pytest is not None:
    import os
    import subprocess
    import threading
    import time

    from anchor.links.ble_port import (BleakAdapter, BleakBackend, BleScanner, GattCentralLink,
                                 OVERHEAD)
    from tests.support.ble_bumble import BumblePair

    HERE = os.path.dirname(os.path.abspath(__file__))
    FIRMWARE = os.path.join(os.path.dirname(os.path.dirname(HERE)), "firmware")
    MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
    WAIT = 20.0     # the bound on every wait for something that should happen

    class Worker(threading.Thread):
        """Runs the blocking rover end next to the anchor's event loop."""

        def __init__(self, fn):
            threading.Thread.__init__(self, daemon=True)
            self.fn = fn
            self.value = None
            self.error = None

        def run(self):
            try:
                self.value = self.fn()
            except BaseException as e:
                self.error = e

        def result(self, timeout=WAIT * 3):
            self.join(timeout)
            if self.is_alive():
                raise AssertionError("rover thread still running after %.0f s" % timeout)
            if self.error is not None:
                raise self.error
            return self.value

    def connect_pair(pair, **kw):
        """(rover port, anchor port) over a fresh connection."""
        fut = pair.submit(pair.connect_central(**kw))
        rover = GattPeripheralLink(pair.rover, accept_timeout_ms=int(WAIT * 1000))
        return rover, fut.result(WAIT)

    def receive_rover(port, count, timeout_ms=int(WAIT * 1000)):
        buf = bytearray(port.mtu)
        got = []
        for _ in range(count):
            n = port.recv_into(buf, timeout_ms)
            if not n:
                break
            got.append(bytes(buf[:n]))
        return got

    async def send_all(port, packets):
        for p in packets:
            await port.send(p)

    async def receive_anchor(port, count):
        got = []
        for _ in range(count):
            got.append(await asyncio.wait_for(port.recv(), WAIT))
        return got


if pytest is not None:

    def test_aioble_under_micropython():
        code = ("import sys; sys.path[:0] = [%r, %r]; import test_ble_port as t; t.mpy_main()"
                % (FIRMWARE, HERE))
        proc = subprocess.run([MICROPYTHON, "-X", "heapsize=4M", "-c", code],
                              capture_output=True, text=True, timeout=120)
        out = proc.stdout + proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        assert proc.returncode == 0 and lines, out
        assert lines[-1].endswith(" 0 failed") and int(lines[-1].split()[0]) >= 9, out

    @parametrize("mtu", [23, 247])
    def test_every_size_both_ways_whole_and_in_order(mtu):
        size = mtu - 3
        packets = [pattern(n, n) for n in range(1, size + 1)]
        with BumblePair(mtu=mtu) as pair:
            # Receive queues that hold every packet: this test is about the ports, not loss.
            pair.rover.rx_queue = len(packets)
            rover, anchor = connect_pair(pair, rx_queue=len(packets))
            assert rover.mtu == anchor.mtu == size
            assert rover.overhead == anchor.overhead == OVERHEAD == 7
            assert anchor.name == "ble:" + pair.rover_address()

            sending = pair.submit(send_all(anchor, packets))
            assert receive_rover(rover, len(packets)) == packets
            sending.result(WAIT)

            receiving = pair.submit(receive_anchor(anchor, len(packets)))
            for p in packets:
                rover.send(p)
            assert receiving.result(WAIT * 2) == packets

            assert pair.rover.dropped == 0 and anchor.dropped == 0
            wire = sum(len(p) + 7 for p in packets)
            assert anchor.tx == rover.rx == wire and rover.tx == anchor.rx == wire
            rover.close()

    @parametrize("mtu", [23, 247])
    def test_burst_of_200_each_way(mtu):
        n = 200
        with BumblePair(mtu=mtu) as pair:
            rover, anchor = connect_pair(pair)
            size = rover.mtu
            burst = [i.to_bytes(2, "big") + pattern(i, size - 2) for i in range(n)]
            rover_end = pair.rover

            async def anchor_side():
                sender = asyncio.ensure_future(send_all(anchor, burst))
                got = []
                # Bounded: each pass takes a packet, or waits 1 s for one that was dropped.
                for _ in range(n + 30):
                    if len(got) + anchor.dropped >= n:
                        break
                    try:
                        got.append(await asyncio.wait_for(anchor.recv(), 1.0))
                    except asyncio.TimeoutError:
                        pass
                await asyncio.wait_for(sender, WAIT)
                return got

            def rover_side():
                for p in burst:
                    rover.send(p)
                buf = bytearray(rover.mtu)
                got = []
                for _ in range(n + 30):
                    if len(got) + rover_end.dropped >= n:
                        break
                    k = rover.recv_into(buf, 1000)
                    if k:
                        got.append(bytes(buf[:k]))
                return got

            anchor_job = pair.submit(anchor_side())
            at_rover = rover_side()
            at_anchor = anchor_job.result(WAIT * 3)

            # The stack lost nothing: every write reached the rover's GATT server, every
            # notification left it; losses happen only at a full port queue, and are counted.
            assert pair.rover.writes == n and pair.rover.notified == n
            for got, dropped in ((at_rover, pair.rover.dropped), (at_anchor, anchor.dropped)):
                assert len(got) + dropped == n
                idx = [int.from_bytes(p[:2], "big") for p in got]
                assert idx == sorted(set(idx))                    # in order, no duplicates
                assert all(p == burst[i] for p, i in zip(got, idx))   # whole
            print("burst mtu %d: anchor->rover %d delivered, %d dropped at the rover's queue; "
                  "rover->anchor %d delivered, %d dropped at the anchor's queue"
                  % (mtu, len(at_rover), pair.rover.dropped, len(at_anchor), anchor.dropped))
            rover.close()

    @parametrize("mtu", [23, 247])
    def test_packets_per_second(mtu):
        """Throughput of full packets over the LocalLink, with queues that never drop."""
        n = 400
        with BumblePair(mtu=mtu) as pair:
            pair.rover.rx_queue = n
            rover, anchor = connect_pair(pair, rx_queue=n)
            packets = [pattern(i, rover.mtu) for i in range(n)]
            t = time.perf_counter()
            sending = pair.submit(send_all(anchor, packets))
            assert receive_rover(rover, n) == packets
            sending.result(WAIT)
            down = n / (time.perf_counter() - t)
            t = time.perf_counter()
            receiving = pair.submit(receive_anchor(anchor, n))
            for p in packets:
                rover.send(p)
            assert receiving.result(WAIT * 3) == packets
            up = n / (time.perf_counter() - t)
            print("ATT MTU %d: anchor->rover %.0f packets/s, rover->anchor %.0f packets/s"
                  % (mtu, down, up))
            assert down > 20 and up > 20
            rover.close()

    def test_oversized_packets_are_refused():
        with BumblePair(mtu=23) as pair:
            rover, anchor = connect_pair(pair)
            with pytest.raises(ValueError, match="21 bytes exceeds the port mtu of 20"):
                rover.send(bytes(21))
            with pytest.raises(ValueError, match="21 bytes exceeds the port mtu of 20"):
                pair.run(anchor.send(bytes(21)))
            # Refused, not fatal: the link still carries packets that fit, both ways.
            pair.run(anchor.send(b"a" * 20))
            assert receive_rover(rover, 1) == [b"a" * 20]
            rover.send(b"r" * 20)
            assert pair.run(asyncio.wait_for(anchor.recv(), WAIT)) == b"r" * 20
            rover.close()

    def test_rover_drop_ends_anchor_port_and_new_port_works():
        with BumblePair() as pair:
            rover, anchor = connect_pair(pair)
            rover.send(b"before")
            assert pair.run(asyncio.wait_for(anchor.recv(), WAIT)) == b"before"
            rover.close()
            pair.run(asyncio.wait_for(anchor.gone.wait(), WAIT))
            assert anchor.error == "disconnected"
            with pytest.raises(ConnectionError, match="disconnected"):
                pair.run(asyncio.wait_for(anchor.recv(), WAIT))
            with pytest.raises(ConnectionError):
                pair.run(anchor.send(b"x"))
            with pytest.raises(LinkError):
                rover.send(b"x")
            rover, anchor = connect_pair(pair)
            pair.run(anchor.send(b"after"))
            assert receive_rover(rover, 1) == [b"after"]
            # And the anchor closing is a LinkError on the rover.
            pair.run(_close_and_wait(anchor))
            with pytest.raises(LinkError, match="disconnected"):
                rover.recv_into(bytearray(rover.mtu), int(WAIT * 1000))

    async def _close_and_wait(port):
        port.close()
        await asyncio.wait_for(port.gone.wait(), WAIT)

    def test_scanner_reconnects_after_the_rover_drops():
        """The anchor side runs in its own event loop (as the daemon would), bridged to
        bumble's; the rover drops the connection and comes back; a new port is handed out."""
        with BumblePair() as pair:
            def rover_main():
                said = []
                for round in (1, 2):
                    port = GattPeripheralLink(pair.rover, accept_timeout_ms=int(WAIT * 1000))
                    said += receive_rover(port, 1)
                    port.send(b"ack-%d" % round)
                    if round == 1:
                        port.close()                # the rover drops the link
                    else:
                        said += receive_rover(port, 1)
                return said

            async def anchor_main():
                ports = asyncio.Queue()

                async def on_port(port):
                    await ports.put(port)
                    await port.gone.wait()

                scanner = BleScanner(on_port=on_port, backend=pair.central_backend(),
                                     scan_timeout=2.0, min_backoff=0.05)
                scanner.start()
                try:
                    first = await asyncio.wait_for(ports.get(), WAIT)
                    await first.send(b"hello-1")
                    assert await asyncio.wait_for(first.recv(), WAIT) == b"ack-1"
                    await asyncio.wait_for(first.gone.wait(), WAIT)
                    with pytest.raises(ConnectionError):
                        await first.recv()
                    second = await asyncio.wait_for(ports.get(), WAIT)
                    assert second is not first and second.name == first.name
                    await second.send(b"hello-2")
                    assert await asyncio.wait_for(second.recv(), WAIT) == b"ack-2"
                    await second.send(b"bye")
                    assert scanner.connects == 2 and scanner.connect_failures == 0
                    assert list(scanner.ports) == [pair.rover_address()]
                finally:
                    scanner.close()
                    await scanner.wait_closed()
                assert second.gone.is_set()

            rover = Worker(rover_main)
            rover.start()
            asyncio.run(asyncio.wait_for(anchor_main(), WAIT * 3))
            assert rover.result() == [b"hello-1", b"hello-2", b"bye"]
            assert pair.rover.connections == 2

    class SpyBackend:
        """Records every rover the scanner considered; wakes `waiting_for` when it shows."""

        def __init__(self, backend, waiting_for):
            self.backend = backend
            self.seen = set()
            self.waiting_for = waiting_for
            self.shown = asyncio.Event()

        async def scan(self, wanted, timeout):
            def spy(address, name):
                self.seen.add((address, name))
                if address == self.waiting_for:
                    self.shown.set()
                return wanted(address, name)
            return await self.backend.scan(spy, timeout)

        def adapter(self, handle):
            return self.backend.adapter(handle)

    @parametrize("by", ["name", "address"])
    def test_scanner_allow_list(by):
        with BumblePair(rover_ids=("a", "b")) as pair:
            a, b = pair.rovers
            allowed = "ANCHOR-ROVER-B" if by == "name" else b.address.lower()

            def rover_a():
                with pytest.raises(LinkError):
                    GattPeripheralLink(a, accept_timeout_ms=int(WAIT * 1000) // 4)

            def rover_b():
                port = GattPeripheralLink(b, accept_timeout_ms=int(WAIT * 1000))
                got = receive_rover(port, 1)
                port.close()
                return got

            workers = [Worker(rover_a), Worker(rover_b)]

            async def anchor_main():
                spy = SpyBackend(pair.central_backend(), a.address)
                ports = asyncio.Queue()

                async def on_port(port):
                    await ports.put(port)
                    await port.gone.wait()

                scanner = BleScanner(on_port=on_port, allow=[allowed], backend=spy,
                                     scan_timeout=2.0, min_backoff=0.05)
                scanner.start()
                try:
                    # Rover a advertises first and is passed over; then b comes.
                    workers[0].start()
                    await asyncio.wait_for(spy.shown.wait(), WAIT)
                    workers[1].start()
                    port = await asyncio.wait_for(ports.get(), WAIT)
                    assert port.name == "ble:" + b.address
                    await port.send(b"only b")
                    await asyncio.wait_for(port.gone.wait(), WAIT)
                    assert (a.address, "anchor-rover-a") in spy.seen
                    assert scanner.connects == 1
                finally:
                    scanner.close()
                    await scanner.wait_closed()

            asyncio.run(asyncio.wait_for(anchor_main(), WAIT * 2))
            workers[0].result()
            assert workers[1].result() == [b"only b"]
            assert a.connections == 0 and b.connections == 1

    # --- bleak, against a fake BleakClient and BleakScanner -------------------------------

    class FakeChar:
        def __init__(self, uuid, props, wwr_size):
            self.uuid = uuid
            self.properties = props
            self.max_write_without_response_size = wwr_size

    class FakeServices:
        def __init__(self, chars):
            self.chars = chars

        def get_characteristic(self, uuid):
            return self.chars.get(str(uuid).lower())

    class FakeBleakClient:
        """BleakClient's surface that BleakAdapter uses, with BlueZ's quirks: mtu_size
        stays 23, max_write_without_response_size has the real value (BlueZ >= 5.62)."""

        instances = []

        def __init__(self, device, disconnected_callback=None, services=None, *, timeout=30,
                     wwr_size=244, has_service=True, fail_write=None):
            self.device = device
            self.disconnected_callback = disconnected_callback
            self.services_filter = services
            self.timeout = timeout
            self.is_connected = False
            self.mtu_size = 23
            self.writes = []
            self.notify_cb = None
            self.fail_write = fail_write
            chars = {}
            if has_service:
                chars[gatt.RX_UUID] = FakeChar(gatt.RX_UUID, ["write-without-response"], wwr_size)
                chars[gatt.TX_UUID] = FakeChar(gatt.TX_UUID, ["notify"], wwr_size)
            self.services = FakeServices(chars)
            FakeBleakClient.instances.append(self)

        async def connect(self):
            self.is_connected = True

        async def write_gatt_char(self, char, data, response=None):
            if self.fail_write is not None:
                raise self.fail_write
            self.writes.append((char.uuid, bytes(data), response))

        async def start_notify(self, char, callback):
            assert str(char).lower() == gatt.TX_UUID
            self.notify_cb = callback

        async def disconnect(self):
            if self.is_connected:
                self.drop()

        # the rover's side of the fake
        def notify(self, data):
            self.notify_cb(self.services.get_characteristic(gatt.TX_UUID), bytearray(data))

        def drop(self):
            self.is_connected = False
            # BleakClient passes itself (functools.partial), and schedules it in the loop.
            asyncio.get_running_loop().call_soon(self.disconnected_callback, self)

    def fake_client(**kw):
        def factory(device, cb, services, timeout):
            return FakeBleakClient(device, cb, services, timeout=timeout, **kw)
        return factory

    async def open_bleak(rx_queue=128, **kw):
        adapter = BleakAdapter("AA:BB:CC:DD:EE:01", fake_client(**kw))
        port = await GattCentralLink(adapter, rx_queue=rx_queue).open()
        return port, FakeBleakClient.instances[-1]

    def test_bleak_adapter_moves_packets():
        async def main():
            port, client = await open_bleak()
            assert client.services_filter == [gatt.SERVICE_UUID]
            assert port.name == "ble:AA:BB:CC:DD:EE:01"
            # mtu_size says 23 on BlueZ; the write size tells the negotiated MTU.
            assert port.mtu == 244
            await port.send(b"one")
            await port.send(bytearray(b"two"))
            assert client.writes == [(gatt.RX_UUID, b"one", False), (gatt.RX_UUID, b"two", False)]
            client.notify(b"up-1")
            client.notify(b"up-2")
            assert await port.recv() == b"up-1" and await port.recv() == b"up-2"
            assert port.tx == 6 + 2 * 7 and port.rx == 8 + 2 * 7
            with pytest.raises(ValueError, match="245 bytes exceeds the port mtu of 244"):
                await port.send(bytes(245))
            port.close()
            await asyncio.wait_for(port.gone.wait(), WAIT)
            assert not client.is_connected
            with pytest.raises(ConnectionError):
                await port.recv()
        asyncio.run(main())

    def test_bleak_adapter_old_bluez_reports_20():
        async def main():
            port, _ = await open_bleak(wwr_size=20)
            assert port.mtu == 20
            port.close()
        asyncio.run(main())

    def test_bleak_rover_drop_and_full_queue():
        async def main():
            port, client = await open_bleak(rx_queue=3)
            for i in range(5):
                client.notify(bytes([i]))
            assert port.dropped == 2          # a full queue drops, and counts
            client.drop()
            await asyncio.wait_for(port.gone.wait(), WAIT)
            # What was queued before the drop still comes, then the end.
            got = []
            with pytest.raises(ConnectionError, match="disconnected"):
                for _ in range(4):
                    got.append(await port.recv())
            assert got == [b"\x00", b"\x01", b"\x02"] and port.dropped == 2
            with pytest.raises(ConnectionError):
                await port.send(b"x")
        asyncio.run(main())

    def test_bleak_write_failure_is_a_connection_error():
        async def main():
            port, client = await open_bleak(fail_write=OSError("org.bluez.Error.Failed"))
            with pytest.raises(ConnectionError, match="write failed"):
                await port.send(b"x")
            await asyncio.wait_for(port.gone.wait(), WAIT)
            assert not client.is_connected and port.error.startswith("write failed")
        asyncio.run(main())

    def test_bleak_device_without_the_service():
        async def main():
            adapter = BleakAdapter("AA:BB:CC:DD:EE:02", fake_client(has_service=False))
            port = GattCentralLink(adapter)
            with pytest.raises(ConnectionError, match="no anchor link service"):
                await port.open()
            await asyncio.wait_for(port.gone.wait(), WAIT)
        asyncio.run(main())

    class FakeDevice:
        def __init__(self, address, name=None):
            self.address = address
            self.name = name

    class FakeAdv:
        def __init__(self, uuids, local_name=None):
            self.service_uuids = uuids
            self.local_name = local_name

    class FakeBleakScanner:
        """Replays advertisements while started; reports each one every time it starts,
        as BlueZ does for devices that keep advertising."""

        adverts = []
        starts = 0

        def __init__(self, detection_callback, service_uuids=None):
            assert service_uuids == [gatt.SERVICE_UUID]
            self.cb = detection_callback

        async def start(self):
            FakeBleakScanner.starts += 1
            loop = asyncio.get_running_loop()
            for device, adv in FakeBleakScanner.adverts:
                loop.call_soon(self.cb, device, adv)

        async def stop(self):
            self.cb = lambda *a: None

    def test_bleak_scanner_filters_connects_and_reconnects():
        svc = gatt.SERVICE_UUID.upper()       # BlueZ may report any case
        FakeBleakScanner.adverts = [
            (FakeDevice("11:11:11:11:11:11", "kettle"),
             FakeAdv(["0000180f-0000-1000-8000-00805f9b34fb"])),
            (FakeDevice("22:22:22:22:22:22"), FakeAdv([svc], "anchor-rover-x")),    # not allowed
            (FakeDevice("33:33:33:33:33:33"), FakeAdv([svc], None)),                # no name yet
            (FakeDevice("33:33:33:33:33:33"), FakeAdv([svc], "anchor-rover-ok")),
        ]
        FakeBleakClient.instances = []

        async def main():
            ports = asyncio.Queue()

            async def on_port(port):
                await ports.put(port)
                await port.gone.wait()

            backend = BleakBackend(FakeBleakScanner, fake_client())
            scanner = BleScanner(on_port=on_port, allow=["anchor-rover-ok"], backend=backend,
                                 scan_timeout=0.2, min_backoff=0.01)
            scanner.start()
            try:
                first = await asyncio.wait_for(ports.get(), WAIT)
                assert first.name == "ble:33:33:33:33:33:33"
                assert FakeBleakClient.instances[0].device.address == "33:33:33:33:33:33"
                FakeBleakClient.instances[-1].drop()          # the rover goes away
                second = await asyncio.wait_for(ports.get(), WAIT)
                assert second is not first and first.gone.is_set()
                assert [c.device.address for c in FakeBleakClient.instances] == \
                    ["33:33:33:33:33:33"] * 2
                assert scanner.connects == 2
            finally:
                scanner.close()
                await scanner.wait_closed()
            assert second.gone.is_set() and not FakeBleakClient.instances[-1].is_connected

        asyncio.run(asyncio.wait_for(main(), WAIT * 2))

    def test_scanner_backoff_after_failed_connections():
        FakeBleakScanner.adverts = [
            (FakeDevice("44:44:44:44:44:44"), FakeAdv([gatt.SERVICE_UUID], "anchor-rover-q"))]
        FakeBleakClient.instances = []

        class Timed(BleakBackend):
            """Notes when each connection attempt starts; wakes the test at the fifth."""

            def __init__(self, *a):
                BleakBackend.__init__(self, *a)
                self.starts = []
                self.fifth = asyncio.Event()

            def adapter(self, device):
                self.starts.append(time.monotonic())
                if len(self.starts) == 5:
                    self.fifth.set()
                return BleakBackend.adapter(self, device)

        async def on_port(port):
            raise AssertionError("no port expected")

        async def main():
            backend = Timed(FakeBleakScanner, fake_client(has_service=False))
            scanner = BleScanner(on_port=on_port, backend=backend, scan_timeout=0.05,
                                 min_backoff=0.02, max_backoff=0.08)
            scanner.start()
            try:
                await asyncio.wait_for(backend.fifth.wait(), WAIT)
            finally:
                scanner.close()
                await scanner.wait_closed()
            assert scanner.connect_failures >= 4 and scanner.connects == 0
            gaps = [b - a for a, b in zip(backend.starts, backend.starts[1:])]
            # Each failure waited the backoff, doubling from 0.02 and capped at 0.08.
            for gap, least in zip(gaps, (0.02, 0.04, 0.08, 0.08)):
                assert gap >= least, gaps
        asyncio.run(asyncio.wait_for(main(), WAIT))

    def test_scanner_survives_a_failed_scan():
        FakeBleakScanner.adverts = [
            (FakeDevice("55:55:55:55:55:55"), FakeAdv([gatt.SERVICE_UUID], "anchor-rover-s"))]
        FakeBleakClient.instances = []

        class FlakyScanner(FakeBleakScanner):
            failures = 2

            async def start(self):
                if FlakyScanner.failures:
                    FlakyScanner.failures -= 1
                    raise OSError("org.bluez.Error.NotReady")
                await FakeBleakScanner.start(self)

        async def main():
            ports = asyncio.Queue()

            async def on_port(port):
                await ports.put(port)
                await port.gone.wait()

            scanner = BleScanner(on_port=on_port, backend=BleakBackend(FlakyScanner, fake_client()),
                                 scan_timeout=0.2, min_backoff=0.01)
            scanner.start()
            try:
                port = await asyncio.wait_for(ports.get(), WAIT)
                assert port.name == "ble:55:55:55:55:55:55"
                assert scanner.scan_failures == 2 and scanner.connects == 1
            finally:
                scanner.close()
                await scanner.wait_closed()
        asyncio.run(asyncio.wait_for(main(), WAIT))


def test_scanner_allow_list_can_follow_the_pairings():
    """The daemon passes a function (the names of the paired rovers): pairing a rover later
    lets the scanner take it, unpairing stops it."""
    from anchor.links.ble_port import BleScanner

    class NoBackend:
        pass
    paired = []
    sc = BleScanner(on_port=lambda port: None, allow=lambda: paired, backend=NoBackend())
    assert not sc._allowed("AA:BB", "anchor-rover-r1")
    paired.append("anchor-rover-r1")
    assert sc._allowed("AA:BB", "anchor-rover-r1") and not sc._allowed("AA:CC", "anchor-rover-r2")
    paired.clear()
    assert not sc._allowed("AA:BB", "anchor-rover-r1")
