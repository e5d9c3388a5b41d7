# Deterministic test streams for the chunker: the same bytes on CPython and MicroPython, made
# on the fly (a multi-MB stream never sits in a 256 KB heap).  tools/make_chunker_vectors.py
# cuts these streams with pyfastcdc once and stores the results in vectors_chunker.py.
#
# A stream is a list of segments (kind, length):
#   "r"  pseudo-random: byte k of segment s is SHA-256(KEY + b"/%d/" % s + u32be(k // 32))[k % 32]
#   "t"  low-entropy text: fixed-width numbered log lines (LINE_FMT), byte k of the segment is
#        byte k % LINE_LEN of line k // LINE_LEN
#   "z"  zero bytes (no hash hit in a zero run: forces MAX_SIZE cuts)
import gc
import hashlib

KEY = b"anchor.chunker.test"
LINE_FMT = "%07d anchor field log: sensor=%05d status=ok\n"
LINE_LEN = len(LINE_FMT % (0, 0))
_ZEROS = bytes(512)


def _line(n):
    return (LINE_FMT % (n, (n * 7919) % 10007)).encode()


def stream_size(segments):
    total = 0
    for _kind, length in segments:
        total += length
    return total


class GenFile:
    """Binary file object over a segment list: readinto(), read().

    max_read > 0 caps every readinto() at that many bytes (short reads, like a pipe)."""

    def __init__(self, segments, max_read=0):
        for kind, length in segments:
            if kind not in ("r", "t", "z") or length < 0:
                raise ValueError("bad segment %r" % ((kind, length),))
        self.segments = segments
        self.size = stream_size(segments)
        self.max_read = max_read
        self.pos = 0
        self._seg = 0        # current segment index
        self._seg_off = 0    # offset inside it
        self._blk_key = None
        self._blk = b""

    def _block(self, seg, kind, idx):
        key = (seg, idx)
        if self._blk_key != key:
            if kind == "r":
                h = hashlib.sha256(KEY + ("/%d/" % seg).encode())
                h.update(idx.to_bytes(4, "big"))
                self._blk = h.digest()
            else:
                self._blk = _line(idx)
            self._blk_key = key
        return self._blk

    def readinto(self, buf):
        want = len(buf)
        if self.max_read and want > self.max_read:
            want = self.max_read
        mv = memoryview(buf)
        got = 0
        segs = self.segments
        while got < want and self._seg < len(segs):
            kind, length = segs[self._seg]
            left = length - self._seg_off
            if left <= 0:
                self._seg += 1
                self._seg_off = 0
                continue
            if kind == "z":
                n = min(left, want - got, len(_ZEROS))
                mv[got:got + n] = _ZEROS[:n]
            else:
                unit = 32 if kind == "r" else LINE_LEN
                idx = self._seg_off // unit
                at = self._seg_off - idx * unit
                n = min(left, want - got, unit - at)
                mv[got:got + n] = self._block(self._seg, kind, idx)[at:at + n]
            got += n
            self._seg_off += n
        self.pos += got
        return got

    def read(self, n=-1):
        if n is None or n < 0:
            n = self.size - self.pos
        gc.collect()            # one contiguous block on a 256 KB heap, and no second copy
        buf = bytearray(n)
        got = self.readinto(buf)
        return buf if got == n else buf[:got]


def records_digest(records):
    """SHA-256 over (offset u64be, length u32be, chunk id) of every chunk, in order."""
    h = hashlib.sha256()
    for off, length, cid in records:
        h.update(off.to_bytes(8, "big"))
        h.update(length.to_bytes(4, "big"))
        h.update(cid)
    return h.digest()
