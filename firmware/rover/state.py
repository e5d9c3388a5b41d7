# The rover's state folder (README.md, "The state folder"), loaded at the start and the end
# of a backup only: on MicroPython its bytecode is heap, and it is dropped again
# (compat.unload) before the backup's peak.
#
# One rover process per state folder, on both runtimes. Two backups on one folder (an
# overlapping scheduled run) overwrite each other's scratch files, and every later backup
# fails. MicroPython has neither flock nor O_EXCL, so the lock is a folder, STATE/lock: mkdir
# is atomic on every file system (FAT and LittleFS too), and fails when it exists.
# STATE/lock/owner names the holder's pid. A lock whose holder died (killed, power cut) is
# stale and taken over: its pid no longer runs a rover (/proc/PID/cmdline, or kill(pid, 0)
# on CPython without /proc). Where the runtime cannot check processes at all (a
# microcontroller without /proc runs one interpreter), a lock found at start can only be
# left from before a reset and is stale.
#
# state.cbor: [version, device, parent snapshot, root digest, racy-from (ns), check], the
# check the first 8 bytes of SHA-256 over the CBOR of the rest; written with fsync before its
# rename. A damaged state or tree copy means no parent: the whole tree is described again.
import hashlib
import os

from anchor_core import cbor
from anchor_core.compat import MICROPYTHON, const
from rover import fsys
from rover.conversation import RoverError

STATE_VERSION = const(2)
_ENOENT = const(2)


def _runs_rover(cmdline):
    # One of its arguments is the rover: the `rover` script, MicroPython's rover/main.py,
    # or `-m rover.cli`. A pid reused by any other program does not hold a lock. An empty
    # command line (a process in the middle of exec, or a zombie) cannot be told: held.
    if not cmdline:
        return True
    for a in cmdline.split(b"\x00"):
        # A board's entry (firmware/board/main.py, a board's root main.py) runs `run` too.
        if (a == b"rover" or a.endswith(b"/rover") or a.endswith(b"rover/main.py")
                or a.endswith(b"board/main.py") or a == b"main.py"
                or a == b"rover.cli" or a.endswith(b"rover/cli.py")):
            return True
    return False


if MICROPYTHON:
    def mtime_ns(path):
        return fsys._signed(os.stat(path)[8]) * 1000000000

    def my_pid():
        try:
            with open("/proc/self/stat", "rb") as f:
                return int(f.read(32).split(b" ")[0])
        except (OSError, ValueError):
            return 0

    def pid_alive(pid):
        """True/False where processes can be checked (/proc), None where they cannot."""
        if not fsys.exists("/proc/self"):
            return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                return _runs_rover(f.read(4096))
        except OSError:
            return False

else:
    def mtime_ns(path):
        return os.stat(path).st_mtime_ns

    def my_pid():
        return os.getpid()

    def pid_alive(pid):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                return _runs_rover(f.read(4096))
        except FileNotFoundError:
            return False
        except OSError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass
        return True


class StateLocked(RoverError):
    locked = True        # rover/cli.py tells it by this, without loading this module


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
                alive = pid and pid != my_pid() and pid_alive(pid)
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
                f.write("%d\n" % my_pid())
                fsys.fsync(f)
            fsys.rename(self.owner + ".new", self.owner)
            return
        raise StateLocked("cannot take the lock %s" % self.dir)

    def release(self):
        if self.held:
            self.held = False
            fsys.drop_lock(self.dir[:-5])

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
            t = mtime_ns(self.dir) // 1000000000
        except OSError:
            return False
        return -5 <= time.time() - t < 60


def load_state(state_dir, device, log=None, buf=None):
    """The rover's state [version, device, parent, root digest, racy-from (ns), check], or
    None when there is none or it is damaged (then the whole tree is described again, and
    the anchor still answers "have" for everything it holds).  buf: 1 KiB of a buffer the
    caller is not using (a paired rover's heap at this point may hold no free 1 KiB block:
    a second backup over MQTT failed there at 258 KB while the first passed at 254 KB)."""
    path = state_dir + "/state.cbor"
    try:
        f = open(path, "rb")
    except OSError as e:
        if e.args and e.args[0] != _ENOENT and log:
            log("cannot read %s (%s): describing the whole tree" % (path, e))
        return None
    try:
        with f:
            if buf is None:
                data = f.read(1024)
            else:
                data = memoryview(buf)[:f.readinto(memoryview(buf)[:1024])]
        st = cbor.decode(data)
        if type(st) is not list or len(st) < 4 or st[0] not in (1, STATE_VERSION):
            raise ValueError("unknown format")
        if st[0] == STATE_VERSION:
            if len(st) < 6 or hashlib.sha256(cbor.encode(st[:5])).digest()[:8] != st[5]:
                raise ValueError("check value does not match")
        else:
            st.append(None)          # version 1: no racy-from; every file is re-read once
        if (st[2] is not None and type(st[2]) is not int) or type(st[3]) is not bytes:
            raise ValueError("unknown format")
    except (ValueError, OSError, IndexError, TypeError) as e:
        if log:
            log("state %s is damaged (%s): describing the whole tree" % (path, e))
        return None
    if st[1] != device:
        raise RoverError("state in %s belongs to device %r, not %r" % (state_dir, st[1], device))
    return st


def save_state(state_dir, device, parent, root, racy=None):
    tmp = state_dir + "/state.cbor.new"
    st = [STATE_VERSION, device, parent, root, racy]
    st.append(hashlib.sha256(cbor.encode(st)).digest()[:8])
    with open(tmp, "wb") as f:
        f.write(cbor.encode(st))
        fsys.fsync(f)             # the bytes on flash before the name points at them
    fsys.rename(tmp, state_dir + "/state.cbor")


def verify_tree(path, root):
    """True if the tree file holds exactly the records of root digest `root`. A copy that
    flash or a crash damaged would make every delta against it wrong (the anchor refuses
    the commit, error 6), so it is checked before the rover names its snapshot as parent."""
    h = hashlib.sha256()
    try:
        f = open(path, "rb")
    except OSError:
        return False
    try:
        hdr = bytearray(2)
        while True:
            n = f.readinto(hdr)
            if not n:
                break
            if n != 2:
                return False
            ln = (hdr[0] << 8) | hdr[1]
            enc = f.read(ln)
            if len(enc) != ln:
                return False
            h.update(enc)
    except OSError:
        return False
    finally:
        f.close()
    return h.digest() == root


def scan_start(state_dir):
    """The file system's own clock now: the mtime of a file it just wrote."""
    scan = state_dir + "/scan"
    with open(scan, "wb") as f:
        f.write(b"x")
    return mtime_ns(scan)
