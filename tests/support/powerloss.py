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
  5. restart and check: the anchor starts; `anchorctl verify --json` says ok; a torn tail is
     gone (the segment is no longer than before the injection); every snapshot the catalog
     lists is one we know the content of; the newest snapshot of the device and one random
     older snapshot restore bit-exact (every snapshot, at the end);
  6. rerun the interrupted workload to completion; record the backup's snapshot (snapshot id
     -> snapshot_of(tree) taken when the backup started).

A backup the anchor committed but whose COMMITTED reply the kill cut off shows up as a new
snapshot of that device after the restart; it gets the tree of the interrupted backup.

Waits are time-bounded (process waits with timeouts). The random kill delay is the experiment
itself, not synchronisation.
"""
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import time

from tests.support.harness import (AnchorProc, anchorctl, assert_same_tree, make_tree, rover_cmd,
    run_rover, snapshot_of)
from tests.support.linkemu import CountingRelay
from tests.support.services import Origin

from anchor.storage.segments import SEGMENT_MAGIC, make_record

CPY = "pl-cpy"          # CPython rover's device (and the relay fetches')
MPY = "pl-mpy"          # MicroPython rover's device
WORKLOAD_TIMEOUT = 300  # seconds a workload may take to end once the anchor is gone / to finish
TORN_KINDS = ("new segment", "garbage", "record", "zeros")
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
                 mpy_bytes=600 << 10, body_max=3 << 20, restore_all_at_end=True, log=None):
        self.workdir = os.path.abspath(workdir)
        self.points = points
        self.rnd = random.Random(seed)
        self.seed = seed
        self.mpy_every = mpy_every
        self.capture_share = capture_share
        self.torn_share = torn_share
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
                      "kill_phases": {}, "torn_kinds": {}}

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

    def _restore(self, dev, sid):
        out = os.path.join(self.workdir, "restore")
        shutil.rmtree(out, ignore_errors=True)
        self.stats["restores"] += 1
        try:
            anchorctl(self.anchor.address, "restore", dev, str(sid), "--to", out)
            assert_same_tree(self.expected[dev][sid], out, 10 ** 9 if dev == MPY else 1)
        except AssertionError as e:
            self.stats["restore_failures"] += 1
            self.fail("restore", "%s snapshot %d: %s" % (dev, sid, str(e)[:2000]))
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
        self._verify("point %d" % i)
        pending = (what, want) if kind == "backup" and not completed else None
        unheard = self._check_snapshots(pending)
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
