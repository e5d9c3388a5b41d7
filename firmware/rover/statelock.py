# One rover process per state folder, on both runtimes (README.md, "The state folder").
#
# Two backups on one state folder (an overlapping scheduled run) overwrite each other's
# scratch files, and every later backup fails. MicroPython has neither flock nor O_EXCL, so
# the lock is a folder, STATE/lock: mkdir is atomic on every file system (FAT and LittleFS
# too), and fails when it exists. STATE/lock/owner names the holder's pid.
#
# A lock whose holder died (killed, power cut) is stale and taken over: its pid no longer
# runs a rover (/proc/PID/cmdline, or kill(pid, 0) on CPython without /proc). Where the
# runtime cannot check processes at all (a microcontroller without /proc runs one
# interpreter), a lock found at start can only be left from before a reset and is stale.
import os

from rover import fsys
from rover.conversation import RoverError


class StateLocked(RoverError):
    pass


class StateLock:
    def __init__(self, state_dir, log):
        self.dir = state_dir + "/lock"
        self.owner = self.dir + "/owner"
        self.log = log
        self.held = False

    def take(self):
        for _ in range(2):            # at most one stale lock is cleared, then one more try
            try:
                os.mkdir(self.dir)
            except OSError:
                pid = self._holder()
                # our own pid in it: left by a run before a reboot, not a second process
                alive = pid and pid != fsys.my_pid() and fsys.pid_alive(pid)
                if alive:
                    raise StateLocked("another rover (pid %d) is using the state folder %s: this run "
                                      "stops; remove %s only if no rover runs" % (pid, self.dir[:-5], self.dir))
                if pid == 0 and self._young():
                    raise StateLocked("another rover is starting on the state folder %s (%s has no "
                                      "owner yet); try again" % (self.dir[:-5], self.dir))
                self.log("clearing a stale lock of pid %d in %s" % (pid, self.dir))
                fsys.remove(self.owner)
                try:
                    os.rmdir(self.dir)
                except OSError:
                    pass
                continue
            self.held = True
            with open(self.owner + ".new", "w") as f:
                f.write("%d\n" % fsys.my_pid())
                fsys.fsync(f)
            fsys.rename(self.owner + ".new", self.owner)
            return
        raise StateLocked("cannot take the lock %s" % self.dir)

    def release(self):
        if self.held:
            self.held = False
            fsys.remove(self.owner)
            try:
                os.rmdir(self.dir)
            except OSError:
                pass

    def _holder(self):
        try:
            with open(self.owner, "rb") as f:
                return int(f.read(24).strip() or b"0")
        except (OSError, ValueError):
            return 0

    def _young(self):
        # A lock folder without an owner yet: a rover between mkdir and writing its pid, or
        # one that died right there. Young (within a minute) means the former.
        import time
        try:
            t = fsys.mtime_ns(self.dir) // 1000000000
        except OSError:
            return False
        return -5 <= time.time() - t < 60
