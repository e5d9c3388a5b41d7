#!/usr/bin/env python3
"""The anchor as an appliance: how fast it comes up and how much memory it keeps (CPython only).

One JSON line:
  start_s         median seconds from starting `anchor serve` to the daemon listening (an
                  empty data directory), over --starts runs
  rss_idle_mib    resident memory of that idle daemon
  fill_s          seconds to put --chunks chunks into a store (ChunkStore.put, small chunks:
                  the index, not the segments, is what is measured)
  start_1m_s      seconds to start on that store (recovery checks, index opened)
  rss_1m_idle_mib resident memory idle on that store
  rss_1m_mib      resident memory after a rover backed up a 2,000-file tree to it (every
                  chunk of it looked up in the big index), and the peak (VmHWM) of the run
Target (issue 13): <= 80 MB RSS with 1M chunks indexed.

Usage: tools/bench-appliance [--chunks N] [--starts N]
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from tests.support.harness import AnchorProc, make_tree, run_rover


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
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-appliance-")
    out = {"bench": "appliance", "chunks": args.chunks}
    try:
        times = []
        for i in range(args.starts):
            a, t = timed_start(os.path.join(tmp, "empty%d" % i))
            times.append(t)
            if i == 0:
                out["rss_idle_mib"] = mib(status_kib(a.proc.pid)["VmRSS"])
            a.stop()
        out["start_s"] = round(statistics.median(times), 3)

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
