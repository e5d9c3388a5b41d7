#!/usr/bin/env python3
"""A week in the life of a roving device: radio bytes of its end-of-week backup, Anchor vs.
the floor and vs. rsync, restic and borg (DESIGN section 9).

The week (deterministic for a given --seed; every file's content and mtime come from it):

  start   a phone-and-logger tree of about 100 MB that the anchor already holds (backed up
          before the week): ~1,500 small app/logger files (tools/bench_nochange.py's
          generator), 20 camera photos and a trip folder of 8 (1.8-4.2 MB, random =
          incompressible), 24 text documents (4-150 KB), 6 earlier downloads, 6 logger logs
          (100-600 KB), 40 older outgoing chat messages and a ~6 MB SQLite message database.
  each of 7 days, in this order:
    logs      every log grows by 30-80 KB of lines (a sensor line a minute, plus events);
    downloads fetched through the anchor into the rover's folders: one or two planned items
              a day (an 8-10 MB offline map, three 6-12 MB podcast episodes, PDFs, a 1.2 MB
              logger firmware image, a JSON data set, an HTML page, a CSV, shared meeting
              notes that join the documents and may be edited later), plus 2-6 received chat
              images (80-400 KB) and 0-2 received voice notes (20-200 KB);
    photos    1-4 new camera photos (1.8-4.2 MB, random); each is sent out (HTTP PUT through
              the anchor) with probability 1/2 (--photo-share); 0-2 screenshots (150-600 KB,
              never sent) and 0-2 voice notes recorded and sent (POST, 20-150 KB);
    messages  2-6 chat messages (150-900 B JSON files in Messages/outbox) and one telemetry
              batch (10-30 KB JSON lines in logger/outbox), each published over MQTT through
              the anchor;
    edits     1-3 documents edited in place (a same-length word swap, a paragraph inserted
              mid-file, or lines appended);
    database  the SQLite database takes 80-200 new messages, marks 50-150 recent ones read
              and loses one contiguous thread of 20-60 old ones (page-level changes);
  day 3     the folder "Pictures/Trip 2026-10" is renamed "Pictures/Lisbon October 2026";
  day 6     two old downloads are deleted.

Every fetch, send and publish is done by two rovers (devices), each against its own `anchor
serve` (with one loopback HTTP origin and Debian's mosquitto; separate anchors, or the second
rover's backup would be answered by proofs of possession for what the first uploaded, and
measure nothing of its own): the MicroPython rover (256 KB heap)
writes the fetched files into the tree, the CPython rover fetches into a scratch file that
must be identical. Both backed the start tree up before the week. At the end of the week:

  anchor_mpy_bytes       the MicroPython rover's backup, bytes up + down at a CountingRelay
                         (it cannot compress: MicroPython's deflate module only decompresses)
  anchor_cpython_bytes   the same for the CPython rover (zlib level 6 per chunk)
  rsync_bytes            `rsync -az TREE/ rsync://.../bench/` to an rsync daemon on loopback
                         through a CountingRelay: the second run (the first synced the start
                         tree before the week)
  restic_bytes           growth of a local restic repository (format 2, zstd "auto"
                         compression; RESTIC_PASSWORD fixed) from backing up the end tree
                         after the start tree: what a remote repository would receive
  borg_bytes             the same for borg (`borg init -e none`, default lz4 compression)
  floor_bytes            zlib level 6 over the concatenation of the end tree's novel chunks:
                         chunks (anchor_core.chunker.chunks_of) whose id is neither in the start tree
                         nor in any body that passed through the relay during the week, each
                         distinct chunk counted once. floor_per_chunk_bytes is the same with
                         each chunk compressed alone (as a rover's DATA messages are).

  delta_limit_bytes      what an encoder that saw every old version would send (issue 14):
                         per file of the end tree, 0 if every chunk of it was in the start tree
                         or passed through the relay; else `zstd -19 --patch-from` its start
                         version where the path existed at the start; else `zstd -19` alone.
                         anchor_*_over_delta_limit compare the backups with it (target 1.10).

No backup moves less than the floor, so best_peer_over_floor (the best peer's bytes over the
floor) bounds best_peer_over_anchor: when the week's novel data is large next to what passed
through the relay, no pass-through backup can be many times better than restic or borg.
novel_raw_by_kind / novel_zlib_by_kind say where the novel bytes are.

All tools back up the same folder at the start and at the end of the week. Everything runs on
127.0.0.1; every subprocess has a timeout; processes and temp dirs are cleaned up on errors.
Prints one JSON line. Needs rsync, restic and borg (`make bench-deps`) and mosquitto
(`make setup`). Run with the project's venv (tools/bench-week does).

Usage: python -m tools.bench_week [--seed S] [--photo-share P] [--timeout SECONDS] [--keep]
"""
import argparse
import calendar
import contextlib
import grp
import io
import json
import os
import pwd
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import zlib
from urllib.parse import quote

from tools.bench_nochange import _text, make_device_tree, settle, stop_group, wait_listening
from anchor_core.chunker import HAVE_PYFASTCDC, chunks_of
from tests.support.harness import AnchorProc, run_rover
from tests.support.linkemu import CountingRelay
from tests.support.services import Broker, Origin, free_port

DEV_MPY = "week-mpy"
DEV_CPY = "week-cpy"
DAY = 86400
BEFORE = calendar.timegm((2026, 10, 1, 0, 0, 0))      # start-tree files are older than this
WEEK0 = calendar.timegm((2026, 11, 16, 0, 0, 0))      # Monday of the week
TRIP = "Pictures/Trip 2026-10"
TRIP_RENAMED = "Pictures/Lisbon October 2026"
DB = "Android/data/org.example.chat/databases/messages.db"
WA = "Android/media/com.whatsapp/WhatsApp/Media"
LOGS = ["logger/logs/sensors.log", "logger/logs/gps.log", "logger/logs/modem.log",
        "logger/logs/system.log", "logger/logs/events.log", "logger/logs/power.log"]
WORDS = ("the and of to a in is it you that was for on are with as be at this have from or "
         "meeting battery radio backup note ticket total sync route camp water trail map "
         "tomorrow today ok thanks see you soon arrived leaving station fuel km").split()


def stamp(t):
    return time.strftime("%Y%m%d_%H%M%S", time.gmtime(t))


def write(root, rel, data, t):
    full = os.path.join(root, rel)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as f:
        f.write(data)
    os.utime(full, (t, t))
    return full


def words(rnd, n):
    return " ".join(rnd.choice(WORDS) for _ in range(n))


def log_lines(rnd, rel, t0, size):
    """size bytes (about) of log lines for log `rel`, timestamps from t0 on."""
    out = []
    n = 0
    t = t0
    kind = os.path.basename(rel).split(".")[0]
    while n < size:
        t += rnd.randrange(20, 100)
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        if kind == "sensors":
            s = "%s temp=%.2f hum=%.1f pres=%.1f lux=%d\n" % (ts, rnd.uniform(-5, 35), rnd.uniform(10, 99),
                                                            rnd.uniform(950, 1040), rnd.randrange(60000))
        elif kind == "gps":
            s = "%s fix=3 lat=%.6f lon=%.6f alt=%.1f sats=%d hdop=%.1f\n" % (
                ts, rnd.uniform(38.6, 38.8), rnd.uniform(-9.3, -9.0), rnd.uniform(0, 200),
                rnd.randrange(4, 14), rnd.uniform(0.6, 3.0))
        elif kind == "modem":
            s = "%s rssi=%d rsrp=%d cell=%05x state=%s tx=%d rx=%d\n" % (
                ts, -rnd.randrange(50, 110), -rnd.randrange(80, 130), rnd.randrange(1 << 20),
                rnd.choice(["idle", "connected", "attach", "search"]), rnd.randrange(10 ** 6),
                rnd.randrange(10 ** 7))
        elif kind == "power":
            s = "%s vbat=%d ibat=%d soc=%d temp=%.1f\n" % (ts, rnd.randrange(3300, 4200), rnd.randrange(-900, 1500),
                                                          rnd.randrange(100), rnd.uniform(5, 45))
        else:
            s = "%s %s %s[%d]: %s\n" % (ts, rnd.choice(["INFO", "INFO", "INFO", "WARN", "DEBUG", "ERROR"]),
                                        rnd.choice(["sampler", "uplink", "storage", "scheduler", "watchdog"]),
                                        rnd.randrange(100, 999), words(rnd, rnd.randrange(3, 10)))
        out.append(s)
        n += len(s)
    return "".join(out).encode()


def document(rnd, size):
    """A markdown-ish note of about size bytes."""
    out = ["# " + words(rnd, rnd.randrange(2, 6)).capitalize() + "\n\n"]
    n = len(out[0])
    while n < size:
        if rnd.random() < 0.15:
            s = "\n## " + words(rnd, rnd.randrange(2, 5)).capitalize() + "\n\n"
        elif rnd.random() < 0.3:
            s = "- " + words(rnd, rnd.randrange(3, 12)) + "\n"
        else:
            s = words(rnd, rnd.randrange(20, 80)).capitalize() + ".\n\n"
        out.append(s)
        n += len(s)
    return "".join(out).encode()[:size]


def pdfish(rnd, size):
    """A PDF's shape: mostly compressed streams (random), some text objects between them."""
    out = [b"%PDF-1.7\n"]
    n = 9
    k = 1
    while n < size:
        if rnd.random() < 0.75:
            body = rnd.randbytes(rnd.randrange(4000, 60000))
            s = b"%d 0 obj\n<< /Length %d /Filter /FlateDecode >>\nstream\n" % (k, len(body)) + body + b"\nendstream\nendobj\n"
        else:
            s = b"%d 0 obj\n<< /Type /Page /Contents (%s) >>\nendobj\n" % (k, words(rnd, 200).encode())
        out.append(s)
        n += len(s)
        k += 1
    return b"".join(out)[:size]


def chat_json(rnd, t, peer):
    return ('{"ts":%d,"to":"%s","id":"%016x","text":"%s"}\n' % (
        t, peer, rnd.getrandbits(64), words(rnd, rnd.randrange(5, 80)))).encode()


# --- the message database -------------------------------------------------------------------

PEERS = ["ana", "bruno", "carla", "duarte", "eva", "filipe", "gui", "helena", "ines", "joao"]


def db_start(path, rnd):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    con = sqlite3.connect(path)
    con.executescript("PRAGMA page_size=4096; PRAGMA journal_mode=DELETE;"
                      "CREATE TABLE messages (id INTEGER PRIMARY KEY, ts INTEGER, peer TEXT, "
                      "incoming INTEGER, read INTEGER, body TEXT);"
                      "CREATE INDEX by_peer ON messages(peer, ts);")
    t = BEFORE - 400 * DAY
    rows = []
    for i in range(34000):
        t += rnd.randrange(60, 2000)
        rows.append((t, rnd.choice(PEERS), rnd.randrange(2), 1, words(rnd, rnd.randrange(3, 40))))
    con.executemany("INSERT INTO messages (ts, peer, incoming, read, body) VALUES (?,?,?,?,?)", rows)
    con.commit()
    con.close()


def db_day(path, rnd, t):
    """One day of a chat app: new messages, recent ones read, one old thread deleted."""
    con = sqlite3.connect(path)
    new = []
    tt = t
    for _ in range(rnd.randrange(80, 201)):
        tt += rnd.randrange(20, 400)
        new.append((tt, rnd.choice(PEERS), rnd.randrange(2), 0, words(rnd, rnd.randrange(3, 40))))
    con.executemany("INSERT INTO messages (ts, peer, incoming, read, body) VALUES (?,?,?,?,?)", new)
    top = con.execute("SELECT max(id) FROM messages").fetchone()[0]
    ids = [(top - rnd.randrange(1500),) for _ in range(rnd.randrange(50, 151))]
    con.executemany("UPDATE messages SET read=1 WHERE id=?", ids)
    first = rnd.randrange(1, top - 3000)
    con.execute("DELETE FROM messages WHERE id BETWEEN ? AND ?", (first, first + rnd.randrange(20, 61)))
    con.commit()
    con.close()
    os.utime(path, (tt, tt))


# --- the start tree -------------------------------------------------------------------------

def make_start_tree(root, rnd):
    make_device_tree(root, 1500, seed=rnd.randrange(1 << 30))
    t = BEFORE - 60 * DAY
    for i in range(20):
        t += rnd.randrange(3600, 2 * DAY)
        write(root, "DCIM/Camera/2026-09/IMG_%s.jpg" % stamp(t), rnd.randbytes(rnd.randrange(1_800_000, 4_200_000)), t)
    t = BEFORE - 20 * DAY
    for i in range(8):
        t += rnd.randrange(1800, 8 * 3600)
        write(root, "%s/IMG_%s.jpg" % (TRIP, stamp(t)), rnd.randbytes(rnd.randrange(1_800_000, 4_200_000)), t)
    for i in range(24):
        t = BEFORE - rnd.randrange(300 * DAY)
        name = "Documents/%s-%02d.%s" % (rnd.choice(["notes", "plan", "journal", "checklist", "draft"]), i,
                                         rnd.choice(["md", "txt"]))
        write(root, name, document(rnd, rnd.randrange(4_000, 150_000)), t)
    for i in range(6):
        t = BEFORE - rnd.randrange(200 * DAY)
        write(root, "Download/old-%02d.pdf" % i, pdfish(rnd, rnd.randrange(200_000, 1_800_000)), t)
    for rel in LOGS:
        t = BEFORE - 2 * DAY
        write(root, rel, log_lines(rnd, rel, BEFORE - 30 * DAY, rnd.randrange(100_000, 600_000)), t)
    for i in range(40):
        t = BEFORE - rnd.randrange(60 * DAY)
        write(root, "Messages/sent/%d.json" % t, chat_json(rnd, t, rnd.choice(PEERS)), t)
    db_start(os.path.join(root, DB), rnd)
    os.utime(os.path.join(root, DB), (BEFORE - DAY, BEFORE - DAY))


# --- the week -------------------------------------------------------------------------------

class Rovers:
    """The two rovers that live the same week: relay requests by both, files written once."""

    def __init__(self, tmp, root, anchor, origin, timeout, anchor_cpy):
        self.root = root
        self.anchor = anchor             # the MicroPython rover's
        self.anchor_cpy = anchor_cpy     # the CPython rover's
        self.origin = origin
        self.timeout = timeout
        self.state_mpy = os.path.join(tmp, "state-mpy")
        self.state_cpy = os.path.join(tmp, "state-cpy")
        self.scratch = os.path.join(tmp, "scratch")
        os.makedirs(self.scratch)
        self.relayed_ids = set()     # chunk ids of every body that passed through the relay
        self.relayed_bytes = 0
        self.counts = {"fetch": 0, "send": 0, "publish": 0}
        self.n = 0
        # The MicroPython rover's relay traffic is counted too (not part of the backup).
        self.week_relay = CountingRelay("127.0.0.1", anchor.port)
        self.link_mpy = "tcp://127.0.0.1:%d" % self.week_relay.port

    def close(self):
        self.week_relay.close()

    def _run(self, runtime, link, *args):
        dev, state = (DEV_MPY, self.state_mpy) if runtime == "micropython" else (DEV_CPY, self.state_cpy)
        anchor = self.anchor if runtime == "micropython" else self.anchor_cpy
        try:
            return run_rover(runtime, link, dev, state, *args, timeout=self.timeout)
        except AssertionError as e:
            # Say whether the anchor is still alive, and what it logged last.
            with open(os.path.join(anchor.data_dir, "anchor.log"), "rb") as f:
                tail = f.read()[-3000:].decode(errors="replace")
            raise RuntimeError("%s\nanchor exit status: %s; its log ends:\n%s"
                               % (e, anchor.proc.poll(), tail)) from None

    def rover(self, runtime, *args):
        link = self.link_mpy if runtime == "micropython" else self.anchor_cpy.link
        return self._run(runtime, link, *args)

    def backup(self, runtime, link=None):
        default = self.anchor.link if runtime == "micropython" else self.anchor_cpy.link
        p = self._run(runtime, link or default, "backup", self.root)
        if "committed" not in p.stdout:
            raise RuntimeError("backup did not commit:\n" + p.stdout + p.stderr)
        return p.stdout

    def _relayed(self, data):
        self.relayed_bytes += len(data)
        for _off, _ln, cid in chunks_of(io.BytesIO(data), None):
            self.relayed_ids.add(cid)

    def fetch(self, rel, body, t):
        self.n += 1
        path = "/dl/%d/%s" % (self.n, quote(os.path.basename(rel)))
        self.origin.files[path] = body
        out = os.path.join(self.root, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        self.rover("micropython", "fetch", self.origin.url(path), "--out", out)
        scratch = os.path.join(self.scratch, "fetched")
        self.rover("cpython", "fetch", self.origin.url(path), "--out", scratch)
        for p in (out, scratch):
            with open(p, "rb") as f:
                if f.read() != body:
                    raise RuntimeError("fetched %s differs from the origin's body" % p)
        os.remove(scratch)
        del self.origin.files[path]
        os.utime(out, (t, t))
        self.counts["fetch"] += 1
        self._relayed(body)

    def send(self, rel, post=False):
        self.n += 1
        full = os.path.join(self.root, rel)
        with open(full, "rb") as f:
            data = f.read()
        for runtime in ("micropython", "cpython"):
            path = "/share/%d/%s" % (self.n, quote(os.path.basename(rel)))
            args = ["send", full, "--to", self.origin.url(path)] + (["--post"] if post else [])
            self.rover(runtime, *args)
            if self.origin.received.pop(path, None) != data:
                raise RuntimeError("the origin did not receive %s whole" % rel)
        self.counts["send"] += 1
        self._relayed(data)

    def publish(self, topic, rel):
        full = os.path.join(self.root, rel)
        with open(full, "rb") as f:
            data = f.read()
        for runtime in ("micropython", "cpython"):
            p = self.rover(runtime, "publish", topic, "--file", full)
            if "published %d bytes" % len(data) not in p.stdout:
                raise RuntimeError("publish of %s: %s" % (rel, p.stdout))
        self.counts["publish"] += 1
        self._relayed(data)


PLANNED = [  # (day, folder, name, kind, size range)
    (0, "Maps/offline", "portugal-south.map", "random", (8_000_000, 10_000_000)),
    (0, "Podcasts", "field-notes-ep41.mp3", "random", (6_000_000, 12_000_000)),
    (1, "Download", "trail-guide-2026.pdf", "pdf", (600_000, 2_000_000)),
    (1, "Download", "stations.json", "text", (150_000, 300_000)),
    (2, "Podcasts", "field-notes-ep42.mp3", "random", (6_000_000, 12_000_000)),
    (2, "Download", "camp-rules.html", "text", (50_000, 200_000)),
    (3, "logger/fw", "firmware-1.4.2.bin", "random", (1_200_000, 1_200_001)),
    (3, "Download", "invoice-2026-11.pdf", "pdf", (200_000, 600_000)),
    (4, "Podcasts", "radio-hour-118.mp3", "random", (6_000_000, 12_000_000)),
    (4, "Documents", "meeting-notes-shared.md", "doc", (30_000, 60_000)),
    (5, "Download", "ferry-timetable.pdf", "pdf", (300_000, 900_000)),
    (6, "Download", "tides-2026-12.csv", "csv", (80_000, 250_000)),
]


def planned_body(rnd, kind, lo, hi):
    size = rnd.randrange(lo, hi)
    if kind == "random":
        return rnd.randbytes(size)
    if kind == "pdf":
        return pdfish(rnd, size)
    if kind == "doc":
        return document(rnd, size)
    if kind == "csv":
        return _text(rnd, "x.csv", size)
    return _text(rnd, "x.json", size)


def edit_document(rnd, full, t):
    with open(full, "rb") as f:
        data = f.read()
    how = rnd.choice(["swap", "insert", "append"])
    if how == "swap" and len(data) > 100:
        # a typo fixed: one word replaced by another of the same length, in place
        i = rnd.randrange(len(data) - 20)
        j = data.find(b" ", i)
        k = data.find(b" ", j + 1)
        if 0 <= j < k:
            w = data[j + 1:k]
            data = data[:j + 1] + bytes(reversed(w)) + data[k:]
    elif how == "insert":
        lines = data.split(b"\n")
        at = rnd.randrange(len(lines))
        lines.insert(at, words(rnd, rnd.randrange(30, 120)).capitalize().encode() + b".\n")
        data = b"\n".join(lines)
    else:
        data += b"".join(b"- " + words(rnd, rnd.randrange(3, 12)).encode() + b"\n" for _ in range(rnd.randrange(2, 8)))
    with open(full, "wb") as f:
        f.write(data)
    os.utime(full, (t, t))
    return how


def live_week(root, rnd, rv, share=0.5):
    """Seven days of the rover's life; relay requests go through `rv`. Returns event counts."""
    ev = {"downloads": 0, "download_bytes": 0, "photos": 0, "photo_bytes": 0, "photos_sent": 0,
          "screenshots": 0, "voice_notes_sent": 0, "chat_messages": 0, "telemetry_batches": 0,
          "doc_edits": 0, "db_days": 0, "log_append_bytes": 0, "renamed_files": 0, "deleted": 0}
    docs = sorted(os.path.join("Documents", n) for n in os.listdir(os.path.join(root, "Documents")))
    for day in range(7):
        t0 = WEEK0 + day * DAY
        # logs: the night's and the morning's lines
        for rel in LOGS:
            full = os.path.join(root, rel)
            add = log_lines(rnd, rel, t0 - DAY // 2, rnd.randrange(30_000, 80_000))
            with open(full, "ab") as f:
                f.write(add)
            os.utime(full, (t0 + 7 * 3600, t0 + 7 * 3600))
            ev["log_append_bytes"] += len(add)
        # downloads
        t = t0 + 8 * 3600
        for d, folder, name, kind, (lo, hi) in PLANNED:
            if d == day:
                body = planned_body(rnd, kind, lo, hi)
                rel = "%s/%s" % (folder, name)
                rv.fetch(rel, body, t)
                t += 600
                ev["downloads"] += 1
                ev["download_bytes"] += len(body)
                if rel.startswith("Documents/"):
                    docs.append(rel)
        for i in range(rnd.randrange(2, 7)):
            t += rnd.randrange(300, 3600)
            body = rnd.randbytes(rnd.randrange(80_000, 400_000))
            rv.fetch("%s/WhatsApp Images/IMG-%s-WA%04d.jpg" % (WA, stamp(t)[:8], day * 10 + i), body, t)
            ev["downloads"] += 1
            ev["download_bytes"] += len(body)
        for i in range(rnd.randrange(0, 3)):
            t += rnd.randrange(300, 3600)
            body = rnd.randbytes(rnd.randrange(20_000, 200_000))
            rv.fetch("%s/WhatsApp Voice Notes/PTT-%s-WA%04d.opus" % (WA, stamp(t)[:8], day * 10 + i), body, t)
            ev["downloads"] += 1
            ev["download_bytes"] += len(body)
        # photos, screenshots, voice notes
        t = t0 + 11 * 3600
        for i in range(rnd.randrange(1, 5)):
            t += rnd.randrange(600, 4 * 3600)
            rel = "DCIM/Camera/2026-11/IMG_%s.jpg" % stamp(t)
            data = rnd.randbytes(rnd.randrange(1_800_000, 4_200_000))
            write(root, rel, data, t)
            ev["photos"] += 1
            ev["photo_bytes"] += len(data)
            if rnd.random() < share:
                rv.send(rel)
                ev["photos_sent"] += 1
        for i in range(rnd.randrange(0, 3)):
            t += rnd.randrange(60, 3600)
            write(root, "Pictures/Screenshots/Screenshot_%s.png" % stamp(t),
                  rnd.randbytes(rnd.randrange(150_000, 600_000)), t)
            ev["screenshots"] += 1
        for i in range(rnd.randrange(0, 3)):
            t += rnd.randrange(60, 3600)
            rel = "%s/WhatsApp Voice Notes/Sent/PTT-%s-WA%04d.opus" % (WA, stamp(t)[:8], day * 10 + i)
            write(root, rel, rnd.randbytes(rnd.randrange(20_000, 150_000)), t)
            rv.send(rel, post=True)
            ev["voice_notes_sent"] += 1
        # messages
        t = t0 + 18 * 3600
        for i in range(rnd.randrange(2, 7)):
            t += rnd.randrange(60, 1800)
            peer = rnd.choice(PEERS)
            rel = "Messages/outbox/%d.json" % t
            write(root, rel, chat_json(rnd, t, peer), t)
            rv.publish("rover/chat/" + peer, rel)
            ev["chat_messages"] += 1
        rel = "logger/outbox/telemetry-%s.jsonl" % stamp(t0)[:8]
        write(root, rel, _text(rnd, rel, rnd.randrange(10_000, 30_000)), t0 + 23 * 3600)
        rv.publish("rover/telemetry", rel)
        ev["telemetry_batches"] += 1
        # document edits
        for i in range(rnd.randrange(1, 4)):
            rel = rnd.choice(docs)
            edit_document(rnd, os.path.join(root, rel), t0 + 20 * 3600 + i * 600)
            ev["doc_edits"] += 1
        # the chat database
        db_day(os.path.join(root, DB), rnd, t0 + 9 * 3600)
        ev["db_days"] += 1
        if day == 3:
            ev["renamed_files"] = len(os.listdir(os.path.join(root, TRIP)))
            os.rename(os.path.join(root, TRIP), os.path.join(root, TRIP_RENAMED))
        if day == 6:
            for n in ("Download/old-01.pdf", "Download/old-04.pdf"):
                os.remove(os.path.join(root, n))
                ev["deleted"] += 1
    return ev


# --- measuring ------------------------------------------------------------------------------

def tree_files(root):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            yield os.path.join(dirpath, n)


def tree_chunk_ids(root):
    ids = set()
    files = size = 0
    for p in tree_files(root):
        with open(p, "rb") as f:
            for _off, ln, cid in chunks_of(f, None):
                ids.add(cid)
                size += ln
        files += 1
    return ids, files, size


def kind_of(rel):
    """What a path is, for the breakdown of the novel bytes."""
    if rel.startswith(("DCIM/", "Pictures/Screenshots/")):
        return "photos"
    if rel.startswith("Pictures/"):
        return "renamed_folder"
    if rel == DB:
        return "database"
    if rel.startswith("logger/logs/"):
        return "logs"
    if rel.startswith("Documents/"):
        return "documents"
    if rel.startswith(WA):
        return "chat_media"
    return "other"


def floor_of(root, start_ids, relayed_ids):
    """(novel raw bytes, zlib-6 of their concatenation, sum of per-chunk min(raw, zlib-6), chunks,
    {kind: (raw, per-chunk compressed)})."""
    seen = set()
    kinds = {}
    raw = per_chunk = n = 0
    comp = zlib.compressobj(6)
    stream = 0
    for p in tree_files(root):
        with open(p, "rb") as f:
            data = f.read()
        for off, ln, cid in chunks_of(io.BytesIO(data), None):
            if cid in start_ids or cid in relayed_ids or cid in seen:
                continue
            seen.add(cid)
            b = data[off:off + ln]
            raw += ln
            n += 1
            c = min(ln, len(zlib.compress(b, 6)))
            per_chunk += c
            stream += len(comp.compress(b))
            k = kinds.setdefault(kind_of(os.path.relpath(p, root)), [0, 0])
            k[0] += ln
            k[1] += c
    stream += len(comp.flush())
    return raw, stream, per_chunk, n, kinds


def delta_limit(root, start_copy, start_ids, relayed_ids, timeout):
    """(bytes, {"known": files, "patched": [files, bytes], "alone": [files, bytes]}): the delta
    limit of the end tree (see the docstring), with zstd -19 as the encoder."""
    zstd = shutil.which("zstd")
    if zstd is None:
        raise RuntimeError("zstd is missing (make bench-deps installs it)")
    total = 0
    how = {"known": 0, "patched": [0, 0], "alone": [0, 0]}
    for p in tree_files(root):
        with open(p, "rb") as f:
            ids = [cid for _off, _ln, cid in chunks_of(f, None)]
        if all(c in start_ids or c in relayed_ids for c in ids):
            how["known"] += 1
            continue
        old = os.path.join(start_copy, os.path.relpath(p, root))
        if os.path.isfile(old):
            # --long sized to the old version: zstd must see all of it as the dictionary
            win = max(10, (os.path.getsize(old) + os.path.getsize(p)).bit_length())
            cmd = [zstd, "-19", "-q", "-c", "--long=%d" % win, "--patch-from", old, p]
            k = "patched"
        else:
            cmd = [zstd, "-19", "-q", "-c", p]
            k = "alone"
        n = len(subprocess.run(cmd, capture_output=True, timeout=timeout, check=True).stdout)
        how[k][0] += 1
        how[k][1] += n
        total += n
    return total, how


def dir_bytes(path):
    return sum(os.lstat(os.path.join(d, n)).st_size for d, _, ns in os.walk(path) for n in ns)


def run(cmd, timeout, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd[:3]), p.returncode, p.stderr[-2000:]))
    return p


class RsyncDaemon:
    """`rsync --daemon` with a writable module `bench`, reached through a CountingRelay."""

    def __init__(self, tmp):
        self.rsync = shutil.which("rsync")
        if not self.rsync:
            raise RuntimeError("rsync is not installed (make bench-deps installs it)")
        self.dest = os.path.join(tmp, "rsync-module")
        os.makedirs(self.dest)
        conf = os.path.join(tmp, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write("address = 127.0.0.1\nuse chroot = no\npid file = %s/rsyncd.pid\n"
                    "lock file = %s/rsyncd.lock\nlog file = %s/rsyncd.log\nuid = %s\ngid = %s\n"
                    "[bench]\npath = %s\nread only = no\n"
                    % (tmp, tmp, tmp, pwd.getpwuid(os.getuid()).pw_name,
                       grp.getgrgid(os.getgid()).gr_name, self.dest))
        port = free_port()
        self.proc = subprocess.Popen([self.rsync, "--daemon", "--no-detach", "--port", str(port), "--config", conf],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.relay = None
        try:
            wait_listening(port, self.proc)
            self.relay = CountingRelay("127.0.0.1", port)
        except BaseException:
            self.close()
            raise

    def sync(self, src, timeout):
        self.relay.reset()
        run([self.rsync, "-az", src.rstrip("/") + "/", "rsync://127.0.0.1:%d/bench/" % self.relay.port], timeout)
        settle(self.relay)
        return self.relay.total

    def close(self):
        if self.relay:
            self.relay.close()
        stop_group(self.proc)


class Restic:
    def __init__(self, tmp):
        if not shutil.which("restic"):
            raise RuntimeError("restic is not installed (make bench-deps installs it)")
        self.repo = os.path.join(tmp, "restic-repo")
        self.env = dict(os.environ, RESTIC_PASSWORD="anchor-bench-week",
                        RESTIC_CACHE_DIR=os.path.join(tmp, "restic-cache"))

    def init(self, timeout):
        run(["restic", "-r", self.repo, "init", "--repository-version", "2"], timeout, self.env)

    def backup(self, src, timeout):
        before = dir_bytes(self.repo)
        run(["restic", "-r", self.repo, "backup", "--host", "rover", "-q", src], timeout, self.env)
        return dir_bytes(self.repo) - before


class Borg:
    def __init__(self, tmp):
        if not shutil.which("borg"):
            raise RuntimeError("borg is not installed (make bench-deps installs it)")
        self.repo = os.path.join(tmp, "borg-repo")
        self.env = dict(os.environ, BORG_BASE_DIR=os.path.join(tmp, "borg-base"),
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
        self.n = 0

    def init(self, timeout):
        run(["borg", "init", "-e", "none", self.repo], timeout, self.env)

    def backup(self, src, timeout):
        before = dir_bytes(self.repo)
        self.n += 1
        run(["borg", "create", "%s::week-%d" % (self.repo, self.n), src], timeout, self.env)
        return dir_bytes(self.repo) - before


def anchor_backup(rv, runtime, anchor):
    relay = CountingRelay("127.0.0.1", anchor.port)
    try:
        t0 = time.monotonic()
        out = rv.backup(runtime, "tcp://127.0.0.1:%d" % relay.port)
        seconds = time.monotonic() - t0
        settle(relay)
        return relay.total, seconds, out
    finally:
        relay.close()


def parse_backup(out):
    # rover: snapshot N committed: E entries, B bytes; C changed, D deleted; K chunks (S bytes) uploaded; ...
    import re
    mo = re.search(r"snapshot (\d+) committed: (\d+) entries, (\d+) bytes; (\d+) changed, (\d+) deleted; "
                   r"(\d+) chunks \((\d+) bytes\) uploaded", out)
    if not mo:
        raise RuntimeError("unexpected rover output: " + out)
    keys = ("snapshot", "entries", "bytes", "changed", "deleted", "chunks", "data_bytes")
    return dict(zip(keys, map(int, mo.groups())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--timeout", type=float, default=900, help="per subprocess, seconds")
    ap.add_argument("--photo-share", type=float, default=0.5,
                    help="probability that a new photo is sent out (default 0.5)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (its path goes to stderr)")
    a = ap.parse_args()

    if not HAVE_PYFASTCDC:
        sys.exit("bench_week: pyfastcdc is missing (run with the project's .venv after `make setup`)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = tempfile.mkdtemp(prefix="bench-week-")
    t_start = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            rnd = random.Random(a.seed)
            root = os.path.join(tmp, "rover")       # the device's storage; every tool backs it up
            make_start_tree(root, rnd)
            start_ids, start_files, start_bytes = tree_chunk_ids(root)
            # the old versions the delta limit patches from
            start_copy = os.path.join(tmp, "start-copy")
            shutil.copytree(root, start_copy, symlinks=True)

            origin = Origin()
            stack.callback(origin.close)
            broker = Broker(tmp)
            stack.callback(broker.close)
            anchor = AnchorProc(os.path.join(tmp, "anchor"), "--broker", broker.url).start()
            stack.callback(anchor.stop)
            anchor_cpy = AnchorProc(os.path.join(tmp, "anchor-cpy"), "--broker", broker.url,
                                    "--no-mqtt-links").start()
            stack.callback(anchor_cpy.stop)
            rv = Rovers(tmp, root, anchor, origin, a.timeout, anchor_cpy)
            stack.callback(rv.close)
            rsyncd = RsyncDaemon(tmp)
            stack.callback(rsyncd.close)
            restic = Restic(tmp)
            borg = Borg(tmp)

            # The start of the week: every tool holds the start tree.
            first = {}
            first["anchor_mpy"], _, _ = anchor_backup(rv, "micropython", anchor)
            rv.backup("cpython")          # to its own anchor
            first["rsync"] = rsyncd.sync(root, a.timeout)
            restic.init(a.timeout)
            first["restic"] = restic.backup(root, a.timeout)
            borg.init(a.timeout)
            first["borg"] = borg.backup(root, a.timeout)

            ev = live_week(root, rnd, rv, a.photo_share)
            settle(rv.week_relay)
            week_relay_bytes = rv.week_relay.total

            # The end of the week.
            mpy_bytes, mpy_s, mpy_out = anchor_backup(rv, "micropython", anchor)
            cpy_bytes, cpy_s, cpy_out = anchor_backup(rv, "cpython", anchor_cpy)
            mpy, cpy = parse_backup(mpy_out), parse_backup(cpy_out)
            rsync_bytes = rsyncd.sync(root, a.timeout)
            restic_bytes = restic.backup(root, a.timeout)
            borg_bytes = borg.backup(root, a.timeout)

            _, end_files, end_bytes = tree_chunk_ids(root)
            if mpy["bytes"] != end_bytes or cpy["bytes"] != end_bytes:
                raise RuntimeError("snapshots hold %d / %d bytes, the tree %d" % (mpy["bytes"], cpy["bytes"], end_bytes))
            novel_raw, floor, floor_per_chunk, novel_chunks, kinds = floor_of(root, start_ids, rv.relayed_ids)
            limit, limit_how = delta_limit(root, start_copy, start_ids, rv.relayed_ids, a.timeout)

            peers = {"rsync": rsync_bytes, "restic": restic_bytes, "borg": borg_bytes}
            best = min(peers, key=peers.get)
            r = lambda x, y: round(x / y, 3) if y else None
            out = {
                "bench": "week",
                "seed": a.seed,
                "photo_share": a.photo_share,
                "anchor_mpy_bytes": mpy_bytes,
                "anchor_cpython_bytes": cpy_bytes,
                "floor_bytes": floor,
                "delta_limit_bytes": limit,
                "anchor_over_delta_limit": r(mpy_bytes, limit),
                "anchor_cpython_over_delta_limit": r(cpy_bytes, limit),
                "delta_limit_files": limit_how,
                "rsync_bytes": rsync_bytes,
                "restic_bytes": restic_bytes,
                "borg_bytes": borg_bytes,
                "anchor_over_floor": r(mpy_bytes, floor),
                "best_peer_over_anchor": r(peers[best], mpy_bytes),
                "anchor_cpython_over_floor": r(cpy_bytes, floor),
                "best_peer_over_anchor_cpython": r(peers[best], cpy_bytes),
                "best_peer": best,
                "best_peer_over_floor": r(peers[best], floor),
                "targets_met": {
                    "mpy_within_5pct_of_floor": mpy_bytes <= 1.05 * floor,
                    "cpython_within_5pct_of_floor": cpy_bytes <= 1.05 * floor,
                    "mpy_4x_fewer_than_best_peer": peers[best] >= 4 * mpy_bytes,
                    "cpython_4x_fewer_than_best_peer": peers[best] >= 4 * cpy_bytes,
                    "mpy_within_10pct_of_delta_limit": mpy_bytes <= 1.10 * limit,
                    "cpython_within_10pct_of_delta_limit": cpy_bytes <= 1.10 * limit,
                },
                "floor_per_chunk_bytes": floor_per_chunk,
                "novel_raw_bytes": novel_raw,
                "novel_chunks": novel_chunks,
                "novel_raw_by_kind": dict((k, v[0]) for k, v in sorted(kinds.items())),
                "novel_zlib_by_kind": dict((k, v[1]) for k, v in sorted(kinds.items())),
                "relayed_bytes": rv.relayed_bytes,
                "relay_requests": rv.counts,
                "week_relay_radio_bytes": week_relay_bytes,
                "anchor_mpy_data_bytes": mpy["data_bytes"],
                "anchor_mpy_chunks": mpy["chunks"],
                "anchor_mpy_changed": mpy["changed"],
                "anchor_mpy_seconds": round(mpy_s, 2),
                "anchor_cpython_data_bytes": cpy["data_bytes"],
                "anchor_cpython_seconds": round(cpy_s, 2),
                "start_files": start_files,
                "start_bytes": start_bytes,
                "end_files": end_files,
                "end_bytes": end_bytes,
                "week": ev,
                "first_backup_bytes": first,
                "rover": "micropython-256K",
                "seconds": round(time.monotonic() - t_start, 1),
            }
            print(json.dumps(out, separators=(",", ":")), flush=True)
    finally:
        if a.keep:
            print("kept %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
