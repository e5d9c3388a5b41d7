"""The fleet index: where in the store each device's chunks are, kept by many anchors in one
bucket without locks (docs/fleet.md, section 2). CPython only.

Objects, every one written once:
  epoch/<n>                 created with If-None-Match by whichever anchor advances the epoch;
                            JSON {"at": unix time, "by": anchor id}
  idx/<n>/<anchor>-<seq>    entries an anchor offloaded while epoch n was current
  compacted/<c>             every entry of epochs <= c, merged (created once, If-None-Match)
Index objects are sealed like packs (ChaCha20-Poly1305 under the fleet's index key) and hold
CBOR [[device id, chunk id, pack name, offset, length, raw length], ...] sorted by device, then
chunk (entries without the raw length, five fields, are read too).

Why no lock is needed: a writer puts an index object into the epoch it last read as current,
at most WRITE_WINDOW seconds after reading it (an offload that takes longer reads again). So
once epoch c + 2 has existed for WRITE_WINDOW, no writer can still add to epochs <= c, and a
compaction of them (which any anchor may run, and two may run at once: they merge the same
objects into the same entries, and If-None-Match keeps the first) misses nothing. Readers use
compacted/<c> only in that case, and the merged sources are deleted one WRITE_WINDOW later
still, so a reader that listed them before the compaction appeared still finds them."""
import json
import os
import re
import struct
import time

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from anchor.fleet.packs import DamagedObject, MAGIC, NONCE, TAG

VERSION = 1
KIND_INDEX = 2
HEADER = struct.pack(">8sHH4x", MAGIC, VERSION, KIND_INDEX)
WRITE_WINDOW = 3600          # seconds a writer may take from reading the epoch to its PUT
MAX_OBJECTS = 1000           # index objects in an epoch before it is advanced
MAX_AGE = 6 * 3600           # ...or seconds since it began


_NAME = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")    # device ids that may stand in an object's name


def _num(key):
    return int(key.rsplit("/", 1)[1]) if key.rsplit("/", 1)[1].isdigit() else None


class FleetIndex:
    def __init__(self, objects, index_key, anchor_id, now=time.time):
        self.objects = objects
        self.aead = ChaCha20Poly1305(index_key)
        self.anchor = anchor_id
        self.now = now              # injectable clock: tests move time, they do not wait
        self.seq = 0

    # --- epochs --------------------------------------------------------------------------

    def epochs(self):
        """{n: start time} of the epochs that exist (epoch 0 is made on first use)."""
        out = {}
        for key, _ in self.objects.list("epoch/"):
            n = _num(key)
            if n is not None:
                out[n] = None
        if not out:
            self._create_epoch(0)
            return self.epochs()
        return out

    def _epoch_time(self, n):
        raw = self.objects.get("epoch/%d" % n)
        if raw is None:
            return None
        try:
            return float(json.loads(raw)["at"])
        except (ValueError, KeyError, TypeError):
            raise DamagedObject("epoch/%d does not hold a start time" % n)

    def _create_epoch(self, n):
        return self.objects.put_once("epoch/%d" % n, json.dumps(
            {"at": self.now(), "by": self.anchor}).encode())

    def current(self):
        return max(self.epochs())

    def maybe_advance(self):
        """Start epoch n + 1 if the current one is full or old; the new current epoch. Two
        anchors doing this at once create it once."""
        n = self.current()
        count = len(self.objects.list("idx/%d/" % n))
        start = self._epoch_time(n)
        if count >= MAX_OBJECTS or (start is not None and self.now() - start >= MAX_AGE):
            self._create_epoch(n + 1)
            return n + 1
        return n

    # --- writing -------------------------------------------------------------------------

    def write(self, entries, epoch=None):
        """Put entries [(device, chunk id, pack, offset, length)] into the current epoch (or
        `epoch`, as read earlier by this writer); the object's key."""
        n = self.current() if epoch is None else epoch
        self.seq += 1
        # An object of one device's entries says so in its name (d<device id>.): a reader that
        # wants one device's entries skips the other devices' objects without a GET.
        devices = set(e[0] for e in entries)
        one = devices.pop() if len(devices) == 1 else None
        only = "d%s." % one if isinstance(one, str) and _NAME.match(one) else ""
        key = "idx/%d/%s%s-%08d-%s" % (n, only, self.anchor, self.seq, os.urandom(4).hex())
        if not self.objects.put_once(key, self._seal(sorted(entries), key)):
            raise DamagedObject("index object %s existed already" % key)
        return key

    def _seal(self, entries, key):
        nonce = os.urandom(NONCE)
        body = cbor2.dumps([list(e) for e in entries])
        return HEADER + nonce + self.aead.encrypt(nonce, body, key.encode())

    def _open(self, key):
        raw = self.objects.get(key)
        if raw is None:
            return None           # deleted after a compaction this reader has not seen
        if len(raw) < len(HEADER) + NONCE + TAG or raw[:8] != MAGIC:
            raise DamagedObject("index object %s is not one" % key)
        version, kind = struct.unpack(">HH", raw[8:12])
        if version != VERSION or kind != KIND_INDEX:
            raise DamagedObject("index object %s is version %d kind %d; this anchor reads %d/%d"
                                % (key, version, kind, VERSION, KIND_INDEX))
        h = len(HEADER)
        try:
            body = self.aead.decrypt(raw[h:h + NONCE], raw[h + NONCE:], key.encode())
        except InvalidTag:
            raise DamagedObject("index object %s does not unseal: damaged, or another fleet's" % key)
        return [tuple(e) for e in cbor2.loads(body)]

    # --- reading and compacting ----------------------------------------------------------

    def _settled(self, c):
        """True once epochs <= c can take no more writes: epoch c + 2 began WRITE_WINDOW ago."""
        t = self._epoch_time(c + 2)
        return t is not None and self.now() - t >= WRITE_WINDOW

    def _compacted(self):
        """The newest compacted/<c> a reader may use, as c, or -1."""
        best = -1
        for key, _ in self.objects.list("compacted/"):
            c = _num(key)
            if c is not None and c > best and self._settled(c):
                best = c
        return best

    def _sources(self, upto, after=-1):
        keys = []
        for key, _ in self.objects.list("idx/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[1].isdigit() and after < int(parts[1]) <= upto:
                keys.append(key)
        return keys

    def load(self, device=None):
        """{(device, chunk id): (pack, offset, length[, raw length])}, of one device or all."""
        c = self._compacted()
        entries = []
        if c >= 0:
            got = self._open("compacted/%d" % c)
            if got is None:
                raise DamagedObject("compacted/%d vanished while in use" % c)
            entries.extend(got)
        for key in self._sources(1 << 62, c):
            name = key.rsplit("/", 1)[1]
            if device is not None and name.startswith("d") and "." in name and name[1:name.index(".")] != device:
                continue            # another device's object
            entries.extend(self._open(key) or ())
        # An entry is (device, chunk id, pack, offset, length[, raw length]): the value is
        # everything after the key, so entries of either length read the same way.
        return dict(((e[0], e[1]), tuple(e[2:])) for e in entries if device is None or e[0] == device)

    def compact(self):
        """Merge every settled epoch not yet compacted into compacted/<c>; then delete what an
        older compaction merged once that has settled too. The c compacted, or -1."""
        n = self.current()
        c = n - 2
        prev = self._compacted()
        self._collect(prev)
        if c <= prev or not self._settled(c):
            return -1
        merged = {}
        if prev >= 0:
            for e in self._open("compacted/%d" % prev) or ():
                merged[(e[0], e[1])] = e
        for key in self._sources(c, prev):
            for e in self._open(key) or ():
                merged.setdefault((e[0], e[1]), e)
        self.objects.put_once("compacted/%d" % c, self._seal(sorted(merged.values()), "compacted/%d" % c))
        return c

    def _collect(self, c):
        """Delete sources merged into compacted/<c> once c has been usable for WRITE_WINDOW
        (a reader that listed them before compacted/<c> was usable has read them by then)."""
        if c < 0:
            return
        t = self._epoch_time(c + 2)
        if t is None or self.now() - t < 2 * WRITE_WINDOW:
            return
        for key in self._sources(c):
            self.objects.delete(key)
        for key, _ in self.objects.list("compacted/"):
            k = _num(key)
            if k is not None and k < c:
                self.objects.delete(key)
