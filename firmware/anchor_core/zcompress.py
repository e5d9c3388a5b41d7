# A small zlib compressor for the rover (MicroPython's `deflate` module only decompresses).
#
# Output: a complete zlib stream (RFC 1950: header 78 01, Adler-32 trailer big-endian) holding
# ONE final deflate block (RFC 1951), whichever of three is smallest for the chunk: dynamic
# Huffman codes built for it (BTYPE=10), the fixed codes (BTYPE=01), or stored (BTYPE=00, only
# when asked for a stream whatever its size).  The anchor reads it with zlib.decompressobj().
#
# Two passes over the chunk, which is whole in memory, so no symbol buffer is needed:
#   1. the LZ77 matcher runs and only counts literal/length and distance symbols (and the
#      extra bits), which gives every block type's exact size;
#   2. code lengths are built from the counts (Huffman, limited to 15 bits, 7 for the
#      code-length code), and the identical matcher runs again and writes the block.
# Matching: a hash of 3 bytes, _HASH_SIZE heads, and hash chains through a ring of the last
# _PREV_SIZE positions (up to _PROBES candidates each; the head alone reaches the whole 32 KiB
# window), with lazy evaluation (a match is kept only if the next position's is not longer).
#
# - MicroPython: every loop below is a @micropython.viper function over preallocated buffers;
#   nothing is allocated per chunk.
# - CPython: the same functions run as plain Python (slow; tests only need small inputs there).
#
# Arithmetic stays inside 32-bit machine words (viper ints on a 32-bit MCU) and below 2**31:
# the bit buffer holds at most 7 + 20 bits (a code of <= 15 bits and <= 5 extra, or the 13
# extra bits of a distance after its code is flushed), the hash keeps the top _HASH_BITS bits of
# a 32-bit product (identical whether the multiply wraps or not), table words are below 2**20,
# sort keys (count << 9 | symbol) below 2**25, and Adler-32 reduces every 3800 bytes.
from array import array

from anchor_core.compat import const, micropython, MICROPYTHON

if not MICROPYTHON:
    ptr8 = ptr16 = ptr32 = None  # viper's pointer annotations (CPython: plain Python)

_HASH_BITS = const(8)     # 256 heads: with chains, more buy little (docs/decisions.md)
_HASH_SIZE = const(1 << _HASH_BITS)
_HASH_MASK = const(_HASH_SIZE - 1)
_HASH_SHIFT = const(32 - _HASH_BITS)   # the top bits of a 32-bit product
_HASH_MUL = const(0x1E35A7BD)
_PREV_SIZE = const(2048)   # chain links for the last 2,048 positions (a power of two)
_PREV_MASK = const(_PREV_SIZE - 1)
_PROBES = const(32)        # candidates tried per position
_LAZY = const(32)          # a match this long is taken without looking one position further
_WINDOW = const(32768)
_MAX_MATCH = const(258)
_ADLER_MOD = const(65521)
_ADLER_BLOCK = const(3800)  # b stays below 2**31 between reductions

# Symbols, in one numbering for the counts (freq), the code lengths (lens) and the codes (tab):
#   0..287 literal/length (256: end of block; 286 and 287 only hold their place in the fixed
#   code), _D0 + 0..29 distance, _C0 + 0..18 code length
_D0 = const(288)
_C0 = const(318)
_NSYM = const(337)
# _SYM (bytes): [0 + L] length code (0..28) of match length L; [_S_DIST + i] distance code of
# (distance - 1) = i for i < 256, else of 256 + (i >> 7); [_S_ORDER + k] the code-length
# alphabet's transmission order.  _BX (words): [k] length code k's base << 8 | extra bits;
# [29 + c] distance code c's.
_S_DIST = const(259)
_S_ORDER = const(771)
_TAB_WORK = const(512)     # work[_TAB_WORK..+31]: counts and next codes per length

_LEN_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
             35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258)
_DIST_BASE = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
              257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)
_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)


def _make_tables():
    sym = bytearray(_S_ORDER + 19)
    bx = array("I", bytes(4 * 59))
    for k in range(29):
        e = 0 if k < 8 or k == 28 else (k - 4) >> 2
        bx[k] = (_LEN_BASE[k] << 8) | e
        for ln in range(_LEN_BASE[k], min(_LEN_BASE[k] + (1 << e), 259)):
            sym[ln] = k
    for c in range(30):
        e = 0 if c < 4 else (c - 2) >> 1
        bx[29 + c] = (_DIST_BASE[c] << 8) | e
        lo = _DIST_BASE[c] - 1
        for d in range(lo, lo + (1 << e)):
            sym[_S_DIST + (d if d < 256 else 256 + (d >> 7))] = c
    for k in range(19):
        sym[_S_ORDER + k] = _ORDER[k]
    return sym, bx


HASH_BITS = _HASH_BITS   # for tests that place data in hash buckets
_SYM, _BX = _make_tables()
del _make_tables, _LEN_BASE, _DIST_BASE, _ORDER  # a rover's heap keeps only the tables


@micropython.viper
def _lz(src: ptr8, n: int, head: ptr16, prev: ptr16, tab: ptr32, freq: ptr16, sym: ptr8,
        bx: ptr32, out: ptr8, st: ptr32, emit: int, sink) -> int:
    """The matcher.  emit=0: counts every symbol into freq (cleared first, end of block
    included) and returns the number of extra bits.  emit=1: writes the symbols with the codes
    in tab after the stream so far (st: [0] bytes, [1] bit buffer, [2] its bits), then the end
    of block and the last partial byte, and returns the stream length, or -1 once it reaches
    st[3] (not expected: the size was counted).  emit=2: as 1, but out is a staging buffer:
    each time st[3] bytes are in it, sink(k) takes out[:k] and writing starts over at 0; the
    bytes still in out at the end are returned."""
    i = 0
    while i < _HASH_SIZE:
        head[i] = 0
        i += 1
    if emit == 0:
        i = 0
        while i < _C0:
            freq[i] = 0
            i += 1
        freq[256] = 1
    o = int(st[0])
    bb = int(st[1])
    bc = int(st[2])
    lim = int(st[3])
    xb = 0
    hend = n - 2
    pl = 0     # the match found at i - 1, waiting to see whether i has a longer one
    pd = 0
    avail = 0  # whether i - 1 is still to be written (as a literal, or the start of pl)
    i = 0
    while i < n:
        cl = 0
        cd = 0
        if i < hend:
            v = src[i] | (src[i + 1] << 8) | (src[i + 2] << 16)
            h = ((v * _HASH_MUL) >> _HASH_SHIFT) & _HASH_MASK
            c = int(head[h]) - 1
            if pl < _LAZY:
                m = n - i
                if m > _MAX_MATCH:
                    m = _MAX_MATCH
                best = 2
                probes = _PROBES
                while c >= 0:
                    d = i - c
                    if d > _WINDOW:
                        break
                    if src[c + best] == src[i + best] and src[c] == src[i] \
                            and src[c + 1] == src[i + 1] and src[c + 2] == src[i + 2]:
                        ln = 3
                        while ln < m and src[c + ln] == src[i + ln]:
                            ln += 1
                        if ln > best:
                            best = ln
                            cd = d
                            if ln >= m:
                                break
                    probes -= 1
                    # prev[c] still holds c's link only while c is among the last _PREV_SIZE
                    if probes == 0 or d >= _PREV_SIZE:
                        break
                    c = int(prev[c & _PREV_MASK]) - 1
                if best > 2:
                    cl = best
            prev[i & _PREV_MASK] = head[h]
            head[h] = i + 1
        if pl > 2 and cl <= pl:
            # the match at i - 1 stands: hash the positions it covers, then write it
            j = i + 1
            stop = i - 1 + pl
            e = stop
            if e > hend:
                e = hend
            while j < e:
                v = src[j] | (src[j + 1] << 8) | (src[j + 2] << 16)
                h = ((v * _HASH_MUL) >> _HASH_SHIFT) & _HASH_MASK
                prev[j & _PREV_MASK] = head[h]
                head[h] = j + 1
                j += 1
            k = sym[pl]
            q = bx[k]
            d = pd - 1
            if d < 256:
                dc = sym[_S_DIST + d]
            else:
                dc = sym[_S_DIST + 256 + (d >> 7)]
            r = bx[29 + dc]
            if emit == 0:
                freq[257 + k] = freq[257 + k] + 1
                freq[_D0 + dc] = freq[_D0 + dc] + 1
                xb += (q & 255) + (r & 255)
            else:
                p = tab[257 + k]
                bb |= (p >> 4) << bc
                bc += p & 15
                bb |= (pl - (q >> 8)) << bc
                bc += q & 255
                while bc >= 8:
                    out[o] = bb & 255
                    o += 1
                    bb >>= 8
                    bc -= 8
                p = tab[_D0 + dc]
                bb |= (p >> 4) << bc
                bc += p & 15
                while bc >= 8:
                    out[o] = bb & 255
                    o += 1
                    bb >>= 8
                    bc -= 8
                bb |= (pd - (r >> 8)) << bc
                bc += r & 255
            i = stop
            pl = 0
            avail = 0
        else:
            if avail:
                s = src[i - 1]
                if emit == 0:
                    freq[s] = freq[s] + 1
                else:
                    p = tab[s]
                    bb |= (p >> 4) << bc
                    bc += p & 15
            pl = cl
            pd = cd
            avail = 1
            i += 1
        if emit:
            while bc >= 8:
                out[o] = bb & 255
                o += 1
                bb >>= 8
                bc -= 8
            if o >= lim:
                if emit == 1:
                    return -1
                sink(o)
                o = 0
    if avail:
        s = src[n - 1]
        if emit == 0:
            freq[s] = freq[s] + 1
        else:
            p = tab[s]
            bb |= (p >> 4) << bc
            bc += p & 15
    if emit == 0:
        return xb
    p = tab[256]
    bb |= (p >> 4) << bc
    bc += p & 15
    while bc > 0:
        out[o] = bb & 255
        o += 1
        bb >>= 8
        bc -= 8
    if o >= lim and emit == 1:
        return -1
    return o


@micropython.viper
def _huff(freq: ptr16, lens: ptr8, w: ptr32, base: int, count: int, limit: int):
    """Code lengths (at most `limit` bits) for symbols base..base+count-1 from their counts:
    minimum-redundancy lengths computed in place over the counts sorted ascending (Moffat and
    Katajainen), then lengths over the limit cut to it and the code made complete again by
    lengthening shorter ones (Kraft sum in units of 2**-limit).  A lone used symbol (or none)
    gets a 1-bit code with a dummy partner, so every code is complete.  w: >= 544 words."""
    m = 0
    s = 0
    while s < count:
        f = int(freq[base + s])
        lens[base + s] = 0
        if f:
            w[m] = (f << 9) | s
            m += 1
        s += 1
    if m < 2:
        s = 0
        if m == 1:
            s = int(w[0]) & 511
        lens[base + s] = 1
        lens[base + (1 if s == 0 else 0)] = 1
        return
    # shell sort of the keys count << 9 | symbol
    g = 1
    while g * 3 + 1 < m:
        g = g * 3 + 1
    while g > 0:
        j = g
        while j < m:
            x = int(w[j])
            k = j
            while k >= g and int(w[k - g]) > x:
                w[k] = w[k - g]
                k -= g
            w[k] = x
            j += 1
        g = (g - 1) // 3
    # In place: the value of w[j] is w[j] >> 9; its low 9 bits keep position j's symbol.
    # 1. pair the two smallest of leaves and internal nodes; w[j] becomes node j's weight,
    #    then its parent's index
    leaf = 0
    root = 0
    nx = 0
    while nx < m - 1:
        if leaf >= m or (root < nx and (int(w[root]) >> 9) < (int(w[leaf]) >> 9)):
            t = int(w[root]) >> 9
            w[root] = (nx << 9) | (int(w[root]) & 511)
            root += 1
        else:
            t = int(w[leaf]) >> 9
            leaf += 1
        if leaf >= m or (root < nx and (int(w[root]) >> 9) < (int(w[leaf]) >> 9)):
            t += int(w[root]) >> 9
            w[root] = (nx << 9) | (int(w[root]) & 511)
            root += 1
        else:
            t += int(w[leaf]) >> 9
            leaf += 1
        w[nx] = (t << 9) | (int(w[nx]) & 511)
        nx += 1
    # 2. parent indices to internal nodes' depths
    w[m - 2] = int(w[m - 2]) & 511
    j = m - 3
    while j >= 0:
        t = int(w[int(w[j]) >> 9]) >> 9
        w[j] = ((t + 1) << 9) | (int(w[j]) & 511)
        j -= 1
    # 3. internal depths to leaf depths (position j: the j-th smallest count), counted per
    #    length with everything deeper than the limit at the limit
    cnt = _TAB_WORK
    j = 0
    while j <= limit:
        w[cnt + j] = 0
        j += 1
    avail = 1
    used = 0
    dep = 0
    root = m - 2
    while avail > 0:
        while root >= 0 and (int(w[root]) >> 9) == dep:
            used += 1
            root -= 1
        d = dep if dep < limit else limit
        w[cnt + d] = int(w[cnt + d]) + avail - used
        avail = 2 * used
        dep += 1
        used = 0
    kraft = 0
    j = 1
    while j <= limit:
        kraft += int(w[cnt + j]) << (limit - j)
        j += 1
    while kraft > (1 << limit):
        j = limit - 1
        while int(w[cnt + j]) == 0:
            j -= 1
        w[cnt + j] = int(w[cnt + j]) - 1
        w[cnt + j + 1] = int(w[cnt + j + 1]) + 2
        w[cnt + limit] = int(w[cnt + limit]) - 1
        kraft -= 1
    # the longest codes to the smallest counts
    d = limit
    j = 0
    while j < m:
        while int(w[cnt + d]) == 0:
            d -= 1
        lens[base + (int(w[j]) & 511)] = d
        w[cnt + d] = int(w[cnt + d]) - 1
        j += 1


@micropython.viper
def _codes(lens: ptr8, tab: ptr32, w: ptr32, base: int, count: int):
    """Canonical codes (RFC 1951 3.2.2) for the lengths of symbols base..base+count-1:
    tab[base + s] = bit-reversed code << 4 | length (0 for an unused symbol)."""
    cnt = _TAB_WORK
    j = 0
    while j < 32:
        w[cnt + j] = 0
        j += 1
    s = 0
    while s < count:
        ln = int(lens[base + s])
        w[cnt + ln] = int(w[cnt + ln]) + 1
        s += 1
    w[cnt] = 0
    code = 0
    j = 1
    while j < 16:  # w[cnt + 16 + j]: the next code of length j
        code = (code + int(w[cnt + j - 1])) << 1
        w[cnt + 16 + j] = code
        j += 1
    s = 0
    while s < count:
        ln = int(lens[base + s])
        r = 0
        if ln:
            c = int(w[cnt + 16 + ln])
            w[cnt + 16 + ln] = c + 1
            k = 0
            while k < ln:
                r = (r << 1) | (c & 1)
                c >>= 1
                k += 1
        tab[base + s] = (r << 4) | ln
        s += 1


@micropython.viper
def _rle(lens: ptr8, nl: int, nd: int, freq: ptr16, tab: ptr32, out: ptr8, st: ptr32,
         emit: int) -> int:
    """The code lengths of nl literal/length and nd distance symbols as the code-length
    alphabet (16: repeat the previous 3-6 times, 17: 3-10 zeros, 18: 11-138 zeros).  emit=0
    counts the symbols into freq[_C0..] and returns their extra bits; emit=1 writes them (bit
    state in st as for _lz) and returns 0."""
    if emit == 0:
        j = 0
        while j < 19:
            freq[_C0 + j] = 0
            j += 1
    o = int(st[0])
    bb = int(st[1])
    bc = int(st[2])
    xb = 0
    t = nl + nd
    k = 0
    while k < t:
        v = int(lens[k if k < nl else _D0 + k - nl])
        r = 1
        while k + r < t and int(lens[k + r if k + r < nl else _D0 + k + r - nl]) == v:
            r += 1
        k += r
        first = 1
        while r > 0:
            # one symbol: a, its extra bits e of value x, covering u lengths
            if v == 0 and r >= 11:
                u = r if r < 138 else 138
                a = 18
                e = 7
                x = u - 11
            elif v == 0 and r >= 3:
                u = r
                a = 17
                e = 3
                x = u - 3
            elif v != 0 and first == 0 and r >= 3:
                u = r if r < 6 else 6
                a = 16
                e = 2
                x = u - 3
            else:
                u = 1
                a = v
                e = 0
                x = 0
            first = 0
            r -= u
            if emit == 0:
                freq[_C0 + a] = freq[_C0 + a] + 1
                xb += e
            else:
                p = tab[_C0 + a]
                bb |= (p >> 4) << bc
                bc += p & 15
                bb |= x << bc
                bc += e
                while bc >= 8:
                    out[o] = bb & 255
                    o += 1
                    bb >>= 8
                    bc -= 8
    st[0] = o
    st[1] = bb
    st[2] = bc
    return xb


@micropython.viper
def _bits(freq: ptr16, lens: ptr8, base: int, count: int) -> int:
    """Sum of count * code length over symbols base..base+count-1."""
    t = 0
    s = base
    while s < base + count:
        t += int(freq[s]) * int(lens[s])
        s += 1
    return t


@micropython.viper
def _fixed_lens(lens: ptr8):
    """The fixed codes' lengths (RFC 1951 3.2.6) into lens[0.._C0)."""
    s = 0
    while s < _C0:
        lens[s] = 8 if s < 144 else (9 if s < 256 else (7 if s < 280 else (8 if s < _D0 else 5)))
        s += 1


@micropython.viper
def _put(out: ptr8, st: ptr32, x: int, e: int):
    """Writes the e (<= 16) low bits of x after the stream so far (st as for _lz)."""
    o = int(st[0])
    bb = int(st[1]) | (x << int(st[2]))
    bc = int(st[2]) + e
    while bc >= 8:
        out[o] = bb & 255
        o += 1
        bb >>= 8
        bc -= 8
    st[0] = o
    st[1] = bb
    st[2] = bc


@micropython.viper
def _copy(src: ptr8, n: int, out: ptr8, o: int):
    i = 0
    while i < n:
        out[o + i] = src[i]
        i += 1


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
    out[o] = (b >> 8) & 255
    out[o + 1] = b & 255
    out[o + 2] = (a >> 8) & 255
    out[o + 3] = a & 255


@micropython.viper
def _start(st: ptr32, lim: int):
    st[0] = 2   # after the zlib header
    st[1] = 0
    st[2] = 0
    st[3] = lim


def _words(size, n):
    """A zeroed table of n words of `size` bytes.  MicroPython: a bytearray, which the viper
    functions read as words; it is allocated in place, where array(code, bytes(...)) leaves a
    hole of its size behind, and five such holes next to the compressor broke up the heap that
    mbedtls later needs (+2-4 KB on the smallest heap of a paired rover over TLS)."""
    if MICROPYTHON:
        return bytearray(size * n)
    return array("B H I".split()[size >> 1], bytes(size * n))


_SLACK = const(64)   # room past the give-up point: one step's bytes and the end of block
# stream(): the staging buffer holds a dynamic block's header (at most ~560 bytes: 17 bits,
# 19 x 3 bits, 316 code lengths of up to 7 + 7 bits) before the first piece goes
_STREAM_MIN = const(1024)


class Compressor:
    """Compresses chunks of up to max_input bytes into one preallocated buffer, self.out.

    compress(src, n) encodes src[:n] and returns the length of a complete zlib stream in
    self.out, or -1 when that stream would not be smaller than n, or not smaller than
    max_output (send the chunk raw); the first pass tells, and the second is then skipped.
    always=True returns the stream whatever its size (it always fits self.out; max_output
    does not apply).  probe=True runs the first pass only: the length the stream would have,
    or -1 as above, with nothing written (half the work).  The result stays valid until the
    next call.  self.btype: the block type of the last stream (0 stored, 1 fixed, 2 dynamic;
    -1 none).

    plan(src, n, streamed=True) then stream(src, n, write) give the same stream in pieces
    through a staging buffer instead: the length is known after the first pass, so a sender
    can put it in a message header before the second pass writes a byte, and self.out need
    not hold a whole compressed chunk (the rover's 2 KiB instead of 16: the heap it spares
    is the channel's send window, docs/decisions.md).
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
        self.head = _words(2, _HASH_SIZE)
        # the chain links double as the code builders' work space between the passes (a
        # pass reads only links it wrote); CPython's arrays cannot be read as other types
        self.prev = _words(2, _PREV_SIZE)
        self.work = self.prev if MICROPYTHON else _words(4, _TAB_WORK + 32)
        self.freq = _words(2, _NSYM)
        self.lens = bytearray(_NSYM)
        self.tab = _words(4, _NSYM)
        self.st = _words(4, 4)
        self.btype = -1
        self._plan = None    # plan()'s findings for the second pass
        self._write = None
        self._sent = 0

    def compress(self, src, n, always=False, probe=False):
        k = self.plan(src, n, always)
        if k < 0 or probe:
            return k
        o = self._emit(src, n, 1)
        _adler(src, n, self.out, o)
        return o + 4

    def plan(self, src, n, always=False, streamed=False):
        """The first pass: the length the stream of src[:n] will have, or -1 as compress()
        gives it (with streamed=True only "not smaller than n" counts: the stream will go
        out through stream(), so max_output does not bound it).  stream() may follow."""
        if n < 0 or n > self.max_input or n > len(src):
            raise ValueError("n")
        if always and not self.always_ok:
            raise ValueError("made without room for always=True")
        out = self.out
        freq = self.freq
        lens = self.lens
        work = self.work
        # the 4-byte Adler-32 trailer follows the deflate data
        if always:
            lim = len(out) - 4
        elif streamed:
            lim = n - 4
        else:
            lim = min(n, len(out) - _SLACK) - 4
        self.btype = -1
        self._plan = None
        # pass 1: the symbols' counts, and every block type's size in bits
        xb = _lz(src, n, self.head, self.prev, self.tab, freq, _SYM, _BX, out, self.st, 0, None)
        _fixed_lens(lens)
        fixed = 3 + _bits(freq, lens, 0, _C0) + xb
        _huff(freq, lens, work, 0, _D0, 15)
        _huff(freq, lens, work, _D0, 30, 15)
        nl = _D0
        while lens[nl - 1] == 0:
            nl -= 1
        nd = 30
        while lens[_D0 + nd - 1] == 0:
            nd -= 1
        rx = _rle(lens, nl, nd, freq, self.tab, out, self.st, 0)
        _huff(freq, lens, work, _C0, 19, 7)
        nc = 19
        while nc > 4 and lens[_C0 + _SYM[_S_ORDER + nc - 1]] == 0:
            nc -= 1
        dynamic = 17 + 3 * nc + _bits(freq, lens, _C0, 19) + rx + _bits(freq, lens, 0, _C0) + xb
        btype = 2 if dynamic < fixed and n > 0 else 1
        size = 2 + ((dynamic if btype == 2 else fixed) + 7) // 8
        if size >= lim and not always:
            return -1
        if always and (size >= lim or n + 7 < size):   # a stored block: n + 5 bytes
            btype = 0
            size = n + 5 + 2
        self._plan = (btype, nl, nd, nc, size, n, lim)
        return size + 4

    def stream(self, src, n, write):
        """The second pass after plan(src, n, streamed=True) gave a length: the stream in
        pieces of up to len(self.out) - 64 bytes, each passed to write(memoryview) while
        self.out holds it (a memoryview into self.out, valid only during the call).  So the
        compressed chunk never has to fit in memory whole: self.out is a small staging buffer.
        Returns the length, which is what plan() said."""
        if len(self.out) < _STREAM_MIN:
            raise ValueError("self.out too small to stream through")
        self._write = write
        self._sent = 0
        o = self._emit(src, n, 2)
        if o + 4 > len(self.out):
            self._flush(o)
            o = 0
        _adler(src, n, self.out, o)
        self._flush(o + 4)
        self._write = None
        if self._sent != self._plan[4] + 4:
            raise RuntimeError("zcompress: streamed %d, counted %d" % (self._sent, self._plan[4] + 4))
        return self._sent

    def _flush(self, k):
        self._sent += k
        self._write(memoryview(self.out)[:k])

    def _emit(self, src, n, emit):
        """Pass 2 (emit 1: whole into self.out; 2: through _flush); returns the bytes left in
        self.out before the Adler-32 trailer."""
        if self._plan is None or self._plan[5] != n:
            raise ValueError("no plan() for this input")
        btype, nl, nd, nc, size, _, lim = self._plan
        out = self.out
        lens = self.lens
        work = self.work
        st = self.st
        out[0] = 0x78
        out[1] = 0x01
        if btype == 0:
            # one stored block: BFINAL=1, BTYPE=00, then LEN and its complement
            out[2] = 1
            out[3] = n & 0xFF
            out[4] = n >> 8
            out[5] = ~n & 0xFF
            out[6] = (~n >> 8) & 0xFF
            _copy(src, n, out, 7)
            o = 7 + n
        else:
            _start(st, lim if emit == 1 else len(out) - _SLACK)
            if btype == 2:
                _codes(lens, self.tab, work, _C0, 19)
                _put(out, st, 5, 3)   # BFINAL=1, BTYPE=10
                _put(out, st, nl - 257, 5)
                _put(out, st, nd - 1, 5)
                _put(out, st, nc - 4, 4)
                for k in range(nc):
                    _put(out, st, lens[_C0 + _SYM[_S_ORDER + k]], 3)
                _rle(lens, nl, nd, self.freq, self.tab, out, st, 1)
            else:
                _fixed_lens(lens)
                _put(out, st, 3, 3)   # BFINAL=1, BTYPE=01
            _codes(lens, self.tab, work, 0, _D0)
            _codes(lens, self.tab, work, _D0, 30)
            o = _lz(src, n, self.head, self.prev, self.tab, self.freq, _SYM, _BX, out, st, emit,
                    self._flush if emit == 2 else None)
            if o < 0 or (emit == 1 and o != size):
                raise RuntimeError("zcompress: size %d, counted %d" % (o, size))
        self.btype = btype
        return o
