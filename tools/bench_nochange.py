#!/usr/bin/env python3
"""Bytes on the link for a backup in which nothing changed: Anchor vs. rsync (DESIGN section 9).

Builds a deterministic tree of --files small files (default 20,000; sizes 0-4 KiB; nested
folders named the way a phone and a data logger name theirs, at most --max-dir files each),
then, everything on 127.0.0.1:

  anchor  `anchor serve` in a temp dir; the MicroPython rover (256 KB heap, tools/rover-mpy)
          backs the tree up through a CountingRelay, then backs it up again with nothing
          changed. The second backup's bytes at the relay (up + down) and its wall time.
  rsync   `rsync --daemon` with a writable module in a temp dir behind a CountingRelay;
          `rsync -az SRC/ rsync://127.0.0.1:RELAY/bench/` twice. The second run's bytes at the
          relay and its wall time. rsync sends its whole file list every run.

Prints one JSON line. Every subprocess has a timeout; processes and temp dirs are cleaned up
on failure too. Run with the project's venv (tools/bench-nochange does).

Usage: python -m tools.bench_nochange [--files N] [--seed S] [--max-dir N] [--timeout SECONDS]
"""
import argparse
import calendar
import grp
import json
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from tests.support.harness import AnchorProc, run_rover
from tests.support.linkemu import CountingRelay

DEVICE = "bench-rover"
MAX_SIZE = 4096
# Files per folder at most: a phone's camera folder holds thousands. (The rover streams each
# listing through a 64-name window, so folder size is not limited by its heap.)
MAX_DIR = 2000

# --- the tree -------------------------------------------------------------------------------

APPS = ["com.whatsapp", "org.telegram.messenger", "com.google.android.apps.maps",
        "com.spotify.music", "com.android.chrome", "org.mozilla.firefox", "com.strava",
        "com.instagram.android", "de.komoot.android", "com.google.android.gm"]
SENSORS = ["temp", "humidity", "pressure", "accel", "gps", "battery", "soil", "lux"]
BINARY = (".jpg", ".png", ".opus", ".m4a", ".bin", ".0", ".webp", ".dat")


def _stamp(rnd, year0=2023):
    """(y, mo, d, h, mi, s) somewhere in two years, for names."""
    t = time.gmtime(calendar.timegm((year0, 1, 1, 0, 0, 0)) + rnd.randrange(2 * 365 * 86400))
    return t[:6]


def _name(rnd, i):
    """Relative path of file number i: a phone's storage (about 60%) or a data logger's."""
    y, mo, d, h, mi, s = _stamp(rnd)
    ymd = "%04d%02d%02d" % (y, mo, d)
    hms = "%02d%02d%02d" % (h, mi, s)
    r = rnd.random()
    if r < 0.12:
        # Camera files, one folder per month (a single flat DCIM/Camera is common too).
        return "DCIM/Camera/%04d-%02d/IMG_%s_%s.jpg" % (y, mo, ymd, hms)
    if r < 0.17:
        return "DCIM/.thumbnails/%d.jpg" % (1000000000 + i * 7919 % 900000000)
    if r < 0.22:
        return "Pictures/Screenshots/%04d/Screenshot_%s-%s_%s.png" % (y, ymd, hms, rnd.choice(APPS))
    if r < 0.30:
        wa = "Android/media/com.whatsapp/WhatsApp/Media"
        kind = rnd.random()
        if kind < 0.4:
            return "%s/WhatsApp Images/Sent/IMG-%s-WA%04d.jpg" % (wa, ymd, i % 10000)
        if kind < 0.7:
            return "%s/WhatsApp Voice Notes/%04d%02d/PTT-%s-WA%04d.opus" % (
                wa, y, (d // 7) + 4 * (mo - 1), ymd, i % 10000)
        return "%s/WhatsApp Stickers/%032x.webp" % (wa, rnd.getrandbits(128))
    if r < 0.45:
        app = rnd.choice(APPS)
        sub = rnd.choice(["cache", "cache/image_manager_disk_cache", "files", "files/offline",
                          "cache/http", "files/logs"])
        if sub.endswith("logs"):
            return "Android/data/%s/%s/%s-%s.log" % (app, sub, app.split(".")[-1], ymd)
        return "Android/data/%s/%s/%016x.0" % (app, sub, rnd.getrandbits(64))
    if r < 0.50:
        return "%s/%s" % (rnd.choice(["Documents", "Documents/notes", "Download", "Music/Recordings"]),
                          rnd.choice(["note-%05d.md", "receipt_%05d.txt", "Recording_%05d.m4a",
                                      "ticket-%05d.json"]) % i)
    # A logger: per-day folders of sensor CSV files, GPS tracks, event journals, config.
    k = rnd.random()
    if k < 0.70:
        return "logger/data/%04d/%02d/%02d/%s_%02d%02d.csv" % (
            y, mo, d, rnd.choice(SENSORS), h, mi)
    if k < 0.85:
        return "logger/gps/%04d-%02d/track_%s_%s.gpx" % (y, mo, ymd, hms)
    if k < 0.97:
        return "logger/events/%04d/%s_%02d.jsonl" % (y, ymd, h)
    return "logger/%s" % rnd.choice(["config/site-%03d.json", "fw/blob-%03d.bin",
                                     "calib/cal_%03d.txt"]) % (i % 1000)


def _text(rnd, path, size):
    if path.endswith(".csv"):
        line = lambda: "%d,%.3f,%.3f,%d\n" % (1700000000 + rnd.randrange(10 ** 7), rnd.uniform(-40, 60),
                                              rnd.uniform(0, 100), rnd.randrange(4096))
    elif path.endswith(".gpx"):
        line = lambda: '<trkpt lat="%.6f" lon="%.6f"><ele>%.1f</ele></trkpt>\n' % (
            rnd.uniform(45, 48), rnd.uniform(6, 11), rnd.uniform(200, 3000))
    elif path.endswith(".jsonl") or path.endswith(".json"):
        line = lambda: '{"t":%d,"ev":"%s","v":%d}\n' % (1700000000 + rnd.randrange(10 ** 7),
                                                       rnd.choice(["boot", "wake", "sample", "upload", "low_batt"]),
                                                       rnd.randrange(100000))
    else:
        words = ["backup", "radio", "meeting", "ticket", "total", "EUR", "sync", "error", "ok",
                 "battery", "note", "todo", "the", "and", "of"]
        line = lambda: " ".join(rnd.choice(words) for _ in range(rnd.randrange(3, 12))) + "\n"
    out = []
    n = 0
    while n < size:
        s = line()
        out.append(s)
        n += len(s)
    return "".join(out).encode()[:size]


def make_device_tree(root, n_files, seed=20000, max_dir=MAX_DIR):
    """n_files files of 0-4 KiB under root; deterministic per seed. Returns total bytes."""
    rnd = random.Random(seed)
    paths = set()
    per_dir = {}
    i = 0
    while len(paths) < n_files:
        p = _name(rnd, i)
        i += 1
        d = os.path.dirname(p)
        if p in paths or per_dir.get(d, 0) >= max_dir:
            continue
        paths.add(p)
        per_dir[d] = per_dir.get(d, 0) + 1
    total = 0
    for p in sorted(paths):
        full = os.path.join(root, p)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        size = 0 if rnd.random() < 0.05 else rnd.randrange(1, MAX_SIZE + 1)
        data = rnd.randbytes(size) if p.endswith(BINARY) else _text(rnd, p, size)
        with open(full, "wb") as f:
            f.write(data)
        total += size
        os.chmod(full, 0o600 if "/cache" in p else 0o644)
        t = 1_680_000_000 + rnd.randrange(60_000_000)   # whole seconds: MicroPython's stat
        os.utime(full, (t, t))
    return total


# --- helpers --------------------------------------------------------------------------------

def settle(relay, timeout=10):
    """Wait for the relay's pumps to see the connection close, so every byte is counted."""
    deadline = time.monotonic() + timeout
    for t in list(relay._threads):
        t.join(max(0.0, deadline - time.monotonic()))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_listening(port, proc, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("rsync daemon exited with %d" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("rsync daemon is not listening on port %d" % port)


def stop_group(proc):
    """End a daemon started in its own session, and the children it forked per connection."""
    if proc is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            pass


def count_files(root):
    return sum(len(fs) for _, _, fs in os.walk(root))


# --- the two contenders ---------------------------------------------------------------------

def bench_anchor(tmp, src, timeout):
    anchor = AnchorProc(os.path.join(tmp, "anchor")).start()
    relay = None
    try:
        relay = CountingRelay("127.0.0.1", anchor.port)
        link = "tcp://127.0.0.1:%d" % relay.port
        state = os.path.join(tmp, "rover-state")
        run_rover("micropython", link, DEVICE, state, "backup", src, timeout=timeout)
        settle(relay)
        first = relay.total
        relay.reset()
        t0 = time.monotonic()
        p = run_rover("micropython", link, DEVICE, state, "backup", src, timeout=timeout)
        seconds = time.monotonic() - t0
        settle(relay)
        second = relay.total
        if "snapshot 2 committed" not in p.stdout or " 0 changed, 0 deleted" not in p.stdout:
            raise RuntimeError("second anchor backup was not a no-change backup:\n" + p.stdout)
        return first, second, seconds
    finally:
        if relay:
            relay.close()
        anchor.stop()


def bench_rsync(tmp, src, timeout):
    rsync = shutil.which("rsync")
    if not rsync:
        raise RuntimeError("rsync is not installed (make bench-deps installs it)")
    dest = os.path.join(tmp, "rsync-module")
    os.makedirs(dest)
    conf = os.path.join(tmp, "rsyncd.conf")
    with open(conf, "w") as f:
        f.write("address = 127.0.0.1\n"
                "use chroot = no\n"
                "pid file = %s/rsyncd.pid\n"
                "lock file = %s/rsyncd.lock\n"
                "log file = %s/rsyncd.log\n"
                "uid = %s\n"
                "gid = %s\n"
                "[bench]\n"
                "path = %s\n"
                "read only = no\n"
                % (tmp, tmp, tmp, pwd.getpwuid(os.getuid()).pw_name,
                   grp.getgrgid(os.getgid()).gr_name, dest))
    port = free_port()
    daemon = subprocess.Popen([rsync, "--daemon", "--no-detach", "--port", str(port), "--config", conf],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    relay = None
    try:
        wait_listening(port, daemon)
        relay = CountingRelay("127.0.0.1", port)
        url = "rsync://127.0.0.1:%d/bench/" % relay.port
        runs = []
        for _ in range(2):
            relay.reset()
            t0 = time.monotonic()
            p = subprocess.run([rsync, "-az", src.rstrip("/") + "/", url], capture_output=True,
                               text=True, timeout=timeout)
            seconds = time.monotonic() - t0
            settle(relay)
            if p.returncode != 0:
                raise RuntimeError("rsync failed (%d): %s" % (p.returncode, p.stderr))
            runs.append((relay.total, seconds))
        return runs[0][0], runs[1][0], runs[1][1], dest
    finally:
        if relay:
            relay.close()
        stop_group(daemon)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=20000)
    ap.add_argument("--max-dir", type=int, default=MAX_DIR, help="files per folder at most")
    ap.add_argument("--timeout", type=float, default=1800, help="per subprocess, seconds")
    a = ap.parse_args()

    # A SIGTERM (e.g. from a timeout around us) must still run the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="bench-nochange-")
    try:
        src = os.path.join(tmp, "src")
        make_device_tree(src, a.files, a.seed, a.max_dir)
        a_first, a_second, a_seconds = bench_anchor(tmp, src, a.timeout)
        r_first, r_second, r_seconds, dest = bench_rsync(tmp, src, a.timeout)
        if count_files(dest) != a.files:
            raise RuntimeError("rsync module holds %d files, not %d" % (count_files(dest), a.files))
        print(json.dumps({
            "bench": "nochange_backup",
            "files": a.files,
            "anchor_bytes": a_second,
            "anchor_seconds": round(a_seconds, 3),
            "rsync_bytes": r_second,
            "rsync_seconds": round(r_seconds, 3),
            "ratio_rsync_over_anchor": round(r_second / a_second, 1) if a_second else None,
            "anchor_first_bytes": a_first,
            "rsync_first_bytes": r_first,
            "rover": "micropython-256K",
        }, separators=(",", ":")), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
