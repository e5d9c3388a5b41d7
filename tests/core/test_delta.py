# anchor_core.delta and .deltabase: signatures of a base, the rover's rolling-checksum encoder,
# the anchor's rebuild.  Plain functions: runs under pytest (CPython) and under tests/core/mpy_runner.py
# (MicroPython, 256 KB heap, the viper scan), so no pytest imports.
import hashlib

from anchor_core import delta, deltabase
from anchor_core.compat import MICROPYTHON
from prng import xorshift

N = 16384
BASE = bytearray(N)
NEW = bytearray(N + 512)
OUT = bytearray(4096)
TABLE = bytearray(2 * delta.TABLE_WORDS) if MICROPYTHON else None
ENC = delta.Encoder(TABLE)


def fill_pages(buf, n, seed):
    """Database-like bytes: rows of small numbers and words, some repetition."""
    g = xorshift(seed)
    words = (b"alpha", b"beta", b"gamma", b"delta", b"omega", b"sigma", b"kappa", b"theta")
    pos = 0
    while pos < n:
        r = next(g)
        row = b"%d|%s|%d;" % (r % 100000, words[r & 7], (r >> 8) % 977)
        k = min(len(row), n - pos)
        buf[pos:pos + k] = row[:k]
        pos += k


def fill_random(buf, start, end, seed):
    g = xorshift(seed)
    for i in range(start, end):
        buf[i] = next(g) & 0xFF


def round_trip(base_n, new_n, out=OUT):
    blk = deltabase.block_size(base_n)
    sigs = deltabase.signatures(memoryview(BASE)[:base_n], blk)
    k = ENC.encode(NEW, new_n, blk, sigs, out)
    if k < 0:
        return k, blk
    got = deltabase.apply(bytes(BASE[:base_n]), blk, memoryview(out)[:k], new_n)
    if hashlib.sha256(got).digest() != hashlib.sha256(memoryview(NEW)[:new_n]).digest():
        raise AssertionError("rebuilt chunk differs")
    return k, blk


def test_block_sizes():
    assert deltabase.block_size(100) == 64
    assert deltabase.block_size(2048) == 128
    assert deltabase.block_size(8192) == 256
    assert deltabase.block_size(65536) == 512
    for n in (1, 64, 1000, 8192, 30000, 65536, 1 << 20):
        blk = deltabase.block_size(n)
        assert delta.MIN_BLOCK <= blk <= delta.MAX_BLOCK
        assert n // blk <= delta.MAX_BLOCKS or blk == delta.MAX_BLOCK


def test_signatures_are_eight_bytes_per_full_block():
    fill_pages(BASE, 8200, 1)
    sigs = deltabase.signatures(memoryview(BASE)[:8200], 256)
    assert len(sigs) == 32 * delta.SIG         # the 8 bytes past 32 blocks have none
    blk0 = memoryview(BASE)[:256]
    assert sigs[4:8] == hashlib.sha256(blk0).digest()[:4]
    a = sum(BASE[:256]) & 0xFFFF
    assert sigs[0] << 8 | sigs[1] == a


def test_a_few_changed_bytes_cost_a_block_not_the_chunk():
    fill_pages(BASE, 8192, 2)
    NEW[:8192] = BASE[:8192]
    for at in (100, 3000, 7000):                # three rows rewritten in place
        NEW[at:at + 6] = b"XXXXXX"
    k, blk = round_trip(8192, 8192)
    assert blk == 256
    # three changed blocks as literals (~256 B each) and four copy runs
    assert k < 3 * (blk + 3) + 4 * 4, k


def test_insertions_and_deletions_shift_the_rest():
    fill_pages(BASE, 8192, 3)
    NEW[:50] = BASE[:50]
    NEW[50:61] = b"inserted!!!"
    NEW[61:8192 + 11 - 100] = BASE[50:8192 - 100]     # 11 bytes in, the last 100 gone
    k, blk = round_trip(8192, 8192 + 11 - 100)
    assert k < 2 * blk + 40, k


def test_appended_bytes_come_as_one_literal():
    fill_pages(BASE, 6000, 4)
    NEW[:6000] = BASE[:6000]
    fill_pages(memoryview(NEW)[6000:], 500, 5)
    k, blk = round_trip(6000, 6500)
    # the base's partial last block (6000 % 256 = 112 B) and the new 500 B are literals
    assert k < 500 + 112 + 16, k


def test_nothing_in_common_does_not_fit_a_small_out():
    fill_random(BASE, 0, 8192, 6)
    fill_random(NEW, 0, 8192, 7)
    k, blk = round_trip(8192, 8192)
    assert k == -1                               # 8 KiB of literals do not fit 4 KiB
    big = bytearray(8192 + 16)
    k, blk = round_trip(8192, 8192, big)
    assert 8192 < k <= 8192 + 4                  # one literal: its length and the bytes


def test_repeated_blocks_and_reordered_blocks():
    fill_pages(BASE, 4096, 8)
    # the base's blocks in another order, one of them twice
    blk = deltabase.block_size(4096)                 # 128
    order = (5, 4, 3, 3, 0, 1, 2, 31, 30)
    for j, b in enumerate(order):
        NEW[j * blk:(j + 1) * blk] = BASE[b * blk:(b + 1) * blk]
    k, got_blk = round_trip(4096, len(order) * blk)
    assert got_blk == blk and k < 3 * len(order), k


def test_a_chunk_shorter_than_a_block():
    fill_pages(BASE, 4096, 9)
    NEW[:40] = BASE[:40]
    k, blk = round_trip(4096, 40)
    assert k == 41                               # one literal of 40 bytes


def test_a_wrong_base_is_caught_by_the_hash():
    fill_pages(BASE, 8192, 10)
    NEW[:8192] = BASE[:8192]
    NEW[4000:4004] = b"edit"
    blk = deltabase.block_size(8192)
    sigs = deltabase.signatures(memoryview(BASE)[:8192], blk)
    k = ENC.encode(NEW, 8192, blk, sigs, OUT)
    assert 0 < k < 1024
    other = bytearray(BASE[:8192])
    other[100:110] = b"0123456789"               # the anchor's old chunk is not this base
    got = deltabase.apply(bytes(other), blk, memoryview(OUT)[:k], 8192)
    assert hashlib.sha256(got).digest() != hashlib.sha256(memoryview(NEW)[:8192]).digest()


def rejects(base, blk, ops, size, word):
    try:
        deltabase.apply(base, blk, ops, size)
    except ValueError as e:
        if word not in str(e):
            raise AssertionError("%r does not say %r" % (str(e), word))
        return
    raise AssertionError("accepted %r" % (bytes(ops),))


def test_apply_rejects_what_a_hostile_rover_could_send():
    base = bytes(range(256)) * 2                 # 4 blocks of 128
    rejects(base, 128, bytes((0x09, 4)), 256, "copy of blocks")     # blocks 4..7 of 4
    rejects(base, 128, bytes((0x05, 3)), 256, "copy of blocks")     # blocks 3..4
    rejects(base, 128, bytes((0x80,)), 1, "cut short")              # varint never ends
    rejects(base, 128, bytes((0x03,)), 128, "copy cut short")       # no block index
    rejects(base, 128, bytes((0x0A, 1, 2)), 5, "past the instructions")
    rejects(base, 128, bytes((0x00,)), 1, "empty")
    rejects(base, 128, bytes((0x03, 0)), 64, "more than")           # 128 B into 64
    rejects(base, 128, bytes((0x03, 0)), 200, "not 200")            # 128 B, 200 promised
    rejects(base, 128, bytes((0xFF,) * 6), 1, "cut short")          # varint past 28 bits
    assert deltabase.apply(base, 128, bytes((0x05, 1, 0x04, 7, 8)), 258) == base[128:384] + b"\x07\x08"


def test_encoder_refuses_bad_signatures():
    for blk, sigs in ((256, b"\0" * 7), (32, b"\0" * 8), (256, b"\0" * 8 * 257)):
        try:
            ENC.encode(NEW, 100, blk, sigs, OUT)
        except ValueError:
            continue
        raise AssertionError("accepted %d signature bytes, blocks of %d" % (len(sigs), blk))


def test_largest_base_within_the_heap():
    # 16 KiB chunk: 64 blocks of 256; scattered edits every 2 KiB
    fill_pages(BASE, N, 11)
    NEW[:N] = BASE[:N]
    for at in range(1000, N, 2048):
        NEW[at] ^= 0x55
    k, blk = round_trip(N, N)
    assert blk == 256 and 0 < k < 8 * (blk + 3) + 9 * 4, k
