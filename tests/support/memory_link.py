"""An in-memory packet link: the rover end is blocking (a thread), the anchor end is
asyncio, as on the real links. Optional seeded packet loss; `cut()` ends both ends the way
a radio that vanished would."""
import asyncio
import queue
import random

from rover.link import LinkError


class _RoverEnd:
    def __init__(self, pair):
        self.pair = pair
        self.mtu = pair.mtu
        self.overhead = 0
        self.q = queue.Queue(maxsize=4096)
        self.tx = self.rx = 0

    def send(self, packet):
        if self.pair.is_cut:
            raise LinkError("memory link cut")
        if len(packet) > self.mtu:
            raise LinkError("packet of %d bytes over mtu %d" % (len(packet), self.mtu))
        self.tx += len(packet)
        if self.pair.lose():
            return
        self.pair.loop.call_soon_threadsafe(self.pair.anchor_end.q.put_nowait, bytes(packet))

    def recv_into(self, buf, timeout_ms):
        try:
            p = self.q.get(timeout=max(0, timeout_ms) / 1000.0)
        except queue.Empty:
            if self.pair.is_cut:
                raise LinkError("memory link cut")
            return 0
        if p is None:
            raise LinkError("memory link cut")
        buf[:len(p)] = p
        self.rx += len(p)
        return len(p)

    def close(self):
        self.pair.cut()


class _AnchorEnd:
    def __init__(self, pair):
        self.pair = pair
        self.mtu = pair.mtu
        self.overhead = 0
        self.name = "memory"
        self.q = asyncio.Queue()
        self.tx = self.rx = 0

    async def send(self, packet):
        if self.pair.is_cut:
            raise ConnectionError("memory link cut")
        self.tx += len(packet)
        if self.pair.lose():
            return
        self.pair.rover_end.q.put(bytes(packet))

    async def recv(self):
        p = await self.q.get()
        if p is None:
            raise ConnectionError("memory link cut")
        self.rx += len(p)
        return p

    def close(self):
        self.pair.cut()


class MemoryLink:
    """Create on any thread with the anchor's event loop; `rover_end` and `anchor_end`."""

    def __init__(self, loop, mtu=512, loss=0.0, seed=1):
        self.loop = loop
        self.mtu = mtu
        self.loss = loss
        self.rnd = random.Random(seed)
        self.is_cut = False
        self.rover_end = _RoverEnd(self)
        self.anchor_end = None
        fut = asyncio.run_coroutine_threadsafe(self._make_anchor_end(), loop)
        self.anchor_end = fut.result(10)

    async def _make_anchor_end(self):
        return _AnchorEnd(self)

    def lose(self):
        return self.loss and self.rnd.random() < self.loss

    def cut(self):
        if self.is_cut:
            return
        self.is_cut = True
        self.rover_end.q.put(None)
        if self.anchor_end is not None:
            self.loop.call_soon_threadsafe(self.anchor_end.q.put_nowait, None)
