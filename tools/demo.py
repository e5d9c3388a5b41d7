#!/usr/bin/env python3
"""`make demo`: the whole story of Anchor on this machine, in about half a minute.

Everything on 127.0.0.1, started here and stopped on exit or error:

  origin   an HTTP origin (tests/support/services.Origin) that serves downloads and takes uploads
  broker   Debian's mosquitto on a free port, with a subscriber that shows what arrives
  anchor   `anchor serve --broker ...` in a temp dir
  link     tests/support/linkemu.CountingRelay between rover and anchor as a slow radio: --rate bytes/s
           each way (default 50,000) and --latency-ms one way (default 40); it counts bytes
  rover    the rover firmware under MicroPython with a 256 KB heap (tools/rover-mpy)

The story: the rover fetches a few files through the anchor, sends a photo, publishes a few
messages, gets some files of its own (a photo nobody has seen, notes, a log), and backs up
over the slow link. What passed through the anchor was captured there, so the backup moves
only the novel files. For comparison the same tree is backed up by a fresh device to an empty
anchor (a plain upload), on an unthrottled link so the demo stays short; its time on
the slow link is bytes / rate. Finally anchorctl restores the snapshot and it is compared
bit for bit with the rover's tree.

Usage: python -m tools.demo [--rate BYTES_PER_S] [--latency-ms MS] [--seed S] [--keep]
"""
import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time

from tests.support.harness import AnchorProc, anchorctl, assert_same_tree, run_rover, snapshot_of
from tests.support.linkemu import CountingRelay
from tests.support.services import Broker, Origin, Subscriber

DEVICE = "demo-rover"
PLAIN = "demo-plain"      # a fresh device with no captures: what a plain upload costs
STEP_TIMEOUT = 120        # seconds, any one rover or anchorctl run


def settle(relay, timeout=10):
    deadline = time.monotonic() + timeout
    for t in list(relay._threads):
        t.join(max(0.0, deadline - time.monotonic()))


def text(rnd, n, words=("trail", "camp", "water", "ok", "battery", "radio", "north", "ridge",
                        "meeting", "the", "and", "to", "at", "km", "fuel", "station")):
    out = []
    size = 0
    while size < n:
        s = " ".join(rnd.choice(words) for _ in range(rnd.randrange(4, 14))) + "\n"
        out.append(s)
        size += len(s)
    return "".join(out).encode()[:n]


def human(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1000.0


def backup_stats(out):
    mo = re.search(r"snapshot (\d+) committed: (\d+) entries, (\d+) bytes; .*?(\d+) chunks \((\d+) bytes\) uploaded", out)
    if not mo:
        raise RuntimeError("unexpected rover output: %s" % out)
    return dict(zip(("snapshot", "entries", "bytes", "chunks", "data_bytes"), map(int, mo.groups())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=50_000, help="link bytes/s each way (default 50000)")
    ap.add_argument("--latency-ms", type=float, default=40, help="one-way link delay (default 40)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()

    # SIGTERM and Ctrl-C still run every cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="anchor-demo-")
    rnd = random.Random(a.seed)
    say = lambda s="": print(s, flush=True)
    try:
        with contextlib.ExitStack() as stack:
            say("Anchor demo: a MicroPython rover (256 KB heap) behind a %s/s, %g ms link to an anchor;"
                % (human(a.rate), a.latency_ms))
            say("the anchor relays to a local HTTP origin and mosquitto. Everything runs on 127.0.0.1.")
            say()
            origin = Origin()
            stack.callback(origin.close)
            broker = Broker(tmp)
            stack.callback(broker.close)
            anchor = AnchorProc(os.path.join(tmp, "anchor"), "--broker", broker.url).start()
            stack.callback(anchor.stop)
            link = CountingRelay("127.0.0.1", anchor.port, rate=a.rate, latency_ms=a.latency_ms)
            stack.callback(link.close)
            sub = Subscriber(broker.port, "rover/#")
            stack.callback(sub.close)
            slow = "tcp://127.0.0.1:%d" % link.port
            root = os.path.join(tmp, "rover")
            state = os.path.join(tmp, "rover-state")

            def rover(*args, via=slow, device=DEVICE, st=state):
                return run_rover("micropython", via, device, st, *args, timeout=STEP_TIMEOUT)

            def step(what, fn):
                link.reset()
                t0 = time.monotonic()
                fn()
                dt = time.monotonic() - t0
                settle(link)
                say("  %-46s %10s on the link  %5.1f s" % (what, human(link.total), dt))

            # 1. Relayed work: downloads, a photo sent, messages published.
            say("1. The rover works through the anchor (every byte that passes is kept there):")
            downloads = [("Download/trail-map.pdf", rnd.randbytes(260_000)),
                         ("Download/stations.json", text(rnd, 90_000)),
                         ("Music/radio-news.mp3", rnd.randbytes(180_000))]
            for rel, body in downloads:
                origin.files["/files/" + os.path.basename(rel)] = body
                out = os.path.join(root, rel)
                os.makedirs(os.path.dirname(out), exist_ok=True)
                step("fetch %s" % rel, lambda: rover("fetch", origin.url("/files/" + os.path.basename(rel)),
                                                     "--out", out))
                with open(out, "rb") as f:
                    if f.read() != body:
                        raise RuntimeError("fetched %s differs from the origin's" % rel)
            photo = os.path.join(root, "DCIM", "IMG_0001.jpg")
            os.makedirs(os.path.dirname(photo))
            with open(photo, "wb") as f:
                f.write(rnd.randbytes(240_000))
            step("send DCIM/IMG_0001.jpg (HTTP PUT)",
                 lambda: rover("send", photo, "--to", origin.url("/share/IMG_0001.jpg")))
            with open(photo, "rb") as f:
                if origin.received.get("/share/IMG_0001.jpg") != f.read():
                    raise RuntimeError("the origin did not receive the photo whole")
            outbox = os.path.join(root, "Messages", "outbox")
            os.makedirs(outbox)
            for i, msg in enumerate([b'{"to":"base","text":"arrived at camp, all good"}',
                                     b'{"to":"base","text":"water 12 l, battery 81%"}',
                                     text(rnd, 6_000)]):
                path = os.path.join(outbox, "msg-%d.json" % (i + 1))
                with open(path, "wb") as f:
                    f.write(msg)
                step("publish Messages/outbox/msg-%d.json (MQTT)" % (i + 1),
                     lambda: rover("publish", "rover/messages", "--file", path))
            if not sub.wait(3, timeout=20):
                raise RuntimeError("the broker delivered %d of 3 messages" % len(sub.messages))
            say("  (the origin got the photo; a subscriber on mosquitto got %d messages)" % len(sub.messages))

            # 2. Files nobody has seen: they have to cross the link.
            novel = [("DCIM/IMG_0002.jpg", rnd.randbytes(110_000)),
                     ("Documents/notes.md", text(rnd, 14_000)),
                     ("logger/temps.csv", b"".join(b"%d,%.2f\n" % (1764000000 + 60 * i, rnd.uniform(-5, 30))
                                                   for i in range(1500)))]
            for rel, body in novel:
                full = os.path.join(root, rel)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(body)
            novel_bytes = sum(len(b) for _, b in novel)
            say()
            say("2. New files of its own: %s" % ", ".join("%s (%s)" % (r, human(len(b))) for r, b in novel))

            # 3. The backup over the slow link.
            say()
            say("3. Backup over the slow link ...")
            link.reset()
            t0 = time.monotonic()
            p = rover("backup", root)
            backup_s = time.monotonic() - t0
            settle(link)
            radio = link.total
            s = backup_stats(p.stdout)

            # 4. The same tree as a plain upload: a fresh device to an empty anchor of its own
            #    (on the same anchor it would be answered by proofs of possession instead).
            blank = AnchorProc(os.path.join(tmp, "anchor-plain")).start()
            stack.callback(blank.stop)
            fast = CountingRelay("127.0.0.1", blank.port)
            stack.callback(fast.close)
            run_rover("micropython", "tcp://127.0.0.1:%d" % fast.port, PLAIN, os.path.join(tmp, "plain-state"),
                      "backup", root, timeout=STEP_TIMEOUT)
            settle(fast)
            plain = fast.total

            # 5. Restore and compare.
            restored = os.path.join(tmp, "restored")
            anchorctl(anchor.address, "restore", DEVICE, str(s["snapshot"]), "--to", restored,
                      timeout=STEP_TIMEOUT)
            try:
                # the MicroPython rover keeps whole-second mtimes
                assert_same_tree(snapshot_of(root), restored, 10 ** 9)
                same = True
            except AssertionError as e:
                print("demo: %s" % e, file=sys.stderr)
                same = False

            say()
            rows = [
                ("data protected (bytes in the snapshot)", "%s in %d files" % (
                    human(s["bytes"]), sum(len(fs) for _, _, fs in os.walk(root)))),
                ("  of which new to the anchor", human(novel_bytes)),
                ("radio bytes used by the backup", "%s (%s of chunk data, %d chunks)" % (
                    human(radio), human(s["data_bytes"]), s["chunks"])),
                ("radio bytes of a plain upload", "%s (same tree, fresh device; measured)" % human(plain)),
                ("backup time on the %s/s link" % human(a.rate), "%.1f s" % backup_s),
                ("plain upload time on the same link", "~%.1f s (bytes / rate)" % (plain / a.rate)),
                ("radio bytes saved", "%.0f%%" % (100.0 * (1 - radio / plain)) if plain else "-"),
                ("restored snapshot %d matches the rover" % s["snapshot"], "yes, bit for bit" if same else "NO"),
            ]
            w = max(len(k) for k, _ in rows)
            say("+-" + "-" * w + "-+-" + "-" * 44 + "-+")
            for k, v in rows:
                say("| %-*s | %-44s |" % (w, k, v))
            say("+-" + "-" * w + "-+-" + "-" * 44 + "-+")
            if not same:
                raise SystemExit("demo: the restored tree differs from the rover's")
    finally:
        if a.keep:
            print("kept %s" % tmp, flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
