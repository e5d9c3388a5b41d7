# Progress people and scripts can see (docs/output.md), on MicroPython and CPython alike.
# Loaded only when it is shown (a terminal on stderr, or --json; rover/cli.py decides): a
# paired MQTT rover has ~2 KB of heap to spare, and one run by cron or a board's main.py
# shows nothing.
#
# The work only moves counters; a heartbeat thread draws them on time, because the rover
# spends seconds blocked in one link read (waiting for a verdict while the OS's socket
# buffers drain onto a slow link) where no hook runs. A port without threads draws from
# the hooks instead (step).
import sys

from anchor_core.compat import const

try:
    from time import ticks_ms, ticks_diff
except ImportError:
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

_SHOW_AFTER = const(2000)   # a job over within ~2 s shows no status line
_TERM_MS = const(250)       # at most 4 redraws a second
_JSON_MS = const(500)       # twice the promised once a second: a late wake-up still keeps it


def _size(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 10000 or unit == "GB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000


class Progress:
    def __init__(self, json, cmd):
        # json: objects on stdout (--json); else a status line on stderr, a terminal.
        # cmd: the rover's command; a relay command shows errors and a summary only.
        self.json = json
        self.cmd = cmd
        beat = cmd not in ("fetch", "send", "publish")
        self.phase = "scan"
        self.files_total = self.bytes_total = 0
        self.files_done = self.bytes_done = 0
        self.part = 0            # bytes of the batch under way handed to the link
        self.qf = self.qb = 0    # files and bytes of the batch under way
        self.t0 = self.last = self.t_up = ticks_ms()
        self.width = 0           # characters of the status line on the terminal now
        self.on = beat
        self.lock = None
        if not beat:
            return               # errors and a summary only (a relay command's --json)
        try:
            import _thread
        except ImportError:
            return
        self.lock = _thread.allocate_lock()
        self.ended = _thread.allocate_lock()
        self.ended.acquire()
        _thread.start_new_thread(self._beat, ())

    # --- what the work reports ---------------------------------------------------------

    def begin(self, phase):
        self.phase = phase
        if phase == "upload" or phase == "restore":
            self.t_up = ticks_ms()
        elif phase == "commit":
            self.flushed()          # files found unchanged after the last batch
        self.poke()

    def backup(self):
        """rover.backup.Backup, counted here: its own steps report to this object, and
        rover/backup.py stays as it is (a rover showing no progress has ~2 KB of heap to
        spare; not a byte of this code is loaded then)."""
        from rover.backup import Backup
        from anchor_core import messages as m
        prog = self

        class Counted(Backup):
            def hello(self, parent, caps):
                w = Backup.hello(self, parent, caps)
                prog.scan(self, parent is not None and w[m.WELCOME_PARENT_OK])
                return w

            def _hash_file(self, rel, size, mtime):
                r = Backup._hash_file(self, rel, size, mtime)
                prog.queue(r[1])
                return r

            def _flush_batch(self):
                Backup._flush_batch(self)
                prog.flushed()

            def _send_chunk(self, f, path, off, ln, cid, based=False):
                Backup._send_chunk(self, f, path, off, ln, cid, based)
                prog.sent(ln)

            def _wait_for_watched(self):
                Backup._wait_for_watched(self)
                prog.begin("commit")

        return Counted

    def scan(self, b, parent):
        """Totals of backup b before it uploads anything: regular files whose size, mtime
        or mode differ from the previous snapshot's record (parent: the anchor holds it) or
        whose mtime is too recent to trust, and their bytes. A walk of stat calls only,
        deciding as the backup's own walk does. A session started again counts again:
        what it redoes is work again."""
        from rover.backup import walk, _order
        from rover import treefile
        from anchor_core import messages as m
        self.files_total = self.bytes_total = 0
        self.files_done = self.bytes_done = self.part = self.qf = self.qb = 0
        self.begin("scan")
        old_iter = treefile.read_records(b.state_dir + "/tree") if parent else iter(())
        old = next(old_iter, None)
        for rel, s in walk(b.root):
            if s[0] != m.T_FILE:
                continue
            try:
                path = rel.decode()
            except UnicodeError:
                path = rel
            while old is not None and _order(old[m.REC_PATH], path) < 0:
                old = next(old_iter, None)
            if (old is None or _order(old[m.REC_PATH], path) != 0 or old[m.REC_TYPE] != m.T_FILE
                    or old[m.REC_SIZE] != s[1] or old[m.REC_MTIME] != b._mtime(s[2])
                    or old[m.REC_MODE] != s[3] or b.racy is None or s[2] >= b.racy):
                self.files_total += 1
                self.bytes_total += s[1]
            self.poke()
        if parent:
            old_iter.close()        # the tree file it reads
        self.begin("upload")

    def queue(self, nbytes):
        """A file hashed for the batch under way (or found unchanged after all)."""
        self.qf += 1
        self.qb += nbytes

    def flushed(self):
        """The batch is in the anchor's hands (its chunks sent, proven, held or watched)."""
        self.files_done += self.qf
        self.bytes_done += self.qb
        self.qf = self.qb = self.part = 0
        self.poke()

    def sent(self, nbytes):
        self.part += nbytes
        self.poke()

    def poke(self):
        if self.lock is None and self.on:
            self.step()

    # --- showing it --------------------------------------------------------------------

    def _beat(self):
        import time
        try:
            while self.on:
                time.sleep(0.05)
                self.step()
        finally:
            self.ended.release()

    def step(self):
        now = ticks_ms()
        if ticks_diff(now, self.last) < (_JSON_MS if self.json else _TERM_MS):
            return
        if not self.json and ticks_diff(now, self.t0) < _SHOW_AFTER:
            return
        self.last = now
        self._show(now)

    def numbers(self, now):
        done = self.bytes_done + self.part
        if done > self.bytes_total:
            done = self.bytes_total      # watched files' uploads after their batch counted
        rate = 0
        eta = None
        if self.phase != "scan" and self.phase != "list":
            ms = ticks_diff(now, self.t_up)
            if ms > 0:
                rate = done * 1000 // ms
            if rate > 0:
                eta = (self.bytes_total - done) // rate
        return done, rate, eta

    def _show(self, now):
        done, rate, eta = self.numbers(now)
        if self.json:
            self._json({"type": "progress", "phase": self.phase, "bytes_done": done,
                        "bytes_total": self.bytes_total, "files_done": self.files_done,
                        "files_total": self.files_total, "rate": rate, "eta": eta,
                        "elapsed": ticks_diff(now, self.t0) / 1000})
            return
        if self.phase == "scan":
            s = "rover: scanning: %d files changed, %s" % (self.files_total, _size(self.bytes_total))
        elif self.phase == "list":
            s = "rover: listing what is here: %d entries" % self.files_done
        elif self.phase == "commit":
            s = "rover: committing the snapshot"
        else:
            s = "rover: %s of %s, %d of %d files, %s/s" % (
                _size(done), _size(self.bytes_total), self.files_done, self.files_total, _size(rate))
            if eta is not None:
                s += ", ETA %d:%02d" % (eta // 60, eta % 60)
        pad = self.width - len(s)
        self.width = len(s)
        self._write(sys.stderr, "\r" + s + (" " * pad if pad > 0 else ""))

    def _write(self, f, text, erase=False):
        if self.lock is not None:
            with self.lock:
                self._put(f, text, erase)
        else:
            self._put(f, text, erase)

    def _put(self, f, text, erase):
        if erase and self.width:
            # Blanks over the status line, on its own stream (stdout may be a file).
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()
            self.width = 0
        f.write(text)
        f.flush()

    def _json(self, obj):
        import json
        self._write(sys.stdout, json.dumps(obj) + "\n")

    def say(self, text, kind="log"):
        """A line of the rover's own (kind "log", "warning" or "error"): on a terminal the
        status line makes room for it and is drawn again below it; errors go to stderr,
        and with --json also as an object on stdout."""
        err = kind == "error"
        if self.json:
            self._json({"type": kind, "message": text})
            if err:
                self._write(sys.stderr, "rover: " + text + "\n")
            return
        self._write(sys.stderr if err else sys.stdout, "rover: " + text + "\n", True)

    def end(self):
        """Stop the heartbeat; a status line shown ends with a newline (its final numbers),
        so what follows starts on a line of its own. Once; later calls do nothing."""
        self.on = False
        if self.lock is not None:
            self.ended.acquire()
            self.lock = None
        if self.phase == "commit":
            self.phase = "done"
        if not self.json and self.width:
            self._show(ticks_ms())
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.width = 0

    def warn(self, text):
        self.say(text, "warning")

    def fail(self, text):
        self.end()            # the status line first, or it is drawn again under the error
        self.say(text, "error")

    def report(self, obj, tx, rx, seconds):
        """The end of a run that worked (obj: a backup's stats, or what a relay command
        did, as text): True if its summary went out here, as one object (--json); False:
        the caller prints its human lines."""
        self.end()
        if not self.json:
            return False
        if type(obj) is str:
            obj = {"message": obj}
        obj["type"] = "summary"
        obj["command"] = self.cmd
        if "snapshot" in obj:
            obj["chunks_proven"] = obj.get("chunks_proven", 0)
        obj["link_bytes_out"] = tx
        obj["link_bytes_in"] = rx
        obj["seconds"] = round(seconds, 3)
        self._json(obj)
        return True

