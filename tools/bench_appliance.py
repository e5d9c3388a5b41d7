#!/usr/bin/env python3
"""The anchor as an appliance: how fast it comes up and how much memory it keeps (CPython only).

One JSON line:
  start_s         median seconds from starting `anchor serve` to READY=1 on its NOTIFY_SOCKET
                  (an empty data directory), over --starts runs
  rss_idle_mib    resident memory of that idle daemon
  fill_s          seconds to put --chunks chunks into a store (ChunkStore.put, small chunks:
                  the index, not the segments, is what is measured)
  start_1m_s      seconds to start on that store (recovery checks, index opened)
  rss_1m_idle_mib resident memory idle on that store
  rss_1m_mib      resident memory after a rover backed up a 2,000-file tree to it (every
                  chunk of it looked up in the big index), and the peak (VmHWM) of the run
  page_ms         median time to GET the status page (`--http`) over loopback, with --devices
                  devices and a year of daily counters each (and a snapshot a day), and its size
  metrics_ms      the same for /metrics
Target (issue 13): <= 80 MB RSS with 1M chunks indexed.

Usage: tools/bench-appliance [--chunks N] [--starts N] [--devices N]
"""
import argparse
import hashlib
import json
import os
import select
import shutil
import socket
import statistics
import subprocess
import urllib.request
import sys
import tempfile
import time

from tests.support.harness import BIN, AnchorProc, make_tree, run_rover
from tests.support.services import free_port

DAY = 86400


def status_kib(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def mib(kib):
    return round(kib / 1024.0, 1)


def timed_start(data):
    a = AnchorProc(data)
    t0 = time.monotonic()
    a.start(timeout=600)
    return a, time.monotonic() - t0


def notify_start(tmp, data):
    """Seconds from exec to READY=1, as systemd sees it; the process, stopped after."""
    path = os.path.join(tmp, "notify-%d" % time.monotonic_ns())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    t0 = time.monotonic()
    proc = subprocess.Popen([os.path.join(BIN, "anchor"), "serve", "--data", data, "--listen", "tcp://127.0.0.1:0",
                             "--open"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = None
    try:
        while time.monotonic() - t0 < 120:
            if select.select([sock], [], [], 120)[0] and b"READY=1" in sock.recv(4096):
                took = time.monotonic() - t0
                break
        rss = status_kib(proc.pid)["VmRSS"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        sock.close()
    return took, rss


def fill_catalog(data, devices, days=365):
    """devices with a year of daily counters and a snapshot a day each, as a year of use
    would leave them (the snapshots' trees are not there: the page does not read them)."""
    from anchor.app import App
    app = App(data)
    try:
        cat = app.catalog
        now = time.time()
        for d in range(devices):
            dev = cat.device_id("rover-%02d" % d)
            cat.db.execute("BEGIN")
            for i in range(days):
                when = now - (days - i) * DAY
                cat.count(dev, when=when, backups=1, link_control=120, link_backup=20000 + 37 * i,
                          link_relay=50000, supplied_uploaded=15000, supplied_backups=900000,
                          supplied_passthrough=200000)
                cat.db.execute("INSERT INTO snapshots (device_id, seq, parent, created, root, entries, bytes) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (dev, i + 1, i or None, when, os.urandom(32), 1000, 50 << 20))
            cat.db.execute("COMMIT")
    finally:
        app.close()


def timed_get(url, n=5):
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        with urllib.request.urlopen(url, timeout=60) as r:
            body = r.read()
        times.append(time.monotonic() - t0)
    return round(1000 * statistics.median(times), 1), len(body)


def fill(data, n):
    """n chunks of 64 bytes through the store the daemon uses, then closed cleanly."""
    from anchor.app import App
    app = App(data)
    try:
        put = app.store.put
        for i in range(n):
            raw = i.to_bytes(8, "little") * 8
            put(hashlib.sha256(raw).digest(), raw)
        app.store.flush()
    finally:
        app.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=1000000)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--devices", type=int, default=50)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-appliance-")
    out = {"bench": "appliance", "chunks": args.chunks}
    try:
        times = []
        for i in range(args.starts):
            t, rss = notify_start(tmp, os.path.join(tmp, "empty%d" % i))
            times.append(t)
            if i == 0:
                out["rss_idle_mib"] = mib(rss)
        out["start_s"] = round(statistics.median(times), 3)

        year = os.path.join(tmp, "year")
        fill_catalog(year, args.devices)
        port = free_port()
        a = AnchorProc(year, "--http", "tcp://127.0.0.1:%d" % port).start()
        try:
            out["devices"] = args.devices
            out["page_ms"], out["page_bytes"] = timed_get("http://127.0.0.1:%d/" % port)
            out["metrics_ms"], out["metrics_bytes"] = timed_get("http://127.0.0.1:%d/metrics" % port)
        finally:
            a.stop()

        big = os.path.join(tmp, "big")
        t0 = time.monotonic()
        fill(big, args.chunks)
        out["fill_s"] = round(time.monotonic() - t0, 1)
        out["index_mib"] = mib(os.path.getsize(os.path.join(big, "chunks", "index.sqlite")) / 1024.0)
        a, t = timed_start(big)
        try:
            out["start_1m_s"] = round(t, 3)
            out["rss_1m_idle_mib"] = mib(status_kib(a.proc.pid)["VmRSS"])
            tree = os.path.join(tmp, "tree")
            make_tree(tree, 2000, 40 << 20, seed=7)
            run_rover("cpython", a.link, "bench-rover", os.path.join(tmp, "state"), "backup", tree,
                      timeout=600)
            st = status_kib(a.proc.pid)
            out["rss_1m_mib"] = mib(st["VmRSS"])
            out["rss_1m_peak_mib"] = mib(st["VmHWM"])
        finally:
            a.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
