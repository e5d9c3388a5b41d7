#!/usr/bin/env python3
"""What the secure channel costs (docs/security.md): speed on the MicroPython rover and bytes
on the link.

- speed: the rover's sealer and opener (anchor_core/secure.py) under MicroPython with a 256 KB heap,
  over 1 MiB in records of the sizes the rover uses (2 KiB out, 1 KiB in);
- link bytes: the same MicroPython rover backs up the same tree (2,000 files, ~8 MB) to an
  anchor as shipped (paired) and to an `--open` one, counted at a loopback relay; then a
  backup after one small file changed.

Prints one JSON line. Usage: python -m tools.bench_secure [--files N]
"""
import argparse
import json
import os
import shutil
import subprocess
import tempfile

from tests.support.harness import AnchorProc, anchorctl, make_tree, run_rover
from tests.support.linkemu import CountingRelay

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MPY_SPEED = r'''
import time
from anchor_core import secure
k = secure.session_keys(b"k" * 32, b"n" * 16, b"m" * 16)
for size, label in ((2048, "seal"), (1024, "open")):
    s = secure.Sealer(k[0], k[1], size)
    o = secure.Opener(k[0], k[1], size)
    data = bytearray(size)
    n = (1 << 20) // size
    t = time.ticks_us()
    sealed = 0
    opened = 0
    for i in range(n):
        w = s.seal(data)
        sealed += len(w)
        if label == "open":
            mv = memoryview(w)
            while len(mv):
                room = o.room()
                c = min(len(room), len(mv))
                room[:c] = mv[:c]
                mv = mv[c:]
                p = o.filled(c)
                if p is not None:
                    opened += len(p)
    dt = time.ticks_diff(time.ticks_us(), t) / 1e6
    print(label, size, n * size / 1e6 / dt)
'''


def mpy_speed():
    env = dict(os.environ, MICROPYPATH=os.path.join(ROOT, "build", "mpy") + ":" + os.path.join(ROOT, "firmware"))
    p = subprocess.run([os.path.join(ROOT, ".venv", "bin", "micropython"), "-X", "heapsize=256K", "-c", MPY_SPEED],
                       capture_output=True, text=True, env=env, timeout=300)
    if p.returncode:
        raise SystemExit(p.stdout + p.stderr)
    out = {}
    for line in p.stdout.split("\n"):
        if line.strip():
            label, size, mbs = line.split()
            out[label] = round(float(mbs), 1)
    return {"seal_mb_per_s": out["seal"], "seal_and_open_mb_per_s": out["open"]}


def link_bytes(work, files):
    src = make_tree(os.path.join(work, "src"), files, files * 4000, seed=9)
    out = {}
    for mode in ("open", "paired"):
        anchor = AnchorProc(os.path.join(work, "anchor-" + mode), secure=(mode == "paired")).start()
        try:
            state = os.path.join(work, "state-" + mode)
            if mode == "paired":
                code = json.loads(anchorctl(anchor.address, "pair", "bench", "--json").stdout)["code"]
                run_rover("micropython", "tcp://unused:1", "bench", state, "pair", code)
            counts = []
            for step in ("first", "small_change"):
                if step == "small_change":
                    with open(os.path.join(src, "bench-extra.txt"), "w") as f:
                        f.write("x" * 1000)
                relay = CountingRelay("127.0.0.1", anchor.port)
                try:
                    run_rover("micropython", "tcp://127.0.0.1:%d" % relay.port, "bench", state, "backup", src)
                finally:
                    relay.close()
                counts.append(relay.total)
            os.unlink(os.path.join(src, "bench-extra.txt"))
            out[mode] = counts
        finally:
            anchor.stop()
    return {
        "first_backup_bytes": {"open": out["open"][0], "paired": out["paired"][0]},
        "small_change_bytes": {"open": out["open"][1], "paired": out["paired"][1]},
        "first_backup_overhead": round(out["paired"][0] / out["open"][0] - 1, 4),
        "small_change_extra_bytes": out["paired"][1] - out["open"][1],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-secure-")
    try:
        line = {"bench": "secure", "rover": "micropython-256K"}
        line.update(mpy_speed())
        line.update(link_bytes(work, a.files))
        line["files"] = a.files
        print(json.dumps(line), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
