"""The channel drivers end to end: a real backup from the rover's code to an in-process
anchor over an in-memory packet link, clean and lossy."""
import threading
import time

import pytest

from tests.support.harness import make_tree, snapshot_of
from tests.support.inproc import InprocAnchor
from tests.support.memory_link import MemoryLink
from rover.backup import Backup
from rover.chanlink import ChannelLink, channel_lock


@pytest.mark.parametrize("loss", [0.0, 0.03])
def test_backup_over_memory_channel(tmp_path, loss):
    a = InprocAnchor(str(tmp_path / "anchor"))
    try:
        root = make_tree(str(tmp_path / "tree"), 60, 300_000, seed=4)
        ml = MemoryLink(a.lt.loop, mtu=512, loss=loss, seed=9)
        a.serve(ml.anchor_end)
        link = ChannelLink(ml.rover_end)
        s = Backup(link.stream(), "rover-1", str(tmp_path / "state"), root).run()
        assert s["entries"] == len(snapshot_of(root))
        assert s["chunks_sent"] > 0
        if loss:
            assert link.ch.retransmits > 0
        # nothing changed: the second backup sends no chunk
        s2 = Backup(link.stream(), "rover-1", str(tmp_path / "state"), root).run()
        assert s2["chunks_sent"] == 0 and s2["snapshot"] == s["snapshot"] + 1
        link.close()
    finally:
        a.close()


def _handover(lock, waiting):
    """Holds `lock` while another thread waits for it, lets it go and at once asks for it
    again, as a pumping thread does; returns who had it first after the release."""
    order = []

    def waiter():
        lock.acquire()
        order.append("waiter")
        lock.release()

    lock.acquire()
    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not waiting():
        assert time.monotonic() < deadline, "the waiter never waited"
    lock.release()
    lock.acquire()
    order.append("releaser")
    lock.release()
    t.join(10)
    return order


def test_a_thread_that_lets_the_channel_go_cannot_take_it_back_before_a_waiter():
    # A reader pumping for an echo lets the lock go every 10 ms; with a plain lock it takes
    # it back before the writer, woken but not yet running, can, for as many rounds as the
    # scheduler decides, while the writer holds the rest of the frame the echo waits for
    # (the 60 s stall of the BLE MTU 23 conformance test on a loaded machine).
    for _ in range(200):
        lock = channel_lock()
        assert _handover(lock, lock._entry.locked) == ["waiter", "releaser"]


class _ScriptedPort:
    """The anchor's packet port, played by the test: what the anchor sends is kept, and
    `during_send` runs inside each send (where a real port yields to the loop)."""
    name = "scripted"
    mtu = 64
    overhead = 0

    def __init__(self):
        import asyncio
        self.inbox = asyncio.Queue()
        self.sent = []
        self.during_send = None

    async def send(self, packet):
        self.sent.append(bytes(packet))
        if self.during_send is not None:
            await self.during_send(len(self.sent))

    async def recv(self):
        return await self.inbox.get()

    def close(self):
        pass


def test_a_wakeup_during_the_senders_last_await_is_not_lost():
    # The anchor's sender pass ends after SEND_BURST packets. If, while it awaits the last
    # of them, the rover's ACK empties the flight, no timer is left to wake it: only that
    # ACK's kick can, and the pass must not clear it, or the rest of the stream sits unsent
    # until the rover gives up (the ble-mtu23 stall of the link suite). Here the rover
    # answers every packet while the anchor is still in its send, as a fast link does.
    import asyncio
    from anchor_core import channel as chan
    from anchor.links import chanlink

    want = bytes(i % 251 for i in range(40 * 1024))

    async def scenario():
        port = _ScriptedPort()
        rover = chan.Channel(True, port.mtu, 0, 65535, 1 << 20, 4096, 65535)
        got = bytearray()
        buf = bytearray(65536)

        def rover_takes(now):
            while port.sent:
                rover.receive_packet(port.sent.pop(0), now)
            if 1 in rover.streams:
                n = rover.read_into(1, buf)
                if n > 0:
                    got.extend(buf[:n])
            for _ in range(64):
                p = rover.packet_to_send(now + 1000)   # any delayed ACK is due now
                if p is None:
                    break
                port.inbox.put_nowait(bytes(p))

        class Source:
            async def serve_stream(self, reader, writer):
                writer.write(want)
                await writer.drain()
                await reader.read(1)

        async def during_send(n):
            rover_takes(chanlink.now_ms())
            for _ in range(5):               # the receiver takes the ACK meanwhile
                await asyncio.sleep(0)

        port.during_send = during_send
        conn = chanlink.ChannelConnection(Source(), port, tx_buffer=len(want))
        runner = asyncio.ensure_future(conn.run())
        rover.connect(7, chanlink.now_ms())
        try:
            async def until_done():
                opened = False
                # Bounded: 10 s (wait_for below) of 10 ms turns. Each turn only delivers
                # what the anchor sent; the anchor's sender must keep going by itself.
                while len(got) < len(want):
                    rover_takes(chanlink.now_ms())
                    if rover.is_open and not opened:
                        rover.open_stream(1)
                        rover.write(1, b"go")
                        opened = True
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(until_done(), 10)
        finally:
            runner.cancel()
        return bytes(got), conn.ch

    got, ch = asyncio.run(scenario())
    assert got == want, "%d of %d bytes; the anchor sent %d packets" % (len(got), len(want), ch.snd_nxt)
