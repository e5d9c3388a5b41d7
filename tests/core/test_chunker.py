# Content-defined chunker against vectors cut once by pyfastcdc (vectors_chunker.py, made by
# tools/make_chunker_vectors.py).  Plain functions: runs under pytest (CPython: Chunker in
# plain Python, chunks_of via pyfastcdc and via Chunker) and under tests/core/mpy_runner.py
# (MicroPython: the viper cutter), so no pytest, no CPython-only code.
import hashlib
from binascii import hexlify, unhexlify

from anchor_core import chunker
from anchor_core.chunker import (Chunker, ObjectId, EMPTY_OBJECT_ID, MIN_SIZE, AVG_SIZE, MAX_SIZE,
                                 chunks_of, object_of)
from chunker_testdata import GenFile, records_digest
import vectors_chunker as V

BUF = bytearray(16384)  # one preallocated read buffer for every test (256 KB heap)

# chunks_of variants to check: the default (pyfastcdc on CPython when installed) and the
# portable Chunker path (what the rover runs).  On MicroPython both are the Chunker.
MODES = (True, False) if chunker.HAVE_PYFASTCDC else (False,)


def hx(b):
    return hexlify(b).decode()


def records(f, buf=BUF, fast=True):
    return [(o, n, hx(c)) for o, n, c in chunks_of(f, buf, fast)]


def expect_equal(got, want, what):
    if got != want:
        i = 0
        while i < len(got) and i < len(want) and got[i] == want[i]:
            i += 1
        raise AssertionError("%s: differs at record %d of %d/%d: got %r want %r" % (
            what, i, len(got), len(want), got[i:i + 2], want[i:i + 2]))


def cuts_by_scan(segments, piece):
    """Cut offsets from Chunker.scan() fed in pieces of `piece` bytes (final on the last)."""
    f = GenFile(segments)
    total = f.size
    ck = Chunker()
    buf = bytearray(piece)
    base = 0
    cuts = []
    while base < total:
        n = f.readinto(buf)
        if n <= 0:
            raise AssertionError("GenFile ended early")
        final = base + n == total
        i = 0
        while True:
            c = ck.scan(buf, i, n, final)
            if c < 0:
                break
            if c < i or c > n:
                raise AssertionError("cut %d outside [%d, %d]" % (c, i, n))
            cuts.append(base + c)
            i = c
        base += n
    return cuts


def cut_offsets(recs):
    # offsets where a chunk ends and another begins (the final end is the caller's, at EOF)
    return [o + n for o, n, _ in recs[:-1]]


def test_parameters():
    assert (MIN_SIZE, AVG_SIZE, MAX_SIZE) == (2048, 8192, 32768)
    from anchor_core import gear
    assert len(gear.GEAR_LO) == 512 and len(gear.GEAR_HI) == 1024
    assert gear.MASK_S_HI == 0xd9031353 and gear.MASK_L_HI == 0xd9010353


def test_empty_object():
    for fast in MODES:
        assert records(GenFile([]), fast=fast) == []
        assert object_of(GenFile([]), BUF, fast) == (0, EMPTY_OBJECT_ID, 0)
    assert hx(EMPTY_OBJECT_ID) == V.EMPTY_OBJECT_ID
    assert EMPTY_OBJECT_ID == hashlib.sha256(b"anchor.obj.v1\x00" + bytes(8)).digest()


def test_object_id_known_value():
    oid = ObjectId()
    for k in range(3):
        oid.add(hashlib.sha256(("chunk-%d" % k).encode()).digest())
    assert oid.n_chunks == 3
    assert hx(oid.finish(20000)) == V.KNOWN_OBJECT_ID


def test_object_id_rejects_misuse():
    oid = ObjectId()
    for bad in (b"", bytes(31), bytes(33)):
        try:
            oid.add(bad)
        except ValueError:
            pass
        else:
            raise AssertionError("add(%d bytes) accepted" % len(bad))
    try:
        oid.finish(-1)
    except ValueError:
        pass
    else:
        raise AssertionError("negative size accepted")
    oid.finish(0)
    for call in (lambda: oid.finish(0), lambda: oid.add(bytes(32))):
        try:
            call()
        except ValueError:
            pass
        else:
            raise AssertionError("ObjectId used after finish")


def test_small_inputs_below_and_at_min_size():
    for n, want in V.SMALL:
        want = [(o, m, c) for o, m, c in want]
        for fast in MODES:
            expect_equal(records(GenFile([("r", n)]), fast=fast), want, "size %d" % n)
        if n <= MIN_SIZE + 1:
            assert len(want) == 1 and want[0][1] == n  # never cut below MIN_SIZE


def test_zero_runs_force_max_size_cuts():
    for n, want in V.ZEROS:
        for fast in MODES:
            expect_equal(records(GenFile([("z", n)]), fast=fast), want, "zeros %d" % n)
        for o, m, c in want[:-1]:
            assert m == MAX_SIZE
    # the same content gives the same chunk id wherever it sits
    ids = [c for o, m, c in V.ZEROS[-1][1][:-1]]
    assert ids == [ids[0]] * len(ids)


def test_mixed_stream_cuts_and_ids():
    for fast in MODES:
        expect_equal(records(GenFile(V.MIXED_SEGMENTS), fast=fast), V.MIXED, "mixed")
    lengths = [m for _o, m, _c in V.MIXED]
    assert MAX_SIZE in lengths and min(lengths[:-1]) >= MIN_SIZE


def test_object_of_mixed():
    size = 0
    for _seg, n in V.MIXED_SEGMENTS:
        size += n
    for fast in MODES:
        got = object_of(GenFile(V.MIXED_SEGMENTS), BUF, fast)
        assert got == (size, unhexlify(V.MIXED_OBJECT_ID), len(V.MIXED)), got


def test_scan_fed_in_odd_piece_sizes():
    # 1 and 7 bytes on the smaller stream (per-call cost), page and buffer sizes on both
    want_feed = cut_offsets(V.FEED)
    for piece in (1, 7, 4096, 16384):
        assert cuts_by_scan(V.FEED_SEGMENTS, piece) == want_feed, piece
    want_mixed = cut_offsets(V.MIXED)
    for piece in (4096, 16384, 5000):
        assert cuts_by_scan(V.MIXED_SEGMENTS, piece) == want_mixed, piece


def test_chunks_of_with_short_reads_and_buffer_sizes():
    # readinto() returning 1, 7 or 4096 bytes at a time, and different caller buffers
    for max_read, buf in ((1, bytearray(4096)), (7, BUF), (4096, bytearray(4096)),
                          (0, bytearray(5000))):
        f = GenFile(V.FEED_SEGMENTS, max_read)
        expect_equal(records(f, buf, fast=False), V.FEED, "feed max_read=%d" % max_read)
    for fast in MODES:
        f = GenFile(V.MIXED_SEGMENTS, 7)
        expect_equal(records(f, fast=fast), V.MIXED, "mixed max_read=7")


def test_chunks_of_rejects_small_buffer():
    try:
        for _rec in chunks_of(GenFile([("r", 10)]), bytearray(100), False):
            pass
    except ValueError:
        return
    raise AssertionError("a 100-byte buffer was accepted")


def test_last_byte_hash_hit_even_and_odd_position():
    # pyfastcdc hashes in byte pairs: a hit on the object's last byte counts only at an odd
    # position of the chunk.  Streaming cutters must hold that byte back until EOF is known.
    for segs, tail, n_chunks in ((V.EOF_EVEN_SEGMENTS, V.EOF_EVEN_TAIL, V.EOF_EVEN_N_CHUNKS),
                                 (V.EOF_ODD_SEGMENTS, V.EOF_ODD_TAIL, V.EOF_ODD_N_CHUNKS)):
        for fast in MODES:
            for max_read in (0, 1, 4095):
                got = records(GenFile(segs, max_read), fast=fast)
                assert len(got) == n_chunks, (segs, len(got))
                expect_equal(got[-len(tail):], tail, "eof %r" % (segs,))
        want = [o for o, _n, _c in tail if o > 0]  # the last cuts
        for piece in (1, 4096, 16384):
            got = cuts_by_scan(segs, piece)
            assert len(got) == n_chunks - 1, (segs, piece, got)
            assert got[len(got) - len(want):] == want, (segs, piece, got, want)


def test_chunker_reuse_after_final_and_reset():
    ck = Chunker()
    data = GenFile([("r", 30000)]).read()
    first = []
    i = 0
    while True:
        c = ck.scan(data, i, len(data), True)
        if c < 0:
            break
        first.append(c)
        i = c
    assert ck.position() == 0  # a final scan that ends the object resets
    again = []
    i = 0
    while True:
        c = ck.scan(data, i, len(data), True)
        if c < 0:
            break
        again.append(c)
        i = c
    assert again == first and len(first) > 0
    ck.scan(data, 0, 1000)
    assert ck.position() == 1000
    ck.reset()
    assert ck.position() == 0


def test_multi_megabyte_stream():
    # 4.6 MB: count, every (offset, length, id) through a digest, object id, ends
    for fast in MODES:
        h = hashlib.sha256()
        oid = ObjectId()
        head = []
        tail = []
        n_max = 0
        size = 0
        for o, n, c in chunks_of(GenFile(V.LARGE_SEGMENTS), BUF, fast):
            if o != size:
                raise AssertionError("gap at %d" % o)
            h.update(o.to_bytes(8, "big"))
            h.update(n.to_bytes(4, "big"))
            h.update(c)
            oid.add(c)
            size += n
            if n == MAX_SIZE:
                n_max += 1
            if len(head) < 3:
                head.append((o, n, hx(c)))
            tail = tail[-2:] + [(o, n, hx(c))]
        assert size == V.LARGE_SIZE and oid.n_chunks == V.LARGE_N_CHUNKS, (size, oid.n_chunks)
        assert hx(h.digest()) == V.LARGE_RECORDS_SHA256
        assert hx(oid.finish(size)) == V.LARGE_OBJECT_ID
        assert head == V.LARGE_HEAD and tail == V.LARGE_TAIL
        assert n_max == V.LARGE_N_MAX_CUTS


def test_records_digest_helper_matches_spec():
    recs = [(0, 5, bytes(32)), (5, 7, b"\x01" * 32)]
    want = hashlib.sha256(bytes(8) + (5).to_bytes(4, "big") + bytes(32) +
                          (5).to_bytes(8, "big") + (7).to_bytes(4, "big") + b"\x01" * 32)
    assert records_digest(recs) == want.digest()
