#!/usr/bin/env python3
"""Anchor capture throughput vs. plain SHA-256 over the same bytes (DESIGN section 9).

Data (generated in memory, deterministic per seed, about --mib MiB in total, half and half):
  * "photos": files of 1-6 MiB of os.urandom bytes. JPEG/HEIC/video payloads are entropy-coded,
    so random bytes are a fair (slightly pessimistic) stand-in: nothing compresses.
  * "logs": text files of 1-6 MiB built from syslog lines, HTTP access-log lines and JSON telemetry
    lines, with increasing timestamps and varying PIDs, client addresses, sizes, coordinates
    (every chunk is unique, nothing dedups; zstd -1 shrinks it to roughly a quarter).
Files are interleaved photo/log.

Timed:
  * baseline: hashlib.sha256 over every file.
  * ingest: pyfastcdc.FastCDC(8192, normalized_chunking=1).cut_buf per file -> ChunkStore.ingest
    (sha256 per chunk, zstd level 1 where it saves space, records, index) -> flush (fsync +
    index commit), into a fresh store in a temp directory.
Prints one JSON line. MB = 10^6 bytes. Median of --runs runs. Also reports serial_s, the
single-thread seconds of cutting, hashing and compressing the same chunks, and
two_core_bound_ratio: the ratio two cores could reach if those three steps were all there was
and split perfectly (framing, CRC, the index and the writes come on top).
"""
import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "firmware"))

import pyfastcdc  # noqa: E402

from anchor.store import ChunkStore  # noqa: E402


def make_log_text(nbytes, r):
    hosts = ["rover-%02d" % i for i in range(12)]
    procs = [(name, r.randrange(100, 30000)) for name in
             ("sshd", "kernel", "systemd", "NetworkManager", "anchord", "cron", "bluetoothd", "mosquitto")]
    clients = ["10.0.%d.%d" % (r.randrange(4), r.randrange(256)) for _ in range(40)]
    paths = ["/api/v1/telemetry", "/api/v1/config", "/static/app.js", "/index.html", "/img/logo.png",
             "/api/v1/items/%d", "/download/fw-%d.bin", "/search?q=%x"]
    agents = ["Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", "curl/7.88.1",
              "rover-fw/1.4.2 MicroPython/1.22", "python-requests/2.31.0"]
    msgs = ["Accepted publickey for pi from %s port %d ssh2: ED25519 SHA256:%x",
            "wlan0: link becomes ready, signal %d dBm", "Started Session %d of User pi.",
            "usb 1-1.%d: new high-speed USB device number %d using xhci_hcd",
            "client rover-%d connected, keepalive %d", "battery %d%% voltage %d mV temp %d C",
            "checkpoint complete: wrote %d buffers (%d%%)", "retrying upload in %d s (attempt %d)"]
    out = []
    n = 0
    t = 1700000000.0 + r.random() * 1e7
    while n < nbytes:
        t += r.expovariate(5.0)
        k = r.random()
        stamp = time.gmtime(t)
        if k < 0.4:
            m = r.choice(msgs)
            if m.startswith("Accepted"):
                m = m % (r.choice(clients), r.randrange(30000, 60000), r.getrandbits(64))
            else:
                m = m % tuple(r.randrange(1000) for _ in range(m.count("%d")))
            proc, pid = r.choice(procs)
            line = "%s %s %s[%d]: %s\n" % (time.strftime("%b %d %H:%M:%S", stamp), r.choice(hosts),
                                           proc, pid, m)
        elif k < 0.75:
            p = r.choice(paths)
            if "%" in p:
                p = p % r.randrange(1 << 16)
            line = '%s - - [%s] "GET %s HTTP/1.1" %d %d "-" "%s"\n' % (
                r.choice(clients), time.strftime("%d/%b/%Y:%H:%M:%S +0000", stamp), p,
                r.choice((200, 200, 200, 304, 404)), r.randrange(100, 90000), r.choice(agents))
        else:
            line = ('{"ts":%.3f,"dev":"%s","lat":%.5f,"lon":%.5f,"speed":%.1f,"temp":%.2f,'
                    '"rssi":%d,"seq":%d}\n'
                    % (t, r.choice(hosts), 52.5 + r.random() / 100, 13.4 + r.random() / 100,
                       r.random() * 30, 15 + r.random() * 10, -r.randrange(40, 95), int(t * 10)))
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:nbytes]


def make_files(total, seed):
    r = random.Random(seed)
    photos, logs = [], []
    half = total // 2
    for kind, sink in (("photo", photos), ("log", logs)):
        n = 0
        while n < half:
            size = min(r.randrange(1 << 20, 6 << 20), half - n)
            sink.append(os.urandom(size) if kind == "photo" else make_log_text(size, r))
            n += size
    files = []
    for i in range(max(len(photos), len(logs))):
        files.extend(photos[i:i + 1] + logs[i:i + 1])
    return files


def run_once(files, cdc, level):
    t0 = time.perf_counter()
    for f in files:
        hashlib.sha256(f).digest()
    t_sha = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as d:
        store = ChunkStore(d, zstd_level=level)
        t0 = time.perf_counter()
        n = 0
        for f in files:
            n += len(store.ingest(c.data for c in cdc.cut_buf(f)))
        store.flush()
        t_ingest = time.perf_counter() - t0
        st = store.stats()
        store.close()
    return t_sha, t_ingest, n, st


def serial_costs(files, cdc, level):
    """Single-thread seconds of the unavoidable steps over the same data: cut, hash each chunk,
    compress each chunk. Their sum halved is what two perfectly used cores could not beat."""
    import zstandard
    t0 = time.perf_counter()
    cuts = [c.data for f in files for c in cdc.cut_buf(f)]
    t_cut = time.perf_counter() - t0
    t0 = time.perf_counter()
    for c in cuts:
        hashlib.sha256(c).digest()
    t_sha = time.perf_counter() - t0
    z = zstandard.ZstdCompressor(level=level)
    t0 = time.perf_counter()
    for c in cuts:
        z.compress(c)
    t_zstd = time.perf_counter() - t0
    return {"cut": round(t_cut, 3), "sha256_per_chunk": round(t_sha, 3), "zstd_per_chunk": round(t_zstd, 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--level", type=int, default=1, help="zstd level the store compresses with")
    a = ap.parse_args()
    files = make_files(a.mib << 20, a.seed)
    total = sum(map(len, files))
    cdc = pyfastcdc.FastCDC(8192, normalized_chunking=1)
    results = [run_once(files, cdc, a.level) for _ in range(a.runs)]
    serial = serial_costs(files, cdc, a.level)
    sha_s = statistics.median(r[0] for r in results)
    ing_s = statistics.median(r[1] for r in results)
    st = results[-1][3]
    print(json.dumps({
        "bench": "anchor_ingest",
        "bytes": total,
        "data": "50% random bytes (photo-like), 50% synthetic syslog/access-log/JSON text",
        "sha256_mb_per_s": round(total / sha_s / 1e6, 1),
        "ingest_mb_per_s": round(total / ing_s / 1e6, 1),
        "ratio": round(sha_s / ing_s, 3),
        "ratios": [round(r[0] / r[1], 3) for r in results],
        "zstd_level": a.level,
        "serial_s": serial,
        "two_core_bound_ratio": round(sha_s / (sum(serial.values()) / 2), 3),
        "chunks": results[-1][2],
        "stored_fraction": round(st["stored_bytes"] / st["raw_bytes"], 3),
        "segments": st["segments"],
        "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
