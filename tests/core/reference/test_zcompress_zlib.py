"""Streams made by the rover's viper compressor (anchor_core.zcompress under the real MicroPython binary,
256 KB heap) read back by CPython's zlib, the way the anchor reads them.  CPython only.
"""
import os
import random
import subprocess
import sys
import zlib

import pytest

from anchor_core.zcompress import Compressor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")

# Compresses argv[2] with anchor_core.zcompress into argv[3] (empty file for -1); argv[4] "1" forces.
DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from anchor_core.zcompress import Compressor
with open(sys.argv[2], "rb") as f:
    data = f.read()
c = Compressor()
k = c.compress(data, len(data), sys.argv[4] == "1")
with open(sys.argv[3], "wb") as f:
    if k > 0:
        f.write(memoryview(c.out)[:k])
print(k)
"""


def mpy_compress(tmp_path, data, always=False):
    src = tmp_path / "in.bin"
    dst = tmp_path / "out.z"
    src.write_bytes(data)
    proc = subprocess.run(
        [MICROPYTHON, "-X", "heapsize=256K", "-c", DRIVER, os.path.join(ROOT, "firmware"),
         str(src), str(dst), "1" if always else "0"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    k = int(proc.stdout.split()[-1])
    out = dst.read_bytes()
    assert k == (len(out) if k > 0 else -1)
    return k, out


def text_data(n, seed):
    rng = random.Random(seed)
    lines = []
    size = 0
    seq = 0
    while size < n:
        line = ("%s %02d:%02d:%02d.%03d [%s] rover.%s: %s=%d %s=%.2f seq=%d\n" % (
            rng.choice(("2025-07-01", "2025-07-02")), rng.randrange(24), rng.randrange(60),
            rng.randrange(60), rng.randrange(1000), rng.choice(("INFO", "WARN", "DEBUG")),
            rng.choice(("gps", "imu", "radio", "power")), rng.choice(("fix", "sats", "rssi")),
            rng.randrange(-120, 1000), rng.choice(("volt", "temp", "lat")),
            rng.uniform(-90, 90), seq)).encode()
        lines.append(line)
        size += len(line)
        seq += 1
    return b"".join(lines)[:n]


@pytest.mark.parametrize("seed", [1, 2])
def test_micropython_text_decompresses_with_zlib(tmp_path, seed):
    data = text_data(32768, seed)
    k, out = mpy_compress(tmp_path, data)
    assert 0 < k < len(data) * 45 // 100
    assert out[:2] == b"\x78\x01"
    d = zlib.decompressobj()  # what the anchor uses: default wbits, checks the Adler-32
    assert d.decompress(out) + d.flush() == data
    assert d.eof and d.unused_data == b""
    # the plain-Python encoder is the same algorithm, byte for byte
    c = Compressor()
    assert bytes(c.out[:c.compress(data, len(data))]) == out


def test_micropython_random_gives_up_and_forced_is_valid(tmp_path):
    data = random.Random(5).randbytes(32768)
    k, out = mpy_compress(tmp_path, data)
    assert k == -1 and out == b""
    k, out = mpy_compress(tmp_path, data, always=True)
    assert len(data) < k <= len(data) * 9 // 8 + 16
    assert zlib.decompress(out) == data


def test_micropython_mixed_sizes(tmp_path):
    rng = random.Random(9)
    text = text_data(32768, 3)
    for n in (0, 1, 2, 3, 100, 4095, 20000):
        data = bytearray(text[:n])
        for _ in range(n // 50):  # sprinkle noise so some matches break early
            data[rng.randrange(n)] = rng.randrange(256)
        k, out = mpy_compress(tmp_path, bytes(data), always=True)
        assert zlib.decompress(out) == data, n


# Compresses every file argv[2:] with anchor_core.zcompress (forced) into FILE.z.
MANY = """
import sys
sys.path.insert(0, sys.argv[1])
from anchor_core.zcompress import Compressor
c = Compressor()
for p in sys.argv[2:]:
    with open(p, "rb") as f:
        data = f.read()
    k = c.compress(data, len(data), True)
    with open(p + ".z", "wb") as f:
        f.write(memoryview(c.out)[:k])
    print(p, k, c.btype)
"""


def sqlite_pages(rng, n):
    """4 KiB pages of rows (id, timestamp, peer, text) with a header and cell pointers."""
    out = bytearray()
    rowid = 1000
    while len(out) < n:
        page = bytearray(4096)
        page[0] = 0x0D
        off = 4096
        cells = 0
        while True:
            row = b"%s|%d|%s|%s" % (rowid.to_bytes(3, "big"), 1_700_000_000 + rng.randrange(99999),
                                    rng.choice((b"ana", b"bruno", b"eva")),
                                    b" ".join(rng.choice((b"ok", b"radio", b"see you", b"battery")) for _ in range(rng.randrange(3, 12))))
            if off - len(row) < 8 + 2 * (cells + 1):
                break
            off -= len(row)
            page[off:off + len(row)] = row
            page[8 + 2 * cells:10 + 2 * cells] = off.to_bytes(2, "big")
            cells += 1
            rowid += 1
        page[3] = cells
        out += page
    return bytes(out[:n])


def test_micropython_streams_of_every_kind_read_by_zlib(tmp_path):
    rng = random.Random(14)
    text = text_data(32768, 4)
    inputs = {
        "empty": b"", "one": b"\xff", "two": b"ab", "ones": b"\x00" * 32768, "run": b"z" * 1000,
        "random": rng.randbytes(32768), "random_small": rng.randbytes(100),
        "text": text, "text_small": text[:500], "text_8k": text[:8192],
        "binary": bytes((i * 7) & 0xFF if i & 1 else (i >> 2) & 0x0F for i in range(20000)),
        "sqlite": sqlite_pages(rng, 32768), "sqlite_8k": sqlite_pages(rng, 8192),
        "mixed": text[:10000] + rng.randbytes(3000) + text[:10000],
    }
    paths = []
    for name, data in inputs.items():
        p = tmp_path / name
        p.write_bytes(data)
        paths.append(str(p))
    proc = subprocess.run([MICROPYTHON, "-X", "heapsize=256K", "-c", MANY, os.path.join(ROOT, "firmware")] + paths,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    types = {}
    c = Compressor()
    for line in proc.stdout.split("\n"):
        if not line:
            continue
        p, k, btype = line.split()
        name = os.path.basename(p)
        data = inputs[name]
        out = (tmp_path / (name + ".z")).read_bytes()
        assert len(out) == int(k)
        d = zlib.decompressobj()
        assert d.decompress(out) + d.flush() == data, name
        assert d.eof and d.unused_data == b""
        # the plain-Python encoder is the same algorithm, byte for byte
        assert bytes(c.out[:c.compress(data, len(data), True)]) == out, name
        types[name] = int(btype)
        if name in ("text", "text_8k", "sqlite", "sqlite_8k", "binary"):
            assert len(out) < len(zlib.compress(data, 6)) * 110 // 100, name  # near zlib -6
    assert len(types) == len(inputs)
    assert types["text"] == 2 and types["sqlite"] == 2 and types["random"] == 0 and types["one"] == 1
