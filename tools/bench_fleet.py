"""The fleet tier's engine on a real S3 store (SeaweedFS on loopback, tests/support/seaweed.py),
next to the scale model of docs/fleet.md.

- offload: chunks (half incompressible like photos, half database-like rows, 2-64 KiB) sealed
  into 16 MiB packs and PUT; MB/s of chunk bytes, packs and PUTs per GB.
- read: one chunk by range GET, unsealed and checked, median and p95 over 200 reads.
- index: N entries (default 1M) written as 100 index objects in 4 epochs, compacted, and
  loaded by a second anchor; seconds for each, the compacted object's bytes per entry, and the
  process's peak RSS with the loaded index (the reason the anchor does not hold it so).
- cache: an anchor's local copy of the fleet index as it keeps it (fleet/remote.py, SQLite on
  flash): 1M rows, a lookup's latency, and the RSS of a process holding it (measured in a
  child process of its own).
- anchor: a real `anchor serve --fleet` backing up a generated tree from a CPython rover, then
  offloading it (`anchorctl fleet offload`): MB/s through the whole offload (reading flash,
  sealing, PUT, read-back, index), requests per committed snapshot for the first backup and
  for a second one with a few files changed.
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


def cache_child(n):
    """In a child process: n rows in the anchor's cache of the fleet index; lookups; RSS."""
    import sqlite3
    import subprocess
    import sys
    code = r"""
import os, random, resource, sqlite3, sys, tempfile, time, json
from anchor.fleet.remote import RemoteChunks
from anchor.fleet.keys import FleetKeys
n = int(sys.argv[1])
with tempfile.TemporaryDirectory() as d:
    db = sqlite3.connect(os.path.join(d, "fleet.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    r = RemoteChunks(db, None, FleetKeys(bytes(32)))
    r.learn_device("dev", b"x" * 32)
    rnd = random.Random(1)
    ids = []
    t = time.perf_counter()
    for j in range(0, n, 10000):
        rows = []
        for k in range(min(10000, n - j)):
            c = rnd.randbytes(32)
            if len(ids) < 100000:
                ids.append(c)
            rows.append((c, "dev", "%032x" % (j // 2048), k * 8192, 8192, 8100))
        r.add(rows)
    fill = time.perf_counter() - t
    rnd.shuffle(ids)
    t = time.perf_counter()
    for c in ids:
        r.where(c)
    one = (time.perf_counter() - t) / len(ids) * 1e6
    t = time.perf_counter()
    got = r.present(ids)
    batch = (time.perf_counter() - t) / len(ids) * 1e6
    assert len(got) == len(ids)
    size = os.path.getsize(os.path.join(d, "fleet.sqlite"))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"rows": n, "fill_s": round(fill, 1), "lookup_us": round(one, 1),
                      "batch_lookup_us": round(batch, 2), "file_mib": round(size / 2**20, 1), "rss_mib": rss}))
"""
    p = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True, timeout=1800)
    if p.returncode:
        raise SystemExit(p.stderr)
    return json.loads(p.stdout)


def prefill_cache(data_dir, n):
    """n rows in an anchor's cache of the fleet index before it starts (another device's
    chunks, as a fleet anchor holds after taking rovers over)."""
    import random
    import sqlite3
    from anchor.fleet.keys import FleetKeys
    from anchor.fleet.remote import RemoteChunks
    from anchor.fleet.state import open_state
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    db, _ = open_state(data_dir)
    db.execute("PRAGMA synchronous=OFF")        # a bench's fill; the anchor opens it FULL
    r = RemoteChunks(db, None, FleetKeys(bytes(32)))
    rnd = random.Random(2)
    for j in range(0, n, 10000):
        r.add([(rnd.randbytes(32), "other", "%032x" % (j // 2048), k * 8192, 8192, 8100)
               for k in range(min(10000, n - j))])
    db.close()


def rss_of(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def anchor_offload(tmp, s3, mib, cached=0):
    """A real anchor process: back up a generated tree, offload it, change a little, again;
    with `cached` rows in its cache of the fleet index, and its RSS after."""
    import subprocess
    from anchor.fleet import keys
    from tests.support.harness import AnchorProc, anchorctl, make_tree, rover_cmd, run_rover
    from tests.support.seaweed import ACCESS_KEY, BUCKET, SECRET_KEY
    kf = os.path.join(tmp, "fleet.key")
    keys.write_key_file(kf, keys.new_key())
    cf = os.path.join(tmp, "store.toml")
    with open(cf, "w") as f:
        f.write('access_key = "%s"\nsecret_key = "%s"\n' % (ACCESS_KEY, SECRET_KEY))
    if cached:
        prefill_cache(os.path.join(tmp, "anchor"), cached)
    a = AnchorProc(os.path.join(tmp, "anchor"), "--fleet", "s3://" + BUCKET, "--fleet-endpoint", s3.endpoint,
                   "--fleet-key-file", kf, "--fleet-credentials-file", cf, secure=True).start()
    out = {}
    try:
        anchorctl(a.address, "fleet")
        out["anchor_idle_rss_mib"] = rss_of(a.proc.pid)["VmRSS"]      # the cache open, nothing done
        state = os.path.join(tmp, "state")
        code = json.loads(anchorctl(a.address, "pair", "bench", "--json").stdout)["code"]
        subprocess.run(rover_cmd("cpython", "tcp://unused:1", "bench", state, "pair", code), check=True,
                       capture_output=True, timeout=60)
        src = os.path.join(tmp, "src")
        make_tree(src, 200, mib << 20, seed=9)

        def offload():
            before = json.loads(anchorctl(a.address, "fleet", "--json").stdout)
            t = time.perf_counter()
            anchorctl(a.address, "fleet", "offload")
            for _ in range(100000):
                st = json.loads(anchorctl(a.address, "fleet", "--json").stdout)
                if (st["last_pass"] or 0) > (before["last_pass"] or 0) and st["state"] == "idle" \
                        and not st["pending"]["snapshots"]:
                    break
                time.sleep(0.05)
            took = time.perf_counter() - t
            b, c = before["totals"], st["totals"]
            return took, dict((k, c[k] - b[k]) for k in c), st

        run_rover("cpython", a.link, "bench", state, "backup", src)
        took, d, st = offload()
        out["first"] = {"seconds": round(took, 2), "mb_per_s": round(st["local"]["bytes"] / took / 1e6, 1),
                        "requests": d["requests"], "packs": d["packs"], "stored_mib": round(d["bytes"] / 2**20, 1)}
        names = sorted(os.listdir(src))
        for name in names[:3]:
            p = os.path.join(src, name)
            if os.path.isfile(p):
                with open(p, "ab") as f:
                    f.write(os.urandom(20000))
        run_rover("cpython", a.link, "bench", state, "backup", src)
        took, d, st = offload()
        out["second"] = {"seconds": round(took, 2), "requests": d["requests"], "packs": d["packs"]}
        rss = rss_of(a.proc.pid)
        out["anchor_rows_cached"] = cached
        out["anchor_rss_mib"] = rss["VmRSS"]
        out["anchor_peak_rss_mib"] = rss["VmHWM"]
    finally:
        a.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--anchor-mib", type=int, default=64)
    a = ap.parse_args()
    cache = cache_child(a.entries)
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
            anchor = anchor_offload(tmp, s3, a.anchor_mib, cached=a.entries)
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
        "anchor_cache": cache, "anchor_offload": anchor,
        "scale_model": {"rovers": 100000, "store_gb_per_day": 930, "puts_per_day": 330000,
                        "index_entries_per_year": 40e9, "anchor_cache_mb_per_year_20_rovers": 520},
    }))


if __name__ == "__main__":
    main()
