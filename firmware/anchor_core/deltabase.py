# The anchor's side of a sub-chunk delta (anchor_core/delta.py has the formats and the
# rover's side): the block size for a base, its signatures, and the chunk rebuilt from a
# rover's instructions.  A rover never loads this module (its heap pays for every module
# it holds); it is sans-I/O like the rest of the core and tested on both runtimes.
import hashlib

from anchor_core.compat import const
from anchor_core.delta import MAX_BLOCK, MAX_BLOCKS, MIN_BLOCK, SIG

_STRONG = const(4)   # bytes of SHA-256 per block (delta.py's _STRONG, private there)


def block_size(n):
    """The block size for a base of n bytes: the power of two nearest sqrt(8 n) from below
    (signature bytes n / blk * 8 balance the literal a changed block costs, ~blk), raised
    until the base has at most MAX_BLOCKS blocks."""
    blk = MIN_BLOCK
    while blk < MAX_BLOCK and (blk * 2) * (blk * 2) <= 8 * n:
        blk *= 2
    while blk < MAX_BLOCK and n // blk > MAX_BLOCKS:
        blk *= 2
    return blk


def _sums(mv, blk):
    a = 0
    b = 0
    for k in range(blk):
        x = mv[k]
        a += x
        b += (blk - k) * x
    return a & 0xFFFF, b & 0xFFFF


def signatures(base, blk):
    """The signatures of base's full blocks (bytes, SIG per block)."""
    mv = memoryview(base)
    nb = len(base) // blk
    if nb > MAX_BLOCKS or blk < MIN_BLOCK or blk > MAX_BLOCK:
        raise ValueError("delta: %d blocks of %d bytes is outside the limits" % (nb, blk))
    out = bytearray(nb * SIG)
    for i in range(nb):
        blkmv = mv[i * blk:(i + 1) * blk]
        a, b = _sums(blkmv, blk)
        o = i * SIG
        out[o] = a >> 8
        out[o + 1] = a & 0xFF
        out[o + 2] = b >> 8
        out[o + 3] = b & 0xFF
        out[o + 4:o + SIG] = hashlib.sha256(blkmv).digest()[:_STRONG]
    return bytes(out)


def _varint(mv, i, n, what):
    """The LEB128 varint at mv[i] and the offset after it (at most 28 bits, before n)."""
    v = 0
    shift = 0
    while True:
        if i >= n or shift > 28:
            raise ValueError("delta: %s cut short" % what)
        x = mv[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return v, i


def apply(base, blk, ops, size):
    """The anchor's side: the chunk the instructions build from base, as bytes.  Raises
    ValueError on instructions that reach outside the base or past `size` bytes."""
    nb = len(base) // blk
    bmv = memoryview(base)
    omv = memoryview(ops)
    out = bytearray(size)
    o = 0
    i = 0
    n = len(ops)
    while i < n:
        v, i = _varint(omv, i, n, "instruction")
        k = v >> 1
        if k == 0:
            raise ValueError("delta: empty instruction")
        if v & 1:
            first, i = _varint(omv, i, n, "copy")
            if first + k > nb:
                raise ValueError("delta: copy of blocks %d..%d of a base of %d"
                                 % (first, first + k - 1, nb))
            ln = k * blk
            src = bmv[first * blk:first * blk + ln]
        else:
            ln = k
            if i + ln > n:
                raise ValueError("delta: literal runs past the instructions")
            src = omv[i:i + ln]
            i += ln
        if o + ln > size:
            raise ValueError("delta: builds more than %d bytes" % size)
        out[o:o + ln] = src
        o += ln
    if o != size:
        raise ValueError("delta: builds %d bytes, not %d" % (o, size))
    return bytes(out)
