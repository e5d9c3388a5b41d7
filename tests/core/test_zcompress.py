# anchor_core.zcompress: round trips through the platform's zlib decompressor, plus a small fixed-Huffman
# token decoder (below) to check which matches the encoder chose.  Plain functions: runs under
# pytest (CPython: the plain-Python encoder, zlib.decompress) and under tests/core/mpy_runner.py
# (MicroPython, 256 KB heap: the viper encoder, deflate.DeflateIO), so no pytest imports.
import hashlib
import io

from anchor_core.compat import MICROPYTHON
from anchor_core.zcompress import Compressor

MAX = 32768 + 300  # room for a match at distance 32768 (and 32769) of length 258
C = Compressor(MAX)  # one for every test (its buffers are the big allocation)
BUF = bytearray(MAX)  # test inputs are built in here
DST = bytearray(MAX + 1)  # decompressed output (MicroPython reads into it: 256 KB heap)

if MICROPYTHON:
    import deflate

    def inflate_digest(stream):
        """sha256 of the decompressed stream, read into DST (no big allocations)."""
        d = deflate.DeflateIO(io.BytesIO(stream), deflate.ZLIB)
        mv = memoryview(DST)
        n = 0
        while True:
            k = d.readinto(mv[n:])
            if not k:
                break
            n += k
        return n, hashlib.sha256(mv[:n]).digest()
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


def xorshift(seed):
    x = seed & 0xFFFFFFFF or 1
    while True:
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        yield x


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


def tokens(stream):
    """Decodes a one-block fixed-Huffman zlib stream into literals (int) and (length, distance)."""
    data = stream
    st = [2 * 8]  # bit position, after the zlib header

    def bit():
        p = st[0]
        st[0] = p + 1
        return (data[p >> 3] >> (p & 7)) & 1

    def bits(k):  # LSB first
        v = 0
        for s in range(k):
            v |= bit() << s
        return v

    def huff(k, v=0):  # MSB first
        for _ in range(k):
            v = (v << 1) | bit()
        return v

    lbase = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
             35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258)
    dbase = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
             257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)
    if bits(3) != 3:
        raise ValueError("not a final fixed block")
    out = []
    while True:
        c = huff(7)
        if c <= 0x17:
            sym = 256 + c
        else:
            c = huff(1, c)
            if 0x30 <= c <= 0xBF:
                sym = c - 0x30
            elif 0xC0 <= c <= 0xC7:
                sym = 280 + c - 0xC0
            else:
                sym = 144 + huff(1, c) - 0x190
        if sym < 256:
            out.append(sym)
            continue
        if sym == 256:
            return out
        k = sym - 257
        ln = lbase[k] + bits(0 if k < 8 or k == 28 else (k - 4) >> 2)
        dc = huff(5)
        dist = dbase[dc] + bits(0 if dc < 4 else (dc - 2) >> 1)
        out.append((ln, dist))


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


def test_far_matches():
    # P + zeros + P: the second P can match the first at distance 32768, never at 32769.
    for ln in (3, 4, 257, 258):
        for dist in (32768, 32769):
            n = dist + ln
            # nonzero bytes; seeds where no 3-gram of P shares the first one's hash bucket
            fill_random(BUF, 0, ln, {3: 103, 4: 104, 257: 357, 258: 359}[ln], 1)
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
