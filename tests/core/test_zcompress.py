# anchor_core.zcompress: round trips through the platform's zlib decompressor, plus a small fixed-Huffman
# token decoder (below) to check which matches the encoder chose.  Plain functions: runs under
# pytest (CPython: the plain-Python encoder, zlib.decompress) and under tests/core/mpy_runner.py
# (MicroPython, 256 KB heap: the viper encoder, deflate.DeflateIO), so no pytest imports.
import hashlib
import io

from anchor_core.compat import MICROPYTHON
import anchor_core.zcompress as zc
from anchor_core.zcompress import Compressor, HASH_BITS
from prng import xorshift

MAX = 32768 + 300  # room for a match at distance 32768 (and 32769) of length 258
# streams through a staging buffer as small as stream() takes; made first, so that its small
# tables do not sit between the big buffers (the inflater needs 32 KiB in one piece)
S = Compressor(MAX, False, 1024)
C = Compressor(MAX)  # one for every test (its buffers are the big allocation)
BUF = bytearray(MAX)  # test inputs are built in here
DST = bytearray(1024)  # decompressed output passes through it (MicroPython: 256 KB heap)

if MICROPYTHON:
    import deflate

    class _Reader(io.IOBase):
        """A stream over a buffer, read in place: io.BytesIO would copy a 33 KiB stream, and
        that copy and the inflater's 32 KiB window each need a run of the heap that long, which
        after this module is compiled it holds only by luck."""

        def __init__(self, buf):
            self.mv = memoryview(buf)
            self.pos = 0

        def readinto(self, b):
            k = min(len(b), len(self.mv) - self.pos)
            b[:k] = self.mv[self.pos:self.pos + k]
            self.pos += k
            return k

    def inflate_digest(stream):
        """sha256 of the decompressed stream, read through DST (no big allocations)."""
        d = deflate.DeflateIO(_Reader(stream), deflate.ZLIB)
        h = hashlib.sha256()
        mv = memoryview(DST)
        n = 0
        while True:
            k = d.readinto(DST)
            if not k:
                break
            h.update(mv[:k])
            n += k
        return n, h.digest()
else:
    import zlib

    def inflate_digest(stream):
        got = zlib.decompress(stream)
        return len(got), hashlib.sha256(got).digest()


def adler32(src, n):
    a, b = 1, 0
    for i in range(n):
        a = (a + src[i]) % 65521
        b = (b + a) % 65521
    return (b << 16) | a


def fill_random(buf, start, end, seed, lo=0):
    g = xorshift(seed)
    span = 256 - lo
    for i in range(start, end):
        buf[i] = lo + next(g) % span


def fill_text(buf, n, seed=7):
    """Log-like lines with varying numbers into buf[:n]."""
    g = xorshift(seed)
    words = (b"INFO", b"WARN", b"DEBUG", b"INFO")
    pos = 0
    seq = 0
    while pos < n:
        r = next(g)
        line = b"2025-07-%02d 12:%02d:%02d %s gps fix=%d sats=%d alt=%d.%d seq=%d\n" % (
            1 + r % 28, (r >> 5) % 60, (r >> 11) % 60, words[(r >> 17) & 3],
            (r >> 19) & 1, 4 + (r >> 20) % 9, 100 + (r >> 8) % 900, r % 10, seq)
        seq += 1
        k = min(len(line), n - pos)
        buf[pos:pos + k] = line[:k]
        pos += k


LBASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
         35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258)
DBASE = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
         257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)


def fixed_lengths():
    return [8] * 144 + [9] * 112 + [7] * 24 + [8] * 8, [5] * 30  # RFC 1951 3.2.6


def decoder(lengths, complete=True):
    """{(length << 16) | code: symbol} for canonical codes (RFC 1951 3.2.2); also checks the
    code is complete (zlib refuses other dynamic codes but a lone code of 1 bit)."""
    count = [0] * 16
    for ln in lengths:
        count[ln] += 1
    count[0] = 0
    kraft = sum(count[b] << (15 - b) for b in range(1, 16))
    used = sum(count)
    if complete and kraft != 1 << 15 and not (used == 1 and count[1] == 1):
        raise ValueError("incomplete or oversubscribed code: %d/%d" % (kraft, 1 << 15))
    nxt = [0] * 16
    code = 0
    for b in range(1, 16):
        code = (code + count[b - 1]) << 1
        nxt[b] = code
    table = {}
    for sym, ln in enumerate(lengths):
        if ln:
            table[(ln << 16) | nxt[ln]] = sym
            nxt[ln] += 1
    return table


class Inflated:
    """A one-block zlib stream decoded here (not by zlib): block type, tokens (literals as int,
    matches as (length, distance)) if asked for, symbol counts, and the longest code of each
    alphabet.  Raises on anything RFC 1951 does not allow in this encoder's output."""

    def __init__(self, stream, keep_tokens=True):
        self.data = stream
        self.pos = 2 * 8  # after the zlib header
        self.tokens = [] if keep_tokens else None
        self.lit_count = [0] * 288
        self.dist_count = [0] * 30
        self.out_len = 0
        self.max_bits = (0, 0, 0)  # literal/length, distance, code length code
        final = self.bits(1)
        self.btype = self.bits(2)
        if not final:
            raise ValueError("not a final block")
        if self.btype == 0:
            self.pos = (self.pos + 7) & ~7
            n = self.bits(16)
            if self.bits(16) != n ^ 0xFFFF:
                raise ValueError("stored length")
            self.out_len = n
            self.pos += 8 * n
            return
        if self.btype == 1:
            lit, dist = fixed_lengths()
        elif self.btype == 2:
            lit, dist = self.header()
        else:
            raise ValueError("block type 3")
        self.max_bits = (max(lit), max(dist), self.max_bits[2])
        self.body(decoder(lit), decoder(dist, self.btype == 2))  # fixed: 30 of 32 codes

    def bits(self, k):  # LSB first
        v = 0
        for s in range(k):
            p = self.pos
            v |= ((self.data[p >> 3] >> (p & 7)) & 1) << s
            self.pos = p + 1
        return v

    def sym(self, table):  # Huffman codes: MSB first
        code = 0
        for ln in range(1, 16):
            code = (code << 1) | self.bits(1)
            s = table.get((ln << 16) | code)
            if s is not None:
                return s
        raise ValueError("no such code")

    def header(self):
        nl = self.bits(5) + 257
        nd = self.bits(5) + 1
        nc = self.bits(4) + 4
        if nl > 286 or nd > 30:
            raise ValueError("HLIT/HDIST")
        order = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
        cl = [0] * 19
        for k in range(nc):
            cl[order[k]] = self.bits(3)
        self.max_bits = (0, 0, max(cl))
        table = decoder(cl)
        lens = []
        while len(lens) < nl + nd:
            s = self.sym(table)
            if s < 16:
                lens.append(s)
            elif s == 16:
                if not lens:
                    raise ValueError("repeat of nothing")
                lens.extend([lens[-1]] * (3 + self.bits(2)))
            elif s == 17:
                lens.extend([0] * (3 + self.bits(3)))
            else:
                lens.extend([0] * (11 + self.bits(7)))
        if len(lens) != nl + nd:
            raise ValueError("code lengths overrun")
        if lens[256] == 0:
            raise ValueError("no end of block")
        return lens[:nl] + [0] * (288 - nl), lens[nl:] + [0] * (30 - nd)

    def body(self, lit, dist):
        while True:
            s = self.sym(lit)
            self.lit_count[s] += 1
            if s < 256:
                self.out_len += 1
                if self.tokens is not None:
                    self.tokens.append(s)
                continue
            if s == 256:
                return
            k = s - 257
            ln = LBASE[k] + self.bits(0 if k < 8 or k == 28 else (k - 4) >> 2)
            dc = self.sym(dist)
            self.dist_count[dc] += 1
            d = DBASE[dc] + self.bits(0 if dc < 4 else (dc - 2) >> 1)
            if d > self.out_len:
                raise ValueError("distance before the start")
            self.out_len += ln
            if self.tokens is not None:
                self.tokens.append((ln, d))


def tokens(stream):
    return Inflated(stream).tokens


def fixed_bits(inf):
    """The bits the same symbols take in one fixed-Huffman block."""
    lit, dist = fixed_lengths()
    b = 3
    for s in range(286):
        c = inf.lit_count[s]
        if c:
            k = s - 257
            b += c * (lit[s] + (0 if k < 8 or k == 28 else (k - 4) >> 2))
    for dc in range(30):
        b += inf.dist_count[dc] * (5 + (0 if dc < 4 else (dc - 2) >> 1))
    return b


def optimal_depth(counts):
    """The longest code of an unlimited Huffman code for these counts (plain, O(n^2))."""
    nodes = [(c, 0) for c in counts if c]
    while len(nodes) > 1:
        nodes.sort()
        (a, da), (b, db) = nodes[0], nodes[1]
        nodes = nodes[2:] + [(a + b, max(da, db) + 1)]
    return nodes[0][1] if nodes else 0


def roundtrip(src, n, always=False):
    k = C.compress(src, n, always)
    if k < 0:
        return k
    out = memoryview(C.out)[:k]
    if out[0] != 0x78 or out[1] != 0x01:
        raise AssertionError("header")
    if (out[k - 4] << 24 | out[k - 3] << 16 | out[k - 2] << 8 | out[k - 1]) != adler32(src, n):
        raise AssertionError("adler32")
    got = inflate_digest(out)
    if got != (n, hashlib.sha256(memoryview(src)[:n]).digest()):
        raise AssertionError("round trip differs at n=%d" % n)
    return k


def test_empty_and_one_byte():
    assert C.compress(b"", 0) == -1  # a zlib stream is never smaller than 0 or 1 byte
    assert C.compress(b"x", 1) == -1
    assert roundtrip(b"", 0, True) == 8
    assert roundtrip(b"x", 1, True) == 9
    assert roundtrip(b"\xff", 1, True) == 9
    assert tokens(C.out) == [255]


def test_short_inputs_all_lengths():
    fill_text(BUF, 300)
    for n in range(0, 300, 7):
        roundtrip(BUF, n, True)
        roundtrip(memoryview(BUF)[:n], n)


def test_all_match_lengths():
    # "ab" then a run of 'a'*L and a separator: the run is one literal + a match of L-1 at
    # distance 1, for every L-1 in 3..258 (longer runs: 258-matches then the rest).
    for ln in range(3, 259):
        n = 0
        BUF[0] = 0x5A
        for i in range(1, ln + 2):
            BUF[i] = 0x61
        BUF[ln + 2] = 0x5B
        n = ln + 3
        k = roundtrip(BUF, n, True)
        t = tokens(C.out[:k])
        assert t == [0x5A, 0x61, (ln, 1), 0x5B], (ln, t)
    for n in (259, 516, 517, 1000, 32768):
        for i in range(n):
            BUF[i] = 0x20
        k = roundtrip(BUF, n)
        t = tokens(C.out[:k])
        m = [x for x in t if not isinstance(x, int)]
        lits = len(t) - len(m)
        assert t[0] == 0x20 and lits + sum(x[0] for x in m) == n and lits <= 3, t[-3:]
        assert all(x == (258, 1) for x in m[:-1]) and m[-1][1] == 1


def test_text_round_trip_and_ratio():
    for n, seed in ((8192, 1), (20000, 2), (32768, 3)):
        fill_text(BUF, n, seed)
        k = roundtrip(BUF, n)
        assert 0 < k < n * 45 // 100, (n, k)


def test_random_gives_up():
    fill_random(BUF, 0, 32768, 11)
    assert C.compress(BUF, 32768) == -1
    assert C.compress(memoryview(BUF), 4000) == -1
    k = roundtrip(BUF, 32768, True)  # forced: still valid, and fits the output buffer
    assert 32768 < k <= 32768 * 9 // 8 + 16


def bucket(b0, b1, b2):
    """The hash bucket of a 3-byte string in anchor_core.zcompress (32-bit product, top bits)."""
    v = b0 | (b1 << 8) | (b2 << 16)
    return ((v * 0x1E35A7BD) & 0xFFFFFFFF) >> (32 - HASH_BITS)


def lone_bucket_pattern(ln):
    """Fills BUF[:ln] with nonzero random bytes whose first 3-gram's bucket no other 3-gram of
    P + zeros + P shares (tried seed by seed), so the head of that bucket is the first P."""
    for seed in range(100, 10000):
        fill_random(BUF, 0, ln, seed, 1)
        p = BUF
        mine = bucket(p[0], p[1], p[2])
        others = [bucket(0, 0, 0), bucket(0, 0, p[0]), bucket(0, p[0], p[1])]
        others += [bucket(p[ln - 2], p[ln - 1], 0), bucket(p[ln - 1], 0, 0)] if ln >= 2 else []
        others += [bucket(p[j], p[j + 1], p[j + 2]) for j in range(1, ln - 2)]
        if mine not in others:
            return
    raise AssertionError("no pattern found")


def test_far_matches():
    # P + zeros + P: the second P can match the first at distance 32768, never at 32769.
    for ln in (3, 4, 257, 258):
        for dist in (32768, 32769):
            n = dist + ln
            lone_bucket_pattern(ln)
            for i in range(ln, dist):
                BUF[i] = 0
            BUF[dist:n] = BUF[0:ln]
            k = roundtrip(BUF, n)
            t = tokens(C.out[:k])
            if dist == 32768:
                assert t[-1] == (ln, 32768), (ln, t[-3:])
            else:
                assert t[-ln:] == list(BUF[dist:n]), (ln, t[-3:])
    C.compress(BUF, 0)


def sqlite_like(buf, n, seed):
    """4 KiB pages: a header, a cell pointer array and rows of ids, timestamps and words."""
    g = xorshift(seed)
    words = (b"meeting", b"battery", b"radio", b"route", b"water", b"ok", b"thanks", b"see you")
    pos = 0
    rowid = 1000
    while pos < n:
        page = bytearray(4096)
        page[0] = 0x0D
        cells = 0
        off = 4096
        while True:
            r = next(g)
            row = b"%c%c\x04\x01%s|%d|%s" % (rowid >> 8 & 0xFF, rowid & 0xFF,
                                              words[r & 7] + b" " + words[(r >> 3) & 7], 1700000000 + r % 99999,
                                              words[(r >> 6) & 7])
            if off - len(row) < 8 + 2 * (cells + 1):
                break
            off -= len(row)
            page[off:off + len(row)] = row
            page[8 + 2 * cells] = off >> 8
            page[9 + 2 * cells] = off & 0xFF
            cells += 1
            rowid += 1
        page[3] = cells
        k = min(4096, n - pos)
        buf[pos:pos + k] = page[:k]
        pos += k


def check(n, always=False):
    """Round trip of BUF[:n] through the platform's zlib, and through the decoder above."""
    k = roundtrip(BUF, n, always)
    if k > 0:
        # read in place: a copy (33 KiB at most) would live on in `inf` while the caller's next
        # round trip wants a 32 KiB run of the heap for the inflater's window
        inf = Inflated(memoryview(C.out)[:k], False)
        assert inf.out_len == n and inf.btype == C.btype, (n, inf.btype, C.btype)
        return k, inf
    return k, None


def test_round_trips_of_kinds():
    # each kind at sizes from tiny to the largest chunk
    for size in (2, 3, 5, 64, 1000, 4096, 8192, 32768):
        for i in range(size):
            BUF[i] = 0x41
        k, inf = check(size, True)
        assert size < 64 or inf.btype in (1, 2)
        fill_text(BUF, size, size)
        check(size, True)
        sqlite_like(BUF, size, size)
        check(size, True)
        fill_random(BUF, 0, size, size)
        k, inf = check(size, True)
        assert k <= size + 11 and (size < 1000 or inf.btype == 0)  # stored, not expanded
        for i in range(size):  # binary: small integers, little-endian words
            BUF[i] = (i >> 2) & 0x0F if i & 1 else (i * 7) & 0xFF
        check(size, True)


def test_dynamic_block_beats_fixed_on_text():
    for n, seed in ((2000, 4), (8192, 5), (32768, 6)):
        fill_text(BUF, n, seed)
        k, inf = check(n)
        fixed = 2 + (fixed_bits(inf) + 7) // 8 + 4
        assert inf.btype == 2 and k < fixed * 92 // 100, (n, k, fixed)
    # a short repeat is cheaper in a fixed block (no code tables to send): it picks that
    for i in range(40):
        BUF[i] = 0x61 + i % 3
    k, inf = check(40, True)
    assert inf.btype == 1


LENGTHS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 18, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83,
           99, 115, 131, 163, 195, 227, 257, 258)  # the 29 length codes (227 and 257: one code)


def test_every_length_and_distance_code():
    # One stream per distance code c: a pattern, then (when the distance is longer than the
    # pattern) zeros up to the distance, then the pattern again; the copy is one match of the
    # pattern's length at the code's base distance.  The lengths walk through every length code.
    got_d = set()
    got_l = set()
    for c in range(30):
        d = DBASE[c]
        ln = LENGTHS[c]
        if d >= ln:
            lone_bucket_pattern(ln)  # the head of its bucket is still the pattern, d back
            for i in range(ln, d):
                BUF[i] = 0
        else:
            fill_random(BUF, 0, d, 500 + c, 1)
        n = d + ln
        for i in range(d, n):
            BUF[i] = BUF[i - d]
        k, inf = check(n, True)
        t = tokens(C.out[:k])
        assert t[-1] == (ln, d), (c, ln, d, t[-3:])
        got_d.update(dc for dc in range(30) if inf.dist_count[dc])
        got_l.update(s - 257 for s in range(257, 286) if inf.lit_count[s])
    assert sorted(got_d) == list(range(30)), got_d
    assert sorted(got_l) == list(range(29)), got_l


def huffman_cost(counts):
    """The bits of an unlimited minimum-redundancy code for these counts (plain, O(n^2))."""
    nodes = [c for c in counts if c]
    cost = 0
    while len(nodes) > 1:
        nodes.sort()
        w = nodes[0] + nodes[1]
        cost += w
        nodes = nodes[2:] + [w]
    return cost


def build_lengths(counts, base, limit):
    """anchor_core.zcompress's code-length builder on these counts, at symbol `base`."""
    from array import array
    freq = array("H", bytes(2 * 337))
    for i, f in enumerate(counts):
        freq[base + i] = f
    lens = bytearray(337)
    zc._huff(freq, lens, C.work, base, len(counts), limit)
    return list(lens[base:base + len(counts)])


def kraft(lens, limit):
    return sum(1 << (limit - ln) for ln in lens if ln)


def test_code_lengths_capped_at_15_and_7():
    fib = [1, 1]
    while len(fib) < 22:
        fib.append(fib[-1] + fib[-2])
    # literal/length: 22 Fibonacci counts among 288 symbols, which an unlimited code gives
    # 21 bits; capped at 15 and still complete
    counts = [0] * 288
    for j, f in enumerate(fib):
        counts[j * 13] = f
    assert optimal_depth(counts) == 21
    lens = build_lengths(counts, 0, 15)
    assert max(lens) == 15 and kraft(lens, 15) == 1 << 15, lens
    assert all((lens[i] > 0) == (counts[i] > 0) for i in range(288))
    order = sorted(range(288), key=lambda i: counts[i])
    used = [lens[i] for i in order if counts[i]]
    assert all(used[i] >= used[i + 1] for i in range(len(used) - 1))  # rarer: not shorter
    # the code-length code: 19 symbols, capped at 7
    lens = build_lengths(fib[:19], 318, 7)
    assert max(lens) == 7 and kraft(lens, 7) == 1 << 7, lens
    # where the limit does not bind, the code is a minimum-redundancy one
    g = xorshift(77)
    for trial in range(5):
        counts = [next(g) % (2 + 50 * trial) if next(g) % 3 else 0 for _ in range(288)]
        counts[256] = 1
        lens = build_lengths(counts, 0, 15)
        if optimal_depth(counts) <= 15:
            assert sum(c * ln for c, ln in zip(counts, lens)) == huffman_cost(counts)
        assert kraft(lens, 15) == 1 << 15
    # one symbol, or none: two 1-bit codes (complete), never a lone or empty code
    for counts in ([0] * 30, [0, 0, 5] + [0] * 27, [9] + [0] * 29):
        lens = build_lengths(counts, 288, 15)
        assert sorted(lens)[-2:] == [1, 1] and sum(lens) == 2, lens


def test_rejects_oversize():
    c = Compressor(100)
    assert len(c.out) >= 100 + 12 + 64
    try:
        c.compress(BUF, 101)
    except ValueError:
        pass
    else:
        raise AssertionError("n > max_input accepted")


def test_reuse_is_deterministic():
    fill_text(BUF, 5000, 9)
    k1 = C.compress(BUF, 5000)
    a = bytes(C.out[:k1])
    fill_random(BUF, 0, 5000, 3)
    C.compress(BUF, 5000, True)
    fill_text(BUF, 5000, 9)
    k2 = C.compress(BUF, 5000)
    assert bytes(C.out[:k2]) == a


def test_max_output_caps_the_buffer_and_sends_raw_what_does_not_fit():
    # The rover's compressor keeps 8 KiB less than a chunk: a stream that would not be
    # smaller than max_output is given up on (-1: send raw), one that is comes out as it does
    # without the cap.
    fill_text(BUF, 4000, 5)
    k_free = C.compress(BUF, 4000)
    assert 0 < k_free < 4000
    fits = Compressor(4000, False, k_free + 1)
    assert len(fits.out) == k_free + 1 + 64
    k = fits.compress(BUF, 4000)
    assert k == k_free and bytes(fits.out[:k]) == bytes(C.out[:k_free])
    assert inflate_digest(bytes(fits.out[:k])) == (4000, hashlib.sha256(BUF[:4000]).digest())
    tight = Compressor(4000, False, k_free)
    assert tight.compress(BUF, 4000) == -1
    assert tight.compress(BUF, 300) > 0      # a short input is bounded by its own length
    try:
        tight.compress(BUF, 4000, True)
    except ValueError:
        pass
    else:
        raise AssertionError("always=True accepted without room for it")


def test_probe_counts_without_writing():
    fill_text(BUF, 6000, 12)
    k = C.compress(BUF, 6000)
    first = bytes(C.out[:k])
    C.out[2] = C.out[2] ^ 0xFF
    assert C.compress(BUF, 6000, False, True) == k   # the same length, counted
    assert C.out[2] == first[2] ^ 0xFF                # and nothing written
    fill_random(BUF, 0, 6000, 13)
    assert C.compress(BUF, 6000, False, True) == -1


class Pieces:
    """A write() for Compressor.stream(): keeps a SHA-256 and the length of what it was given
    (the pieces are views into the compressor's buffer, valid only during the call), and the
    largest piece."""

    def __init__(self, fail_at=-1):
        self.h = hashlib.sha256()
        self.n = 0
        self.calls = 0
        self.largest = 0
        self.fail_at = fail_at

    def __call__(self, mv):
        if self.calls == self.fail_at:
            raise OSError(32, "link gone")
        self.calls += 1
        self.h.update(mv)
        self.n += len(mv)
        if len(mv) > self.largest:
            self.largest = len(mv)



def test_streamed_pieces_are_the_whole_stream():
    # Text, a mix and noise that barely shrinks, at lengths around the staging buffer's: the
    # pieces joined are byte for byte what compress() writes whole, and plan() said the length.
    cases = 0
    for seed, n, kind in ((1, 900, 0), (2, 1100, 0), (3, 5000, 0), (4, 32768, 0), (5, 20000, 1),
                          (6, 32768, 2), (7, 3000, 2)):
        if kind == 0:
            fill_text(BUF, n, seed)
        elif kind == 1:
            fill_text(BUF, n, seed)
            fill_random(BUF, n // 2, n // 2 + 3000, seed)
        else:
            fill_random(BUF, 0, n, seed, 200)   # 56 byte values: shrinks a little
        whole = C.compress(BUF, n)
        planned = S.plan(BUF, n, False, True)
        if whole < 0:
            if planned >= 0:
                raise AssertionError("plan() and compress() disagree at n=%d" % n)
            continue
        ref = hashlib.sha256(memoryview(C.out)[:whole]).digest()
        if planned != whole:
            raise AssertionError("plan() said %d, compress() wrote %d" % (planned, whole))
        p = Pieces()
        got = S.stream(BUF, n, p)
        if got != whole or p.n != whole or p.h.digest() != ref:
            raise AssertionError("streamed %d/%d bytes differ from the whole %d (n=%d)" % (got, p.n, whole, n))
        if p.largest > len(S.out) or (whole > len(S.out) and p.calls < 2):
            raise AssertionError("pieces of %d in %d calls for %d bytes" % (p.largest, p.calls, whole))
        cases += 1
    if cases < 5:
        raise AssertionError("only %d cases compressed" % cases)


def test_plan_for_a_stream_is_bounded_by_the_input_not_the_buffer():
    # A chunk that shrinks only to 20 KB is still worth sending compressed through a 1 KiB
    # staging buffer; compress() into that buffer alone gives it up.
    fill_text(BUF, 12000, 21)
    fill_random(BUF, 12000, 32000, 22)
    assert S.compress(BUF, 32000) == -1
    k = S.plan(BUF, 32000, False, True)
    assert 1024 < k < 32000
    p = Pieces()
    assert S.stream(BUF, 32000, p) == k == p.n
    fill_random(BUF, 0, 32000, 23)
    assert S.plan(BUF, 32000, False, True) == -1   # noise: not smaller than the input


def test_stream_needs_its_plan_and_passes_write_errors_on():
    fill_text(BUF, 8000, 31)
    assert S.plan(BUF, 8000, False, True) > 0
    try:
        S.stream(BUF, 7999, Pieces())
    except ValueError:
        pass
    else:
        raise AssertionError("streamed another length than planned")
    p = Pieces(fail_at=1)
    try:
        S.stream(BUF, 8000, p)
    except OSError:
        pass
    else:
        raise AssertionError("a failing write was swallowed")
    # the compressor is whole after that: the next chunk streams as it should
    k = S.plan(BUF, 8000, False, True)
    q = Pieces()
    assert S.stream(BUF, 8000, q) == k == q.n
    assert C.compress(BUF, 8000) == k and q.h.digest() == hashlib.sha256(memoryview(C.out)[:k]).digest()
    try:
        Compressor(4000, False, 512).stream(BUF, 100, Pieces())
    except ValueError:
        pass
    else:
        raise AssertionError("streamed through a buffer smaller than a block header")
