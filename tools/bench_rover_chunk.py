# Rover chunk+hash benchmark, run under MicroPython (256 KB heap) by tools/bench-rover-chunk.
#
# Usage: micropython -X heapsize=256K tools/bench_rover_chunk.py FIRMWARE_DIR DATA_FILE [RUNS]
#
# Prints ONE JSON line.  MB = 10**6 bytes.  Every rate is the best of RUNS passes over the file
# (the shared build machine is noisy; the best pass is the one least disturbed by neighbours):
#   mb_per_s                  chunks_of() + ObjectId: cut, SHA-256 per chunk, whole-object id,
#                             reading the file through one 16 KiB buffer (what the rover does)
#   viper_scan_only_mb_per_s  Chunker.scan() alone over the same reads (no hashing)
#   sha256_only_mb_per_s      hashlib.sha256 over the same reads (no cutting)
#   peak_heap_bytes           see measure_peak_heap()
import sys
import gc
import time
import hashlib

sys.path.insert(0, sys.argv[1])
import micropython  # noqa: E402
from anchor_core.chunker import Chunker, ObjectId, chunks_of  # noqa: E402

PATH = sys.argv[2]
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
BUF = bytearray(16384)
MV = memoryview(BUF)


def chunk_and_hash():
    oid = ObjectId()
    size = 0
    with open(PATH, "rb") as f:
        for _off, length, cid in chunks_of(f, BUF):
            oid.add(cid)
            size += length
    return size, oid.finish(size), oid.n_chunks


def scan_only():
    ck = Chunker()
    size = 0
    with open(PATH, "rb") as f:
        while True:
            n = f.readinto(BUF)
            if not n:
                break
            size += n
            i = 0
            while True:
                cut = ck.scan(BUF, i, n)
                if cut < 0:
                    break
                i = cut
    return size


def sha256_only():
    h = hashlib.sha256()
    size = 0
    with open(PATH, "rb") as f:
        while True:
            n = f.readinto(BUF)
            if not n:
                break
            size += n
            h.update(MV[:n])
    return size


def best_rate(fn):
    best = 0.0
    for _ in range(RUNS):
        gc.collect()
        t0 = time.ticks_us()
        fn()
        dt = time.ticks_diff(time.ticks_us(), t0)
        rate = SIZE / dt  # bytes per microsecond == MB/s
        if rate > best:
            best = rate
    return best


def measure_peak_heap():
    """Upper bound of the live heap during chunk+hash, in bytes, on MicroPython's GC heap.

    micropython.mem_info()'s "peak" line is not usable here: it counts every allocation as
    live until an explicit free, and the GC never frees that way, so it grows with the file.
    Instead: a separate pass that calls gc.collect() after every chunk and, just before each
    collect, reads gc.mem_alloc().  That value is everything live at the previous collect plus
    everything allocated since (garbage included), so its maximum bounds the true peak from
    above.  It is absolute: it includes the interpreter's own objects, the loaded modules
    (anchor_core.chunker with its gear table) and this script, i.e. what counts against 256 KB.
    """
    gc.collect()
    peak = gc.mem_alloc()
    oid = ObjectId()
    size = 0
    with open(PATH, "rb") as f:
        for _off, length, cid in chunks_of(f, BUF):
            oid.add(cid)
            size += length
            used = gc.mem_alloc()
            if used > peak:
                peak = used
            gc.collect()
    oid.finish(size)
    used = gc.mem_alloc()
    if used > peak:
        peak = used
    return peak


SIZE, OID, N_CHUNKS = chunk_and_hash()  # warm-up, and the numbers to report
gc.collect()
idle = gc.mem_alloc()
rate = best_rate(chunk_and_hash)
scan_rate = best_rate(scan_only)
sha_rate = best_rate(sha256_only)
peak = measure_peak_heap()
print('{"bench":"rover_chunk_hash","runtime":"micropython","heap":"256K",'
      '"mb":%.3f,"seconds":%.3f,"mb_per_s":%.1f,"peak_heap_bytes":%d,'
      '"viper_scan_only_mb_per_s":%.1f,"sha256_only_mb_per_s":%.1f,'
      '"chunks":%d,"avg_chunk":%d,"heap_idle_bytes":%d,"runs":%d}'
      % (SIZE / 1e6, SIZE / rate / 1e6, rate, peak, scan_rate, sha_rate,
         N_CHUNKS, SIZE // max(N_CHUNKS, 1), idle, RUNS))
_ = micropython  # imported to fail fast on a non-MicroPython runtime
