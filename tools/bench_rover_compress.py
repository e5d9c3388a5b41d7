# Rover compression benchmark, run under MicroPython (256 KB heap) by tools/bench-rover-compress.
#
# Usage: micropython -X heapsize=256K tools/bench_rover_compress.py FIRMWARE_DIR DATA_FILE INDEX_FILE [RUNS]
#
# DATA_FILE is chunks back to back; INDEX_FILE one "KIND LENGTH" line per chunk, in order.
# Each chunk is compressed alone with the rover's compressor as the rover makes it
# (anchor_core.zcompress.Compressor(32768, False, 16384): raw when it does not shrink).
# Prints ONE JSON line.  MB = 10**6 bytes.  Rates are the best of RUNS passes (the shared build
# machine is noisy):
#   mb_per_s         input bytes per second over every chunk
#   out_bytes        the compressed chunks (raw where the compressor gave up), per kind too
#   compressor_heap_bytes  gc.mem_alloc() after making the compressor minus before importing it
import sys
import gc
import time

sys.path.insert(0, sys.argv[1])
import micropython  # noqa: E402,F401

gc.collect()
_before = gc.mem_alloc()
from anchor_core.zcompress import Compressor  # noqa: E402

C = Compressor(32768, False, 16384)
gc.collect()
HEAP = gc.mem_alloc() - _before

RUNS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
BUF = bytearray(32768)
KINDS = []
LENS = []
with open(sys.argv[3]) as f:
    for line in f:
        k, n = line.split()
        KINDS.append(k)
        LENS.append(int(n))


def one_pass():
    out = {}
    with open(sys.argv[2], "rb") as f:
        for k, n in zip(KINDS, LENS):
            f.readinto(memoryview(BUF)[:n])
            r = C.compress(BUF, n)
            out[k] = out.get(k, 0) + (r if r > 0 else n)
    return out


SIZE = sum(LENS)
best = 0.0
res = None
for _ in range(RUNS):
    gc.collect()
    t0 = time.ticks_us()
    res = one_pass()
    dt = time.ticks_diff(time.ticks_us(), t0)
    if SIZE / dt > best:
        best = SIZE / dt
print('{"bench":"rover_compress","runtime":"micropython","heap":"256K","mb":%.3f,"chunks":%d,'
      '"mb_per_s":%.2f,"out_bytes":%d,"out_by_kind":{%s},"compressor_heap_bytes":%d,"runs":%d}'
      % (SIZE / 1e6, len(LENS), best, sum(res.values()),
         ",".join('"%s":%d' % (k, res[k]) for k in sorted(res)), HEAP, RUNS))
