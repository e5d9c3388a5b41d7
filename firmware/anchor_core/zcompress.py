# A small zlib compressor for the rover (MicroPython's `deflate` module only decompresses).
#
# Output: a complete zlib stream (RFC 1950: header 78 01, Adler-32 trailer big-endian) holding
# ONE final deflate block with the fixed Huffman codes (RFC 1951 3.2.6), so no code tables are
# built or sent.  Matching is greedy LZ77 with one hash head per 3-byte hash (no chains):
# window 32 KiB, match length 3..258.  The anchor reads it with zlib.decompressobj().
#
# - MicroPython: the whole encoder (match search + bit writer) and Adler-32 are two
#   @micropython.viper functions over preallocated buffers; nothing is allocated per call.
# - CPython: the same algorithm in plain Python (slow; tests only need small inputs there).
#
# Arithmetic stays inside 32-bit machine words (viper ints on a 32-bit MCU): the bit buffer
# never holds more than 7 + 18 bits, the hash keeps bits 21..31 of a product (identical
# whether the multiply wraps or not), and Adler-32 reduces every 3800 bytes.
from array import array

from anchor_core.compat import const, MICROPYTHON

_HASH_BITS = const(11)
_HASH_SIZE = const(1 << _HASH_BITS)
_HASH_MASK = const(_HASH_SIZE - 1)
_HASH_SHIFT = const(32 - _HASH_BITS)   # the top bits of a 32-bit product
_HASH_MUL = const(0x1E35A7BD)
_WINDOW = const(32768)
_MIN_MATCH = const(3)
_MAX_MATCH = const(258)
_ADLER_MOD = const(65521)
_ADLER_BLOCK = const(3800)  # b stays below 2**31 between reductions

# One table of 32-bit words, shared by the viper and the Python encoder:
#   [0..256]      literal/EOB symbol s:   (bit-reversed Huffman code << 4) | code length
#   [256 + L]     match length L 3..258:  (code | extra bits << code length) << 4 | total bits
#   [_T_DIST + c] distance code c 0..29:  base << 16 | extra bits << 8 | reversed 5-bit code
#   [_T_DCODE + i] distance code of (distance - 1) = i for i < 256, else of 256 + (i >> 7)
_T_DIST = const(515)
_T_DCODE = const(545)
_T_SIZE = const(1057)

_LEN_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
             35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258)
_LEN_EXTRA = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
              3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0)
_DIST_BASE = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
              257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)
_DIST_EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
               7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13)


def _rev(code, n):
    r = 0
    for _ in range(n):
        r = (r << 1) | (code & 1)
        code >>= 1
    return r


def _fixed_code(sym):
    # (code, length) of a literal/length symbol in the fixed Huffman code.
    if sym < 144:
        return 0x30 + sym, 8
    if sym < 256:
        return 0x190 + sym - 144, 9
    if sym < 280:
        return sym - 256, 7
    return 0xC0 + sym - 280, 8


def _make_table():
    t = array("I", bytes(4 * _T_SIZE))
    for s in range(257):
        c, n = _fixed_code(s)
        t[s] = (_rev(c, n) << 4) | n
    for k in range(29):
        c, n = _fixed_code(257 + k)
        rc = _rev(c, n)
        e = _LEN_EXTRA[k]
        for ln in range(_LEN_BASE[k], min(_LEN_BASE[k] + (1 << e), 259)):
            t[256 + ln] = ((rc | ((ln - _LEN_BASE[k]) << n)) << 4) | (n + e)  # k=28 rewrites 258
    for c in range(30):
        t[_T_DIST + c] = (_DIST_BASE[c] << 16) | (_DIST_EXTRA[c] << 8) | _rev(c, 5)
    for c in range(30):
        lo = _DIST_BASE[c] - 1
        hi = lo + (1 << _DIST_EXTRA[c])
        for d in range(lo, hi):
            if d < 256:
                t[_T_DCODE + d] = c
            else:
                t[_T_DCODE + 256 + (d >> 7)] = c
    return t


_TAB = _make_table()


if MICROPYTHON:
    import micropython

    # Returns the stream length so far (header + deflate data, last byte flushed), or -1 once
    # that reaches lim.  out[0:2] is the zlib header, written by the caller.
    @micropython.viper
    def _encode(src: ptr8, n: int, out: ptr8, lim: int, head: ptr16, tab: ptr32) -> int:
        i = 0
        while i < _HASH_SIZE:
            head[i] = 0
            i += 1
        o = 2
        bb = 3  # BFINAL=1, BTYPE=01
        bc = 3
        i = 0
        hend = n - 2
        while i < n:
            ln = 0
            if i < hend:
                v = src[i] | (src[i + 1] << 8) | (src[i + 2] << 16)
                h = ((v * _HASH_MUL) >> _HASH_SHIFT) & _HASH_MASK
                c = int(head[h]) - 1
                head[h] = i + 1
                if c >= 0 and i - c <= _WINDOW and src[c] == src[i] \
                        and src[c + 1] == src[i + 1] and src[c + 2] == src[i + 2]:
                    m = n - i
                    if m > _MAX_MATCH:
                        m = _MAX_MATCH
                    ln = 3
                    while ln < m and src[c + ln] == src[i + ln]:
                        ln += 1
            if ln == 0:
                p = tab[src[i]]
                bb |= (p >> 4) << bc
                bc += p & 15
                i += 1
            else:
                p = tab[256 + ln]
                bb |= (p >> 4) << bc
                bc += p & 15
                while bc >= 8:
                    out[o] = bb
                    o += 1
                    bb >>= 8
                    bc -= 8
                d = i - c - 1
                if d < 256:
                    dc = tab[_T_DCODE + d]
                else:
                    dc = tab[_T_DCODE + 256 + (d >> 7)]
                p = tab[_T_DIST + dc]
                e = (p >> 8) & 0xFF
                bb |= ((p & 31) | ((d + 1 - (p >> 16)) << 5)) << bc
                bc += 5 + e
                # hash the positions the match covers, so later matches can start inside it
                j = i + 1
                i += ln
                stop = i
                if stop > hend:
                    stop = hend
                while j < stop:
                    v = src[j] | (src[j + 1] << 8) | (src[j + 2] << 16)
                    head[((v * _HASH_MUL) >> _HASH_SHIFT) & _HASH_MASK] = j + 1
                    j += 1
            while bc >= 8:
                out[o] = bb
                o += 1
                bb >>= 8
                bc -= 8
            if o >= lim:
                return -1
        # end of block: symbol 256 is seven 0 bits
        bc += 7
        while bc > 0:
            out[o] = bb
            o += 1
            bb >>= 8
            bc -= 8
        if o >= lim:
            return -1
        return o

    @micropython.viper
    def _adler(src: ptr8, n: int, out: ptr8, o: int):
        a = 1
        b = 0
        i = 0
        while i < n:
            stop = i + _ADLER_BLOCK
            if stop > n:
                stop = n
            while i < stop:
                a += src[i]
                b += a
                i += 1
            a = a % _ADLER_MOD
            b = b % _ADLER_MOD
        out[o] = b >> 8
        out[o + 1] = b
        out[o + 2] = a >> 8
        out[o + 3] = a

else:

    def _encode(src, n, out, lim, head, tab):
        for i in range(_HASH_SIZE):
            head[i] = 0
        o = 2
        bb = 3
        bc = 3
        i = 0
        hend = n - 2
        while i < n:
            ln = 0
            if i < hend:
                v = src[i] | (src[i + 1] << 8) | (src[i + 2] << 16)
                h = ((v * _HASH_MUL) >> _HASH_SHIFT) & _HASH_MASK
                c = head[h] - 1
                head[h] = i + 1
                if c >= 0 and i - c <= _WINDOW and src[c] == src[i] \
                        and src[c + 1] == src[i + 1] and src[c + 2] == src[i + 2]:
                    m = min(n - i, _MAX_MATCH)
                    ln = 3
                    while ln < m and src[c + ln] == src[i + ln]:
                        ln += 1
            if ln == 0:
                p = tab[src[i]]
                bb |= (p >> 4) << bc
                bc += p & 15
                i += 1
            else:
                p = tab[256 + ln]
                bb |= (p >> 4) << bc
                bc += p & 15
                while bc >= 8:
                    out[o] = bb & 0xFF
                    o += 1
                    bb >>= 8
                    bc -= 8
                d = i - c - 1
                dc = tab[_T_DCODE + d] if d < 256 else tab[_T_DCODE + 256 + (d >> 7)]
                p = tab[_T_DIST + dc]
                bb |= ((p & 31) | ((d + 1 - (p >> 16)) << 5)) << bc
                bc += 5 + ((p >> 8) & 0xFF)
                j = i + 1
                i += ln
                stop = min(i, hend)
                while j < stop:
                    v = src[j] | (src[j + 1] << 8) | (src[j + 2] << 16)
                    head[((v * _HASH_MUL) >> _HASH_SHIFT) & _HASH_MASK] = j + 1
                    j += 1
            while bc >= 8:
                out[o] = bb & 0xFF
                o += 1
                bb >>= 8
                bc -= 8
            if o >= lim:
                return -1
        bc += 7
        while bc > 0:
            out[o] = bb & 0xFF
            o += 1
            bb >>= 8
            bc -= 8
        if o >= lim:
            return -1
        return o

    def _adler(src, n, out, o):
        a = 1
        b = 0
        i = 0
        while i < n:
            stop = min(i + _ADLER_BLOCK, n)
            for k in range(i, stop):
                a += src[k]
                b += a
            i = stop
            a %= _ADLER_MOD
            b %= _ADLER_MOD
        out[o] = b >> 8
        out[o + 1] = b & 0xFF
        out[o + 2] = a >> 8
        out[o + 3] = a & 0xFF


_SLACK = const(64)   # room past the give-up point: one step's bytes and the end of block


class Compressor:
    """Compresses chunks of up to max_input bytes into one preallocated buffer, self.out.

    compress(src, n) encodes src[:n] and returns the length of a complete zlib stream in
    self.out, or -1 when that stream would not be smaller than n, or not smaller than
    max_output (send the chunk raw); it gives up as soon as the output reaches that.
    always=True returns the stream whatever its size (it always fits self.out; max_output
    does not apply).  The result stays valid until the next call.
    """

    def __init__(self, max_input=32768, always=True, max_output=None):
        if max_input < 0 or max_input > 65534:
            raise ValueError("max_input")  # hash heads are 16-bit positions
        self.max_input = max_input
        # always=False: only streams smaller than their input are wanted (the rover's case),
        # so the output never outgrows the input and 4 KiB of heap are spared; max_output
        # spares more, at the price of sending raw the largest chunks that shrink only a little.
        self.always_ok = always
        if always:
            size = max_input + max_input // 8
        else:
            size = max_input if max_output is None else min(max_output, max_input)
        self.out = bytearray(size + _SLACK)
        self.head = array("H", bytes(2 * _HASH_SIZE))

    def compress(self, src, n, always=False):
        if n < 0 or n > self.max_input or n > len(src):
            raise ValueError("n")
        if always and not self.always_ok:
            raise ValueError("made without room for always=True")
        out = self.out
        # the 4-byte Adler-32 trailer follows what _encode writes
        lim = len(out) - 4 if always else min(n, len(out) - _SLACK) - 4
        out[0] = 0x78
        out[1] = 0x01
        o = _encode(src, n, out, lim, self.head, _TAB)
        if o < 0:
            return -1
        _adler(src, n, out, o)
        return o + 4
