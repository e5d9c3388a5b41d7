"""MQTT packet ports, rover and anchor side, through a real mosquitto on loopback.

The rover runs on CPython (paho) in most tests and on the real MicroPython interpreter
(its own MQTT client, rover/mqtt_port.py) in one; the anchor's listener runs on asyncio.
"""
import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

from tests.support import services  # noqa: E402
from tests.support.services import Broker, Subscriber, free_port  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402

from anchor.links.mqtt_port import QUEUE_BYTES, MqttListener  # noqa: E402
from rover.link import LinkError  # noqa: E402
from rover.mqtt_port import MqttPort, publish_size  # noqa: E402

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
WAIT = 10          # seconds any single expected event may take


def start_broker(workdir):
    return Broker(str(workdir))     # waits for "running" and logs to a file


@pytest.fixture
def broker(tmp_path):
    b = start_broker(tmp_path)
    yield b
    b.close()


def packet(size, salt):
    return bytes((i * 31 + size * 7 + salt) & 0xFF for i in range(size))


def run(coro, timeout=180):
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Anchor:
    """A listener whose new ports are queued for the test."""

    def __init__(self, port, **kw):
        self.new_ports = asyncio.Queue()
        self.listener = MqttListener("127.0.0.1", port, self.new_ports.put_nowait, **kw)

    async def __aenter__(self):
        await self.listener.start(timeout=WAIT)
        return self

    async def __aexit__(self, *exc):
        self.listener.close()

    async def port(self):
        return await asyncio.wait_for(self.new_ports.get(), WAIT)


def rover_port(broker, device, **kw):
    return MqttPort("127.0.0.1", broker.port, device, **kw)


def recv(rover, timeout_ms=WAIT * 1000):
    buf = bytearray(rover.mtu)
    n = rover.recv_into(buf, timeout_ms)
    return bytes(buf[:n])


def raw_publish(broker, items):
    """Publishes (topic, payload) pairs with QoS 1 from a plain client, each acknowledged."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-raw-%d" % os.getpid())
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        for t, payload in items:
            info = c.publish(t, payload, qos=1)
            info.wait_for_publish(WAIT)
            assert info.is_published(), t
    finally:
        c.disconnect()
        c.loop_stop()


# --- URLs -------------------------------------------------------------------------------

def parse_mqtt_url(url):
    """What rover --link mqtt://... parses with."""
    from anchor_core import linkurl
    return linkurl.host_port(url, "mqtt")


def test_parse_mqtt_url():
    assert parse_mqtt_url("mqtt://127.0.0.1:1883") == ("127.0.0.1", 1883, {})
    assert parse_mqtt_url("mqtt://broker.lan:8883?mtu=512&cost=2") == ("broker.lan", 8883, {"mtu": 512, "cost": 2})
    assert parse_mqtt_url("mqtt://[::1]:1883") == ("::1", 1883, {})
    bad = {
        "mqtt://127.0.0.1": "expected mqtt://HOST:PORT",
        "tcp://127.0.0.1:1883": "expected mqtt://HOST:PORT",
        "mqtt://:1883": "expected mqtt://HOST:PORT",
        "mqtt://h:0": "port 0 is not in 1..65535",
        "mqtt://h:70000": "port 70000 is not in 1..65535",
        "mqtt://user@h:1883": "no user name or path",
        "mqtt://h:1883/x": "expected mqtt://HOST:PORT",
        "mqtt://h:1883?qos=2": "unknown option 'qos'",
        "mqtt://h:1883?mtu": "is not key=value",
        "mqtt://h:1883?mtu=big": "not a non-negative integer",
        "mqtt://h:1883?mtu=0": "mtu must be 1..",
        "mqtt://h:1883?mtu=1&mtu=2": "given twice",
    }
    for url, why in bad.items():
        with pytest.raises(ValueError, match=why.replace("?", r"\?").replace("[", r"\[")):
            parse_mqtt_url(url)


def test_bad_device_is_refused_before_connecting():
    with pytest.raises(LinkError, match="device 'a/b'"):
        MqttPort("127.0.0.1", free_port(), "a/b")


# --- packets ----------------------------------------------------------------------------

def test_packets_both_ways_arrive_whole(broker):
    async def scenario():
        async with Anchor(broker.port) as a:
            rover = await asyncio.to_thread(rover_port, broker, "rover-1")
            try:
                assert rover.mtu == 1024
                assert rover.overhead == 1 + 2 + 2 + len("anchor/v1/rover-1/up") + 2 + 4
                # Nagle off on both paho sockets (with it, an echo costs a delayed ACK).
                for sock in (a.listener._client.socket(), rover._c.socket()):
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                sizes = list(range(1, rover.mtu + 1))
                # In windows of 32, far below what the queues hold, so none is dropped.
                port = None
                for i in range(0, len(sizes), 32):
                    window = sizes[i:i + 32]
                    await asyncio.to_thread(lambda: [rover.send(packet(s, 1)) for s in window])
                    if port is None:
                        port = await a.port()
                        assert port.name == "mqtt:rover-1" and port.mtu == 1024
                    for s in window:
                        got = await asyncio.wait_for(port.recv(), WAIT)
                        assert got == packet(s, 1), s
                for i in range(0, len(sizes), 32):
                    window = sizes[i:i + 32]
                    for s in window:
                        await port.send(packet(s, 2))
                    got = await asyncio.to_thread(lambda: [recv(rover) for _ in window])
                    assert got == [packet(s, 2) for s in window]
                assert rover.dropped == port.dropped == 0
                # Both ends count the same MQTT bytes, and more than the payloads.
                payload = sum(sizes)
                assert rover.tx == port.rx > payload + len(sizes) * 20
                assert rover.rx == port.tx > payload + len(sizes) * 20
                assert rover.tx == sum(publish_size(len(rover.up), s) + 4 for s in sizes)
            finally:
                await asyncio.to_thread(rover.close)
    run(scenario())


def test_second_device_gets_its_own_port(broker):
    async def scenario():
        async with Anchor(broker.port) as a:
            ra = await asyncio.to_thread(rover_port, broker, "rover-a")
            rb = await asyncio.to_thread(rover_port, broker, "rover-b")
            try:
                await asyncio.to_thread(ra.send, b"from a 1")
                pa = await a.port()
                await asyncio.to_thread(rb.send, b"from b 1")
                pb = await a.port()
                assert (pa.name, pb.name) == ("mqtt:rover-a", "mqtt:rover-b")
                await asyncio.to_thread(ra.send, b"from a 2")
                await asyncio.to_thread(rb.send, b"from b 2")
                assert [await pa.recv(), await pa.recv()] == [b"from a 1", b"from a 2"]
                assert [await pb.recv(), await pb.recv()] == [b"from b 1", b"from b 2"]
                assert set(a.listener.ports) == {"rover-a", "rover-b"}
                # Down: a's packet goes first; b's first packet must still be its own.
                await pa.send(b"to a")
                await pb.send(b"to b")
                assert await asyncio.to_thread(recv, rb) == b"to b"
                assert await asyncio.to_thread(recv, ra) == b"to a"
                assert a.new_ports.empty()
            finally:
                await asyncio.to_thread(ra.close)
                await asyncio.to_thread(rb.close)
    run(scenario())


def test_oversized_packets_are_refused(broker, caplog):
    caplog.set_level("WARNING", logger="anchor.mqtt")

    async def scenario():
        async with Anchor(broker.port) as a:
            rover = await asyncio.to_thread(rover_port, broker, "rover-1")
            small = await asyncio.to_thread(rover_port, broker, "rover-s", max_payload=100)
            try:
                with pytest.raises(ValueError, match="packet of 1025 bytes exceeds the port's mtu of 1024"):
                    rover.send(bytes(1025))
                with pytest.raises(ValueError, match="packet of 101 bytes exceeds the port's mtu of 100"):
                    small.send(bytes(101))
                # Others' oversized or misaddressed messages never reach a port: a device
                # that sends too much, and topics whose device id is not one.
                await asyncio.to_thread(raw_publish, broker, [
                    ("anchor/v1/rover-big/up", bytes(1025)),
                    ("anchor/v1/bad!id/up", b"x"),
                    ("anchor/v1/" + "d" * 65 + "/up", b"x"),
                    ("anchor/v1/rover-big/up", b"fits"),
                ])
                port = await a.port()
                assert port.name == "mqtt:rover-big"
                assert await asyncio.wait_for(port.recv(), WAIT) == b"fits"
                assert a.listener.rejected == 3
                with pytest.raises(ValueError, match="mqtt:rover-big: packet of 1025 bytes exceeds the port's mtu of 1024"):
                    await port.send(bytes(1025))
                # The rover drops a message larger than its mtu (from anyone) and takes the next.
                await asyncio.to_thread(raw_publish, broker, [
                    ("anchor/v1/rover-s/down", bytes(101)),
                    ("anchor/v1/rover-s/down", b"ok"),
                ])
                assert await asyncio.to_thread(recv, small) == b"ok"
                assert small.dropped == 1
            finally:
                await asyncio.to_thread(rover.close)
                await asyncio.to_thread(small.close)
    run(scenario())
    text = caplog.text
    assert "rover-big sent a packet of 1025 bytes, more than max_payload 1024" in text
    assert "device id may hold only letters" in text
    assert "device id must be 1..64 characters" in text


def test_a_full_anchor_queue_drops_and_counts(broker):
    async def scenario():
        async with Anchor(broker.port) as a:
            ra = await asyncio.to_thread(rover_port, broker, "rover-a")
            rb = await asyncio.to_thread(rover_port, broker, "rover-b")
            try:
                data = bytes(1024)
                n = QUEUE_BYTES // 1024 + 8           # more than the queue holds; none read
                await asyncio.to_thread(lambda: [ra.send(data) for _ in range(n)])
                # a send does not wait for its PUBACK: wait here until the broker holds them all
                assert await asyncio.to_thread(ra.flush, WAIT)
                pa = await a.port()
                # rover-b publishes after the broker acknowledged all of rover-a's, and the
                # anchor's one connection gets them in that order: once b's packet is here,
                # all of a's have been queued or dropped.
                await asyncio.to_thread(rb.send, b"barrier")
                pb = await a.port()
                assert await asyncio.wait_for(pb.recv(), WAIT) == b"barrier"
                fit = QUEUE_BYTES // (1024 + pa.overhead)
                assert pa.dropped == n - fit > 0
                for _ in range(fit):
                    assert await asyncio.wait_for(pa.recv(), WAIT) == data
                # Room again: the next packet is kept.
                await asyncio.to_thread(ra.send, b"after")
                assert await asyncio.wait_for(pa.recv(), WAIT) == b"after"
                pa.close()
                with pytest.raises(ConnectionError, match="mqtt:rover-a: port closed"):
                    await pa.recv()
                with pytest.raises(ConnectionError, match="mqtt:rover-a: port closed"):
                    await pa.send(b"x")
                # A closed port is forgotten: the device's next packet makes a new one.
                await asyncio.to_thread(ra.send, b"again")
                pa2 = await a.port()
                assert pa2 is not pa and await asyncio.wait_for(pa2.recv(), WAIT) == b"again"
            finally:
                await asyncio.to_thread(ra.close)
                await asyncio.to_thread(rb.close)
    run(scenario())


# --- broker trouble ---------------------------------------------------------------------

def test_broker_down_is_a_link_error():
    port = free_port()            # nothing listens there
    with pytest.raises(LinkError, match="cannot reach the MQTT broker at 127.0.0.1:%d" % port):
        MqttPort("127.0.0.1", port, "rover-1")

    async def anchor_side():
        listener = MqttListener("127.0.0.1", port, lambda p: None)
        with pytest.raises(ConnectionError, match="cannot reach the MQTT broker at 127.0.0.1:%d" % port):
            await listener.start(timeout=WAIT)
    run(anchor_side())


def test_broker_lost_mid_session_is_a_link_error(tmp_path):
    b = start_broker(tmp_path)
    try:
        rover = rover_port(b, "rover-1")
        rover.send(b"hello")
    finally:
        b.close()
    t = time.monotonic()
    with pytest.raises(LinkError, match="lost the MQTT broker at 127.0.0.1:%d" % b.port):
        recv(rover)                      # woken by the loss, not by the 10 s timeout
    assert time.monotonic() - t < WAIT / 2
    with pytest.raises(LinkError, match="lost the MQTT broker"):
        rover.send(b"again")
    rover.close()


def test_anchor_resubscribes_after_broker_restart(tmp_path, monkeypatch):
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    b = start_broker(tmp_path / "1")

    async def scenario():
        nonlocal b
        async with Anchor(b.port) as a:
            rover = await asyncio.to_thread(rover_port, b, "rover-1")
            await asyncio.to_thread(rover.send, b"before")
            port = await a.port()
            assert await port.recv() == b"before"
            # The same port again, on a fresh mosquitto that has forgotten every session.
            b.close()
            monkeypatch.setattr(services, "free_port", lambda: b.port)
            b = start_broker(tmp_path / "2")
            with pytest.raises(LinkError):
                await asyncio.to_thread(rover.send, b"lost")
            rover.close()
            rover = await asyncio.to_thread(rover_port, b, "rover-1")
            # Until paho has reconnected and subscribed again, the broker drops what the
            # rover sends (as a channel would, the rover sends again); bounded tries.
            got = None
            for i in range(120):
                await asyncio.to_thread(rover.send, b"after %d" % i)
                try:
                    got = await asyncio.wait_for(port.recv(), 0.5)
                    break
                except asyncio.TimeoutError:
                    continue
            assert got is not None and got.startswith(b"after "), "the listener never came back"
            assert a.listener.ports == {"rover-1": port} and a.new_ports.empty()
            await asyncio.to_thread(rover.close)
    try:
        run(scenario())
    finally:
        b.close()


def test_packets_sent_while_the_rover_was_away_arrive_after_it_reconnects(broker):
    async def scenario():
        async with Anchor(broker.port) as a:
            rover = await asyncio.to_thread(rover_port, broker, "rover-1")
            await asyncio.to_thread(rover.send, b"hello")
            port = await a.port()
            await port.recv()
            await asyncio.to_thread(rover.close)
            # Another subscriber sees the packets, so the broker has handled (and, for the
            # away rover's persistent session, queued) all three before the rover returns.
            watcher = await asyncio.to_thread(Subscriber, broker.port, "anchor/v1/rover-1/down")
            try:
                for i in range(3):
                    await port.send(b"while away %d" % i)
                assert await asyncio.to_thread(watcher.wait, 3)
            finally:
                await asyncio.to_thread(watcher.close)
            rover = await asyncio.to_thread(rover_port, broker, "rover-1")
            try:
                got = await asyncio.to_thread(lambda: [recv(rover) for _ in range(3)])
                assert got == [b"while away 0", b"while away 1", b"while away 2"]
            finally:
                await asyncio.to_thread(rover.close)
    run(scenario())


# --- numbers ----------------------------------------------------------------------------

def test_packets_per_second_through_mosquitto(broker):
    """1 KiB packets, rover to anchor, at most WINDOW of them on their way at once as the
    channel above keeps it (unwindowed, a rover that does not wait for PUBACKs outruns
    mosquitto's queue for the anchor, 1,000 messages by default, which drops the rest without
    a word); prints the rate. The floor only catches a stall per packet (Nagle against
    delayed ACKs would give ~25/s)."""
    n = 2000
    window = 64
    done = threading.Condition()
    seen = [0]

    def arrived(count):
        with done:
            seen[0] = count
            done.notify_all()

    def send_all(rover, data):
        for i in range(n):
            with done:
                # bounded: the anchor takes each packet within WAIT or the test fails here
                assert done.wait_for(lambda: i - seen[0] < window, WAIT), (i, seen[0])
            rover.send(data)

    async def scenario():
        async with Anchor(broker.port) as a:
            rover = await asyncio.to_thread(rover_port, broker, "rover-1")
            try:
                await asyncio.to_thread(rover.send, b"first")
                port = await a.port()
                await port.recv()
                data = bytes(1024)

                reader = asyncio.ensure_future(take(port, n, data, arrived))
                t = time.monotonic()
                await asyncio.to_thread(send_all, rover, data)
                rate = n / (time.monotonic() - t)
                return rate, await reader, port.dropped
            finally:
                await asyncio.to_thread(rover.close)
    rate, received, dropped = run(scenario())
    print("\nmqtt loopback, CPython rover -> anchor: %.0f packets/s of 1024 bytes "
          "(%d of %d dropped by the anchor's queue)" % (rate, dropped, n))
    assert received + dropped == n
    assert rate > 100


async def take(port, n, expected, arrived=None):
    """Receives until n packets were received or dropped (a full queue drops, and the
    channel above, not this test, would resend); each must equal `expected`. arrived(count):
    told how many were received or dropped so far."""
    received = 0
    deadline = time.monotonic() + 60
    while received + port.dropped < n:
        if arrived is not None:
            arrived(received + port.dropped)
        assert time.monotonic() < deadline, "%d received, %d dropped" % (received, port.dropped)
        try:
            # Short waits: a packet dropped at the end wakes no one, so look again.
            got = await asyncio.wait_for(port.recv(), 0.2)
        except asyncio.TimeoutError:
            continue
        assert got == expected
        received += 1
    return received


# --- the rover on MicroPython -----------------------------------------------------------

MPY_ROVER = r"""
import sys, time
import rover.mqtt_port
from rover.mqtt_port import MqttPort

host, port, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def packet(size, salt):
    b = bytearray(size)
    for i in range(size):
        b[i] = (i * 31 + size * 7 + salt) & 255
    return b


print("client", rover.mqtt_port.__file__)
p = MqttPort(host, port, device)
buf = bytearray(p.mtu)
full = packet(p.mtu, 3)
t = time.ticks_ms()
for i in range(UP_COUNT):
    p.send(full)
print("sent", UP_COUNT, time.ticks_diff(time.ticks_ms(), t))
sizes = list(range(1, 17)) + list(range(17, p.mtu - 16, 37)) + list(range(p.mtu - 16, p.mtu + 1))
print("echo", len(sizes))
t = time.ticks_ms()
for size in sizes:
    pkt = packet(size, 1)
    p.send(pkt)
    n = p.recv_into(buf, 10000)
    if n != size or buf[:n] != pkt:
        print("mismatch", size, n)
        sys.exit(1)
print("echoed", len(sizes), time.ticks_diff(time.ticks_ms(), t), p.tx, p.rx, p.overhead)
p.close()
print("closed")
sys.stdin.readline()           # the anchor has sent while we were away
p = MqttPort(host, port, device)
for k in range(3):
    n = p.recv_into(buf, 10000)
    print("queued", bytes(buf[:n]).decode())
print("idle", p.recv_into(buf, 0))
p.close()
print("done")
"""
UP_COUNT = 500


def rover_mpy_path():
    """MICROPYPATH as tools/rover-mpy builds it: the precompiled firmware if it is current,
    else the sources, then the libraries make setup installed."""
    stamp = os.path.join(ROOT, "build", "mpy", ".stamp")
    path = os.path.join(ROOT, "firmware")
    if os.path.exists(stamp):
        built = os.path.getmtime(stamp)
        newer = [f for d in ("anchor_core", "rover") for f in os.listdir(os.path.join(ROOT, "firmware", d))
                 if f.endswith(".py") and os.path.getmtime(os.path.join(ROOT, "firmware", d, f)) > built]
        if not newer:
            path = os.path.join(ROOT, "build", "mpy")
    return path + ":" + os.path.join(ROOT, "build", "mpy-lib")


def test_micropython_rover_with_cpython_anchor(broker, tmp_path):
    """The rover on MicroPython (256 KB heap, its own MQTT client precompiled by make setup)
    against the anchor's listener: full packets up, an echo of sizes 1..mtu, and packets
    queued at the broker while the rover was away."""
    script = tmp_path / "mqtt_rover_main.py"   # not rover.py: it would hide the package
    script.write_text(MPY_ROVER.replace("UP_COUNT", str(UP_COUNT)))

    async def scenario():
        async with Anchor(broker.port) as a:
            proc = await asyncio.create_subprocess_exec(
                MICROPYTHON, "-X", "heapsize=256K", str(script), "127.0.0.1", str(broker.port), "rover-mpy",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                env=dict(os.environ, MICROPYPATH=rover_mpy_path()))
            lines = []

            async def line():
                text = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
                lines.append(text)
                if not text or text.startswith("Traceback"):
                    rest = await asyncio.wait_for(proc.stdout.read(), WAIT)
                    raise AssertionError("the MicroPython rover stopped:\n%s\n%s" % (
                        "\n".join(lines), rest.decode(errors="replace")))
                return text.split()
            try:
                client_file = (await line())[1]
                assert "build/mpy" in client_file, client_file     # the precompiled copy
                port = await a.port()
                assert port.name == "mqtt:rover-mpy"
                # Unwindowed, the rover may outrun the queue: what arrives is whole, and
                # arrives or is counted as dropped.
                received = await take(port, UP_COUNT, packet(1024, 3))
                word, count, up_ms = await line()
                assert (word, int(count)) == ("sent", UP_COUNT)
                dropped_up = port.dropped
                assert received > 0 and received + dropped_up == UP_COUNT, (received, dropped_up)
                word, n_echo = await line()
                for _ in range(int(n_echo)):       # echo every packet back
                    await port.send(await asyncio.wait_for(port.recv(), WAIT))
                word, n, echo_ms, tx, rx, overhead = await line()
                assert word == "echoed", lines
                assert int(tx) == port.rx and int(rx) == port.tx
                assert int(overhead) == 1 + 2 + 2 + len("anchor/v1/rover-mpy/up") + 2 + 4
                assert port.dropped == dropped_up       # none in the lock-step echo
                assert await line() == ["closed"]
                watcher = await asyncio.to_thread(Subscriber, broker.port, "anchor/v1/rover-mpy/down")
                try:
                    for i in range(3):
                        await port.send(b"away-%d" % i)
                    assert await asyncio.to_thread(watcher.wait, 3)
                finally:
                    await asyncio.to_thread(watcher.close)
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
                assert [await line() for _ in range(3)] == [["queued", "away-%d" % i] for i in range(3)]
                assert await line() == ["idle", "0"]
                assert await line() == ["done"]
                assert await asyncio.wait_for(proc.wait(), WAIT) == 0, lines
                return (UP_COUNT * 1000 / max(1, int(up_ms)), int(n_echo) * 1000 / max(1, int(echo_ms)),
                        dropped_up)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    up_rate, echo_rate, dropped = run(scenario())
    print("\nmqtt loopback, MicroPython rover: %.0f packets/s of 1024 bytes up, acknowledged in a window "
          "(%d of %d dropped by the anchor's queue); echo %.0f round trips/s"
          % (up_rate, dropped, UP_COUNT, echo_rate))
    # Nagle on the rover's socket (a PUBLISH goes out in two writes) gives ~22/s here.
    assert up_rate > 200
    # An echo also waits on mosquitto's own Nagle (set_tcp_nodelay is off by default: ~40 ms
    # per round trip here); this floor only catches worse.
    assert echo_rate > 5


MPY_BROKER_DOWN = r"""
import sys
from rover.link import LinkError
from rover.mqtt_port import MqttPort

host, port, dead = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    MqttPort(host, dead, "rover-mpy")
    print("connected to nothing")
except LinkError as e:
    print("refused:", e)
p = MqttPort(host, port, "rover-mpy")
p.send(b"hello")
print("up")
sys.stdin.readline()           # the broker is gone now
buf = bytearray(p.mtu)
try:
    print("received", p.recv_into(buf, 10000))
except LinkError as e:
    print("lost:", e)
try:
    p.send(b"again")
    print("sent to nothing")
except LinkError as e:
    print("then:", e)
p.close()
"""


def test_micropython_rover_broker_down_is_a_link_error(tmp_path):
    script = tmp_path / "mqtt_rover_down.py"
    script.write_text(MPY_BROKER_DOWN)
    (tmp_path / "b").mkdir()
    b = start_broker(tmp_path / "b")
    dead = free_port()

    async def scenario():
        proc = await asyncio.create_subprocess_exec(
            MICROPYTHON, "-X", "heapsize=256K", str(script), "127.0.0.1", str(b.port), str(dead),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=dict(os.environ, MICROPYPATH=rover_mpy_path()))

        async def line():
            return (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().strip()
        try:
            assert await line() == \
                "refused: cannot reach the MQTT broker at 127.0.0.1:%d: [Errno 111] ECONNREFUSED" % dead
            assert await line() == "up"
            await asyncio.to_thread(b.close)
            t = time.monotonic()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            lost = "lost the MQTT broker at 127.0.0.1:%d: connection closed" % b.port
            assert await line() == "lost: " + lost
            assert time.monotonic() - t < WAIT / 2    # noticed at once, not at the 10 s timeout
            assert await line() == "then: " + lost
            assert await asyncio.wait_for(proc.wait(), WAIT) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    try:
        run(scenario())
    finally:
        b.close()


# --- a broker that breaks the protocol ----------------------------------------------------

MPY_HOSTILE = r"""
import sys
from rover.link import LinkError
from rover.mqtt_port import MqttPort

port = int(sys.argv[1])
buf = bytearray(1024)
try:
    p = MqttPort("127.0.0.1", port, "rover-h")
    got = []
    for _ in range(2):
        n = p.recv_into(buf, 5000)
        got.append(bytes(buf[:n]).decode() if n else "-")
    print("received", ",".join(got), "dropped", p.dropped)
    p.close()
except LinkError as e:
    print("error:", e)
"""

CONNACK = b"\x20\x02\x00\x00"
SUBACK = b"\x90\x03\x00\x01\x01"


def publish_packet(topic, payload, qos=1, pid=7, length=None):
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + (pid.to_bytes(2, "big") if qos else b"") + payload
    n = len(body) if length is None else length
    head = bytearray([0x30 | (qos << 1)])
    while True:
        b, n = n & 127, n >> 7
        head.append(b | (128 if n else 0))
        if not n:
            break
    return bytes(head) + body


DOWN = "anchor/v1/rover-h/down"

HOSTILE = {
    # what the "broker" sends after reading the client's CONNECT -> what the rover says
    "closes at once": (None, "error: MQTT broker at 127.0.0.1:PORT: connection closed (if it takes TLS on this port, "
                             "the link is mqtts://)"),
    "resets at once": ("RST", "error: MQTT broker at 127.0.0.1:PORT: connection closed (if it takes TLS on this "
                              "port, the link is mqtts://)"),
    "refuses the login": (b"\x20\x02\x00\x05", "error: MQTT broker at 127.0.0.1:PORT refused the connection: not "
                                               "authorized (check --mqtt-user and --mqtt-password-file)"),
    "endless length": (b"\x20\xff\xff\xff\xff\xff", "error: MQTT broker at 127.0.0.1:PORT sent a malformed packet "
                                                   "length"),
    "answers with a PUBACK": (b"\x40\x02\x00\x01", "error: MQTT broker at 127.0.0.1:PORT did not answer the "
                                                   "connection"),
    "QoS 2 message": (CONNACK + SUBACK + publish_packet(DOWN, b"x", qos=2),
                      "error: MQTT broker at 127.0.0.1:PORT sent a QoS 2 message; the rover subscribed at QoS 1"),
    "length shorter than its topic": (CONNACK + SUBACK + publish_packet(DOWN, b"", length=5),
                                      "error: MQTT broker at 127.0.0.1:PORT sent a malformed PUBLISH"),
    "other topics and an oversized packet": (CONNACK + SUBACK + publish_packet("anchor/v1/other/down", b"spy")
                                             + publish_packet(DOWN, b"y" * 2000) + publish_packet(DOWN, b"one")
                                             + publish_packet("a/b", b"no", qos=0) + publish_packet(DOWN, b"two"),
                                             "received one,two dropped 1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_micropython_rover_against_a_broker_that_breaks_the_protocol(tmp_path, case):
    """Whatever a broker sends, the rover's own client ends in one clear line (or takes what
    is well formed and drops the rest), and acknowledges each QoS 1 packet it read."""
    answer, says = HOSTILE[case]
    script = tmp_path / "mqtt_rover_hostile.py"
    script.write_text(MPY_HOSTILE)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(WAIT)
    port = srv.getsockname()[1]
    seen = []

    def broker():
        try:
            c, _ = srv.accept()
        except OSError:
            return
        with c:
            c.settimeout(WAIT)
            seen.append(c.recv(4096))           # CONNECT (and SUBSCRIBE, maybe)
            if answer is None:
                return
            if answer == "RST":                 # close with a reset, not an end of stream
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            c.sendall(answer)
            try:
                while True:                     # PUBACKs, DISCONNECT, until the rover closes
                    data = c.recv(4096)
                    if not data:
                        break
                    seen.append(data)
            except OSError:
                pass
    t = threading.Thread(target=broker, daemon=True)
    t.start()
    try:
        p = subprocess.run([MICROPYTHON, "-X", "heapsize=256K", str(script), str(port)], capture_output=True,
                           text=True, timeout=60, env=dict(os.environ, MICROPYPATH=rover_mpy_path()))
    finally:
        srv.close()
        t.join(WAIT)
    assert p.stdout.strip() == says.replace("PORT", str(port)), p.stdout + p.stderr
    assert seen and seen[0][:1] == b"\x10"             # it spoke MQTT first
    if case == "other topics and an oversized packet":
        wire = b"".join(seen)
        assert wire.count(b"\x40\x02\x00\x07") == 4, wire   # each QoS 1 message acknowledged, kept or not
