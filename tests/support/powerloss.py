"""Power loss, over and over: the anchor is SIGKILLed at random points during backups and relay
captures, restarted on the same data directory each time, and checked.

Shared by tests/e2e/test_powerloss.py (a few points, in `make test`) and tools/bench_powerloss.py
(100 points). One point:

  1. (re)start the anchor (AnchorProc) on the data directory: the store must open;
  2. start a workload in the background: a backup of a tree changed a little since its last
     backup (the CPython rover; every few backups the MicroPython rover, its own device and
     tree), or a relay fetch of a new body from a loopback Origin (the capture path; the body
     then joins the CPython rover's tree, so a later backup takes it from the capture);
  3. SIGKILL the anchor after a random delay (seeded), counted from the rover's first bytes on
     the link and drawn over the workload's expected length (one in ten counted from the
     rover's start instead, so it may not have connected yet); kills land while connecting,
     at the start, mid-upload, mid-capture, near the commit, or after the workload ended
     (idle). The rover talks through a CountingRelay, so the bytes that had crossed the link
     at the kill tell where it landed (kill_phases). Let the rover fail (time-bounded);
  4. at some points, a torn segment tail before the restart: bytes a write never finished
     appended to the newest segment file (random garbage, zeros, or a record cut short), or a
     next segment whose header never landed (stale bytes), each kind in turn;
  4b. at some points (damage_share), one damage of the medium, each kind in turn
     (DAMAGE_KINDS): a flipped byte in the payload of a record the index lists (a random
     segment, a random record), a flipped byte in a tree file a snapshot uses, a deleted
     segment file (not the newest), or catalog.sqlite-wal cut at a random offset;
  5. restart and check: the anchor starts; after damage, `anchorctl verify --json` detects it
     (not ok, or the damage listed), the damaged snapshots' restores either are bit-exact or
     name the lost files and exit non-zero, every file written is exact and every file not
     named is restored; then `verify --repair`, a backup of each rover (which heals what a
     rover still holds), and the snapshots still damaged (their bytes are on no rover any
     more) are restored once more the same way and forgotten, as an operator would; then
     (every point) `verify` says ok; a torn tail is gone (the segment is no longer than
     before the injection); every snapshot the catalog lists is one we know the content of;
     the newest snapshot of the device and one random older snapshot restore bit-exact
     (every snapshot, at the end);
  6. rerun the interrupted workload to completion; record the backup's snapshot (snapshot id
     -> snapshot_of(tree) taken when the backup started).

A backup the anchor committed but whose COMMITTED reply the kill cut off shows up as a new
snapshot of that device after the restart; it gets the tree of the interrupted backup.

A catalog WAL cut is seen through the catalog's mark: SQLite reads a WAL up to its first frame
that does not check (salt, checksum chain) and takes the frames after it as never written, so a
cut rolls the catalog back to its last whole commit, and it opens and `quick_check`s clean. But
every snapshot commit and forget counts itself in the catalog and in `catalog.sqlite.mark`
beside it, written after the commit; a catalog behind its mark lost changes, and verify reports
that (`damage_at_start`, "catalog: ...", until `verify --repair` acknowledges it). The loop
predicts the rolled-back state from a copy (the cut WAL opened by SQLite itself), checks the
anchor shows exactly it and reports it whenever snapshots were rolled back (a cut that lost
only other rows, or nothing, has nothing to report); every snapshot still listed restores
bit-exact, and the rovers' next backups (whose last snapshot is then unknown to the anchor)
commit again: their bytes stay in the store, and the rovers still hold their current trees.

Waits are time-bounded (process waits with timeouts). The random kill delay is the experiment
itself, not synchronisation.
"""
import hashlib
import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
import time

from tests.support.harness import (AnchorProc, anchorctl, assert_same_tree, make_tree, rover_cmd,
    run_rover, snapshot_of)
from tests.support.linkemu import CountingRelay
from tests.support.services import Origin

from anchor.storage.segments import RECORD_HEADER_SIZE, SEGMENT_MAGIC, make_record, parse_record

CPY = "pl-cpy"          # CPython rover's device (and the relay fetches')
MPY = "pl-mpy"          # MicroPython rover's device
WORKLOAD_TIMEOUT = 300  # seconds a workload may take to end once the anchor is gone / to finish
TORN_KINDS = ("new segment", "garbage", "record", "zeros")
DAMAGE_KINDS = ("payload", "tree", "segment", "wal")
COMMITTED = re.compile(r"snapshot (\d+) committed")


class DidNotStart(Exception):
    """The anchor did not start on the data directory: the loop cannot go on."""


def _talking(relay, proc, timeout):
    """Wait (bounded) until the rover has sent its first bytes through the relay; False if it
    exits first or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if relay.wait_for(lambda r: r.up > 0, timeout=0.2):
            return True
        if proc.poll() is not None:
            return relay.up > 0
    return False


class PowerLoss:
    """N kill points on one data directory under workdir. run() returns the counters; problems
    found are listed in self.failures (strings), not raised, so a bench run reports them all."""

    def __init__(self, workdir, points, seed=1, mpy_every=4, capture_share=0.35, torn_share=0.3,
                 tree_files=150, tree_bytes=2 << 20, tree_cap=12 << 20, mpy_files=60,
                 mpy_bytes=600 << 10, body_max=3 << 20, restore_all_at_end=True, damage_share=0.15,
                 log=None):
        self.workdir = os.path.abspath(workdir)
        self.points = points
        self.rnd = random.Random(seed)
        self.seed = seed
        self.mpy_every = mpy_every
        self.capture_share = capture_share
        self.torn_share = torn_share
        self.damage_share = damage_share
        # damage draws their places from their own generator: how many draws they take
        # depends on the store, and the kill and torn-tail draws should not move with it
        self.drnd = random.Random(seed * 7919 + 1)
        self.dpick = random.Random(seed * 7919 + 2)     # which points: fixed by the seed alone
        self.damage_turn = 0
        self.tree_files, self.tree_bytes, self.tree_cap = tree_files, tree_bytes, tree_cap
        self.mpy_files, self.mpy_bytes = mpy_files, mpy_bytes
        self.body_max = body_max
        self.restore_all_at_end = restore_all_at_end
        self.log = log or (lambda s: None)
        self.data = os.path.join(self.workdir, "anchor")
        self.trees = {CPY: os.path.join(self.workdir, "tree-cpy"), MPY: os.path.join(self.workdir, "tree-mpy")}
        self.states = {CPY: os.path.join(self.workdir, "state-cpy"), MPY: os.path.join(self.workdir, "state-mpy")}
        self.runtime = {CPY: "cpython", MPY: "micropython"}
        self.staging = os.path.join(self.workdir, "staging")
        self.expected = {CPY: {}, MPY: {}}      # device -> {snapshot id: snapshot_of(tree)}
        self.forgotten = {CPY: {}, MPY: {}}     # unhealable snapshots forgotten (a WAL cut may undo it)
        self.failures = []
        self.anchor = None
        self.origin = None
        self.backups = 0
        self.bodies = 0
        # expected length of each workload kind (s) from the rover's first bytes, for the kill
        # delay: an average of runs that ended before the kill; a run cut short says at least
        self.est = {}
        self.stats = {"points": 0, "kills_during_backup": 0, "kills_during_capture": 0, "kills_idle": 0,
                      "kills_mpy_backup": 0, "torn_tails": 0, "torn_bytes": 0, "verify_failures": 0,
                      "restore_failures": 0, "restores": 0, "snapshots_committed": 0,
                      "committed_unheard": 0, "interrupted_backups_completed": 0,
                      "interrupted_captures_completed": 0, "resume_failures": 0, "open_failures": 0,
                      "kill_phases": {}, "torn_kinds": {},
                      "damage_injected": {}, "damage_detected": {}, "silent_losses": 0,
                      "files_named_damaged": 0, "undamaged_restored": 0, "damaged_restores": 0,
                      "snapshots_unhealable": 0, "wal_snapshots_rolled_back": 0,
                      "damage_failures": 0}

    # --- the world ---------------------------------------------------------------------------

    def fail(self, kind, text):
        self.failures.append("%s: %s" % (kind, text))
        self.log("FAIL %s: %s" % (kind, text))

    def _start_anchor(self):
        try:
            self.anchor = AnchorProc(self.data).start()
        except RuntimeError as e:
            self.stats["open_failures"] += 1
            tail = ""
            try:
                with open(os.path.join(self.data, "anchor.log"), "rb") as f:
                    tail = f.read()[-3000:].decode("utf-8", "replace")
            except OSError:
                pass
            self.fail("open", "%s\n%s" % (e, tail))
            raise DidNotStart(str(e)) from None

    def _kill_anchor(self):
        self.anchor.kill()
        if self.anchor.proc.stdout:
            self.anchor.proc.stdout.close()

    def close(self):
        if self.anchor is not None and self.anchor.proc.poll() is None:
            self.anchor.stop()
        if self.origin is not None:
            self.origin.close()

    # --- trees -------------------------------------------------------------------------------

    def _tree_size(self, root):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)

    def _files(self, root):
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)

    def _mutate(self, dev):
        """Change a tree a little: new files (some large enough that uploading them takes a
        while), a few files rewritten in part or appended to, a few deleted, a mode changed."""
        rnd, root = self.rnd, self.trees[dev]
        big = 1500 << 10 if dev == CPY else 120 << 10
        files = self._files(root)
        for i in range(rnd.randint(1, 3)):
            d = os.path.join(root, "new%03d" % (self.backups % 7))
            os.makedirs(d, exist_ok=True)
            size = rnd.choice([0, rnd.randrange(1, 4096), rnd.randrange(4096, big), rnd.randrange(big, 2 * big)])
            with open(os.path.join(d, "p%04d-%d.bin" % (self.backups, i)), "wb") as f:
                f.write(rnd.randbytes(size) if rnd.random() < 0.7 else b"log line %d\n" % i * (size // 12))
        for path in rnd.sample(files, min(len(files), rnd.randint(1, 3))):
            with open(path, "r+b") as f:
                n = os.fstat(f.fileno()).st_size
                if rnd.random() < 0.5 or n == 0:
                    f.seek(n)
                    f.write(rnd.randbytes(rnd.randrange(1, 20000)))
                else:
                    f.seek(rnd.randrange(n))
                    f.write(rnd.randbytes(rnd.randrange(1, 5000)))
        files = self._files(root)
        for path in rnd.sample(files, min(len(files), rnd.randint(0, 2))):
            os.unlink(path)
        files = self._files(root)
        if files:
            os.chmod(rnd.choice(files), rnd.choice([0o644, 0o600, 0o755]))
        cap = self.tree_cap if dev == CPY else self.mpy_bytes * 2
        while self._tree_size(root) > cap:
            files = self._files(root)
            os.unlink(max(rnd.sample(files, min(5, len(files))), key=os.path.getsize))

    # --- workloads ---------------------------------------------------------------------------

    def _plan(self):
        """The next workload: ("backup", device) or ("capture", url path)."""
        if self.rnd.random() < self.capture_share:
            self.bodies += 1
            path = "/bodies/b%04d.bin" % self.bodies
            n = self.rnd.randrange(1, self.body_max)
            if self.rnd.random() < 0.3:
                body = b"".join(b"t=%d v=%d\n" % (i, self.rnd.randrange(999)) for i in range(n // 10))
            else:
                body = self.rnd.randbytes(n)
            self.origin.files[path] = body
            return ("capture", path)
        self.backups += 1
        dev = MPY if self.backups % self.mpy_every == 0 else CPY
        self._mutate(dev)
        return ("backup", dev)

    def _cmd(self, work, port, retries="0"):
        """The rover command line for a workload, over a link to 127.0.0.1:port. retries: the
        backup's --retries (None: the rover's default)."""
        kind, what = work
        link = "tcp://127.0.0.1:%d" % port
        if kind == "backup":
            return rover_cmd(self.runtime[what], link, what, self.states[what], "backup",
                             self.trees[what], *(("--retries", retries) if retries is not None else ()))
        out = os.path.join(self.staging, os.path.basename(what))
        return rover_cmd("cpython", link, CPY, self.states[CPY], "fetch", self.origin.url(what), "--out", out)

    def _est_key(self, work):
        return work[1] if work[0] == "backup" else "capture"

    def _done(self, work, out, expected_tree):
        """A workload that finished (first attempt or rerun): record what it made."""
        kind, what = work
        if kind == "backup":
            mo = COMMITTED.search(out)
            if mo is None:
                raise AssertionError("no snapshot line in %r" % out)
            sid = int(mo.group(1))
            self.expected[what][sid] = expected_tree
            self.stats["snapshots_committed"] = sum(len(v) for v in self.expected.values())
            return sid
        staged = os.path.join(self.staging, os.path.basename(what))
        with open(staged, "rb") as f:
            got = f.read()
        if got != self.origin.files[what]:
            raise AssertionError("fetched body differs from the origin's (%d vs %d bytes)"
                                 % (len(got), len(self.origin.files[what])))
        dl = os.path.join(self.trees[CPY], "Download")
        os.makedirs(dl, exist_ok=True)
        os.replace(staged, os.path.join(dl, os.path.basename(what)))
        return None

    # --- checks ------------------------------------------------------------------------------

    def _newest_segment(self):
        d = os.path.join(self.data, "chunks", "segments")
        segs = sorted(f for f in os.listdir(d) if re.match(r"^\d{8}\.seg$", f)) if os.path.isdir(d) else []
        return os.path.join(d, segs[-1]) if segs else None

    def _tear(self):
        """Leave on the newest segment what a write cut by the power would: appended bytes that
        never became a record (random garbage: stale blocks of the card; zeros: the file grew,
        the data never landed; a valid-looking record cut short), or a next segment that a
        flush had just created, whose header never landed (stale bytes, or the start of the
        magic then stale bytes). Returns (path, size before or None for a new file), or None
        when there is no segment yet."""
        rnd = self.rnd
        path = self._newest_segment()
        if path is None:
            return None
        how = TORN_KINDS[self.stats["torn_tails"] % len(TORN_KINDS)]      # each in turn
        if how == "garbage":
            junk = rnd.randbytes(rnd.randrange(1, 70000))
        elif how == "zeros":
            junk = bytes(rnd.randrange(1, 70000))
        elif how == "record":
            raw = rnd.randbytes(rnd.randrange(100, 65536))
            rec = make_record(hashlib.sha256(raw).digest(), 0, len(raw), raw)
            junk = rec[:rnd.randrange(1, len(rec))]
        else:
            junk = rnd.randbytes(rnd.randrange(1, 70000))
            if rnd.random() < 0.5:
                junk = SEGMENT_MAGIC[:rnd.randrange(1, len(SEGMENT_MAGIC))] + junk
            seq = int(os.path.basename(path)[:8]) + 1
            path = os.path.join(os.path.dirname(path), "%08d.seg" % seq)
        before = os.path.getsize(path) if os.path.exists(path) else None
        with open(path, "ab") as f:
            f.write(junk)
        self.stats["torn_tails"] += 1
        self.stats["torn_kinds"][how] = self.stats["torn_kinds"].get(how, 0) + 1
        self.stats["torn_bytes"] += len(junk)
        self.log("  torn tail: %d bytes of %s %s %s" % (len(junk), how, "written as" if before is None
                                                        else "appended to", os.path.basename(path)))
        return path, before

    # --- damage of the medium ------------------------------------------------------------

    def _db_copy(self, rel):
        """A copy of one of the store's SQLite files with its WAL as the anchor left it, opened:
        opening the original would let SQLite checkpoint it or rebuild its -shm (and a copy of
        a cut WAL is how SQLite itself says what survives the cut)."""
        src = os.path.join(self.data, rel)
        d = os.path.join(self.workdir, "dbcopy-" + os.path.basename(rel))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        dst = os.path.join(d, os.path.basename(src))
        for suffix in ("", "-wal"):
            if os.path.exists(src + suffix):
                shutil.copyfile(src + suffix, dst + suffix)
        return sqlite3.connect(dst)

    def _catalog_snapshots(self):
        db = self._db_copy("catalog.sqlite")
        try:
            return db.execute("SELECT d.name, s.seq, s.root FROM snapshots s "
                              "JOIN devices d ON d.id = s.device_id").fetchall()
        finally:
            db.close()

    def _index_rows(self):
        db = self._db_copy(os.path.join("chunks", "index.sqlite"))
        try:
            return db.execute("SELECT id, seg, off, stored_len FROM chunks").fetchall()
        finally:
            db.close()

    def _segment_path(self, seq):
        return os.path.join(self.data, "chunks", "segments", "%08d.seg" % seq)

    def _damage_payload(self):
        """Flip one byte inside the payload of a record the index lists."""
        by_seg = {}
        for cid, seg, off, n in self._index_rows():
            if n > 0:
                by_seg.setdefault(seg, []).append((bytes(cid), off, n))
        segs = [s for s in sorted(by_seg) if os.path.exists(self._segment_path(s))]
        if not segs:
            return None
        seg = self.drnd.choice(segs)
        cid, off, n = self.drnd.choice(by_seg[seg])
        with open(self._segment_path(seg), "r+b") as f:
            f.seek(off)
            r = parse_record(f.read(RECORD_HEADER_SIZE + n), 0)
            if r is None or r[0] != cid:
                self.fail("damage", "the record of chunk %s the index puts at %08d.seg:%d does "
                          "not parse" % (cid.hex(), seg, off))
                return None
            at = off + RECORD_HEADER_SIZE + self.drnd.randrange(n)
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ self.drnd.randrange(1, 256)]))
        return {"chunk": cid.hex(), "text": "a flipped byte at %08d.seg:%d, in the payload of chunk "
                "%s" % (seg, at, cid.hex()[:16])}

    def _damage_tree(self):
        """Flip one byte of a tree file some snapshot uses."""
        users = {}
        for dev, seq, root in self._catalog_snapshots():
            users.setdefault(bytes(root).hex(), []).append((dev, seq))
        tdir = os.path.join(self.data, "trees")
        roots = [r for r in sorted(users) if os.path.exists(os.path.join(tdir, r + ".tree"))]
        if not roots:
            return None
        root = self.drnd.choice(roots)
        path = os.path.join(tdir, root + ".tree")
        at = self.drnd.randrange(os.path.getsize(path))
        with open(path, "r+b") as f:
            f.seek(at)
            b = f.read(1)
            f.seek(at)
            f.write(bytes([b[0] ^ self.drnd.randrange(1, 256)]))
        return {"snapshots": users[root], "text": "a flipped byte at %d of tree %s.. (snapshots %s)"
                % (at, root[:12], users[root])}

    def _damage_segment(self):
        """Delete a segment file the index lists rows in, not the newest."""
        counts = {}
        for _cid, seg, _off, _n in self._index_rows():
            counts[seg] = counts.get(seg, 0) + 1
        newest = self._newest_segment()
        top = int(os.path.basename(newest)[:8]) if newest else 0
        segs = [s for s in sorted(counts) if s < top and os.path.exists(self._segment_path(s))]
        if not segs:
            return None
        seg = self.drnd.choice(segs)
        os.unlink(self._segment_path(seg))
        return {"segment": "%08d.seg" % seg, "text": "%08d.seg deleted (%d chunks indexed in it)"
                % (seg, counts[seg])}

    def _damage_wal(self):
        """Cut catalog.sqlite-wal at a random offset; predict (from a copy, by SQLite) which
        snapshots the cut rolls back."""
        wal = os.path.join(self.data, "catalog.sqlite-wal")
        size = os.path.getsize(wal) if os.path.exists(wal) else 0
        if size == 0:
            return None
        before = set((d, s) for d, s, _ in self._catalog_snapshots())
        cut = self.drnd.randrange(size)
        os.truncate(wal, cut)
        after = set((d, s) for d, s, _ in self._catalog_snapshots())
        return {"lost": before - after, "after": after, "text": "catalog.sqlite-wal cut at %d of %d "
                "bytes (%d snapshots in the lost frames)" % (cut, size, len(before - after))}

    def _damage(self):
        """One damage of the medium while the anchor is down, each kind in turn (a kind that
        has nothing to damage yet gives its turn to the next)."""
        for k in range(len(DAMAGE_KINDS)):
            kind = DAMAGE_KINDS[(self.damage_turn + k) % len(DAMAGE_KINDS)]
            info = getattr(self, "_damage_" + kind)()
            if info is not None:
                self.damage_turn += k + 1
                info["kind"] = kind
                inj = self.stats["damage_injected"]
                inj[kind] = inj.get(kind, 0) + 1
                self.log("  damage: %s" % info["text"])
                return info
        return None

    def _wal_rolled_back(self, info, i):
        """After a WAL cut: the anchor lists exactly the snapshots SQLite kept; the rolled-back
        ones leave what we expect (they are the documented loss of this damage)."""
        for dev in (CPY, MPY):
            listed = self._listed(dev)
            kept = set(s for d, s in info["after"] if d == dev)
            if listed != kept:
                self.stats["damage_failures"] += 1
                self.fail("wal", "point %d: %s lists snapshots %s after the WAL cut, SQLite keeps %s"
                          % (i, dev, sorted(listed), sorted(kept)))
        for dev, sid in sorted(info["lost"]):
            self.stats["wal_snapshots_rolled_back"] += 1
            if self.expected.get(dev, {}).pop(sid, None) is not None:
                self.log("  %s snapshot %d rolled back by the WAL cut" % (dev, sid))
        for dev, sid in sorted(info["after"]):
            if dev in self.expected and sid not in self.expected[dev] and sid in self.forgotten[dev]:
                # the forget was in the lost frames: the snapshot is back (still damaged: the
                # heal below forgets it again)
                self.expected[dev][sid] = self.forgotten[dev].pop(sid)
                self.log("  %s snapshot %d is back: its forget was in the lost frames" % (dev, sid))

    def _after_damage(self, info, i):
        """verify detects the damage; restores lose only what they name; repair and a backup of
        each rover heal what a rover still holds; what no rover holds is forgotten."""
        kind = info["kind"]
        p = anchorctl(self.anchor.address, "verify", "--json", check=False)
        try:
            v = json.loads(p.stdout)
        except ValueError:
            self.stats["damage_failures"] += 1
            self.fail("damage", "point %d: verify gave no answer: %s" % (i, p.stderr[-2000:]))
            return
        if kind == "payload":
            detected = info["chunk"] in v.get("bad", [])
        elif kind == "tree":
            named = set((d["device"], d["snapshot"]) for d in v.get("damaged_snapshots", []))
            detected = all(tuple(s) in named for s in info["snapshots"])
        elif kind == "segment":
            detected = any(info["segment"] in t for t in v.get("damage_at_start", []) + v.get("segments", []))
        else:
            # The catalog's mark: a WAL cut that undid snapshot commits or forgets is reported
            # at start; one that lost nothing a snapshot needs has nothing to report.
            detected = any(t.startswith("catalog:") for t in v.get("damage_at_start", []))
        if detected:
            det = self.stats["damage_detected"]
            det[kind] = det.get(kind, 0) + 1
        elif kind != "wal" or info["lost"]:
            self.stats["silent_losses"] += 1
            self.stats["damage_failures"] += 1
            self.fail("damage", "point %d: verify does not report %s: %s" % (i, info["text"], p.stdout[-2000:]))
        self.log("  verify: %s, %d bad, %d missing, %d damaged snapshots" % (
            "ok" if v.get("ok", False) else "damage found", len(v.get("bad", [])), v.get("missing", 0), len(v.get("damaged_snapshots", []))))

        # Restores: the snapshots verify names (and the tree's), the newest of each rover, one
        # other; at most 5 (every snapshot is restored at the end).
        todo = [(d["device"], d["snapshot"]) for d in v.get("damaged_snapshots", [])]
        todo += [tuple(s) for s in info.get("snapshots", [])]
        todo += [(dev, max(self.expected[dev])) for dev in (CPY, MPY) if self.expected[dev]]
        every = [(d, s) for d in (CPY, MPY) for s in sorted(self.expected[d])]
        if every:
            todo.append(self.drnd.choice(every))
        reported = set((d["device"], d["snapshot"]) for d in v.get("damaged_snapshots", []))
        seen = []
        for dev, sid in todo:
            if (dev, sid) not in seen and sid in self.expected.get(dev, {}) and len(seen) < 5:
                seen.append((dev, sid))
                # after a WAL cut only what verify reports (a forget undone by the cut) may miss
                self._restore(dev, sid, damaged=kind != "wal" or (dev, sid) in reported)

        anchorctl(self.anchor.address, "verify", "--repair", "--json", check=False)
        current = set()
        heal = {}
        for dev in (CPY, MPY):
            want = snapshot_of(self.trees[dev])
            current.update(w[3] for w in want.values() if w[0] == "f")
            p = run_rover(self.runtime[dev], self.anchor.link, dev, self.states[dev], "backup",
                          self.trees[dev], timeout=WORKLOAD_TIMEOUT, check=False)
            if p.returncode != 0:
                self.stats["damage_failures"] += 1
                self.fail("heal", "point %d: %s backup after the repair failed (%d): %s %s"
                          % (i, dev, p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
                continue
            heal[dev] = self._done(("backup", dev), p.stdout, want)
        p = anchorctl(self.anchor.address, "verify", "--json", check=False)
        try:
            v = json.loads(p.stdout)
        except ValueError:
            self.stats["damage_failures"] += 1
            self.fail("heal", "point %d: verify gave no answer: %s" % (i, p.stderr[-2000:]))
            return
        if v.get("bad", []):
            self.stats["damage_failures"] += 1
            self.fail("heal", "point %d: bad chunks after repair and backups: %s" % (i, v.get("bad", [])[:5]))
        for d in v.get("damaged_snapshots", []):
            dev, sid = d["device"], d["snapshot"]
            if heal.get(dev) == sid or sid not in self.expected.get(dev, {}):
                self.stats["damage_failures"] += 1
                self.fail("heal", "point %d: %s snapshot %d is damaged: %s" % (i, dev, sid, d["error"]))
                continue
            # What is left was on no rover any more: nothing can bring it back. Its restore
            # names what is lost, then the operator forgets it.
            want = self.expected[dev][sid]
            named = self._restore(dev, sid, damaged=True) or []
            healable = [n for n in named if n in want and want[n][3] in current]
            if healable:
                self.stats["damage_failures"] += 1
                self.fail("heal", "point %d: %s snapshot %d still lacks %s, which a rover holds"
                          % (i, dev, sid, healable[:5]))
            anchorctl(self.anchor.address, "forget", dev, str(sid), check=False)
            self.forgotten[dev][sid] = self.expected[dev].pop(sid)
            self.stats["snapshots_unhealable"] += 1
            self.log("  %s snapshot %d cannot be healed (%s): forgotten" % (dev, sid, d["error"][:120]))
        self.stats["snapshots_committed"] = sum(len(x) for x in self.expected.values())

    def _verify(self, where):
        p = anchorctl(self.anchor.address, "verify", "--json", check=False)
        try:
            r = json.loads(p.stdout)
        except ValueError:
            r = None
        if p.returncode != 0 or not r or not r.get("ok"):
            self.stats["verify_failures"] += 1
            self.fail("verify", "%s: rc %d %s %s" % (where, p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
            return False
        return True

    def _listed(self, dev):
        p = anchorctl(self.anchor.address, "snapshots", dev, "--json", check=False)
        if p.returncode != 0:
            return set()            # no such device yet
        return set(r["id"] for r in json.loads(p.stdout))

    def _restore(self, dev, sid, damaged=False):
        """Restore a snapshot and compare it with what was backed up. Without damage it must be
        bit-exact. damaged: the store may have lost some of it; then a restore that exits 0 must
        still be bit-exact, and one that exits non-zero must have named each file it left out
        (or said the rest of the tree cannot be read), written every other file exact, and
        nothing that was not in the snapshot. Returns the paths named as not restored (None
        when the restore was whole)."""
        out = os.path.join(self.workdir, "restore")
        shutil.rmtree(out, ignore_errors=True)
        self.stats["restores"] += 1
        want = self.expected[dev][sid]
        res = 10 ** 9 if dev == MPY else 1
        try:
            p = anchorctl(self.anchor.address, "restore", dev, str(sid), "--to", out, "--json", check=False)
            if p.returncode == 0:
                try:
                    assert_same_tree(want, out, res)
                except AssertionError as e:
                    if damaged:
                        self.stats["silent_losses"] += 1
                    raise AssertionError("exit 0 but not what was backed up: %s" % e) from None
                return None
            if not damaged:
                raise AssertionError("rc %d: %s" % (p.returncode, p.stderr[-2000:]))
            try:
                counts = json.loads(p.stdout)
            except ValueError:
                # refused before writing anything: it must say the snapshot is damaged
                if not any(w in p.stderr for w in ("damaged", "cannot be read", "is missing")):
                    raise AssertionError("rc %d and no counts: %s %s" % (p.returncode, p.stdout[-500:],
                                                                      p.stderr[-2000:])) from None
                counts = {"incomplete": p.stderr.strip()[-300:]}
            named = [f["path"] for f in counts.get("failed", [])]
            incomplete = bool(counts.get("incomplete"))
            if not named and not incomplete:
                self.stats["silent_losses"] += 1
                raise AssertionError("rc %d names nothing: %s" % (p.returncode, p.stderr[-2000:]))
            got = snapshot_of(out)
            bad = []
            for path, have in got.items():
                w = want.get(path)
                if w is None:
                    bad.append("%s was not in the snapshot" % path)
                elif have[0] != w[0] or (w[0] == "f" and (have[1], have[3]) != (w[1], w[3])) or \
                        (w[0] == "f" and have[2] // res != w[2] // res) or (w[0] != "f" and have != w):
                    bad.append("%s restored differs: %s vs %s" % (path, have, w))
            for path in named:
                if path not in want or want[path][0] != "f":
                    bad.append("named %r is no file of the snapshot" % path)
                elif path in got:
                    bad.append("named %r was written anyway" % path)
            if not incomplete:
                left = [path for path in want if path not in got and path not in named]
                if left:
                    bad.append("not restored and not named: %s" % left[:5])
            if bad:
                self.stats["silent_losses"] += 1
                raise AssertionError("; ".join(bad)[:2000])
            self.stats["damaged_restores"] += 1
            self.stats["files_named_damaged"] += len(named)
            self.stats["undamaged_restored"] += sum(1 for v in got.values() if v[0] == "f")
            self.log("  restore %s %d: rc %d, %d named, %d files exact%s" % (
                dev, sid, p.returncode, len(named), sum(1 for v in got.values() if v[0] == "f"),
                ", rest of the tree unreadable" if incomplete else ""))
            return named or ["(rest of the tree)"]
        except AssertionError as e:
            self.stats["restore_failures"] += 1
            self.fail("restore", "%s snapshot %d: %s" % (dev, sid, str(e)[:2000]))
            return None
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def _check_snapshots(self, pending):
        """Every snapshot the catalog lists must be one we know; one we were told was committed
        must still be listed. A new one is the interrupted backup, committed before the kill
        cut off the reply. Returns True if the interrupted backup was found committed."""
        found = False
        for dev in (CPY, MPY):
            listed = self._listed(dev)
            known = set(self.expected[dev])
            for sid in sorted(known - listed):
                self.stats["restore_failures"] += 1
                self.fail("lost", "%s snapshot %d was committed but is not listed" % (dev, sid))
                del self.expected[dev][sid]
            for sid in sorted(listed - known):
                if pending is not None and pending[0] == dev and not found:
                    self.expected[dev][sid] = pending[1]
                    self.stats["committed_unheard"] += 1
                    found = True
                    self.log("  %s snapshot %d was committed before the kill (reply lost)" % (dev, sid))
                else:
                    self.fail("unexpected", "%s snapshot %d appeared from nowhere" % (dev, sid))
        self.stats["snapshots_committed"] = sum(len(v) for v in self.expected.values())
        return found

    def _restore_some(self, dev):
        """The device's newest snapshot and one random other."""
        mine = sorted(self.expected[dev])
        newest = (dev, mine[-1]) if mine else None
        if newest:
            self._restore(*newest)
        every = [(d, s) for d in (CPY, MPY) for s in sorted(self.expected[d]) if (d, s) != newest]
        if every:
            self._restore(*self.rnd.choice(every))

    # --- the loop ----------------------------------------------------------------------------

    def setup(self):
        os.makedirs(self.workdir, exist_ok=True)
        os.makedirs(self.staging, exist_ok=True)
        make_tree(self.trees[CPY], n_files=self.tree_files, total_bytes=self.tree_bytes, seed=self.seed)
        make_tree(self.trees[MPY], n_files=self.mpy_files, total_bytes=self.mpy_bytes, seed=self.seed + 1)
        self.origin = Origin()
        self._start_anchor()
        # First backups and a first fetch, not killed: their lengths seed the kill delays.
        for dev in (CPY, MPY):
            want = snapshot_of(self.trees[dev])
            t = time.monotonic()
            p = run_rover(self.runtime[dev], self.anchor.link, dev, self.states[dev], "backup",
                          self.trees[dev], timeout=WORKLOAD_TIMEOUT)
            self.est[dev] = (time.monotonic() - t) * 0.7
            self._done(("backup", dev), p.stdout, want)
        self.origin.files["/bodies/first.bin"] = self.rnd.randbytes(self.body_max // 2)
        t = time.monotonic()
        work = ("capture", "/bodies/first.bin")
        subprocess.run(self._cmd(work, self.anchor.port), check=True, capture_output=True,
                       timeout=WORKLOAD_TIMEOUT)
        self.est["capture"] = time.monotonic() - t
        self._done(work, "", None)

    def _phase(self, kind, moved, rest, body_len):
        """Where in the workload a kill landed, from the bytes that had crossed the link: for a
        backup, the share of its upload (bytes up before the kill, against those plus what the
        rerun still sent); for a fetch, the share of the body the rover had received."""
        if kind == "backup":
            frac = moved / float(moved + rest) if moved + rest else 0.0
        else:
            frac = moved / float(body_len) if body_len else 1.0
        return "start" if frac < 0.05 else "end" if frac >= 0.95 else "middle"

    def point(self, i):
        rnd = self.rnd
        work = self._plan()
        kind, what = work
        want = snapshot_of(self.trees[what]) if kind == "backup" else None
        key = self._est_key(work)
        est = self.est[key]
        # The kill delay counts from the rover's connection (a rover still starting up would
        # waste the kill), except for a few that land before it even connects.
        before_connect = rnd.random() < 0.1
        delay = rnd.uniform(0, 0.1) if before_connect else rnd.uniform(0, 1.2 * est)
        relay = CountingRelay("127.0.0.1", self.anchor.port)
        proc = subprocess.Popen(self._cmd(work, relay.port), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            if not before_connect and not _talking(relay, proc, WORKLOAD_TIMEOUT):
                self.fail("workload", "point %d: the rover never talked to the anchor: %s"
                          % (i, proc.communicate(timeout=WORKLOAD_TIMEOUT)[0][-2000:]))
            t0 = time.monotonic()
            try:
                proc.wait(timeout=delay)
                finished = True
            except subprocess.TimeoutExpired:
                finished = False
            ran = time.monotonic() - t0
            if finished and ran < delay:
                time.sleep(delay - ran)     # the experiment: the kill lands where it was drawn
            moved = relay.up if kind == "backup" else relay.down
            connected = relay.connections > 0
            self._kill_anchor()
            out, _ = proc.communicate(timeout=WORKLOAD_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            relay.close()
        completed = proc.returncode == 0
        if finished:
            self.stats["kills_idle"] += 1
            if not before_connect:
                self.est[key] = 0.7 * est + 0.3 * ran
            if not completed:
                self.fail("workload", "point %d: %s %s failed with the anchor up: %s" % (i, kind, what, out[-2000:]))
        else:
            self.est[key] = max(est, ran)
            self.stats["kills_during_backup" if kind == "backup" else "kills_during_capture"] += 1
            if kind == "backup" and what == MPY:
                self.stats["kills_mpy_backup"] += 1
        self.log("point %d: %s %s, kill %.2f s after %s (%s), rover %s" % (
            i, kind, what, delay, "its start" if before_connect else "it connected",
            "idle" if finished else "busy", "ok" if completed else "failed"))
        if completed:
            self._done(work, out, want)

        torn = self._tear() if rnd.random() < self.torn_share else None
        dmg = self._damage() if self.dpick.random() < self.damage_share else None
        self._start_anchor()
        if torn is not None:
            path, before = torn
            after = os.path.getsize(path) if os.path.exists(path) else None
            if before is None and after is not None:
                self.fail("torn", "%s (a new segment whose header never landed) is still there "
                          "after the restart" % os.path.basename(path))
            elif before is not None and (after or 0) > before:
                self.fail("torn", "%s is %d bytes after the restart, %d before the torn tail"
                          % (os.path.basename(path), after, before))
        pending = (what, want) if kind == "backup" and not completed else None
        if dmg is not None and dmg["kind"] == "wal":
            self._wal_rolled_back(dmg, i)
        unheard = self._check_snapshots(pending)
        if dmg is not None:
            self._after_damage(dmg, i)
        self._verify("point %d" % i)
        self._restore_some(what if kind == "backup" else CPY)

        phase = "idle" if finished else None
        if not connected:
            phase = "before connect" if not finished else "idle"
        if not completed:
            # Rerun the interrupted workload to completion (with the ordinary retries).
            relay = CountingRelay("127.0.0.1", self.anchor.port)
            t = time.monotonic()
            try:
                p = subprocess.run(self._cmd(work, relay.port, retries=None), capture_output=True,
                                   text=True, timeout=WORKLOAD_TIMEOUT)
            finally:
                relay.close()
            if phase is None:
                phase = self._phase(kind, moved, relay.up, len(self.origin.files.get(what, b"")) if kind == "capture" else 0)
            if p.returncode != 0:
                self.stats["resume_failures"] += 1
                self.fail("resume", "point %d: %s %s rerun failed (%d): %s %s"
                          % (i, kind, what, p.returncode, p.stdout[-2000:], p.stderr[-2000:]))
                if kind == "capture":
                    del self.origin.files[what]
            else:
                try:
                    sid = self._done(work, p.stdout, want)
                except AssertionError as e:
                    self.stats["resume_failures"] += 1
                    self.fail("resume", "point %d: %s" % (i, e))
                else:
                    self.stats["interrupted_%s_completed" % ("backups" if kind == "backup" else "captures")] += 1
                    self.log("  rerun done in %.2f s%s" % (time.monotonic() - t,
                             " (snapshot %d%s)" % (sid, ", after an unheard commit" if unheard else "")
                             if sid is not None else ""))
        elif phase is None:
            phase = "end"           # the reply was on its way when the anchor died
        if unheard:
            phase = "after commit"
        ph = self.stats["kill_phases"].setdefault(kind if phase != "idle" else "idle", {})
        ph[phase] = ph.get(phase, 0) + 1
        self.log("  phase: %s%s" % (phase, "" if finished else " (%d bytes %s before the kill)"
                                    % (moved, "up" if kind == "backup" else "down")))
        self.stats["points"] += 1

    def finish(self):
        """Last checks: verify, then every committed snapshot restores."""
        self._verify("end")
        self._check_snapshots(None)
        if self.restore_all_at_end:
            for dev in (CPY, MPY):
                for sid in sorted(self.expected[dev]):
                    self._restore(dev, sid)

    def run(self):
        t0 = time.monotonic()
        try:
            self.setup()
            for i in range(self.points):
                self.point(i)
            self.finish()
        except DidNotStart:
            self.stats["aborted"] = True      # self.failures says why
        finally:
            self.close()
        self.stats["seconds"] = round(time.monotonic() - t0, 1)
        return self.stats
