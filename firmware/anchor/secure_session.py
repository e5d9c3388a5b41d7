"""The anchor's end of the secure channel (anchor_core/secure.py): drives the handshake
(anchor_core/handshake.py) that tells a paired rover from anything else on the radio, and wraps the
reader/writer to open and seal records, so `SessionServer.serve_stream` runs the same session over
them as over a plain stream."""
import asyncio
import logging
import os

from anchor_core import handshake, secure

log = logging.getLogger("anchor.secure")


# What a refused link is told, whatever the reason (not paired, unpaired, a wrong key, a
# failed proof, a plain link): one answer, so that it tells a stranger nothing.
REFUSED = ("refused: this anchor serves paired rovers only: pair it (anchorctl pair DEVICE; "
           "rover ... pair CODE)")


# The store's time to answer about a pairing during a handshake (whose own bound is 10 s).
FLEET_SECONDS = 3.0


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


async def _through_fleet(server, fleet, device, key):
    """On a fleet anchor: the pairing key to use for `device`. One held here whose generation
    the fleet revoked is dropped (None); none held here is looked for in the store, and
    held here if found. The store is given FLEET_SECONDS; silent or away, the anchor decides
    on what it holds (docs/fleet.md, section 3)."""
    try:
        if key is not None:
            gen = fleet.held(device)
            if gen is not None and await asyncio.wait_for(
                    asyncio.to_thread(fleet.revoked_since, device, gen), FLEET_SECONDS):
                log.warning("fleet: the pairing of %s was revoked on an anchor of the fleet", device)
                fleet.drop(device)
                server.catalog.unpair(device)
                return None
            return key
        got = await asyncio.wait_for(asyncio.to_thread(fleet.lookup, device), FLEET_SECONDS)
    except Exception as e:          # timeout, unreachable, damaged: what is held here decides
        log.warning("fleet: no answer from the store about %s's pairing: %s", device, str(e) or "timed out")
        return key
    if got is None:
        return None
    server.catalog.pair(device, got[1])
    fleet.hold(device, got[0])
    log.info("fleet: %s is paired on another anchor of the fleet; its pairing is held here now", device)
    return got[1]


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
                if server.fleet_pairings is not None:
                    key = await _through_fleet(server, server.fleet_pairings, hs.device, key)
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
