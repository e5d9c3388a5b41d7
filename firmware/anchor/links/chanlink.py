"""The anchor's end of a channel (anchor_core/channel.py) over a packet port (serial, MQTT, BLE).

One task per port drives the sans-I/O channel with the port and the clock; every stream
the rover opens becomes a session served by `SessionServer.serve_stream`, exactly as a TCP
connection is, through a small reader/writer pair that looks like asyncio's.
"""
import asyncio
import logging
import time

from anchor_core import channel as chan

log = logging.getLogger("anchor.link")

READ_CHUNK = 65536
SEND_BURST = 256     # packets per pass of the sender before it looks at the clock again


def now_ms():
    return int(time.monotonic() * 1000)


def _alive(conn, sid, cid):
    # A rover that restarts opens a new channel whose streams reuse the ids: a session of
    # the old one must see its end, not the new one's bytes.
    ch = conn.ch
    return ch.state == chan.OPEN and ch.conn_id == cid and sid in ch.streams


class _Reader:
    def __init__(self, conn, sid, cid):
        self.conn = conn
        self.sid = sid
        self.cid = cid
        self.buf = bytearray(READ_CHUNK)

    async def read(self, n):
        """Bytes from the stream, b"" at its end or when the channel dies."""
        conn = self.conn
        while True:
            ch = conn.ch
            if not _alive(conn, self.sid, self.cid):
                return b""
            k = ch.read_into(self.sid, memoryview(self.buf)[:min(n, READ_CHUNK)])
            if k < 0:
                return b""
            if k > 0:
                conn.kick()          # the window may have opened
                return bytes(self.buf[:k])
            await conn.wait_change()


class _Writer:
    def __init__(self, conn, sid, cid):
        self.conn = conn
        self.sid = sid
        self.cid = cid
        self.pending = []

    def get_extra_info(self, name, default=None):
        if name == "peername":
            return self.conn.port.name
        return default

    def write(self, data):
        if data:
            self.pending.append(bytes(data))
            self._push()

    def _push(self):
        ch = self.conn.ch
        while self.pending:
            if not _alive(self.conn, self.sid, self.cid):
                self.pending = []
                return
            d = self.pending[0]
            n = ch.write(self.sid, d)
            if n < len(d):
                self.pending[0] = d[n:]
                self.conn.kick()
                return
            self.pending.pop(0)
        self.conn.kick()

    async def drain(self):
        conn = self.conn
        while self.pending:
            if not _alive(conn, self.sid, self.cid):
                raise ConnectionError("link to %s lost" % conn.port.name)
            self._push()
            if self.pending:
                await conn.wait_change()

    def close(self):
        if _alive(self.conn, self.sid, self.cid):
            self.conn.ch.close_stream(self.sid)
            self.conn.kick()

    def is_closing(self):
        return not _alive(self.conn, self.sid, self.cid)


class ChannelConnection:
    """Serves one port until it is gone."""

    def __init__(self, server, port, rx_window=65535, rx_buffer=65536, tx_buffer=16384,
                 tx_window=None, dead_ms=30000):
        self.server = server              # serves each stream as a session (SessionServer)
        self.port = port
        self.ch = chan.Channel(False, port.mtu, port.overhead, rx_window, rx_buffer, tx_buffer,
                               tx_window or 65535, dead_ms)
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self.tasks = set()
        # Link health for the status page and /metrics: packets and wire bytes each way; the
        # channel counts what it sent again (retransmits, timeouts, dropped).
        self.up = True
        self.sent_packets = self.sent_bytes = self.rx_packets = self.rx_bytes = 0
        links = getattr(server, "channel_links", None)
        if links is not None:
            links[port.name] = self     # the latest connection on this port name

    def health(self):
        ch = self.ch
        sent = self.sent_packets
        return {"link": self.port.name, "up": self.up, "mtu": self.port.mtu,
                "packets_sent": sent, "bytes_sent": self.sent_bytes,
                "packets_received": self.rx_packets, "bytes_received": self.rx_bytes,
                "retransmits": ch.retransmits, "timeouts": ch.timeouts, "dropped": ch.dropped,
                # packets that carried something the first time, of all sent
                "goodput": round(1.0 - ch.retransmits / sent, 4) if sent else None}

    def kick(self):
        self._wake.set()

    async def wait_change(self):
        self._changed.clear()
        await self._changed.wait()

    def _notify(self):
        self._changed.set()

    async def run(self):
        rx = asyncio.ensure_future(self._receive())
        tx = asyncio.ensure_future(self._send())
        try:
            await asyncio.wait([rx, tx], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (rx, tx):
                t.cancel()
            self.ch.state = chan.DEAD
            self.up = False
            self._notify()
            for t in list(self.tasks):
                try:
                    await asyncio.wait_for(asyncio.shield(t), 5)
                except Exception:
                    t.cancel()
            self.port.close()

    async def _receive(self):
        while True:
            try:
                pkt = await self.port.recv()
            except ConnectionError as e:
                log.info("link %s gone: %s", self.port.name, e)
                return
            ch = self.ch
            resets = ch.resets
            self.rx_packets += 1
            self.rx_bytes += len(pkt)
            ch.receive_packet(pkt, now_ms())
            if ch.resets != resets:
                log.info("link %s: the rover started a new channel", self.port.name)
            while True:
                sid = ch.accept()
                if sid is None:
                    break
                t = asyncio.ensure_future(self._serve(sid, ch.conn_id))
                self.tasks.add(t)
                t.add_done_callback(self.tasks.discard)
            self._notify()
            self.kick()

    async def _serve(self, sid, conn_id):
        await self.server.serve_stream(_Reader(self, sid, conn_id), _Writer(self, sid, conn_id))

    async def _send(self):
        dead = False
        while True:
            # Cleared before the pass, never after it: the pass awaits the port, and a kick
            # that lands meanwhile (an ACK that empties the flight, a session's write) must
            # make the loop look again. Cleared after the sends, such a kick was lost; with
            # nothing in flight and no timer due, the channel then sat on unsent data until
            # the rover gave up (the ble-mtu23 stall: 60 s, about 1 run in 60).
            self._wake.clear()
            ch = self.ch
            if (ch.state == chan.DEAD) != dead:
                # Said once per death: the rover's next packet is answered with RST, and
                # its new SYN revives the channel on the same port.
                dead = not dead
                if dead:
                    log.warning("link %s: channel ended: %s", self.port.name, ch.error)
            t = now_ms()
            sent = 0
            for _ in range(SEND_BURST):
                p = ch.packet_to_send(t)
                if p is None:
                    break
                try:
                    await self.port.send(bytes(p))
                except ConnectionError as e:
                    log.info("link %s gone while sending: %s", self.port.name, e)
                    return
                sent += 1
                self.sent_packets += 1
                self.sent_bytes += len(p)
            if sent:
                self._notify()     # window room for writers
            if sent == SEND_BURST:
                # Possibly more to send: go round again at once, after letting the sessions
                # and the receiver have their turn.
                await asyncio.sleep(0)
                continue
            due = ch.next_timeout(now_ms())
            wait = None if due is None else max(0.0, (due - now_ms()) / 1000.0)
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                pass


async def serve_port(server, port, **options):
    """Serve one port until the link is gone. Used by every non-TCP link listener."""
    log.info("link %s up (mtu %d)", port.name, port.mtu)
    await ChannelConnection(server, port, **options).run()
    log.info("link %s down", port.name)


async def end_port_job(job, name):
    """A listener is done with a port: cancel the task that served it if it still runs,
    or log how it failed."""
    if not job.done():
        job.cancel()
        try:
            await job
        except (asyncio.CancelledError, Exception):
            pass
    elif not job.cancelled() and job.exception() is not None:
        log.error("%s: on_port failed", name, exc_info=job.exception())
