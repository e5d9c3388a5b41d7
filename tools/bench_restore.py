"""Restore over the rover's own link, measured (issue 12, docs/protocol.md §9).

A phone-like tree (photos, notes, a database-like file; ~2.8 MB) is backed up over loopback
TCP, then damaged the way a handheld loses data: files deleted, a few pages of the database and
some notes changed, a folder renamed, a stray file added. A fresh copy of that damaged tree is
then restored with `restore --delete` by each rover over each emulated link
(tests/support/linkemu.py PtyLink, as tools/bench_goodput.py emulates them):

  serial   115200 baud 8N1: 11,520 bytes/s each way, no latency, 512-byte packets
  ble      BLE-like: 20,000 bytes/s each way, 30 ms one way, 244-byte packets (ATT MTU 247);
           the rover's receive window is the channel's default, 4 packets
  ble10    the same with a 10-packet window (aioble's capture queue, rover/ble_port.py)

Per (runtime, link) one JSON line {"bench": "restore", ...}:
  goodput        chunk payload bytes the link carried down (compressed, as sent) / (wall time of
                 the rover's whole run x link rate); the run includes start-up, the walk, the
                 seed lists going up, the copies from local files and the final checks.
  down_utilisation  all bytes down / (wall time x rate); streaming_down_utilisation the same
                 between 5% and 95% of the bytes down (while the plan streams).
  link_bytes     bytes counted at the pty pump, both ways; floor_bytes: the compressed size of
                 the chunks the damaged tree really lacks (as tests/e2e/test_rover_restore.py
                 computes it, with the runtime's zlib window); link_over_floor their ratio.
Then one line {"bench": "restore_heap"}: the MicroPython rover restoring the same damaged tree
over serial under a heap probe (see PROBE), and the smallest heap it completes in (bisected);
and one line {"bench": "restore_rsync"}: `rsync -az --delete` pulling the tree into another copy
of the damaged folder over a local pipe "shell", bytes from its --stats.

Every restored tree is compared with the original, file by file. Progress goes to stderr.
Usage: python -m tools.bench_restore [--links serial,ble,ble10] [--runtimes cpython,micropython]
       [--scale N] [--no-heap] [--no-rsync]
"""
import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

from anchor_core import chunker
from tests.support.harness import AnchorProc, ROOT, rover_cmd, run_rover, snapshot_of
from tests.support.linkemu import PtyLink

LINKS = {
    "serial": {"rate": 11520, "latency_ms": 0, "mtu": 512, "what": "115200 baud 8N1"},
    "ble": {"rate": 20000, "latency_ms": 30, "mtu": 244, "what": "BLE-like: 20 kB/s, 30 ms, ATT MTU 247"},
    # The same with the rover's receive window at 10 packets, aioble's capture queue (rover/ble_port.py
    # RX_WINDOW) rather than the channel's default of 4: on a tty, ?rxbuf=N sets only that window.
    "ble10": {"rate": 20000, "latency_ms": 30, "mtu": 244, "rxbuf": 10 * (244 + 10),
              "what": "BLE-like, rover window 10 packets"},
}
WBITS = {"cpython": 15, "micropython": 13}     # rover/restore.py WBITS on each runtime
PROBE_HEAP = "2M"      # the probe's heap: room for its bookkeeping, not the measure

# The heap probe: the rover's main.py, with Conversation.send and .recv (and the inflate of a
# compressed chunk) wrapped: after each it collects and reads gc.mem_alloc(), the live heap at
# that point. The largest is the restore's working set between messages; what one message
# allocates and drops again (a piece of a chunk, the inflater's window) comes on top, and so
# does fragmentation: the smallest heap the restore completes in (bisected below) is the
# binding number. "idle" is the live heap once the firmware is loaded (the buffers allocated
# as main.py does, rover.cli imported), before the restore's own modules load; "connected"
# after the anchor's WELCOME: the link, the session and the restore's code loaded, nothing
# moving yet.
PROBE = r"""
import sys
import gc
from rover import buffers
buffers.allocate(True)
from rover.cli import main
gc.collect()
idle = gc.mem_alloc()
from rover import conversation
from rover import restore
st = [idle, 0, 0]
def _wrap(cls, name):
    f = getattr(cls, name)
    def w(*a):
        r = f(*a)
        gc.collect()
        u = gc.mem_alloc()
        if u > st[0]:
            st[0] = u
        st[1] += 1
        if not st[2] and name == "recv":
            st[2] = u          # WELCOME: connected, the restore not begun
        return r
    setattr(cls, name, w)
_wrap(conversation.Conversation, "send")
_wrap(conversation.Conversation, "recv")
if hasattr(restore.Restore, "_inflate"):
    _wrap(restore.Restore, "_inflate")
rc = main(sys.argv[1:])
print("HEAP-PROBE idle=%d connected=%d peak=%d samples=%d" % (idle, st[2], st[0], st[1]))
sys.exit(rc)
"""


def say(*a):
    print("bench-restore:", *a, file=sys.stderr, flush=True)


def make_phone(root, scale, seed=11):
    """Photos (incompressible), text notes, a database-like file of 4 KiB pages, one empty file;
    mtimes spread out as a device's would be."""
    rnd = random.Random(seed)
    words = [b"anchor", b"rover", b"radio", b"flash", b"note", b"\n", b"the", b"a", b"meeting", b"2026"]
    for d in ("DCIM/2026-10", "DCIM/2026-11", "notes", "app/db"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    for month in ("2026-10", "2026-11"):
        for i in range(8 * scale):
            with open(os.path.join(root, "DCIM", month, "IMG_%04d.jpg" % i), "wb") as f:
                f.write(rnd.randbytes(rnd.randrange(60_000, 160_000)))
    for i in range(30 * scale):
        with open(os.path.join(root, "notes/n%03d.txt" % i), "wb") as f:
            f.write(b" ".join(rnd.choice(words) for _ in range(rnd.randrange(300, 6000))))
    with open(os.path.join(root, "app/db/store.db"), "wb") as f:
        for p in range(128 * scale):      # pages: a header, some rows, zero fill (compressible)
            rows = rnd.randbytes(rnd.randrange(200, 3000))
            f.write((b"PAGE%06d" % p + rows).ljust(4096, b"\0"))
    open(os.path.join(root, "app/empty"), "wb").close()
    t = 1_780_000_000
    for dirpath, dirs, names in sorted(os.walk(root)):
        dirs.sort()
        for n in sorted(names):
            t += 37
            os.utime(os.path.join(dirpath, n), (t, t))


def damage(root, scale, rnd):
    """What a handheld loses: deletions, changed pages and notes, a renamed folder, a stray."""
    for i in range(0, 8 * scale, 3):
        os.remove(os.path.join(root, "DCIM/2026-11/IMG_%04d.jpg" % i))
    for i in range(0, 30 * scale, 7):
        os.remove(os.path.join(root, "notes/n%03d.txt" % i))
    for i in range(1, 30 * scale, 9):
        with open(os.path.join(root, "notes/n%03d.txt" % i), "ab") as f:
            f.write(b" an edit the snapshot does not have")
    db = os.path.join(root, "app/db/store.db")
    with open(db, "r+b") as f:
        for p in range(3, 128 * scale, 23):
            f.seek(p * 4096 + 10)
            f.write(rnd.randbytes(500))
    os.rename(os.path.join(root, "DCIM/2026-10"), os.path.join(root, "DCIM/old"))
    with open(os.path.join(root, "stray.bin"), "wb") as f:
        f.write(rnd.randbytes(30_000))


def chunks_of_tree(root):
    out = {}
    buf = bytearray(65536)
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            data = open(p, "rb").read()
            with open(p, "rb") as f:
                for off, ln, cid in chunker.chunks_of(f, buf):
                    out[cid] = data[off:off + ln]
    return out


def floor_bytes(want, have, wbits):
    """The chunks the damaged tree lacks, compressed as the anchor sends them (raw if smaller)."""
    total = raw = n = 0
    for cid, data in want.items():
        if cid in have:
            continue
        z = zlib.compressobj(6, zlib.DEFLATED, wbits)
        total += min(len(data), len(z.compress(data) + z.flush()))
        raw += len(data)
        n += 1
    return total, raw, n


def same_content(want, root, mtimes):
    got = snapshot_of(root)
    if sorted(got) != sorted(want):
        return "entries differ: missing %s, extra %s" % (sorted(set(want) - set(got))[:5],
                                                          sorted(set(got) - set(want))[:5])
    for p, w in want.items():
        if got[p][0] != w[0]:
            return "%s: type differs" % p
        if w[0] == "f" and got[p][3] != w[3]:
            return "%s: content differs" % p
        if mtimes and w[0] == "f" and got[p][1:3] != w[1:3]:
            return "%s: mode or mtime differs" % p
    return None


def parse_summary(out):
    mo = re.search(r"snapshot (\d+) restored: (\d+) files \((\d+) bytes\) written, (\d+) bytes copied from local "
                   r"files, (\d+) chunks \((\d+) bytes\) over the link; (\d+) deleted; link (\d+) bytes out, "
                   r"(\d+) in; ([\d.]+) s", out)
    if not mo:
        raise SystemExit("no summary in the rover's output:\n" + out)
    keys = ("snapshot", "files", "written", "copied", "chunks", "data_bytes", "deleted", "rover_tx", "rover_rx")
    r = dict(zip(keys, (int(x) for x in mo.groups()[:-1])))
    r["rover_seconds"] = float(mo.group(10))
    return r


def restore_over(runtime, name, anchor_dir, damaged, work, want, floor):
    cfg = LINKS[name]
    to = os.path.join(work, "%s-%s" % (runtime, name))
    shutil.copytree(damaged, to, symlinks=True)
    emu = PtyLink(rate=cfg["rate"], latency_ms=cfg["latency_ms"], seed=3)
    anchor = AnchorProc(anchor_dir, "--serial", emu.anchor_link + ":115200").start()
    try:
        url = "serial:%s:115200?mtu=%d" % (emu.rover_link, cfg["mtu"])
        if "rxbuf" in cfg:
            url += "&rxbuf=%d" % cfg["rxbuf"]
        say("%s rover, %s link (%s): restoring" % (runtime, name, cfg["what"]))
        t0 = time.monotonic()
        proc = subprocess.Popen(rover_cmd(runtime, url, "phone", os.path.join(work, "state-" + runtime), "restore",
                                          "--to", to, "--delete"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        # (seconds, bytes down) every 50 ms while the rover runs: when the plan streams
        samples = []
        deadline = t0 + 1800
        while proc.poll() is None and time.monotonic() < deadline:
            samples.append((time.monotonic() - t0, emu.down))
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=60)
        p = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        dt = time.monotonic() - t0
        up, down = emu.up, emu.down
    finally:
        anchor.stop()
        emu.close()
    if p.returncode != 0:
        raise SystemExit("%s rover failed (%d):\n%s\n%s" % (runtime, p.returncode, p.stdout, p.stderr))
    s = parse_summary(p.stdout)
    bad = same_content(want, to, runtime == "cpython")
    if bad:
        raise SystemExit("%s over %s: restored tree differs: %s" % (runtime, name, bad))
    shutil.rmtree(to)
    rate = cfg["rate"]
    # The streaming phase: from the first time 5% of the bytes down have passed to the last
    # sample before 95% (the seeds' round trips before it, the deletions and folder times after).
    a = next((t, d) for t, d in samples if d >= down * 0.05)
    b = [(t, d) for t, d in samples if d <= down * 0.95][-1]
    stream_util = (b[1] - a[1]) / ((b[0] - a[0]) * rate) if b[0] > a[0] else None
    return {
        "bench": "restore", "runtime": runtime, "link": name, "what": cfg["what"], "rate_bytes_per_s": rate,
        "latency_ms": cfg["latency_ms"], "packet_bytes": cfg["mtu"],
        "rover_window_bytes": cfg.get("rxbuf", 4 * (cfg["mtu"] + 10)), "seconds": round(dt, 2),
        "rover_seconds": s["rover_seconds"], "files_written": s["files"], "bytes_written": s["written"],
        "bytes_copied_locally": s["copied"], "chunks": s["chunks"], "chunk_payload_bytes": s["data_bytes"],
        "deleted": s["deleted"],
        "goodput": round(s["data_bytes"] / (dt * rate), 3),
        "down_utilisation": round(down / (dt * rate), 3),
        "streaming_down_utilisation": round(stream_util, 3) if stream_util else None,
        "seconds_to_first_5pct_down": round(a[0], 2),
        "link_up_bytes": up, "link_down_bytes": down, "link_bytes": up + down,
        "floor_bytes": floor, "link_over_floor": round((up + down) / floor, 3),
        "tree_ok": True,
    }


def _mpy_env():
    mpy = os.path.join(ROOT, "build", "mpy")
    if not os.path.exists(os.path.join(mpy, ".stamp")):
        raise SystemExit("build/mpy is missing: run make setup")
    return dict(os.environ, MICROPYPATH="%s:%s" % (mpy, os.path.join(ROOT, "build", "mpy-lib")))


def heap_probe(anchor_dir, damaged, work, want):
    """The MicroPython rover over a serial link at pty speed (the channel's code and buffers
    count; loopback TCP needs ~25 KB less): the probe's live peak, then the smallest heap a
    restore of the same damaged tree completes in, to 1 KiB."""
    probe = os.path.join(work, "probe.py")
    with open(probe, "w") as f:
        f.write(PROBE)
    env = _mpy_env()
    emu = PtyLink(rate=None, seed=4)
    anchor = AnchorProc(anchor_dir, "--serial", emu.anchor_link + ":115200").start()
    url = "serial:%s:115200?mtu=%d" % (emu.rover_link, LINKS["serial"]["mtu"])
    trials = []

    def restore(heap, probed, n=[0]):
        n[0] += 1
        to = os.path.join(work, "heap%d" % n[0])
        shutil.copytree(damaged, to, symlinks=True)
        if probed:
            cmd = [os.path.join(ROOT, ".venv", "bin", "micropython"), "-X", "heapsize=" + heap, probe]
        else:
            cmd = [os.path.join(ROOT, "tools", "rover-mpy"), "--heap", heap]
        cmd += ["--link", url, "--device", "phone", "--state", os.path.join(work, "state-heap"), "restore", "--to",
                to, "--delete", "--retries", "0"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        ok = p.returncode == 0 and same_content(want, to, False) is None
        shutil.rmtree(to)
        if not probed:
            trials.append((heap, ok))
            say("  heap %s: %s" % (heap, "restored" if ok else "failed: " + (p.stdout + p.stderr).strip()
                                   .splitlines()[-1][:120]))
        return ok, p

    try:
        say("micropython rover under the heap probe (serial link at pty speed)")
        ok, p = restore(PROBE_HEAP, True)
        mo = re.search(r"HEAP-PROBE idle=(\d+) connected=(\d+) peak=(\d+) samples=(\d+)", p.stdout)
        if not ok or not mo:
            raise SystemExit("heap probe failed (%d):\n%s\n%s" % (p.returncode, p.stdout, p.stderr))
        idle, connected, peak = int(mo.group(1)), int(mo.group(2)), int(mo.group(3))
        say("smallest heap the restore completes in (bisection)")
        lo, hi = 128 * 1024, 512 * 1024          # lo fails (or is the floor), hi passes
        if not restore("%d" % hi, False)[0]:
            raise SystemExit("the MicroPython rover does not restore even with %d bytes of heap" % hi)
        while hi - lo > 1024:
            mid = (lo + hi) // 2 // 256 * 256
            if restore("%d" % mid, False)[0]:
                hi = mid
            else:
                lo = mid
        at256 = restore("256K", False)[0]
    finally:
        anchor.stop()
        emu.close()
    return {"bench": "restore_heap", "runtime": "micropython", "link": "serial (pty speed)",
            "idle_heap_bytes": idle, "peak_live_heap_bytes": peak, "peak_over_idle_bytes": peak - idle,
            "min_heap_bytes": hi, "min_heap_over_idle_bytes": hi - idle, "target_over_idle_bytes": 128 * 1024,
            "connected_heap_bytes": connected, "peak_over_connected_bytes": peak - connected,
            "restores_in_256k": at256, "samples": int(mo.group(4)), "trials": len(trials)}


def rsync_pull(src, damaged, work, want, floors):
    rsync = shutil.which("rsync")
    if rsync is None:
        raise SystemExit("rsync is not installed (make bench-deps)")
    to = os.path.join(work, "rsync")
    shutil.copytree(damaged, to, symlinks=True)
    # A "remote shell" that runs the remote half here, over the pipe rsync would use for ssh.
    shell = os.path.join(work, "local-shell")
    with open(shell, "w") as f:
        f.write('#!/bin/sh\nshift\nexec "$@"\n')
    os.chmod(shell, 0o755)
    say("rsync -az --delete pulling the tree into the damaged copy")
    t0 = time.monotonic()
    p = subprocess.run([rsync, "-az", "--delete", "--stats", "-e", shell, "localhost:%s/" % src, to + "/"],
                       capture_output=True, text=True, timeout=600)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit("rsync failed (%d): %s" % (p.returncode, p.stderr))
    sent = int(re.search(r"Total bytes sent: ([\d,]+)", p.stdout).group(1).replace(",", ""))
    recv = int(re.search(r"Total bytes received: ([\d,]+)", p.stdout).group(1).replace(",", ""))
    bad = same_content(want, to, True)
    if bad:
        raise SystemExit("rsync: tree differs: %s" % bad)
    shutil.rmtree(to)
    out = {"bench": "restore_rsync", "tool": "rsync -az --delete", "version": _rsync_version(rsync),
           "bytes_sent": sent, "bytes_received": recv, "link_bytes": sent + recv, "seconds_loopback": round(dt, 2)}
    for rt, floor in floors.items():
        out["link_over_floor_" + rt] = round((sent + recv) / floor, 3)
    for name, cfg in LINKS.items():
        # a full-duplex link: the busier direction sets the time
        out["seconds_on_" + name] = round(max(sent, recv) / cfg["rate"], 1)
    return out


def _rsync_version(rsync):
    p = subprocess.run([rsync, "--version"], capture_output=True, text=True)
    mo = re.search(r"version ([\d.]+)", p.stdout)
    return mo.group(1) if mo else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--links", default="serial,ble,ble10")
    ap.add_argument("--runtimes", default="cpython,micropython")
    ap.add_argument("--scale", type=int, default=1, help="tree size factor (1: ~3.5 MB)")
    ap.add_argument("--no-heap", action="store_true")
    ap.add_argument("--no-rsync", action="store_true")
    a = ap.parse_args()
    links = [x for x in a.links.split(",") if x]
    runtimes = [x for x in a.runtimes.split(",") if x]
    for x in links:
        if x not in LINKS:
            ap.error("unknown link %r (%s)" % (x, ", ".join(LINKS)))
    for x in runtimes:
        if x not in WBITS:
            ap.error("unknown runtime %r (cpython, micropython)" % x)
    if a.scale < 1 or a.scale > 8:
        ap.error("--scale takes 1..8")
    work = tempfile.mkdtemp(prefix="bench-restore-")
    try:
        src = os.path.join(work, "phone")
        make_phone(src, a.scale)
        want = snapshot_of(src)
        want_chunks = chunks_of_tree(src)
        size = sum(os.path.getsize(os.path.join(src, p)) for p, w in want.items() if w[0] == "f")
        say("tree: %d entries, %d bytes; backing it up" % (len(want), size))
        anchor_dir = os.path.join(work, "anchor")
        anchor = AnchorProc(anchor_dir).start()
        try:
            # One snapshot of the device; every rover restores it.
            run_rover("cpython", anchor.link, "phone", os.path.join(work, "state-backup"), "backup", src)
        finally:
            anchor.stop()
        damaged = os.path.join(work, "damaged")
        shutil.copytree(src, damaged, symlinks=True)
        damage(damaged, a.scale, random.Random(5))
        have = chunks_of_tree(damaged)
        floors = {}
        for rt in WBITS:
            floors[rt], raw, n = floor_bytes(want_chunks, have, WBITS[rt])
        say("damaged: %d chunks (%d bytes raw; %s compressed) missing" % (n, raw, floors))
        for rt in runtimes:
            for name in links:
                print(json.dumps(dict(restore_over(rt, name, anchor_dir, damaged, work, want, floors[rt]),
                                      tree_bytes=size, missing_raw_bytes=raw, missing_chunks=n)), flush=True)
        if not a.no_heap:
            print(json.dumps(heap_probe(anchor_dir, damaged, work, want)), flush=True)
        if not a.no_rsync:
            print(json.dumps(dict(rsync_pull(src, damaged, work, want, floors), floor_bytes=floors)), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
