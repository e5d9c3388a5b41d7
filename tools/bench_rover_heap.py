"""The smallest heap a paired MicroPython rover backs up in, on a serial and an MQTT link.

The rover's 256 KB heap is its hardest limit, and a restructuring or a new field must not eat
into the margin. For each link this bisects the smallest `-X heapsize` at which a paired rover
(secure channel, channel, compressor, and for MQTT the umqtt client) backs up a tree that
fills whole batches (12 x 100 kB random files and 20 text notes: 33 entries, ~150 chunks),
to 1 KiB. Prints one JSON line per link: {"bench": "rover_heap", "link", "min_heap_bytes",
"margin_bytes" (256 KiB minus that), "trials"}.

usage: python -m tools.bench_rover_heap [--links serial,mqtt] [--rover-mpy PATH] [--json]
  --rover-mpy: another checkout's tools/rover-mpy (its own precompiled firmware), to compare
  a commit against this one; the anchor is always this checkout's.
  --json: the rover runs `backup --json`, so its progress code is loaded and its heartbeat
  runs (docs/output.md); the line then has "mode": "json".
"""
import argparse
import json
import os
import subprocess
import tempfile

from tests.support.harness import AnchorProc, anchorctl, make_src
from tests.support.linkemu import PtyLink

HERE = os.path.dirname(os.path.abspath(__file__))

LIMIT = 256 * 1024


def rover(mpy, heap, link, state, *args):
    cmd = [mpy, "--heap", str(heap), "--link", link, "--device", "rover-h", "--state", state] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def trial(mpy, kind, heap, args=()):
    """True if the paired rover completes a first backup with `heap` bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        make_src(src, 12, 100_000, 5)
        emu = broker = None
        if kind == "serial":
            emu = PtyLink(rate=2_000_000, seed=5)
            extra = ["--serial", emu.anchor_link + ":115200"]
            link = "serial:%s:115200" % emu.rover_link
        else:
            from tests.support.services import Broker
            broker = Broker(tmp)
            extra = ["--broker", broker.url]
            link = "mqtt://127.0.0.1:%d" % broker.port
        anchor = AnchorProc(os.path.join(tmp, "anchor"), *extra, secure=True).start()
        try:
            state = os.path.join(tmp, "state")
            code = json.loads(anchorctl(anchor.address, "pair", "rover-h", "--json").stdout)["code"]
            p = rover(mpy, LIMIT * 2, "tcp://unused:1", state, "pair", code)
            if p.returncode != 0:
                raise SystemExit("pairing failed: " + p.stdout + p.stderr)
            p = rover(mpy, heap, link, state, "backup", src, "--retries", "0", *args)
            return p.returncode == 0 and ('"type": "summary"' in p.stdout if args else "snapshot 1 committed" in p.stdout)
        finally:
            anchor.stop()
            if emu:
                emu.close()
            if broker:
                broker.close()


def smallest(mpy, kind, lo=128 * 1024, hi=LIMIT + 64 * 1024, args=()):
    trials = 0
    if not trial(mpy, kind, hi, args):
        raise SystemExit("%s: the rover does not complete even with %d bytes" % (kind, hi))
    while hi - lo > 1024:          # lo fails (or is the floor), hi passes
        mid = (lo + hi) // 2 // 256 * 256
        trials += 1
        if trial(mpy, kind, mid, args):
            hi = mid
        else:
            lo = mid
    return hi, trials + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--links", default="serial,mqtt")
    ap.add_argument("--rover-mpy", default=os.path.join(HERE, "rover-mpy"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    for kind in a.links.split(","):
        heap, n = smallest(a.rover_mpy, kind, args=("--json",) if a.json else ())
        row = {"bench": "rover_heap", "link": kind, "rover": a.rover_mpy,
               "min_heap_bytes": heap, "margin_bytes": LIMIT - heap, "trials": n}
        if a.json:
            row["mode"] = "json"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
