"""The smallest heap a paired MicroPython rover backs up in, on a serial, an MQTT and an MQTT over
TLS link.

The rover's 256 KB heap is its hardest limit, and a restructuring or a new field must not eat
into the margin. For each link and tree this bisects the smallest `-X heapsize` at which a
paired rover (secure channel, channel, compressor, and for MQTT the rover's MQTT client, for
mqtts mbedtls too) completes a first backup, to 1 KiB. Two trees: "batches" fills whole
batches (12 x 100 kB random files and 20 text notes: 33 entries, ~150 chunks); "phone" is the
phone-like tree of tests/e2e/test_rover_restore.py (seed 4: photos, a SQLite-like file,
notes in folders), which needs ~1.5 KB more and is what a test ran out of; "edited" is the
phone tree backed up once with room to spare, then edited in place (bytes overwritten in the
database file and two notes), and the heap bisected for the second backup, which must send
sub-chunk deltas (the anchor counts them; a rover that fell back to whole chunks fails);
"second" is the same second backup, which may send whole chunks. Prints one JSON
line per link and tree: {"bench": "rover_heap", "link", "tree", "min_heap_bytes",
"margin_bytes" (256 KiB minus that), "trials"}.

usage: python -m tools.bench_rover_heap [--links serial,mqtt,mqtts] [--trees batches,phone]
                                        [--rover-mpy PATH] [--json]
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


def trial(mpy, kind, heap, args=(), tree="batches"):
    """True if the paired rover completes a first backup with `heap` bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        if tree in ("phone", "edited", "second"):
            from tests.e2e.test_rover_restore import make_phone
            make_phone(src, seed=4)
        else:
            make_src(src, 12, 100_000, 5)
        emu = broker = None
        login = []
        if kind == "serial":
            emu = PtyLink(rate=2_000_000, seed=5)
            extra = ["--serial", emu.anchor_link + ":115200"]
            link = "serial:%s:115200" % emu.rover_link
        elif kind == "mqtts":
            from tests.support.services import tls_broker
            t = tls_broker(tmp)
            broker = t["broker"]
            extra = ["--broker", "mqtts://localhost:%d" % t["port"], "--broker-ca", t["ca"],
                     "--broker-user", "anchor", "--broker-password-file", t["pw"]]
            link = "mqtts://localhost:%d" % t["port"]
            login = ["--mqtt-user", "rover", "--mqtt-password-file", t["rover_pw"], "--mqtt-ca", t["ca"]]
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
            snap = 1
            if tree in ("edited", "second"):
                p = rover(mpy, LIMIT * 2, link, state, *login, "backup", src, "--retries", "0")
                if "snapshot 1 committed" not in p.stdout:
                    raise SystemExit("first backup failed: " + p.stdout + p.stderr)
                edit(src)
                snap = 2
            p = rover(mpy, heap, link, state, *login, "backup", src, "--retries", "0", *args)
            done = p.returncode == 0 and ('"type": "summary"' in p.stdout if args
                                          else "snapshot %d committed" % snap in p.stdout)
            if done and tree == "edited":
                stats = json.loads(anchorctl(anchor.address, "stats", "--json").stdout)
                done = stats["devices"]["rover-h"].get("chunks_delta", 0) > 0
            return done
        finally:
            anchor.stop()
            if emu:
                emu.close()
            if broker:
                broker.close()


def edit(src):
    """Bytes overwritten in place: three places in the database file, a word in two notes."""
    for rel, spots in (("app/db/store.db", (1000, 90000, 150000)), ("notes/n01.txt", (300,)),
                       ("notes/n05.txt", (700,))):
        with open(os.path.join(src, rel), "r+b") as f:
            for at in spots:
                f.seek(at)
                f.write(b"EDITED")


def smallest(mpy, kind, lo=128 * 1024, hi=LIMIT + 64 * 1024, args=(), tree="batches"):
    trials = 0
    if not trial(mpy, kind, hi, args, tree):
        raise SystemExit("%s: the rover does not complete even with %d bytes" % (kind, hi))
    while hi - lo > 1024:          # lo fails (or is the floor), hi passes
        mid = (lo + hi) // 2 // 256 * 256
        trials += 1
        if trial(mpy, kind, mid, args, tree):
            hi = mid
        else:
            lo = mid
    return hi, trials + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--links", default="serial,mqtt,mqtts")
    ap.add_argument("--trees", default="batches,phone")
    ap.add_argument("--rover-mpy", default=os.path.join(HERE, "rover-mpy"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    for tree in a.trees.split(","):
        for kind in a.links.split(","):
            heap, n = smallest(a.rover_mpy, kind, args=("--json",) if a.json else (), tree=tree)
            row = {"bench": "rover_heap", "link": kind, "tree": tree, "rover": a.rover_mpy,
                   "min_heap_bytes": heap, "margin_bytes": LIMIT - heap, "trials": n}
            if a.json:
                row["mode"] = "json"
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
