"""Serial packet ports (rover: blocking, both runtimes; anchor: asyncio) over a real pty link
from tests/support/linkemu.py, with the line's faults: bit errors, garbage, a small UART buffer, a
device that vanishes and comes back. Also the emulator's TCP link cuts."""
import asyncio
import os
import random
import select
import socket
import struct
import sys
import threading
import time
import zlib

import pytest
import serial

from anchor_core import framing
from rover.link import LinkError
from anchor_core.linkurl import serial as parse_serial_url     # what rover --link serial:... parses with
from rover.serial_port import SerialPort
from anchor.links.serial_port import SerialListener, SerialPacketPort

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.support.linkemu import CountingRelay, PtyLink  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
WAIT = 20.0     # the bound on every wait for something that should happen


def packet(i, size, salt=0):
    """Packet i: its number and a CRC of the rest, so a test can tell which one it is and
    that it is whole, independently of the framing's own check."""
    rnd = random.Random(i * 7919 + salt)
    body = bytes(rnd.getrandbits(8) for _ in range(max(0, size - 8)))
    head = struct.pack(">II", i, zlib.crc32(body))
    return (head + body)[:size] if size < 8 else head + body


def check(p):
    """(number, intact) of a packet made by packet()."""
    i, crc = struct.unpack(">II", p[:8])
    return i, zlib.crc32(p[8:]) == crc


def run_async(coro, timeout=WAIT * 3):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def open_anchor(link, **kw):
    """A listener on the link's anchor device; returns (listener, queue of ports)."""
    ports = asyncio.Queue()

    async def on_port(port):
        await ports.put(port)
        await port.gone.wait()

    lst = SerialListener(link.anchor_link, 115200, on_port, **kw)
    lst.start()
    return lst, ports


async def close_anchor(lst):
    lst.close()
    await lst.wait_closed()


def rover_thread(fn):
    """Runs fn() in a thread; returns a function giving its result (or raising its error)."""
    out = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as e:    # handed to the test thread below
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def result(timeout=WAIT * 2):
        t.join(timeout)
        if t.is_alive():
            raise AssertionError("rover thread still running after %.0f s" % timeout)
        if "error" in out:
            raise out["error"]
        return out.get("result")
    return result


# --- clean link ----------------------------------------------------------------------------

def test_every_size_both_ways_whole_and_in_order():
    mtu = 512
    up = [packet(i, i + 1, 1) for i in range(mtu)]          # sizes 1..mtu
    down = [packet(i, mtu - i, 2) for i in range(mtu)]       # mtu..1
    with PtyLink() as link:
        rover = SerialPort(link.rover_link, 115200, mtu=mtu)

        def rover_side():
            for p in up:
                rover.send(p)
            got = []
            buf = bytearray(mtu)
            deadline = time.monotonic() + WAIT
            while len(got) < len(down) and time.monotonic() < deadline:
                n = rover.recv_into(buf, 500)
                if n:
                    got.append(bytes(buf[:n]))
            return got

        async def anchor_side():
            lst, ports = await open_anchor(link, mtu=mtu)
            port = await asyncio.wait_for(ports.get(), WAIT)
            rover_done = rover_thread(rover_side)

            async def send_all():
                for p in down:
                    await port.send(p)
            sender = asyncio.ensure_future(send_all())
            got = [await asyncio.wait_for(port.recv(), WAIT) for _ in up]
            await asyncio.wait_for(sender, WAIT)
            rover_got = await asyncio.get_running_loop().run_in_executor(None, rover_done)
            stats = (port.bad_frames, port.garbage_bytes, port.rx, port.tx)
            await close_anchor(lst)
            return got, rover_got, stats

        got, rover_got, (bad, garbage, rx, tx) = run_async(anchor_side())
        rover.close()
    assert got == up
    assert rover_got == down
    assert bad == 0 and garbage == 0
    wire = sum(len(p) + framing.frame_overhead for p in up)
    assert rover.tx == wire == rx == link.up
    assert rover.bad_frames == 0 and rover.garbage_bytes == 0
    assert tx == rover.rx == link.down


# --- noisy link ----------------------------------------------------------------------------

def test_noise_drops_packets_but_never_delivers_a_damaged_one():
    n = 300
    quiet_ms = 2000     # no packet for this long: the sender is done
    up = [packet(i, 200, 3) for i in range(n)]
    down = [packet(i, 200, 4) for i in range(n)]
    # ~1 frame in 6 takes a flipped bit; a garbage burst every 50 ms each way.
    with PtyLink(rate=200000, bit_error_rate=1e-4, garbage=(0.05, 40), seed=7) as link:
        rover = SerialPort(link.rover_link, mtu=256)

        def rover_side():
            got = []
            buf = bytearray(256)
            for p in up:
                rover.send(p)
            for _ in range(2 * n):
                k = rover.recv_into(buf, quiet_ms)
                if not k:
                    break
                got.append(bytes(buf[:k]))
            return got

        async def anchor_side():
            lst, ports = await open_anchor(link, mtu=256)
            port = await asyncio.wait_for(ports.get(), WAIT)
            rover_done = rover_thread(rover_side)

            async def send_all():
                for p in down:
                    await port.send(p)
            sender = asyncio.ensure_future(send_all())
            got = []
            for _ in range(2 * n):
                try:
                    got.append(await asyncio.wait_for(port.recv(), quiet_ms / 1000))
                except asyncio.TimeoutError:
                    break
            await asyncio.wait_for(sender, WAIT)
            rover_got = await asyncio.get_running_loop().run_in_executor(None, rover_done)
            stats = (port.bad_frames, port.garbage_bytes)
            await close_anchor(lst)
            return got, rover_got, stats

        got, rover_got, (bad, garbage) = run_async(anchor_side())
        rover.close()
        print("\nnoisy link: up %d/%d packets, %d bad frames; down %d/%d, %d bad; "
              "%s bits flipped, %s garbage bytes"
              % (len(got), n, bad, len(rover_got), n, rover.bad_frames,
                 link.corrupted_bits, link.garbage_bytes))
    for received, sent, bad_count in ((got, up, bad), (rover_got, down, rover.bad_frames)):
        ids = []
        for p in received:
            i, intact = check(p)
            assert intact and p == sent[i]
            ids.append(i)
        assert ids == sorted(set(ids)), "packets out of order or repeated"
        assert n // 2 < len(ids) < n, "this much noise costs some packets, not most"
        assert bad_count > 0
    assert link.corrupted_bits["up"] > 0 and link.corrupted_bits["down"] > 0
    assert garbage > 0 and rover.garbage_bytes > 0


# --- UART receive buffer -------------------------------------------------------------------

def test_small_rxbuf_overruns_when_the_reader_is_busy():
    frames = 20
    wire = frames * (100 + framing.frame_overhead)
    with PtyLink(rxbuf=256) as link:
        # The anchor holds the device open but does not read (as if busy elsewhere).
        ser = serial.Serial(link.anchor_link, 115200, timeout=0, exclusive=True)
        rover = SerialPort(link.rover_link, mtu=128)
        for i in range(frames):
            rover.send(packet(i, 100, 5))
        assert link.wait_for(
            lambda l: l.delivered["up"] + l.overrun_bytes["up"] == l.up == wire, WAIT)
        print("\nrxbuf 256: %d wire bytes sent, %d delivered, %d overrun"
              % (wire, link.delivered["up"], link.overrun_bytes["up"]))
        assert link.delivered["up"] == 256
        assert link.overrun_bytes["up"] == wire - 256
        assert ser.in_waiting == 256

        async def read_what_is_left():
            port = SerialPacketPort(ser, "serial:test", mtu=128)
            got = []
            for _ in range(frames):
                try:
                    got.append(await asyncio.wait_for(port.recv(), 0.5))
                except asyncio.TimeoutError:
                    break
            port.close()
            return got, port.rx
        got, rx = run_async(read_what_is_left())
        rover.close()
    # Two whole frames fit in 256 bytes; the third was cut off by the overrun.
    assert got == [packet(0, 100, 5), packet(1, 100, 5)]
    assert rx == 256


# --- devices that vanish -------------------------------------------------------------------

def test_listener_hands_out_a_new_port_after_the_device_comes_back():
    with PtyLink() as link:
        rover = SerialPort(link.rover_link, mtu=512)

        def echo_through_rover(n):
            buf = bytearray(512)
            rover.send(b"ping %d" % n)
            for _ in range(20):
                k = rover.recv_into(buf, 500)
                if k:
                    return bytes(buf[:k])
            return None

        async def main():
            lst, ports = await open_anchor(link, min_backoff=0.05, max_backoff=0.4,
                                           check_interval=0.2)
            loop = asyncio.get_running_loop()
            seen = []
            for round_ in range(2):
                port = await asyncio.wait_for(ports.get(), WAIT)
                seen.append(port)
                answer = loop.run_in_executor(None, echo_through_rover, round_)
                p = await asyncio.wait_for(port.recv(), WAIT)
                await port.send(p.upper())
                assert await asyncio.wait_for(answer, WAIT) == b"PING %d" % round_
                link.vanish("anchor")
                await asyncio.wait_for(port.gone.wait(), WAIT)
                with pytest.raises(ConnectionError):
                    await port.recv()
                with pytest.raises(ConnectionError):
                    await port.send(b"x")
                # While the device is away, the listener keeps trying to open it.
                failures = lst.open_failures
                await asyncio.wait_for(_until(lambda: lst.open_failures > failures), WAIT)
                link.reappear("anchor")
            port = await asyncio.wait_for(ports.get(), WAIT)
            seen.append(port)
            opens = lst.opens
            await close_anchor(lst)
            return seen, opens

        seen, opens = run_async(main())
        rover.close()
    assert len(set(map(id, seen))) == 3 and opens == 3
    assert all(p.error for p in seen)


async def _until(predicate, step=0.02):
    # Bounded by the caller's wait_for: polls a counter the listener updates.
    while not predicate():
        await asyncio.sleep(step)


def test_rover_port_raises_link_error_when_its_device_vanishes():
    with PtyLink() as link:
        rover = SerialPort(link.rover_link, mtu=64)
        buf = bytearray(64)
        assert rover.recv_into(buf, 50) == 0     # an idle line is a timeout, not an error
        link.vanish("rover")
        t = time.monotonic()
        with pytest.raises(LinkError):
            rover.recv_into(buf, 5000)
        assert time.monotonic() - t < 2.0
        with pytest.raises(LinkError):
            rover.send(b"after")
        rover.close()


# --- the rover under MicroPython -----------------------------------------------------------

MPY_PEER = r"""
import sys, gc
sys.path.insert(0, sys.argv[1])
from rover.serial_port import SerialPort
port = SerialPort(sys.argv[2], 115200, mtu=int(sys.argv[3]))
# Opening sets the line raw, which flushes its input: the peer waits for this line.
print("ready")
buf = bytearray(port.mtu)
n = int(sys.argv[4])
echoed = 0
gc.collect()
free = gc.mem_free()
for _ in range(4 * n):
    k = port.recv_into(buf, 2000)
    if not k:
        break
    # Echo reversed: the peer checks the bytes went through this code, not around it.
    mv = memoryview(buf)
    for j in range(k // 2):
        mv[j], mv[k - 1 - j] = mv[k - 1 - j], mv[j]
    port.send(mv[:k])
    echoed += 1
    if echoed == n:
        break
print("echoed", echoed, "bad", port.bad_frames, "garbage", port.garbage_bytes,
      "rx", port.rx, "tx", port.tx, "heap_used", free - gc.mem_free())
port.close()
"""


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="no MicroPython in the venv")
def test_rover_port_under_micropython(tmp_path):
    mtu, n = 256, 256
    script = tmp_path / "mpy_serial_peer.py"
    script.write_text(MPY_PEER)
    sent = [packet(i, i + 1, 6) for i in range(n)]    # sizes 1..mtu
    with PtyLink() as link:
        async def main():
            lst, ports = await open_anchor(link, mtu=mtu)
            port = await asyncio.wait_for(ports.get(), WAIT)
            proc = await asyncio.create_subprocess_exec(
                MICROPYTHON, "-X", "heapsize=256K", str(script), os.path.join(ROOT, "firmware"),
                link.rover_link, str(mtu), str(n),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            got = []
            try:
                ready = await asyncio.wait_for(proc.stdout.readline(), WAIT)
                assert ready == b"ready\n", ready
                for p in sent:
                    await port.send(p)
                    got.append(await asyncio.wait_for(port.recv(), WAIT))
                out, _ = await asyncio.wait_for(proc.communicate(), WAIT)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await close_anchor(lst)
            return got, (ready + out).decode(), proc.returncode

        got, out, rc = run_async(main())
    assert rc == 0, out
    assert got == [p[::-1] for p in sent], out
    words = out.split()[1:]
    stats = dict(zip(words[0::2], words[1::2]))
    assert stats["echoed"] == str(n) and stats["bad"] == "0" and stats["garbage"] == "0", out
    wire = sum(len(p) + framing.frame_overhead for p in sent)
    assert int(stats["rx"]) == int(stats["tx"]) == wire, out


# --- URLs and the board UART ---------------------------------------------------------------

@pytest.mark.parametrize("url,expected", [
    ("serial:/dev/ttyUSB0", ("/dev/ttyUSB0", 115200, {})),
    ("serial:/dev/ttyUSB0:9600", ("/dev/ttyUSB0", 9600, {})),
    ("serial:uart1:921600?rxbuf=4096&mtu=256&cost=3",
     ("uart1", 921600, {"rxbuf": 4096, "mtu": 256, "cost": 3})),
    ("serial:/tmp/ptylink-x/rover?cost=0", ("/tmp/ptylink-x/rover", 115200, {"cost": 0})),
    ("serial:/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0:57600",
     ("/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0", 57600, {})),
])
def test_parse_serial_url(url, expected):
    assert parse_serial_url(url) == expected


@pytest.mark.parametrize("url,words", [
    ("tcp://host:1", "expected serial:"),
    ("serial:", "no device"),
    ("serial::9600", "no device"),
    ("serial:/dev/ttyS0:0", "baud must be positive"),
    ("serial:/dev/ttyS0?rxbuf", "key=value"),
    ("serial:/dev/ttyS0?speed=3", "unknown option 'speed'"),
    ("serial:/dev/ttyS0?mtu=-1", "non-negative integer"),
    ("serial:/dev/ttyS0?mtu=0", "mtu must be 1..65535"),
    ("serial:/dev/ttyS0?mtu=70000", "mtu must be 1..65535"),
    ("serial:/dev/ttyS0?cost=1&cost=2", "given twice"),
    ("serial:/dev/ttyS0?rxbuf=0", "rxbuf must be positive"),
])
def test_parse_serial_url_rejects(url, words):
    with pytest.raises(ValueError) as e:
        parse_serial_url(url)
    assert words in str(e.value)


class FakeUART:
    """machine.UART as a board has it (non-blocking with timeout=0), over one end of a
    socketpair; select.poll registers it through fileno() as MicroPython's does natively."""
    made = []

    def __init__(self, uid, baudrate=9600, rxbuf=None, timeout=None):
        self.args = (uid, baudrate, rxbuf, timeout)
        self.sock, self.peer = socket.socketpair()
        self.sock.setblocking(False)
        self.closed = False
        FakeUART.made.append(self)

    def fileno(self):
        return self.sock.fileno()

    def readinto(self, buf):
        try:
            return self.sock.recv_into(buf)
        except BlockingIOError:
            return None      # what a board's UART returns when nothing has arrived

    def write(self, data):
        try:
            return self.sock.send(data)
        except BlockingIOError:
            return None

    def close(self):
        self.closed = True
        self.sock.close()


def test_board_uart_branch(monkeypatch):
    fake = type(sys)("machine")
    fake.UART = FakeUART
    monkeypatch.setitem(sys.modules, "machine", fake)
    FakeUART.made.clear()
    port = SerialPort("uart2", 9600, rxbuf=1024, mtu=128)
    uart = FakeUART.made[0]
    assert uart.args == (2, 9600, 1024, 0)
    buf = bytearray(128)
    assert port.recv_into(buf, 20) == 0
    # An empty packet in between: 0 means "timed out", so the port must skip it.
    uart.peer.sendall(b"noise" + framing.encode_frame(b"first") + b"\xa7\x5c\x00"
                      + framing.encode_frame(b"") + framing.encode_frame(b"second"))
    got = []
    for _ in range(2):
        k = port.recv_into(buf, int(WAIT * 1000))
        got.append(bytes(buf[:k]))
    assert got == [b"first", b"second"]
    assert port.garbage_bytes == 8 and port.bad_frames >= 1
    port.send(b"hello board")
    uart.peer.settimeout(WAIT)
    assert uart.peer.recv(100) == framing.encode_frame(b"hello board")
    assert port.tx == 21
    port.close()
    assert uart.closed
    SerialPort("uart0", 115200)
    assert FakeUART.made[1].args == (0, 115200, None, 0)
    FakeUART.made[1].close()
    uart.peer.close()
    FakeUART.made[1].peer.close()


def test_tty_path_on_a_runtime_without_termios(monkeypatch):
    monkeypatch.setitem(sys.modules, "termios", None)
    with pytest.raises(ValueError, match="no termios"):
        SerialPort("/dev/ttyUSB0")


def test_uart_on_a_runtime_without_one(monkeypatch):
    monkeypatch.setitem(sys.modules, "machine", type(sys)("machine"))   # as on unix
    with pytest.raises(ValueError, match="no machine.UART"):
        SerialPort("uart1")


# --- the emulator itself -------------------------------------------------------------------

def test_pty_link_rate_and_outage():
    rate = 20000
    n = 8000
    down = threading.Event()
    down.set()
    with PtyLink(rate=rate, outages=lambda t: down.is_set()) as link:
        rover = os.open(link.rover_link, os.O_RDWR | os.O_NOCTTY)
        anchor = os.open(link.anchor_link, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(rover, b"lost in the outage")
            assert link.wait_for(lambda l: l.outage_bytes["up"] == 18, WAIT)
            down.clear()
            t = time.monotonic()
            os.write(rover, bytes(n))
            assert link.wait_for(lambda l: l.delivered["up"] == n, WAIT)
            elapsed = time.monotonic() - t
            got = _read_exactly(anchor, n)
        finally:
            os.close(rover)
            os.close(anchor)
    assert got == bytes(n)
    # The bucket starts full (one piece), then the line carries `rate` bytes/s.
    assert elapsed >= (n - link.piece) / rate * 0.95, elapsed
    with PtyLink(outages=[(0.0, 600.0)]) as a, PtyLink(outages=[(600.0, 1.0)]) as b:
        assert a.is_down() and not b.is_down()


def test_pty_link_flips_the_bits_it_counts():
    n = 20000
    with PtyLink(bit_error_rate=1e-3, seed=11) as link:
        rover = os.open(link.rover_link, os.O_RDWR | os.O_NOCTTY)
        anchor = os.open(link.anchor_link, os.O_RDWR | os.O_NOCTTY)
        try:
            os.write(rover, bytes(n))
            got = _read_exactly(anchor, n)
        finally:
            os.close(rover)
            os.close(anchor)
    flipped = sum(bin(b).count("1") for b in got)
    # 160000 bits at 1e-3: about 160 flips; the count is exact, the rate roughly right.
    assert flipped == link.corrupted_bits["up"]
    assert 80 < flipped < 320, flipped


def _read_exactly(fd, n):
    got = b""
    deadline = time.monotonic() + WAIT
    while len(got) < n and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if r:
            got += os.read(fd, n - len(got))    # a tty read returns at most 4095 bytes
    return got


def test_counting_relay_cuts_connections_within_the_bound():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    stop = threading.Event()

    def echo():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=_echo_conn, args=(c,), daemon=True).start()
    threading.Thread(target=echo, daemon=True).start()
    lo, hi = 0.2, 0.5
    relay = CountingRelay("127.0.0.1", srv.getsockname()[1], cut_every=(lo, hi), seed=3)
    try:
        for i in range(2):
            c = socket.create_connection(("127.0.0.1", relay.port), timeout=WAIT)
            t = time.monotonic()
            c.sendall(b"hello")
            assert c.recv(5) == b"hello"
            c.settimeout(hi + 2.0)
            try:
                while c.recv(100):
                    pass
            except ConnectionResetError:
                pass     # a cut may reach the client as a reset: closed all the same
            held = time.monotonic() - t
            c.close()
            assert held <= hi + 0.5, held
        assert relay.cuts >= 2
    finally:
        relay.close()
        stop.set()
        srv.close()


def _echo_conn(c):
    with c:
        c.settimeout(WAIT)
        try:
            while True:
                d = c.recv(4096)
                if not d:
                    return
                c.sendall(d)
        except OSError:
            return
