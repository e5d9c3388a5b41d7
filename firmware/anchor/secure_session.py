"""The anchor's end of the secure channel (anchor_core/secure.py): drives the handshake
(anchor_core/handshake.py) that tells a paired rover from anything else on the radio, and wraps the
reader/writer to open and seal records, so `SessionServer.serve_stream` runs the same session over
them as over a plain stream."""
import logging
import os

from anchor_core import handshake, secure

log = logging.getLogger("anchor.secure")


# What a refused link is told, whatever the reason (not paired, unpaired, a wrong key, a
# failed proof, a plain link): one answer, so that it tells a stranger nothing.
REFUSED = ("refused: this anchor serves paired rovers only: pair it (anchorctl pair DEVICE; "
           "rover ... pair CODE)")


class Refused(Exception):
    pass


class _Prefixed:
    """A reader that first gives back bytes already taken from it."""

    def __init__(self, reader, head):
        self.reader = reader
        self.head = head

    async def read(self, n):
        if self.head:
            h, self.head = self.head[:n], self.head[n:]
            return h
        return await self.reader.read(n)


class SecureReader:
    def __init__(self, reader, opener):
        self.reader = reader
        self.opener = opener
        self.ready = []

    async def read(self, n):
        while not self.ready:
            data = await self.reader.read(65536)
            if not data:
                return b""
            try:
                self.ready.extend(p for p in self.opener.feed(data) if p)
            except secure.SecureError as e:
                raise Refused("secure channel: %s" % e)
        p = self.ready[0]
        if len(p) <= n:
            self.ready.pop(0)
            return p
        self.ready[0] = p[n:]
        return p[:n]


class SecureWriter:
    def __init__(self, writer, sealer):
        self.writer = writer
        self.sealer = sealer

    def write(self, data):
        mv = memoryview(bytes(data))
        step = self.sealer.max          # what the rover said it can take
        for off in range(0, len(mv), step):
            self.writer.write(bytes(self.sealer.seal(mv[off:off + step])))

    async def drain(self):
        await self.writer.drain()

    def close(self):
        self.writer.close()

    def get_extra_info(self, name, default=None):
        return self.writer.get_extra_info(name, default)


async def accept(server, reader, writer):
    """(reader, writer, device): the secure wrappers and the authenticated device, or the
    originals and None for a plain rover at an anchor started with --open. Raises Refused
    after telling the rover why, when it cannot be served."""
    hs = handshake.Responder(os.urandom(secure.NONCE))
    unknown = False
    try:
        while True:
            ev = hs.next_event()
            if ev == handshake.NEED_DATA:
                hs.receive_data(await reader.read(hs.need()))
            elif ev == handshake.PLAIN:
                if server.open:
                    return _Prefixed(reader, hs.trailing_data()), writer, None
                raise Refused("a plain link (no secure handshake)")
            elif ev == handshake.HELLO:
                key = server.catalog.pairing_key(hs.device)
                if key is None:
                    # Answered as if paired, under a key nobody holds: the proof we send
                    # is random to the peer either way, and the handshake fails at its
                    # proof just as a wrong key's does. A status byte "not paired" told
                    # anyone on the radio which device names are paired here.
                    unknown = True
                    key = os.urandom(secure.KEY_BYTES)
                hs.secret(key)
                writer.write(hs.data_to_send())
                await writer.drain()
            else:               # ESTABLISHED
                break
    except secure.SecureError as e:
        # The operator's log keeps the real reason; the peer gets REFUSED whatever it was.
        raise Refused("device %r is not paired" % hs.device if unknown else str(e))
    sealer, opener = hs.records()
    r = SecureReader(_Prefixed(reader, hs.trailing_data()), opener)
    return r, SecureWriter(writer, sealer), hs.device
