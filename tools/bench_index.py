#!/usr/bin/env python3
"""Chunk-index candidates for the anchor's store: SQLite (WAL) vs TinyDB.

Each candidate runs in its own process (so its RSS is its own) and prints one JSON line:
inserts of N chunk records (id = 32-byte SHA-256, segment, offset, lengths, encoding, class,
last use) in transactions of --batch records, then random lookups of present and of absent ids
one at a time (as ChunkStore.has() does), for SQLite also in IN (...) groups of 100 (as
ChunkStore.ingest()/missing() do). Reports inserts/s, lookups/s, file size, peak RSS.

  sqlite     the store's own schema (WITHOUT ROWID table keyed by the id), journal_mode=WAL,
             synchronous=NORMAL, N=100k
  sqlite-1M  the same with N=1M (DESIGN section 9: anchor RSS with 1M chunks indexed)
  tinydb     TinyDB 4 with its default JSONStorage: every insert_multiple() re-serialises and
             rewrites the whole JSON file, every lookup scans all documents. It inserts batches
             until --tinydb-seconds have passed; the line says which N it reached and
             extrapolates (insert time per batch grows linearly with N, so the total is
             quadratic; lookups scan, so they slow down linearly).

Usage: tools/bench_index.py [--only sqlite|sqlite-1M|tinydb] [-n N] [--batch 1000]
       tools/bench_index.py --one-line [--tinydb-seconds S]   (one JSON line with all three;
       tools/bench-index runs this with a 15 s TinyDB budget and finishes in about a minute)
"""
import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time


def chunk_id(i):
    # Ids are derived, not kept: a list of 1M ids would itself be ~70 MB of RSS.
    return hashlib.sha256(i.to_bytes(8, "little")).digest()


def absent_id(i):
    return hashlib.sha256(b"absent" + i.to_bytes(8, "little")).digest()


def row(i):
    return (chunk_id(i), 1 + i // 400, 16 + (i % 400) * 10000, 8192, 5000, 2, 1700000000 + i)


def rss_kib():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def dir_size(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def bench_sqlite(n, batch, lookups, name):
    import sqlite3

    from anchor.storage.index_sqlite import INSERT_CHUNK, SCHEMA
    base = rss_kib()["VmRSS"]
    with tempfile.TemporaryDirectory(prefix="bench-index-") as d:
        db = sqlite3.connect(os.path.join(d, "index.sqlite"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        t_ins = 0.0
        for start in range(0, n, batch):
            rows = [row(i) for i in range(start, min(n, start + batch))]
            t0 = time.perf_counter()
            db.execute("BEGIN")
            db.executemany(INSERT_CHUNK, rows)
            db.execute("COMMIT")
            t_ins += time.perf_counter() - t0

        r = random.Random(1)
        present = [chunk_id(r.randrange(n)) for _ in range(lookups)]
        absent = [absent_id(i) for i in range(lookups)]
        q = "SELECT seg, off, stored_len FROM chunks WHERE id=?"
        t0 = time.perf_counter()
        hits = sum(db.execute(q, (c,)).fetchone() is not None for c in present)
        t_present = time.perf_counter() - t0
        t0 = time.perf_counter()
        hits_absent = sum(db.execute(q, (c,)).fetchone() is not None for c in absent)
        t_absent = time.perf_counter() - t0
        assert hits == lookups and hits_absent == 0

        mixed = present[: lookups // 2] + absent[: lookups // 2]
        r.shuffle(mixed)
        qin = "SELECT id FROM chunks WHERE id IN (%s)" % ",".join("?" * 100)
        t0 = time.perf_counter()
        found = 0
        for i in range(0, len(mixed) - 99, 100):
            found += len(db.execute(qin, mixed[i:i + 100]).fetchall())
        t_in = time.perf_counter() - t0
        files = {f: os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)}
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size_after_checkpoint = dir_size(d)
        mem = rss_kib()
        db.close()
    return {
        "candidate": name, "n": n, "batch": batch,
        "inserts_per_s": round(n / t_ins),
        "insert_s": round(t_ins, 2),
        "lookups_per_s_present": round(lookups / t_present),
        "lookups_per_s_absent": round(lookups / t_absent),
        "lookups_per_s_in100_mixed": round((len(mixed) // 100 * 100) / t_in),
        "file_bytes": files,
        "bytes_after_checkpoint": size_after_checkpoint,
        "bytes_per_chunk": round(size_after_checkpoint / n, 1),
        "rss_mib": round(mem["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(mem["VmHWM"] / 1024, 1),
        "baseline_rss_mib": round(base / 1024, 1),
        "settings": "journal_mode=WAL synchronous=NORMAL, WITHOUT ROWID, default 2 MiB page cache",
    }


def bench_tinydb(batch, seconds, lookups_seconds, name):
    import tinydb
    from tinydb import Query, TinyDB
    base = rss_kib()["VmRSS"]
    with tempfile.TemporaryDirectory(prefix="bench-index-") as d:
        path = os.path.join(d, "index.json")
        db = TinyDB(path)
        table = db.table("chunks")
        batch_times = []
        n = 0
        t_start = time.perf_counter()
        while time.perf_counter() - t_start < seconds:
            docs = []
            for i in range(n, n + batch):
                cid, seg, off, raw_len, stored_len, enc, last_use = row(i)
                docs.append({"id": cid.hex(), "seg": seg, "off": off, "raw_len": raw_len,
                             "stored_len": stored_len, "enc": enc, "last_use": last_use})
            t0 = time.perf_counter()
            table.insert_multiple(docs)
            batch_times.append((n, time.perf_counter() - t0))
            n += batch
        t_ins = sum(t for _, t in batch_times)
        size = os.path.getsize(path)
        mem_after_insert = rss_kib()

        Chunk = Query()
        r = random.Random(1)
        res = {}
        for kind in ("present", "absent"):
            done = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < lookups_seconds / 2:
                hexid = (chunk_id(r.randrange(n)) if kind == "present" else absent_id(done)).hex()
                hit = table.get(Chunk.id == hexid)
                assert (hit is not None) == (kind == "present")
                done += 1
            res[kind] = done / (time.perf_counter() - t0)
        mem = rss_kib()
        db.close()

    # Per-batch insert time grows linearly with the records already there: fit t = a + b*N over
    # the second half of the batches (the first ones are noise-dominated) and sum it.
    half = batch_times[len(batch_times) // 2:]
    xs = [x for x, _ in half]
    ys = [y for _, y in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in half) / max(sum((x - mx) ** 2 for x in xs), 1e-9)
    a = my - b * mx

    def total(target):
        return sum(a + b * x for x in range(0, target, batch))

    per_record_rss = (mem_after_insert["VmRSS"] - base) / n
    return {
        "candidate": name, "version": tinydb.__version__, "batch": batch,
        "n_reached": n, "seconds_budget": seconds,
        "inserts_per_s": round(n / t_ins),
        "last_batch_s": round(batch_times[-1][1], 3),
        "lookups_per_s_present": round(res["present"], 1),
        "lookups_per_s_absent": round(res["absent"], 1),
        "file_bytes": size,
        "bytes_per_chunk": round(size / n, 1),
        "rss_mib": round(mem["VmRSS"] / 1024, 1),
        "peak_rss_mib": round(mem["VmHWM"] / 1024, 1),
        "baseline_rss_mib": round(base / 1024, 1),
        "insert_s": round(t_ins, 1),
        "extrapolated": {
            "insert_s_100k": round(t_ins * (100_000 / n) ** 2 if n < 100_000 else t_ins, 1),
            "insert_s_1M_quadratic": round(t_ins * (1_000_000 / n) ** 2),
            "insert_s_1M_fit": round(total(1_000_000)),
            "lookups_per_s_at_100k": round(res["present"] * n / 100_000, 2),
            "lookups_per_s_at_1M": round(res["present"] * n / 1_000_000, 3),
            "rss_mib_at_1M": round(per_record_rss * 1_000_000 / 1024 + base / 1024),
            "method": "quadratic: measured total x (N_target/N)^2; fit: per-batch time "
                      "fitted as a+b*N over the later half of the batches, summed; lookups "
                      "scale as 1/N (full scan); RSS linear per record",
        },
        "storage": "default JSONStorage (every write re-serialises and rewrites the file)",
    }


def run_child(args):
    if args.only == "tinydb":
        out = bench_tinydb(args.batch, args.tinydb_seconds, args.lookup_seconds, "tinydb")
    else:
        n = args.n or (1_000_000 if args.only == "sqlite-1M" else 100_000)
        out = bench_sqlite(n, args.batch, args.lookups, args.only)
    print(json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["sqlite", "sqlite-1M", "tinydb"])
    ap.add_argument("-n", type=int, default=0, help="records for sqlite (default 100k / 1M)")
    ap.add_argument("--batch", type=int, default=1000, help="records per transaction")
    ap.add_argument("--lookups", type=int, default=20000)
    ap.add_argument("--tinydb-seconds", type=float, default=30.0)
    ap.add_argument("--lookup-seconds", type=float, default=6.0)
    ap.add_argument("--skip-1m", action="store_true")
    ap.add_argument("--one-line", action="store_true",
                    help="print one JSON line holding every candidate's result (for make bench)")
    args = ap.parse_args()
    if args.only:
        run_child(args)
        return
    names = ["sqlite", "tinydb"] + ([] if args.skip_1m else ["sqlite-1M"])
    results = {}
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), "--only", name, "--batch", str(args.batch),
               "--lookups", str(args.lookups), "--tinydb-seconds", str(args.tinydb_seconds),
               "--lookup-seconds", str(args.lookup_seconds)]
        if not args.one_line:
            subprocess.run(cmd, check=True)
            continue
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
    if args.one_line:
        print(json.dumps({"bench": "chunk_index", "candidates": results}), flush=True)


if __name__ == "__main__":
    main()
