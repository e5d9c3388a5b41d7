# Content-defined chunking: exactly the cuts of pyfastcdc.FastCDC(8192, normalized_chunking=1,
# seed=0), i.e. FastCDC-2020, on both runtimes.  The spec, and why the 32-bit arithmetic below
# is exact, are in docs/chunking.md.
#
# - CPython (anchor): chunks_of() uses pyfastcdc itself when it imports (C speed).
# - MicroPython (rover): Chunker.scan() runs a @micropython.viper cutter in 32-bit-friendly
#   arithmetic; CPython runs the same arithmetic in plain Python (slow; tests only).
#
# Gear hash, one byte per step: h = (h << 1) + GEAR[b] (mod 2**64), checked after every byte
# against MASK_S before the normalisation point and MASK_L after it.  Every mask bit lies in
# bits 16..47 and carries only move upward, so h mod 2**48 decides every cut; it is kept as two
# limbs: lo (bits 0..15, plus not-yet-propagated carries) and hi (bits 16..47, only its low 32
# bits are ever tested, so it may wrap at the machine word).
import hashlib
from array import array

from anchor_core.compat import const, MICROPYTHON

try:
    from anchor_core import gear  # generated from pyfastcdc by tools/gen_gear.py (`make setup`)
except ImportError:
    raise ImportError("anchor_core/gear.py is missing: run `make setup` or "
                      "`python tools/gen_gear.py > firmware/anchor_core/gear.py`")

MIN_SIZE = const(2048)    # no cut before this many bytes (pyfastcdc rounds it down to even)
AVG_SIZE = const(8192)    # normalisation point: MASK_S before it, MASK_L from it on
MAX_SIZE = const(32768)   # a chunk is cut here if no hash hit came first

CHUNK_ID_SIZE = const(32)  # SHA-256 digest
OBJECT_ID_PREFIX = b"anchor.obj.v1\x00"

# Gear table as native 32-bit words, entry b at [2b] = bits 16..47, [2b+1] = bits 0..15 of
# GEAR[b]: one aligned array, so the viper loop reads both limbs off one pointer.
_TAB = array("I", [0] * 512)


def _build_table():
    lo = gear.GEAR_LO
    hi = gear.GEAR_HI
    if len(lo) != 512 or len(hi) != 1024:
        raise ValueError("anchor_core.gear: bad table size; regenerate with tools/gen_gear.py")
    for b in range(256):
        _TAB[2 * b] = int.from_bytes(hi[4 * b:4 * b + 4], "little")
        _TAB[2 * b + 1] = int.from_bytes(lo[2 * b:2 * b + 2], "little")


_build_table()

# Chunker state words (array "I", shared by the viper and the Python cutter).
_S_POS = const(0)      # position in the current chunk of the next byte to scan
_S_LO = const(1)       # low limb, < 2**16 between calls
_S_HI = const(2)       # high limb (32 bits)
_S_MASK_S = const(3)   # MASK_S >> 16
_S_MASK_L = const(4)   # MASK_L >> 16


if MICROPYTHON:
    import micropython

    # lo and hi come first only so the native emitter keeps them in machine registers (it gives
    # registers to the first locals); callers pass 0, 0 and the real values come from st.
    # The 8-byte unrolled body leaves lo unnormalised for at most 8 steps (lo < 2**25, safe in
    # a 32-bit signed word); the cut test adds the pending carries lo >> 16 to hi.
    @micropython.viper
    def _scan(lo: int, hi: int, buf: ptr8, start: int, end: int, st: ptr32) -> int:
        tab = uint(ptr8(_TAB))
        i = start
        pos = st[_S_POS]
        if pos < MIN_SIZE:  # bytes before it are not hashed
            n = MIN_SIZE - pos
            if end - i < n:
                st[_S_POS] = pos + end - i
                return -1
            i += n
            pos = MIN_SIZE
            lo = 0
            hi = 0
        else:
            lo = st[_S_LO]
            hi = st[_S_HI]
        while True:
            if pos < AVG_SIZE:
                m = st[_S_MASK_S]
                stop = i + AVG_SIZE - pos
            else:
                m = st[_S_MASK_L]
                stop = i + MAX_SIZE - pos
            if stop > end:
                stop = end
            i0 = i
            stop8 = stop - 7
            while i < stop8:
                p = ptr8(uint(buf) + i)
                t = ptr32((p[0] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                if not (((lo >> 16) + hi) & m):
                    st[_S_POS] = 0
                    return i
                t = ptr32((p[1] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                if not (((lo >> 16) + hi) & m):
                    st[_S_POS] = 0
                    return i + 1
                t = ptr32((p[2] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                if not (((lo >> 16) + hi) & m):
                    st[_S_POS] = 0
                    return i + 2
                t = ptr32((p[3] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                if not (((lo >> 16) + hi) & m):
                    st[_S_POS] = 0
                    return i + 3
                t = ptr32((p[4] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                if not (((lo >> 16) + hi) & m):
                    st[_S_POS] = 0
                    return i + 4
                t = ptr32((p[5] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                if not (((lo >> 16) + hi) & m):
                    st[_S_POS] = 0
                    return i + 5
                t = ptr32((p[6] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                if not (((lo >> 16) + hi) & m):
                    st[_S_POS] = 0
                    return i + 6
                t = ptr32((p[7] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                if not (((lo >> 16) + hi) & m):
                    st[_S_POS] = 0
                    return i + 7
                hi += lo >> 16
                lo &= 0xFFFF
                i += 8
            while i < stop:
                t = ptr32((buf[i] << 3) + tab)
                hi = t[0] + hi + hi
                lo = t[1] + lo + lo
                hi += lo >> 16
                lo &= 0xFFFF
                if not (hi & m):
                    st[_S_POS] = 0
                    return i
                i += 1
            pos += i - i0
            if pos >= MAX_SIZE:  # reached without a hit
                st[_S_POS] = 0
                return i
            if i >= end:
                break
        st[_S_POS] = pos
        st[_S_LO] = lo
        st[_S_HI] = hi
        return -1

else:

    def _scan(lo, hi, buf, start, end, st):
        # The same arithmetic as the viper cutter, one byte per step (CPython tests only).
        tab = _TAB
        i = start
        pos = st[_S_POS]
        if pos < MIN_SIZE:
            n = MIN_SIZE - pos
            if end - i < n:
                st[_S_POS] = pos + end - i
                return -1
            i += n
            pos = MIN_SIZE
            lo = 0
            hi = 0
        else:
            lo = st[_S_LO]
            hi = st[_S_HI]
        while True:
            if pos < AVG_SIZE:
                m = st[_S_MASK_S]
                stop = i + AVG_SIZE - pos
            else:
                m = st[_S_MASK_L]
                stop = i + MAX_SIZE - pos
            if stop > end:
                stop = end
            i0 = i
            while i < stop:
                b = buf[i] << 1
                lo = tab[b + 1] + lo + lo
                hi = (tab[b] + hi + hi + (lo >> 16)) & 0xFFFFFFFF
                lo &= 0xFFFF
                if not (hi & m):
                    st[_S_POS] = 0
                    return i
                i += 1
            pos += i - i0
            if pos >= MAX_SIZE:
                st[_S_POS] = 0
                return i
            if i >= end:
                break
        st[_S_POS] = pos
        st[_S_LO] = lo
        st[_S_HI] = hi
        return -1


class Chunker:
    """Streaming cut finder for one object at a time.

    scan(buf, start, end, final=False) treats buf[start:end] as the continuation of the current
    chunk and returns the index in buf where that chunk ends (exclusive) if a cut falls in the
    range -- the state then restarts for the next chunk at that index, so call scan(buf, cut,
    end, final) next -- or -1 with the state advanced past end.

    FastCDC-2020 (as pyfastcdc runs it) decides a hash hit on the last byte of an object
    differently: a hit at an even position of the chunk is ignored there.  So scan() needs to
    know whether buf[end-1] is the object's last byte: pass final=True with the last bytes of
    the object (the range may be empty).  With final=False the caller promises at least one
    more byte; a caller that learns about EOF only after the fact (readinto returning 0) keeps
    the last byte it has back until it knows, as chunks_of() does.  After a final scan that
    returns -1 the chunk ends at end and the chunker is reset for the next object.
    """

    def __init__(self):
        self._st = array("I", [0, 0, 0, gear.MASK_S_HI, gear.MASK_L_HI])

    def reset(self):
        st = self._st
        st[_S_POS] = 0
        st[_S_LO] = 0
        st[_S_HI] = 0

    def position(self):
        """Bytes of the current chunk scanned so far."""
        return self._st[_S_POS]

    def scan(self, buf, start, end, final=False):
        if not final:
            if start >= end:
                return -1
            return _scan(0, 0, buf, start, end, self._st)
        if start < end:
            cut = _scan(0, 0, buf, start, end - 1, self._st)
            if cut >= 0:
                return cut
            # pyfastcdc hashes bytes in pairs: the object's last byte is a cut candidate only
            # at an odd position of the chunk.
            if self._st[_S_POS] & 1:
                cut = _scan(0, 0, buf, end - 1, end, self._st)
                if cut >= 0:
                    return cut
        self.reset()
        return -1


try:
    import pyfastcdc as _pyfastcdc

    _FASTCDC = _pyfastcdc.FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE,
                                  normalized_chunking=1, seed=0)
except ImportError:
    _FASTCDC = None

HAVE_PYFASTCDC = _FASTCDC is not None


def chunks_of(f, buf, fast=True):
    """Yield (offset, length, chunk_id) for the chunks of binary file object f.

    buf is the caller's preallocated bytearray (>= 4 KiB) used for f.readinto(); chunk ids are
    SHA-256 digests updated across refills, so no chunk is held whole.  With fast=True and
    pyfastcdc importable (CPython), pyfastcdc cuts (same result, C speed); fast=False forces
    the portable Chunker.  An empty file yields nothing.
    """
    if fast and _FASTCDC is not None:
        return _chunks_of_pyfastcdc(f)
    if len(buf) < 4096:
        raise ValueError("chunks_of: buffer must be at least 4096 bytes")
    return _chunks_of_scan(f, buf)


def _chunks_of_pyfastcdc(f):
    sha256 = hashlib.sha256
    for c in _FASTCDC.cut_stream(f):
        yield (c.offset, c.length, sha256(c.data).digest())


def _chunks_of_scan(f, buf):
    mv = memoryview(buf)
    ck = Chunker()
    h = hashlib.sha256()
    base = 0     # offset in f of buf[0]
    cstart = 0   # offset in f where the current chunk starts
    have = 0     # bytes carried over at buf[0:have] (the held-back byte)
    while True:
        n = f.readinto(mv[have:])
        if n:
            end = have + n - 1  # hold the newest byte back until we know it is not the last
            final = False
        else:
            end = have
            final = True
        i = 0
        while True:
            cut = ck.scan(buf, i, end, final)
            if cut < 0:
                break
            h.update(mv[i:cut])
            yield (cstart, base + cut - cstart, h.digest())
            h = hashlib.sha256()
            cstart = base + cut
            i = cut
        if i < end:
            h.update(mv[i:end])
        if final:
            if base + end > cstart:
                yield (cstart, base + end - cstart, h.digest())
            return
        buf[0] = buf[end]
        base += end
        have = 1


class ObjectId:
    """Whole-object id: SHA-256 over OBJECT_ID_PREFIX, each chunk id in order, then the object
    size as u64 big-endian."""

    def __init__(self):
        self._h = hashlib.sha256(OBJECT_ID_PREFIX)
        self.n_chunks = 0

    def add(self, chunk_id):
        if self._h is None:
            raise ValueError("ObjectId: already finished")
        if len(chunk_id) != CHUNK_ID_SIZE:
            raise ValueError("ObjectId: chunk id must be 32 bytes")
        self._h.update(chunk_id)
        self.n_chunks += 1

    def finish(self, size):
        if self._h is None:
            raise ValueError("ObjectId: already finished")
        if size < 0 or size >= 1 << 64:
            raise ValueError("ObjectId: size out of range")
        h = self._h
        self._h = None
        h.update(size.to_bytes(8, "big"))
        return h.digest()


EMPTY_OBJECT_ID = ObjectId().finish(0)


def object_of(f, buf, fast=True):
    """(size, object_id, n_chunks) of binary file object f; buf as for chunks_of()."""
    oid = ObjectId()
    size = 0
    for _off, length, cid in chunks_of(f, buf, fast):
        oid.add(cid)
        size += length
    return size, oid.finish(size), oid.n_chunks
