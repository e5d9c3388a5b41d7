"""The portable chunker (anchor_core.chunker) against pyfastcdc, live, on fresh random data.

CPython only: pyfastcdc is the reference.  Covers the plain-Python cutter, chunks_of() on both
paths, the generated gear module, and the viper cutter under the real MicroPython binary.
"""
import hashlib
import io
import json
import os
import random
import struct
import subprocess
import sys

import pytest
import pyfastcdc
from pyfastcdc.py.constants import GEAR

from anchor_core import chunker, gear
from anchor_core.chunker import Chunker, ObjectId, chunks_of, object_of, MIN_SIZE, AVG_SIZE, MAX_SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")
REF = pyfastcdc.FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE,
                        normalized_chunking=1, seed=0)

BOUNDARY_SIZES = sorted({0, 1, 2, MIN_SIZE - 1, MIN_SIZE, MIN_SIZE + 1, MIN_SIZE + 2,
                         AVG_SIZE - 1, AVG_SIZE, AVG_SIZE + 1, MAX_SIZE - 1, MAX_SIZE,
                         MAX_SIZE + 1, MAX_SIZE + 2, 2 * MAX_SIZE, 2 * MAX_SIZE + 1})


def ref_records(data):
    return [(c.offset, c.length, hashlib.sha256(c.data).digest()) for c in REF.cut_buf(data)]


def scan_records(data, piece):
    """Chunker.scan() fed `piece` bytes at a time, final on the last piece."""
    ck = Chunker()
    out = []
    start = 0
    base = 0
    n = len(data)
    mv = memoryview(data)
    while base < n:
        end = min(n, base + piece)
        view = mv[base:end]
        i = 0
        while True:
            c = ck.scan(view, i, end - base, end == n)
            if c < 0:
                break
            out.append((start, base + c - start))
            start = base + c
            i = c
        base = end
    if n > start:
        out.append((start, n - start))
    return out


class ShortReads(io.RawIOBase):
    """readinto() returning at most `cap` bytes, like a pipe."""

    def __init__(self, data, cap):
        self._f = io.BytesIO(data)
        self._cap = cap

    def readable(self):
        return True

    def readinto(self, b):
        mv = memoryview(b)[:self._cap]
        return self._f.readinto(mv)


def sample_data(rnd, n):
    kind = rnd.randrange(4)
    if kind == 0:
        return rnd.randbytes(n)
    if kind == 1:  # zero runs between random stretches
        parts = []
        while sum(map(len, parts)) < n:
            parts.append(rnd.randbytes(rnd.randrange(1, 20000)))
            parts.append(bytes(rnd.randrange(1, 70000)))
        return b"".join(parts)[:n]
    if kind == 2:  # low-entropy text
        return b"".join(b"%d,%d,ok\n" % (i, rnd.randrange(100)) for i in range(n // 4 + 1))[:n]
    return bytes(rnd.choices(b"\x00\x01\x02", k=n))  # tiny alphabet


def test_generated_gear_module_matches_pyfastcdc():
    assert gear.GEAR_SHA256 == hashlib.sha256(b"".join(struct.pack("<Q", g) for g in GEAR)).hexdigest()
    for b in range(256):
        assert struct.unpack_from("<H", gear.GEAR_LO, 2 * b)[0] == GEAR[b] & 0xFFFF
        assert struct.unpack_from("<I", gear.GEAR_HI, 4 * b)[0] == (GEAR[b] >> 16) & 0xFFFFFFFF
    cfg = pyfastcdc.py.FastCDC(AVG_SIZE, normalized_chunking=1, seed=0).config
    assert (cfg.min_size, cfg.avg_size, cfg.max_size) == (MIN_SIZE, AVG_SIZE, MAX_SIZE)
    assert gear.MASK_S_HI << 16 == cfg.mask_s and gear.MASK_L_HI << 16 == cfg.mask_l


def test_two_limb_hash_equals_64_bit_gear_hash_on_mask_bits():
    # h = (h << 1) + GEAR[b] mod 2**64 vs. the limbs, eagerly and lazily normalised (viper).
    rnd = random.Random(5)
    m64 = (1 << 64) - 1
    h = lo = hi = 0
    llo = lhi = 0  # lazy: carries folded in every 8 steps, as the unrolled viper loop does
    for step in range(200000):
        b = rnd.randrange(256) if step % 1000 < 900 else 0
        h = ((h << 1) + GEAR[b]) & m64
        lo = (lo << 1) + (GEAR[b] & 0xFFFF)
        hi = ((hi << 1) + (GEAR[b] >> 16) + (lo >> 16)) & 0xFFFFFFFF
        lo &= 0xFFFF
        llo = (llo << 1) + (GEAR[b] & 0xFFFF)
        lhi = ((lhi << 1) + ((GEAR[b] >> 16) & 0xFFFFFFFF)) & 0xFFFFFFFF
        assert llo < 1 << 31  # fits a 32-bit signed viper int on the ESP32
        assert hi == (h >> 16) & 0xFFFFFFFF
        assert (lhi + (llo >> 16)) & 0xFFFFFFFF == hi
        if step % 8 == 7:
            lhi = (lhi + (llo >> 16)) & 0xFFFFFFFF
            llo &= 0xFFFF


@pytest.mark.parametrize("seed", range(6))
def test_chunker_matches_pyfastcdc_on_random_sizes(seed):
    rnd = random.Random(1000 + seed)
    sizes = list(BOUNDARY_SIZES) + [rnd.randrange(0, 300000) for _ in range(6)]
    for n in sizes:
        data = sample_data(rnd, n)
        want = ref_records(data)
        want_cuts = [(o, m) for o, m, _ in want]
        piece = rnd.choice([1, 7, 4096, 16384, n + 1]) if n < 40000 else \
            rnd.choice([4096, 16384, 65536, n + 1])
        assert scan_records(data, piece) == want_cuts, (n, piece)
        buf = bytearray(rnd.choice([4096, 5000, 16384]))
        assert list(chunks_of(io.BytesIO(data), buf, fast=False)) == want, n
        assert list(chunks_of(io.BytesIO(data), buf, fast=True)) == want, n
        cap = rnd.choice([1, 7, 333, 4096]) if n < 40000 else 4096
        assert list(chunks_of(ShortReads(data, cap), buf, fast=False)) == want, (n, cap)


def test_every_length_near_cut_points():
    # Truncate one random stream at every length within 3 bytes of its first cuts: the final
    # chunk, where the pair rule of pyfastcdc decides hits on the last byte.
    rnd = random.Random(77)
    data = rnd.randbytes(120000)
    lengths = set()
    for o, m, _ in ref_records(data)[:8]:
        for d in range(-3, 4):
            lengths.add(o + m + d)
    for n in sorted(lengths):
        part = data[:n]
        want = ref_records(part)
        assert scan_records(part, n + 1) == [(o, m) for o, m, _ in want], n
        assert list(chunks_of(io.BytesIO(part), bytearray(4096), fast=False)) == want, n


def test_object_of_agrees_on_both_paths():
    rnd = random.Random(3)
    data = rnd.randbytes(200000) + bytes(50000) + rnd.randbytes(1234)
    want = ref_records(data)
    oid = ObjectId()
    for _o, _m, c in want:
        oid.add(c)
    expect = (len(data), oid.finish(len(data)), len(want))
    buf = bytearray(16384)
    assert object_of(io.BytesIO(data), buf, fast=True) == expect
    assert object_of(io.BytesIO(data), buf, fast=False) == expect


VIPER_SCRIPT = r"""
import sys, json
sys.path.insert(0, sys.argv[1])
from anchor_core import chunker
from binascii import hexlify
buf = bytearray(int(sys.argv[3]))
for path in json.loads(open(sys.argv[2]).read()):
    with open(path, "rb") as f:
        print(json.dumps([[o, n, hexlify(c).decode()] for o, n, c in chunker.chunks_of(f, buf)]))
"""


@pytest.mark.skipif(not os.path.exists(MICROPYTHON), reason="MicroPython unix port not installed")
@pytest.mark.parametrize("bufsize", [4096, 16384])
def test_viper_cutter_matches_pyfastcdc_live(tmp_path, bufsize):
    rnd = random.Random(bufsize)
    paths = []
    want = []
    sizes = list(BOUNDARY_SIZES) + [rnd.randrange(0, 400000) for _ in range(12)]
    base = rnd.randbytes(120000)  # plus prefixes ending near its cut points (EOF rule)
    for o, m, _ in ref_records(base)[:6]:
        sizes.append(-(o + m + rnd.choice([-1, 0, 1])))
    for k, n in enumerate(sizes):
        data = base[:-n] if n < 0 else sample_data(rnd, n)
        p = tmp_path / ("d%d.bin" % k)
        p.write_bytes(data)
        paths.append(str(p))
        want.append([[o, m, c.hex()] for o, m, c in ref_records(data)])
    (tmp_path / "list.json").write_text(json.dumps(paths))
    (tmp_path / "run.py").write_text(VIPER_SCRIPT)
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=256K", str(tmp_path / "run.py"),
         os.path.join(ROOT, "firmware"), str(tmp_path / "list.json"), str(bufsize)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [json.loads(line) for line in proc.stdout.splitlines()]
    for k, (g, w) in enumerate(zip(got, want)):
        assert g == w, (k, sizes[k])
    assert len(got) == len(want)


def test_pyfastcdc_is_the_anchor_path():
    assert chunker.HAVE_PYFASTCDC
    assert chunker.chunks_of(io.BytesIO(b""), bytearray(4096)).__name__ == "_chunks_of_pyfastcdc"
