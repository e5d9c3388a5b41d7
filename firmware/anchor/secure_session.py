"""The anchor's end of the secure channel (core/secure.py): the handshake that tells a paired
rover from anything else on the radio, and reader/writer wrappers that open and seal records,
so `Anchor.serve_stream` runs the same session over them as over a plain stream."""
import logging
import os

from core import secure

log = logging.getLogger("anchor.secure")

HANDSHAKE_LIMIT = 4 + 1 + 64 + secure.NONCE + 2


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


async def _read_at_least(reader, buf, n):
    while len(buf) < n:
        data = await reader.read(n - len(buf))
        if not data:
            return buf, False
        buf += data
    return buf, True


async def accept(anchor, reader, writer):
    """(reader, writer, device): the secure wrappers and the authenticated device, or the
    originals and None for a plain rover at an anchor started with --open. Raises Refused
    after telling the rover why, when it cannot be served."""
    head, ok = await _read_at_least(reader, b"", 4)
    if not ok or head[:4] != secure.MAGIC:
        if anchor.open:
            return _Prefixed(reader, head), writer, None
        raise Refused("this anchor serves paired rovers only: pair it (anchorctl pair DEVICE; "
                      "rover ... pair CODE)")
    buf = head
    while True:
        try:
            got = secure.parse_hello1(buf)
        except secure.SecureError as e:
            raise Refused(str(e))
        if got is not None:
            break
        if len(buf) >= HANDSHAKE_LIMIT:
            raise Refused("secure hello too long")
        data = await reader.read(HANDSHAKE_LIMIT - len(buf))
        if not data:
            raise Refused("link closed during the secure handshake")
        buf += data
    device, nr, rx_max, used = got
    key = anchor.catalog.pairing_key(device)
    if key is None:
        writer.write(secure.hello2(secure.ST_NOT_PAIRED, bytes(secure.NONCE), bytes(secure.PROOF)))
        await writer.drain()
        raise Refused("rover %r is not paired (or was unpaired)" % device)
    na = os.urandom(secure.NONCE)
    writer.write(secure.hello2(secure.ST_OK, na, secure.proof(key, b"anchor", device.encode(), nr, na)))
    await writer.drain()
    rest, ok = await _read_at_least(reader, buf[used:], secure.PROOF)
    if not ok:
        raise Refused("link closed during the secure handshake")
    if not secure.equal(rest[:secure.PROOF], secure.proof(key, b"rover", device.encode(), nr, na)):
        raise Refused("rover %r failed to prove it holds its pairing secret" % device)
    k = secure.session_keys(key, nr, na)
    opener = secure.Opener(k[0], k[1])
    sealer = secure.Sealer(k[2], k[3], rx_max)
    r = SecureReader(_Prefixed(reader, rest[secure.PROOF:]), opener)
    return r, SecureWriter(writer, sealer), device
