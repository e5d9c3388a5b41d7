"""The fleet tier's engine on a real S3 store (SeaweedFS on loopback, tests/support/seaweed.py),
next to the scale model of docs/fleet.md.

- offload: chunks (half incompressible like photos, half database-like rows, 2-64 KiB) sealed
  into 16 MiB packs and PUT; MB/s of chunk bytes, packs and PUTs per GB.
- read: one chunk by range GET, unsealed and checked, median and p95 over 200 reads.
- index: N entries (default 1M) written as 100 index objects in 4 epochs, compacted, and
  loaded by a second anchor; seconds for each, the compacted object's bytes per entry, and the
  process's peak RSS with the loaded index.
Prints one JSON line."""
import argparse
import hashlib
import json
import os
import random
import resource
import statistics
import tempfile
import time

from anchor.fleet import index as fi
from anchor.fleet import packs
from tests.support.seaweed import SeaweedS3

SEAL = os.urandom(32)
CONTENT = os.urandom(32)
INDEX_KEY = os.urandom(32)


def chunk_stream(total, seed=1):
    rnd = random.Random(seed)
    sent = 0
    i = 0
    while sent < total:
        size = rnd.randrange(2048, 65536)
        data = rnd.randbytes(size) if i % 2 else (b"row %d;" % rnd.randrange(10 ** 6)) * (size // 10)
        sent += len(data)
        i += 1
        yield data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--entries", type=int, default=1_000_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        s3 = SeaweedS3(os.path.join(tmp, "seaweed"))
        try:
            objects = s3.objects(prefix="bench/")
            # offload
            t = time.perf_counter()
            raw = 0
            puts = 0
            placed = []
            w = packs.PackWriter(SEAL, CONTENT)
            for data in chunk_stream(a.mib << 20):
                kid, off, ln = w.add(data)
                raw += len(data)
                if len(placed) < 200:
                    placed.append((w.name, off, ln, hashlib.sha256(data).digest()))
                if w.full():
                    objects.put_once("packs/%s/%s" % (w.name[:2], w.name), w.data())
                    puts += 1
                    w = packs.PackWriter(SEAL, CONTENT)
            if w.entries:
                objects.put_once("packs/%s/%s" % (w.name[:2], w.name), w.data())
                puts += 1
            offload_s = time.perf_counter() - t
            stored = sum(n for _, n in objects.list("packs/"))
            # read
            lat = []
            for name, off, ln, sha in placed:
                t = time.perf_counter()
                packs.read_chunk(objects, "packs/%s/%s" % (name[:2], name), name, off, ln, SEAL, CONTENT, sha)
                lat.append((time.perf_counter() - t) * 1000)
            lat.sort()
            # index
            clock = [1_800_000_000.0]
            ia = fi.FleetIndex(objects, INDEX_KEY, "bench-a", lambda: clock[0])
            per = a.entries // 100
            t = time.perf_counter()
            for j in range(100):
                dev = b"dev-%03d" % (j % 20)
                ia.write([(dev, os.urandom(32), os.urandom(16).hex(), k * 8192, 8192) for k in range(per)])
                if j % 25 == 24:
                    clock[0] += fi.MAX_AGE
                    ia.maybe_advance()
            write_s = time.perf_counter() - t
            clock[0] += fi.MAX_AGE
            ia.maybe_advance()
            clock[0] += fi.MAX_AGE
            ia.maybe_advance()
            clock[0] += fi.WRITE_WINDOW
            t = time.perf_counter()
            c = ia.compact()
            compact_s = time.perf_counter() - t
            compacted_bytes = objects.size("compacted/%d" % c)
            ib = fi.FleetIndex(objects, INDEX_KEY, "bench-b", lambda: clock[0])
            t = time.perf_counter()
            loaded = ib.load()
            load_s = time.perf_counter() - t
            keys = list(loaded)[:100000]
            t = time.perf_counter()
            for k in keys:
                loaded[k]
            lookup_us = (time.perf_counter() - t) / len(keys) * 1e6
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        finally:
            s3.stop()
    gb = raw / 1e9
    print(json.dumps({
        "bench": "fleet", "store": "seaweedfs-4.48 loopback",
        "offload_chunk_bytes": raw, "offload_stored_bytes": stored, "offload_s": round(offload_s, 2),
        "offload_mb_per_s": round(raw / offload_s / 1e6, 1), "packs": puts,
        "pack_puts_per_gb": round(puts / gb, 1),
        "read_chunk_ms_median": round(statistics.median(lat), 2), "read_chunk_ms_p95": round(lat[int(len(lat) * 0.95)], 2),
        "index_entries": len(loaded), "index_write_s": round(write_s, 2), "index_compact_s": round(compact_s, 2),
        "index_compacted_bytes_per_entry": round(compacted_bytes / max(1, len(loaded)), 1),
        "index_load_s": round(load_s, 2), "index_lookup_us": round(lookup_us, 3), "peak_rss_mib": rss,
        "scale_model": {"rovers": 100000, "store_gb_per_day": 930, "puts_per_day": 330000,
                        "index_entries_per_year": 40e9, "anchor_cache_mb_per_year_20_rovers": 520},
    }))


if __name__ == "__main__":
    main()
